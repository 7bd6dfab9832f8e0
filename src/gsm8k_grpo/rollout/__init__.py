"""Rollout engines behind one interface (see base.py): in-process HF (hf.py) and SGLang (sglang_engine.py)."""

from __future__ import annotations

import importlib.util
import json
import os

# Tests and benchmarks: a JSON list that replaces `python -m sglang.launch_server` (a stand-in server
# on CPU; it gets --port P and the server arguments). Not a user setting.
LAUNCHER_ENV = "GSM8K_GRPO_SGLANG_LAUNCHER"


def sglang_installed() -> bool:
    return importlib.util.find_spec("sglang") is not None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_engine(requested: str) -> str:
    """'auto' = SGLang when it is installed and a CUDA GPU is present, else the in-process HF engine."""
    if requested != "auto":
        return requested
    return "sglang" if (cuda_available() and sglang_installed()) else "hf"


def make_engine(kind: str, model_dir: str, rollout_cfg, run_dir, *, device: str = "cpu", dtype=None,
                pad_token_id: int = 0, gpu_ids: list[int] | None = None):
    """Build the engine named by choose_engine(); imports only what that engine needs."""
    if kind == "hf":
        import torch

        from gsm8k_grpo.rollout.hf import HFEngine

        dt = dtype or (torch.bfloat16 if str(device).startswith("cuda") else torch.float32)
        return HFEngine(model_dir, device=device, dtype=dt, batch_size=rollout_cfg.hf_batch_size,
                        pad_token_id=pad_token_id)
    if kind == "sglang":
        from gsm8k_grpo.rollout.sglang_engine import SGLangEngine

        launcher = json.loads(os.environ[LAUNCHER_ENV]) if os.environ.get(LAUNCHER_ENV) else None
        return SGLangEngine(model_dir, rollout_cfg, run_dir, gpu_ids=gpu_ids, launch_cmd=launcher)
    raise ValueError(f"unknown engine {kind!r}; valid: auto, sglang, hf")
