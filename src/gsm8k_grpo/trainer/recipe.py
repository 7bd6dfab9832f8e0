"""The GRPO recipe: the one place that orders a step.

    batch -> rollouts -> rewards -> advantages -> update -> push -> log -> maybe eval -> maybe save

With rollout.overlap, step t+1's rollouts are generated (on rank 0, in a thread) while step t
updates, on the weights before that update; the thread is joined before the push, so every batch
comes from one weight version, one update older than the trainer (the loss corrects for it).
A checkpoint keeps that pending batch, so a resumed run trains on the same samples.

setup() builds everything from the RunConfig (or resumes it from RUN_DIR/checkpoints/latest);
train() runs the steps, and with trainer.time_limit_minutes saves and stops early when one more step
and a save would not fit; save_checkpoint() writes an atomic checkpoint. Rank 0 owns the rollout
engine and the transport; every rank trains its share of each batch (FSDP2).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist

from gsm8k_grpo import metrics as M
from gsm8k_grpo import reward as R
from gsm8k_grpo.config import ConfigError, RunConfig, config_diff, to_yaml, validate_config
from gsm8k_grpo.data import gsm8k, prompts
from gsm8k_grpo.modeling import count_params, load_config, load_tokenizer, materialize
from gsm8k_grpo.rollout import choose_engine, make_engine, sglang_installed
from gsm8k_grpo.rollout.base import EngineError, SamplingParams
from gsm8k_grpo.trainer import checkpoint as C
from gsm8k_grpo.trainer.batching import TrainSample
from gsm8k_grpo.trainer.fsdp import init_distributed
from gsm8k_grpo.trainer.loss import group_advantages, group_has_signal
from gsm8k_grpo.trainer.update import Trainer
from gsm8k_grpo.weights.base import TransportError

log = M.log
# Keys that may change between a run and its resume without --force.
RESUMABLE_CHANGES = ("logging.", "trainer.max_steps", "trainer.time_limit_minutes", "checkpoint.keep_last",
                     "rollout.server_timeout_s", "eval.every", "eval.at_end")


def comparable_config(saved: dict) -> dict:
    """A checkpoint's config with the current defaults filled in, so that a setting added to the
    package since the checkpoint was written does not count as a change on resume."""
    try:
        return validate_config(saved).model_dump(mode="json")
    except ConfigError:  # a setting since removed or renamed: compare as saved, the diff names it
        return saved


def raise_on_every_rank(err: Exception | None, world: int, bcast, kind: type[Exception], what: str) -> None:
    """Collective: rank 0's error (None elsewhere, or when all went well) reaches every rank. Rank 0
    re-raises its own; the others raise kind(f"{what} failed: ..."), so none is left waiting."""
    msg = bcast(None if err is None else f"{type(err).__name__}: {err}") if world > 1 else None
    if err is not None:
        raise err
    if msg is not None:
        raise kind(f"{what} failed: {msg}")


def push_collectively(push, tensors, version: int, world: int, bcast) -> None:
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
    raise_on_every_rank(err, world, bcast, TransportError, "the weight push on rank 0")


class ResumeError(Exception):
    """A resume that must not happen silently; str() is the message."""


# Dense bf16 matrix-product rates measured on this project's GPU machines (KINDS.md of the device
# tool: 8192^3 products through PyTorch), used as the MFU denominator.
MEASURED_BF16_FLOPS = {"H100": 798e12, "H200": 790e12}


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in MEASURED_BF16_FLOPS.items() if k in name), None)


def step_seed(seed: int, step: int) -> int:
    return (seed * 100_003 + step) % (2**31 - 1)


class Recipe:
    def __init__(self, cfg: RunConfig, *, restart: bool = False, force: bool = False):
        self.cfg, self.restart, self.force = cfg, restart, force
        self.t_start = time.monotonic()  # trainer.time_limit_minutes counts from here
        self.longest_save_s = 0.0
        self.requested_cfg = cfg  # what the user asked for: saved in checkpoints, compared on resume
        self.engine = self.transport = self.metrics = None
        self._ahead: ThreadPoolExecutor | None = None   # rollout.overlap: the thread generating the next batch
        self._pending: tuple[list[TrainSample], dict] | None = None  # its result, trained on by the next step

    # ================================================================== setup
    def setup(self) -> None:
        cfg = self.cfg
        self.device = self._device()
        self.rank, self.world = init_distributed(self.device)
        self.run_dir = cfg.run_dir
        self.resume_from = self._prepare_run_dir()
        if self.rank == 0:  # other ranks only speak up through exceptions
            M.setup_logging(self.run_dir)
        if self.rank == 0:
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))

        # cheap checks first: data and model size, before any model is built or loaded
        train = gsm8k.load_split("train", cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)
        self.pool = gsm8k.train_subset(train, cfg.data.max_train_samples, cfg.data.seed)
        self.eval_set = None
        if cfg.eval.every or cfg.eval.at_end:
            test = gsm8k.load_split("test", cfg.data.path, cfg.data.hub_name, cfg.data.hub_config)
            self.eval_set = test[: cfg.eval.samples]
        self.engine_kind = choose_engine(cfg.rollout.engine)
        self._check_cpu_size()
        if self.device.type == "cuda":  # self.cfg becomes the fitted copy; requested_cfg stays
            self.cfg = cfg = self._fit_memory()
        self.model_dir = materialize(cfg.model, self.run_dir / "base_model") if self.rank == 0 else None
        self.model_dir = self._bcast(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_dir)
        from transformers import GenerationConfig
        try:
            gen_cfg = GenerationConfig.from_pretrained(self.model_dir)
        except OSError:
            gen_cfg = None
        self.stop_ids = prompts.stop_token_ids(self.tokenizer, gen_cfg)

        spe = gsm8k.steps_per_epoch(len(self.pool), cfg.trainer.batch_size)
        self.total_steps = cfg.trainer.max_steps or spe * cfg.trainer.epochs
        self._prompt_cache: dict[int, list[int]] = {}

        self.trainer = Trainer(cfg, self.model_dir, self.device, self.total_steps, self.tokenizer.pad_token_id)
        self.n_params = sum(p.numel() for p in self.trainer.model.parameters())  # DTensor numel is global
        self.peak_flops = peak_bf16_flops(self.device)
        self.start_step, state = 0, {}
        if self.resume_from is not None:
            state = C.restore(self.resume_from, self.trainer)
            self.start_step = state["step"]
            if state.get("pending_rollout") and self.rank == 0:
                p = state["pending_rollout"]
                self._pending = ([TrainSample(**s) for s in p["samples"]], p["info"])
            log.info("resumed from %s (step %d)", self.resume_from, self.start_step)
        if self.rank == 0:
            server_gpus = self.placement.server_gpus if self.placement else None
            self.engine = make_engine(self.engine_kind, self.model_dir, cfg.rollout, self.run_dir,
                                      device=str(self.device), pad_token_id=self.tokenizer.pad_token_id,
                                      gpu_ids=server_gpus if torch.cuda.device_count() > 1 else None)
            self.transport = self._make_transport()
            self.metrics = M.Metrics(self.run_dir, f"{cfg.experiment_name}/{cfg.trial_name}", cfg.model_dump(mode="json"),
                                     cfg.logging.wandb, cfg.logging.project, cfg.logging.entity,
                                     state.get("wandb_id"), self.start_step, self.total_steps)
            if self.metrics.last_logged_step < self.start_step and state.get("record"):
                self.metrics.log(self.start_step, state["record"])  # killed between the save and its log line
        if self.start_step > 0:  # the engine starts from the base weights: bring it to the checkpoint's
            self._push(self.start_step)
        started = getattr(self.engine, "startup_s", None)
        log.info("run %s: %d steps of %d prompts x %d samples, engine %s%s, transport %s, device %s",
                 self.run_dir, self.total_steps, cfg.trainer.batch_size, cfg.rollout.n, self.engine_kind,
                 f" (healthy after {started:.0f} s)" if started is not None else "",
                 getattr(self.transport, "name", "-"), self.device)

    def _device(self) -> torch.device:
        """The trainer's device, from the GPU placement (trainer GPUs first, SGLang's after)."""
        import os

        self.placement = None
        want = self.cfg.trainer.device
        if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError("trainer.device=cuda but no CUDA GPU is visible; use trainer.device=cpu")
        from gsm8k_grpo.weights.detect import plan

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
        return torch.device("cuda", index)

    def _bcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _prepare_run_dir(self) -> Path | None:
        """Decide fresh / resume / restart; refuse a resume whose config changed (unless --force)."""
        run_dir = self.run_dir
        found = C.latest(run_dir) if run_dir.exists() else None
        if self.rank == 0 and self.restart and run_dir.exists():
            aside = run_dir.with_name(f"{run_dir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
            run_dir.rename(aside)
            print(f"moved the old run dir aside: {aside}")
            found = None
        if self.world > 1:
            dist.barrier()
        found = None if self.restart else found
        run_dir.mkdir(parents=True, exist_ok=True)
        if found is None:
            if self.rank == 0:
                for stale in ("metrics.jsonl",):
                    (run_dir / stale).unlink(missing_ok=True)
            return None
        old = comparable_config(C.load_state(found).get("config", {}))
        diff = [d for d in config_diff(old, self.cfg.model_dump(mode="json"))
                if not d.startswith(RESUMABLE_CHANGES)]
        if diff and not self.force:
            raise ResumeError(f"resume refused: the config differs from {found}: " + "; ".join(diff[:6])
                              + (" ..." if len(diff) > 6 else "") + ". Pass --force to resume anyway, "
                              "--restart to start over, or another trial_name.")
        return found

    def _check_cpu_size(self) -> None:
        if self.engine_kind != "hf" or self.device.type == "cuda" or self.cfg.rollout.engine != "auto":
            return
        n = count_params(load_config(self.cfg.model.path, self.cfg.model.config_overrides))
        if n > self.cfg.model.max_params_on_cpu:
            raise ConfigError(
                f"model {self.cfg.model.path} has {n / 1e6:.0f}M parameters and no GPU is visible: the CPU engine "
                f"would take hours. Run on a GPU host, or set rollout.engine=hf explicitly to insist")

    def _fit_memory(self) -> RunConfig:
        """Lower unpinned memory settings until trainer (+ SGLang on the same GPU) fit the card (memory.fit)."""
        from gsm8k_grpo import memory

        mc = load_config(self.cfg.model.path, self.cfg.model.config_overrides).to_dict()
        p = self.placement
        shared = self.engine_kind == "sglang" and p is not None and self.device.index in p.server_gpus
        card = torch.cuda.get_device_properties(self.device).total_memory
        bf16 = self.cfg.trainer.dtype != "fp32"
        cfg, changes, est = memory.fit(mc, self.cfg, card, shared, self.world, bf16)  # state: 1/world per rank
        cfg, changes, est = self._bcast((cfg, changes, est))  # every rank takes rank 0's plan
        if changes:
            log.info("memory plan for this %.0f GiB GPU: %s", card / memory.GIB, "; ".join(changes))
        if est.total > memory.FIT_SHARE * card:
            log.warning("memory: %s; it may not fit. Lower rollout.mem_fraction / trainer.micro_batch_tokens, "
                        "set trainer.grad_checkpointing=true, or use two GPUs", memory.describe(est, card))
        return cfg

    def _make_transport(self):
        from gsm8k_grpo.weights.detect import make_transport

        kind = self.placement.transport if self.placement else self.cfg.weights.transport
        kind = "disk" if kind == "auto" else kind
        return make_transport(kind, self.engine, self.model_dir, self.run_dir, self.cfg.weights.bucket_mb,
                              self.cfg.weights.disk_dir)

    # ================================================================== train
    def train(self) -> tuple[Path | None, bool]:
        """Run the remaining steps; returns (the last checkpoint, whether the run is complete)."""
        last_ckpt = None
        step = self.start_step
        out_of_time = False
        for step in range(self.start_step + 1, self.total_steps + 1):
            t0 = time.monotonic()
            record = self.step(step)
            last = step == self.total_steps
            if self.cfg.eval.every and step % self.cfg.eval.every == 0 and not last:
                record.update(self.evaluate())
            if last and self.cfg.eval.at_end and self.eval_set:
                record.update(self.evaluate())
            out_of_time = not last and self._out_of_time(time.monotonic() - t0)
            if last or out_of_time or (self.cfg.checkpoint.every and step % self.cfg.checkpoint.every == 0):
                record["time_save"], last_ckpt = self.save_checkpoint(step, record)
            if self.rank == 0:
                self.metrics.log(step, record)
                if step % self.cfg.logging.console_every == 0 or last or out_of_time:
                    log.info(self.metrics.progress_line(step, record))
            if out_of_time:
                break
        if self.rank == 0 and self.start_step < self.total_steps:
            png = M.plot(self.run_dir)
            if out_of_time:
                log.warning("time limit: trainer.time_limit_minutes=%g reached after step %d of %d; checkpoint %s; "
                            "continue with: grpo resume %s", self.cfg.trainer.time_limit_minutes, step,
                            self.total_steps, last_ckpt, self.run_dir)
            else:
                log.info("done: %d steps; checkpoint %s; curves %s", self.total_steps, last_ckpt, png)
        return last_ckpt or C.latest(self.run_dir), not out_of_time

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

    def _prompt(self, p: gsm8k.Problem) -> list[int]:
        if p.idx not in self._prompt_cache:
            d = self.cfg.data
            self._prompt_cache[p.idx] = prompts.encode(self.tokenizer, p.question, d.instruction, d.system_prompt)
        return self._prompt_cache[p.idx]

    def rollout(self, step: int) -> tuple[list[TrainSample], dict]:
        """Rank 0: generate, score, compute advantages, filter groups -> training samples + metrics."""
        cfg, a = self.cfg, self.cfg.algorithm
        problems = gsm8k.batch_for_step(self.pool, step - 1, cfg.trainer.batch_size, cfg.data.seed)
        prompt_ids = [self._prompt(p) for p in problems]
        params = SamplingParams(cfg.rollout.n, cfg.rollout.temperature, cfg.rollout.top_p,
                                cfg.rollout.max_new_tokens, tuple(self.stop_ids), step_seed(cfg.seed, step))
        version = self.engine.weight_version  # updates in the weights that generate (push v = after step v)
        t0 = time.time()
        groups = self.engine.generate(prompt_ids, params)
        t1 = time.time()
        scores = [[self._score(c.token_ids, p.gold) for c in g] for p, g in zip(problems, groups)]
        rewards = torch.tensor([[s.reward for s in g] for g in scores], dtype=torch.float32)   # [B, G]
        adv = group_advantages(rewards, a.adv_norm)                                              # [B, G]
        keep = group_has_signal(rewards) if a.filter_groups else torch.ones(len(groups), dtype=torch.bool)
        samples = [TrainSample(prompt_ids[b], c.token_ids, float(adv[b, k]), c.logprobs)
                   for b, g in enumerate(groups) if keep[b] for k, c in enumerate(g)]
        comps = [c for g in groups for c in g]
        lens = [len(c.token_ids) for c in comps]
        flat = [s for g in scores for s in g]
        stale = [c for c in comps if c.weight_version is not None and c.weight_version != self.engine.weight_version]
        info = {
            "reward_mean": float(rewards.mean()), "accuracy": sum(s.correct for s in flat) / len(flat),
            "format_rate": sum(s.has_format for s in flat) / len(flat),
            "response_len_mean": sum(lens) / len(lens), "response_len_max": max(lens),
            "truncated_frac": sum(c.finish_reason == "length" for c in comps) / len(comps),
            "filtered_group_frac": 1.0 - float(keep.float().mean()),
            "time_generate": t1 - t0, "time_reward": time.time() - t1,
            "gen_tokens_per_s": sum(lens) / max(t1 - t0, 1e-9), "stale_samples": len(stale),
            "policy_lag": (step - 1) - version,  # trainer updates the generating weights lack: 0 on-policy
        }
        return samples, info

    def _score(self, token_ids: list[int], gold: str) -> R.RewardResult:
        a = self.cfg.algorithm
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        if a.reward_mode == "synthetic":  # benchmarks on random weights: varied, deterministic, meaningless
            r = zlib.crc32(str(token_ids).encode()) & 1
            return R.RewardResult(float(r), bool(r), R.has_boxed(text), None)
        return R.score(text, gold, a.reward_mode, a.format_bonus)

    def step(self, step: int) -> dict:
        t0 = time.time()
        samples, info = None, None
        if self.rank == 0:
            samples, info = self._pending or self.rollout(step)
            self._pending = None
        samples, info = self._bcast((samples, info))
        ahead = self._rollout_ahead(step)
        t1 = time.time()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        saver = self.cfg.rollout.enable_memory_saver and self.engine_kind == "sglang"  # same on every rank
        if saver and self.rank == 0:  # the trainer gets SGLang's memory while it updates
            self.engine.release_memory()
        if samples:
            stats = self.trainer.update(samples, off_policy=info["policy_lag"] > 0)
        else:  # every group filtered out: nothing to learn from this batch
            stats = {"samples_trained": 0, "tokens_trained": 0, "optimizer_steps": 0, "nonfinite_steps": 0,
                     "loss": 0.0, "grad_norm": 0.0, "clip_frac": 0.0, "kl": 0.0}
        t2 = time.time()
        detail = stats.pop("nonfinite_detail", "")  # a log line, not a metric
        info.update(stats, time_update=t2 - t1)
        if samples and stats.get("time_train"):
            flops = 6 * self.n_params * stats["seq_tokens"]  # every rank gets the whole batch list
            info["train_tokens_per_s"] = stats["seq_tokens"] / stats["time_train"]
            if self.peak_flops:
                info["mfu"] = flops / stats["time_train"] / (self.peak_flops * self.world)
        if self.device.type == "cuda":
            info["peak_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if stats["nonfinite_steps"]:
            log.warning("step %d: non-finite loss or grad norm in %d optimizer step(s): skipped (%s)",
                        step, stats["nonfinite_steps"], detail)
        if saver and self.rank == 0:  # resumed weights are garbage: push even when nothing changed
            self.engine.resume_memory()
        t3 = time.time()
        self._join_ahead(ahead)  # before the push: the next batch must come from one weight version
        if ahead is not None:
            info["time_wait_rollout"] = time.time() - t3
        info["time_push"] = self._push(step) if stats["optimizer_steps"] or saver else 0.0
        info["time_step"] = time.time() - t0
        return info

    def _rollout_ahead(self, step: int) -> Future | None:
        """rollout.overlap, rank 0: start generating step+1's batch now, on the weights before this update."""
        if not (self.cfg.rollout.overlap and self.rank == 0 and step < self.total_steps):
            return None
        if self._ahead is None:
            self._ahead = ThreadPoolExecutor(1, thread_name_prefix="rollout-ahead")
        return self._ahead.submit(self.rollout, step + 1)

    def _join_ahead(self, ahead: Future | None) -> None:
        """Wait for the overlapped rollout. If it failed on rank 0, every rank raises (none is left
        waiting in the push's collectives)."""
        if not self.cfg.rollout.overlap:
            return
        err = None
        if ahead is not None:
            try:
                self._pending = ahead.result()
            except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks are told)
                err = e
        raise_on_every_rank(err, self.world, self._bcast, EngineError, "rank 0's overlapped rollout")

    def _push(self, version: int) -> float:
        t0 = time.time()
        dtype = getattr(self.engine, "dtype", None) if self.rank == 0 else None
        dtype = self._bcast(dtype) or torch.bfloat16
        push = self.transport.push if self.rank == 0 else None
        push_collectively(push, self.trainer.named_tensors(dtype), version, self.world, self._bcast)
        return time.time() - t0

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

    def save_checkpoint(self, step: int, record: dict | None = None) -> tuple[float, Path]:
        """-> (seconds, dir). The state keeps the step's metrics record (all but time_save): a kill
        after the save but before the record reaches metrics.jsonl must not lose the step's line."""
        t0 = time.time()
        pending = None
        if self._pending is not None:  # rollout.overlap: the next step's batch, already generated
            samples, info = self._pending
            pending = {"samples": [dataclasses.asdict(s) for s in samples], "info": info}
        state = {"config": self.requested_cfg.model_dump(mode="json"), "pending_rollout": pending,
                 "data_cursor": {"step": step, "seed": self.cfg.data.seed, "pool": len(self.pool)},
                 "wandb_id": getattr(self.metrics, "wandb_id", None), "base_model": self.model_dir,
                 "record": record}
        dt = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(self.cfg.checkpoint.save_dtype,
                                                                 self.trainer.compute_dtype)
        path = C.save(self.run_dir, step, self.trainer, self.model_dir, state, self.cfg.checkpoint.keep_last, dt)
        secs = time.time() - t0
        self.longest_save_s = max(self.longest_save_s, secs)
        return secs, path

    def close(self) -> None:
        if self._ahead is not None:  # a rollout still in flight (after an error) ends with the engine below
            self._ahead.shutdown(wait=False, cancel_futures=True)
        for closer in (self.transport, self.engine, self.metrics):
            try:
                if closer is not None:
                    closer.close()
            except Exception as e:  # closing must never hide the real error
                log.warning("close failed: %s", e)
        M.close_logging()
        if dist.is_initialized():
            dist.destroy_process_group()


def run(cfg: RunConfig, *, restart: bool = False, force: bool = False) -> tuple[Path | None, bool]:
    """Train; returns (the last checkpoint, whether every step ran: False after trainer.time_limit_minutes)."""
    recipe = Recipe(cfg, restart=restart, force=force)
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.close()


def load_run_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run dir (no config.yaml); start one with grpo train")
    from gsm8k_grpo.config import _read_yaml

    return validate_config(_read_yaml(path, "run config"))


