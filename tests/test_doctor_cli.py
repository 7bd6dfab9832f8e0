"""`grpo doctor` through the real CLI (a subprocess): JSON shape, exit codes 0 / 1 / 2, the table's
verdict line, and the W&B key never reaching stdout or stderr."""

from __future__ import annotations

import json
import os
import sys

import pytest

from conftest import grpo

SENTINEL = "sentinel-XYZ"
STATUSES = {"ok", "warn", "fail"}


@pytest.fixture
def run(tmp_path):
    """grpo(...) from an empty folder (no ./wandb key file, ./runs lands in tmp), wide non-tty output."""
    def _run(*args, env=None):
        e = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", **(env or {})}
        return grpo("doctor", *args, cwd=tmp_path, env=e, timeout=120)
    return _run


def _report(p) -> dict:
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"stdout is not JSON (rc {p.returncode}):\n{p.stdout}\n--- stderr\n{p.stderr}")


def _by_name(report: dict) -> dict:
    return {c["name"]: c for c in report["checks"]}


def test_json_quick_cpu_host(run):
    p = run("--preset", "smoke", "--json", "--quick")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = _report(p)
    assert set(rep) == {"ok", "checks"} and rep["ok"] is True
    assert rep["checks"], "no checks reported"
    for c in rep["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"}, c
        assert c["status"] in STATUSES and c["detail"] and "\n" not in c["detail"], c
    checks = _by_name(rep)
    for name in ("python", "packages", "cuda", "gpu", "disk", "wandb", "memory"):
        assert name in checks
    if "CUDA not available" not in checks["cuda"]["detail"]:
        pytest.skip("this host has a usable GPU; the 'no GPU' warning is a CPU-host check")
    assert checks["gpu"]["status"] == "warn" and "no GPU" in checks["gpu"]["detail"]


def test_json_quick_smoke_preset(run):
    p = run("--preset", "smoke", "--json", "--quick")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = _report(p)
    assert rep["ok"] is True and all(c["status"] != "fail" for c in rep["checks"])


def _assert_disk_fail(p, needle: str) -> None:
    assert p.returncode == 1, p.stdout + p.stderr
    rep = _report(p)
    assert rep["ok"] is False
    disk = _by_name(rep)["disk"]
    assert disk["status"] == "fail" and needle in disk["detail"] and disk["fix"], disk
    assert [c["name"] for c in rep["checks"] if c["status"] == "fail"] == ["disk"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc"), reason="needs Linux /proc")
def test_unwritable_output_dir_fails_proc(run):
    # not writable for a normal user; for root /proc is 'writable' but has 0 bytes free: a fail either way
    _assert_disk_fail(run("--preset", "smoke", "--json", "--quick", "--set", "output_dir=/proc/forbidden"),
                      "/proc/forbidden")


def test_output_dir_under_a_file_fails(run, tmp_path):
    # works as root too: a run dir below a regular file can never be created
    (tmp_path / "a_file").write_text("x")
    _assert_disk_fail(run("--preset", "smoke", "--json", "--quick", "--set", f"output_dir={tmp_path / 'a_file'}"),
                      "not writable")


def test_output_dir_readonly_dir_fails(run, tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: permission bits do not make a directory unwritable")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        _assert_disk_fail(run("--preset", "smoke", "--json", "--quick", "--set", f"output_dir={ro}"), "not writable")
    finally:
        ro.chmod(0o755)


def test_bad_preset_exit_2_one_line(run):
    p = run("--preset", "no-such-preset", "--json", "--quick")
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stdout == ""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no-such-preset" in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_wandb_key_never_printed(run):
    env = {"WANDB_API_KEY": SENTINEL, "WANDB_MODE": "", "NETRC": "/nonexistent"}
    pj = run("--preset", "smoke", "--json", "--quick", env=env)
    pt = run("--preset", "smoke", "--quick", env=env)
    for p in (pj, pt):
        assert p.returncode == 0, p.stdout + p.stderr
        assert SENTINEL not in p.stdout and SENTINEL not in p.stderr
        assert "XYZ" not in p.stdout + p.stderr
    wandb = _by_name(_report(pj))["wandb"]
    assert "WANDB_API_KEY" in wandb["detail"], wandb  # the key was seen: only where it came from is shown


def test_table_has_verdict_line(run):
    p = run("--preset", "smoke", "--quick")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "grpo doctor" in p.stdout
    for name in ("python", "disk", "gpu"):
        assert name in p.stdout
    verdict = [ln for ln in p.stdout.splitlines() if "a run can start" in ln]
    assert len(verdict) == 1 and "0 fail" in verdict[0], p.stdout


def test_gpu_memory_plans_for_a_named_card(run):
    """--gpu-memory plans 1hour for one card of that size, here on a host without a GPU: 24 GiB fits
    with the settings grpo train would change, 17.5 GiB is tight (a warning), 8 GiB fails with what to
    change; a bad size is exit 2."""
    ok = _by_name(_report(run("--preset", "1hour", "--json", "--quick", "--gpu-memory", "24GiB")))["memory"]
    assert ok["status"] == "ok", ok
    assert "one 24.0 GiB card" in ok["detail"] and "trainer.micro_batch_tokens 16384 -> 2048" in ok["detail"]
    tight = _by_name(_report(run("--preset", "1hour", "--json", "--quick", "--gpu-memory", "17.5GiB")))["memory"]
    assert tight["status"] == "warn" and "tight" in tight["detail"], tight
    p = run("--preset", "1hour", "--json", "--quick", "--gpu-memory", "8GiB")
    small = _by_name(_report(p))["memory"]
    assert p.returncode == 1 and small["status"] == "fail" and "does not fit" in small["detail"], small
    assert small["fix"]
    bad = run("--preset", "1hour", "--quick", "--gpu-memory", "lots")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --gpu-memory: 'lots' is not a memory size (e.g. 12GiB, 16GB, 24576MiB)"], bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
