"""`grpo doctor`: read-only checks of this host (doctor/host.py) and of one run config (doctor/run.py).

Every check returns a Check (ok / warn / fail, a one-line detail, a one-line fix) and none raises:
an unexpected exception becomes a 'fail' carrying its first line. The exit code is 0 when the
checked run can start here (warnings allowed) and 1 when a check fails. No torch at import (the CLI
imports this module); the slow parts are the two-process GPU checks and one hub HEAD request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from gsm8k_grpo.config import RunConfig
from gsm8k_grpo.doctor import host, run
from gsm8k_grpo.doctor.base import Check, Context, one_line

# order matters: later checks read facts (torch, GPUs, IPC result, placement) found by earlier ones
CHECKS: list[tuple[str, Callable[[Context], Check]]] = [
    ("python", host.check_python),
    ("packages", host.check_packages),
    ("cuda", host.check_cuda),
    ("gpu", host.check_gpu),
    ("sglang", host.check_sglang),
    ("cuda_ipc", host.check_cuda_ipc),
    ("nccl", host.check_nccl),
    ("shm", host.check_shm),
    ("disk", host.check_disk),
    ("port", host.check_port),
    ("model", run.check_model),
    ("data", run.check_data),
    ("wandb", run.check_wandb),
    ("transport", run.check_transport),
    ("memory", run.check_memory),
]


def run_checks(cfg: RunConfig | None = None, run_dir: Path | None = None, quick: bool = False,
               card_bytes: float | None = None) -> list[Check]:
    """Run every check (read-only) and return the results in a fixed order; never raises.

    cfg None = the default RunConfig (what `grpo train` with no preset would run); run_dir None =
    cfg.run_dir. quick skips the two-process GPU checks and the hub probe. card_bytes: the memory
    check plans for one card of that size (grpo doctor --gpu-memory) instead of this host's GPUs.
    """
    cfg = cfg if cfg is not None else RunConfig()
    ctx = Context(cfg=cfg, run_dir=Path(run_dir) if run_dir is not None else cfg.run_dir, quick=quick,
                  card_bytes=card_bytes)
    out: list[Check] = []
    for name, fn in CHECKS:
        try:
            out.append(fn(ctx))
        except Exception as e:  # noqa: BLE001 - a check must never take the doctor down
            out.append(Check(name, "fail", f"check crashed: {one_line(e)}", "see docs/troubleshooting.md"))
    return out


_STYLE = {"ok": "bold green", "warn": "bold yellow", "fail": "bold red"}


def render(checks: list[Check], console) -> None:
    """Print a table (status, check, detail, fix) and a one-line verdict on a rich Console."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="grpo doctor", show_lines=False, expand=False)
    table.add_column("status", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in checks:
        # Text(), not markup: details contain brackets such as gsm8k-grpo[sglang]
        table.add_row(Text(c.status.upper(), style=_STYLE.get(c.status, "")), Text(c.name), Text(c.detail), Text(c.fix))
    console.print(table)
    n = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
    failed = [c.name for c in checks if c.status == "fail"]
    verdict = "a run can start" if not failed else f"this run cannot start here: fix {', '.join(failed)}"
    style = "red" if n["fail"] else ("yellow" if n["warn"] else "green")
    console.print(Text(f"{n['ok']} ok, {n['warn']} warn, {n['fail']} fail: {verdict}", style=style))


def to_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.status == "fail" for c in checks) else 0
