"""Time to accuracy (issue 21): wall clock from `grpo train`'s start to the first step whose in-run eval
reached a target, for a run made with `eval.samples=1319 eval.every=N` (the in-run eval is `grpo eval
--all`'s: greedy, the whole test split, strict scoring).

    python bench/device/learn/time_to.py --run RUN_DIR [--run RUN_DIR ...] [--target 0.33]

RUN_DIR holds train.log and metrics.jsonl (runs/<experiment>/trialN). For each run it prints the first
step at or above the target, the wall clock from the log's first line to that step's line, the same less
the in-run evals' time (`time_eval`: a user who trains without them does not pay it), and the training
steps' own time (the sum of `time_step`). A run that never reached the target says so, with its best eval.
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
STEP = re.compile(r"\bstep (\d+)/\d+\b")


def stamps(log: Path) -> tuple[datetime | None, dict[int, datetime]]:
    """(the log's first timestamp, {step: the timestamp of its 'step N/M' line})."""
    first, steps = None, {}
    for line in log.read_text().splitlines():
        m = STAMP.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
        first = first or t
        s = STEP.search(line)
        if s and int(s.group(1)) not in steps:
            steps[int(s.group(1))] = t
    return first, steps


def time_to(run: Path, target: float) -> dict:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first, steps = stamps(run / "train.log")
    evals = [r for r in rows if r.get("eval_accuracy") is not None]
    out = {"run": str(run), "target": target, "evals": len(evals),
           "best": max((r["eval_accuracy"] for r in evals), default=None)}
    hit = next((r for r in evals if r["eval_accuracy"] >= target), None)
    if hit is None:
        return out
    step = hit["step"]
    before = [r for r in rows if r["step"] <= step]
    wall = (steps[step] - first).total_seconds() if first and step in steps else None
    evals_s = sum(r.get("time_eval") or 0.0 for r in before)
    out.update(step=step, accuracy=hit["eval_accuracy"], wall_s=wall,
               wall_less_evals_s=wall - evals_s if wall is not None else None, evals_s=evals_s,
               steps_s=sum(r.get("time_step") or 0.0 for r in before))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, type=Path)
    ap.add_argument("--target", type=float, default=0.33)
    args = ap.parse_args(argv)
    for run in args.run:
        r = time_to(run, args.target)
        if "step" not in r:
            print(f"{run}: never reached {args.target:.1%} in {r['evals']} evals (best {r['best']})")
        else:
            wall = f"{r['wall_s']:.0f} s" if r["wall_s"] is not None else "? s"
            less = f"{r['wall_less_evals_s']:.0f} s" if r["wall_less_evals_s"] is not None else "?"
            print(f"{run}: {r['accuracy']:.1%} at step {r['step']}: {wall} from the start "
                  f"({less} without the {r['evals_s']:.0f} s of in-run evals; steps {r['steps_s']:.0f} s)")
        print(json.dumps(r))


if __name__ == "__main__":
    main()
