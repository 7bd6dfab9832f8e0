"""bench/device/learn/seeds.py (issue 20's mean-and-spread table) on synthetic trial folders."""

import json

from conftest import load_script


def load():
    return load_script("bench/device/learn/seeds.py")   # it puts its folder on sys.path for report.py


def rows(path, correct):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"idx": i, "sample": 0, "correct": c, "correct_lenient": c}) + "\n"
                            for i, c in enumerate(correct)))


def trial(root, name, seed, correct):
    rows(root / name / "final_rows.jsonl", correct)
    (root / name / "settings.txt").write_text(f"1hour {seed} trainer.gpu_memory_limit=24GiB\n")


def test_a_configuration_missing_seed_0_pairs_its_seed_1_with_the_reference_seed_1(tmp_path):
    mod = load()
    n = 20
    rows(tmp_path / "baseline" / "baseline_rows.jsonl", [False] * n)
    trial(tmp_path, "k0", 0, [True] * 10 + [False] * 10)
    trial(tmp_path, "k1", 1, [False] * 10 + [True] * 10)
    trial(tmp_path, "q1", 1, [False] * 10 + [True] * 10)   # the same answers as k1, unlike k0's
    (tmp_path / "q0").mkdir()                              # seed 0 lost its final eval
    out = tmp_path / "seeds.md"
    assert mod.main(["--trials", str(tmp_path), "--group", "shipped=k0,k1", "--group", "kl=q0,q1",
                     "--ref", "shipped", "--out", str(out)]) == 0
    text = out.read_text()
    assert "kl q1 vs k1: +0.0 points" in text and "q1 vs k0" not in text
    assert "all 1 seed pairs together: +0.0 points" in text
    assert "q0: no final rows" in text


def test_trials_without_a_seed_pair_by_position():
    mod = load()
    ts = [{"name": "a", "seed": None}, {"name": "b", "seed": None}]
    ref = [{"name": "r0", "seed": "0"}, {"name": "r1", "seed": "1"}]
    assert [(t["name"], r["name"]) for t, r in mod.seed_pairs(ts, ref)] == [("a", "r0"), ("b", "r1")]
    assert mod.seed_of("1hour 2 eval.samples=1319") == "2" and mod.seed_of("") is None
