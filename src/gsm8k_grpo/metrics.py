"""Metrics sinks: RUN_DIR/metrics.jsonl (always), RUN_DIR/train.log + console, W&B (when it is on).

W&B mode: logging.wandb when set in the config, else the WANDB_MODE environment variable (as every
W&B user expects: online, offline, disabled; dryrun = offline), else online. W&B key: WANDB_API_KEY,
else the file wandb/.wandb_api_key under the current directory, else the key `wandb login` stored
(~/.netrc). Online with no key -> one info line and no W&B; a W&B failure never stops training.
The key is never printed.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from rich.console import Console
from rich.logging import RichHandler

KEY_FILE = Path("wandb") / ".wandb_api_key"
WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
log = logging.getLogger("gsm8k_grpo")


def wandb_mode(configured: str | None) -> tuple[str, str]:
    """(online | offline | disabled, where that came from): the config's value wins, then WANDB_MODE."""
    if configured:
        return configured, "logging.wandb"
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in WANDB_MODES:
        return WANDB_MODES[env], "WANDB_MODE"
    return "online", "default"


def wandb_key() -> tuple[str | None, str]:
    """(key, where it came from); never log the key itself."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return os.environ["WANDB_API_KEY"].strip(), "WANDB_API_KEY"
    try:
        key = KEY_FILE.read_text().strip() if KEY_FILE.is_file() else ""
    except (OSError, UnicodeDecodeError):
        key = ""
    if key:
        return key, str(KEY_FILE)
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    try:  # where `wandb login` stores it
        entry = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        entry = None
    if entry and entry[2]:
        return entry[2], f"~/.netrc ({host}, from wandb login)"
    return None, ""


def setup_logging(run_dir: Path | None = None, console: Console | None = None) -> None:
    """Console (rich) + RUN_DIR/train.log; safe to call again with a run dir."""
    logging.raiseExceptions = False  # a log line that cannot be written (a full disk) must not print a traceback
    log.setLevel(logging.INFO)
    log.propagate = False
    if not any(isinstance(h, RichHandler) for h in log.handlers):
        h = RichHandler(console=console or Console(stderr=True), show_path=False, show_level=False,
                        markup=False, log_time_format="[%H:%M:%S]")
        log.addHandler(h)
    if run_dir is not None:
        path = str(Path(run_dir) / "train.log")
        if not any(isinstance(h, logging.FileHandler) and h.baseFilename == os.path.abspath(path)
                   for h in log.handlers):
            fh = logging.FileHandler(path)
            fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(fh)


def close_logging() -> None:
    for h in list(log.handlers):
        if isinstance(h, logging.FileHandler):
            h.close()
            log.removeHandler(h)


def truncate_jsonl(path: Path, last_step: int) -> int:
    """Drop records after last_step (a resumed run redoes the steps after its checkpoint), and any
    line that does not parse (cut by a kill, or damaged). -> the step of the last record kept (0 if none)."""
    if not path.is_file():
        return 0
    keep, kept_step, dropped = [], 0, 0
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            dropped += bool(line.strip())
            continue
        if step <= last_step:
            keep.append(line)
            kept_step = max(kept_step, step)
    if dropped:
        log.warning("%s: dropped %d damaged line(s)", path, dropped)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    os.replace(tmp, path)
    return kept_step


class Metrics:
    def __init__(self, path: Path, run_name: str, config: dict, logging_cfg, wandb_id: str | None,
                 resume_step: int, total_steps: int):
        self.path = Path(path)
        truncate_jsonl(self.path, resume_step)
        self.total = total_steps
        self.t0 = time.time()
        self.first_step = resume_step
        self.wandb = None
        self.wandb_id = wandb_id
        mode, source = wandb_mode(logging_cfg.wandb)
        if mode != "disabled":
            self._init_wandb(run_name, config, mode, source, logging_cfg.project, logging_cfg.entity, wandb_id)

    def _init_wandb(self, run_name, config, mode, source, project, entity, wandb_id) -> None:
        key, where = wandb_key()
        if key is None and mode == "online":
            log.info("W&B: no key (WANDB_API_KEY, %s or wandb login); logging to metrics.jsonl only", KEY_FILE)
            return
        try:
            import wandb

            if key:
                os.environ["WANDB_API_KEY"] = key
            self.wandb = wandb.init(project=project, entity=entity, name=run_name, id=wandb_id, resume="allow",
                                    mode=mode, dir=str(self.path.parent), config=config)
            self.wandb_id = self.wandb.id
            log.info("W&B: logging %s (mode from %s) run %s (key from %s)", mode, source, run_name, where or "none")
        except Exception as e:  # noqa: BLE001 - never let W&B stop a run
            log.warning("W&B disabled: %s", str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            self.wandb = None

    def log(self, step: int, record: dict) -> None:
        record = {"step": step, **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            try:
                self.wandb.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=step)
            except Exception as e:  # noqa: BLE001
                log.warning("W&B log failed: %s", str(e).splitlines()[0][:200])

    def progress_line(self, step: int, r: dict) -> str:
        done = step - self.first_step
        rate = (time.time() - self.t0) / max(done, 1)
        eta = rate * (self.total - step)
        return (f"step {step}/{self.total}  reward {r.get('reward_mean', 0):.3f}  acc {r.get('accuracy', 0):.3f}  "
                f"len {r.get('response_len_mean', 0):.0f}  loss {r.get('loss', 0):+.4f}  "
                f"gnorm {r.get('grad_norm', 0):.3f}  {r.get('time_step', 0):.2f}s/step  ETA {eta / 60:.1f} min")

    def close(self) -> None:
        if self.wandb is not None:
            try:
                self.wandb.finish()
            except Exception:  # noqa: BLE001
                pass


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot(run_dir: Path) -> Path | None:
    """RUN_DIR/reward.png: reward and accuracy per step (and eval accuracy when present)."""
    records = read_jsonl(Path(run_dir) / "metrics.jsonl") if (Path(run_dir) / "metrics.jsonl").is_file() else []
    if not records:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no reward.png (metrics.jsonl has the numbers)")
        return None

    steps = [r["step"] for r in records]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(steps, [r.get("reward_mean", 0) for r in records], label="reward (mean)")
    ax1.plot(steps, [r.get("accuracy", 0) for r in records], label="accuracy (train samples)")
    ev = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    if ev:
        ax1.plot(*zip(*ev), "o-", label="eval accuracy (test slice)")
    ax1.set_xlabel("step"), ax1.set_ylim(-0.02, 1.02), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot(steps, [r.get("response_len_mean", 0) for r in records], color="tab:purple")
    ax2.set_xlabel("step"), ax2.set_ylabel("mean response tokens"), ax2.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(run_dir) / "reward.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
