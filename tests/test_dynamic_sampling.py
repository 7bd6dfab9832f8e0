"""algorithm.oversample (DAPO dynamic sampling): one engine call generates the step's own prompts and
extra ones; the batch keeps the first trainer.batch_size groups with signal, the step's own first.

The real RolloutSource, GSM8K reward (lenient) and toy tokenizer, over a deterministic engine whose
answers depend only on the prompt: question q is answered all right (q % 4 == 0, no signal) or
half right / half wrong (signal), with q % 3 filler tokens, and a truncated wrong half when q % 5 == 0.
"""

from __future__ import annotations

import pickle
import time

import pytest
import torch
from conftest import grpo
from toy import make_tokenizer

from gsm8k_grpo import memory
from gsm8k_grpo.config import ConfigError, build_config, prompts_per_step, validate_config
from gsm8k_grpo.data import gsm8k
from gsm8k_grpo.rollout.base import Completion, Engine, SamplingParams
from gsm8k_grpo.trainer.batching import TrainSample
from gsm8k_grpo.trainer.loss import group_advantages, group_has_signal
from gsm8k_grpo.trainer.recipe import describe_update
from gsm8k_grpo.trainer.source import Batch, RolloutSource, extra_problems, gsm8k_scorer, step_seed

DIGIT0, SPACE, END = 5, 4, 2   # toy tokenizer ids: '0'..'9' are 5..14, ' ' 4, <|im_end|> 2


class AnswerByQuestion:
    """A deterministic Engine: the answers of a prompt depend only on its question number."""

    weight_version = 3

    def __init__(self):
        self.calls: list[list[int]] = []   # the question numbers of each generate() call

    @staticmethod
    def question(prompt: list[int]) -> int:
        return int("".join(str(t - DIGIT0) for t in prompt if DIGIT0 <= t <= DIGIT0 + 9))

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        qs = [self.question(p) for p in prompts]
        self.calls.append(qs)
        return [[self._one(q, k) for k in range(params.n)] for q in qs]

    @staticmethod
    def _one(q: int, k: int) -> Completion:
        right = q % 4 == 0 or k % 2 == 0
        ids = [SPACE] * (q % 3) + [DIGIT0 + (7 if right else 3)]
        if not right and q % 5 == 0:
            return Completion(ids, [-0.5] * len(ids), "length")
        ids.append(END)
        return Completion(ids, [-0.1 * (i + 1) for i in range(len(ids))], "stop")

    def load_weights_from_disk(self, path: str, version: int) -> None:
        self.weight_version = version

    def close(self) -> None:
        pass


def has_signal(q: int) -> bool:
    return q % 4 != 0


def config(batch_size: int = 4, **algorithm):
    return validate_config({
        "seed": 1, "data": {"instruction": "", "seed": 2},
        "rollout": {"engine": "hf", "n": 4},
        "algorithm": {"reward_mode": "lenient", **algorithm},
        "trainer": {"batch_size": batch_size, "device": "cpu"},
    })


POOL = [gsm8k.Problem(i, str(i), "#### 7", "7") for i in range(10, 50)]


def source(cfg, pool=POOL) -> tuple[RolloutSource, AnswerByQuestion]:
    engine = AnswerByQuestion()
    assert isinstance(engine, Engine)
    tok = make_tokenizer()
    return RolloutSource(cfg, engine, tok, pool, [END], gsm8k_scorer(cfg)), engine


def trained_questions(batch: Batch, n: int) -> list[int]:
    qs = [AnswerByQuestion.question(s.prompt_ids) for s in batch.samples]
    assert all(len(set(qs[i:i + n])) == 1 for i in range(0, len(qs), n))   # whole groups
    return qs[::n]


def test_oversample_keeps_batch_size_signal_groups_own_prompts_first():
    cfg = config(oversample=2.0)
    src, engine = source(cfg)
    filled = 0
    for step in range(1, 9):
        batch = src.generate(step)
        asked = engine.calls[-1]
        assert len(engine.calls) == step and len(asked) == 8      # one engine call per step, ceil(4 x 2) prompts
        own = [int(p.question) for p in gsm8k.batch_for_step(POOL, step - 1, 4, cfg.data.seed)]
        assert asked[:4] == own                                   # the data order is the one without oversampling
        assert not set(asked[4:]) & set(own)                      # extras: other problems of the pool
        want = [q for q in asked if has_signal(q)][:4]
        assert trained_questions(batch, 4) == want                # signal groups in prompt order, own first
        assert batch.metrics["groups_generated"] == 8 and batch.metrics["groups_trained"] == len(want) == 4
        filled += sum(not has_signal(q) for q in own) > 0
        # metrics: reward and lengths over the step's own prompts, the filter over every generated group
        rewards = [[1.0 if q % 4 == 0 or k % 2 == 0 else 0.0 for k in range(4)] for q in own]
        assert batch.metrics["reward_mean"] == pytest.approx(sum(map(sum, rewards)) / 16)
        assert batch.metrics["accuracy"] == batch.metrics["reward_mean"]
        lengths = [len(engine._one(q, k).token_ids) for q in own for k in range(4)]
        assert batch.metrics["response_len_mean"] == pytest.approx(sum(lengths) / 16)
        assert batch.metrics["response_len_max"] == max(lengths)
        truncated = sum(engine._one(q, k).finish_reason == "length" for q in own for k in range(4))
        assert batch.metrics["truncated_frac"] == truncated / 16
        assert batch.metrics["filtered_group_frac"] == pytest.approx(sum(not has_signal(q) for q in asked) / 8)
        # advantages are each group's own: half right, half wrong -> +1 / -1 (std-normalised)
        assert [round(s.advantage, 4) for s in batch.samples[:4]] == [1.0, -1.0, 1.0, -1.0]
        assert batch.version == 3
    assert filled >= 2   # steps whose own prompts had groups without signal, filled from the extras


def test_extra_prompts_are_deterministic_and_differ_by_step():
    cfg = config(oversample=2.0)
    (a, ea), (b, eb) = source(cfg), source(cfg)
    for step in (1, 2, 7):
        ba, bb = a.generate(step), b.generate(step)
        assert pickle.dumps(ba.samples) == pickle.dumps(bb.samples)
    assert ea.calls == eb.calls
    assert len({tuple(c[4:]) for c in ea.calls}) == 3             # other extras on other steps
    own = gsm8k.batch_for_step(POOL, 0, 4, 2)
    assert extra_problems(POOL, 1, own, 4, 2) == extra_problems(POOL, 1, own, 4, 2)
    assert extra_problems(POOL, 1, own, 4, 2) != extra_problems(POOL, 1, own, 4, 3)   # data.seed matters
    assert extra_problems(POOL, 1, own, 0, 2) == []


def test_a_tiny_pool_repeats_problems_rather_than_fail():
    pool = POOL[:3]
    cfg = config(oversample=4.0)
    src, engine = source(cfg, pool)
    batch = src.generate(1)
    assert len(engine.calls[0]) == 16 and set(engine.calls[0]) <= {10, 11, 12}
    assert batch.metrics["groups_generated"] == 16 and batch.metrics["groups_trained"] == 4
    only_own = gsm8k.batch_for_step(pool, 0, 3, 0)
    assert len(extra_problems(pool, 1, only_own, 5, 0)) == 5      # every pool problem is the step's own


def reference_generate(self: RolloutSource, step: int) -> Batch:
    """RolloutSource.generate as it was before algorithm.oversample existed, verbatim."""
    cfg, algo = self.cfg, self.cfg.algorithm
    problems = gsm8k.batch_for_step(self.pool, step - 1, cfg.trainer.batch_size, cfg.data.seed)
    prompt_ids = [self._prompt(p) for p in problems]
    params = SamplingParams(cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p, cfg.rollout.max_new_tokens,
                            tuple(self.stop_ids), step_seed(cfg.seed, step))
    version = self.engine.weight_version
    t0 = time.time()
    groups = self.engine.generate(prompt_ids, params)
    t1 = time.time()
    scores = [[self.scorer(self.tokenizer.decode(c.token_ids, skip_special_tokens=True), c.token_ids, p.gold)
               for c in group] for p, group in zip(problems, groups)]
    rewards = torch.tensor([[s.reward for s in g] for g in scores], dtype=torch.float32)   # [B, G]
    advantages = group_advantages(rewards, algo.adv_norm)                                    # [B, G]
    keep = group_has_signal(rewards) if algo.filter_groups else torch.ones(len(groups), dtype=torch.bool)
    samples = [TrainSample(prompt_ids[b], c.token_ids, float(advantages[b, k]), c.logprobs)
               for b, group in enumerate(groups) if keep[b] for k, c in enumerate(group)]
    completions = [c for g in groups for c in g]
    lengths = [len(c.token_ids) for c in completions]
    flat = [s for g in scores for s in g]
    metrics = {
        "reward_mean": float(rewards.mean()), "accuracy": sum(s.correct for s in flat) / len(flat),
        "format_rate": sum(s.has_format for s in flat) / len(flat),
        "response_len_mean": sum(lengths) / len(lengths), "response_len_max": max(lengths),
        "truncated_frac": sum(c.finish_reason == "length" for c in completions) / len(completions),
        "filtered_group_frac": 1.0 - float(keep.float().mean()),
        "time_generate": t1 - t0, "time_reward": time.time() - t1,
        "gen_tokens_per_s": sum(lengths) / max(t1 - t0, 1e-9),
    }
    return Batch(samples, metrics, version)


TIMES = {"time_generate", "time_reward", "gen_tokens_per_s"}


@pytest.mark.parametrize("filter_groups", [True, False])
def test_oversample_1_is_the_batch_of_before(filter_groups):
    cfg = config(filter_groups=filter_groups)
    assert cfg.algorithm.oversample == 1.0 and cfg.prompts_per_step == 4
    (new, en), (old, eo) = source(cfg), source(cfg)
    for step in range(1, 6):
        got, want = new.generate(step), reference_generate(old, step)
        assert pickle.dumps(got.samples) == pickle.dumps(want.samples) and got.version == want.version
        assert {k: v for k, v in got.metrics.items() if k not in TIMES} == {
            **{k: v for k, v in want.metrics.items() if k not in TIMES},
            "groups_generated": 4, "groups_trained": len(got.samples) // 4}
        assert set(got.metrics) == set(want.metrics) | {"groups_generated", "groups_trained"}
    assert en.calls == eo.calls


def test_oversample_needs_filter_groups_one_line_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="oversample > 1 needs algorithm.filter_groups=true"):
        build_config("fast", None, ["algorithm.filter_groups=false", "algorithm.oversample=2"])
    for bad in ("0.5", "5"):
        with pytest.raises(ConfigError, match="algorithm.oversample"):
            build_config("fast", None, [f"algorithm.oversample={bad}"])
    assert build_config("fast", None, ["algorithm.oversample=1.5"]).prompts_per_step == 12
    assert build_config("fast", None, ["algorithm.filter_groups=false"]).algorithm.oversample == 1.0
    res = grpo("train", "--preset", "smoke", "--set", "algorithm.oversample=2", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "needs algorithm.filter_groups=true" in lines[0], res.stderr


def test_prompts_per_step_rounds_up_without_float_noise():
    assert prompts_per_step(10, 1.1) == 11        # 10 x 1.1 = 11.000000000000002 in floats
    assert prompts_per_step(8, 1.01) == 9 and prompts_per_step(8, 1.0) == 8 and prompts_per_step(64, 1.5) == 96


def test_describe_update_and_memory_plan_count_the_extra_prompts():
    plain, over = config(), config(oversample=1.5)
    assert "dynamic sampling" not in describe_update(plain)
    assert describe_update(over).endswith(
        "; dynamic sampling: 6 prompts generated, the first 4 groups with signal trained")
    qwen = {"hidden_size": 896, "num_hidden_layers": 24, "intermediate_size": 4864, "vocab_size": 151936,
            "num_attention_heads": 14, "num_key_value_heads": 2, "tie_word_embeddings": True}
    card = 24 * memory.GIB
    base = memory.rollout_fraction(qwen, config(64), card)
    more = memory.rollout_fraction(qwen, config(64, oversample=1.5), card)   # 96 prompts of 4 samples, not 64
    kv = memory.kv_bytes_per_token(qwen) * 64 * 4 * (memory.PROMPT_TOKENS + 512)
    assert more > base and more == pytest.approx(base + 0.5 * 1.5 * kv / card, abs=0.011)


def test_skip_no_signal_swaps_questions_whose_last_group_had_none():
    """algorithm.skip_no_signal: in the second epoch, the questions that had no signal in the first
    (here q % 4 == 0: all right) are swapped for others, so every group of those steps has signal; the
    draw depends only on (pool, step, own, record, seed), so a source given a checkpoint's record draws
    the same as the unbroken one. Without the setting the second epoch asks them again."""
    steps = gsm8k.steps_per_epoch(len(POOL), 4)
    cfg, plain_cfg = config(skip_no_signal=True), config()
    src, engine = source(cfg)
    plain, plain_engine = source(plain_cfg)
    records = {}
    for step in range(1, 2 * steps + 1):
        records[step] = set(src.no_signal)   # what a checkpoint after step - 1 would hold
        batch, ref = src.generate(step), plain.generate(step)
        own = [int(p.question) for p in gsm8k.batch_for_step(POOL, step - 1, 4, cfg.data.seed)]
        assert plain_engine.calls[-1] == own
        if step <= steps:   # first epoch: nothing known yet, the data order is untouched
            assert engine.calls[-1] == own and batch.metrics["questions_swapped"] == 0
        else:
            asked = engine.calls[-1]
            assert all(has_signal(q) for q in asked) and batch.metrics["groups_trained"] == 4
            assert batch.metrics["questions_swapped"] == sum(not has_signal(q) for q in own)
            assert [a for a, o in zip(asked, own) if has_signal(o)] == [o for o in own if has_signal(o)]
            assert len(set(asked)) == 4
        assert "questions_swapped" not in ref.metrics
    assert src.no_signal == {p.idx for p in POOL if not has_signal(int(p.question))}
    assert any(not has_signal(q) for c in plain_engine.calls[steps:] for q in c)   # the old way asks them
    # a resumed source (its record from the checkpoint) draws exactly as the unbroken one did
    again, again_engine = source(cfg)
    again.no_signal = set(records[steps + 3])
    assert pickle.dumps(again.generate(steps + 3).samples) != b""
    assert again_engine.calls[-1] == engine.calls[steps + 2]


def test_skip_no_signal_needs_the_filter_and_says_so_in_the_update_line():
    with pytest.raises(ConfigError, match="skip_no_signal needs algorithm.filter_groups"):
        config(skip_no_signal=True, filter_groups=False)
    assert "last group had no signal" in describe_update(config(skip_no_signal=True))
    assert "last group had no signal" not in describe_update(config())


def test_skip_no_signal_with_oversample_draws_no_recorded_extras():
    """With both settings, a question recorded without signal is neither asked as the step's own (swapped)
    nor drawn as an extra, while other questions are left; no question appears twice in a call."""
    cfg = config(oversample=2.0, skip_no_signal=True)
    src, engine = source(cfg)
    for step in range(1, 2 * gsm8k.steps_per_epoch(len(POOL), 4) + 1):
        known = set(src.no_signal)
        src.generate(step)
        asked = engine.calls[-1]
        assert len(set(asked)) == len(asked) == 8
        assert not {q for q in asked} & {p.idx for p in POOL if p.idx in known and not has_signal(int(p.question))}
    assert src.no_signal   # the record filled, from own and extra questions alike
    own = gsm8k.batch_for_step(POOL, 0, 4, 2)
    everything = {p.idx for p in POOL}
    assert len(extra_problems(POOL, 1, own, 4, 2, exclude=everything)) == 4   # nothing left: the old draw
