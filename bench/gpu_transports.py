"""Weight-sync benchmark and freshness check on one GPU, against a real SGLang server.

One SGLang server (random full-size Qwen2.5-0.5B, bf16) and one "trainer" copy of the weights on
the same GPU. For each transport (ipc, disk): N pushes of all weights, seconds per push.
Then the freshness check: after a push, the server's log-probs of its own samples match the
trainer's (bf16 noise level); perturb the trainer's weights WITHOUT pushing and the mismatch jumps;
push again and it falls back.

Run on the device (after sourcing the SGLang env), from the repo root:
    PYTHONPATH=src python bench/gpu_transports.py --out $OUT/transports.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import setup
from gsm8k_grpo.data import gsm8k, prompts
from gsm8k_grpo.modeling import load_causal_lm
from gsm8k_grpo.rollout.base import SamplingParams
from gsm8k_grpo.rollout.sglang_engine import SGLangEngine
from gsm8k_grpo.trainer.batching import TrainSample, collate
from gsm8k_grpo.trainer.fsdp import PolicyModel
from gsm8k_grpo.weights.detect import make_transport


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def mismatch(policy: PolicyModel, prompt_ids, groups) -> float:
    """Mean |trainer logp - engine logp| over all generated tokens."""
    samples = [TrainSample(p, c.token_ids, 0.0, c.logprobs) for p, g in zip(prompt_ids, groups) for c in g]
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(samples), 16):
            mb = collate(samples, list(range(i, min(i + 16, len(samples)))), pad_id=0)
            logp, _ = policy(mb.input_ids.cuda(), mb.positions.cuda(), mb.targets.cuda())
            tot += float((logp.float().cpu() - mb.engine_logprobs).abs().sum())
            n += mb.n_tokens
    return tot / max(n, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/configs/random-0.5b.yaml")
    ap.add_argument("--pushes", type=int, default=12)
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--workdir", default="/tmp/bench-transports")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, work, model_dir, tok, stop = setup(args.config, args.workdir)
    result = {"gpu": torch.cuda.get_device_name(0), "bucket_mb": args.bucket_mb, "pushes": args.pushes,
              "model": "Qwen2.5-0.5B architecture, random bf16 weights"}

    hf = load_causal_lm(model_dir, dtype=torch.bfloat16, device="cuda").eval()
    result["params"] = sum(p.numel() for p in hf.parameters())
    policy = PolicyModel(hf, chunk=1024, temperature=1.0)
    t0 = time.time()
    engine = SGLangEngine(model_dir, cfg.rollout, work)
    result["server_start_s"] = round(time.time() - t0, 1)
    log("server up in", result["server_start_s"], "s")
    named = lambda: ((n, p.detach()) for n, p in hf.named_parameters())  # noqa: E731
    version = 0
    try:
        for kind in ("ipc", "disk"):
            tr = make_transport(kind, engine, model_dir, work, args.bucket_mb)
            secs = []
            for _ in range(args.pushes):
                version += 1
                torch.cuda.synchronize()
                t = time.perf_counter()
                stats = tr.push(named(), version)
                secs.append(time.perf_counter() - t)
                assert engine.weight_version == version
            tr.close()
            steady = secs[2:]  # the first pushes warm up IPC handles / page cache
            result[kind] = {"median_s": statistics.median(steady), "min_s": min(steady), "max_s": max(steady),
                            "all_s": secs, "bytes": stats.bytes, "buckets": stats.buckets}
            log(f"{kind}: median {result[kind]['median_s']:.3f} s over {len(steady)} pushes "
                f"({stats.bytes / 1e9:.2f} GB, {stats.buckets} buckets)")

        problems = gsm8k.load_split("test", cfg.data.path)[:16]
        prompt_ids = [prompts.encode(tok, p.question, cfg.data.instruction) for p in problems]
        params = SamplingParams(n=4, temperature=1.0, max_new_tokens=128, stop_token_ids=tuple(stop))
        ipc = make_transport("ipc", engine, model_dir, work, args.bucket_mb)
        fresh = mismatch(policy, prompt_ids, engine.generate(prompt_ids, params))
        torch.manual_seed(0)
        with torch.no_grad():  # a "training step" that is not pushed
            for p in hf.parameters():
                p.add_(torch.randn_like(p) * p.float().std().to(p.dtype) * 0.05)
        stale = mismatch(policy, prompt_ids, engine.generate(prompt_ids, params))
        version += 1
        ipc.push(named(), version)
        repushed = mismatch(policy, prompt_ids, engine.generate(prompt_ids, params))
        result["mismatch"] = {"fresh": fresh, "skipped_push": stale, "after_push": repushed,
                              "note": "mean |trainer logp - SGLang logp| per generated token, bf16 trainer copy"}
        log(f"logprob mismatch: fresh {fresh:.4f}, push skipped {stale:.4f}, pushed again {repushed:.4f}")
    finally:
        engine.close()
    Path(args.out).write_text(json.dumps(result, indent=1))
    log("wrote", args.out)


if __name__ == "__main__":
    sys.exit(main())
