"""End-to-end training on CPU through the real CLI: smoke run artefacts, the learnable toy task,
exact resume after a real SIGKILL, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, grpo
from toy import write_toy

from gsm8k_grpo.rollout import LAUNCHER_ENV


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_smoke_preset_end_to_end(tmp_path):
    res = grpo("train", "--preset", "smoke", cwd=tmp_path, timeout=240,
               env={"WANDB_MODE": "", "NETRC": str(tmp_path / "no-netrc")})  # W&B online, and no key anywhere
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "smoke" / "trial0"
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert r["samples_trained"] == 16 and r["optimizer_steps"] == 1
        assert r["logprob_mismatch"] < 1e-4   # the engine and the trainer see the same weights
    assert "eval_accuracy" in recs[-1]
    assert (run / "reward.png").stat().st_size > 1000
    assert "W&B: no key" in (run / "train.log").read_text()
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_000004"
    model_dir = run / "checkpoints" / latest / "model"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(model_dir)
    assert not list((run / "checkpoints").glob(".tmp-*"))
    final = [line for line in res.stdout.splitlines() if line.startswith("final checkpoint: ")]
    assert len(final) == 1 and final[0].endswith(f"{latest}/model")  # one line however long the path, for scripts


@pytest.mark.parametrize("overlap", [False, True])
def test_learns_toy_task(tmp_path, overlap):
    """Reward of 'answer with the digit 7' rises from chance (~1/16) to >= 0.8 through the real recipe;
    also with rollout.overlap, where every batch after the first is one update old."""
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 40, "rollout.overlap": overlap})
    res = grpo("train", "--config", str(cfg), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = read_metrics(tmp_path / "runs" / "toy" / "trial0")
    rewards = [r["reward_mean"] for r in recs]
    assert sum(rewards[:3]) / 3 < 0.3, rewards
    assert sum(rewards[-5:]) / 5 >= 0.8, rewards
    for r in recs:  # training happened at every step: all samples, and a gradient wherever rewards vary
        assert r["samples_trained"] == 64 and r["optimizer_steps"] == 1
        if 0 < r["reward_mean"] < 1:
            assert r["grad_norm"] > 0
    assert [r["policy_lag"] for r in recs] == [0] + [int(overlap)] * 39
    for r in recs[1:]:  # the off-policy correction ran, and the weights stayed near 1 (one small update old)
        assert ("offpolicy_weight_mean" in r) == overlap
        if overlap:
            assert 0.5 < r["offpolicy_weight_mean"] < 1.5 and r["offpolicy_capped_frac"] < 0.2


@pytest.mark.parametrize("overlap", [False, True])
def test_exact_resume_after_kill(tmp_path, overlap):
    """A SIGKILLed run, resumed, matches an unbroken one step for step. With rollout.overlap the
    checkpoint carries the batch already generated for the next step; that run also sets
    algorithm.skip_no_signal, whose record of questions without signal the checkpoint carries too."""
    extra = {"trainer.max_steps": 24, "checkpoint.every": 1, "checkpoint.keep_last": 3,
             "rollout.max_new_tokens": 12, "optimizer.lr": 0.002, "rollout.overlap": overlap,
             "algorithm.skip_no_signal": overlap, "algorithm.filter_groups": True}
    straight = tmp_path / "straight"
    straight.mkdir()
    cfg_a = write_toy(straight, **extra)
    res = grpo("train", "--config", str(cfg_a), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = read_metrics(straight / "runs" / "toy" / "trial0")

    killed = tmp_path / "killed"
    killed.mkdir()
    cfg_b = write_toy(killed, **extra)
    run = killed / "runs" / "toy" / "trial0"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "gsm8k_grpo", "train", "--config", str(cfg_b)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        pointer = run / "checkpoints" / "latest"
        if pointer.is_file() and int(pointer.read_text().strip()[5:]) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # a real kill, mid-run
    proc.wait()
    done = read_metrics(run)[-1]["step"]
    assert done < 24, "the run finished before the kill; make the steps slower"
    res = grpo("resume", str(run), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in (run / "train.log").read_text()
    got = read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, 25))
    if overlap:  # questions were swapped after the kill too, as in the unbroken run
        assert sum(r["questions_swapped"] for r in ref if r["step"] > done) > 0
    for a, b in zip(ref, got):
        assert a.get("questions_swapped") == b.get("questions_swapped"), a["step"]
        assert a["reward_mean"] == b["reward_mean"], (a["step"], a["reward_mean"], b["reward_mean"])
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])
        assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-4 * max(1.0, a["grad_norm"])


@pytest.mark.parametrize("overlap", [False, True])
def test_time_limit_stops_with_a_checkpoint_and_resume_matches_an_unbroken_run(tmp_path, overlap):
    """trainer.time_limit_minutes: the run saves and stops cleanly (exit 0, no "final checkpoint") before
    a step would end past the limit; `grpo resume` with a new limit continues, and the joined run matches
    an unbroken one step for step. The limit is on this process's wall clock, so a resume gets it anew."""
    extra = {"trainer.max_steps": 10, "rollout.max_new_tokens": 12, "optimizer.lr": 0.002, "rollout.overlap": overlap}
    straight = tmp_path / "straight"
    straight.mkdir()
    res = grpo("train", "--config", str(write_toy(straight, **extra)), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = read_metrics(straight / "runs" / "toy" / "trial0")

    limited = tmp_path / "limited"
    limited.mkdir()
    cfg = write_toy(limited, **extra, **{"trainer.time_limit_minutes": 0.0001})  # 6 ms: past it after step 1
    run = limited / "runs" / "toy" / "trial0"
    res = grpo("train", "--config", str(cfg), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "final checkpoint" not in res.stdout and "time limit reached" in res.stdout
    assert f"grpo resume {run}" in res.stdout
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000001"
    assert [r["step"] for r in read_metrics(run)] == [1]
    assert "time limit: trainer.time_limit_minutes=0.0001 reached after step 1 of 10" in (run / "train.log").read_text()

    res = grpo("resume", str(run), "--set", "trainer.time_limit_minutes=60", timeout=240)  # no --force needed
    assert res.returncode == 0, res.stderr[-3000:]
    assert "final checkpoint:" in res.stdout
    got = read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, 11))
    for a, b in zip(ref, got):
        assert a["reward_mean"] == b["reward_mean"], (a["step"], a["reward_mean"], b["reward_mean"])
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a["step"], a["loss"], b["loss"])


def test_kill_between_metrics_line_and_checkpoint(tmp_path):
    """A step's metrics line is written before its checkpoint. A kill in between leaves a line past
    the newest checkpoint: the resume drops it and redoes the step, so metrics.jsonl has each step
    once and the redone line equals the lost one (the in-process engine samples seeded). The kill
    is reproduced by removing step 3's checkpoint after an unbroken run."""
    import shutil

    cfg = write_toy(tmp_path, **{"trainer.max_steps": 3, "checkpoint.every": 1, "checkpoint.keep_last": 3,
                                 "rollout.max_new_tokens": 8})
    assert grpo("train", "--config", str(cfg), timeout=120).returncode == 0
    run = tmp_path / "runs" / "toy" / "trial0"
    lost = read_metrics(run)[-1]
    assert lost["step"] == 3
    shutil.rmtree(run / "checkpoints" / "step_000003")
    (run / "checkpoints" / "latest").write_text("step_000002")
    res = grpo("resume", str(run), "--set", "trainer.max_steps=4", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = read_metrics(run)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    timing = ("time_", "gen_tokens_per_s", "train_tokens_per_s")
    assert {k: v for k, v in got[2].items() if not k.startswith(timing)} == \
        {k: v for k, v in lost.items() if not k.startswith(timing)}


def test_sigterm_stops_with_one_line_and_resumes(tmp_path):
    """SIGTERM (a scheduler, `timeout`): exit 143, one line saying how to resume, no traceback, and
    the run resumes from its last checkpoint. (The SGLang child's reaping on SIGTERM is
    test_sglang_engine.test_parent_killed_leaves_no_orphan; this run uses the in-process engine.)"""
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 500, "checkpoint.every": 1, "checkpoint.keep_last": 2,
                                 "rollout.max_new_tokens": 12})
    run = tmp_path / "runs" / "toy" / "trial0"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop("WANDB_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "gsm8k_grpo", "train", "--config", str(cfg)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pointer = run / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (pointer.is_file() and int(pointer.read_text().strip()[5:]) >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-3000:]
    assert "terminated (SIGTERM)" in stderr and f"grpo resume {run}" in stderr  # the real run dir
    assert "Traceback" not in stderr
    saved = int(pointer.read_text().strip()[5:])
    assert 2 <= saved < 500
    res = grpo("resume", str(run), "--set", f"trainer.max_steps={saved + 2}", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run)] == list(range(1, saved + 3))


def test_second_train_resumes_and_changed_config_is_refused(tmp_path):
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 3, "checkpoint.every": 1})
    assert grpo("train", "--config", str(cfg), timeout=120).returncode == 0
    run = tmp_path / "runs" / "toy" / "trial0"
    # the same command again: resumes at step 3 = the end, trains nothing more
    res = grpo("train", "--config", str(cfg), "--set", "trainer.max_steps=5", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5]
    res = grpo("train", "--config", str(cfg), "--set", "optimizer.lr=0.5", "--set", "trainer.max_steps=6", timeout=120)
    assert res.returncode == 2
    assert "resume refused" in res.stderr and "optimizer.lr: 0.003 -> 0.5" in res.stderr
    assert "Traceback" not in res.stderr
    res = grpo("train", "--config", str(cfg), "--restart", timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert len(list((tmp_path / "runs" / "toy").glob("trial0.old-*"))) == 1


def test_resume_bad_input(tmp_path):
    res = grpo("resume", str(tmp_path / "nope"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    (tmp_path / "empty").mkdir()
    res = grpo("resume", str(tmp_path / "empty"))
    assert res.returncode == 2 and "no checkpoint" in res.stderr


def test_big_model_on_cpu_is_refused_before_any_work(tmp_path):
    res = grpo("train", "--preset", "fast", "--set", "model.path=builtin:qwen2.5-0.5b-instruct",
               "--set", "model.random_init=true", "--set", "data.path=builtin:gsm8k", "--set", "trainer.device=cpu",
               cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    assert res.returncode == 2, res.stderr
    assert "494M parameters and no GPU" in res.stderr and "rollout.engine=hf" in res.stderr
    assert not (tmp_path / "runs" / "fast" / "trial0" / "base_model").exists()  # refused before building it


def test_resume_with_force_accepts_changed_config(tmp_path):
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 2, "checkpoint.every": 1})
    assert grpo("train", "--config", str(cfg), timeout=120).returncode == 0
    run = tmp_path / "runs" / "toy" / "trial0"
    res = grpo("resume", str(run), "--set", "optimizer.lr=0.001", "--set", "trainer.max_steps=3", timeout=120)
    assert res.returncode == 2 and "--force" in res.stderr
    res = grpo("resume", str(run), "--set", "optimizer.lr=0.001", "--set", "trainer.max_steps=3", "--force",
               timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3]


@pytest.mark.parametrize("mode", ["plain", "saver", "overlap"])
def test_recipe_with_sglang_engine_over_http(tmp_path, mode):
    """The whole loop with rollout.engine=sglang: a server child process, real HTTP, weight pushes
    by disk with version checks. The server is tests/fake_sglang.py (real SGLang needs a GPU): its
    tokens are fake, so this proves the plumbing, not learning. "overlap": rollout.overlap left unset,
    as users run it, which SGLang turns on: each /generate takes 0.5 s and the next batch is generated
    during the update; no push may reach the server then. "saver": also unset, and the memory saver
    turns it off. "plain": rollout.overlap=false, on-policy."""
    saver, overlap = mode == "saver", mode == "overlap"
    server = json.dumps([sys.executable, str(ROOT / "tests" / "fake_sglang.py")]
                        + (["--generate-delay", "0.5"] if overlap else []))
    res = grpo("train", "--preset", "smoke", "--set", "rollout.engine=sglang",
               "--set", "weights.transport=disk", "--set", "rollout.max_new_tokens=4", "--set", "trainer.max_steps=3",
               "--set", "rollout.server_timeout_s=60", "--set", "eval.at_end=false",
               "--set", f"rollout.enable_memory_saver={str(saver).lower()}",
               *(["--set", "rollout.overlap=false"] if mode == "plain" else []), cwd=tmp_path, timeout=180,
               env={LAUNCHER_ENV: server})
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "smoke" / "trial0"
    recs = read_metrics(run)
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert r["samples_trained"] == 16 and r["time_push"] > 0
    log = (run / "train.log").read_text()
    assert re.search(r"engine sglang \(healthy after \d+ s\), transport disk", log)
    assert ("one step off-policy" in log) == overlap
    server_log = (run / "sglang_server.log").read_text()
    assert "fake sglang: listening" in server_log  # the child's log is kept
    # memory saver: SGLang's memory is released for every update and resumed before the push
    assert server_log.count("release_memory_occupation") == (3 if saver else 0)
    assert server_log.count("resume_memory_occupation") == (3 if saver else 0)
    # each step's replies carried the pushed weight version (the engine raises on a mismatch)
    assert [r["policy_lag"] for r in recs] == ([0, 1, 1] if overlap else [0, 0, 0])
    assert "arrived during a /generate" not in server_log
    if overlap:  # steps 2 and 3 were generated while steps 1 and 2 updated
        assert all(r["time_generate"] >= 0.5 for r in recs)


def test_overlapped_rollout_failure_ends_the_run_cleanly(tmp_path):
    """With rollout.overlap the server dies during the second /generate, which runs in the
    rollout thread while step 1 updates: the run stops with the server's own explanation, a
    non-zero exit and no traceback, and step 1 is not logged as done."""
    server = json.dumps([sys.executable, str(ROOT / "tests" / "fake_sglang.py"), "--die-after", "1"])
    res = grpo("train", "--preset", "smoke", "--set", "rollout.engine=sglang",
               "--set", "weights.transport=disk", "--set", "rollout.max_new_tokens=4", "--set", "trainer.max_steps=3",
               "--set", "rollout.server_timeout_s=60", "--set", "eval.at_end=false", "--set", "rollout.overlap=true",
               cwd=tmp_path, timeout=180, env={LAUNCHER_ENV: server})
    assert res.returncode != 0
    assert "illegal memory access" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]
    run = tmp_path / "runs" / "smoke" / "trial0"
    assert not (run / "metrics.jsonl").exists() or read_metrics(run) == []


def test_a_setting_added_since_the_checkpoint_is_no_change():
    """Resume compares configs with today's defaults filled into the saved one: a checkpoint written
    before model.revision existed still resumes without --force; a removed key still shows."""
    import copy

    from gsm8k_grpo.config import build_config, config_diff
    from gsm8k_grpo.run_dir import comparable_config

    now = build_config(preset="smoke").model_dump(mode="json")
    saved = copy.deepcopy(now)
    del saved["model"]["revision"]
    saved["model"]["revision_gone"] = None
    del saved["model"]["revision_gone"]
    assert config_diff(saved, now) == []  # None on both sides: config_diff reads a missing key as None
    saved["trainer"].pop("compile")
    assert config_diff(saved, now) == ["trainer.compile: unset -> False"]  # what used to refuse the resume
    assert config_diff(comparable_config(saved), now) == []
    saved["optimizer"]["gone"] = 1
    assert comparable_config(saved) is saved and "optimizer.gone: 1 -> unset" in config_diff(saved, now)


def test_a_run_saved_before_overlap_existed_resumes_on_policy(tmp_path):
    """rollout.overlap was added off and is now unset (on with SGLang): a run saved without the key was
    on-policy, so resume fills in False, not today's default; the same command with today's default is a
    difference that must not pass silently, and the diff line says 'unset', not None."""
    import copy

    import yaml

    from gsm8k_grpo.config import build_config
    from gsm8k_grpo.run_dir import comparable_config, read_run_config, resume_differences

    now = build_config(preset="smoke")
    saved = copy.deepcopy(now.model_dump(mode="json"))
    del saved["rollout"]["overlap"]
    assert comparable_config(saved)["rollout"]["overlap"] is False
    assert resume_differences(saved, now) == ["rollout.overlap: False -> unset"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved))
    assert read_run_config(path).rollout.overlap is False   # grpo resume RUN_DIR reads this
    saved["rollout"]["overlap"] = None                       # a run saved since: unset stays unset
    path.write_text(yaml.safe_dump(saved))
    assert read_run_config(path).rollout.overlap is None and resume_differences(saved, now) == []


def test_error_lines_keep_brackets(tmp_path):
    """The install hint names the extra, `gsm8k-grpo[sglang]`; rich markup used to eat '[sglang]'."""
    res = grpo("train", "--preset", "smoke", "--set", "rollout.engine=sglang", "--set", f"output_dir={tmp_path}",
               env={"CUDA_VISIBLE_DEVICES": ""})
    if "SGLang is not installed" not in res.stderr:
        pytest.skip("SGLang is installed here")
    assert res.returncode == 2 and "pip install 'gsm8k-grpo[sglang]'" in res.stderr, res.stderr


def test_golden_numbers_of_the_first_steps(tmp_path):
    """A fixed seed's first three steps, pinned to literal values (torch 2.13 CPU, the toy task): a
    numerical drift that hits every run alike (the loss, the advantages, the head, the sampler, the
    optimizer) fails here, where comparing two runs with each other cannot see it. If a change moves
    these numbers on purpose, say why in its commit and pin the new ones."""
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 3, "rollout.max_new_tokens": 6})
    res = grpo("train", "--config", str(cfg), timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = [(r["loss"], r["grad_norm"], r["reward_mean"]) for r in read_metrics(tmp_path / "runs" / "toy" / "trial0")]
    golden = [(-0.005607773084193468, 0.2808859050273895, 0.03125),
              (-0.010829895734786987, 0.1512966901063919, 0.015625),
              (0.01789175160229206, 0.20776566863059998, 0.03125)]
    for step, ((loss, norm, reward), (loss_0, norm_0, reward_0)) in enumerate(zip(got, golden), 1):
        assert reward == reward_0, (step, reward)
        assert loss == pytest.approx(loss_0, rel=1e-4, abs=1e-7), (step, loss)
        assert norm == pytest.approx(norm_0, rel=1e-4), (step, norm)


def test_wandb_mode_environment_is_honoured_unless_the_config_sets_it(tmp_path):
    """WANDB_MODE=offline logs an offline W&B run while logging.wandb is left unset; an explicit
    logging.wandb=disabled in the config wins over the environment."""
    cfg = write_toy(tmp_path, **{"trainer.max_steps": 1, "rollout.max_new_tokens": 2})
    text = cfg.read_text().replace("logging:\n  wandb: disabled\n", "")
    assert "wandb:" not in text and "logging:" not in text
    cfg.write_text(text)
    res = grpo("train", "--config", str(cfg), env={"WANDB_MODE": "offline"}, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "runs" / "toy" / "trial0"
    assert "W&B: logging offline (mode from WANDB_MODE)" in (run / "train.log").read_text()
    assert list((run / "wandb").glob("offline-run-*"))
    res = grpo("train", "--config", str(cfg), "--restart", "--set", "logging.wandb=disabled",
               env={"WANDB_MODE": "offline"}, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (run / "wandb").exists() and "W&B" not in (run / "train.log").read_text()
