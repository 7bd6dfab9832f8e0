"""LoRA (lora.rank > 0): low-rank adapters on the decoder's linear layers, through peft.

peft's ``inject_adapter_in_model`` replaces each target ``nn.Linear`` of the HF model in place by a
``lora.Linear`` (``base_layer`` frozen, ``lora_A``/``lora_B`` trained) and freezes every other
parameter; the model keeps its class and its forward, so FSDP2 wraps it as it wraps a full model.
The trainer's optimizer holds the adapters only: no gradient or Adam state for the frozen weights,
which stay in fp32 (FSDP2 needs one dtype per unit; mixed precision casts them for compute).

Everything outside the trainer sees a plain model: ``merged()`` turns the parameter stream into HF
names with W = W0 + (alpha / rank) * B @ A, which the transports push to the engine and checkpoints
export as ``model/``; ``adapter_state()`` and ``save_adapter()`` write ``adapter/`` in peft's own
layout (``PeftModel.from_pretrained(base, step_N/adapter)`` loads it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

from gsm8k_grpo.config import ConfigError, LoraConfig

ADAPTER = "default"  # peft's name of the one adapter
_PART = re.compile(r"^(.*)\.(base_layer\.weight|base_layer\.bias|lora_A\.default\.weight|lora_B\.default\.weight)$")


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("lora.rank > 0 needs the peft package: pip install peft") from None
    return peft


def add_adapters(hf: nn.Module, cfg: LoraConfig, init_seed: int) -> nn.Module:
    """Inject LoRA adapters into `hf` in place (A random, B zero: the model's output is unchanged)."""
    peft = _peft()
    targets = set(cfg.target_modules)
    present = {name.rsplit(".", 1)[-1] for name, m in hf.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(targets - present)
    if missing:
        raise ConfigError(f"lora.target_modules {missing} are not linear layers of this model; it has "
                          f"{', '.join(sorted(present - {'lm_head'}))}")
    if "lm_head" in targets and getattr(hf.config, "tie_word_embeddings", False):
        raise ConfigError("lora.target_modules: lm_head shares its weight with the input embeddings in this model "
                          "(tie_word_embeddings); an adapter there cannot be merged into one weight. Leave it out")
    with torch.random.fork_rng(devices=[]):  # the adapters' init does not shift the run's RNG stream
        torch.manual_seed(init_seed)
        return peft.inject_adapter_in_model(peft_config(cfg), hf, adapter_name=ADAPTER)


def peft_config(cfg: LoraConfig, base_model: str | None = None, revision: str | None = None):
    return _peft().LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                              target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
                              base_model_name_or_path=base_model, revision=revision)


def scaling(cfg: LoraConfig) -> float:
    return cfg.alpha / cfg.rank


def merged(named: Iterable[tuple[str, torch.Tensor]], scale: float) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) of the adapted model -> HF names and merged weights, in fp32.

    A target layer's parameters come in a row (base weight, base bias, A, B): its base weight waits
    for its A and B, then W0 + scale * B @ A goes out as `<layer>.weight`."""
    waiting: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in named:
        m = _PART.match(name)
        if m is None:
            yield name, t
            continue
        layer, part = m.groups()
        if part == "base_layer.bias":
            yield f"{layer}.bias", t
            continue
        parts = waiting.setdefault(layer, {})
        parts[part.split(".")[0]] = t
        if len(parts) == 3:
            del waiting[layer]
            base, a, b = parts["base_layer"], parts["lora_A"], parts["lora_B"]
            yield f"{layer}.weight", (base.float() + scale * (b.float() @ a.float())).to(base.dtype)
    if waiting:
        raise RuntimeError(f"LoRA merge: incomplete layers {sorted(waiting)[:3]}")


def is_adapter(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def adapter_key(name: str) -> str:
    """Our parameter name -> the key peft saves: 'base_model.model.<name without the adapter name>'."""
    return "base_model.model." + name.replace(f".{ADAPTER}.", ".")


def save_adapter(named: Iterable[tuple[str, torch.Tensor]], cfg: LoraConfig, base_model: str, dest: Path,
                 is_writer: bool, revision: str | None = None) -> None:
    """Write `dest` as peft does (adapter_config.json + adapter_model.safetensors); every rank iterates."""
    from safetensors.torch import save_file

    state = {adapter_key(n): t.detach().float().cpu().contiguous() for n, t in named if is_adapter(n)}
    if not is_writer:
        return
    dest.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dest / "adapter_model.safetensors"), metadata={"format": "pt"})
    peft_config(cfg, base_model, revision).save_pretrained(str(dest))
