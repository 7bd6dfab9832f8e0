"""Helpers for tests that start server children (the stand-in tests/fake_sglang.py)."""

from __future__ import annotations

import time
from pathlib import Path

from gsm8k_grpo.rollout import server as server_mod
from gsm8k_grpo.rollout.server import SGLangServer


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for_log_before_health_deadline(monkeypatch, text: str, limit_s: float = 300.0) -> None:
    """Make every SGLangServer wait until its log holds `text` (the stand-in printed it) before its
    health deadline starts: a loaded machine may take seconds to start a Python child."""
    original = SGLangServer._wait_healthy

    def wait_then_check(self):
        deadline = time.monotonic() + limit_s
        while text not in server_mod.log_tail(self.log_path) and time.monotonic() < deadline:
            self.check_alive("during startup")
            time.sleep(0.05)
        return original(self)

    monkeypatch.setattr(SGLangServer, "_wait_healthy", wait_then_check)
