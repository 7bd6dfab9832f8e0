"""Process-group setup and the environment shared by trainer ranks and the SGLang child.

No GPU placement here (placement.py) and nothing from the trainer: the rollout, weights and trainer
packages all reach in, so this module reaches into none of them.
"""

from __future__ import annotations

import datetime
import os
import socket

# NVLink multicast (NVLS / symmetric memory) is off on the lent machines; keep it off in the child.
CHILD_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
# SGLang sets NCCL_CUMEM_ENABLE=0 in its processes unless the variable is inherited
# (entrypoints/engine.py:_set_envs_and_config), while the trainer's NCCL defaults to cuMem on.
# NCCL peers that disagree on it do not connect: the first weight broadcast hung. So the trainer
# takes SGLang's own value, 0, before its NCCL starts (pin_nccl_env), and the child inherits it.
# A value the user set is kept and passed on.
NCCL_CUMEM = "0"
# What torchrun sets for a trainer rank. The SGLang child must not inherit it: with
# TORCHELASTIC_USE_AGENT_STORE=True torch's tcp:// rendezvous makes every rank a client of
# torchrun's store, so SGLang's own distributed init waited forever.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
                "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry if it is taken since)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin_nccl_env() -> str:
    """Fix NCCL_CUMEM_ENABLE in this process (SGLang's value, unless set); the SGLang child inherits it."""
    return os.environ.setdefault("NCCL_CUMEM_ENABLE", NCCL_CUMEM)


def child_env() -> dict[str, str]:
    """The environment of a server child: ours without torchrun's variables, multicast off, our NCCL_CUMEM."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}
    env.update(CHILD_ENV)
    env["NCCL_CUMEM_ENABLE"] = pin_nccl_env()
    env["PYTHONUNBUFFERED"] = "1"
    return env


def init_distributed(device) -> tuple[int, int]:
    """Join (torchrun) or create (world size 1) the default process group; return (rank, world size)."""
    import torch.distributed as dist

    pin_nccl_env()  # before our first NCCL call: the SGLang server must use the same setting
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
            dist.init_process_group(backend, timeout=timeout)
        else:
            store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def broadcast_object(obj, world: int):
    """Rank 0's obj on every rank (a collective when world > 1)."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, world: int) -> list:
    """Every rank's obj, in rank order, on every rank (a collective when world > 1)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
