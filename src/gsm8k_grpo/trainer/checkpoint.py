"""Atomic checkpoints (the layout is run_dir.py's): an HF model dir to serve, and the sharded
trainer state to resume.

    step_000010/model/     written by modeling.save_model_dir: loads anywhere without the base model
    step_000010/adapter/   with lora.rank > 0: the LoRA adapters in peft's layout (model/ has them merged)
    step_000010/trainer/   torch.distributed.checkpoint of {model, optimizer} (fp32 master weights;
                           with LoRA the adapters and their optimizer state only: the base is the base model)
    step_000010/state.json step, policy version, scheduler, RNG states, data cursor, W&B run id, config
Everything is written under .tmp-step_N and renamed into place, so a kill at any moment leaves
either the previous checkpoint or the new one, never half of one; a save that fails (a full disk)
removes its temporary folder and leaves the previous checkpoint as it was.
"""

from __future__ import annotations

import base64
import errno
import io
import json
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from gsm8k_grpo.errors import InputError, RunFailure
from gsm8k_grpo.modeling import save_model_dir
from gsm8k_grpo.run_dir import RunDir, read_state


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


def save(run: RunDir, step: int, trainer, source_dir: str, state: dict, keep_last: int,
         export_dtype: torch.dtype | None) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint dir."""
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    rank = dist.get_rank()
    tmp = run.temporary_checkpoint_dir(step)
    try:
        if rank == 0:
            run.begin_checkpoint(step)
        dist.barrier()
        save_model_dir(trainer.named_tensors(), trainer.hf_config, source_dir, tmp / "model", export_dtype, rank == 0)
        if trainer.lora:
            from gsm8k_grpo.trainer.lora import save_adapter

            base, revision = adapter_base(state.get("config") or {}, source_dir)
            save_adapter(trainer.adapter_tensors(), trainer.lora, base, tmp / "adapter", rank == 0, revision)
        options = _options(trainer)
        dcp_save({"model": _model_state(trainer, get_model_state_dict(trainer.model, options=options)),
                  "optim": get_optimizer_state_dict(trainer.model, trainer.optimizer, options=options)},
                 checkpoint_id=str(tmp / "trainer"))
        if rank == 0:
            state = dict(state, step=step, scheduler=trainer.scheduler.state_dict(), rng=rng_state())
            (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
            run.commit_checkpoint(tmp, step, keep_last)
        dist.barrier()
    except BaseException as e:
        if rank == 0:  # a half-written checkpoint must not stay behind filling the disk
            shutil.rmtree(tmp, ignore_errors=True)
        inner = _first_failure(e)
        if inner is not e and isinstance(inner, (KeyboardInterrupt, SystemExit)):
            raise inner from None  # Ctrl-C or SIGTERM inside torch's checkpoint writer: a signal, not an error
        if isinstance(e, (Exception, CheckpointException)) and _out_of_space(e, run.checkpoints):
            previous = run.latest_checkpoint()
            raise RunFailure(f"checkpoint {tmp.name[5:]} could not be written: no space left on the device of "
                             f"{run.checkpoints} ({shutil.disk_usage(run.checkpoints).free >> 20} MiB free); "
                             + (f"{previous.name} is intact: free space, then grpo resume {run}" if previous else
                                "free space, then start again")) from None
        raise
    return run.checkpoint_dir(step)


def adapter_base(config: dict, source_dir: str) -> tuple[str, str | None]:
    """What adapter_config.json names as the base model, and its revision: the hub id (and
    model.revision) or the absolute local dir the adapters were trained on; with model.random_init
    or a shipped builtin: model, the run's own base_model/ folder (no hub id names those weights)."""
    model = config.get("model") or {}
    path = model.get("path")
    if not path or model.get("random_init") or path.startswith("builtin:"):
        return str(Path(source_dir).resolve()), None
    if Path(path).expanduser().is_dir():
        return str(Path(path).expanduser().resolve()), None
    return path, model.get("revision")


def _options(trainer):
    """With LoRA only the trainable tensors are trainer state (the frozen base is the base model's)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    lora = bool(getattr(trainer, "lora", None))
    return StateDictOptions(ignore_frozen_params=lora, strict=not lora)


def _model_state(trainer, sd: dict) -> dict:
    """With LoRA, the trainable tensors only: torch's ignore_frozen_params keeps a tied frozen weight
    under its second name (lm_head.weight, 545 MB in fp32 for Qwen2.5-0.5B)."""
    if not getattr(trainer, "lora", None):
        return sd
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    return {k: v for k, v in sd.items() if k in trainable}


def _first_failure(e: BaseException) -> BaseException:
    """torch.distributed.checkpoint wraps each rank's error in a CheckpointException (a BaseException,
    not an Exception); the first rank's own error says more."""
    if isinstance(e, CheckpointException) and e.failures:
        wrapped = next(iter(e.failures.values()))  # (exception, traceback summary)
        return wrapped[0] if isinstance(wrapped, tuple) else wrapped
    return e


_ENOSPC_TEXT = re.compile(r"No space left on device|os error 28\b|Errno 28\b")


def _out_of_space(e: BaseException, folder: Path) -> bool:
    """A failed write caused by a full disk: ENOSPC anywhere in the exception chain, or its text in an
    error that hides the errno (safetensors 0.7+: 'SafetensorError: Error while serializing: I/O error:
    No space left on device (os error 28)'), or (torch's own: 'unexpected pos 704 vs 598') almost
    nothing left free. The text matters: by this check the failed save's folder is removed, and on a
    disk shared with other jobs the free space is no longer what the write saw."""
    seen: BaseException | None = _first_failure(e)
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        if _ENOSPC_TEXT.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < 64 << 20
    except OSError:
        return False


def restore(path: Path, trainer) -> dict:
    """Load model + optimizer + scheduler + RNG from checkpoint `path` into trainer; return its state.
    InputError naming the checkpoint when a file of it is damaged."""
    from torch.distributed.checkpoint import load as dcp_load
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    state = read_state(path)
    try:
        options = _options(trainer)
        sd = {"model": _model_state(trainer, get_model_state_dict(trainer.model, options=options)),
              "optim": get_optimizer_state_dict(trainer.model, trainer.optimizer, options=options)}
        dcp_load(sd, checkpoint_id=str(path / "trainer"))
        set_model_state_dict(trainer.model, sd["model"], options=options)
        set_optimizer_state_dict(trainer.model, trainer.optimizer, sd["optim"], options=options)
        trainer.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - truncated or mismatched files fail in many ways
        cause = _first_failure(e)
        if isinstance(cause, (KeyboardInterrupt, SystemExit)):
            raise cause from None
        first = (str(cause).strip().splitlines() or [""])[0][:200]
        raise InputError(f"checkpoint {path} cannot be restored ({type(cause).__name__}: {first})") from None
    return state
