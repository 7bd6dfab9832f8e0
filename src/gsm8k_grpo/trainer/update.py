"""The policy update: a per-token clipped policy-gradient loss over mini-batches of whole groups.

What runs with the shipped settings (one PPO epoch, one mini-batch per step): the old log-probs are
the training forward's own, detached. So ratio = exp(logp - old_logp) = 1 exactly, the clip never
engages (clip_frac 0), and the gradient is REINFORCE with group-normalised advantages, averaged over
all completion tokens of the batch (DAPO's token-level mean):
    grad = -(1 / N_tokens) * sum_i A_i * sum_t grad log pi(y_it)
(with algorithm.entropy_coef > 0 also - entropy_coef * (1 / N_tokens) * sum_it grad H_it, the policy's
entropy at each token; with algorithm.kl_coef > 0 the k3 KL term's gradient)
With the SGLang engine rollout.overlap is on by default (RunConfig.with_engine; not with the memory saver): every
batch after the first was generated during the previous update, one update old, and each token's
policy-gradient loss above is also weighted by min(pi_trainer / pi_rollout, algorithm.offpolicy_weight_cap)
(decoupled PPO, trainer/loss.py; the KL and entropy terms are not). With the in-process HF engine (the CPU path) or rollout.overlap=false the batch
comes from the trainer's current weights and there is no such weight.
The clip engages only when the weights move between taking old_logp and the loss: from the second
mini-batch of a step (trainer.mini_batch_size < trainer.batch_size) or in a second epoch
(algorithm.ppo_epochs > 1).

update(samples):
  1. old_logp: while the weights cannot change before the loss (one epoch, one mini-batch), the
     training forward's own log-probs; otherwise a separate no-grad pass over every sample first.
  2. for each epoch, for each mini-batch: micro_step() on each of this rank's micro-batches
     (forward, loss, backward), then optimizer_step() (clip the grads; step AdamW only when the
     grad norm is finite, else skip the step and say which tensors were not finite).
Each rank trains samples rank::world of every mini-batch; all ranks run the same number of
micro-batches (empty ones padded with a zero-weight dummy) so FSDP collectives stay matched.
Statistics are summed per rank in UpdateStats and all-reduced once, at the end. The host waits for
the device once per optimizer step, to read the grad norm (and, with it, the micro-batches' statistics,
which stay on the device until then); with several ranks also for the micro-batch count; on a GPU
also once after a separate old-log-prob pass, to time it. The batches go to a GPU from pinned memory,
without blocking.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby

import torch
import torch.distributed as dist

from gsm8k_grpo.config import RunConfig
from gsm8k_grpo.trainer import loss
from gsm8k_grpo.trainer.batching import MicroBatch, TrainSample, collate, plan_micro_batches, shard_for_rank
from gsm8k_grpo.trainer.fsdp import PolicyModel, full_named_tensors, wrap

log = logging.getLogger("gsm8k_grpo")


def lr_lambda(schedule: str, warmup: int, total: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * frac)) if schedule == "cosine" else 1.0 - frac
    return factor


# UpdateStats fields that are sums over this rank's micro-batches (all-reduced over ranks once)
_SUMMED = ("loss", "tokens", "clipped_tokens", "kl_sum", "behaviour_weight_sum", "capped_tokens", "entropy_sum",
           "mismatch_sum", "diagnostic_tokens")


@dataclass
class UpdateStats:
    """One update's statistics. The _SUMMED fields add up over micro-batches and ranks; the rest are
    the same on every rank."""

    loss: float = 0.0                    # sum of the mini-batch losses (one per optimizer step)
    tokens: float = 0.0                  # completion tokens in the loss, every epoch counted
    clipped_tokens: float = 0.0          # tokens where the clip was active
    kl_sum: float = 0.0
    behaviour_weight_sum: float = 0.0    # off-policy batches: sum of min(pi_trainer / pi_rollout, cap)
    capped_tokens: float = 0.0
    entropy_sum: float = 0.0             # policy entropy of each sample's tokens, measured once
    mismatch_sum: float = 0.0            # |trainer logp - engine logp|, measured once
    diagnostic_tokens: float = 0.0
    optimizer_steps: int = 0
    nonfinite_steps: int = 0
    grad_norm: float = 0.0               # of the last optimizer step
    samples: int = 0
    seq_tokens: int = 0                  # prompt + completion tokens through the model (every epoch)
    old_logprob_pass: bool = False
    off_policy: bool = False
    lr: float = 0.0
    time_logprob: float = 0.0
    time_train: float = 0.0
    nonfinite_detail: str = ""           # for the log line of a skipped step, not a metric
    first_bad_micro_batch: MicroBatch | None = field(default=None, repr=False)
    # (field, 0-d device tensor, the micro-batch of a loss) to add at the next settle()
    pending: list[tuple[str, torch.Tensor, MicroBatch | None]] = field(default_factory=list, repr=False)

    def add(self, name: str, value: torch.Tensor, loss_of: MicroBatch | None = None) -> None:
        """Add a 0-d device tensor to the summed field `name` at the next settle(): reading it now
        would make the host wait for the device once per micro-batch."""
        self.pending.append((name, value, loss_of))

    def settle(self, *also: torch.Tensor) -> list[float]:
        """Add the pending values to their fields, in the order they came (the same sums as reading each
        at once) and note the first non-finite loss's micro-batch; -> the values of `also`. One read."""
        # on the pending values' device: a norm over no gradients is a CPU tensor
        device = self.pending[0][1].device if self.pending else None
        values = torch.stack([v.double() for _, v, _ in self.pending]
                             + [v.double().to(device) if device is not None else v.double() for v in also]).tolist()
        for (name, _, loss_of), value in zip(self.pending, values):
            setattr(self, name, getattr(self, name) + value)
            if loss_of is not None and not math.isfinite(value) and self.first_bad_micro_batch is None:
                self.first_bad_micro_batch = loss_of
        self.pending.clear()
        return values[len(values) - len(also):]

    def all_reduce(self, device: torch.device, world: int) -> None:
        if world == 1:
            return
        values = torch.tensor([getattr(self, name) for name in _SUMMED], dtype=torch.float64, device=device)
        dist.all_reduce(values)
        for name, value in zip(_SUMMED, values.tolist()):
            setattr(self, name, value)

    def metrics(self) -> dict:
        """The metrics line's fields of this update."""
        steps = max(1, self.optimizer_steps + self.nonfinite_steps)
        out = {
            "loss": self.loss / steps, "grad_norm": self.grad_norm, "clip_frac": self.clipped_tokens / max(self.tokens, 1),
            "kl": self.kl_sum / max(self.tokens, 1), "entropy": self.entropy_sum / max(self.diagnostic_tokens, 1),
            "logprob_mismatch": self.mismatch_sum / max(self.diagnostic_tokens, 1),
            "optimizer_steps": self.optimizer_steps, "nonfinite_steps": self.nonfinite_steps,
            "samples_trained": self.samples, "tokens_trained": int(self.diagnostic_tokens), "lr": self.lr,
            "time_logprob": self.time_logprob, "time_train": self.time_train, "old_logprob_pass": self.old_logprob_pass,
        }
        if self.off_policy:
            out.update(offpolicy_weight_mean=self.behaviour_weight_sum / max(self.tokens, 1),
                       offpolicy_capped_frac=self.capped_tokens / max(self.tokens, 1))
        return out


@dataclass(frozen=True)
class MiniBatchTotals:
    """What token_weights needs of the whole mini-batch (all ranks)."""

    tokens: int
    samples: int


class Trainer:
    def __init__(self, cfg: RunConfig, model_dir: str, device: torch.device, total_steps: int, pad_id: int):
        from gsm8k_grpo.modeling import load_causal_lm

        self.cfg, self.device, self.pad_id = cfg, device, pad_id
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        bf16 = cfg.trainer.dtype == "bf16" or (cfg.trainer.dtype == "auto" and device.type == "cuda")
        self.compute_dtype = torch.bfloat16 if bf16 else torch.float32
        hf = load_causal_lm(model_dir, dtype=torch.float32, device=device)
        hf.config.use_cache = False
        self.lora = cfg.lora if cfg.lora.rank else None
        if self.lora:  # adapters on the target layers; every other weight frozen (trainer/lora.py)
            from gsm8k_grpo.trainer.lora import add_adapters

            hf = add_adapters(hf, self.lora, cfg.model.init_seed + cfg.seed)
        if cfg.trainer.grad_checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.hf_config = hf.config
        # The forward only: FSDP's hooks and the parameter names stay as they are. With use_cache off
        # (above) all layers share one graph; with a KV cache each layer recompiled, and dynamo's
        # limit of 8 left the rest eager. New lengths and row counts reuse the graphs: one for >= 2 rows
        # and one for a single row (dynamo specialises 1), times the kinds of call: training, the
        # no-grad old-logprob pass, and with LoRA layer 0's training (its input needs no grad). 2 by
        # default, 6 at most (test_compiled_layers_do_not_recompile_per_length counts the 2).
        # Not with gradient checkpointing: transformers checkpoints in the class-level forward of the
        # outermost layer class (FSDP2's subclass), and an instance's compiled forward bypasses it, so
        # the layers would keep their activations unnoticed (test_compile_leaves_checkpointing_on).
        if cfg.trainer.compile and cfg.trainer.grad_checkpointing:
            log.warning("trainer.compile is off for this run: trainer.grad_checkpointing is on (set by you or "
                        "by the memory plan), and the compiled layers would skip its recomputation")
        elif cfg.trainer.compile:
            for layer in hf.model.layers:
                layer.forward = torch.compile(layer.forward, dynamic=True)
        self.model = wrap(PolicyModel(hf, cfg.trainer.logprob_chunk, cfg.rollout.temperature), self.compute_dtype)
        self.ref = None
        if cfg.algorithm.kl_coef > 0:  # a frozen copy of the initial policy, only when KL is on
            ref_hf = load_causal_lm(model_dir, dtype=self.compute_dtype, device=device).eval()
            self.ref = PolicyModel(ref_hf, cfg.trainer.logprob_chunk, cfg.rollout.temperature).requires_grad_(False)
        opt = cfg.optimizer
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps,
                                           weight_decay=opt.weight_decay)
        mini_batches = cfg.trainer.batch_size // (cfg.trainer.mini_batch_size or cfg.trainer.batch_size)
        total_optimizer_steps = total_steps * mini_batches * cfg.algorithm.ppo_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(opt.schedule, opt.warmup_steps, total_optimizer_steps))

    # ------------------------------------------------------------------ batching
    def _micro_batches(self, samples: list[TrainSample]) -> list[MicroBatch | None]:
        """This rank's micro-batches of `samples`, padded with None to the same count on every rank."""
        mine = shard_for_rank(len(samples), self.rank, self.world)
        groups = plan_micro_batches([samples[i].length for i in mine], self.cfg.trainer.micro_batch_tokens)
        batches: list[MicroBatch | None] = [collate(samples, [mine[j] for j in g], self.pad_id) for g in groups]
        if self.world == 1:  # no other rank to match
            return batches
        count = torch.tensor([len(batches)], device=self.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        return batches + [None] * (int(count) - len(batches))

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        """A CPU tensor on the training device; to a GPU through pinned memory, so that the copy does
        not make the host wait for the device (on a CPU: t itself)."""
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def _inputs(self, mb: MicroBatch | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input_ids, positions, targets) of a micro-batch on the device; None: the dummy for collective
        matching (one token, weight 0)."""
        if mb is None:
            ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=self.device)
            return ids, torch.zeros(1, dtype=torch.long, device=self.device), ids[0, :1]
        return tuple(self._to_device(t) for t in (mb.input_ids, mb.positions, mb.targets))

    def _forward(self, model, mb: MicroBatch | None, with_entropy: bool = False, entropy_grad: bool = False,
                 inputs: tuple | None = None):
        """(log-probs, entropy) of a micro-batch; inputs: its _inputs(), when already on the device."""
        return model(*(inputs or self._inputs(mb)), with_entropy, entropy_grad)

    @staticmethod
    def _add_diagnostics(stats: UpdateStats, mb: MicroBatch, logp: torch.Tensor, entropy: torch.Tensor,
                         engine_logp: torch.Tensor) -> None:
        stats.add("entropy_sum", entropy.detach().sum())
        stats.add("mismatch_sum", (logp.detach().float() - engine_logp).abs().sum())
        stats.diagnostic_tokens += mb.n_tokens

    @torch.no_grad()
    def old_logprobs(self, samples: list[TrainSample], stats: UpdateStats) -> dict[int, torch.Tensor]:
        """Per-sample log-probs under the current weights (no grad); adds the diagnostics to stats."""
        old: dict[int, torch.Tensor] = {}
        for mb in self._micro_batches(samples):
            logp, entropy = self._forward(self.model, mb, with_entropy=True)
            if mb is None:
                continue
            self._add_diagnostics(stats, mb, logp, entropy, self._to_device(mb.engine_logprobs))
            for i, piece in zip(mb.index, torch.split(logp.float(), mb.seq_lens.tolist())):
                old[i] = piece  # stays on the device: the loss reads it there
        return old

    # ------------------------------------------------------------------ the update
    def update(self, samples: list[TrainSample], off_policy: bool = False, *,
               separate_old_pass: bool = False) -> UpdateStats:
        """off_policy: the samples came from older weights than the trainer's (rollout.overlap).
        separate_old_pass: take old_logp in its own pass even where the training forward's would do
        (the test oracle for that reuse)."""
        algo = self.cfg.algorithm
        self.model.train()
        t0 = time.perf_counter()
        mini_size = (self.cfg.trainer.mini_batch_size or self.cfg.trainer.batch_size) * self.cfg.rollout.n
        reuse = algo.ppo_epochs == 1 and mini_size >= len(samples) and not separate_old_pass
        stats = UpdateStats(samples=len(samples), old_logprob_pass=not reuse, off_policy=off_policy,
                            lr=self.scheduler.get_last_lr()[0])
        old = {} if reuse else self.old_logprobs(samples, stats)
        if not reuse and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the pass queues its work without waiting: time it done
        stats.time_logprob = time.perf_counter() - t0
        for _ in range(algo.ppo_epochs):
            for start in range(0, len(samples), mini_size):
                mini = samples[start:start + mini_size]
                totals = MiniBatchTotals(sum(len(s.completion_ids) for s in mini), len(mini))
                for mb in self._micro_batches(mini):
                    old_lp = None if reuse or mb is None else torch.cat([old[start + i] for i in mb.index])
                    self.micro_step(mb, old_lp, totals, off_policy, stats, diagnostics=reuse)
                self.optimizer_step(stats)
                stats.seq_tokens += sum(s.length for s in mini)
        stats.all_reduce(self.device, self.world)
        stats.time_train = time.perf_counter() - t0 - stats.time_logprob
        return stats

    def micro_step(self, mb: MicroBatch | None, old_lp: torch.Tensor | None, totals: MiniBatchTotals,
                   off_policy: bool, stats: UpdateStats, diagnostics: bool = False) -> None:
        """Forward, loss and backward of one micro-batch; old_lp None = this forward's own, detached."""
        algo = self.cfg.algorithm
        bonus = algo.entropy_coef > 0
        inputs = self._inputs(mb)
        logp, entropy = self._forward(self.model, mb, with_entropy=diagnostics, entropy_grad=bonus, inputs=inputs)
        if mb is None:
            (logp.sum() * 0.0).backward()  # the collectives of a real micro-batch, no gradient
            return
        if old_lp is None:
            old_lp = logp.detach()
        engine_logp = self._to_device(mb.engine_logprobs) if diagnostics or off_policy else None
        if diagnostics:
            self._add_diagnostics(stats, mb, logp, entropy, engine_logp)
        advantages = self._to_device(mb.advantages)
        token_loss, clipped = loss.clipped_pg_loss(logp, old_lp, advantages, algo.clip_low, algo.clip_high)
        if off_policy:
            weight = loss.behaviour_weights(old_lp, engine_logp, algo.offpolicy_weight_cap)
            token_loss = token_loss * weight
            stats.add("behaviour_weight_sum", weight.sum())
            stats.add("capped_tokens", (weight >= algo.offpolicy_weight_cap).sum())
        if self.ref is not None:
            with torch.no_grad():
                ref_lp = self._forward(self.ref, mb, inputs=inputs)[0]  # the same batch, already on the device
            kl = loss.kl_k3(logp, ref_lp)
            token_loss = token_loss + algo.kl_coef * kl
            stats.add("kl_sum", kl.detach().sum())
        if bonus:  # the entropy term, with its gradient (logprobs.ChunkLogprob)
            token_loss = token_loss - algo.entropy_coef * entropy
        weights = loss.token_weights(mb.seq_lens, algo.loss_agg, totals.tokens, totals.samples)
        mb_loss = (token_loss * self._to_device(weights)).sum()
        (mb_loss * self.world).backward()  # FSDP averages gradients over ranks; the loss is a sum over them
        stats.add("loss", mb_loss.detach(), loss_of=mb)
        stats.add("clipped_tokens", clipped.sum())
        stats.tokens += mb.n_tokens

    def optimizer_step(self, stats: UpdateStats) -> bool:
        """Clip and apply the accumulated gradients when their norm is finite; -> whether it stepped."""
        params = self.trainable
        # get_total_norm, then clip: a non-finite norm leaves the grads readable for the log line
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        # the step's one wait for the device: the norm (global over ranks) decides the step, and the
        # micro-batches' statistics come with it
        [grad_norm] = stats.settle(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        stepped = math.isfinite(grad_norm)
        if stepped:
            torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optimizer.max_grad_norm, norm)
            self.optimizer.step()
            self.scheduler.step()
            stats.optimizer_steps += 1
        else:
            stats.nonfinite_steps += 1
            stats.nonfinite_detail = self._nonfinite_detail(stats.first_bad_micro_batch)
        self.optimizer.zero_grad(set_to_none=True)
        stats.grad_norm = grad_norm
        return stepped

    def _nonfinite_detail(self, bad_mb: MicroBatch | None) -> str:
        """Where a skipped optimizer step went non-finite (this rank's view), for the log."""
        every = [n.removeprefix("hf.") for n, _ in self.model.named_parameters()]
        named = [(i, n.removeprefix("hf.")) for i, (n, p) in enumerate(self.model.named_parameters())
                 if p.grad is not None
                 and not bool(torch.isfinite(p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad).all())]
        bad = [n for _, n in named]
        detail = f"non-finite grads in {len(bad)} tensor(s)"
        if bad:
            # backward runs from the output down, so the last bad tensor in parameter order is the one
            # nearest where the non-finite values were born
            run = "a contiguous run" if named[-1][0] - named[0][0] == len(named) - 1 else "not contiguous"
            detail += f" ({describe_tensors(every, bad)}; last {bad[-1]}; {run} in parameter order)"
        if bad_mb is not None:
            detail += (f"; first non-finite micro-batch: {len(bad_mb.index)} samples, completion tokens "
                       f"{bad_mb.seq_lens.tolist()[:8]}, advantages {bad_mb.advantages.unique().tolist()[:4]}")
        return detail

    def named_tensors(self, dtype: torch.dtype | None = None):
        """(HF name, full tensor) of the policy's weights, LoRA adapters merged: what the engine serves
        and a checkpoint's model/ holds. A collective: every rank iterates."""
        if not self.lora:
            return full_named_tensors(self.model, dtype)
        from gsm8k_grpo.trainer.lora import merged, scaling

        pairs = merged(full_named_tensors(self.model), scaling(self.lora))
        return ((n, t.to(dtype) if dtype is not None else t) for n, t in pairs)

    def adapter_tensors(self):
        """(name, full tensor) of the LoRA adapters only (a collective)."""
        from gsm8k_grpo.trainer.lora import is_adapter

        return full_named_tensors(self.model, keep=is_adapter)


_LAYER = re.compile(r"^.*\.layers\.(\d+)\.(.+)$")


def describe_tensors(every: list[str], bad: list[str]) -> str:
    """`bad` (a subset of `every`, both in parameter order) in a few words, whole decoder layers as ranges:
    'model.embed_tokens.weight; all of layers 0-7; layer 8: self_attn.q_proj.weight, input_layernorm.weight'."""
    def key(name: str) -> int | str:  # a decoder layer's number, or the name itself
        m = _LAYER.match(name)
        return int(m.group(1)) if m else name

    size = Counter(key(n) for n in every)
    parts: list[str | list[int]] = []  # names, partial layers, and [first, last] runs of whole layers
    for k, names in groupby(bad, key=key):
        names = list(names)
        if isinstance(k, str):
            parts.append(k)
        elif len(names) < size[k]:
            parts.append(f"layer {k}: " + ", ".join(_LAYER.match(n).group(2) for n in names))
        elif parts and isinstance(parts[-1], list) and parts[-1][1] == k - 1:
            parts[-1][1] = k
        else:
            parts.append([k, k])
    return "; ".join(p if isinstance(p, str) else f"all of layer {p[0]}" if p[0] == p[1]
                     else f"all of layers {p[0]}-{p[1]}" for p in parts)
