"""`grpo`: thin Typer commands. No torch, transformers or sglang at import: heavy modules load inside
the command that needs them, so `grpo --help` and `grpo --version` answer at once.

Every expected failure (bad config, missing file, engine that will not start) is one red line and
exit code 2; Ctrl-C is exit code 130 and SIGTERM (a scheduler, `timeout`, `kill`) exit code 143 of
train/resume, each after the engine's child processes are reaped.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from gsm8k_grpo import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="GRPO fine-tuning of small LLMs on GSM8K: SGLang rollouts + FSDP2 trainer, one GPU or several.")
err = Console(stderr=True)
out = Console()

GPUS_HELP = ("Use the first N GPUs: SGLang gets the last rollout.gpus of them, and every other one an FSDP "
             "trainer rank (this starts torchrun itself).")


EXPECTED = ("ConfigError", "DataError", "ModelError", "EngineError", "TransportError", "ResumeError", "EvalInputError")


def _fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # escape: messages hold text like `pip install 'gsm8k-grpo[sglang]'`, which rich would eat as markup
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _guard(fn):
    """Run fn(); expected errors -> one line + exit 2; Ctrl-C -> exit 130; SIGTERM -> exit 143."""
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: the engine was stopped; resume with `grpo resume RUN_DIR`", soft_wrap=True)
        raise typer.Exit(130)
    except SystemExit as e:
        if type(e).__name__ != "Terminated":  # rollout.server.Terminated, without importing it here
            raise
        err.print("[yellow]terminated[/] (SIGTERM): the engine was stopped; a training run resumes with "
                  "`grpo resume RUN_DIR`", soft_wrap=True)
        raise typer.Exit(e.code)
    except Exception as e:
        if type(e).__name__ in EXPECTED or isinstance(e, (FileNotFoundError, NotADirectoryError)):
            _fail(str(e))
        raise


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as tl

        tl.disable_progress_bar()
        tl.set_verbosity_error()
    except Exception:
        pass


def _version(value: bool) -> None:
    if value:
        out.print(f"grpo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


@app.command(epilog="Example: grpo train --preset 1hour --set optimizer.lr=3e-6 --set trial_name=lr3")
def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="fast | 1hour | 3hour | full | smoke"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file merged over the preset."),
    set_: list[str] = typer.Option([], "--set", "-s", help="Dotted override, repeatable: --set trainer.batch_size=16"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config as YAML and exit."),
    restart: bool = typer.Option(False, "--restart", help="Move an existing run dir aside and start over."),
    force: bool = typer.Option(False, "--force", help="Resume even though the config changed."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help=GPUS_HELP),
) -> None:
    """Train with GRPO. A run dir that already has a checkpoint is resumed automatically."""
    from gsm8k_grpo.config import build_config, to_yaml

    if preset is None and config is None:
        from gsm8k_grpo.config import preset_names

        _fail(f"give --preset NAME or --config FILE; presets: {', '.join(preset_names())}")
    cfg = _guard(lambda: build_config(preset, config, set_))
    if dry_run:
        typer.echo(to_yaml(cfg), nl=False)
        return
    _on_gpus(gpus, cfg)
    _run_training(cfg, restart=restart, force=force)


def relaunch_argv(argv: list[str], ranks: int) -> list[str]:
    """The same grpo command without --gpus: under torchrun with `ranks` processes when ranks > 1."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            rest.append(a)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    return [sys.executable, *launcher, "-m", "gsm8k_grpo", *rest]


def _on_gpus(gpus: Optional[int], cfg) -> None:
    """--gpus N: re-run the command on the first N GPUs (CUDA_VISIBLE_DEVICES), under torchrun when
    several of them train. A re-run, because CUDA reads CUDA_VISIBLE_DEVICES once per process and
    counting the GPUs here has already read it."""
    if gpus is None:
        return
    if "LOCAL_RANK" in os.environ:
        _fail("--gpus starts torchrun itself: leave it out under torchrun (--nproc_per_node sets the trainer ranks)")

    def decide():
        from gsm8k_grpo.rollout import choose_engine
        from gsm8k_grpo.weights.detect import launch_plan, visible_device_ids

        visible = visible_device_ids()
        try:
            devices, ranks = launch_plan(gpus, visible, cfg.rollout.gpus, choose_engine(cfg.rollout.engine),
                                         cfg.weights.transport)
        except ValueError as e:
            _fail(str(e))
        return devices, ranks, devices == ",".join(visible)

    devices, ranks, unchanged = _guard(decide)
    if ranks == 1 and unchanged:
        return  # this process already sees exactly these GPUs
    os.environ["CUDA_VISIBLE_DEVICES"] = devices
    argv = relaunch_argv(sys.argv[1:], ranks)
    err.print(f"--gpus {gpus}: CUDA_VISIBLE_DEVICES={devices}, {ranks} trainer process(es): "
              f"{' '.join(argv[1:6] if ranks > 1 else argv[1:3])} …", markup=False, highlight=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def _run_training(cfg, restart: bool = False, force: bool = False) -> None:
    _quiet_libraries()
    if threading.current_thread() is threading.main_thread():  # also with the in-process engine
        from gsm8k_grpo.rollout.server import on_sigterm

        signal.signal(signal.SIGTERM, on_sigterm)

    def go():
        from gsm8k_grpo.trainer.recipe import run

        ckpt, complete = run(cfg, restart=restart, force=force)
        if ckpt is not None and complete:
            out.print(f"final checkpoint: {ckpt}/model", markup=False, soft_wrap=True)  # one line, for scripts
        elif ckpt is not None:  # trainer.time_limit_minutes: a clean stop, exit 0
            out.print(f"checkpoint: {ckpt}/model (time limit reached; continue with: grpo resume "
                      f"{cfg.run_dir} --set trainer.time_limit_minutes=MINUTES)", markup=False, soft_wrap=True)

    _guard(go)


@app.command(epilog="Example: grpo resume runs/1hour/trial0")
def resume(
    run_dir: Path = typer.Argument(..., help="RUN_DIR = output_dir/experiment_name/trial_name"),
    set_: list[str] = typer.Option([], "--set", "-s", help="Dotted override (e.g. trainer.max_steps=200)."),
    force: bool = typer.Option(False, "--force", help="Resume even though the config changed."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help=GPUS_HELP),
) -> None:
    """Continue a run from its latest checkpoint (also after a crash or kill -9)."""

    def load():
        from gsm8k_grpo.config import _deep_merge, parse_set, validate_config
        from gsm8k_grpo.trainer.recipe import load_run_config

        if not run_dir.is_dir():
            _fail(f"run dir {run_dir} does not exist")
        if not (run_dir / "checkpoints" / "latest").is_file():
            _fail(f"{run_dir} has no checkpoint yet (checkpoints/latest is missing); start it with grpo train")
        data = load_run_config(run_dir).model_dump(mode="json")
        resolved = run_dir.resolve()
        data.update(output_dir=str(resolved.parent.parent), experiment_name=resolved.parent.name,
                    trial_name=resolved.name)
        for item in set_:
            data = _deep_merge(data, parse_set(item))
        return validate_config(data)

    cfg = _guard(load)
    _on_gpus(gpus, cfg)
    _run_training(cfg, force=force)


@app.command(name="eval", epilog="Examples: grpo eval --checkpoint runs/fast/trial0/checkpoints/step_000025/model --samples 50\n\n"
                                 "grpo eval --model Qwen/Qwen2.5-0.5B-Instruct --all --output base.jsonl")
def eval_(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A model dir written by training (…/model)."),
    model: Optional[str] = typer.Option(None, "--model", help="A hub id or model dir (the baseline)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="The first N test questions (default: all)."),
    all_: bool = typer.Option(False, "--all", help="The whole test split (1,319 questions)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Draw --samples questions at random with this seed."),
    engine: str = typer.Option("auto", "--engine", help="auto | sglang | hf"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    n: int = typer.Option(1, "--n", help="Samples per question: pass@1 is their mean, pass@n any."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens"),
    data_path: Optional[str] = typer.Option(None, "--data", help="Local GSM8K dir (default: the hub)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Per-question JSONL."),
    json_: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
    config: Optional[Path] = typer.Option(None, "--config", help="Take prompt/data settings from a run config."),
) -> None:
    """Score a checkpoint or a base model on the GSM8K test split (strict and lenient accuracy)."""
    _quiet_libraries()

    def go():
        from gsm8k_grpo.eval import EvalInputError, run_cli

        if (checkpoint is None) == (model is None):
            raise EvalInputError("give exactly one of --checkpoint PATH or --model NAME_OR_DIR")
        if samples is not None and all_:
            raise EvalInputError("--samples and --all exclude each other")
        summary = run_cli(checkpoint=checkpoint, model=model, samples=samples, seed=seed, engine=engine,
                          temperature=temperature, n=n, max_new_tokens=max_new_tokens, data_path=data_path,
                          output=output, config=config, console=None if json_ else out)
        if json_:
            import json

            print(json.dumps(summary, indent=1))

    _guard(go)


@app.command(epilog="Example: grpo doctor --preset 1hour --json")
def doctor(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Check the memory split for this preset."),
    config: Optional[Path] = typer.Option(None, "--config", "-c"),
    set_: list[str] = typer.Option([], "--set", "-s"),
    json_: bool = typer.Option(False, "--json", help="Machine-readable output."),
    quick: bool = typer.Option(False, "--quick", help="Skip the 2-process GPU tests and the hub probe."),
) -> None:
    """Check this host for a run: GPUs, CUDA, NCCL, IPC, SGLang, /dev/shm, disk, ports, W&B key."""

    def go():
        import json

        from gsm8k_grpo import doctor as D
        from gsm8k_grpo.config import build_config

        cfg = build_config(preset, config, set_) if (preset or config or set_) else None
        checks = D.run_checks(cfg, cfg.run_dir if cfg else None, quick=quick)
        if json_:
            print(json.dumps(D.to_json(checks), indent=1))
        else:
            D.render(checks, out)
        raise typer.Exit(D.exit_code(checks))

    _guard(go)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
