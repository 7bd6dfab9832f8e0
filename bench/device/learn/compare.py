"""All issue-7 trials side by side: the numbers of docs/results/learning.md, "All trials together".

    python bench/device/learn/compare.py [--results bench/results/2026-11-27-h100-learning] [--out DIR]

Reads each trial folder's final_rows.jsonl(.gz) and metrics.jsonl(.gz) (as the device sent them back),
the baseline's baseline_rows.jsonl.gz, and writes DIR/trials.md (one table) and DIR/trials.png
(full-test strict accuracy with 95 % CIs; greedy accuracy on the first 200 test questions along each
run; sampled training accuracy along each run). Standard library plus report.py; matplotlib optional.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as R  # noqa: E402  (this folder's report.py: readers and statistics)

# folder, label, prompts a step; the first is the reference for "vs 1hour"
TRIALS = [
    ("final", "1hour as shipped (500 q x 2, batch 8)", 8),
    ("b16", "batch 16, 1,000 q x 2", 16),
    ("3hour", "3hour (1,000 q x 3)", 8),
    ("1k2ep", "1,000 q x 2, batch 8", 8),
    ("b32mb4", "7,473 q, batch 32 / mini 4, 100 steps", 32),
    ("n16", "group size 16 (rollout.n=16)", 8),
    ("t07", "rollout temperature 0.7", 8),
    ("fast", "fast (200 q x 1)", 8),
]
GOAL = 10.0  # points of strict accuracy over the baseline (issue 7)


def tenth(xs: list[float], last: bool) -> float | None:
    """Mean of the first or last 10 % (at least 5) of a series."""
    if not xs:
        return None
    k = max(5, len(xs) // 10)
    return statistics.mean(xs[-k:] if last else xs[:k])


def trial_row(folder: Path, base: dict, ref: dict | None, notes: list[str]) -> dict | None:
    q = R.per_question(R.read_jsonl(R.find([folder], "final_rows.jsonl"), notes))
    if not q:
        notes.append(f"{folder}: no final rows")
        return None
    metrics = R.read_jsonl(R.find([folder], "metrics.jsonl"), notes) or []
    acc = [m["accuracy"] for m in metrics if isinstance(m.get("accuracy"), (int, float))]
    ent = [m["entropy"] for m in metrics if isinstance(m.get("entropy"), (int, float))]
    evals = [(m["step"], m["eval_accuracy"]) for m in metrics if isinstance(m.get("eval_accuracy"), (int, float))]
    return {"q": q, "summary": R.rows_summary(q), "vs_base": R.paired(base, q, "strict"),
            "vs_ref": R.paired(ref, q, "strict") if ref else None, "metrics": metrics, "evals": evals,
            "acc": (tenth(acc, False), tenth(acc, True)), "ent": (tenth(ent, False), tenth(ent, True)),
            "steps": len(metrics), "opt_steps": sum(m.get("optimizer_steps", 0) for m in metrics),
            "nonfinite": sum(m.get("nonfinite_steps", 0) for m in metrics)}


def table(rows: dict[str, dict], base: dict) -> str:
    pp = lambda x: R.num(None if x is None else 100 * x, "{:.1f}")  # noqa: E731
    out = ["| trial | strict (95 % CI) | vs baseline (paired 95 % CI) | vs 1hour (McNemar p) | "
           "sampled train acc, first → last 10 % | entropy | steps; optimizer steps; non-finite |",
           "|---|---|---|---|---|---|---|"]
    for name, label, _ in TRIALS:
        r = rows.get(name)
        if r is None:
            continue
        s, b, f = r["summary"], r["vs_base"], r["vs_ref"]
        vs_ref = "" if name == TRIALS[0][0] or f is None else f"{100 * f['delta']:+.1f} (p = {f['p']:.2g})"
        out.append(f"| {label} | {pp(s['strict_accuracy'])} % ({pp(s['strict_ci95'][0])}–{pp(s['strict_ci95'][1])}) "
                   f"| {100 * b['delta']:+.1f} ({100 * b['ci95'][0]:+.1f} to {100 * b['ci95'][1]:+.1f}) | {vs_ref} "
                   f"| {pp(r['acc'][0])} → {pp(r['acc'][1])} % | {R.num(r['ent'][0], '{:.2f}')} → "
                   f"{R.num(r['ent'][1], '{:.2f}')} | {r['steps']}; {r['opt_steps']}; {r['nonfinite']} |")
    bs = R.rows_summary(base)
    out.append(f"\nBaseline: {100 * bs['strict_accuracy']:.1f} % strict; the goal (+{GOAL:.0f} points) is "
               f"{100 * bs['strict_accuracy'] + GOAL:.1f} %.")
    trained = [rows[n]["q"] for n, _, _ in TRIALS if n in rows and n != "fast"]
    ids = sorted(set(base).intersection(*trained)) if trained else []
    if ids:
        right = [[t[i]["strict"] >= 0.5 for t in trained] for i in ids]
        out.append(f"Over the {len(trained)} trials other than `fast`, on the {len(ids)} test questions: any trial right "
                   f"{100 * sum(map(any, right)) / len(ids):.1f} %, all right {100 * sum(map(all, right)) / len(ids):.1f} %.")
    return "\n".join(out) + "\n"


def draw(rows: dict[str, dict], base: dict, out: Path, notes: list[str]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        notes.append("trials.png not drawn: no matplotlib here")
        return
    b0 = 100 * R.rows_summary(base)["strict_accuracy"]
    names = [n for n, _, _ in TRIALS if n in rows]
    batch = {n: b for n, _, b in TRIALS}
    b200 = 100 * R.rows_summary(base, set(range(200)))["strict_accuracy"]  # the in-run eval's questions
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 4.6))
    for i, n in enumerate(names):
        s = rows[n]["summary"]
        y, lo, hi = (100 * s["strict_accuracy"], 100 * s["strict_ci95"][0], 100 * s["strict_ci95"][1])
        a1.errorbar(i, y, yerr=[[y - lo], [hi - y]], fmt="o", capsize=4, color=f"C{i}")
    a1.axhline(b0, color="grey", ls=":", label=f"baseline {b0:.1f} %")
    a1.axhline(b0 + GOAL, color="red", ls="--", label=f"goal {b0 + GOAL:.1f} %")
    a1.set_xticks(range(len(names)), names, rotation=30)
    a1.set_ylabel("strict accuracy, 1,319 test questions (%)")
    a1.set_title("full test, greedy (95 % CI)")
    a1.legend(fontsize=8)
    for i, n in enumerate(names):
        ev = rows[n]["evals"]
        if ev:
            a2.plot([0] + [s * batch[n] for s, _ in ev], [b200] + [100 * a for _, a in ev], "o-", ms=3,
                     color=f"C{i}", label=n)
        st, acc = R.series(rows[n]["metrics"], "accuracy")
        if st:
            a3.plot([s * batch[n] for s in st], [100 * x for x in R.moving(acc, 10)], color=f"C{i}", label=n)
    a2.set_title("greedy, first 200 test questions (noisy)")
    a2.set_xlabel("training prompts so far (steps x prompts a step)")
    a2.set_ylabel("%")
    a2.legend(fontsize=8)
    a3.axhline(b0, color="grey", ls=":", label="baseline, greedy (full test)")
    a3.set_title("sampled (T = 1) training accuracy, 10-step mean")
    a3.set_xlabel("training prompts so far")
    a3.set_ylabel("%")
    a3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    R.shrink_png(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("bench/results/2026-11-27-h100-learning"))
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    a = ap.parse_args(argv)
    notes: list[str] = []
    base = R.baseline_questions(a.results / "baseline", notes, "compare.py")
    if base is None:
        return 2
    rows: dict[str, dict] = {}
    for name, _, _ in TRIALS:
        ref = rows.get(TRIALS[0][0], {}).get("q")
        if (r := trial_row(a.results / name, base, ref, notes)) is not None:
            rows[name] = r
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "trials.md").write_text(table(rows, base))
    draw(rows, base, a.out / "trials.png", notes)
    for n in notes:
        print("note:", n)
    print(f"wrote {a.out / 'trials.md'} and {a.out / 'trials.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
