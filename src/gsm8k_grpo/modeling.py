"""Model and tokenizer loading shared by the trainer, the HF engine and eval.

Every engine loads a plain HF model dir. A random-init model (``model.random_init``) is built
once from ``model.path``'s config (plus ``model.config_overrides``) with a fixed seed and saved
to ``RUN_DIR/base_model`` so SGLang, the HF engine and resume all read the same weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from gsm8k_grpo import assets
from gsm8k_grpo.config import ModelConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "chat_template.json", "special_tokens_map.json", "added_tokens.json", "generation_config.json")


class ModelError(Exception):
    """A model that cannot be loaded; str() is the one line shown to the user."""


def resolve_path(path: str) -> str:
    try:
        return assets.resolve(path)
    except FileNotFoundError as e:
        raise ModelError(str(e)) from None


def load_config(path: str, overrides: dict | None = None):
    from transformers import AutoConfig

    overrides = dict(overrides or {})
    try:  # overrides go through from_pretrained so derived fields (layer_types, ...) follow them
        base = AutoConfig.from_pretrained(resolve_path(path))
        unknown = [k for k in overrides if not hasattr(base, k)]
        if unknown:
            raise ModelError(f"model.config_overrides: {type(base).__name__} has no field {unknown[0]!r}")
        if not overrides:
            return base
        d = base.to_dict()
        if "num_hidden_layers" in overrides:
            d.pop("layer_types", None)  # recomputed by the config class for the new depth
        d.update(overrides)
        return type(base).from_dict(d)
    except OSError as e:
        raise ModelError(f"model {path!r}: no config.json found locally or on the hub ({str(e).splitlines()[0][:160]})") from None


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve_path(path))
    except (OSError, ValueError) as e:
        raise ModelError(f"tokenizer of {path!r} cannot be loaded ({str(e).splitlines()[0][:160]})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def count_params(cfg) -> int:
    """Parameters of the architecture, counted on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in m.parameters())


def materialize(mcfg: ModelConfig, dest: Path) -> str:
    """Return a model dir for mcfg: the path itself, or dest after building random weights there once."""
    if not mcfg.random_init:
        if mcfg.config_overrides:
            raise ModelError("model.config_overrides needs model.random_init: true (pretrained weights fix the shapes)")
        return resolve_path(mcfg.path)
    if (dest / "config.json").is_file():
        return str(dest)
    from transformers import AutoModelForCausalLM

    cfg = load_config(mcfg.path, mcfg.config_overrides)
    torch.manual_seed(mcfg.init_seed)
    # saved in bf16, like released checkpoints, so SGLang serves it in bf16 (dtype "auto")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(torch.bfloat16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    src = Path(resolve_path(mcfg.path))
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and (name == "generation_config.json" or not (tmp / name).exists()):
            shutil.copy(src / name, tmp / name)
    if not (tmp / "tokenizer_config.json").exists():  # a hub id: save its tokenizer
        load_tokenizer(mcfg.path).save_pretrained(tmp)
    tmp.rename(dest)
    return str(dest)


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_path(path), dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"model {path!r} cannot be loaded ({str(e).splitlines()[0][:160]})") from None
    return model.to(device)


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
