"""Setup shared by the GPU bench scripts: config, work dir, the (random) model dir, tokenizer, stop ids."""

from __future__ import annotations

from pathlib import Path

from gsm8k_grpo.config import build_config
from gsm8k_grpo.data import prompts
from gsm8k_grpo.modeling import load_tokenizer, materialize


def setup(config: str, workdir: str):
    """-> (cfg, work dir, model dir, tokenizer, stop token ids)."""
    cfg = build_config(config_file=config)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = materialize(cfg.model, work / "model")
    tok = load_tokenizer(model_dir)
    return cfg, work, model_dir, tok, tuple(prompts.stop_token_ids(tok))
