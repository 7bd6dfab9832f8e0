"""Learning trials run side by side (trials.sh): each configuration's seeds, mean and spread (issue 20).

    python bench/device/learn/seeds.py --trials DIR [--group LABEL=NAME,NAME ...] [--ref LABEL] [--out FILE]

DIR holds what `trials.sh wait` packed: baseline/baseline_rows.jsonl and, per trial NAME,
NAME/final_rows.jsonl, NAME/final.json, NAME/train.rc, NAME/settings.txt and
NAME/runs/*/*/metrics.jsonl (or NAME/metrics.jsonl). Each --group names the trials that are seeds of one configuration.

Per trial: full-test strict and lenient accuracy, the paired gain over the base model (95 % CI,
questions fixed/broken, exact McNemar p), steps, median step time and the training wall clock.
Per configuration: the mean gain over its seeds and their spread (min–max; the sample standard
deviation when there are >= 2). Against the reference configuration: the paired comparison of seed k
against the reference's seed k (same questions; seeds from settings.txt), and all seed pairs together
(pooled_difference).
Standard library plus report.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report as R  # noqa: E402  (this folder's report.py: readers and statistics)


def trial(folder: Path, base: dict, notes: list[str]) -> dict | None:
    q = R.per_question(R.read_jsonl(R.find([folder], "final_rows.jsonl"), notes))
    if not q:
        notes.append(f"{folder.name}: no final rows (see its train.out / final.log)")
        return None
    runs = sorted(folder.glob("runs/*/*/metrics.jsonl")) or sorted(folder.glob("metrics.jsonl*"))
    metrics = R.read_jsonl(runs[-1] if runs else None, notes) or []
    steps = [m["time_step"] for m in metrics[1:] if isinstance(m.get("time_step"), (int, float))]
    rc = (folder / "train.rc").read_text().strip() if (folder / "train.rc").is_file() else ""
    wall = rc.split("wall")[-1].strip() if "wall" in rc else "?"
    settings = (folder / "settings.txt").read_text().strip() if (folder / "settings.txt").is_file() else ""
    return {"name": folder.name, "summary": R.rows_summary(q), "q": q, "gain": R.paired(base, q, "strict"),
            "steps": len(metrics), "opt_steps": sum(m.get("optimizer_steps", 0) for m in metrics),
            "step_s": R.median(steps), "wall": wall, "settings": settings,
            "nonfinite": sum(m.get("nonfinite_steps", 0) for m in metrics), "seed": seed_of(settings)}


def seed_of(settings: str) -> str | None:
    """The seed in trials.sh's settings.txt ("PRESET SEED SETTINGS..."), or None."""
    words = settings.split()
    return words[1] if len(words) > 1 and words[1].isdigit() else None


def seed_pairs(ts: list[dict], ref: list[dict]) -> list[tuple[dict, dict]]:
    """Each trial with the reference trial of the same seed (settings.txt), so a configuration whose seed 0
    has no final score still pairs its seed 1 with the reference's seed 1; trials without a known seed
    pair by position."""
    by_seed = {r["seed"]: r for r in ref if r.get("seed") is not None}
    if by_seed and all(t.get("seed") is not None for t in ts):
        return [(t, by_seed[t["seed"]]) for t in ts if t["seed"] in by_seed]
    return list(zip(ts, ref))


def spread(xs: list[float]) -> str:
    if len(xs) < 2:
        return f"{xs[0]:+.1f} (one run)" if xs else "–"
    return (f"**{statistics.mean(xs):+.1f}** (runs {', '.join(f'{x:+.1f}' for x in xs)}; "
            f"sd {statistics.stdev(xs):.1f})")


def pooled_difference(pairs: list[tuple[dict, dict]], key: str = "strict") -> dict | None:
    """Configuration vs reference over every seed pair at once: per question, the mean over the pairs
    of (trial - reference); their mean is the difference in points, and its 95 % CI is taken over the
    questions (a question is the unit: its seeds are not independent draws of it)."""
    pairs = [(t, r) for t, r in pairs if t and r]
    if not pairs:
        return None
    common = sorted(set.intersection(*[set(t["q"]) & set(r["q"]) for t, r in pairs]))
    if not common:
        return None
    d = [statistics.mean(t["q"][i][key] - r["q"][i][key] for t, r in pairs) for i in common]
    mean = statistics.mean(d)
    se = statistics.pstdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    fixed = sum(r["q"][i][key] < 0.5 <= t["q"][i][key] for t, r in pairs for i in common)
    broken = sum(t["q"][i][key] < 0.5 <= r["q"][i][key] for t, r in pairs for i in common)
    return {"pairs": len(pairs), "n": len(d), "delta": mean, "ci95": (mean - 1.96 * se, mean + 1.96 * se),
            "fixed": fixed, "broken": broken}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=Path, required=True)
    ap.add_argument("--group", action="append", default=[], help="LABEL=NAME,NAME (seeds of one configuration)")
    ap.add_argument("--ref", help="the LABEL the others are compared with (default: the first group)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    notes: list[str] = []
    base = R.baseline_questions(a.trials / "baseline", notes, "seeds.py")
    if base is None:
        return 2
    groups: dict[str, list[dict]] = {}
    for g in a.group:
        label, _, names = g.partition("=")
        groups[label] = [t for n in names.split(",") if (t := trial(a.trials / n, base, notes))]
    bs = R.rows_summary(base)
    lines = [f"Base model: strict {R.acc_ci(bs, 'strict')}, lenient {R.acc_ci(bs, 'lenient')} "
             f"on {bs['questions']} questions.", "",
             "| configuration | trial | strict | lenient | gain (95 % CI) | fixed / broken | steps (opt.) "
             "| median step | train wall |", "|---|---|---|---|---|---|---|---|---|"]
    for label, ts in groups.items():
        for t in ts:
            g = t["gain"]
            lines.append(f"| {label} | {t['name']} | {R.acc_ci(t['summary'], 'strict')} | "
                         f"{R.acc_ci(t['summary'], 'lenient')} | {100 * g['delta']:+.1f} ({100 * g['ci95'][0]:+.1f} to "
                         f"{100 * g['ci95'][1]:+.1f}) | {g['fixed']} / {g['broken']} | {t['steps']} ({t['opt_steps']}) | "
                         f"{R.num(t['step_s'], '{:.2f} s')} | {t['wall']} |")
    lines += ["", "| configuration | runs | mean gain, strict (points) | mean strict |", "|---|---|---|---|"]
    for label, ts in groups.items():
        gains = [100 * t["gain"]["delta"] for t in ts]
        accs = [100 * t["summary"]["strict_accuracy"] for t in ts]
        lines.append(f"| {label} | {len(ts)} | {spread(gains)} | "
                     f"{statistics.mean(accs):.1f} % |" if accs else f"| {label} | 0 | – | – |")
    ref = a.ref or next(iter(groups), None)
    if ref in groups and len(groups) > 1:
        lines += ["", f"Against `{ref}`, seed by seed (paired on the same questions):", ""]
        for label, ts in groups.items():
            if label == ref:
                continue
            pairs = seed_pairs(ts, groups[ref])
            for t, r in pairs:
                p = R.paired(r["q"], t["q"], "strict")
                lines.append(f"- {label} {t['name']} vs {r['name']}: {100 * p['delta']:+.1f} points "
                             f"({100 * p['ci95'][0]:+.1f} to {100 * p['ci95'][1]:+.1f}), "
                             f"{p['fixed']} fixed / {p['broken']} broken, McNemar p = {p['p']:.2g}")
            pooled = pooled_difference(pairs)
            if pooled:
                lines.append(f"- {label} vs {ref}, all {pooled['pairs']} seed pairs together: "
                             f"{100 * pooled['delta']:+.1f} points ({100 * pooled['ci95'][0]:+.1f} to "
                             f"{100 * pooled['ci95'][1]:+.1f}, a CI over questions), {pooled['fixed']} fixed / "
                             f"{pooled['broken']} broken")
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    text = "\n".join(lines) + "\n"
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
