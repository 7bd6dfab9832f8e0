"""Atomic checkpoints: an HF model dir to serve, and the sharded trainer state to resume.

RUN_DIR/checkpoints/step_000010/
    model/       safetensors + config + tokenizer: from_pretrained() and SGLang load it unchanged
    trainer/     torch.distributed.checkpoint of {model, optimizer} (sharded-safe, fp32 master weights)
    state.json   step, scheduler, data cursor, RNG states, W&B run id, the run config
RUN_DIR/checkpoints/latest   the name of the newest complete checkpoint, replaced last
Everything is written under .tmp-step_N and renamed into place, so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from gsm8k_grpo.modeling import TOKENIZER_FILES

LATEST = "latest"


def ckpt_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint dir, or None."""
    pointer = ckpt_root(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_root(run_dir) / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> str:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    buf = io.BytesIO()
    torch.save(state, buf)
    return base64.b64encode(buf.getvalue()).decode()


def set_rng_state(blob: str) -> None:
    state = torch.load(io.BytesIO(base64.b64decode(blob)), weights_only=False)
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def export_hf(named_tensors, hf_config, base_model_dir: str, dest: Path, dtype: torch.dtype | None,
              is_writer: bool) -> None:
    """Write an HF model dir from full tensors (every rank iterates; only the writer writes)."""
    from safetensors.torch import save_file

    sd = {}
    for name, t in named_tensors:
        if is_writer:
            sd[name] = (t.to(dtype) if dtype is not None else t).cpu().contiguous()
    if not is_writer:
        return
    if getattr(hf_config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(dest / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config.to_dict()
    if dtype is not None:
        cfg["torch_dtype"] = cfg["dtype"] = str(dtype).removeprefix("torch.")
    cfg.pop("use_cache", None)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    for name in TOKENIZER_FILES:
        src = Path(base_model_dir) / name
        if src.is_file():
            shutil.copy(src, dest / name)


def save(run_dir: Path, step: int, trainer, base_model_dir: str, state: dict, keep_last: int,
         export_dtype: torch.dtype | None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint dir."""
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    rank = dist.get_rank()
    root = ckpt_root(run_dir)
    name = f"step_{step:06d}"
    tmp, final = root / f".tmp-{name}", root / name
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    export_hf(trainer.named_tensors(), trainer.hf_config, base_model_dir, tmp / "model", export_dtype, rank == 0)
    dcp_save({"model": get_model_state_dict(trainer.model),
              "optim": get_optimizer_state_dict(trainer.model, trainer.optimizer)},
             checkpoint_id=str(tmp / "trainer"))
    if rank == 0:
        state = dict(state, step=step, scheduler=trainer.scheduler.state_dict(), rng=rng_state())
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / LATEST, name)
        prune(root, keep_last)
    dist.barrier()
    return final


def prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file())
    for p in done[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def load_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def restore(path: Path, trainer) -> dict:
    """Load model + optimizer + scheduler + RNG from checkpoint `path` into trainer; return state."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    sd = {"model": get_model_state_dict(trainer.model),
          "optim": get_optimizer_state_dict(trainer.model, trainer.optimizer)}
    dcp_load(sd, checkpoint_id=str(path / "trainer"))
    set_model_state_dict(trainer.model, sd["model"])
    set_optimizer_state_dict(trainer.model, trainer.optimizer, sd["optim"])
    state = load_state(path)
    trainer.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


