"""NCCL transport: broadcast the weights from the trainer (rank 0) to the SGLang server's ranks.

Group setup mirrors SGLang's ``init_custom_process_group`` (its server side runs exactly that
with ``init_method=tcp://addr:port``): a TCP rendezvous whose rank 0 (us) hosts the store, a
``PrefixStore(group_name)`` and a fresh process group outside the default one. A plain
``init_process_group`` would hang. ``POST /init_weights_update_group`` and our join block on
each other, so both run in threads. Per bucket, ``POST /update_weights_from_distributed``
(names/dtypes/shapes, in broadcast order) runs in a thread while we broadcast each tensor.
Two ranks on one GPU cannot form an NCCL group, so a shared GPU is refused up front.
``backend`` is a parameter so tests can run the same protocol over gloo on CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from datetime import timedelta

import torch
import torch.distributed as dist

from gsm8k_grpo.rollout.base import Engine, EngineError
from gsm8k_grpo.rollout.client import SGLangClient
from gsm8k_grpo.rollout.server import free_port
from gsm8k_grpo.weights.base import PushStats, Transport, TransportError, buckets

log = logging.getLogger("gsm8k_grpo")
SAME_GPU = ("NCCL cannot connect two ranks on the same GPU ('Duplicate GPU detected'); "
            "use weights.transport=ipc or disk")


def init_custom_process_group(backend: str, init_method: str, world_size: int, rank: int, group_name: str,
                              timeout: timedelta) -> dist.ProcessGroup:
    """SGLang's ``init_custom_process_group`` (from OpenRLHF/PyTorch), reduced to the tcp:// path."""
    from torch.distributed.distributed_c10d import PrefixStore, _new_process_group_helper, _world, rendezvous

    store, rank, world_size = next(rendezvous(init_method, rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)
    pg, _ = _new_process_group_helper(world_size, rank, [], dist.Backend(backend), store,
                                      group_name=group_name, backend_options=None, timeout=timeout)
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def _in_thread(fn: Callable, *args) -> Future:
    """Run fn in a daemon thread (a stuck rendezvous must not block interpreter exit)."""
    fut: Future = Future()

    def run() -> None:
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            fut.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return fut


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")  # SGLang resolves it with getattr(torch, name)


class NCCLTransport(Transport):
    name = "nccl"

    def __init__(
        self,
        client: SGLangClient,
        bucket_mb: int,
        master_port: int | None = None,
        group_name: str = "gsm8k_grpo_weights",
        *,
        backend: str = "nccl",
        server_ranks: int = 1,
        master_address: str = "127.0.0.1",
        trainer_gpu_uuids: Iterable[str] = (),
        server_gpu_uuids: Iterable[str] = (),
        timeout_s: float = 180.0,
        engine: Engine | None = None,
    ):
        if set(trainer_gpu_uuids) & set(server_gpu_uuids):
            raise TransportError(SAME_GPU)
        self.client = client
        self.bucket_bytes = bucket_mb << 20
        self.master_port = master_port
        self.group_name = group_name
        self.backend = backend
        self.server_ranks = server_ranks
        self.master_address = master_address
        self.timeout_s = timeout_s
        self.engine = engine  # its weight_version follows successful pushes
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        self.group: dist.ProcessGroup | None = None

    def _both(self, local: Future, remote: Future, what: str) -> None:
        """Wait for our side and the server's request; the first failure ends the wait."""
        done, pending = wait([local, remote], timeout=self.timeout_s, return_when=FIRST_EXCEPTION)
        for f in (remote, local):  # the server's message explains more than our side's timeout
            if f in done and f.exception() is not None:
                e = f.exception()
                raise TransportError(f"NCCL {what} failed: {e}") from e
        if pending:
            raise TransportError(f"NCCL {what} timed out after {self.timeout_s:.0f}s")

    def _connect(self) -> dist.ProcessGroup:
        port = self.master_port or free_port()
        world = 1 + self.server_ranks
        remote = _in_thread(self.client.init_weights_update_group, self.master_address, port, 1, world,
                            self.group_name, self.backend)
        local = _in_thread(init_custom_process_group, self.backend, f"tcp://{self.master_address}:{port}", world, 0,
                           self.group_name, timedelta(seconds=self.timeout_s))
        log.info("NCCL weight group: joining %s:%d as rank 0 of %d (%s)", self.master_address, port, world,
                 self.group_name)
        self._both(local, remote, f"group setup ({self.master_address}:{port}, world size {world})")
        log.info("NCCL weight group: ready")
        return local.result()

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> PushStats:
        t0 = time.perf_counter()
        if self.group is None:
            self.group = self._connect()
        total = n = 0
        try:
            with self.client.weight_update_session():
                for bucket in buckets(named_tensors, self.bucket_bytes):
                    tensors = [t.detach().to(self.device).contiguous() for _, t in bucket]
                    remote = _in_thread(
                        self.client.update_weights_from_distributed, [name for name, _ in bucket],
                        [_dtype_name(t.dtype) for t in tensors], [list(t.shape) for t in tensors],
                        self.group_name, version,
                    )
                    works = [dist.broadcast(t, src=0, group=self.group, async_op=True) for t in tensors]
                    self._both(_in_thread(lambda ws=works: [w.wait() for w in ws]), remote,
                               f"weight update to version {version} (bucket {n})")
                    if version <= 1 or self.engine is None:
                        log.info("NCCL push v%d: bucket %d sent (%d tensors)", version, n, len(tensors))
                    total += sum(t.numel() * t.element_size() for t in tensors)
                    n += 1
        except EngineError as e:
            raise TransportError(f"NCCL weight update to version {version} failed: {e}") from e
        if self.engine is not None:
            self.engine.weight_version = version
        return PushStats(seconds=time.perf_counter() - t0, bytes=total, buckets=n)

    def close(self) -> None:
        if self.group is None:
            return
        group, self.group = self.group, None
        try:
            self.client.destroy_weights_update_group(self.group_name)
        except EngineError as e:
            raise TransportError(f"NCCL group teardown failed: {e}") from e
        finally:
            dist.destroy_process_group(group)
