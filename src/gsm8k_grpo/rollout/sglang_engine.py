"""The SGLang rollout engine: an SGLang server child process driven over HTTP.

Construction starts the server (``--weight-version 0``, log in ``RUN_DIR/sglang_server.log``)
and waits until it is healthy. Every generation must report the engine's current
``weight_version``: a mismatch means a weight push was lost and raises EngineError. When a
request fails because the server died, the error carries the server's last log lines.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gsm8k_grpo.config import RolloutConfig
from gsm8k_grpo.rollout.base import Completion, EngineError, SamplingParams
from gsm8k_grpo.rollout.client import ServerUnreachable, SGLangClient
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
        self.tp_size = max(1, len(gpu_ids or []))
        extra = list(rollout_cfg.server_args)
        if "--weight-version" not in extra:
            extra += ["--weight-version", "0"]
        if self.tp_size > 1 and not {"--tp-size", "--tp"} & set(extra):
            extra += ["--tp-size", str(self.tp_size)]
        self.server = SGLangServer(
            model_path,
            mem_fraction=rollout_cfg.mem_fraction,
            extra_args=extra,
            log_path=Path(run_dir) / "sglang_server.log",
            timeout_s=rollout_cfg.server_timeout_s,
            gpu_ids=gpu_ids,
            enable_memory_saver=rollout_cfg.enable_memory_saver,
            launch_cmd=launch_cmd,
        )
        self.server.start()
        self.client = SGLangClient(self.server.base_url, max_prompts_per_request=max_prompts_per_request)

    def _call(self, fn: Callable[..., T], *args) -> T:
        try:
            return fn(*args)
        except ServerUnreachable:
            self.server.check_alive(wait_s=3.0)  # a dying server explains itself with its log tail
            raise
        except EngineError:
            self.server.check_alive()
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

    def release_memory(self) -> None:
        """Free the server's weights and KV cache (needs --enable-memory-saver); push weights after resume."""
        self._call(self.client.release_memory_occupation)

    def resume_memory(self) -> None:
        """Re-allocate what release_memory freed; the weights are garbage until the next push."""
        self._call(self.client.resume_memory_occupation)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.server.stop()

    def __enter__(self) -> SGLangEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
