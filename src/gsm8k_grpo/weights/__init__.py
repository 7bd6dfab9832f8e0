"""Weight transports (trainer -> rollout engine): disk.py, ipc.py, nccl.py behind base.Transport.

``make_transport`` builds the one that ``placement.plan`` chose.
"""

from __future__ import annotations

from pathlib import Path

from gsm8k_grpo.rollout.base import Engine
from gsm8k_grpo.weights.base import Transport


def make_transport(kind: str, engine: Engine, base_model_dir: str | Path, run_dir: str | Path, bucket_mb: int,
                   disk_dir: str | Path | None = None) -> Transport:
    """Build a resolved transport (disk | ipc | nccl) for ``engine``; ipc/nccl need an SGLangEngine."""
    if kind == "disk":
        from gsm8k_grpo.weights.disk import DiskTransport

        out = Path(disk_dir) if disk_dir else Path(run_dir) / "weights_sync"
        return DiskTransport(engine, base_model_dir, out, bucket_mb, use_shm=disk_dir is None)
    client = getattr(engine, "client", None)
    if kind not in ("ipc", "nccl") or client is None:
        raise ValueError(f"weights.transport={kind!r} needs rollout.engine=sglang; valid here: disk")
    tp_size = getattr(engine, "tp_size", 1)
    if kind == "ipc":
        from gsm8k_grpo.weights.ipc import IPCTransport

        return IPCTransport(client, bucket_mb, tp_size=tp_size, engine=engine)
    import torch

    from gsm8k_grpo.placement import visible_gpus
    from gsm8k_grpo.weights.nccl import NCCLTransport

    gpus = {g.index: g.uuid for g in visible_gpus()}
    server = [gpus[i] for i in getattr(engine, "gpu_ids", None) or [] if i in gpus]
    trainer = [gpus[torch.cuda.current_device()]] if torch.cuda.is_available() else []
    ranks = getattr(engine, "server_ranks", tp_size)  # every rank of every server joins the group
    return NCCLTransport(client, bucket_mb, server_ranks=ranks, trainer_gpu_uuids=trainer,
                         server_gpu_uuids=server, engine=engine)
