"""The rollout engine interface shared by the in-process HF engine and the SGLang server engine.

An engine turns prompt token ids into sampled completions with their per-token log-probs,
and accepts new policy weights (through a weights.Transport) that bump ``weight_version``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from gsm8k_grpo.errors import RunFailure


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1                      # samples per prompt
    temperature: float = 1.0        # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 512
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None         # engines that can seed sampling use it (HF does; SGLang per request)


@dataclass
class Completion:
    token_ids: list[int]            # generated ids, the stop token included when finish_reason == "stop"
    logprobs: list[float]           # engine log-prob of each generated token (len == len(token_ids))
    finish_reason: Literal["stop", "length"]
    weight_version: int | None = None  # the engine's weight version that produced it, when reported


class EngineError(RunFailure):
    """The engine failed (server died, bad reply); str() is meant for the user. Exit code 1."""


class EngineUnavailable(EngineError):
    """The engine asked for cannot run here (SGLang not installed): a setup problem, exit code 2."""

    exit_code = 2


@runtime_checkable
class Engine(Protocol):
    weight_version: int

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        """prompts: B lists of token ids -> B lists of params.n completions (group i for prompt i)."""
        ...

    def load_weights_from_disk(self, path: str, version: int) -> None:
        """Load a safetensors HF-layout dir as the new weights; set weight_version = version."""
        ...

    def close(self) -> None:
        ...
