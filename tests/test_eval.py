"""`grpo eval` through the real CLI on a tiny model: the summary equals what the per-question file
says, and bad inputs exit 2 with one line."""

from __future__ import annotations

import json

import pytest

from conftest import grpo


def test_eval_tiny_model_summary_matches_rows(tiny_model_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    res = grpo("eval", "--model", str(tiny_model_dir), "--samples", "6", "--engine", "hf", "--data", "builtin:gsm8k",
               "--max-new-tokens", "8", "--output", str(out), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 6 == summary["questions"]
    assert summary["strict_accuracy"] == sum(r["correct"] for r in rows) / 6
    assert summary["lenient_accuracy"] == sum(r["correct_lenient"] for r in rows) / 6
    assert summary["truncated_rate"] == sum(r["finish_reason"] == "length" for r in rows) / 6
    assert {"question", "gold", "completion", "extracted", "correct"} <= set(rows[0])
    assert rows[0]["gold"] == "18"  # the first GSM8K test question (Janet's ducks)
    lo, hi = summary["strict_ci95"]
    assert 0 <= lo <= summary["strict_accuracy"] <= hi <= 1


def test_eval_pass_at_k_and_table(tiny_model_dir):
    res = grpo("eval", "--model", str(tiny_model_dir), "--samples", "3", "--engine", "hf", "--data", "builtin:gsm8k",
               "--max-new-tokens", "4", "--temperature", "1.0", "--n", "2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "strict pass@2" in res.stdout and "strict accuracy" in res.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--checkpoint", "/nonexistent/ckpt"], "does not exist"),
    ([], "exactly one of --checkpoint"),
    (["--model", "x", "--checkpoint", "y"], "exactly one of --checkpoint"),
    (["--model", "/nonexistent/model-dir-xyz"], "is not a folder"),
    (["--model", "builtin:gsm8k", "--n", "2"], "--n > 1 needs --temperature"),
])
def test_eval_bad_input(args, fragment):
    res = grpo("eval", *args, "--engine", "hf", "--data", "builtin:gsm8k")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert fragment in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_eval_points_from_trainer_state_to_model(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001"
    (ckpt / "trainer").mkdir(parents=True)
    (ckpt / "trainer" / ".metadata").write_text("x")
    res = grpo("eval", "--checkpoint", str(ckpt / "trainer"), "--engine", "hf", "--data", "builtin:gsm8k")
    assert res.returncode == 2 and "trainer state" in res.stderr and "step_000001/model" in res.stderr
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    (corrupt / "model.safetensors").write_text("")
    res = grpo("eval", "--checkpoint", str(corrupt), "--engine", "hf", "--data", "builtin:gsm8k")
    assert res.returncode == 2 and "corrupt" in res.stderr
