"""Transport interface: push the trainer's named tensors into the rollout engine.

The trainer calls ``push(named_tensors, version)`` after every successful update.
``named_tensors`` yields (HF parameter name, full tensor) pairs in a fixed order; a
transport may consume it lazily so at most one bucket is materialised at a time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from gsm8k_grpo.errors import RunFailure


@dataclass
class PushStats:
    seconds: float
    bytes: int
    buckets: int


class TransportError(RunFailure):
    """A weight push failed; str() is meant for the user. Exit code 1."""


class Transport(ABC):
    name: str = "base"

    @abstractmethod
    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> PushStats:
        ...

    def close(self) -> None:
        pass


def buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into lists of at most ~bucket_bytes (a tensor larger than that is a bucket alone)."""
    cur: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named_tensors:
        nbytes = t.numel() * t.element_size()
        if cur and size + nbytes > bucket_bytes:
            yield cur
            cur, size = [], 0
        cur.append((name, t))
        size += nbytes
    if cur:
        yield cur
