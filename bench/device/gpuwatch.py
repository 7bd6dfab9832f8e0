"""GPU memory of every trial on a shared GPU, by NVML (issue 22: a card's plan verified over whole runs).

    python bench/device/gpuwatch.py --trials /tmp/trials [--every 1]     (detached by trials.sh watch)

Every second it reads each GPU process's memory from NVML and gives it to the trial whose chain started
it: the process or one of its parents has /tmp/trials/NAME/ on its command line (trials.sh runs each
chain as `bash /tmp/trials/NAME/chain.sh`). Within a trial the phase is `train` or `eval` (the
`gsm8k_grpo train|eval` process among the parents) and the role is `trainer` (that process) or `server`
(its children: SGLang's scheduler and detokenizer). Every 10 s it writes TRIALS/gpuwatch.json: per trial
and phase the peak of trainer + server at one instant, the peak of each, and the trial's
trainer.gpu_memory_limit from its settings.txt; and the whole GPU's peak. Stops after --max-s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

GIB = 1024**3


def owner(pid: int, trials: str, cache: dict) -> tuple[str, str, str] | None:
    """-> (trial, phase, role) of a GPU process, or None when no trial started it."""
    if pid in cache:
        return cache[pid]
    import psutil

    found = None
    try:
        chain = [psutil.Process(pid)]
        chain += chain[0].parents()
        lines = [" ".join(p.cmdline()) for p in chain]
    except psutil.Error:
        return None
    name = phase = None
    role = "server"
    for i, line in enumerate(lines):
        m = re.search(re.escape(trials.rstrip("/")) + r"/([^/\s]+)/", line)
        if m and name is None:
            name = m.group(1)
        p = re.search(r"gsm8k_grpo (train|eval)\b", line)
        if p and phase is None:
            phase = p.group(1)
            role = "trainer" if i == 0 else "server"
    if name:
        found = (name, phase or "other", role)
    cache[pid] = found
    return found


def limit_of(trials: Path, name: str) -> float | None:
    f = trials / name / "settings.txt"
    found = re.findall(r"gpu_memory_limit=(\S+)", f.read_text() if f.exists() else "")
    if not found:  # the last one wins, as with --set
        return None
    try:
        from gsm8k_grpo.memory import parse_size

        return round(parse_size(found[-1]) / GIB, 2)
    except Exception:  # noqa: BLE001 - a report, not a check
        return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", default="/tmp/trials")
    ap.add_argument("--every", type=float, default=1.0)
    ap.add_argument("--max-s", type=float, default=3600)
    a = ap.parse_args()
    import pynvml

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    trials = Path(a.trials)
    out = trials / "gpuwatch.json"
    peaks: dict = {}
    gpu_peak = 0
    cache: dict = {}
    t0 = last = time.time()
    while time.time() - t0 < a.max_s:
        now: dict = {}
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
            o = owner(p.pid, a.trials, cache)
            if o is None:
                continue
            d = now.setdefault(o[:2], {"trainer": 0, "server": 0})
            d[o[2]] += p.usedGpuMemory or 0
        gpu_peak = max(gpu_peak, pynvml.nvmlDeviceGetMemoryInfo(h).used)
        for (name, phase), d in now.items():
            pk = peaks.setdefault(name, {}).setdefault(phase, {"total": 0, "trainer": 0, "server": 0,
                                                                "samples": 0})
            pk["total"] = max(pk["total"], d["trainer"] + d["server"])
            pk["trainer"] = max(pk["trainer"], d["trainer"])
            pk["server"] = max(pk["server"], d["server"])
            pk["samples"] += 1
        if time.time() - last >= 10:
            last = time.time()
            res = {"seconds": round(last - t0), "gpu_used_peak_gib": round(gpu_peak / GIB, 2), "trials": {}}
            for name, phases in sorted(peaks.items()):
                lim = limit_of(trials, name)
                res["trials"][name] = {"limit_gib": lim, **{
                    ph: {k: (round(v / GIB, 2) if k != "samples" else v) for k, v in pk.items()}
                    for ph, pk in phases.items()}}
                tr = phases.get("train")
                if lim and tr:
                    res["trials"][name]["train_within_limit"] = tr["total"] / GIB <= lim
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=1))
            os.replace(tmp, out)
        time.sleep(a.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
