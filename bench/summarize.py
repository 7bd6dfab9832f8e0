"""Summarise run dirs' metrics.jsonl: median (min-max) of per-phase seconds after warm-up.

    python bench/summarize.py RUNS_PARENT [--skip 2] [--json OUT.json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PHASES = ["time_step", "time_generate", "time_reward", "time_logprob", "time_update", "time_push", "time_save",
          "gen_tokens_per_s", "train_tokens_per_s", "samples_trained", "grad_norm", "logprob_mismatch",
          "peak_mem_gb", "mfu"]


def summarize(path: Path, skip: int) -> dict:
    recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    body = recs[skip:] if len(recs) > skip else recs
    out = {"steps": len(recs), "measured": len(body)}
    for k in PHASES:
        vals = [r[k] for r in body if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def main() -> None:
    root = Path(sys.argv[1])
    skip = int(sys.argv[sys.argv.index("--skip") + 1]) if "--skip" in sys.argv else 2
    table = {p.parent.name: summarize(p, skip) for p in sorted(root.glob("*/metrics.jsonl"))}
    for name, s in table.items():
        cells = [f"{k.removeprefix('time_')} {v['median']:.3g} ({v['min']:.3g}-{v['max']:.3g})"
                 for k, v in s.items() if isinstance(v, dict)]
        print(f"{name}: {s['measured']}/{s['steps']} steps | " + " | ".join(cells))
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
