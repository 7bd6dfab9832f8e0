"""SGLang engine, server lifecycle and HTTP client against a real child process on 127.0.0.1.

The child is tests/fake_sglang.py (real SGLang needs a GPU): it has SGLang's request and
reply shapes, so process handling, HTTP, grouping and version checks are real here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gsm8k_grpo.config import RolloutConfig
from gsm8k_grpo.rollout import server as server_mod
from gsm8k_grpo.rollout.base import EngineError, SamplingParams
from gsm8k_grpo.rollout.client import SGLangClient
from gsm8k_grpo.rollout.server import NOT_INSTALLED, SGLangServer
from gsm8k_grpo.rollout.sglang_engine import SGLangEngine
from server_helpers import alive, wait_for_log_before_health_deadline

FAKE = str(Path(__file__).with_name("fake_sglang.py"))
SRC = str(Path(__file__).resolve().parents[1] / "src")


def fake_cmd(*flags: str) -> list[str]:
    return [sys.executable, FAKE, *flags]


def make_engine(tmp_path: Path, *flags: str, **kw) -> SGLangEngine:
    cfg = RolloutConfig(server_timeout_s=20)
    return SGLangEngine("fake-model", cfg, tmp_path, launch_cmd=fake_cmd(*flags), **kw)


def test_server_lifecycle(tmp_path):
    srv = SGLangServer("m", mem_fraction=0.5, extra_args=["--weight-version", "0"], log_path=tmp_path / "s.log",
                       timeout_s=20, launch_cmd=fake_cmd())
    with srv:
        pid = srv.pid
        assert alive(pid) and srv in server_mod._LIVE
        srv.check_alive()
        assert SGLangClient(srv.base_url).call("/model_info", method="GET")["weight_version"] == "0"
    assert not alive(pid) and srv not in server_mod._LIVE
    assert "listening on 127.0.0.1" in (tmp_path / "s.log").read_text()
    srv.stop()  # idempotent


def test_default_command_and_child_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    monkeypatch.delenv("NCCL_CUMEM_ENABLE", raising=False)  # restored (unset) afterwards
    srv = SGLangServer("/m", mem_fraction=0.3, extra_args=["--attention-backend", "triton"], log_path=tmp_path / "l",
                       timeout_s=1, gpu_ids=[2], enable_memory_saver=True, dtype="bfloat16", python="/py")
    assert srv.command(1234) == [
        "/py", "-m", "sglang.launch_server", "--model-path", "/m", "--host", "127.0.0.1", "--skip-tokenizer-init",
        "--mem-fraction-static", "0.3", "--enable-memory-saver", "--dtype", "bfloat16", "--port", "1234",
        "--attention-backend", "triton"]
    env = srv._env()
    assert env["CUDA_VISIBLE_DEVICES"] == "6" and env["NCCL_NVLS_ENABLE"] == "0"
    # pinned here and passed on: SGLang's 0, which would otherwise differ from the trainer NCCL's default 1
    assert env["NCCL_CUMEM_ENABLE"] == os.environ["NCCL_CUMEM_ENABLE"] == "0"
    monkeypatch.setenv("NCCL_CUMEM_ENABLE", "1")  # a user's own value is passed on as it is
    assert srv._env()["NCCL_CUMEM_ENABLE"] == "1"
    assert env["TORCH_SYMM_MEM_DISABLE_MULTICAST"] == "1" and env["NVSHMEM_DISABLE_NVLS"] == "1"


def test_health_timeout_reports_log_tail(tmp_path, monkeypatch):
    """The health deadline starts once the stand-in is up (however long the machine takes to start
    it), so the test measures the timeout path and not the machine's speed."""
    wait_for_log_before_health_deadline(monkeypatch, "never healthy")
    srv = SGLangServer("m", mem_fraction=0.5, extra_args=[], log_path=tmp_path / "s.log", timeout_s=1.5,
                       launch_cmd=fake_cmd("--never-healthy"))
    with pytest.raises(EngineError, match="not healthy after 2s") as e:
        srv.start()
    assert "never healthy" in str(e.value) and srv.proc is None


def test_early_exit_reports_log_tail(tmp_path):
    cmd = [sys.executable, "-c", "import sys; print('boom: no model'); sys.exit(2)"]
    srv = SGLangServer("m", mem_fraction=0.5, extra_args=[], log_path=tmp_path / "s.log", timeout_s=20, launch_cmd=cmd)
    with pytest.raises(EngineError, match="exited with code 2 during startup") as e:
        srv.start()
    assert "boom: no model" in str(e.value)


def test_crash_after_start_reports_log_tail(tmp_path):
    with make_engine(tmp_path, "--die-after", "1") as eng:
        eng.generate([[1, 2]], SamplingParams(n=2, max_new_tokens=3))
        with pytest.raises(EngineError, match="exited with code 3") as e:
            eng.generate([[1, 2]], SamplingParams(n=2, max_new_tokens=3))
        assert "illegal memory access" in str(e.value)


def test_sglang_not_installed(tmp_path, monkeypatch):
    real = server_mod.importlib.util.find_spec
    monkeypatch.setattr(server_mod.importlib.util, "find_spec", lambda n, *a: None if n == "sglang" else real(n, *a))
    srv = SGLangServer("m", mem_fraction=0.5, extra_args=[], log_path=tmp_path / "s.log", timeout_s=5)
    with pytest.raises(EngineError) as e:
        srv.start()
    assert str(e.value) == NOT_INSTALLED


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_parent_killed_leaves_no_orphan(tmp_path, sig):
    """SIGINT/SIGTERM: the cleanup stops the server. SIGKILL runs no cleanup at all: the child's
    parent-death signal (prctl) kills it, so `kill -9` then `grpo resume` finds the GPU free."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from gsm8k_grpo.rollout.server import SGLangServer
        s = SGLangServer("m", mem_fraction=0.5, extra_args=[], log_path=Path({str(tmp_path / 's.log')!r}),
                         timeout_s=20, launch_cmd=[sys.executable, {FAKE!r}], stop_grace_s=5)
        s.start()
        print(s.pid, flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": SRC}
    # SIGINT back to default first: a suite run as a background job (`nohup … &`) inherits it ignored,
    # and Python then never raises KeyboardInterrupt (seen on 2026-11-27: the SIGINT case timed out)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.send_signal(sig)
        assert parent.wait(timeout=15) != 0
        deadline = time.monotonic() + 5
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "SGLang stand-in survived its parent"
    finally:
        parent.kill()
        parent.wait()


def test_sigterm_handler_stops_servers_first(tmp_path):
    """The one SIGTERM handler (`grpo train` installs it up front, for its one-line exit 143 in
    tests/test_train.py) stops every live server before it unwinds the program."""
    srv = SGLangServer("m", mem_fraction=0.5, extra_args=[], log_path=tmp_path / "s.log", timeout_s=20,
                       launch_cmd=fake_cmd(), stop_grace_s=5)
    srv.start()
    pid = srv.pid
    try:
        assert alive(pid)
        with pytest.raises(server_mod.Terminated) as e:
            server_mod.on_sigterm(signal.SIGTERM, None)
        assert e.value.code == 143 and srv.proc is None and not alive(pid)
    finally:
        srv.stop()


def test_generate_regroups_and_splits_requests(tmp_path):
    prompts = [[9, 1], [9, 2], [9, 3]]
    with make_engine(tmp_path, max_prompts_per_request=2) as eng:  # 3 prompts -> 2 concurrent requests
        groups = eng.generate(prompts, SamplingParams(n=4, max_new_tokens=5, stop_token_ids=(201,)))
        assert len(groups) == 3
        for p, group in zip(prompts, groups):
            assert [c.token_ids[0] for c in group] == [p[-1]] * 4  # each sample belongs to its prompt
            assert sorted(c.token_ids[1] for c in group) == [100, 101, 102, 103]
            for c in group:
                assert c.token_ids[2:] == [200, 201] and c.finish_reason == "stop"
                assert c.logprobs == [-t / 1000 for t in c.token_ids] and c.weight_version == 0
        short = eng.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=2))
        assert [c.finish_reason for c in short[0]] == ["length", "length"]
        assert [len(c.token_ids) for c in short[0]] == [2, 2]


def test_weight_version_mismatch_raises(tmp_path):
    with make_engine(tmp_path) as eng:
        eng.client.call("/update_weight_version", {"new_version": "7"})
        with pytest.raises(EngineError, match="weight version 7, expected 0"):
            eng.generate([[1]], SamplingParams(n=2, max_new_tokens=2))


def test_disk_update_through_engine(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    (d / "model.safetensors.index.json").write_text('{"weight_map": {"a": "x.safetensors"}}')
    with make_engine(tmp_path) as eng:
        eng.load_weights_from_disk(str(d), 3)
        assert eng.weight_version == 3
        state = eng.client.call("/_state", method="GET")
        assert state["disk_updates"][0]["path"] == str(d) and state["disk_updates"][0]["weight_version"] == "3"
        assert eng.generate([[5]], SamplingParams(n=2, max_new_tokens=1))[0][0].weight_version == 3


@pytest.mark.parametrize("bracket", [False, True])
def test_bracket_detection(tmp_path, bracket):
    flags = ["--bracket"] if bracket else []
    with make_engine(tmp_path, *flags) as eng:
        c = eng.client
        assert c.needs_bracket() is bracket and c._bracket is bracket  # probed once, cached
        if bracket:
            with pytest.raises(EngineError, match="must run between begin_weight_update"):
                c.update_weights_from_tensor(["x"], "flattened_bucket", 1)
        with c.weight_update_session():
            c.update_weights_from_tensor(["x"], "flattened_bucket", 1)
        calls = c.call("/_state", method="GET")["calls"]
        expected = ["/begin_weight_update", "/update_weights_from_tensor", "/end_weight_update"]
        assert calls[-3:] == expected if bracket else calls == ["/update_weights_from_tensor"]


def test_session_always_closed_and_memory_always_resumed(tmp_path):
    """A failure inside a weight-update session or with SGLang's memory released still closes the
    session and re-allocates the memory (a server left without its weights would serve garbage)."""
    with make_engine(tmp_path, "--bracket") as eng:
        c = eng.client
        with pytest.raises(RuntimeError, match="boom"), c.weight_update_session():
            raise RuntimeError("boom")
        assert not c.call("/_state", method="GET")["session_open"]
        with pytest.raises(RuntimeError, match="boom"), eng.memory_released():
            raise RuntimeError("boom")
    log = (tmp_path / "sglang_server.log").read_text()
    assert log.count("release_memory_occupation") == log.count("resume_memory_occupation") == 1
