"""bench/device/learn/time_to.py (issue 21's time-to-accuracy row) on a synthetic run dir."""

import json

from conftest import load_script


def load():
    return load_script("bench/device/learn/time_to.py")


def write_run(d, evals):
    d.mkdir()
    log = ["2026-12-03 10:00:00,000 INFO memory plan ..."]
    rows = []
    for step in range(1, 7):
        log.append(f"2026-12-03 10:00:{9 * step:02d},500 INFO step {step}/6  reward 0.1")
        row = {"step": step, "time_step": 2.0}
        if step in evals:
            row.update(eval_accuracy=evals[step], time_eval=3.0)
        rows.append(row)
    (d / "train.log").write_text("\n".join(log) + "\n")
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_first_eval_at_the_target_and_its_wall_clock(tmp_path):
    mod = load()
    write_run(tmp_path / "a", {2: 0.30, 4: 0.331, 6: 0.36})
    r = mod.time_to(tmp_path / "a", 0.33)
    assert r["step"] == 4 and r["accuracy"] == 0.331
    assert r["wall_s"] == 36.5                      # 10:00:36.5 less 10:00:00
    assert r["evals_s"] == 6.0 and r["wall_less_evals_s"] == 30.5 and r["steps_s"] == 8.0
    write_run(tmp_path / "b", {3: 0.2, 6: 0.25})
    r = mod.time_to(tmp_path / "b", 0.33)
    assert "step" not in r and r["best"] == 0.25 and r["evals"] == 2
