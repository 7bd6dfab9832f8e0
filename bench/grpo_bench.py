"""`grpo` with the benchmarks' synthetic reward: `python bench/grpo_bench.py train --config ...`.

Random weights earn GSM8K reward 0, so no group would carry signal and no step would train. Here
the reward is a fixed pseudo-random 0/1 per completion (crc32 of its token ids), so every step
trains on a varied batch, as a real run's would. Everything else is `grpo` itself: the same CLI,
with this scorer passed to trainer.recipe.run (its seam for a reward). Runs under torchrun too.
"""

from __future__ import annotations

import zlib

from gsm8k_grpo import cli, reward
from gsm8k_grpo.trainer import recipe


def synthetic_reward(text: str, token_ids: list[int], gold: str) -> reward.RewardResult:
    r = zlib.crc32(str(token_ids).encode()) & 1
    return reward.RewardResult(float(r), bool(r), reward.has_boxed(text), None)


def main() -> None:
    run = recipe.run
    recipe.run = lambda cfg, **kw: run(cfg, scorer=synthetic_reward, **kw)  # cli imports it at call time
    cli.main()


if __name__ == "__main__":
    main()
