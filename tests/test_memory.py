"""The memory plan (memory.py): estimates calibrated on the H100, and fit() for smaller cards.

No GPU here: card sizes are given as numbers, which is all fit() reads. The recipe applies the same
function with torch.cuda's card size (only on a GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsm8k_grpo import assets, memory
from gsm8k_grpo.config import build_config

GIB = memory.GIB
H100 = 81559 * 2**20          # torch's total_memory of the H100 80GB HBM3 on the device
H200 = int(139.8 * GIB)       # the H200's, 2026-12-03
CARD24 = 24 * GIB


@pytest.fixture(scope="module")
def qwen() -> dict:
    return json.loads((Path(assets.resolve("builtin:qwen2.5-0.5b-instruct")) / "config.json").read_text())


def cfg_of(*sets: str, preset: str = "1hour"):
    return build_config(preset=preset, overrides=list(sets))


def test_estimate_matches_the_h100_measurement(qwen):
    # bench/results/2026-11-27-h100.md: 1hour shapes, random 0.5B, peak trainer memory 32.5 GiB
    est = memory.estimate(qwen, cfg_of(), H100, shared=True)
    assert abs(est.allocated / GIB - 32.5) / 32.5 < 0.05
    assert est.trainer == pytest.approx(est.allocated * (1 + memory.FRAGMENTATION) + memory.CONTEXT)
    # SGLang at mem_fraction 0.4 left 45.5 of the card's 79.6 GiB after a short run: it took about 33.7 GiB;
    # over whole runs its memory beyond the pool grows by 1-1.5 GiB more (the H200 test below)
    assert 33.7 <= est.server / GIB <= 33.7 + 2.0


def test_the_server_estimate_covers_whole_runs_on_the_h200(qwen):
    """SGLang's processes by NVML over whole 1hour runs under trainer.gpu_memory_limit (Qwen2.5-Coder-0.5B):
    session 10 (bench/results/2026-12-03-h200-session10.md) 5.20-5.23 GiB with a pool of 86,177 tokens (four
    full fine-tuning runs at 24 GiB) and 5.65 GiB with 75,691 tokens (LoRA at 12 GiB); session 11 (…-session11.md)
    5.23-5.48 GiB with 149,091 tokens (four full runs at 24 GiB) and 5.75 GiB with 75,691 (LoRA at 12 GiB, whose
    total passed its limit by 0.2 GiB under the estimate of before, without the LoRA term). The estimate must
    cover each (the trainer is capped at the rest of the limit) without wasting much of a small card."""
    coder = dict(qwen, tie_word_embeddings=False)
    for tokens, lora, measured in ((86177, False, 5.23), (75691, True, 5.65), (149091, False, 5.48),
                                   (75691, True, 5.75)):
        sets = [f"rollout.server_args=[--max-total-tokens, {tokens}]"] + (["lora.rank=16"] if lora else [])
        est = memory.estimate(coder, cfg_of(*sets), H200, shared=True)
        assert measured <= est.server / GIB <= measured + 1.0, (tokens, lora, est.server / GIB)


def test_estimate_matches_the_h200_measurements(qwen):
    """bench/results/2026-12-03-h200-session9.md: Qwen2.5-Coder-0.5B (its own lm_head, 630M parameters), 1hour
    shapes: torch's peak allocation 17.0 GiB at micro-batches of 4,096 tokens, 14.4 at 2,048, 9.75 with
    LoRA rank 16 at 4,096; the trainer process took 20.7 GiB by NVML at 17.0 allocated."""
    coder = dict(qwen, tie_word_embeddings=False)
    assert memory.estimate_params(coder) == pytest.approx(630.2e6, rel=1e-3)
    for sets, measured in ((["trainer.micro_batch_tokens=4096"], 17.0), (["trainer.micro_batch_tokens=2048"], 14.36),
                           (["trainer.micro_batch_tokens=4096", "lora.rank=16"], 9.75)):
        est = memory.estimate(coder, cfg_of(*sets), H100, shared=True)
        assert abs(est.allocated / GIB - measured) / measured < 0.05, (sets, est.allocated / GIB)
    est = memory.estimate(coder, cfg_of("trainer.micro_batch_tokens=4096"), H100, shared=True)
    assert abs(est.trainer / GIB - 20.7) < 0.5


def test_the_optimizer_step_is_the_peak_with_small_micro_batches(qwen):
    """With gradient checkpointing the activations are small, and AdamW's full-size temporary (4 bytes a
    trained parameter) sets the peak: the 16 GiB plan that left it out ran out of memory on the H200."""
    est = memory.estimate(qwen, cfg_of("trainer.micro_batch_tokens=2048", "trainer.grad_checkpointing=true",
                                       "trainer.logprob_chunk=256"), H100, shared=True)
    assert est.activations < 4 * est.params
    assert est.allocated == pytest.approx(est.state + 4 * est.params)


def test_h100_needs_no_change(qwen):
    cfg = cfg_of()
    fitted, changes, est = memory.fit(qwen, cfg, H100, shared=True)
    assert changes == [] and fitted is cfg and est.total < memory.FIT_SHARE * H100


def test_24gb_card_shared_fits_by_lowering_the_server_pool_then_micro_batches(qwen):
    fitted, changes, est = memory.fit(qwen, cfg_of(), CARD24, shared=True)
    assert est.total <= memory.FIT_SHARE * CARD24
    assert changes[0].startswith("rollout.mem_fraction 0.4 -> ")
    assert any(c.startswith("trainer.micro_batch_tokens") for c in changes)
    assert fitted.rollout.mem_fraction == memory.rollout_fraction(qwen, cfg_of(), CARD24) < 0.2
    assert fitted.trainer.micro_batch_tokens < 16384
    assert fitted.trainer.logprob_chunk <= fitted.trainer.micro_batch_tokens
    # the server pool still holds the weights and one step's KV cache (8 x 8 x (256 + 512) tokens)
    pool = fitted.rollout.mem_fraction * CARD24
    assert pool >= 2 * est.params + memory.kv_bytes_per_token(qwen) * 64 * 768


def test_pinned_settings_are_left_alone(qwen):
    cfg = cfg_of("rollout.mem_fraction=0.3", "trainer.micro_batch_tokens=8192")
    fitted, changes, _ = memory.fit(qwen, cfg, CARD24, shared=True)
    assert fitted.rollout.mem_fraction == 0.3 and fitted.trainer.micro_batch_tokens == 8192
    assert changes == ["trainer.grad_checkpointing false -> true", "trainer.logprob_chunk 1024 -> 512"]


def test_separate_gpus_leave_the_server_alone(qwen):
    fitted, changes, est = memory.fit(qwen, cfg_of(), CARD24, shared=False)
    assert est.server == 0 and fitted.rollout.mem_fraction == 0.4
    assert changes and all(c.startswith("trainer.") for c in changes)


def test_too_small_a_card_returns_the_best_plan_and_says_it_does_not_fit(qwen):
    fitted, _changes, est = memory.fit(qwen, cfg_of(), 8 * GIB, shared=True)
    assert fitted.trainer.grad_checkpointing and fitted.trainer.micro_batch_tokens == memory.MIN_MICRO_TOKENS
    assert memory.verdict(est, 8 * GIB) == "no"   # grpo train refuses it, with what to change
    assert "of 8.0 GiB" in memory.describe(est, 8 * GIB)


def test_fsdp_shards_the_state_over_trainer_gpus(qwen):
    one = memory.estimate(qwen, cfg_of(), H100, shared=False, trainer_gpus=1)
    four = memory.estimate(qwen, cfg_of(), H100, shared=False, trainer_gpus=4)
    assert four.state == pytest.approx(one.state / 4) and four.activations == one.activations


def test_the_plan_survives_the_resume_round_trip(qwen):
    """`grpo resume` rebuilds the config from RUN_DIR/config.yaml, where every key is written out:
    the plan must come out the same as for the fresh run (found in review: it used to be empty)."""
    import yaml

    from gsm8k_grpo.config import to_yaml, validate_config

    fresh = cfg_of()
    resumed = validate_config(yaml.safe_load(to_yaml(fresh)))
    assert memory.fit(qwen, resumed, CARD24, shared=True)[1] == memory.fit(qwen, fresh, CARD24, shared=True)[1] != []


@pytest.mark.parametrize("text,expect", [("12GiB", 12 * GIB), ("12 gib", 12 * GIB), ("16GB", 16 * 10**9),
                                         ("24", 24 * GIB), ("24576MiB", 24 * GIB), ("7.5G", int(7.5 * GIB))])
def test_parse_size(text, expect):
    assert memory.parse_size(text) == expect


@pytest.mark.parametrize("text", ["", "12x", "-4GiB", "0", "GiB", "12 GiB extra"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError, match="is not a memory size"):
        memory.parse_size(text)


def test_card_plan_for_named_cards(qwen):
    """1hour on the 0.5B model: an H100 needs nothing changed; 24 GiB fits after fit()'s steps (each
    setting named once, from its value to where it stopped); 17.5 GiB is tight (within the card, above
    95 % of it: a warning); 16 GiB no longer fits since SGLang's overhead was measured over whole runs
    (3.5 GiB, session 10); 8 GiB does not fit at all."""
    cfg = cfg_of()
    fits, changes, _, _ = memory.card_plan(qwen, cfg, H100, "sglang")
    assert fits == "fits" and changes == []
    fits, changes, est, _ = memory.card_plan(qwen, cfg, 24 * GIB, "sglang")
    assert fits == "fits" and est.total <= memory.FIT_SHARE * 24 * GIB
    fits, changes, est, _ = memory.card_plan(qwen, cfg, 17.5 * GIB, "sglang")
    assert fits == "tight" and est.total <= 17.5 * GIB
    assert memory.card_plan(qwen, cfg, 16 * GIB, "sglang")[0] == "no"
    assert "trainer.micro_batch_tokens 16384 -> 2048" in changes
    assert len([c for c in changes if c.startswith("trainer.micro_batch_tokens")]) == 1
    fits, changes, est, _ = memory.card_plan(qwen, cfg, 8 * GIB, "sglang")
    assert fits == "no" and est.total > 8 * GIB
    # the HF engine keeps a second bf16 copy of the weights in the trainer's process, and no SGLang pool
    fits_hf, _, est_hf, _ = memory.card_plan(qwen, cfg, 24 * GIB, "hf")
    assert est_hf.server == 0 and fits_hf == "fits"


def test_gpu_memory_limit_caps_both_processes(qwen):
    """trainer.gpu_memory_limit=24GiB on an H100: planned for 24 GiB; SGLang gets an absolute KV pool
    (weights + pool = mem_fraction x 24 GiB), the trainer's allocator the rest, and both add up to the limit."""
    limit = 24 * GIB
    cfg = cfg_of("trainer.gpu_memory_limit=24GiB")
    fitted, changes, est = memory.fit(qwen, cfg, limit, shared=True)
    assert memory.verdict(est, limit) == "fits"
    capped, caps = memory.cap(qwen, fitted, H100, limit, est, shared=True)
    args = capped.rollout.server_args
    assert args[args.index("--max-total-tokens") + 1] == str(caps.kv_tokens)
    pool = 2 * est.params + caps.kv_tokens * memory.kv_bytes_per_token(qwen)
    assert abs(pool - fitted.rollout.mem_fraction * limit) < memory.kv_bytes_per_token(qwen)
    assert caps.kv_tokens >= 64 * (256 + 512)  # one 1hour step's sequences fit the pool
    assert capped.rollout.mem_fraction == memory.LIMITED_STATIC_FRACTION
    assert caps.trainer_bytes == pytest.approx(limit - est.server - memory.CONTEXT)
    assert caps.trainer_fraction == pytest.approx(caps.trainer_bytes / H100)
    assert caps.trainer_bytes >= est.trainer - memory.CONTEXT  # the trainer's planned peak is under its cap
    # the trainer alone (SGLang on another GPU): no server arguments, the whole limit but the context
    alone, caps1 = memory.cap(qwen, fitted, H100, limit, memory.fit(qwen, cfg, limit, shared=False)[2], shared=False)
    assert alone.rollout == fitted.rollout and caps1.trainer_bytes == pytest.approx(limit - memory.CONTEXT)


def test_small_cards_get_decode_graphs_and_a_request_bound_for_a_whole_step(qwen):
    # SGLang's default below 35 GiB is 8 or 24 graphs and 2,048 running requests; a 1hour step decodes
    # 8 x 8 sequences at once, so an in-run eval of more questions queues them
    step = ["--cuda-graph-max-bs", "64", "--max-running-requests", "64"]
    assert memory.graph_args(cfg_of(), 12 * GIB) == step
    assert memory.graph_args(cfg_of(), 24 * GIB) == step
    assert memory.graph_args(cfg_of("algorithm.oversample=2"), 24 * GIB) == [
        "--cuda-graph-max-bs", "128", "--max-running-requests", "128"]  # the extra prompts are generated too
    assert memory.graph_args(cfg_of(), H100) == []
    assert memory.graph_args(cfg_of("rollout.server_args=[--cuda-graph-max-bs, 16]"), 12 * GIB) == [
        "--max-running-requests", "64"]
    assert memory.graph_args(cfg_of("rollout.server_args=[--max-running-requests=32]"), 12 * GIB) == [
        "--cuda-graph-max-bs", "64"]


def test_a_run_that_cannot_fit_is_refused_with_what_to_change(qwen):
    """Full fine-tuning of the 0.5B model keeps 16 bytes a parameter (7.4 GiB): an 8 GiB card cannot hold it."""
    cfg = cfg_of()
    fitted, _, est = memory.fit(qwen, cfg, 8 * GIB, shared=True)
    assert memory.verdict(est, 8 * GIB) == "no"
    line = memory.refusal(est, 8 * GIB, fitted, "trainer.gpu_memory_limit=8GiB of this GPU")
    assert "\n" not in line and "does not fit trainer.gpu_memory_limit=8GiB" in line
    assert "trainer.grad_checkpointing=true" not in line  # fit() already turned it on
    assert fitted.trainer.grad_checkpointing
    # LoRA on 8 GiB: fit() already lowered the pool to what a step needs, so no lower mem_fraction is
    # offered (it was, in session 10's refusal); a pinned pool far above the need is named
    lora = cfg_of("lora.rank=16")
    fitted, _, est = memory.fit(qwen, lora, 8 * GIB, shared=True)
    assert memory.verdict(est, 8 * GIB) == "no" and est.server > 4 * GIB
    assert "rollout.mem_fraction" not in memory.refusal(est, 8 * GIB, fitted, mc=qwen)
    pinned = cfg_of("lora.rank=16", "rollout.mem_fraction=0.6")
    fitted, _, est = memory.fit(qwen, pinned, 8 * GIB, shared=True)
    assert "a lower rollout.mem_fraction (now 0.6" in memory.refusal(est, 8 * GIB, fitted, mc=qwen)
    tight = memory.Estimate(1, 0, 0, 0.97 * GIB, 0)
    assert memory.verdict(tight, GIB) == "tight" and memory.verdict(tight, 2 * GIB) == "fits"


@pytest.mark.parametrize("value, ok", [("12GiB", True), (12, True), ("16 GB", True), ("0.5GiB", False),
                                       ("twelve", False), ("-1GiB", False)])
def test_gpu_memory_limit_values(value, ok):
    from gsm8k_grpo.config import ConfigError, validate_config

    if ok:
        assert validate_config({"trainer": {"gpu_memory_limit": value}}).trainer.gpu_memory_limit == str(value)
    else:
        with pytest.raises(ConfigError, match="gpu_memory_limit"):
            validate_config({"trainer": {"gpu_memory_limit": value}})


def test_gpu_memory_limit_and_fraction_exclude_each_other():
    from gsm8k_grpo.config import ConfigError

    with pytest.raises(ConfigError, match="set one of trainer.gpu_memory_limit"):
        cfg_of("trainer.gpu_memory_limit=12GiB", "trainer.gpu_memory_fraction=0.5")


def test_an_absolute_server_pool_is_estimated_as_such(qwen):
    """rollout.server_args with --max-total-tokens N: SGLang holds weights + N tokens of KV whatever
    mem_fraction says (the by-hand caps of bench/device/cards.py's full12m)."""
    args = "[--max-total-tokens, 76000, --cuda-graph-max-bs, 64]"
    cfg = cfg_of(f"rollout.server_args={args}", "rollout.mem_fraction=0.9")
    est = memory.estimate(qwen, cfg, H100, shared=True)
    expect = 2 * est.params + 76000 * memory.kv_bytes_per_token(qwen) + memory.SERVER_OVERHEAD
    assert est.server == pytest.approx(expect) and est.server < 6 * GIB
    assert memory.max_total_tokens(["--max-total-tokens=5", "--x"]) == 5
    assert memory.max_total_tokens(["--max-total-tokens"]) is None


def test_the_recipe_applies_the_limit_and_refuses_before_loading(monkeypatch):
    """Recipe._fit_memory, the GPU-only step of setup, on this CPU host: the card size, its free memory
    and the allocator cap are the only GPU calls, and they are stood in for (an H200's 139.8 GiB)."""
    import types

    import torch

    from gsm8k_grpo.config import ConfigError
    from gsm8k_grpo.modeling import load_config
    from gsm8k_grpo.trainer.recipe import Recipe

    caps, free = [], [H200 - GIB // 2]  # mem_get_info's free at start: only this process's context is taken
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(total_memory=H200))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: caps.append(f))
    mc = load_config(assets.resolve("builtin:qwen2.5-0.5b-instruct"), {})

    def fit(*sets):
        me = types.SimpleNamespace(cfg=cfg_of(*sets), placement=types.SimpleNamespace(server_gpus=[0]),
                                   engine_kind="sglang", device=types.SimpleNamespace(index=0), world=1,
                                   free_at_start=free[0])
        return Recipe._fit_memory(me, mc)

    cfg = fit("trainer.gpu_memory_limit=12GiB", "lora.rank=16")
    args = cfg.rollout.server_args
    assert args[:4] == ["--cuda-graph-max-bs", "64", "--max-running-requests", "64"]
    assert args[4] == "--max-total-tokens"
    assert cfg.rollout.mem_fraction == memory.LIMITED_STATIC_FRACTION
    assert len(caps) == 1 and caps[0] * H200 < 12 * GIB
    with pytest.raises(ConfigError) as e:
        fit("trainer.gpu_memory_limit=12GiB")  # full fine-tuning: 16 bytes a parameter do not fit
    assert "does not fit trainer.gpu_memory_limit=12GiB of this GPU; set lora.rank=16" in str(e.value)
    assert "\n" not in str(e.value) and len(caps) == 1  # refused before any cap (or model) was set
    plain = fit()  # no limit, a big card: nothing changes, no cap
    assert plain == cfg_of() and len(caps) == 1
    free[0] = 12 * GIB  # other processes hold the rest of the card: the plan is for what they leave
    for sets in [(), ("trainer.gpu_memory_limit=24GiB",)]:  # a limit above what is left changes nothing
        with pytest.raises(ConfigError) as e:
            fit(*sets)
        msg = str(e.value)
        assert "does not fit this 140 GiB GPU (127.3 GiB of it held by other processes); set lora.rank=16" in msg
        assert msg.endswith("; or free what other processes hold on the GPU") and len(caps) == 1


def test_the_users_own_server_pool_and_flags_are_kept_under_a_limit(qwen):
    """A --max-total-tokens or --mem-fraction-static of the user's is what estimate() planned with, so
    cap() keeps it; --cuda-graph-max-bs=N (the = form) counts as given."""
    cfg = cfg_of("rollout.server_args=[--max-total-tokens, 50000, --mem-fraction-static=0.5]",
                 "trainer.gpu_memory_limit=24GiB")
    fitted, _, est = memory.fit(qwen, cfg, 24 * GIB, shared=True)
    capped, caps = memory.cap(qwen, fitted, H100, 24 * GIB, est, shared=True)
    assert capped.rollout.server_args == fitted.rollout.server_args and caps.kv_tokens == 50000
    assert capped.rollout.mem_fraction == fitted.rollout.mem_fraction
    assert memory.graph_args(cfg_of("rollout.server_args=[--cuda-graph-max-bs=16]"), 12 * GIB) == [
        "--max-running-requests", "64"]


def test_the_memory_saver_counts_the_larger_phase_not_the_sum(qwen):
    """rollout.enable_memory_saver: SGLang's memory is released during the update, the trainer's peak."""
    plain = memory.estimate(qwen, cfg_of(), 24 * GIB, shared=True)
    saver = memory.estimate(qwen, cfg_of("rollout.enable_memory_saver=true"), 24 * GIB, shared=True)
    assert plain.total == pytest.approx(plain.trainer + plain.server)
    resting = saver.state * (1 + memory.FRAGMENTATION) + memory.CONTEXT
    assert saver.total == pytest.approx(max(saver.trainer, saver.server + resting))
    assert saver.total < plain.total


def test_a_kl_term_budgets_its_reference_model(qwen):
    plain = memory.estimate(qwen, cfg_of(), H100, shared=True)
    kl = memory.estimate(qwen, cfg_of("algorithm.kl_coef=0.01"), H100, shared=True)
    assert kl.state - plain.state == 2 * plain.params  # a bf16 copy of the initial weights


def test_a_bad_gpu_memory_limit_is_one_line_through_the_cli():
    from conftest import grpo

    res = grpo("train", "--preset", "smoke", "--dry-run", "--set", "trainer.gpu_memory_limit=lots", timeout=120)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "gpu_memory_limit" in lines[0], res.stderr
    assert "is not a memory size" in lines[0] and "Traceback" not in res.stderr + res.stdout


@pytest.mark.parametrize("preset", ["fast", "1hour", "3hour", "full"])
def test_the_readme_smallest_cards_are_the_plans(qwen, preset):
    """The preset table's "smallest common card" column (Qwen2.5-0.5B-Instruct, full / LoRA): the plan
    fits that card and not the next smaller common size (of 8, 10, 12, 16, 20, 24 GiB): there it is refused, or
    tight (within the card but above 95 % of it: a warning; LoRA at 10 GiB since the LoRA server term)."""
    import re

    from conftest import ROOT

    row = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith(f"| `{preset}` |"))
    full, lora = (int(x) for x in re.search(r"\| (\d+) / (\d+) GiB \|", row).groups())
    sizes = [8, 10, 12, 16, 20, 24]
    for gib, sets in ((full, ()), (lora, ("lora.rank=16",))):
        cfg = cfg_of(*sets, preset=preset)
        assert memory.card_plan(qwen, cfg, gib * GIB, "sglang")[0] == "fits", (preset, sets, gib)
        smaller = sizes[sizes.index(gib) - 1]
        assert memory.card_plan(qwen, cfg, smaller * GIB, "sglang")[0] != "fits", (preset, sets, smaller)


def test_usable_bytes_leaves_only_what_others_hold():
    gib = memory.GIB
    assert memory.usable_bytes(24 * gib, None) == 24 * gib  # no reading: the whole card
    assert memory.usable_bytes(24 * gib, 24 * gib - memory.OWN_CONTEXT // 2) == 24 * gib  # never above the card
    assert memory.usable_bytes(24 * gib, 20 * gib) == 20 * gib + memory.OWN_CONTEXT
    assert memory.held_by_others(24 * gib, 24 * gib) == ""
    assert memory.held_by_others(24 * gib, 20 * gib) == "4.0 GiB of it held by other processes"
