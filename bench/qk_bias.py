"""Per-layer size of the attention q/k biases of a Qwen2-architecture model (runs on a CPU).

    python bench/qk_bias.py MODEL            # a GGUF file (needs the `gguf` package) or an HF model dir

Prints, for every decoder layer, max |q bias|, max |k bias| and the largest bias-only attention
logit q_bias_h . k_bias_kv(h) / sqrt(head_dim) over the query heads. The non-finite training steps
(docs/results/learning.md) start in the highest layer with a massive key bias; this shows which one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def from_gguf(path: str):
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}

    def get(name: str) -> np.ndarray:
        t = tensors[name]
        return dequantize(t.data, t.tensor_type).reshape(-1)

    fields = {f.name: f for f in reader.fields.values()}

    def meta(key: str) -> int:
        f = fields[key]
        return int(f.parts[f.data[0]][0])

    arch = "qwen2"
    n_layers, n_heads, n_kv = (meta(f"{arch}.block_count"), meta(f"{arch}.attention.head_count"),
                               meta(f"{arch}.attention.head_count_kv"))
    for layer in range(n_layers):
        yield layer, get(f"blk.{layer}.attn_q.bias"), get(f"blk.{layer}.attn_k.bias"), n_heads, n_kv


def from_hf(path: str):
    from safetensors.torch import load_file  # torch: numpy has no bf16

    cfg = json.loads((Path(path) / "config.json").read_text())
    weights = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        weights.update(load_file(f))
    for layer in range(cfg["num_hidden_layers"]):
        pre = f"model.layers.{layer}.self_attn."
        yield (layer, weights[pre + "q_proj.bias"].float().numpy().reshape(-1),
               weights[pre + "k_proj.bias"].float().numpy().reshape(-1),
               cfg["num_attention_heads"], cfg["num_key_value_heads"])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    path = argv[0]
    if not Path(path).exists():
        print(f"qk_bias.py: {path} does not exist (give a .gguf file or an HF model dir)")
        return 2
    layers = from_gguf(path) if path.endswith(".gguf") else from_hf(path)
    print("layer  max|q bias|  max|k bias|  max bias logit")
    for layer, qb, kb, n_heads, n_kv in layers:
        head_dim = qb.size // n_heads
        q, k = qb.reshape(n_heads, head_dim), kb.reshape(n_kv, head_dim)
        group = n_heads // n_kv
        logit = max(abs(float(q[h] @ k[h // group])) for h in range(n_heads)) / head_dim ** 0.5
        print(f"{layer:5d}  {np.abs(qb).max():11.1f}  {np.abs(kb).max():11.1f}  {logit:14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
