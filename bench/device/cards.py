"""Consumer-card plans verified on a big GPU (issue 22): `grpo train` capped to a card's size.

    python bench/device/cards.py --out DIR --model M --config C  NAME LIMIT [KEY=VALUE ...]

runs `grpo train --preset 1hour --config C --set model.path=M --set trainer.gpu_memory_limit=LIMIT
--set trainer.max_steps=STEPS ...` (STEPS 10 unless a KEY sets it) and, every 0.5 s, reads each GPU
process's memory from NVML (nvidia-ml-py): the trainer's and its SGLang server's (the process tree of
the run), so other jobs on the same GPU do not count. Writes DIR/NAME.json: the limit, the peak of
trainer + server together and of each, steps done, whether every step trained, the memory-plan lines
of the run's log, the exit code and the refusal line when the run was refused. LIMIT "none" runs
without trainer.gpu_memory_limit (caps given by hand as KEY=VALUE).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

GIB = 1024**3


def tree(pid: int) -> set[int]:
    import psutil

    try:
        p = psutil.Process(pid)
        return {pid} | {c.pid for c in p.children(recursive=True)}
    except psutil.Error:
        return set()


def sample(pid: int, stop: threading.Event, peaks: dict) -> None:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    while not stop.is_set():
        mine = tree(pid)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
        used = {p.pid: (p.usedGpuMemory or 0) for p in procs}
        trainer = used.get(pid, 0)
        server = sum(v for k, v in used.items() if k in mine and k != pid)
        peaks["trainer"] = max(peaks["trainer"], trainer)
        peaks["server"] = max(peaks["server"], server)
        peaks["total"] = max(peaks["total"], trainer + server)
        peaks["seen_pids"] = sorted(set(peaks["seen_pids"]) | (set(used) & mine))
        peaks["gpu_pids"] = len(used)
        stop.wait(0.5)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--preset", default="1hour")
    ap.add_argument("name")
    ap.add_argument("limit")
    ap.add_argument("sets", nargs="*")
    a = ap.parse_args()
    out = Path(a.out)
    runs = out / a.name
    sets = [f"model.path={a.model}", f"output_dir={runs}", "eval.every=0", "eval.at_end=false"]
    if a.limit != "none":
        sets.append(f"trainer.gpu_memory_limit={a.limit}")
    if not any(s.startswith("trainer.max_steps=") for s in a.sets):
        sets.append("trainer.max_steps=10")
    sets += a.sets
    cmd = [sys.executable, "-m", "gsm8k_grpo", "train", "--preset", a.preset, "--config", a.config]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    log = open(out / f"{a.name}.out", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    peaks = {"trainer": 0, "server": 0, "total": 0, "seen_pids": [], "gpu_pids": 0}
    stop = threading.Event()
    th = threading.Thread(target=sample, args=(proc.pid, stop, peaks), daemon=True)
    th.start()
    rc = proc.wait()
    stop.set()
    th.join(5)
    text = (out / f"{a.name}.out").read_text(errors="replace")
    metrics = []
    for f in runs.glob("*/*/metrics.jsonl"):
        metrics = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    plan = [ln.strip()[:400] for ln in text.splitlines()
            if any(k in ln for k in ("memory plan", "memory limit", "SGLang arguments", "memory:", "tight"))]
    res = {
        "name": a.name, "limit": a.limit, "sets": a.sets, "rc": rc, "wall_s": round(time.time() - t0, 1),
        "limit_gib": None, "peak_total_gib": round(peaks["total"] / GIB, 2),
        "peak_trainer_gib": round(peaks["trainer"] / GIB, 2), "peak_server_gib": round(peaks["server"] / GIB, 2),
        "pids_matched": peaks["seen_pids"], "gpu_processes_seen": peaks["gpu_pids"],
        "steps": len(metrics), "every_step_trained": bool(metrics) and all(m.get("optimizer_steps") == 1
                                                                          for m in metrics),
        "samples_trained": [m.get("samples_trained") for m in metrics],
        "torch_peak_allocated_gib": max((m.get("peak_mem_gb", 0) for m in metrics), default=None),
        "step_s_median": sorted(m["time_step"] for m in metrics)[len(metrics) // 2] if metrics else None,
        "update_s_median": sorted(m["time_update"] for m in metrics)[len(metrics) // 2] if metrics else None,
        "plan_lines": plan, "last_lines": text.strip().splitlines()[-4:],
    }
    if a.limit != "none":
        from gsm8k_grpo.memory import parse_size

        res["limit_gib"] = round(parse_size(a.limit) / GIB, 2)
        res["fits_limit"] = res["peak_total_gib"] <= res["limit_gib"]
    (out / f"{a.name}.json").write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("name", "rc", "steps", "every_step_trained", "peak_total_gib",
                                          "peak_trainer_gib", "peak_server_gib", "limit_gib", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
