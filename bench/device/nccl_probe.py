"""NCCL weight-sync smoke test on 2 GPUs: our SGLang server wrapper on GPU 1, the "trainer" on GPU 0.

Stages (each printed with a timestamp): env -> trainer process group -> model dir -> SGLang server
on GPU 1 -> trainer copy on GPU 0 (perturbed, so a push changes the served weights) -> generate
(v0) -> NCCL transport -> push v1, generate, push v2, generate -> log-prob check (trainer vs
server on the server's samples: large before the push, bf16 noise after) -> close.
A watchdog ends the run after --deadline seconds whatever happens: it prints the stage it
stopped in, every thread's stack, the server log tail, and stops the server. Exit code 0 = pass,
1 = a check or stage failed, 3 = watchdog.

``--old-env`` reproduces the 2026-11-27 hang: the trainer runs with NCCL_CUMEM_ENABLE=1 (NCCL's
default) and the server does not inherit it, so SGLang sets 0 (expect a timeout at bucket 0).

On the device, from the repo root (kind nvidia-h100-x2, SGLang wheels carried):
    bash bench/device/nccl_probe.sh        # MODE=old-env for the A/B reproduction
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/: common, gpu_transports
os.environ.setdefault("NCCL_DEBUG", "INFO")  # NCCL's transport choice lands in both logs
os.environ.setdefault("NCCL_DEBUG_SUBSYS", "INIT")

T0 = time.time()
STAGE = {"name": "start", "engine": None}
RESULT: dict = {"stages": []}


def stage(name: str, **info) -> None:
    """Print and record a stage (and what it measured)."""
    STAGE["name"] = name
    RESULT["stages"].append({"stage": name, "t": round(time.time() - T0, 2), **info})
    extra = " ".join(f"{k}={v}" for k, v in info.items())
    print(f"[{time.strftime('%H:%M:%S')} +{time.time() - T0:6.1f}s] {name} {extra}".rstrip(), flush=True)


def server_tail(lines: int = 60) -> str:
    engine = STAGE["engine"]
    if engine is None:
        return "(no server)"
    from gsm8k_grpo.rollout.server import log_tail

    return log_tail(engine.server.log_path, lines)


def finish(out: str | None, code: int) -> None:
    RESULT.update(exit_code=code, last_stage=STAGE["name"], seconds=round(time.time() - T0, 1))
    print(f"---- SGLang server log, last lines ({STAGE['name']}) ----\n{server_tail()}\n----", flush=True)
    if out:
        Path(out).write_text(json.dumps(RESULT, indent=1))
    engine = STAGE["engine"]
    if engine is not None:
        engine.server.stop(grace_s=5.0)
    sys.stdout.flush()
    os._exit(code)  # a stuck NCCL thread must not keep the process alive


def watchdog(deadline: float, out: str | None) -> None:
    def fire() -> None:
        print(f"!!!! watchdog: {deadline:.0f}s passed, stuck in stage '{STAGE['name']}'; thread stacks:", flush=True)
        faulthandler.dump_traceback(all_threads=True)
        RESULT["error"] = f"watchdog after {deadline:.0f}s in stage {STAGE['name']}"
        finish(out, 3)

    t = threading.Timer(deadline, fire)
    t.daemon = True
    t.start()


def env_report() -> dict:
    import torch

    try:
        import sglang
        sgl = sglang.__version__
    except ImportError:
        sgl = None
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None
    keys = [k for k in os.environ if k.startswith(("NCCL_", "TORCH_NCCL", "CUDA_VISIBLE"))]
    return {"torch": torch.__version__, "sglang": sgl, "nccl": nccl, "gpus": torch.cuda.device_count(),
            "env": {k: os.environ[k] for k in sorted(keys)}}


def generate_check(engine, prompt_ids, stop, want: int) -> list:
    from gsm8k_grpo.rollout.base import SamplingParams

    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=32, stop_token_ids=tuple(stop))
    t = time.perf_counter()
    groups = engine.generate(prompt_ids, params)  # raises if a completion reports another version
    got = {c.weight_version for g in groups for c in g}
    if got != {want}:
        raise RuntimeError(f"generations report weight versions {got}, expected {want}")
    stage(f"generate v{want}", seconds=round(time.perf_counter() - t, 2), completions=sum(map(len, groups)))
    return groups


def run(args) -> None:
    import torch

    info = env_report()
    stage("env", **{k: v for k, v in info.items() if k != "env"})
    print("  env:", info["env"], flush=True)
    RESULT["env"] = info
    if info["gpus"] < 2:
        raise RuntimeError(f"needs 2 GPUs, sees {info['gpus']}")

    from common import setup
    from gpu_transports import mismatch

    from gsm8k_grpo.modeling import load_causal_lm
    from gsm8k_grpo.rollout import server as server_mod
    from gsm8k_grpo.rollout.sglang_engine import SGLangEngine
    from gsm8k_grpo.trainer.fsdp import PolicyModel, init_distributed
    from gsm8k_grpo.weights.detect import make_transport

    torch.cuda.set_device(0)
    if args.old_env:  # the old trainer: NCCL's own default, cuMem on
        os.environ["NCCL_CUMEM_ENABLE"] = "1"
    init_distributed(torch.device("cuda", 0))  # as the recipe: default group (world 1), pins NCCL_CUMEM_ENABLE
    stage("trainer process group", cumem=os.environ.get("NCCL_CUMEM_ENABLE"))
    if args.old_env:  # the old launcher: the child did not inherit the variable, SGLang sets 0
        plain = server_mod.SGLangServer._env
        server_mod.SGLangServer._env = lambda self: {k: v for k, v in plain(self).items() if k != "NCCL_CUMEM_ENABLE"}
        stage("old env: server without NCCL_CUMEM_ENABLE (SGLang sets 0)")

    cfg, work, model_dir, tok, stop = setup(args.config, args.workdir)
    stage("model dir", path=model_dir)
    extra = ["--cuda-graph-backend-prefill", "disabled"] if args.no_prefill_graph else []
    rollout = cfg.rollout.model_copy(update={"server_timeout_s": args.server_timeout,
                                             "server_args": [*cfg.rollout.server_args, *extra]})
    engine = SGLangEngine(model_dir, rollout, work, gpu_ids=[1])
    STAGE["engine"] = engine
    stage("server healthy on GPU 1", url=engine.server.base_url, log=str(engine.server.log_path))

    hf = load_causal_lm(model_dir, dtype=torch.bfloat16, device="cuda:0").eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a "training step": the server must see these weights after the push
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * p.float().std().to(p.dtype) * 0.5)
    policy = PolicyModel(hf, chunk=1024, temperature=1.0)
    stage("trainer copy on GPU 0 (perturbed)", params=sum(p.numel() for p in hf.parameters()))

    prompt_ids = [tok.encode(f"Question {i}: what is {i} + {2 * i}? Answer:") for i in range(8)]
    groups = generate_check(engine, prompt_ids, stop, 0)
    RESULT["mismatch_before_push"] = mismatch(policy, prompt_ids, groups)
    stage("log-prob mismatch before push", value=round(RESULT["mismatch_before_push"], 4))

    tr = make_transport("nccl", engine, model_dir, work, args.bucket_mb)
    tr.timeout_s = args.timeout
    stage("nccl transport built", bucket_mb=args.bucket_mb, timeout_s=args.timeout)
    named = lambda: ((n, p.detach()) for n, p in hf.named_parameters())
    for version in (1, 2):
        stage(f"push v{version} begin")
        torch.cuda.synchronize()
        t = time.perf_counter()
        stats = tr.push(named(), version)
        secs = time.perf_counter() - t
        RESULT[f"push_v{version}_s"] = secs
        stage(f"push v{version} done", seconds=round(secs, 3), gb=round(stats.bytes / 1e9, 3), buckets=stats.buckets)
        groups = generate_check(engine, prompt_ids, stop, version)
    RESULT["mismatch_after_push"] = mismatch(policy, prompt_ids, groups)
    stage("log-prob mismatch after push", value=round(RESULT["mismatch_after_push"], 4))
    if not RESULT["mismatch_after_push"] < 0.5 * RESULT["mismatch_before_push"]:
        raise RuntimeError("the served weights do not follow the pushed ones (log-prob mismatch did not drop)")
    tr.close()
    stage("transport closed")
    engine.close()
    STAGE["engine"] = None
    stage("PASS")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/configs/random-0.5b.yaml")
    ap.add_argument("--workdir", default="/tmp/nccl-probe")
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=60.0, help="transport stage timeout (s)")
    ap.add_argument("--server-timeout", type=float, default=330.0,
                    help="server start timeout (s); a cold 2xH100 machine needed ~150 s on 2026-11-27")
    ap.add_argument("--deadline", type=float, default=450.0, help="watchdog: whole run (s)")
    ap.add_argument("--prefill-graph", dest="no_prefill_graph", action="store_false",
                    help="keep SGLang's prefill CUDA graph capture (61-85 s of the cold start on 2026-11-27)")
    ap.add_argument("--old-env", action="store_true", help="reproduce the hang (NCCL_CUMEM_ENABLE mismatch)")
    ap.add_argument("--out", default=None, help="JSON summary")
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    watchdog(args.deadline, args.out)
    try:
        run(args)
    except BaseException as e:  # noqa: BLE001 - reported, then the exit code says it
        traceback.print_exc()
        RESULT["error"] = f"{type(e).__name__}: {e}"
        stage(f"FAIL in '{STAGE['name']}'", error=str(e)[:300])
        finish(args.out, 1)
    finish(args.out, 0)


if __name__ == "__main__":
    main()
