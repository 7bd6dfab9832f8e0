"""The path a real user takes, offline: a hub model id (resolved through huggingface_hub's own cache,
HF_HUB_OFFLINE=1), train -> kill -9 -> resume -> eval of the checkpoint in a fresh process that can
see neither the base model nor the HF cache. The checkpoint's model dir is standard and self-contained."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, grpo
from hf_cache import add_model
from toy import make_data_dir, make_model_dir, write_toy

HUB_ID = "tiny-org/tiny-qwen"


@pytest.fixture
def hf_home(tmp_path) -> Path:
    """The toy task's tiny model (tests/toy.py) in an HF cache under a hub-style id."""
    home = tmp_path / "hf-home"
    add_model(home, HUB_ID, make_model_dir(tmp_path / "toy-model"))
    return home


def _train_args(tmp_path: Path) -> list[str]:
    """The toy task's config with the model named by its hub id."""
    cfg = write_toy(tmp_path, **{"model.path": HUB_ID, "trainer.max_steps": 30, "checkpoint.every": 1,
                                 "checkpoint.keep_last": 2, "rollout.max_new_tokens": 4})
    return ["--config", str(cfg)]


def test_hub_id_train_kill_resume_then_eval_without_the_cache(tmp_path, hf_home):
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "runs" / "toy" / "trial0"
    full_env = dict(os.environ, **env)
    full_env.pop("WANDB_API_KEY", None)
    args = _train_args(tmp_path)
    shutil.rmtree(tmp_path / "model")  # write_toy built a local copy: only the cache may serve the model
    proc = subprocess.Popen([sys.executable, "-m", "gsm8k_grpo", "train", *args], cwd=ROOT,
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pointer = run / "checkpoints" / "latest"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not (
            pointer.is_file() and int(pointer.read_text().strip()[5:]) >= 2):
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "base_model").exists()  # a pretrained hub model is served from the cache, not copied
    res = grpo("resume", str(run), env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 31))
    final = run / "checkpoints" / "step_000030" / "model"

    # the model dir: what transformers' own saving writes, with no path of this machine inside
    names = sorted(p.name for p in final.iterdir())
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(names), names
    text = "".join((final / n).read_text() for n in names if n.endswith((".json", ".jinja")) and n != "tokenizer.json")
    for where in (str(tmp_path), str(hf_home), str(ROOT)):
        assert where not in text
    config = json.loads((final / "config.json").read_text())
    assert "_name_or_path" not in config and config["use_cache"] is True
    # every file as readable as any new file (safetensors writes its file 0600: a shared filesystem's
    # other users could not load the checkpoint)
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {n: oct((final / n).stat().st_mode & 0o777) for n in names if (final / n).is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes

    # a fresh process that sees neither the base model nor the HF cache
    shutil.rmtree(hf_home)
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(final, moved)
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "assert t.chat_template and t.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False); "
            "print(sum(p.numel() for p in m.parameters()))")
    loaded = subprocess.run([sys.executable, "-c", code, str(moved)], capture_output=True, text=True, timeout=120,
                            env=dict(full_env, HF_HOME=str(tmp_path / "no-cache")))
    assert loaded.returncode == 0 and int(loaded.stdout.strip()) > 0, loaded.stderr[-2000:]
    data = make_data_dir(tmp_path / "local-data")
    res = grpo("eval", "--checkpoint", str(moved), "--samples", "4", "--data", str(data), "--max-new-tokens", "4",
               "--json", env={"HF_HOME": str(tmp_path / "no-cache"), "HF_HUB_OFFLINE": "1"}, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["questions"] == 4


def test_a_hub_id_that_is_not_cached_offline_is_one_line(tmp_path):
    res = grpo("train", "--preset", "smoke", "--set", "model.path=tiny-org/not-there", "--set", "model.random_init=false",
               "--set", "model.config_overrides={}", "--set", f"output_dir={tmp_path}",
               env={"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "tiny-org/not-there" in lines[0] and "local HF cache" in lines[0], res.stderr


def test_model_revision_selects_a_cached_revision(tmp_path, hf_home):
    """model.revision goes to huggingface_hub: a revision the cache does not hold is refused by name."""
    args = _train_args(tmp_path)
    res = grpo("train", *args, "--set", "model.revision=v9", "--set", "trainer.max_steps=1",
               env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert res.returncode == 2 and "(revision v9)" in res.stderr, res.stderr[-2000:]
    res = grpo("train", *args, "--set", "model.revision=main", "--set", "trainer.max_steps=1",
               env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
