"""The GRPO recipe: the one place that orders a step.

    batch = take_batch(step)          rank 0 generates it (or took it ahead), every rank receives it
    prefetch(step + 1)                rollout.overlap: the next batch generates during this update
    update (engine memory released)   rollout.enable_memory_saver frees SGLang's memory meanwhile
    wait_for_prefetch()               before the push: a batch comes from one weight version
    push, if the update changed the weights (or the saver released them)
    log the step's metrics (after an eval, when one is due), then save a checkpoint when one is due

The policy version counts updates applied (a step whose groups were all filtered, or whose
optimizer step was skipped as non-finite, changes nothing); a batch carries the version that
generated it, and is trained off-policy (trainer/update.py) only when that is older than the
trainer's. setup() builds everything from the RunConfig, or resumes from the newest complete
checkpoint of the run dir; train() runs the steps and, with trainer.time_limit_minutes, saves and
stops early when one more step and a save would not fit. Rank 0 owns the rollout engine and the
transport; every rank trains its share of each batch (FSDP2).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gsm8k_grpo import metrics
from gsm8k_grpo.config import ConfigError, RunConfig, to_yaml
from gsm8k_grpo.data import gsm8k, prompts
from gsm8k_grpo.distributed import broadcast_object, gather_objects, init_distributed
from gsm8k_grpo.errors import InputError
from gsm8k_grpo.modeling import (count_params, load_config, load_generation_config, load_tokenizer, materialize,
                                 resolve_model_dir)
from gsm8k_grpo.rollout import choose_engine, make_engine, sglang_installed
from gsm8k_grpo.rollout.base import EngineError
from gsm8k_grpo.run_dir import ResumeError, RunDir, read_state, resume_differences
from gsm8k_grpo.trainer import checkpoint
from gsm8k_grpo.trainer.source import Batch, RolloutSource, Scorer, gsm8k_scorer
from gsm8k_grpo.trainer.update import Trainer, UpdateStats
from gsm8k_grpo.weights.base import TransportError

log = logging.getLogger("gsm8k_grpo")

# Dense bf16 matrix-product rates measured on this project's GPU machines (KINDS.md of the device
# tool: 8192^3 products through PyTorch), used as the MFU denominator.
MEASURED_BF16_FLOPS = {"H100": 798e12, "H200": 790e12}


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in MEASURED_BF16_FLOPS.items() if k in name), None)


def raise_on_every_rank(err: Exception | None, world: int, kind: type[Exception], what: str) -> None:
    """Collective: rank 0's error (None elsewhere, or when all went well) reaches every rank. Rank 0
    re-raises its own; the others raise kind(f"{what} failed: ..."), so none is left waiting."""
    msg = broadcast_object(None if err is None else f"{type(err).__name__}: {err}", world) if world > 1 else None
    if err is not None:
        raise err
    if msg is not None:
        raise kind(f"{what} failed: {msg}")


def push_collectively(push, tensors, version: int, world: int) -> None:
    """Rank 0 pushes `tensors` (a generator whose every item is a collective all-gather); the
    other ranks (push None) only iterate it. When rank 0's push fails half-way, rank 0 still drains
    the generator so the other ranks' all-gathers complete, then every rank raises the same error,
    instead of ranks 1.. waiting in an all-gather until the process group's 30-minute timeout."""
    err: Exception | None = None
    if push is not None:
        try:
            push(tensors, version)
        except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks are released)
            err = e
    if push is None or (err is not None and world > 1):
        for _ in tensors:  # the remaining all-gathers
            pass
    raise_on_every_rank(err, world, TransportError, "the weight push on rank 0")


class Recipe:
    def __init__(self, cfg: RunConfig, *, restart: bool = False, force: bool = False, scorer: Scorer | None = None):
        self.cfg, self.restart, self.force = cfg, restart, force
        self.requested_cfg = cfg  # what the user asked for: saved in checkpoints, compared on resume
        self.scorer = scorer or gsm8k_scorer(cfg)
        self.run = RunDir(cfg.run_dir)
        self.t_start = time.monotonic()  # trainer.time_limit_minutes counts from here
        self.longest_save_s = 0.0
        self.version = 0  # the policy version: updates applied to the weights so far
        self.engine = self.transport = self.metrics = self.source = self.lock = None

    # ================================================================== setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = self._device()
        self.rank, self.world = init_distributed(self.device)
        if self.rank == 0:  # before anything in the run dir changes
            self.lock = self.run.lock().acquire()
        self.resume_from = self._prepare_run_dir()
        if self.rank == 0:  # other ranks only speak up through exceptions
            metrics.setup_logging(self.run.path)
            (self.run.config_file).write_text(to_yaml(cfg))
            if self.run.note:
                log.warning(self.run.note)

        # cheap checks first: data and model size, before any model is downloaded, built or loaded
        train = gsm8k.load_split("train", cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)
        self.pool = gsm8k.train_subset(train, cfg.data.max_train_samples, cfg.data.seed)
        self.eval_set = None
        if cfg.eval.every or cfg.eval.at_end:
            test = gsm8k.load_split("test", cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)
            self.eval_set = test[: cfg.eval.samples]
        self.engine_kind = broadcast_object(choose_engine(cfg.rollout.engine) if self.rank == 0 else None, self.world)
        self.cfg = cfg = cfg.with_engine(self.engine_kind)  # rollout.overlap settled (unset: on with SGLang)
        model_config = self._model_config() if self.rank == 0 else None
        model_config = broadcast_object(model_config, self.world)
        self._check_cpu_size(model_config)
        if self.device.type == "cuda":  # self.cfg becomes the fitted copy; requested_cfg stays
            self.cfg = cfg = self._fit_memory(model_config)
        self.model_dir = materialize(cfg.model, self.run.base_model) if self.rank == 0 else None
        self.model_dir = broadcast_object(self.model_dir, self.world)
        self.tokenizer = load_tokenizer(self.model_dir)
        self.stop_ids = prompts.stop_token_ids(self.tokenizer, load_generation_config(self.model_dir))

        steps_per_epoch = gsm8k.steps_per_epoch(len(self.pool), cfg.trainer.batch_size)
        self.total_steps = cfg.trainer.max_steps or steps_per_epoch * cfg.trainer.epochs
        self.trainer = Trainer(cfg, self.model_dir, self.device, self.total_steps, self.tokenizer.pad_token_id)
        self.n_params = sum(p.numel() for p in self.trainer.model.parameters())  # DTensor numel is global
        self.peak_flops = peak_bf16_flops(self.device)
        self.start_step, state = 0, {}
        if self.resume_from is not None:
            state = self._restore()
            self.start_step, self.version = state["step"], state.get("policy_version", state["step"])
        if self.rank == 0:
            server_gpus = self.placement.server_gpus if self.placement else None
            self.engine = make_engine(self.engine_kind, self.model_dir, cfg.rollout, self.run.path,
                                      device=str(self.device), pad_token_id=self.tokenizer.pad_token_id,
                                      gpu_ids=server_gpus if torch.cuda.device_count() > 1 else None)
            self.transport = self._make_transport()
            self.source = RolloutSource(cfg, self.engine, self.tokenizer, self.pool, self.stop_ids, self.scorer)
            self.source.load_state(state.get("pending_batch"))
            self.source.no_signal = set(state.get("no_signal") or ())   # algorithm.skip_no_signal's record
            self.metrics = metrics.Metrics(self.run.metrics_file, f"{cfg.experiment_name}/{cfg.trial_name}",
                                           cfg.model_dump(mode="json"), cfg.logging, state.get("wandb_id"),
                                           self.start_step, self.total_steps)
        if self.version > 0:  # the engine starts from the base weights: bring it to the checkpoint's
            self._push()
        started = getattr(self.engine, "startup_s", None)
        log.info("run %s: %d steps of %d prompts x %d samples, engine %s%s, transport %s, device %s",
                 self.run, self.total_steps, cfg.trainer.batch_size, cfg.rollout.n, self.engine_kind,
                 f" (healthy after {started:.0f} s)" if started is not None else "",
                 getattr(self.transport, "name", "-"), self.device)
        log.info("update: %s", describe_update(cfg))

    def _device(self) -> torch.device:
        """The trainer's device, from the GPU placement (trainer GPUs first, SGLang's after)."""
        import os

        from gsm8k_grpo.placement import plan

        self.placement = None
        want = self.cfg.trainer.device
        if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu")
        try:
            self.placement = plan(torch.cuda.device_count(), self.cfg.rollout.gpus,
                                  choose_engine(self.cfg.rollout.engine), self.cfg.weights.transport,
                                  ipc_ok=sglang_installed())  # IPC needs SGLang's serializer in-process
        except ValueError as e:
            raise ConfigError(str(e)) from None
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= len(self.placement.trainer_gpus):
            raise ConfigError(f"{local + 1} trainer processes but only {len(self.placement.trainer_gpus)} trainer "
                              f"GPU(s) ({self.placement.reason}); lower --nproc_per_node or rollout.gpus")
        index = self.placement.trainer_gpus[local]
        torch.cuda.set_device(index)
        if self.cfg.trainer.gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(self.cfg.trainer.gpu_memory_fraction, index)
        # what other processes leave of the card, read now: later, NCCL's buffers would count as theirs
        self.free_at_start = torch.cuda.mem_get_info(index)[0]
        return torch.device("cuda", index)

    def _prepare_run_dir(self) -> Path | None:
        """Fresh start, resume or restart; refuse a resume whose config changed (unless --force) and
        a run dir whose checkpoints are all damaged."""
        run = self.run
        if self.rank == 0 and self.restart and run.path.exists():
            print(f"moved the old run dir aside: {run.move_aside()}")
        if self.world > 1:
            dist.barrier()
        run.path.mkdir(parents=True, exist_ok=True)
        found = run.latest_checkpoint()
        if found is None:
            damaged = run.checkpoint_dirs()
            if damaged:
                raise InputError(f"{run} has checkpoints but none is complete ({', '.join(p.name for p in damaged[-3:])}"
                                 "); grpo train --restart moves the run dir aside and starts over")
            if self.rank == 0:  # no checkpoint: whatever a run without one logged is redone
                run.metrics_file.unlink(missing_ok=True)
                run.remove_temporaries()
            return None
        diff = resume_differences(read_state(found).get("config") or {}, self.cfg)
        if diff and not self.force:
            raise ResumeError(f"resume refused: the config differs from {found}: " + "; ".join(diff[:6])
                              + (" ..." if len(diff) > 6 else "") + ". Pass --force to resume anyway, "
                              "--restart to start over, or another trial_name.")
        return found

    def _restore(self) -> dict:
        """The trainer state of the newest complete checkpoint; a damaged one falls back to the one
        before it (checkpoint.keep_last), saying so."""
        candidates = [p for p in reversed(self.run.complete_checkpoints()) if p.name <= self.resume_from.name]
        for i, path in enumerate(candidates):
            try:
                state = checkpoint.restore(path, self.trainer)
            except InputError as e:
                if i + 1 == len(candidates):
                    raise
                log.warning("%s; falling back to %s", e, candidates[i + 1])
                continue
            self.resume_from = path
            log.info("resumed from %s (step %d)", path, state["step"])
            return state
        raise InputError(f"{self.run}: no checkpoint to resume from")

    def _model_config(self):
        """The model's config (a hub id fetches only its config.json here), with the overrides."""
        m = self.cfg.model
        return load_config(resolve_model_dir(m.path, m.revision, config_only=True), m.config_overrides)

    def _check_cpu_size(self, model_config) -> None:
        from gsm8k_grpo.memory import cpu_refusal

        if self.engine_kind == "hf" and self.device.type != "cuda":
            refusal = cpu_refusal(self.cfg, self.engine_kind, False, count_params(model_config))
            if refusal:
                raise ConfigError(f"{refusal}. Run on a GPU host, or set rollout.engine=hf explicitly to insist")

    def _fit_memory(self, model_config) -> RunConfig:
        """Lower unpinned memory settings until trainer (+ SGLang on the same GPU) fit the card, or
        trainer.gpu_memory_limit of it (memory.fit); refuse a run that cannot fit, before any model
        loads; with the limit, cap SGLang's pool and the trainer's allocator (memory.cap)."""
        from gsm8k_grpo import memory

        p = self.placement
        shared = self.engine_kind == "sglang" and p is not None and self.device.index in p.server_gpus
        own_card = torch.cuda.get_device_properties(self.device).total_memory
        log.info("GPU %s: %.1f GiB, %.2f GiB free at start", self.device.index, own_card / memory.GIB,
                 self.free_at_start / memory.GIB)  # what usable_bytes reads, for checking OWN_CONTEXT
        # every trainer process plans for the card with the least left (rank 0 fits, the others follow)
        card, free = min(gather_objects((own_card, self.free_at_start), self.world),
                         key=lambda cf: memory.usable_bytes(*cf))
        limit = self.cfg.trainer.gpu_memory_limit
        usable, plan = memory.plan_bytes(card, free, memory.parse_size(limit) if limit else None)
        others = memory.held_by_others(card, usable)
        what = (f"trainer.gpu_memory_limit={limit} of this GPU" if limit and plan < usable
                else f"this {card / memory.GIB:.0f} GiB GPU") + (f" ({others})" if others else "")
        bf16 = self.cfg.trainer.dtype != "fp32"
        mc = model_config.to_dict()
        cfg, changes, est = memory.fit(mc, self.cfg, plan, shared, self.world, bf16)
        cfg, changes, est = broadcast_object((cfg, changes, est), self.world)  # every rank takes rank 0's plan
        if changes:
            log.info("memory plan for %s: %s", what, "; ".join(changes))
        verdict = memory.verdict(est, plan)
        if verdict == "no":
            raise ConfigError(memory.refusal(est, plan, cfg, what, mc)
                              + ("; or free what other processes hold on the GPU" if others else ""))
        if verdict == "tight":
            log.warning("memory: %s: tight for %s (the estimate is approximate); if it runs out, lower "
                        "trainer.micro_batch_tokens or set trainer.grad_checkpointing=true", memory.describe(est, plan),
                        what)
        graphs = memory.graph_args(cfg, plan) if shared else []
        if graphs:
            cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={
                "server_args": list(cfg.rollout.server_args) + graphs})})
        if limit:
            cfg, caps = memory.cap(mc, cfg, own_card, plan, est, shared)  # a fraction of this process's GPU
            torch.cuda.set_per_process_memory_fraction(caps.trainer_fraction, self.device)
            log.info("memory limit %s: trainer allocator capped at %.1f GiB%s", limit, caps.trainer_bytes / memory.GIB,
                     f"; SGLang's KV pool {caps.kv_tokens} tokens (--max-total-tokens; --mem-fraction-static "
                     f"{cfg.rollout.mem_fraction} only lets its memory profile pass)" if shared else "")
        if cfg.rollout.server_args != self.cfg.rollout.server_args:
            log.info("SGLang arguments added by the memory plan: %s",
                     " ".join(cfg.rollout.server_args[len(self.cfg.rollout.server_args):]))
        return cfg

    def _make_transport(self):
        from gsm8k_grpo.weights import make_transport

        kind = self.placement.transport if self.placement else self.cfg.weights.transport
        kind = "disk" if kind == "auto" else kind
        return make_transport(kind, self.engine, self.model_dir, self.run.path, self.cfg.weights.bucket_mb,
                              self.cfg.weights.disk_dir)

    # ================================================================== train
    def train(self) -> tuple[Path | None, bool]:
        """Run the remaining steps; returns (the last checkpoint, whether the run is complete)."""
        last_ckpt, step, out_of_time = None, self.start_step, False
        for step in range(self.start_step + 1, self.total_steps + 1):
            t0 = time.monotonic()
            batch = self.take_batch(step)
            self.prefetch(step + 1)
            t1 = time.monotonic()
            lag = self.version - batch.version  # updates the generating weights lack: 0 on-policy
            stats = self.update(batch, off_policy=lag > 0)
            t2 = time.monotonic()
            self.wait_for_prefetch()
            t3 = time.monotonic()
            # push what changed: the update's weights, or the same weights after the saver released them
            time_push = self._push() if stats.optimizer_steps or (self.saver and stats.samples) else 0.0
            record = {**batch.metrics, **stats.metrics(), "policy_lag": lag, **self._speed(stats),
                      "time_update": t2 - t1, "time_push": time_push, "time_step": time.monotonic() - t0}
            if self.cfg.rollout.overlap:
                record["time_wait_rollout"] = t3 - t2
            last = step == self.total_steps
            if self._eval_due(step, last):
                record.update(self.evaluate())
            out_of_time = not last and self._out_of_time(time.monotonic() - t0)
            self.log_step(step, record, loud=last or out_of_time)
            if last or out_of_time or (self.cfg.checkpoint.every and step % self.cfg.checkpoint.every == 0):
                last_ckpt = self.save_checkpoint(step)
            if out_of_time:
                break
        self._finish(step, last_ckpt, out_of_time)
        return last_ckpt or self.run.latest_checkpoint(), not out_of_time

    # ------------------------------------------------------------------ the phases of a step
    def take_batch(self, step: int) -> Batch:
        """Rank 0 takes the batch (generated now, or ahead); every rank receives it."""
        return broadcast_object(self.source.take(step) if self.rank == 0 else None, self.world)

    def prefetch(self, step: int) -> None:
        if self.cfg.rollout.overlap and self.rank == 0 and step <= self.total_steps:
            self.source.prefetch(step)

    def wait_for_prefetch(self) -> None:
        """Join the overlapped rollout; if it failed on rank 0, every rank raises (none is left
        waiting in the push's collectives)."""
        if not self.cfg.rollout.overlap:
            return
        err = None
        if self.rank == 0:
            try:
                self.source.wait()
            except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks are told)
                err = e
        raise_on_every_rank(err, self.world, EngineError, "rank 0's overlapped rollout")

    @property
    def saver(self) -> bool:
        """rollout.enable_memory_saver in force (the same on every rank)."""
        return self.cfg.rollout.enable_memory_saver and self.engine_kind == "sglang"

    def update(self, batch: Batch, off_policy: bool) -> UpdateStats:
        """The policy update on this batch, with SGLang's memory released meanwhile when the saver is on."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if not batch.samples:  # every group filtered out: nothing to learn from this batch
            return UpdateStats()
        released = self.engine.memory_released() if self.saver and self.rank == 0 else contextlib.nullcontext()
        with released:
            stats = self.trainer.update(batch.samples, off_policy=off_policy)
        self.version += stats.optimizer_steps > 0
        if stats.nonfinite_steps:
            log.warning("non-finite grad norm in %d optimizer step(s): skipped (%s)", stats.nonfinite_steps,
                        stats.nonfinite_detail)
        return stats

    def _push(self) -> float:
        """Send the trainer's weights (as policy version self.version) to the engine; -> seconds."""
        t0 = time.monotonic()
        dtype = getattr(self.engine, "dtype", None) if self.rank == 0 else None
        dtype = broadcast_object(dtype, self.world) or torch.bfloat16
        push = self.transport.push if self.rank == 0 else None
        push_collectively(push, self.trainer.named_tensors(dtype), self.version, self.world)
        return time.monotonic() - t0

    def _speed(self, stats: UpdateStats) -> dict:
        out = {}
        if stats.samples and stats.time_train:
            out["train_tokens_per_s"] = stats.seq_tokens / stats.time_train
            if self.peak_flops:  # every rank gets the whole batch list
                # 6 N a token: forward 2 N, backward 4 N; with LoRA the frozen weights get no weight
                # gradient, so 4 N (the adapters' own flops are < 1 % of it)
                per_token = (4 if self.cfg.lora.rank else 6) * self.n_params
                out["mfu"] = per_token * stats.seq_tokens / stats.time_train / (self.peak_flops * self.world)
        if self.device.type == "cuda":
            out["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    def _eval_due(self, step: int, last: bool) -> bool:
        e = self.cfg.eval
        return bool(self.eval_set) and ((bool(e.every) and step % e.every == 0) or (last and e.at_end))

    def _out_of_time(self, step_s: float) -> bool:
        """Would one more step like the last one, plus a save, end past trainer.time_limit_minutes?
        Every rank must agree (the save is collective): the slowest clock decides."""
        limit = self.cfg.trainer.time_limit_minutes
        if limit is None:
            return False
        late = time.monotonic() - self.t_start + step_s + self.longest_save_s > 60 * limit
        if self.world > 1:
            flag = torch.tensor([float(late)], device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            late = bool(flag.item())
        return late

    def log_step(self, step: int, record: dict, loud: bool = False) -> None:
        if self.rank != 0:
            return
        self.metrics.log(step, record)
        if step % self.cfg.logging.console_every == 0 or loud:
            log.info(self.metrics.progress_line(step, record))

    def evaluate(self) -> dict:
        from gsm8k_grpo.eval import evaluate

        if self.rank != 0:
            return {}
        c = self.cfg
        res = evaluate(self.engine, self.tokenizer, self.eval_set, instruction=c.data.instruction,
                       system_prompt=c.data.system_prompt, max_new_tokens=c.eval.max_new_tokens or c.rollout.max_new_tokens,
                       stop_token_ids=self.stop_ids)
        s = res.summary
        log.info("eval on %d test questions: strict %.3f, lenient %.3f", s["questions"], s["strict_accuracy"],
                 s["lenient_accuracy"])
        return {"eval_accuracy": s["strict_accuracy"], "eval_accuracy_lenient": s["lenient_accuracy"],
                "eval_response_len": s["mean_response_tokens"], "time_eval": s["seconds"]}

    def save_checkpoint(self, step: int) -> Path:
        t0 = time.monotonic()
        state = {"config": self.requested_cfg.model_dump(mode="json"), "policy_version": self.version,
                 "pending_batch": self.source.state() if self.rank == 0 else None,
                 "no_signal": sorted(self.source.no_signal) if self.rank == 0 else None,
                 "data_cursor": {"step": step, "seed": self.cfg.data.seed, "pool": len(self.pool)},
                 "wandb_id": getattr(self.metrics, "wandb_id", None), "data_path": self.cfg.data.path}
        export = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(self.cfg.checkpoint.save_dtype,
                                                                     self.trainer.compute_dtype)
        path = checkpoint.save(self.run, step, self.trainer, self.model_dir, state, self.cfg.checkpoint.keep_last,
                               export)
        seconds = time.monotonic() - t0
        self.longest_save_s = max(self.longest_save_s, seconds)
        log.info("checkpoint %s (%.1f s)", path, seconds)
        return path

    def _finish(self, step: int, last_ckpt: Path | None, out_of_time: bool) -> None:
        if self.rank != 0 or self.start_step >= self.total_steps:
            return
        png = metrics.plot(self.run.path)
        if out_of_time:
            log.warning("time limit: trainer.time_limit_minutes=%g reached after step %d of %d; checkpoint %s; "
                        "continue with: grpo resume %s", self.cfg.trainer.time_limit_minutes, step,
                        self.total_steps, last_ckpt, self.run)
        else:
            log.info("done: %d steps; checkpoint %s; curves %s", self.total_steps, last_ckpt, png)

    def close(self) -> None:
        for closer in (self.source, self.transport, self.engine, self.metrics):
            try:
                if closer is not None:
                    closer.close()
            except Exception as e:  # noqa: BLE001 - closing must never hide the real error
                log.warning("close failed: %s", e)
        metrics.close_logging()
        if self.lock is not None:
            self.lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()


def describe_update(cfg: RunConfig) -> str:
    """What the update computes with these settings, in one line (for the log): say what runs."""
    algo, t = cfg.algorithm, cfg.trainer
    mini = (t.mini_batch_size or t.batch_size) < t.batch_size
    clip_bites = mini or algo.ppo_epochs > 1
    agg = "token-level mean (DAPO)" if algo.loss_agg == "token" else "per-sequence mean (GRPO)"
    adv = "group-normalised" if algo.adv_norm == "std" else "mean-centred (Dr.GRPO)"
    if clip_bites:
        what = (f"PPO-clip {1 - algo.clip_low:g}..{1 + algo.clip_high:g} over "
                f"{t.batch_size // (t.mini_batch_size or t.batch_size)} mini-batch(es) x {algo.ppo_epochs} epoch(s)")
    elif cfg.rollout.overlap:
        what = "policy gradient (REINFORCE; ratio 1 against the trainer's own log-probs, so the clip never engages)"
    else:
        what = "on-policy policy gradient (REINFORCE; ratio 1, so the clip never engages)"
    extra = "; one step off-policy, weighted by pi_trainer/pi_rollout" if cfg.rollout.overlap else ""
    terms = f"; KL {algo.kl_coef:g}" if algo.kl_coef else ""
    terms += f"; entropy bonus {algo.entropy_coef:g}" if algo.entropy_coef else ""
    if algo.oversample > 1:
        extra += (f"; dynamic sampling: {cfg.prompts_per_step} prompts generated, the first {t.batch_size} groups "
                  "with signal trained")
    if algo.skip_no_signal:
        extra += "; a question whose last group had no signal is swapped for one without that record"
    return f"{what}, {adv} advantages, {agg}{terms}{extra}"


def run(cfg: RunConfig, *, restart: bool = False, force: bool = False,
        scorer: Scorer | None = None) -> tuple[Path | None, bool]:
    """Train; returns (the last checkpoint, whether every step ran: False after trainer.time_limit_minutes).
    scorer: the reward (default: GSM8K's, algorithm.reward_mode); the benchmarks pass a synthetic one."""
    recipe = Recipe(cfg, restart=restart, force=force, scorer=scorer)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.close()
