"""Run checks of `grpo doctor`: the model, data, W&B, GPU placement and memory plan of one run config.

Each asks the production code what `grpo train` would do (modeling's hub-id resolution, the
engine choice, placement.plan, memory.fit and memory.cpu_refusal, metrics' W&B mode and key)
instead of deriving it again; only the network stays untouched (the hub is probed with one HEAD).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gsm8k_grpo import memory
from gsm8k_grpo.doctor.base import Check, Context, gib, pkg_version

MODEL_FIX = "--set model.path=DIR with a local model folder, or run once with network access (the HF cache keeps it)"
DATA_FIX = "--set data.path=DIR with train/test .jsonl|.parquet (or builtin:gsm8k for a sample)"


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model (its config.json at least), without the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=["config.json"],
                                      local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (or not valid): the caller says so
        return None


def _unavailable(ctx: Context, name: str, what: str, fix: str) -> Check:
    """`what` is not local and not cached: fine if the hub answers (or was not probed), else a run cannot start."""
    reachable, words = ctx.hub()
    if reachable:
        return Check(name, "ok", f"{what} is not cached; grpo train will download it")
    if reachable is None:
        return Check(name, "warn", f"{what} is not cached and the hub was not probed ({words})", fix)
    return Check(name, "fail", f"{what} is not cached and the hub is unreachable ({words}): a run cannot start", fix)


def check_model(ctx: Context) -> Check:
    from gsm8k_grpo.modeling import ModelError, looks_like_hub_id, resolve_model_dir

    m = ctx.cfg.model
    if looks_like_hub_id(m.path):
        snap = _hub_snapshot(m.path, m.revision)
        if snap is None:
            return _unavailable(ctx, "model", m.path, MODEL_FIX)
        weights = any(snap.glob("*.safetensors"))
        return Check("model", "ok", f"{m.path} is in the HF cache" + ("" if weights else " (config only; the "
                                                                       "weights download at the first run)"))
    try:
        folder = Path(resolve_model_dir(m.path))
    except ModelError as e:
        return Check("model", "fail", str(e), "--set model.path=DIR (an HF model folder) or a hub id like "
                                              "Qwen/Qwen2.5-0.5B-Instruct")
    if not (folder / "config.json").is_file():
        return Check("model", "fail", f"model.path {m.path!r} has no config.json", "point model.path to an HF model folder")
    if not m.random_init and not any(folder.glob("*.safetensors")):
        return Check("model", "fail", f"model.path {m.path!r} has a config but no *.safetensors weights",
                     "--set model.random_init=true, or point model.path to a folder with *.safetensors")
    what = "random init from its config" if m.random_init else "weights present"
    return Check("model", "ok", f"{m.path} is a local folder ({what})")


def _hf_cache_dir() -> Path:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def check_data(ctx: Context) -> Check:
    from gsm8k_grpo import assets

    raw = ctx.cfg.data.path
    if raw:
        p = Path(assets.resolve(raw)).expanduser()
        if not p.exists():
            return Check("data", "fail", f"data.path {raw!r} does not exist", DATA_FIX)
        if p.is_file():
            return Check("data", "ok", f"{raw} is a local file")
        splits = sorted({f.stem for f in p.iterdir() if f.suffix in (".jsonl", ".parquet", ".json")})
        if "train" not in splits:
            return Check("data", "fail", f"data.path {raw!r} has no train.jsonl or train.parquet (found {splits})",
                         "put train.jsonl and test.jsonl (GSM8K fields question/answer) in the folder")
        return Check("data", "ok", f"{raw}: local splits {', '.join(splits)}")
    hub = ctx.cfg.data.hub_name
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or _hf_cache_dir().parent / "datasets").expanduser()
    if (_hf_cache_dir() / f"datasets--{hub.replace('/', '--')}").is_dir() or \
            (datasets_cache / hub.replace("/", "___")).is_dir():
        return Check("data", "ok", f"{hub} is in the local HF cache")
    return _unavailable(ctx, "data", hub, DATA_FIX)


def check_wandb(ctx: Context) -> Check:
    """Where the mode and the key come from, never the key itself."""
    from gsm8k_grpo.metrics import KEY_FILE, wandb_key, wandb_mode

    mode, source = wandb_mode(ctx.cfg.logging.wandb)
    if mode == "disabled":
        return Check("wandb", "ok", f"disabled ({source})")
    key, where = wandb_key()
    if key is None and mode == "online":
        return Check("wandb", "ok", "none: W&B logging off (no key)",
                     f"export WANDB_API_KEY, write it to ./{KEY_FILE}, or run `wandb login` to log to W&B")
    if pkg_version("wandb") is None:
        return Check("wandb", "warn", f"W&B {mode} but wandb is not installed: W&B logging off", "pip install wandb")
    return Check("wandb", "ok", f"W&B {mode} (mode from {source}); key {'from ' + where if key else 'none (offline)'}; "
                                f"project {ctx.cfg.logging.project}")


def check_transport(ctx: Context) -> Check:
    from gsm8k_grpo.placement import plan, visible_gpus
    from gsm8k_grpo.rollout import sglang_installed

    gpus = visible_gpus()
    c = ctx.cfg
    try:
        p = plan(len(gpus), c.rollout.gpus, c.rollout.engine, c.weights.transport,
                 ipc_ok=sglang_installed() and ctx.ipc_ok is not False)
    except ValueError as e:
        return Check("transport", "fail", f"impossible with {len(gpus)} GPU(s): {e}",
                     "change weights.transport / rollout.engine / rollout.gpus (see docs/troubleshooting.md)")
    ctx.placement = p
    trainer, server = list(p.trainer_gpus), list(p.server_gpus)
    split = f"trainer on {_gpus_text(trainer)}, server on {_gpus_text(server)}" if gpus else "all on CPU"
    if len(server) > 1:
        split += (f" ({len(server)} SGLang servers, one per GPU)" if c.rollout.parallel == "dp"
                  else f" (one SGLang server, tensor-parallel over {len(server)} GPUs)")
    return Check("transport", "ok", f"{p.transport}: {split} ({p.reason})")


def _gpus_text(ids: list) -> str:
    if not ids:
        return "CPU / in-process"
    return ("GPU " if len(ids) == 1 else "GPUs ") + ",".join(str(i) for i in ids)


def _model_config(ctx: Context) -> dict | None:
    """config.json of the model as grpo train would read it (local, or cached), else the shipped copy
    of the same hub model's config; None when none is at hand."""
    from gsm8k_grpo import assets
    from gsm8k_grpo.modeling import ModelError, looks_like_hub_id, resolve_model_dir

    m = ctx.cfg.model
    if looks_like_hub_id(m.path):
        folder = _hub_snapshot(m.path, m.revision)
        if folder is None:
            folder = next((d for d in assets.ROOT.iterdir() if (d / "config.json").is_file() and
                           json.loads((d / "config.json").read_text()).get("_name_or_path") == m.path), None)
    else:
        try:
            folder = Path(resolve_model_dir(m.path))
        except ModelError:
            folder = None
    if folder is None or not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text())
    config.update(m.config_overrides)
    return config


def _card_check(ctx: Context, mc: dict, pre: str) -> Check:
    """--gpu-memory: the plan grpo train would make on one card of that size, trainer and SGLang on it."""
    c = ctx.cfg
    engine = c.rollout.engine if c.rollout.engine != "auto" else "sglang"  # auto picks SGLang on a GPU
    verdict, changes, est, fitted = memory.card_plan(mc, c, ctx.card_bytes, engine)
    detail = (f"{pre}, planned for one {gib(ctx.card_bytes)} card ({engine} engine, an estimate calibrated "
              f"on H100 and H200 runs): {memory.describe(est, ctx.card_bytes)}")
    if changes:
        detail += "; grpo train will set " + ", ".join(changes)
    if verdict == "fits":
        return Check("memory", "ok", detail)
    if verdict == "tight":
        return Check("memory", "warn", detail + f": tight (within the card, above {memory.FIT_SHARE:.0%} of it)",
                     "watch the first steps' peak_mem_gb; lower trainer.micro_batch_tokens if it runs out")
    fix = memory.refusal(est, ctx.card_bytes, fitted, mc=mc).split("; set ", 1)[1]
    return Check("memory", "fail", detail + ": does not fit (grpo train refuses it)", "set " + fix)


def check_memory(ctx: Context) -> Check:
    mc = _model_config(ctx)
    if mc is None:
        return Check("memory", "ok", f"estimate skipped: config.json of {ctx.cfg.model.path} is not local or cached")
    params = memory.estimate_params(mc)
    c = ctx.cfg
    on_gpu = ctx.trainer_on_gpu() and bool(ctx.gpus)
    engine = ctx.engine()
    pre = f"{params / 1e6:.0f}M params"
    if ctx.card_bytes:
        return _card_check(ctx, mc, pre)
    refusal = memory.cpu_refusal(c, engine, on_gpu, params)
    if refusal:
        return Check("memory", "fail", f"{pre}: grpo train refuses it here: {refusal}",
                     "run on a GPU host, use --preset smoke, or set rollout.engine=hf explicitly")
    if not on_gpu:
        cpu = memory.estimate(mc, c, 0, shared=False, bf16=False)
        hf_copy = params * 4 if engine == "hf" else 0
        need = cpu.state + cpu.activations + hf_copy
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        detail = (f"{pre}: CPU trainer ≈ {gib(need)} (state {gib(cpu.state)} + activations {gib(cpu.activations)}"
                  f"{' + HF engine ' + gib(hf_copy) if hf_copy else ''}) of {gib(ram)} RAM")
        if need > 0.8 * ram:
            return Check("memory", "warn", detail + ": too tight",
                         "lower trainer.micro_batch_tokens / trainer.logprob_chunk or set trainer.grad_checkpointing=true")
        return Check("memory", "ok", detail)
    p = ctx.placement
    trainer_gpus = [i for i in (p.trainer_gpus if p else [0]) if i < len(ctx.gpus)] or [0]
    server_gpus = [i for i in (p.server_gpus if p else []) if i < len(ctx.gpus)]
    g = ctx.gpus[trainer_gpus[0]]
    shared = engine == "sglang" and trainer_gpus[0] in server_gpus
    ranks = int(os.environ.get("WORLD_SIZE", 1))  # trainer processes: 1 unless doctor runs under torchrun
    limit = memory.parse_size(c.trainer.gpu_memory_limit) if c.trainer.gpu_memory_limit else None
    usable, card = memory.plan_bytes(g.total, g.free, limit)  # what grpo train plans for, as here
    fitted, changes, est = memory.fit(mc, c, card, shared, ranks, c.trainer.dtype != "fp32")
    hf_engine = memory.hf_engine_bytes(params, c, engine)
    budget = card  # the card less what other processes hold already (usable_bytes), or the limit
    detail = f"{pre}: {memory.describe(est, card)}{' + HF engine' if hf_engine else ''} on GPU {g.index}"
    if limit:
        detail += f" (trainer.gpu_memory_limit={c.trainer.gpu_memory_limit})"
    if g.free is not None:
        others = memory.held_by_others(g.total, usable)
        detail += f" ({gib(g.free)} free{'; ' + others if others else ''})"
    if changes:
        detail += "; grpo train will set " + ", ".join(changes)
    if not shared and server_gpus:
        sg = ctx.gpus[server_gpus[0]]
        detail += f"; SGLang on GPU {sg.index} takes {gib(fitted.rollout.mem_fraction * sg.total)}"
        if sg.free is not None and fitted.rollout.mem_fraction * sg.total > sg.free:
            return Check("memory", "warn", detail + f" but only {gib(sg.free)} is free there",
                         "free that GPU or lower rollout.mem_fraction")
    if memory.verdict(est, card) == "no":  # grpo train refuses it before loading anything
        return Check("memory", "fail", detail + ": does not fit (grpo train refuses it)",
                     "set " + memory.refusal(est, card, fitted, mc=mc).split("; set ", 1)[1])
    if est.total + hf_engine > 0.95 * budget:
        return Check("memory", "warn", detail + ": likely OOM",
                     "lower rollout.mem_fraction / trainer.micro_batch_tokens, set trainer.grad_checkpointing=true, "
                     "or rollout.enable_memory_saver=true")
    return Check("memory", "ok", detail)
