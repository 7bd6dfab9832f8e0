"""GPU detection, trainer/server placement and the choice of weight transport.

``plan``, ``choose_transport`` and ``launch_plan`` are pure logic (tested on CPU with made-up GPU
counts); ``visible_gpus`` and ``visible_device_ids`` probe torch.cuda.

Placement rules: no GPU -> HF engine, trainer on CPU, disk sync. One GPU (or
``rollout_gpus=0``) -> trainer and SGLang share GPU 0, IPC sync (disk when IPC is unavailable).
N >= 2 GPUs -> SGLang gets the last ``rollout_gpus`` GPUs, the trainer the rest, NCCL sync.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TRANSPORTS = ("auto", "ipc", "disk", "nccl")


@dataclass(frozen=True)
class GpuInfo:
    index: int                      # torch index, i.e. relative to CUDA_VISIBLE_DEVICES
    uuid: str                       # "GPU-xxxxxxxx-...", as nvidia-smi prints it
    name: str
    total_bytes: int
    capability: tuple[int, int]


@dataclass(frozen=True)
class Placement:
    trainer_gpus: list[int]         # [] = CPU
    server_gpus: list[int]          # [] = no SGLang server (in-process HF engine)
    transport: str                  # ipc | disk | nccl
    reason: str
    engine: str = "sglang"          # sglang | hf


def visible_gpus() -> list[GpuInfo]:
    """The GPUs this process sees (torch honours CUDA_VISIBLE_DEVICES); [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        uuid = str(p.uuid)
        out.append(GpuInfo(i, uuid if uuid.startswith("GPU-") else f"GPU-{uuid}", p.name, p.total_memory,
                           (p.major, p.minor)))
    return out


def choose_transport(requested: str, trainer_uuids: list[str], server_uuids: list[str], ipc_ok: bool) -> str:
    """Resolve weights.transport for GPUs given by UUID (no server GPUs = in-process HF engine)."""
    if requested not in TRANSPORTS:
        raise ValueError(f"weights.transport={requested!r} is unknown; valid: {', '.join(TRANSPORTS)}")
    if not server_uuids:
        if requested in ("auto", "disk"):
            return "disk"
        raise ValueError(f"weights.transport={requested} needs rollout.engine=sglang on a GPU; use disk or auto")
    if set(trainer_uuids) & set(server_uuids):
        if requested == "nccl":
            raise ValueError("weights.transport=nccl cannot work with trainer and SGLang on the same GPU "
                             "(NCCL: 'Duplicate GPU detected'); use ipc, disk or auto, or give SGLang its own GPU")
        if requested == "ipc" and not ipc_ok:
            raise ValueError("weights.transport=ipc is unavailable here (SGLang not importable in the trainer); "
                             "use disk or auto")
        if requested == "auto":
            return "ipc" if ipc_ok else "disk"
        return requested
    if requested == "ipc":
        raise ValueError("weights.transport=ipc needs trainer and SGLang on the same GPU; with separate GPUs "
                         "use nccl, disk or auto (or rollout.gpus=0 to share one GPU)")
    return "nccl" if requested == "auto" else requested


def plan(n_gpus: int, rollout_gpus: int, engine: str, transport: str, ipc_ok: bool = True) -> Placement:
    """Place trainer and rollout engine on n_gpus GPUs; engine: auto|sglang|hf, transport: auto|ipc|disk|nccl."""
    if engine not in ("auto", "sglang", "hf"):
        raise ValueError(f"rollout.engine={engine!r} is unknown; valid: auto, sglang, hf")
    if n_gpus <= 0:
        if engine == "sglang":
            raise ValueError("rollout.engine=sglang needs a GPU and none is visible; use rollout.engine=hf or auto")
        t = choose_transport(transport, [], [], ipc_ok)
        return Placement([], [], t, "no GPU: HF engine in-process, trainer on CPU, disk sync", "hf")
    if engine == "hf":
        t = choose_transport(transport, ["0"], [], ipc_ok)
        return Placement([0], [], t, "rollout.engine=hf: HF engine in-process on GPU 0, disk sync", "hf")
    if rollout_gpus < 0:
        raise ValueError(f"rollout.gpus={rollout_gpus} is invalid; use 0 (share GPU 0) to {n_gpus - 1}")
    if n_gpus == 1 or rollout_gpus == 0:
        t = choose_transport(transport, ["0"], ["0"], ipc_ok)
        return Placement([0], [0], t, f"trainer and SGLang share GPU 0; {t} sync")
    if rollout_gpus >= n_gpus:
        raise ValueError(f"rollout.gpus={rollout_gpus} leaves no GPU for the trainer: leave at least one GPU "
                         f"for the trainer (valid: 0 to {n_gpus - 1} with {n_gpus} GPUs)")
    trainer = list(range(n_gpus - rollout_gpus))
    server = list(range(n_gpus - rollout_gpus, n_gpus))
    t = choose_transport(transport, [str(i) for i in trainer], [str(i) for i in server], ipc_ok)
    return Placement(trainer, server, t, f"trainer on GPUs {trainer}, SGLang on GPUs {server}; {t} sync")


def visible_device_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (indices when it is unset)."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [x.strip() for x in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if x.strip()][:n]
    return [str(i) for i in range(n)]


def launch_plan(gpus: int, visible: list[str], rollout_gpus: int, engine: str, transport: str) -> tuple[str, int]:
    """`grpo train --gpus N` -> (CUDA_VISIBLE_DEVICES for the run, trainer processes).

    The run gets the first N visible GPUs. plan() splits them as it will inside the run, and each
    trainer GPU gets one torchrun rank (a single process when there is one)."""
    if gpus < 1:
        raise ValueError(f"--gpus {gpus}: give 1 or more")
    if gpus > len(visible):
        raise ValueError(f"--gpus {gpus}: only {len(visible)} GPU(s) visible"
                         + (f" (CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']})"
                            if "CUDA_VISIBLE_DEVICES" in os.environ else ""))
    p = plan(gpus, rollout_gpus, engine, transport)
    return ",".join(visible[:gpus]), len(p.trainer_gpus)
