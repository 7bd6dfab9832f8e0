"""`grpo`: thin Typer commands. No torch, transformers or sglang at import: heavy modules load inside
the command that needs them, so `grpo --help` and `grpo --version` answer at once.

Failures are one line, never a traceback (errors.py): exit code 2 for bad input, 1 for a run that
failed, 130 on Ctrl-C and 143 on SIGTERM (each after the engine's child processes are reaped).
`grpo --debug ...` or GRPO_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from typer.core import TyperCommand

from gsm8k_grpo import __version__


class _Command(TyperCommand):
    """Usage lines name arguments plainly (RUN_DIR, not Typer's {RUN_DIR})."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if getattr(param, "param_type_name", "") == "argument":  # click's and Typer's argument classes
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="GRPO fine-tuning of small LLMs on GSM8K: SGLang rollouts + FSDP2 trainer, one GPU or several.")
err = Console(stderr=True)
out = Console()

GPUS_HELP = ("Use the first N GPUs: SGLang gets the last rollout.gpus of them, and every other one an FSDP "
             "trainer rank (this starts torchrun itself).")
SET_HELP = "Dotted override, repeatable, read as YAML: --set trainer.batch_size=16"


def _preset_help() -> str:
    from gsm8k_grpo.config import preset_descriptions

    return "One of: " + "; ".join(f"{name} ({what})" for name, what in preset_descriptions().items())


def _debug() -> bool:
    return os.environ.get("GRPO_DEBUG", "").lower() in ("1", "true", "yes", "on")


def _fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # escape: messages hold text like `pip install 'gsm8k-grpo[sglang]'`, which rich would eat as markup
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _os_error_line(e: OSError) -> tuple[str, int]:
    where = f": {e.filename}" if getattr(e, "filename", None) else ""
    if e.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free space (or set output_dir on a bigger disk) and resume", 1
    return f"{e.strerror or e}{where}", 1


def _guard(fn, run_dir: Path | None = None):
    """Run fn(): a UserError -> its one line and exit code; Ctrl-C -> 130; SIGTERM -> 143; anything
    else -> one line naming it as an internal error, exit 1. With --debug the traceback instead."""
    from gsm8k_grpo.errors import UserError

    resume = f"`grpo resume {run_dir}`" if run_dir is not None else "`grpo resume RUN_DIR`"
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        if _debug():
            raise
        err.print(f"[yellow]interrupted[/]: the engine was stopped; resume with {resume}", soft_wrap=True,
                  markup=True, highlight=False)
        raise typer.Exit(130)
    except SystemExit as e:
        if type(e).__name__ != "Terminated":  # rollout.server.Terminated, without importing it here
            raise
        if _debug():
            raise
        err.print(f"[yellow]terminated[/] (SIGTERM): the engine was stopped; a training run resumes with {resume}",
                  soft_wrap=True, highlight=False)
        raise typer.Exit(e.code)
    except UserError as e:
        if _debug():
            raise
        _fail(str(e), e.exit_code)
    except OSError as e:
        if _debug():
            raise
        _fail(*_os_error_line(e))
    except Exception as e:  # noqa: BLE001 - a bug: still one line, and the way to the traceback
        if _debug():
            raise
        _fail(_internal_error_line(e), 1)
    except BaseException as e:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        if _debug() or not type(e).__name__.endswith("Exception"):
            raise
        _fail(_internal_error_line(e), 1)


def _internal_error_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return f"internal error: {type(e).__name__}: {first} (run `grpo --debug ...` for the traceback, and please report it)"


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
    except Exception:  # noqa: BLE001 - quieter logs are a nicety
        pass


def _version(value: bool) -> None:
    if value:
        out.print(f"grpo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="Show tracebacks instead of one-line errors "
                                     "(also GRPO_DEBUG=1).")) -> None:
    if debug:
        os.environ["GRPO_DEBUG"] = "1"  # also for a re-run under torchrun (--gpus)


@app.command(cls=_Command, epilog="Example: grpo train --preset 1hour --set optimizer.lr=3e-6 --set trial_name=lr3")
def train(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", metavar="NAME", help=_preset_help()),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE",
                                          help="YAML file merged over the preset."),
    set_: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help=SET_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config as YAML and exit."),
    restart: bool = typer.Option(False, "--restart", help="Move an existing run dir aside and start over."),
    force: bool = typer.Option(False, "--force", help="Resume even though the config changed."),
    gpus: Optional[int] = typer.Option(None, "--gpus", metavar="N", help=GPUS_HELP),
) -> None:
    """Train with GRPO. A run dir that already has a checkpoint is resumed automatically."""
    from gsm8k_grpo.config import build_config, preset_names, to_yaml

    if preset is None and config is None:
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
        from gsm8k_grpo.config import ConfigError
        from gsm8k_grpo.placement import launch_plan, visible_device_ids
        from gsm8k_grpo.rollout import choose_engine

        visible = visible_device_ids()
        try:
            devices, ranks = launch_plan(gpus, visible, cfg.rollout.gpus, choose_engine(cfg.rollout.engine),
                                         cfg.weights.transport)
        except ValueError as e:
            raise ConfigError(str(e)) from None
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

    _guard(go, cfg.run_dir)


@app.command(cls=_Command, epilog="Example: grpo resume runs/1hour/trial0")
def resume(
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="The run dir: output_dir/experiment_name/trial_name."),
    set_: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE",
                                   help="Dotted override (e.g. trainer.max_steps=200)."),
    force: bool = typer.Option(False, "--force", help="Resume even though the config changed."),
    gpus: Optional[int] = typer.Option(None, "--gpus", metavar="N", help=GPUS_HELP),
) -> None:
    """Continue a run from its latest checkpoint (also after a crash or kill -9)."""

    def load():
        from gsm8k_grpo.run_dir import config_for_resume

        return config_for_resume(run_dir, set_)

    cfg = _guard(load)
    _on_gpus(gpus, cfg)
    _run_training(cfg, force=force)


@app.command(name="eval", cls=_Command,
             epilog="Examples: grpo eval --checkpoint runs/fast/trial0/checkpoints/step_000025/model --samples 50\n\n"
                    "grpo eval --model Qwen/Qwen2.5-0.5B-Instruct --all --output base.jsonl")
def eval_(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", metavar="DIR",
                                              help="A model dir written by training (…/model), or its checkpoint."),
    model: Optional[str] = typer.Option(None, "--model", metavar="ID_OR_DIR", help="A hub id or model dir (the baseline)."),
    samples: Optional[int] = typer.Option(None, "--samples", metavar="N", help="The first N test questions (default: all)."),
    all_: bool = typer.Option(False, "--all", help="The whole test split (1,319 questions)."),
    seed: Optional[int] = typer.Option(None, "--seed", metavar="S", help="Draw --samples questions at random with this seed."),
    engine: str = typer.Option("auto", "--engine", metavar="auto|sglang|hf",
                               help="auto: SGLang on a GPU host where it is installed, else the HF engine."),
    temperature: float = typer.Option(0.0, "--temperature", metavar="T", help="0 = greedy (the default)."),
    n: int = typer.Option(1, "--n", metavar="K", help="Samples per question: pass@1 is their mean, pass@K any."),
    max_new_tokens: int = typer.Option(512, "--max-new-tokens", metavar="N", help="Tokens per answer at most."),
    data_path: Optional[str] = typer.Option(None, "--data", metavar="DIR",
                                            help="Local GSM8K dir (default: the run's data, else the hub)."),
    output: Optional[Path] = typer.Option(None, "--output", metavar="FILE", help="Per-question JSONL."),
    json_: bool = typer.Option(False, "--json", help="Print the summary as JSON only."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE",
                                          help="Take prompt/data settings from a run config."),
) -> None:
    """Score a checkpoint or a base model on the GSM8K test split (strict and lenient accuracy)."""
    _quiet_libraries()

    def go():
        from gsm8k_grpo.eval import run_cli

        summary = run_cli(checkpoint=checkpoint, model=model, samples=samples, all_=all_, seed=seed, engine=engine,
                          temperature=temperature, n=n, max_new_tokens=max_new_tokens, data_path=data_path,
                          output=output, config=config, console=None if json_ else out)
        if json_:
            import json

            print(json.dumps(summary, indent=1))

    _guard(go)


@app.command(cls=_Command, epilog="Example: grpo doctor --preset 1hour --json")
def doctor(
    preset: Optional[str] = typer.Option(None, "--preset", "-p", metavar="NAME",
                                         help="Check this preset's model, data and memory plan."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", metavar="FILE", help="Check this run config."),
    set_: list[str] = typer.Option([], "--set", "-s", metavar="KEY=VALUE", help=SET_HELP),
    json_: bool = typer.Option(False, "--json", help="Machine-readable output."),
    quick: bool = typer.Option(False, "--quick", help="Skip the 2-process GPU tests and the hub probe."),
    gpu_memory: Optional[str] = typer.Option(None, "--gpu-memory", metavar="SIZE",
                                             help="Plan the run's memory for one card of SIZE (e.g. 12GiB) "
                                                  "instead of this host's GPUs."),
) -> None:
    """Check this host for a run: GPUs, CUDA, NCCL, IPC, SGLang, /dev/shm, disk, model, data, W&B key, memory."""

    def go():
        import json

        from gsm8k_grpo import doctor as doctor_checks
        from gsm8k_grpo.config import build_config
        from gsm8k_grpo.errors import InputError
        from gsm8k_grpo.memory import parse_size

        try:
            card = parse_size(gpu_memory) if gpu_memory is not None else None
        except ValueError as e:
            raise InputError(f"--gpu-memory: {e}") from None
        cfg = build_config(preset, config, set_) if (preset or config or set_) else None
        checks = doctor_checks.run_checks(cfg, cfg.run_dir if cfg else None, quick=quick, card_bytes=card)
        if json_:
            print(json.dumps(doctor_checks.to_json(checks), indent=1))
        else:
            doctor_checks.render(checks, out)
        raise typer.Exit(doctor_checks.exit_code(checks))

    _guard(go)


def main() -> None:
    try:
        app(prog_name="grpo")
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
