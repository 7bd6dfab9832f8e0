"""Config: every preset loads, precedence preset -> file -> --set, and each bad-input class gives
one line + exit code 2 through the real CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from gsm8k_grpo.config import ConfigError, RunConfig, build_config, parse_set, preset_names

from conftest import ROOT, grpo


def test_every_preset_loads_and_validates():
    names = preset_names()
    assert {"fast", "1hour", "3hour", "full", "smoke"} <= set(names)
    expected = {"fast": (200, 1), "1hour": (500, 2), "3hour": (1000, 3), "full": (None, 5)}
    for name in names:
        cfg = build_config(name)
        assert isinstance(cfg, RunConfig)
        assert cfg.experiment_name == name
        assert cfg.trainer.batch_size % (cfg.trainer.mini_batch_size or cfg.trainer.batch_size) == 0
        if name in expected:
            assert (cfg.data.max_train_samples, cfg.trainer.epochs) == expected[name]
            assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct" and cfg.trainer.batch_size == 8


def test_presets_dir_is_shipped_in_wheel_config():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"presets" = "gsm8k_grpo/presets"' in text


def test_precedence_preset_then_file_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"optimizer": {"lr": 5e-6}, "rollout": {"n": 4}, "trial_name": "fromfile"}))
    cfg = build_config("fast", f, ["rollout.n=6", "trial_name=fromset"])
    assert cfg.optimizer.lr == 5e-6          # file over preset
    assert cfg.rollout.n == 6                # --set over file
    assert cfg.trial_name == "fromset"
    assert cfg.data.max_train_samples == 200  # preset kept where nothing overrides
    assert str(cfg.run_dir) == "runs/fast/fromset"


def test_set_values_are_yaml_typed():
    assert parse_set("a.b=3") == {"a": {"b": 3}}
    assert parse_set("a.b=true") == {"a": {"b": True}}
    assert parse_set("a=[1, 2]") == {"a": [1, 2]}
    assert parse_set("a.b=hello") == {"a": {"b": "hello"}}
    cfg = build_config("fast", None, ["data.max_train_samples=null"])
    assert cfg.data.max_train_samples is None


@pytest.mark.parametrize("overrides, fragment", [
    (["rollout.n=1"], "group size"),
    (["algorithm.clip_low=-0.1"], "positive"),
    (["trainer.mini_batch_size=3"], "divisible"),
    (["rollout.temperature=0"], "rollout.temperature"),
    (["rollout.engine=hf", "weights.transport=nccl"], "nccl needs rollout.engine=sglang"),
    (["rollout.overlap=true", "rollout.enable_memory_saver=true"], "overlap and rollout.enable_memory_saver exclude"),
    (["algorithm.offpolicy_weight_cap=0.5"], "offpolicy_weight_cap"),
])
def test_cross_field_checks(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config("fast", None, overrides)


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'rollout.temperature'"):
        build_config("fast", None, ["rollout.temperatur=1"])


def _one_line_exit2(res):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["train", "--preset", "nope", "--dry-run"], "valid presets: 1hour, 3hour, fast, full, smoke"),
    (["train", "--preset", "fast", "--set", "trainer.batch_sise=4", "--dry-run"], "did you mean 'trainer.batch_size'"),
    (["train", "--preset", "fast", "--set", "trainer.batch_size=many", "--dry-run"], "trainer.batch_size"),
    (["train", "--config", "/nonexistent/x.yaml", "--dry-run"], "config file not found"),
    (["train", "--preset", "fast", "--set", "novalue", "--dry-run"], "--set 'novalue' is malformed"),
    (["train", "--preset", "fast", "--set", "a.b=[1,", "--dry-run"], "not valid YAML"),
    (["train", "--preset", "smoke", "--gpus", "2"], "--gpus 2: only 0 GPU(s) visible"),  # this machine has none
    (["train", "--preset", "smoke", "--gpus", "0"], "--gpus 0: give 1 or more"),
    (["train", "--preset", "smoke", "--set", "rollout.parallel=xx", "--dry-run"], "'rollout.parallel': Input should be"),
])
def test_bad_input_one_line_exit_2(args, fragment):
    line = _one_line_exit2(grpo(*args))
    assert fragment in line


def test_gpus_option_is_refused_under_torchrun():
    line = _one_line_exit2(grpo("train", "--preset", "smoke", "--gpus", "2", env={"LOCAL_RANK": "0"}))
    assert "--gpus starts torchrun itself" in line


def test_malformed_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("rollout:\n  n: [1, 2\n")
    line = _one_line_exit2(grpo("train", "--config", str(f), "--dry-run"))
    assert "is not valid YAML" in line and "line" in line


def test_config_file_not_a_mapping(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    assert "must be a YAML mapping" in _one_line_exit2(grpo("train", "--config", str(f), "--dry-run"))


def test_dry_run_prints_resolved_yaml():
    res = grpo("train", "--preset", "fast", "--dry-run", "--set", "optimizer.lr=3e-6")
    assert res.returncode == 0, res.stderr
    data = yaml.safe_load(res.stdout)
    assert data["optimizer"]["lr"] == 3e-6 and data["experiment_name"] == "fast"
    RunConfig.model_validate(data)  # the printed YAML is itself a valid config


def test_cli_import_does_not_pull_torch():
    code = ("import sys, gsm8k_grpo.cli, gsm8k_grpo.config; "
            "bad=[m for m in ('torch','transformers','sglang','wandb') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_and_version():
    """Help answers without torch (test_cli_import_does_not_pull_torch says why it is fast), shows plain
    flags (no '<bool>'), names arguments plainly, and describes every preset."""
    for args in (["--help"], ["--version"], ["train", "--help"], ["eval", "--help"], ["resume", "--help"],
                 ["doctor", "--help"]):
        res = grpo(*args, env={"COLUMNS": "200"})
        assert res.returncode == 0, res.stderr
        assert "<bool>" not in res.stdout and "<str>" not in res.stdout and "{" not in res.stdout, res.stdout
    assert "grpo 0.1.0" in grpo("--version").stdout
    train = grpo("train", "--help", env={"COLUMNS": "200"}).stdout
    assert "Example" in train and "--dry-run" in train
    for name in preset_names():
        assert f"{name} (" in train, name  # each preset with its one-line description
    assert "fast (200 GSM8K train questions" in " ".join(train.split())
    resume = grpo("resume", "--help", env={"COLUMNS": "200"}).stdout
    assert "Usage: grpo resume [OPTIONS] RUN_DIR" in resume
    for command in ("train", "resume", "eval", "doctor"):  # every option says what it does
        text = grpo(command, "--help", env={"COLUMNS": "200"}).stdout
        options = [ln for ln in text.splitlines() if ln.strip().startswith("-")]
        assert options and all(len(ln.split("  ")) > 1 and ln.split("  ")[-1].strip() for ln in options), text


def test_preset_step_counts_match_the_readme():
    """README/preset comments: fast 25, 1hour 124, 3hour 375, full 4,670 steps of 8 prompts."""
    from gsm8k_grpo.data.gsm8k import steps_per_epoch

    expected = {"fast": 25, "1hour": 124, "3hour": 375, "full": 4670}
    for name, steps in expected.items():
        cfg = build_config(name)
        n = cfg.data.max_train_samples or 7473
        assert steps_per_epoch(n, cfg.trainer.batch_size) * cfg.trainer.epochs == steps, name
        row = next(ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith(f"| `{name}` |"))
        assert row.split("|")[4].strip().replace(",", "") == str(steps), row


def test_overlap_unset_is_on_with_sglang_only():
    """rollout.overlap unset (the default) is settled by the engine that runs: on with SGLang, off with the
    in-process HF engine and with the memory saver; a value the user gave is kept either way."""
    from gsm8k_grpo.config import build_config

    default = build_config(preset="1hour")
    assert default.rollout.overlap is None
    assert default.with_engine("sglang").rollout.overlap is True
    assert default.with_engine("hf").rollout.overlap is False
    saver = build_config(preset="1hour", overrides=["rollout.enable_memory_saver=true"])
    assert saver.with_engine("sglang").rollout.overlap is False
    off = build_config(preset="1hour", overrides=["rollout.overlap=false"])
    assert off.with_engine("sglang").rollout.overlap is False
    on = build_config(preset="1hour", overrides=["rollout.overlap=true"])
    assert on.with_engine("hf").rollout.overlap is True
    # --dry-run and RUN_DIR/config.yaml say how the unset value is settled, and still read back the same
    from gsm8k_grpo.config import to_yaml, validate_config

    text = to_yaml(default)
    assert "  overlap: null  # unset: on with the SGLang engine" in text
    assert validate_config(yaml.safe_load(text)) == default and "overlap: false\n" in to_yaml(off)
