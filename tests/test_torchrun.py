"""The real recipe under torchrun with 2 trainer processes (gloo on CPU): rank 0 owns the engine
and broadcasts the rollouts, both ranks train their share with FSDP2. Step 1 must match a
1-process run (same rollouts, same loss and grad norm). One case runs the 2 ranks as two "nodes"
(two torchrun agents, --nnodes 2, c10d rendezvous on 127.0.0.1, one run dir as a shared filesystem):
docs/multi-gpu.md, "Several nodes"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from toy import write_toy


def _metrics(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WANDB_API_KEY", None)
    return env


def _run(cmd, cwd):
    res = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _run_two_nodes(args, cwd):
    """One torchrun agent per "node" (1 rank each), joined by torchrun's c10d rendezvous, as on two hosts."""
    from gsm8k_grpo.distributed import free_port

    port = free_port()
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "grpo-test"]
    procs = [subprocess.Popen([*launcher, *args], cwd=cwd, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.parametrize("overlap,nodes", [(False, 1), (True, 2)], ids=["one-node", "overlap-two-nodes"])
def test_torchrun_two_ranks_matches_one(tmp_path, overlap, nodes):
    """With rollout.overlap, rank 0 generates the next batch in a thread during the update. The
    two-node case is the launch of docs/multi-gpu.md: on CPU it must change nothing."""
    extra = {"trainer.max_steps": 4, "checkpoint.every": 2, "rollout.overlap": overlap}
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _run([sys.executable, "-m", "gsm8k_grpo", "train", "--config", str(write_toy(one, **extra))], ROOT)
    args = ["-m", "gsm8k_grpo", "train", "--config", str(write_toy(two, **extra))]
    if nodes == 1:
        _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args], ROOT)
    else:
        _run_two_nodes(args, ROOT)
    a = _metrics(one / "runs" / "toy" / "trial0" / "metrics.jsonl")
    b = _metrics(two / "runs" / "toy" / "trial0" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a[0]["reward_mean"] == b[0]["reward_mean"]          # same rollouts (rank 0's engine)
    assert abs(a[0]["grad_norm"] - b[0]["grad_norm"]) <= 1e-4 * a[0]["grad_norm"]
    assert abs(a[0]["loss"] - b[0]["loss"]) <= 1e-6
    assert [r["policy_lag"] for r in b] == [0] + [int(overlap)] * 3
    for r in b:
        assert r["samples_trained"] == 64 and r["optimizer_steps"] == 1
        if 0 < r["reward_mean"] < 1:
            assert r["grad_norm"] > 0
    ckpt = two / "runs" / "toy" / "trial0" / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_000004"
    assert (ckpt / "step_000004" / "model" / "model.safetensors").is_file()


def test_torchrun_time_limit_stops_every_rank_at_the_same_step(tmp_path):
    """trainer.time_limit_minutes under 2 ranks: the ranks agree on the stop (an all-reduce of their
    verdicts, since the save is collective), save step 1 together and exit 0 instead of hanging."""
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 6, "trainer.time_limit_minutes": 0.0001})
    res = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "gsm8k_grpo", "train", "--config", str(cfg)], ROOT)
    run = tmp_path / "runs" / "toy" / "trial0"
    assert [r["step"] for r in _metrics(run / "metrics.jsonl")] == [1]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert "time limit reached" in res.stdout
