"""Does SDPA's backward give NaN grad_q with an explicit mask here? (pytorch/pytorch#196678; GPU)

    python bench/sdpa_mask_nan.py [--out DIR] [--model HF_DIR] [--data GSM8K_DIR]

The non-finite training steps of docs/results/learning.md (NaN born in layer 8's query gradient) fit
a cuDNN attention bug of torch 2.11 on H100: with an explicit attn_mask, a length of 64 mod 128 and a
row whose log-sum-exp is below about -88.7, grad_q is NaN while grad_k and grad_v are fine. The
trainer now passes no mask (causal attention over right-padded rows). This checks both halves:

1. synthetic: q, k, v of one head whose every logit is about -120, lengths 640 / 704 / 768, each
   with an explicit causal mask and with is_causal=True alone -> non-finite counts of grad_q/k/v;
2. --model (real weights, e.g. the carried Qwen2.5-Coder-0.5B): a right-padded bf16 micro-batch of
   GSM8K questions and answers, 704 wide, through the HF model with its padding mask (the old
   trainer) and without (the new) -> which parameter tensors get non-finite grads.

Prints one JSON line per case and writes them to DIR/sdpa_mask_nan.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def synthetic(length: int, explicit_mask: bool, device: str, dim: int = 64) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(1, 1, length, dim, generator=g) * 0.1
    k = torch.randn(1, 1, length, dim, generator=g) * 0.1
    v = torch.randn(1, 1, length, dim, generator=g)
    q[..., 0] = 1.0
    k[..., 0] = -120 * math.sqrt(dim)              # every scaled logit about -120: log-sum-exp < -88.7
    q, k, v = (t.to(device, torch.bfloat16).requires_grad_(True) for t in (q, k, v))
    if explicit_mask:
        mask = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.backward(torch.randn_like(out))
    bad = {n: int((~torch.isfinite(t.grad)).sum()) for n, t in (("grad_q", q), ("grad_k", k), ("grad_v", v))}
    return {"case": "synthetic", "length": length, "mask": "explicit" if explicit_mask else "is_causal", **bad}


def real_model(model_dir: str, data_dir: str, device: str, width: int = 704) -> list[dict]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device)
    rows = [json.loads(line) for line in (Path(data_dir) / "test.jsonl").open()][:16]
    seqs = [tok(r["question"] + "\n" + r["answer"])["input_ids"][:width] for r in rows]
    seqs[0] = (seqs[0] * (width // len(seqs[0]) + 1))[:width]          # one full row: the batch is width wide
    ids = torch.full((len(seqs), width), tok.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
    ids, mask = ids.to(device), mask.to(device)
    out = []
    for name, kwargs in (("padding mask (old trainer)", {"attention_mask": mask}), ("no mask (new)", {})):
        model.zero_grad(set_to_none=True)
        hidden = model.model(input_ids=ids, **kwargs).last_hidden_state
        (hidden.float().pow(2) * mask[..., None]).mean().backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        out.append({"case": "model", "mask": name, "width": width, "rows": len(seqs),
                    "nonfinite_tensors": len(bad), "highest": bad[-1] if bad else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--model")
    ap.add_argument("--data", default="/tmp/carry/gsm8k")
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    env = {"case": "env", "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(),
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
           "cudnn_sdp": torch.backends.cuda.cudnn_sdp_enabled()}
    results = [env] + [synthetic(n, m, device) for n in (640, 704, 768) for m in (True, False)]
    if a.model:
        results += real_model(a.model, a.data, device)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    with open(Path(a.out) / "sdpa_mask_nan.jsonl", "w") as f:
        for r in results:
            print(json.dumps(r), flush=True)
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
