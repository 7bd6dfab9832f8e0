"""Rollout ceiling: bare SGLang vs our engine path vs our HF engine, on the same requests.

For each shape (prompts x samples x new tokens) the same GSM8K prompts and sampling (T=1, top_p=1,
return_logprob) go to
  bare   one raw POST /generate to the SGLang server (requests.post, JSON parsed, nothing else),
  ours   SGLangEngine.generate (our client: split requests, parse, regroup, version check),
  hf     our in-process HF engine (bf16 on the same GPU; after the server is stopped),
and the median of --repeats timed runs after --warmup runs is reported (tokens/s and seconds).
bare and ours alternate run by run (bare, ours, bare, ours, ...), so a drift of the card over the
minutes a large shape takes (clocks, heat) hits both alike; on 2026-11-27 all bare runs came first.

    PYTHONPATH=src python bench/generate_bench.py --out $OUT/generate.json [--shapes 8x2x256,8x8x512,64x8x512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import requests
import torch

from common import setup
from gsm8k_grpo.data import gsm8k, prompts
from gsm8k_grpo.rollout.base import SamplingParams


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def timed(fns: dict, warmup: int, repeats: int) -> dict:
    """name -> zero-arg call returning tokens; the calls alternate run by run. -> name -> stats."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    secs: dict = {k: [] for k in fns}
    toks: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            n = fn()
            secs[k].append(time.perf_counter() - t)
            toks[k].append(n)
    out = {}
    for k in fns:
        med = statistics.median(secs[k])
        out[k] = {"median_s": med, "min_s": min(secs[k]), "max_s": max(secs[k]),
                  "tokens": statistics.median(toks[k]), "tok_per_s": statistics.median(toks[k]) / med}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/configs/random-0.5b.yaml")
    ap.add_argument("--shapes", default="8x2x256,8x8x512,64x8x512")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--hf-shapes", default="8x2x256,8x8x512", help="the HF engine is slow: fewer shapes")
    ap.add_argument("--workdir", default="/tmp/bench-generate")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    cfg, work, model_dir, tok, stop = setup(args.config, args.workdir)
    pool = gsm8k.load_split("train", cfg.data.path)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    result: dict = {"gpu": torch.cuda.get_device_name(0), "model": "Qwen2.5-0.5B architecture, random bf16",
                    "repeats": args.repeats, "warmup": args.warmup, "shapes": {}}

    from gsm8k_grpo.rollout.sglang_engine import SGLangEngine

    engine = SGLangEngine(model_dir, cfg.rollout, work)
    try:
        for b, g, m in shapes:
            ids = [prompts.encode(tok, p.question, cfg.data.instruction) for p in pool[:b]]
            params = SamplingParams(n=g, temperature=1.0, top_p=1.0, max_new_tokens=m, stop_token_ids=stop)
            body = {"input_ids": ids, "return_logprob": True,
                    "sampling_params": {"n": g, "temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_new_tokens": m,
                                        "stop_token_ids": list(stop)}}

            def bare() -> int:
                r = requests.post(engine.server.base_url + "/generate", json=body, timeout=600)
                r.raise_for_status()
                return sum(len(o["output_ids"]) for o in r.json())

            def ours() -> int:
                return sum(len(c.token_ids) for grp in engine.generate(ids, params) for c in grp)

            name = f"{b}x{g}x{m}"
            row = timed({"bare": bare, "ours": ours}, args.warmup, args.repeats)
            row["ours_over_bare_throughput"] = row["ours"]["tok_per_s"] / row["bare"]["tok_per_s"]
            result["shapes"][name] = row
            Path(args.out).write_text(json.dumps(result, indent=1))  # each row as it comes: a timeout keeps it
            log(f"{name}: bare {row['bare']['median_s']:.2f}s {row['bare']['tok_per_s']:.0f} tok/s | ours "
                f"{row['ours']['median_s']:.2f}s {row['ours']['tok_per_s']:.0f} tok/s | "
                f"ratio {row['ours_over_bare_throughput']:.3f}")
    finally:
        engine.close()

    from gsm8k_grpo.rollout.hf import HFEngine

    hf = HFEngine(model_dir, device="cuda", dtype=torch.bfloat16, batch_size=64, pad_token_id=tok.pad_token_id)
    for spec in [s for s in args.hf_shapes.split(",") if s]:
        b, g, m = (int(x) for x in spec.split("x"))
        ids = [prompts.encode(tok, p.question, cfg.data.instruction) for p in pool[:b]]
        params = SamplingParams(n=g, temperature=1.0, top_p=1.0, max_new_tokens=m, stop_token_ids=stop)
        row = timed({"hf": lambda: sum(len(c.token_ids) for grp in hf.generate(ids, params) for c in grp)},
                    1, 3)["hf"]
        result["shapes"].setdefault(spec, {})["hf"] = row
        Path(args.out).write_text(json.dumps(result, indent=1))
        log(f"{spec}: hf engine {row['median_s']:.2f}s {row['tok_per_s']:.0f} tok/s")
    log("wrote", args.out)


if __name__ == "__main__":
    main()
