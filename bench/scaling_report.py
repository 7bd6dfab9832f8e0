"""Issue 8's scaling table from the files `bench/device/scaling.sh` brings back.

    python bench/scaling_report.py DIR [DIR ...] > table.md

Reads every metrics_scale<N>.jsonl found in the DIRs (N = GPUs: 1 shared ipc, 2 nccl, 4 = 3 trainer
ranks + SGLang) and prints one markdown row per GPU count: median (min-max) over the steps after the
first 2 of step time, generate, update and push seconds, generated and trained tokens/s, samples
trained, and the speed-up of the step over 1 GPU. Standard library only.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

SKIP = 2
LAYOUT = {1: "trainer + SGLang share GPU 0 (ipc)", 2: "trainer GPU 0, SGLang GPU 1 (nccl)",
          4: "3 trainer ranks GPUs 0-2, SGLang GPU 3 (nccl)"}
COLS = [("time_step", "step s"), ("time_generate", "generate s"), ("time_update", "update s"),
        ("time_push", "push s"), ("gen_tokens_per_s", "gen tok/s"), ("train_tokens_per_s", "trained tok/s")]


def load(path: Path) -> list[dict]:
    recs = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            recs.append(rec)
    return recs[SKIP:] if len(recs) > SKIP else recs


def cell(recs: list[dict], key: str) -> tuple[str, float | None]:
    vals = [r[key] for r in recs if isinstance(r.get(key), (int, float))]
    if not vals:
        return "–", None
    med = statistics.median(vals)
    fmt = (lambda v: f"{v:,.0f}") if med >= 100 else (lambda v: f"{v:.3g}")
    return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})", med


def main(dirs: list[str]) -> None:
    runs: dict[int, list[dict]] = {}
    for d in dirs:
        for f in sorted(Path(d).glob("metrics_scale*.jsonl")):
            m = re.fullmatch(r"metrics_scale(\d+)\.jsonl", f.name)
            if m:
                runs[int(m.group(1))] = load(f)
    if not runs:
        sys.exit("no metrics_scale<N>.jsonl in " + ", ".join(dirs))
    print("| GPUs | layout | steps | " + " | ".join(c for _, c in COLS) + " | samples trained | step speed-up |")
    print("|---" * (len(COLS) + 5) + "|")
    base = None
    for n in sorted(runs):
        recs = runs[n]
        cells, med = [], {}
        for key, _ in COLS:
            text, med[key] = cell(recs, key)
            cells.append(text)
        if n == 1:
            base = med["time_step"]
        speed = f"{base / med['time_step']:.2f}×" if base and med["time_step"] else "–"
        samples = cell(recs, "samples_trained")[0]
        print(f"| {n} | {LAYOUT.get(n, '')} | {len(recs)} | " + " | ".join(cells) + f" | {samples} | {speed} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
