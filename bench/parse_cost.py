"""CPU cost of our client's side of one large /generate reply (issue 6, 64x8x512 row).

Builds a synthetic SGLang reply of B completions x N tokens with per-token log-probs (the JSON shape
SGLang 0.5.17 returns), then times json.loads (which bare SGLang's path pays too) and our
parse_output over it. No GPU, no server.

    PYTHONPATH=src python bench/parse_cost.py [--completions 512] [--tokens 512]
2026-11-27, the 2-core CPU dev machine: 11.4 MB, json.loads 0.20 s, parse_output 0.02 s.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from gsm8k_grpo.rollout.client import parse_output


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=512)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    rnd = random.Random(0)
    outs = [{"output_ids": [rnd.randrange(150000) for _ in range(args.tokens)],
             "meta_info": {"output_token_logprobs": [[-5 * rnd.random(), rnd.randrange(150000), None]
                                                     for _ in range(args.tokens)],
                           "finish_reason": {"type": "length"}, "weight_version": "3"}}
            for _ in range(args.completions)]
    text = json.dumps(outs)
    t0 = time.perf_counter()
    parsed = json.loads(text)
    t1 = time.perf_counter()
    comps = [parse_output(o) for o in parsed]
    t2 = time.perf_counter()
    assert len(comps) == args.completions
    print(f"{len(text) / 1e6:.1f} MB: json.loads {t1 - t0:.2f} s, parse_output {t2 - t1:.2f} s")


if __name__ == "__main__":
    main()
