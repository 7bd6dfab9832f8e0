"""grpo doctor on a CPU host: shape of the report, a forced failure, and the W&B key never leaking."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from rich.console import Console

from gsm8k_grpo import doctor, memory
from gsm8k_grpo.config import build_config

SENTINEL = "sk-doctor-test-SENTINEL-0123456789abcdef"


@pytest.fixture
def smoke():
    return build_config(preset="smoke")


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    # run from an empty folder so a real ./wandb/.wandb_api_key never matters; no hub probes
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # conftest's 'disabled' would hide the key handling
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # this machine's own ~/.netrc never counts
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _rendered(checks) -> str:
    buf = io.StringIO()
    doctor.render(checks, Console(file=buf, width=200, force_terminal=False, color_system=None))
    return buf.getvalue()


def _by_name(checks):
    return {c.name: c for c in checks}


def test_cpu_host_report_shape(smoke, tmp_path):
    checks = doctor.run_checks(smoke, run_dir=tmp_path / "run")
    data = doctor.to_json(checks)
    json.dumps(data)  # serialisable
    assert set(data) == {"ok", "checks"}
    assert isinstance(data["ok"], bool)
    for c in data["checks"]:
        assert set(c) == {"name", "status", "detail", "fix"}
        assert c["status"] in ("ok", "warn", "fail")
        assert c["detail"] and "\n" not in c["detail"]
    names = [c["name"] for c in data["checks"]]
    assert len(names) == len(set(names))
    for expected in ("python", "packages", "sglang", "cuda", "gpu", "nccl", "cuda_ipc", "shm", "disk", "port",
                     "model", "data", "wandb", "transport", "memory"):
        assert expected in names

    by = _by_name(checks)
    assert by["gpu"].status == "warn" and "no GPU" in by["gpu"].detail
    assert by["sglang"].status == "ok" and ("not needed" in by["sglang"].detail or "unused" in by["sglang"].detail)
    assert by["nccl"].status == "ok" and "skipped" in by["nccl"].detail
    assert by["model"].status == "ok"  # builtin folder, random init
    assert by["memory"].status == "ok" and "params" in by["memory"].detail
    assert by["packages"].status == "ok" and "declared ranges" in by["packages"].detail
    assert [c for c in checks if c.status == "fail"] == []
    assert data["ok"] is True
    assert doctor.exit_code(checks) == 0
    text = _rendered(checks)
    assert "gpu" in text and "no GPU" in text and "a run can start" in text


def test_disk_failure_gives_exit_code_1(smoke, tmp_path, monkeypatch):
    # shutil.disk_usage is monkeypatched because a test cannot fill a real disk: 1 GiB free < the 2 GiB floor
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * 2**30, 99 * 2**30, 1 * 2**30))
    checks = doctor.run_checks(smoke, run_dir=tmp_path / "run")
    disk = _by_name(checks)["disk"]
    assert disk.status == "fail" and disk.fix
    assert doctor.exit_code(checks) == 1
    assert doctor.to_json(checks)["ok"] is False
    assert "this run cannot start here: fix disk" in _rendered(checks)


def test_disk_low_is_a_warning(smoke, tmp_path, monkeypatch):
    Usage = namedtuple("Usage", "total used free")  # monkeypatched: see above
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * 2**30, 95 * 2**30, 5 * 2**30))
    disk = _by_name(doctor.run_checks(smoke, run_dir=tmp_path))["disk"]
    assert disk.status == "warn"


def test_wandb_key_never_printed(smoke, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SENTINEL)
    checks = doctor.run_checks(smoke, run_dir=tmp_path)
    wb = _by_name(checks)["wandb"]
    assert "key from WANDB_API_KEY" in wb.detail
    assert SENTINEL not in json.dumps(doctor.to_json(checks))
    assert SENTINEL not in _rendered(checks)

    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / "wandb").mkdir()
    (tmp_path / "wandb" / ".wandb_api_key").write_text(SENTINEL + "\n")
    checks = doctor.run_checks(smoke, run_dir=tmp_path)
    assert "key from wandb/.wandb_api_key" in _by_name(checks)["wandb"].detail
    assert SENTINEL not in json.dumps(doctor.to_json(checks))
    assert SENTINEL not in _rendered(checks)


def test_no_wandb_key_means_logging_off(smoke, tmp_path):
    wb = _by_name(doctor.run_checks(smoke, run_dir=tmp_path, quick=True))["wandb"]
    assert wb.status == "ok" and wb.detail.startswith("none: W&B logging off")


def test_wandb_mode_follows_the_environment_unless_the_config_sets_it(smoke, tmp_path, monkeypatch):
    """WANDB_MODE decides while logging.wandb is left unset; an explicit logging.wandb wins (what grpo
    train does: metrics.wandb_mode, the same function)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert _by_name(doctor.run_checks(smoke, run_dir=tmp_path, quick=True))["wandb"].detail == "disabled (WANDB_MODE)"
    monkeypatch.setenv("WANDB_MODE", "offline")
    wb = _by_name(doctor.run_checks(smoke, run_dir=tmp_path, quick=True))["wandb"]
    assert "W&B offline (mode from WANDB_MODE)" in wb.detail
    online = build_config(preset="smoke", overrides=["logging.wandb=online"])
    wb = _by_name(doctor.run_checks(online, run_dir=tmp_path, quick=True))["wandb"]
    assert wb.detail.startswith("none: W&B logging off")  # the config's online wins; no key here


def test_a_key_stored_by_wandb_login_counts(smoke, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine api.wandb.ai\n  login user\n  password {SENTINEL}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    checks = doctor.run_checks(smoke, run_dir=tmp_path, quick=True)
    assert "key from ~/.netrc" in _by_name(checks)["wandb"].detail
    assert SENTINEL not in json.dumps(doctor.to_json(checks)) and SENTINEL not in _rendered(checks)


def test_a_crashing_check_becomes_a_fail(smoke, tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("port check exploded\nsecond line")

    monkeypatch.setattr(doctor, "CHECKS", [(n, boom if n == "port" else f) for n, f in doctor.CHECKS])
    checks = doctor.run_checks(smoke, run_dir=tmp_path)
    port = _by_name(checks)["port"]
    assert port.status == "fail" and "port check exploded" in port.detail and "second line" not in port.detail
    assert doctor.exit_code(checks) == 1


def test_missing_local_paths_fail(tmp_path):
    cfg = build_config(preset="smoke", overrides=[f"model.path={tmp_path}/nope", f"data.path={tmp_path}/nada"])
    by = _by_name(doctor.run_checks(cfg, run_dir=tmp_path, quick=True))
    assert by["model"].status == "fail" and by["data"].status == "fail"


def test_default_config_on_a_cpu_host_cannot_start_and_says_why(tmp_path, monkeypatch):
    """Plain `grpo doctor` checks the default config: offline with nothing cached, the model and
    data are unreachable and the CPU engine refuses a 494M model, so the verdict is a fail (it
    used to say 'a run can start' beside those rows)."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    checks = doctor.run_checks(None, run_dir=tmp_path)
    by = _by_name(checks)
    assert by["model"].status == "fail" and "hub is unreachable" in by["model"].detail and "model.path" in by["model"].fix
    assert by["data"].status == "fail" and "data.path" in by["data"].fix
    assert by["memory"].status == "fail" and "494M parameters and no GPU" in by["memory"].detail
    assert doctor.exit_code(checks) == 1
    assert "this run cannot start here: fix model, data, memory" in _rendered(checks)


def test_param_estimate_matches_qwen_05b():
    from gsm8k_grpo import assets

    cfg = json.loads((Path(assets.resolve("builtin:qwen2.5-0.5b-instruct")) / "config.json").read_text())
    n = memory.estimate_params(cfg)
    assert abs(n - 494_032_768) / 494_032_768 < 0.01  # Qwen2.5-0.5B-Instruct: 494M with tied embeddings


def test_memory_split_on_a_simulated_gpu(tmp_path):
    # GPU facts injected by hand (no CUDA here): one 80 GiB GPU shared by trainer and SGLang
    cfg = build_config(overrides=["rollout.engine=sglang", "model.path=builtin:qwen2.5-0.5b-instruct",
                                  "model.random_init=true"])
    from gsm8k_grpo.doctor import base, run

    ctx = base.Context(cfg=cfg, run_dir=tmp_path, quick=True, cuda=True,
                       gpus=[base.Gpu(0, "Fake H100", 80 * 2**30, 79 * 2**30, (9, 0))])
    ctx.placement = __import__("gsm8k_grpo.placement", fromlist=["plan"]).plan(1, 1, "sglang", "auto")
    ok = run.check_memory(ctx)
    assert ok.status == "ok" and "SGLang" in ok.detail and "GPU 0" in ok.detail
    cfg.rollout.mem_fraction = 0.9  # pinned: SGLang alone would take 74 GiB of 80; grpo train refuses it
    over = run.check_memory(ctx)
    assert over.status == "fail" and "does not fit" in over.detail and "a lower rollout.mem_fraction" in over.fix


def test_transport_asks_placement_plan(smoke, tmp_path, monkeypatch):
    """The transport row is placement.plan's answer (the function grpo train uses), refusals included."""
    from gsm8k_grpo import placement

    calls = {}
    real_plan = placement.plan

    def plan(n_gpus, rollout_gpus, engine, transport, ipc_ok=True):
        calls.update(n_gpus=n_gpus, engine=engine, transport=transport)
        return real_plan(n_gpus, rollout_gpus, engine, transport, ipc_ok)

    monkeypatch.setattr(placement, "plan", plan)
    t = _by_name(doctor.run_checks(smoke, run_dir=tmp_path, quick=True))["transport"]
    assert t.status == "ok" and t.detail.startswith("disk") and calls["n_gpus"] == 0
    cfg = build_config(overrides=["weights.transport=nccl", "rollout.engine=sglang"])
    t = _by_name(doctor.run_checks(cfg, run_dir=tmp_path, quick=True))["transport"]
    assert t.status == "fail" and "needs a GPU and none is visible" in t.detail


@pytest.mark.parametrize("parallel, text", [("dp", "2 SGLang servers, one per GPU"),
                                            ("tp", "one SGLang server, tensor-parallel over 2 GPUs")])
def test_transport_line_says_how_sglang_uses_several_gpus(tmp_path, monkeypatch, parallel, text):
    from gsm8k_grpo import placement
    from gsm8k_grpo.doctor import base, run

    # four GPUs, as torch would list them (mocked: no GPU here)
    monkeypatch.setattr(placement, "visible_gpus", lambda: [placement.GpuInfo(i, f"GPU-{i}", "H100", 80 << 30, (9, 0))
                                                            for i in range(4)])
    cfg = build_config(overrides=["rollout.engine=sglang", "rollout.gpus=2", f"rollout.parallel={parallel}"])
    t = run.check_transport(base.Context(cfg=cfg, run_dir=tmp_path, quick=True))
    assert t.status == "ok" and t.detail.startswith("nccl: trainer on GPUs 0,1, server on GPUs 2,3") and text in t.detail, t.detail


def test_two_process_plumbing_with_gloo_and_shared_memory():
    # The GPU checks' spawn/collect code, exercised on CPU: gloo all-reduce and a tensor handed to a child.
    import torch
    import torch.multiprocessing as tmp

    mp = tmp.get_context("spawn")
    q = mp.Queue()
    from gsm8k_grpo.distributed import free_port
    from gsm8k_grpo.doctor import host

    port = free_port()
    procs = [mp.Process(target=host._nccl_worker, args=(r, 2, port, q, "gloo"), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    results, err = host._collect(q, 2, procs, 60)
    host._close_queues(q)
    assert err is None and sorted(r[:2] for r in results) == [(0, True), (1, True)]
    assert all(r[2] == 3.0 for r in results)

    q_in, q_out = mp.Queue(), mp.Queue()
    p = mp.Process(target=host._ipc_worker, args=(q_in, q_out), daemon=True)
    p.start()
    t = torch.arange(4096, dtype=torch.float32)
    q_in.put(t)
    results, err = host._collect(q_out, 1, [p], 60)
    host._close_queues(q_in, q_out)
    assert err is None and results[0][0] and results[0][1] == 4096 * 4095 / 2


def test_doctor_module_does_not_import_torch():
    code = "import sys, gsm8k_grpo.doctor; print('torch' in sys.modules)"
    src = str(Path(doctor.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_model_and_data_from_an_unreachable_hub_fail(tmp_path, monkeypatch):
    from gsm8k_grpo.doctor import base, run

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    cfg = build_config(overrides=["model.path=someorg/not-cached-model", "data.hub_name=someorg/not-cached-data"])
    ctx = base.Context(cfg=cfg, run_dir=tmp_path, quick=True)
    ctx.hub = lambda: (False, "no route to huggingface.co")
    m, d = run.check_model(ctx), run.check_data(ctx)
    assert (m.status, d.status) == ("fail", "fail")
    assert m.detail == ("someorg/not-cached-model is not cached and the hub is unreachable (no route to "
                        "huggingface.co): a run cannot start")
    assert "model.path=DIR" in m.fix and "data.path=DIR" in d.fix
    ctx.hub = lambda: (True, "reachable")
    assert run.check_model(ctx).detail == "someorg/not-cached-model is not cached; grpo train will download it"


def test_memory_plan_leaves_what_other_processes_hold(tmp_path):
    """A consumer card also holds a desktop's memory: grpo train and doctor plan for the card less what
    other processes hold when they start (memory.usable_bytes), not for its whole size. An otherwise
    idle card keeps its whole size (this process's own context is in the estimate already)."""
    cfg = build_config(preset="1hour", overrides=["rollout.engine=sglang", "model.path=builtin:qwen2.5-0.5b-instruct",
                                                  "model.random_init=true"])
    from gsm8k_grpo.doctor import base, run

    def check(free_gib):
        ctx = base.Context(cfg=cfg, run_dir=tmp_path, quick=True, cuda=True,
                           gpus=[base.Gpu(0, "Fake 24 GB card", 24 * 2**30, int(free_gib * 2**30), (8, 9))])
        ctx.placement = __import__("gsm8k_grpo.placement", fromlist=["plan"]).plan(1, 1, "sglang", "auto")
        return run.check_memory(ctx)

    idle = check(23.6)  # only this process's CUDA context
    assert idle.status == "ok" and "of 24.0 GiB" in idle.detail and "held by other" not in idle.detail
    busy = check(19.0)  # a desktop and a browser hold 5 GiB: the plan is for 19.5 GiB
    assert "of 19.5 GiB" in busy.detail and "4.5 GiB of it held by other processes" in busy.detail
    full = check(12.0)  # what is left cannot hold full fine-tuning: refused, with what to change
    assert full.status == "fail" and "does not fit" in full.detail and "lora.rank" in full.fix
