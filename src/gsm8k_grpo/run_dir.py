"""The run dir and its checkpoint layout: the one module that knows where a run keeps its files.

    RUN_DIR = output_dir/experiment_name/trial_name
        config.yaml            the run config as asked for (rewritten at every start)
        metrics.jsonl          one line per step (metrics.py); train.log; reward.png
        base_model/            random-init weights (model.random_init)
        sglang_server*.log     the SGLang children's logs
        weights_sync/          the disk transport's folder when /dev/shm is too small
        checkpoints/
            step_000010/       model/ (an HF model dir), trainer/ (DCP state), state.json
            latest             the name of the newest complete checkpoint, replaced last
            .tmp-step_000012/  a checkpoint being written, renamed into place when complete
    output_dir/experiment_name/.trial_name.lock   held (flock) while a run uses RUN_DIR

A checkpoint is complete when its state.json parses and its model/ and trainer/ are there. Resume
takes the newest complete one whatever `latest` says, and says so when they differ: a damaged or
missing pointer never makes a run start over while complete checkpoints exist.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from gsm8k_grpo.config import ConfigError, RunConfig, _deep_merge, _read_yaml, config_diff, parse_set, validate_config
from gsm8k_grpo.errors import InputError

LATEST = "latest"
# Keys that may change between a run and its resume without --force: where the run lives, how it
# logs, and when it stops or saves.
RESUMABLE_CHANGES = ("output_dir", "experiment_name", "trial_name", "logging.", "trainer.max_steps",
                     "trainer.time_limit_minutes", "checkpoint.keep_last", "rollout.server_timeout_s", "eval.every",
                     "eval.at_end", "trainer.gpu_memory_limit", "trainer.gpu_memory_fraction")  # the last two: caps,
# like a different card's, which re-plans memory on resume too


class ResumeError(InputError):
    """A resume that must not happen silently; str() is the message."""


class RunDirBusy(InputError):
    """Another grpo process is using the run dir."""


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_state(checkpoint: Path) -> dict:
    """A checkpoint's state.json; InputError naming the file when it is damaged."""
    path = Path(checkpoint) / "state.json"
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path} is missing: the checkpoint is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise InputError(f"{path} is damaged (no step number in it)")
    return state


def is_complete(checkpoint: Path) -> bool:
    try:
        read_state(checkpoint)
    except InputError:
        return False
    return (checkpoint / "model" / "config.json").is_file() and (checkpoint / "trainer").is_dir()


class RunLock:
    """An exclusive flock on output_dir/experiment_name/.trial_name.lock, held while a run uses the dir.

    The kernel drops the lock when its process dies (kill -9 included), so a lock file left by a
    killed run is taken over without asking; only a live process holds it."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None

    def acquire(self) -> RunLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as e:  # the first write of a run: a bad output_dir shows here
            raise InputError(f"{self.path.parent} cannot be written ({e.strerror or type(e).__name__}); set "
                             "output_dir to a writable folder") from None
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            run_dir = self.path.parent / self.path.name[1:].removesuffix(".lock")
            raise RunDirBusy(f"run dir {run_dir} is in use by another grpo run ({holder}); wait for it to end, "
                             "or give this run another trial_name") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.note = ""  # what latest_checkpoint() had to work around, for the log

    config_file = property(lambda self: self.path / "config.yaml")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    log_file = property(lambda self: self.path / "train.log")
    base_model = property(lambda self: self.path / "base_model")
    checkpoints = property(lambda self: self.path / "checkpoints")

    def __str__(self) -> str:
        return str(self.path)

    def lock(self) -> RunLock:
        return RunLock(self.path.parent / f".{self.path.name}.lock")

    def server_log(self, index: int = 0) -> Path:
        return self.path / ("sglang_server.log" if index == 0 else f"sglang_server_{index}.log")

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:06d}"

    def checkpoint_dirs(self) -> list[Path]:
        """Every step_N folder, complete or not, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def complete_checkpoints(self) -> list[Path]:
        return [p for p in self.checkpoint_dirs() if is_complete(p)]

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint, or None; self.note says when `latest` disagreed."""
        complete = self.complete_checkpoints()
        newest = complete[-1] if complete else None
        pointer = self.checkpoints / LATEST
        try:
            named = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        self.note = ""
        if newest is not None and named != newest.name:
            if named is None:
                why = "is missing or unreadable"
            elif named and is_complete(self.checkpoints / named):
                why = f"names the older {named}"
            else:
                why = f"names {named!r}, which is not a complete checkpoint"
            self.note = f"checkpoints/latest {why}; using {newest.name}, the newest complete checkpoint"
        return newest

    def temporary_checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f".tmp-step_{step:06d}"

    def begin_checkpoint(self, step: int) -> Path:
        """A fresh temporary folder for the checkpoint of `step` (rank 0)."""
        tmp = self.temporary_checkpoint_dir(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, step: int, keep_last: int) -> Path:
        """Rename the finished `tmp` into place, point `latest` at it, prune (rank 0)."""
        final = self.checkpoint_dir(step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        write_atomic(self.checkpoints / LATEST, final.name)
        self.prune(keep_last)
        return final

    def prune(self, keep_last: int) -> None:
        """Keep the newest keep_last complete checkpoints; drop older ones and any leftover temporary folder."""
        for p in self.complete_checkpoints()[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
        self.remove_temporaries()

    def remove_temporaries(self) -> None:
        for p in self.checkpoints.glob(".tmp-*") if self.checkpoints.is_dir() else []:
            shutil.rmtree(p, ignore_errors=True)

    def move_aside(self) -> Path:
        aside = self.path.with_name(f"{self.path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
        self.path.rename(aside)
        return aside


# ---------------------------------------------------------------------------- configs of a run


# Settings a saved config may lack, with the value the run had then rather than today's default:
# rollout.overlap was added off (2026-11-27) and became unset = on with SGLang (2026-12-03), so a run
# saved before it existed was on-policy and must resume so.
DEFAULTS_OF_OLDER_RUNS = {("rollout", "overlap"): False}


def with_older_defaults(saved: dict) -> dict:
    """`saved` with each setting of DEFAULTS_OF_OLDER_RUNS it lacks filled in with its then value."""
    out = dict(saved)
    for (section, key), value in DEFAULTS_OF_OLDER_RUNS.items():
        if isinstance(out.get(section), dict) and key not in out[section]:
            out[section] = {**out[section], key: value}
    return out


def read_run_config(path: Path) -> RunConfig:
    return validate_config(with_older_defaults(_read_yaml(path, "run config")))


def comparable_config(saved: dict) -> dict:
    """A checkpoint's config with today's defaults filled in, so that a setting added to the package
    since the checkpoint was written does not count as a change on resume (but for
    DEFAULTS_OF_OLDER_RUNS, whose then value is filled in)."""
    try:
        return validate_config(with_older_defaults(saved)).model_dump(mode="json")
    except ConfigError:  # a setting since removed or renamed: compare as saved, the diff names it
        return saved


def resume_differences(saved: dict, cfg: RunConfig) -> list[str]:
    """Config differences that must not pass a resume silently ('key: old -> new')."""
    diff = config_diff(comparable_config(saved), cfg.model_dump(mode="json"))
    return [d for d in diff if not d.startswith(RESUMABLE_CHANGES)]


def config_for_resume(run_dir: Path, overrides: list[str]) -> RunConfig:
    """`grpo resume RUN_DIR`: the run's config, placed where RUN_DIR is now, with --set applied."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise InputError(f"run dir {run_dir} does not exist")
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        what = "no complete checkpoint" if run.checkpoint_dirs() else "no checkpoint yet"
        raise InputError(f"{run_dir} has {what}: nothing to resume; start it with grpo train (or --restart)")
    try:
        data = read_run_config(run.config_file).model_dump(mode="json")
    except ConfigError:  # a damaged config.yaml: the checkpoint keeps the same config
        data = read_state(checkpoint).get("config") or {}
        if not data:
            raise
    resolved = run.path.resolve()
    data.update(output_dir=str(resolved.parent.parent), experiment_name=resolved.parent.name, trial_name=resolved.name)
    for item in overrides:
        data = _deep_merge(data, parse_set(item))
    return validate_config(data)
