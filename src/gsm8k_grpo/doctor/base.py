"""What the doctor's checks share: the Check result, the facts found so far (Context), small helpers."""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from gsm8k_grpo.config import RunConfig

Status = Literal["ok", "warn", "fail"]
HUB_TIMEOUT_S = 3.0


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class Gpu:
    index: int
    name: str
    total: int
    free: int | None
    cc: tuple[int, int]

    @property
    def bf16(self) -> bool:
        return self.cc >= (8, 0)


@dataclass
class Context:
    """Facts shared between checks, filled in as the checks run (in order)."""

    cfg: RunConfig
    run_dir: Path
    quick: bool
    torch: Any = None
    torch_error: str | None = None
    cuda: bool = False
    gpus: list[Gpu] = field(default_factory=list)
    ipc_ok: bool | None = None
    placement: Any = None
    card_bytes: float | None = None   # --gpu-memory: plan for a card of this size instead of the GPUs here
    _hub: tuple[bool | None, str] | None = None

    def engine(self) -> str:
        """The engine `grpo train` would run (the production choice)."""
        from gsm8k_grpo.rollout import choose_engine

        return choose_engine(self.cfg.rollout.engine)

    def trainer_on_gpu(self) -> bool:
        d = self.cfg.trainer.device
        return d == "cuda" or (d == "auto" and self.cuda)

    def hub(self) -> tuple[bool | None, str]:
        """(reachable or None when not probed, words). One HEAD request per doctor run, bounded by HUB_TIMEOUT_S."""
        if self._hub is None:
            self._hub = hub_reachable(self.quick)
        return self._hub


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def pkg_version(*dists: str) -> str | None:
    """Installed version of the first distribution found (metadata only: never imports the package)."""
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def ver_tuple(v: str) -> tuple[int, ...]:
    out = []
    for part in v.split("+")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
        if not part.isdigit():
            break
    return tuple(out)


def load_torch(ctx: Context) -> None:
    if ctx.torch is None and ctx.torch_error is None:
        try:
            import torch

            ctx.torch = torch
        except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
            ctx.torch_error = one_line(e)


def hub_reachable(quick: bool) -> tuple[bool | None, str]:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    if quick:
        return None, "hub not probed (--quick)"
    url = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    result: list[tuple[bool, str]] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=HUB_TIMEOUT_S):
                pass
            result.append((True, f"{url} reachable"))
        except urllib.error.HTTPError as e:  # an HTTP answer still proves the network works
            result.append((True, f"{url} reachable (HTTP {e.code})"))
        except Exception as e:  # noqa: BLE001
            result.append((False, f"{url} unreachable ({one_line(e)})"))

    t = threading.Thread(target=probe, daemon=True)  # a thread also bounds a slow DNS lookup
    t.start()
    t.join(HUB_TIMEOUT_S + 0.5)
    if not result:
        return False, f"{url} unreachable (no answer in {HUB_TIMEOUT_S:.0f} s)"
    return result[0]
