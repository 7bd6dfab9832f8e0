"""LoRA (lora.rank > 0) on the CPU: the toy task learns through the real CLI, the engine serves the
merged weights, a checkpoint holds peft's adapter dir and a merged model dir that agree, the trainer
state holds the adapters only, and bad settings are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import grpo
from toy import make_model_dir, write_toy

LORA = {"lora.rank": 8, "lora.alpha": 16, "optimizer.lr": 0.01}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_lora_learns_the_toy_task_and_checkpoints_adapter_and_merged_model(tmp_path):
    """'Answer with 7' through adapters alone (init 0.3: see toy.make_model_dir), from chance to >= 0.8."""
    make_model_dir(tmp_path / "model", init_range=0.3)
    cfg = write_toy(tmp_path, **LORA, **{"trainer.max_steps": 20, "checkpoint.every": 10})
    res = grpo("train", "--config", str(cfg), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "toy" / "trial0"
    recs = read_metrics(run)
    rewards = [r["reward_mean"] for r in recs]
    assert sum(rewards[:3]) / 3 < 0.3 and sum(rewards[-5:]) / 5 >= 0.8, rewards
    for r in recs:  # every step trained, and the engine served the merged weights the trainer has
        assert r["optimizer_steps"] == 1 and r["logprob_mismatch"] < 1e-4, r

    ckpt = run / "checkpoints" / "step_000020"
    adapter = json.loads((ckpt / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["peft_type"] == "LORA"
    assert adapter["base_model_name_or_path"] == str(tmp_path / "model")

    # peft's own loader: base + adapter, merged, equals the checkpoint's merged model dir
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32)
    before = {k: v.clone() for k, v in base.state_dict().items()}  # peft merges into `base` in place
    via_peft = PeftModel.from_pretrained(base, ckpt / "adapter").merge_and_unload().state_dict()
    merged = AutoModelForCausalLM.from_pretrained(ckpt / "model", dtype=torch.float32).state_dict()
    assert set(via_peft) == set(merged)
    changed = 0
    for name, t in merged.items():
        torch.testing.assert_close(t, via_peft[name], rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(t, before[name])
    assert changed == 2 * 7  # the seven target layers of both decoder layers, nothing else

    # grpo eval given the adapter dir says which folder to use, in one line
    res = grpo("eval", "--checkpoint", str(ckpt / "adapter"), "--samples", "2", timeout=120)
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {ckpt / 'adapter'} is a LoRA adapter, not a model; use {ckpt / 'model'} (the merged model)"]

    # the trainer state (to resume) holds the adapters and their optimizer state only
    from torch.distributed.checkpoint import FileSystemReader

    keys = FileSystemReader(str(ckpt / "trainer")).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert model_keys and all(".lora_A." in k or ".lora_B." in k for k in model_keys), model_keys[:4]
    assert not any("embed_tokens" in k or "base_layer" in k for k in keys)


def test_lora_resume_continues_exactly(tmp_path):
    """A run stopped at step 6 and resumed matches an unbroken 12-step run (adapters, Adam state, RNG)."""
    extra = {**LORA, "trainer.max_steps": 12, "checkpoint.every": 6, "rollout.max_new_tokens": 6}
    straight, split = tmp_path / "straight", tmp_path / "split"
    for d in (straight, split):
        d.mkdir()
        make_model_dir(d / "model", init_range=0.3)
    res = grpo("train", "--config", str(write_toy(straight, **extra)), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    res = grpo("train", "--config", str(write_toy(split, **extra)), "--set", "trainer.max_steps=6", timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    run = split / "runs" / "toy" / "trial0"
    res = grpo("train", "--config", str(split / "toy.yaml"), "--force", timeout=240)  # max_steps back to 12
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in (run / "train.log").read_text()
    ref, got = read_metrics(straight / "runs" / "toy" / "trial0"), read_metrics(run)
    assert [r["step"] for r in got] == list(range(1, 13))
    for a, b in zip(ref, got):
        assert a["reward_mean"] == b["reward_mean"], (a["step"], a["reward_mean"], b["reward_mean"])
        assert abs(a["loss"] - b["loss"]) <= 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) <= 1e-5, a["step"]


def test_merge_matches_peft(tmp_path):
    """trainer/lora.merged: W0 + alpha/r * B @ A under the HF names, as peft's merge_and_unload computes it."""
    import copy

    from transformers import AutoModelForCausalLM

    from gsm8k_grpo.config import LoraConfig
    from gsm8k_grpo.trainer.lora import add_adapters, merged, scaling

    hf = AutoModelForCausalLM.from_pretrained(make_model_dir(tmp_path / "m"))
    cfg = LoraConfig(rank=4, alpha=8, target_modules=["q_proj", "down_proj"])
    adapted = add_adapters(hf, cfg, init_seed=0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_()  # B starts at zero; give it values so the merge is not the identity
    ours = dict(merged(((n, p.detach()) for n, p in adapted.named_parameters()), scaling(cfg)))
    theirs = copy.deepcopy(adapted)
    from peft.tuners.lora import LoraLayer

    for module in theirs.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    ref = {n.replace(".base_layer", ""): p for n, p in theirs.named_parameters() if "lora_" not in n}
    assert set(ours) == set(ref)
    for name in ours:
        torch.testing.assert_close(ours[name], ref[name].detach(), msg=name)


@pytest.mark.parametrize("setting, needle", [
    ("lora.target_modules=[qq_proj]", "lora.target_modules ['qq_proj'] are not linear layers of this model"),
    ("lora.rank=-1", "lora.rank"),
    ("lora.target_modules=[]", "lora.target_modules"),
    ("lora.target_modules=[q_proj, lm_head]", "lora.target_modules: lm_head shares its weight with the input"),
])
def test_bad_lora_settings_are_one_line(tmp_path, setting, needle):
    cfg = write_toy(tmp_path, **LORA)
    res = grpo("train", "--config", str(cfg), "--set", setting, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert needle in res.stderr and "Traceback" not in res.stderr
    assert len([x for x in res.stderr.splitlines() if x.strip()]) == 1, res.stderr


def test_the_adapter_names_the_weights_it_was_trained_on(tmp_path, monkeypatch):
    """adapter_config.json's base model: a hub id with its revision; a local dir made absolute; the run's
    own base_model/ for random or shipped weights, which no hub id names."""
    from gsm8k_grpo.trainer.checkpoint import adapter_base

    run_base = tmp_path / "run" / "base_model"
    assert adapter_base({"model": {"path": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "v1"}}, "/cache/snap") == (
        "Qwen/Qwen2.5-0.5B-Instruct", "v1")
    (tmp_path / "local").mkdir()
    monkeypatch.chdir(tmp_path)
    assert adapter_base({"model": {"path": "local"}}, str(run_base)) == (str(tmp_path / "local"), None)
    assert adapter_base({"model": {"path": "Qwen/Qwen2.5-0.5B-Instruct", "random_init": True}}, str(run_base)) == (
        str(run_base), None)
    assert adapter_base({"model": {"path": "builtin:qwen2.5-0.5b-instruct"}}, str(run_base)) == (str(run_base), None)
