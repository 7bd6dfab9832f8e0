"""Shared fixtures. Tests never touch the hub: models are tiny random Qwen2 models built from the
shipped tokenizer/config, data is the shipped GSM8K sample or ../shared/data/gsm8k."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SHARED_GSM8K = SHARED / "data" / "gsm8k"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def load_script(relpath: str):
    """A script under the repo (e.g. "bench/device/learn/seeds.py") imported as a module, for its functions."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def needs_shared():
    if not SHARED_GSM8K.is_dir():
        pytest.skip(f"../shared/data/gsm8k not present ({SHARED_GSM8K}); CI always has it (.ci/run checks)")
    return SHARED_GSM8K


def grpo(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """Run the real CLI in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.pop("WANDB_API_KEY", None)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "gsm8k_grpo", *args], cwd=cwd or ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 model dir (2 layers, hidden 64, the real Qwen2.5 tokenizer)."""
    from gsm8k_grpo.config import build_config
    from gsm8k_grpo.modeling import materialize

    cfg = build_config("smoke")
    return Path(materialize(cfg.model, tmp_path_factory.mktemp("tiny") / "model"))
