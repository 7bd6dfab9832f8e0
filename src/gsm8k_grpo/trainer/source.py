"""Training batches from the rollout engine: generate, score, group advantages, drop groups without signal.

Rank 0 only (the engine lives there; the recipe broadcasts each batch). ``take(step)`` returns the
batch of a step: generated then and there (on-policy), or the one generated ahead. With
rollout.overlap, ``prefetch(step)`` starts generating that batch in a thread on the engine's
current weights, which are one update behind by the time it is trained on; ``wait()`` joins the
thread before the recipe's next push, so every batch comes from one weight version. A checkpoint
keeps a batch generated ahead (``state``), so a resumed run trains on the same samples.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from gsm8k_grpo import reward
from gsm8k_grpo.config import RunConfig
from gsm8k_grpo.data import gsm8k, prompts
from gsm8k_grpo.rollout.base import Engine, SamplingParams
from gsm8k_grpo.trainer.batching import TrainSample
from gsm8k_grpo.trainer.loss import group_advantages, group_has_signal

# (completion text, completion token ids, gold answer) -> reward; the bench's synthetic reward replaces it
Scorer = Callable[[str, list[int], str], reward.RewardResult]


@dataclass
class Batch:
    samples: list[TrainSample]   # the groups with signal, whole
    metrics: dict                # what the rollout measured (reward, lengths, times)
    version: int                 # the policy version (updates applied) of the weights that generated it


def gsm8k_scorer(cfg: RunConfig) -> Scorer:
    mode, bonus = cfg.algorithm.reward_mode, cfg.algorithm.format_bonus
    return lambda text, token_ids, gold: reward.score(text, gold, mode, bonus)


def step_seed(seed: int, step: int) -> int:
    return (seed * 100_003 + step) % (2**31 - 1)


class RolloutSource:
    def __init__(self, cfg: RunConfig, engine: Engine, tokenizer, pool: list[gsm8k.Problem], stop_ids: list[int],
                 scorer: Scorer):
        self.cfg, self.engine, self.tokenizer, self.pool = cfg, engine, tokenizer, pool
        self.stop_ids, self.scorer = stop_ids, scorer
        self._prompt_ids: dict[int, list[int]] = {}
        self._thread: ThreadPoolExecutor | None = None
        self._ahead: Future | None = None    # the batch being generated ahead
        self._pending: Batch | None = None   # the batch generated ahead, not yet taken
        # algorithm.skip_no_signal: Problem.idx of the questions whose last group had no signal (checkpointed)
        self.no_signal: set[int] = set()

    def take(self, step: int) -> Batch:
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        return self.generate(step)

    def prefetch(self, step: int) -> None:
        """rollout.overlap: start generating `step`'s batch now, on the engine's current weights."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")
        self._ahead = self._thread.submit(self.generate, step)

    def wait(self) -> None:
        """Join the prefetch; its error, if any, is raised here."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self._pending = ahead.result()

    def state(self) -> dict | None:
        """The batch generated ahead, for a checkpoint."""
        if self._pending is None:
            return None
        b = self._pending
        return {"samples": [dataclasses.asdict(s) for s in b.samples], "metrics": b.metrics, "version": b.version}

    def load_state(self, state: dict | None) -> None:
        if state:
            self._pending = Batch([TrainSample(**s) for s in state["samples"]], state["metrics"], state["version"])

    def close(self) -> None:
        if self._thread is not None:  # a rollout still in flight (after an error) ends with the engine
            self._thread.shutdown(wait=False, cancel_futures=True)

    def _prompt(self, problem: gsm8k.Problem) -> list[int]:
        if problem.idx not in self._prompt_ids:
            d = self.cfg.data
            self._prompt_ids[problem.idx] = prompts.encode(self.tokenizer, problem.question, d.instruction,
                                                           d.system_prompt)
        return self._prompt_ids[problem.idx]

    def generate(self, step: int) -> Batch:
        """Generate, score, compute advantages and filter the groups of `step`'s prompts.

        With algorithm.oversample > 1 the same engine call also generates extra prompts
        (extra_problems); the batch keeps the first trainer.batch_size groups with signal, the
        step's own first. reward, accuracy, format and length metrics cover the step's own
        prompts only, so they compare with runs without oversampling. With
        algorithm.skip_no_signal the step's own prompts are chosen (swap_no_signal), so those
        metrics are biased towards questions with signal: compare such runs by eval accuracy."""
        cfg, algo = self.cfg, self.cfg.algorithm
        own = cfg.trainer.batch_size
        mine = gsm8k.batch_for_step(self.pool, step - 1, own, cfg.data.seed)
        swapped = 0
        if algo.skip_no_signal:
            mine, swapped = swap_no_signal(self.pool, step, mine, self.no_signal, cfg.data.seed)
        problems = mine + extra_problems(self.pool, step, mine, cfg.prompts_per_step - own, cfg.data.seed,
                                         self.no_signal if algo.skip_no_signal else frozenset())
        prompt_ids = [self._prompt(p) for p in problems]
        params = SamplingParams(cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens,
                                tuple(self.stop_ids), step_seed(cfg.seed, step))
        version = self.engine.weight_version
        t0 = time.time()
        groups = self.engine.generate(prompt_ids, params)
        t1 = time.time()
        scores = [[self.scorer(self.tokenizer.decode(c.token_ids, skip_special_tokens=True), c.token_ids, p.gold)
                   for c in group] for p, group in zip(problems, groups)]
        rewards = torch.tensor([[s.reward for s in g] for g in scores], dtype=torch.float32)   # [N, G]
        advantages = group_advantages(rewards, algo.adv_norm)                                    # [N, G]
        signal = group_has_signal(rewards) if algo.filter_groups else torch.ones(len(groups), dtype=torch.bool)
        keep = [b for b in range(len(groups)) if signal[b]][:own]   # in prompt order, the step's own first
        if algo.skip_no_signal:  # each question's latest record: the next swap_no_signal() reads it
            for p, has in zip(problems, signal.tolist()):
                (self.no_signal.discard if has else self.no_signal.add)(p.idx)
        samples = [TrainSample(prompt_ids[b], c.token_ids, float(advantages[b, k]), c.logprobs)
                   for b in keep for k, c in enumerate(groups[b])]
        everything = [c for g in groups for c in g]
        completions = [c for g in groups[:own] for c in g]
        lengths = [len(c.token_ids) for c in completions]
        flat = [s for g in scores[:own] for s in g]
        metrics = {
            "reward_mean": float(rewards[:own].mean()), "accuracy": sum(s.correct for s in flat) / len(flat),
            "format_rate": sum(s.has_format for s in flat) / len(flat),
            "response_len_mean": sum(lengths) / len(lengths), "response_len_max": max(lengths),
            "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
            "filtered_group_frac": 1.0 - float(signal.float().mean()),
            "groups_generated": len(groups), "groups_trained": len(keep),
            **({"questions_swapped": swapped} if algo.skip_no_signal else {}),
            "time_generate": t1 - t0, "time_reward": time.time() - t1,
            "gen_tokens_per_s": sum(len(c.token_ids) for c in everything) / max(t1 - t0, 1e-9),
        }
        return Batch(samples, metrics, version)


def extra_problems(pool: list[gsm8k.Problem], step: int, own: list[gsm8k.Problem], count: int,
                   seed: int, exclude: set[int] | frozenset = frozenset()) -> list[gsm8k.Problem]:
    """algorithm.oversample: `count` more problems for `step`, a pure function of its arguments.

    A seeded sample of the pool without the step's own problems (and without `exclude`:
    algorithm.skip_no_signal's record, while other problems are left), so the data order and its
    epochs stay as without oversampling; a pool too small for that repeats problems (as
    batch_for_step does)."""
    if count <= 0:
        return []
    taken = {p.idx for p in own}
    candidates = ([i for i, p in enumerate(pool) if p.idx not in taken and p.idx not in exclude]
                  or [i for i, p in enumerate(pool) if p.idx not in taken] or list(range(len(pool))))
    rng = random.Random(f"oversample {seed} {step}")
    idx: list[int] = []
    while len(idx) < count:
        idx += rng.sample(candidates, min(len(candidates), count - len(idx)))
    return [pool[i] for i in idx]


def swap_no_signal(pool: list[gsm8k.Problem], step: int, own: list[gsm8k.Problem], no_signal: set[int],
                   seed: int) -> tuple[list[gsm8k.Problem], int]:
    """algorithm.skip_no_signal: the step's problems with each one whose last group had no signal
    replaced by a seeded draw (without replacement) from the pool's problems without that record and
    not already in the step; -> (problems, how many were swapped). A pure function of its arguments,
    so a resumed run (no_signal is checkpointed) draws the same; kept when no candidate is left."""
    if not no_signal or not any(p.idx in no_signal for p in own):
        return own, 0
    taken = {p.idx for p in own}
    candidates = [p for p in pool if p.idx not in no_signal and p.idx not in taken]
    rng = random.Random(f"skip {seed} {step}")
    out, swapped = [], 0
    for p in own:
        if p.idx in no_signal and candidates:
            out.append(candidates.pop(rng.randrange(len(candidates))))
            swapped += 1
        else:
            out.append(p)
    return out, swapped
