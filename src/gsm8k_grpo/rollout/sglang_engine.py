"""The SGLang rollout engine: SGLang server child processes driven over HTTP.

Construction starts the server (``--weight-version 0``, log in ``RUN_DIR/sglang_server.log``)
and waits until it is healthy. With several GPUs and ``rollout.parallel=dp`` there is one server
per GPU (logs ``sglang_server_<i>.log`` after the first), started at once, behind
ReplicaClients; with ``tp`` one server spans them (``--tp-size``).

Every generation must report the engine's current ``weight_version``: a mismatch means a weight
push was lost and raises EngineError. When a request fails because a server died, the error
carries that server's last log lines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from gsm8k_grpo.config import RolloutConfig
from gsm8k_grpo.rollout.base import Completion, EngineError, SamplingParams
from gsm8k_grpo.rollout.client import ReplicaClients, ServerUnreachable, SGLangClient
from gsm8k_grpo.rollout.server import SGLangServer

T = TypeVar("T")


class SGLangEngine:
    def __init__(
        self,
        model_path: str,
        rollout_cfg: RolloutConfig,
        run_dir: Path,
        gpu_ids: list[int] | None = None,
        launch_cmd: list[str] | None = None,
        *,
        max_prompts_per_request: int = 64,
    ):
        self.weight_version = 0
        self.gpu_ids = gpu_ids
        dp = gpu_ids is not None and len(gpu_ids) > 1 and rollout_cfg.parallel == "dp"
        placements = [[g] for g in gpu_ids] if dp else [gpu_ids]   # GPUs of each server
        self.tp_size = max(1, len(placements[0] or []))             # ranks of one server
        self.server_ranks = len(placements) * self.tp_size          # ranks of all servers (NCCL group)
        extra = list(rollout_cfg.server_args)
        if "--weight-version" not in extra:
            extra += ["--weight-version", "0"]
        if self.tp_size > 1 and not {"--tp-size", "--tp"} & set(extra):
            extra += ["--tp-size", str(self.tp_size)]
        self.servers = [SGLangServer(
            model_path,
            mem_fraction=rollout_cfg.mem_fraction,
            extra_args=extra,
            log_path=Path(run_dir) / ("sglang_server.log" if i == 0 else f"sglang_server_{i}.log"),
            timeout_s=rollout_cfg.server_timeout_s,
            gpu_ids=gpus,
            enable_memory_saver=rollout_cfg.enable_memory_saver,
            launch_cmd=launch_cmd,
        ) for i, gpus in enumerate(placements)]
        self._start_all()
        clients = [SGLangClient(s.base_url, max_prompts_per_request=max_prompts_per_request) for s in self.servers]
        self.client = clients[0] if len(clients) == 1 else ReplicaClients(clients, self.tp_size)

    def _start_all(self) -> None:
        """Launch every server (each takes a minute or more), then wait for each; on any failure
        stop them all. Launched from this thread, which outlives them (see SGLangServer.launch)."""
        try:
            for s in self.servers:
                s.launch()
            for s in self.servers:
                s.wait_until_healthy()
        except BaseException:
            for s in self.servers:
                s.stop()
            raise

    @property
    def server(self) -> SGLangServer:
        """The first (with tp, the only) server."""
        return self.servers[0]

    @property
    def startup_s(self) -> float | None:
        """Seconds until every server was healthy."""
        times = [s.startup_s for s in self.servers]
        return None if None in times else max(times)

    def check_alive(self, wait_s: float = 0.0) -> None:
        for s in self.servers:
            s.check_alive(wait_s=wait_s)

    def _call(self, fn: Callable[..., T], *args) -> T:
        try:
            return fn(*args)
        except ServerUnreachable:
            self.check_alive(wait_s=3.0)  # a dying server explains itself with its log tail
            raise
        except EngineError:
            self.check_alive()
            raise

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        groups = self._call(self.client.generate, prompts, params)
        for group in groups:
            for c in group:
                if c.weight_version is not None and c.weight_version != self.weight_version:
                    raise EngineError(
                        f"SGLang generated with weight version {c.weight_version}, expected "
                        f"{self.weight_version}: a weight update was lost or came from elsewhere"
                    )
        return groups

    def load_weights_from_disk(self, path: str, version: int) -> None:
        self._call(self.client.update_weights_from_disk, str(path), version)
        self.weight_version = version

    @contextmanager
    def memory_released(self) -> Iterator[None]:
        """Free the server's weights and KV cache for the block (--enable-memory-saver) and re-allocate
        them after it, also when it fails. The weights are garbage until the next push."""
        self._call(self.client.release_memory_occupation)
        try:
            yield
        finally:
            self._call(self.client.resume_memory_occupation)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            for s in self.servers:
                s.stop()

    def __enter__(self) -> SGLangEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
