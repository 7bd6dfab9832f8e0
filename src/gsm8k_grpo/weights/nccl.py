"""NCCL transport: broadcast the weights from the trainer (rank 0) to the SGLang server's ranks.

Group setup mirrors SGLang's ``init_custom_process_group`` (its server side runs exactly that
with ``init_method=tcp://addr:port``): a TCP rendezvous whose rank 0 (us) hosts the store, a
``PrefixStore(group_name)`` and a fresh process group outside the default one. A plain
``init_process_group`` would hang. ``POST /init_weights_update_group`` and our join block on
each other, so both run in threads. Per bucket, ``POST /update_weights_from_distributed``
(names/dtypes/shapes, in broadcast order) runs in a thread while we broadcast each tensor.
Two ranks on one GPU cannot form an NCCL group, so a shared GPU is refused up front.
``backend`` is a parameter so tests can run the same protocol over gloo on CPU.

NCCL groups connect lazily: the communicator is built inside the first broadcast, on both sides.
That call blocks until the peers connect, so all our NCCL work (broadcasts, waiting for them)
runs in a thread too and the main thread only waits, with a timeout that names the stage and
says which side is still pending. Both sides must share NCCL_CUMEM_ENABLE (rollout/server.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from datetime import timedelta
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from gsm8k_grpo.distributed import free_port
from gsm8k_grpo.rollout.base import Engine, EngineError
from gsm8k_grpo.rollout.client import SGLangClient
from gsm8k_grpo.weights.base import PushStats, Transport, TransportError, buckets

log = logging.getLogger("gsm8k_grpo")
SAME_GPU = ("NCCL cannot connect two ranks on the same GPU ('Duplicate GPU detected'); "
            "use weights.transport=ipc or disk")


def init_custom_process_group(backend: str, init_method: str, world_size: int, rank: int, group_name: str,
                              timeout: timedelta) -> dist.ProcessGroup:
    """SGLang's ``init_custom_process_group`` (from OpenRLHF/PyTorch), reduced to the tcp:// path.

    The store is the one torch's tcp:// rendezvous builds (hosted by rank 0, multi-tenant), made
    directly: under torchrun, ``rendezvous()`` would make this rank a client of torchrun's agent
    store (TORCHELASTIC_USE_AGENT_STORE) and nobody would host the group's store."""
    from torch.distributed.distributed_c10d import PrefixStore, _new_process_group_helper, _world

    url = urlparse(init_method)
    store = dist.TCPStore(url.hostname, url.port, world_size, is_master=rank == 0, timeout=timeout, multi_tenant=True)
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
        self.broken: str | None = None  # set when a push failed half-way; later pushes refuse
        self._fresh = True  # no broadcast yet: the first one builds the NCCL communicator
        self._side = None   # CUDA side stream of the broadcasts

    def _both(self, local: Future, remote: Future, what: str, ours: str, theirs: str) -> None:
        """Wait for our side and the server's request; the first failure ends the wait.

        On timeout the message names the stage and which side is still pending."""
        done, pending = wait([local, remote], timeout=self.timeout_s, return_when=FIRST_EXCEPTION)
        for f in (remote, local):  # the server's message explains more than our side's timeout
            if f in done and f.exception() is not None:
                e = f.exception()
                raise TransportError(f"NCCL {what} failed: {e}") from e
        if pending:
            state = "; ".join(f"{name}: {'done' if f.done() else 'still waiting'}"
                              for name, f in ((ours, local), (theirs, remote)))
            raise TransportError(f"NCCL {what} timed out after {self.timeout_s:.0f}s ({state}); run with "
                                 "NCCL_DEBUG=INFO and read the SGLang server log")

    def _connect(self) -> dist.ProcessGroup:
        port = self.master_port or free_port()
        world = 1 + self.server_ranks
        remote = _in_thread(self.client.init_weights_update_group, self.master_address, port, 1, world,
                            self.group_name, self.backend)
        local = _in_thread(init_custom_process_group, self.backend, f"tcp://{self.master_address}:{port}", world, 0,
                           self.group_name, timedelta(seconds=2 * self.timeout_s))  # ours fires first
        log.info("NCCL weight group: joining %s:%d as rank 0 of %d (%s, backend %s, NCCL_CUMEM_ENABLE=%s)",
                 self.master_address, port, world, self.group_name, self.backend,
                 os.environ.get("NCCL_CUMEM_ENABLE", "unset"))
        self._both(local, remote, f"group setup ({self.master_address}:{port}, world size {world})",
                   "our rendezvous", "POST /init_weights_update_group")
        log.info("NCCL weight group: ready (the NCCL communicator connects in the first broadcast)")
        return local.result()

    def _broadcast(self, tensors: list[torch.Tensor], stream) -> None:
        """Broadcast tensors as rank 0 and wait until they are sent (runs in a thread)."""
        if stream is not None:
            torch.cuda.set_device(self.device)  # a new thread starts on GPU 0
        # on CUDA, the side stream, ordered after the one that made the tensors
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            works = [dist.broadcast(t, src=0, group=self.group, async_op=True) for t in tensors]
            for w in works:
                w.wait()  # NCCL: only orders the stream after the broadcast ...
            if stream is not None:
                stream.synchronize()  # ... this waits for it, so "done" means sent

    def _send_bucket(self, bucket: list[tuple[str, torch.Tensor]], version: int, n: int, loud: bool) -> int:
        """One bucket: the server's receive request and our broadcast, concurrently -> bytes sent."""
        tensors = [t.detach().to(self.device).contiguous() for _, t in bucket]
        size = sum(t.numel() * t.element_size() for t in tensors)
        say = log.info if loud else log.debug
        say("NCCL push v%d bucket %d: %d tensors, %.1f MB: POST /update_weights_from_distributed + broadcast%s",
            version, n, len(tensors), size / 2**20, " (first: builds the NCCL communicator)" if self._fresh else "")
        remote = _in_thread(
            self.client.update_weights_from_distributed, [name for name, _ in bucket],
            [_dtype_name(t.dtype) for t in tensors], [list(t.shape) for t in tensors], self.group_name, version,
        )
        stream = None
        if self.device.type == "cuda":  # a side stream: a stalled broadcast must not stall the main one
            stream = self._side = self._side or torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # the tensors are ready
            for t in tensors:
                t.record_stream(stream)  # the allocator keeps them until the side stream is done
        local = _in_thread(self._broadcast, tensors, stream)
        self._both(local, remote, f"weight update to version {version} (bucket {n}"
                   + (", first broadcast: NCCL communicator setup" if self._fresh else "") + ")",
                   "our broadcast", "POST /update_weights_from_distributed")
        self._fresh = False
        say("NCCL push v%d bucket %d: sent and applied by the server", version, n)
        return size

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> PushStats:
        t0 = time.perf_counter()
        if self.broken is not None:
            raise TransportError(f"NCCL weight group is unusable after an earlier failure: {self.broken}")
        loud = self._fresh or version <= 1 or self.engine is None
        total = n = 0
        try:
            if self.group is None:
                self.group = self._connect()
            with self.client.weight_update_session():
                for bucket in buckets(named_tensors, self.bucket_bytes):
                    total += self._send_bucket(bucket, version, n, loud)
                    n += 1
        except EngineError as e:
            self.broken = f"weight update to version {version} failed: {e}"
            raise TransportError(f"NCCL {self.broken}") from e
        except TransportError as e:  # the group may be half-way through a broadcast: do not reuse it
            self.broken = str(e)
            raise
        if self.engine is not None:
            self.engine.weight_version = version
        if loud:
            log.info("NCCL push v%d: %d buckets, %.1f MB in %.2fs", version, n, total / 2**20,
                     time.perf_counter() - t0)
        return PushStats(seconds=time.perf_counter() - t0, bytes=total, buckets=n)

    def close(self) -> None:
        """Destroy the group on both sides; a stuck NCCL group must not block shutdown (timeouts)."""
        if self.group is None:
            return
        group, self.group = self.group, None
        remote = _in_thread(self.client.destroy_weights_update_group, self.group_name)
        local = _in_thread(dist.destroy_process_group, group)
        try:
            self._both(local, remote, "group teardown", "our destroy_process_group",
                       "POST /destroy_weights_update_group")
        except TransportError:
            if self.broken is None:
                raise
            log.warning("NCCL group teardown after a failed push did not finish cleanly")
