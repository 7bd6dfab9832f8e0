"""The policy update: old log-probs once, then clipped policy-gradient steps over mini-batches.

update(samples):
  1. old_logp <- policy log-probs of every completion token (no grad), entropy, |old - engine|.
     On-policy with one PPO epoch and one mini-batch, the weights cannot change before the loss
     is taken, so old_logp is the training forward's own log-probs, detached (as TRL does):
     the same numbers without a second forward pass.
     Off-policy samples (rollout.overlap) weight each token's loss by min(pi_old / pi_engine, cap):
     decoupled PPO, with old_logp as the proximal policy (trainer/loss.py).
  2. for each PPO epoch, for each mini-batch (whole groups): for each micro-batch on this rank,
     loss = sum(w_t * l_t) * world (FSDP averages grads over ranks) -> backward; then clip
     grads, and step AdamW only when loss and grad norm are finite.
Each rank trains on samples rank::world of every mini-batch; all ranks run the same number of
micro-batches (empty ones padded with a zero-weight dummy) so FSDP collectives stay matched.
"""

from __future__ import annotations

import math
import re
import time
from collections import Counter
from itertools import groupby

import torch
import torch.distributed as dist

from gsm8k_grpo.config import RunConfig
from gsm8k_grpo.trainer import loss as L
from gsm8k_grpo.trainer.batching import MicroBatch, TrainSample, collate, plan_micro_batches, shard_for_rank
from gsm8k_grpo.trainer.fsdp import PolicyModel, full_named_tensors, wrap


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant" or total <= warmup:
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.5 * (1 + math.cos(math.pi * frac)) if schedule == "cosine" else 1.0 - frac
    return f


class Trainer:
    def __init__(self, cfg: RunConfig, model_dir: str, device: torch.device, total_steps: int, pad_id: int):
        from gsm8k_grpo.modeling import load_causal_lm

        self.cfg, self.device, self.pad_id = cfg, device, pad_id
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.compute_dtype = torch.bfloat16 if (cfg.trainer.dtype == "bf16" or
                                                (cfg.trainer.dtype == "auto" and device.type == "cuda")) else torch.float32
        hf = load_causal_lm(model_dir, dtype=torch.float32, device=device)
        hf.config.use_cache = False
        if cfg.trainer.grad_checkpointing:
            hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.hf_config = hf.config
        # The forward only: FSDP's hooks and the parameter names stay as they are. With use_cache off
        # (above) all layers share one graph; with a KV cache each layer recompiled, and dynamo's
        # limit of 8 left the rest eager.
        if cfg.trainer.compile:
            for layer in hf.model.layers:
                layer.forward = torch.compile(layer.forward, dynamic=True)
        self.model = wrap(PolicyModel(hf, cfg.trainer.logprob_chunk, cfg.rollout.temperature,
                                      cfg.trainer.logprob_impl), device,
                          self.compute_dtype)
        self.ref = None
        if cfg.algorithm.kl_coef > 0:  # a frozen copy of the initial policy, only when KL is on
            ref_hf = load_causal_lm(model_dir, dtype=self.compute_dtype, device=device).eval()
            self.ref = PolicyModel(ref_hf, cfg.trainer.logprob_chunk, cfg.rollout.temperature).requires_grad_(False)
        o = cfg.optimizer
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay, fused=o.fused or None)
        mbs = cfg.trainer.batch_size // (cfg.trainer.mini_batch_size or cfg.trainer.batch_size)
        total_opt_steps = total_steps * mbs * cfg.algorithm.ppo_epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(o.schedule, o.warmup_steps, total_opt_steps))

    # ------------------------------------------------------------------ helpers
    def _micro_batches(self, samples: list[TrainSample]) -> list[MicroBatch | None]:
        """This rank's micro-batches of `samples`, padded with None to the same count on every rank."""
        mine = shard_for_rank(len(samples), self.rank, self.world)
        groups = plan_micro_batches([samples[i].length for i in mine], self.cfg.trainer.micro_batch_tokens)
        mbs: list[MicroBatch | None] = [collate(samples, [mine[j] for j in g], self.pad_id) for g in groups]
        n = torch.tensor([len(mbs)], device=self.device)
        if self.world > 1:
            dist.all_reduce(n, op=dist.ReduceOp.MAX)
        return mbs + [None] * (int(n) - len(mbs))

    def _forward(self, model, mb: MicroBatch | None, with_entropy=False):
        if mb is None:  # dummy for collective matching: one token, weight 0
            ids = torch.full((1, 2), self.pad_id, dtype=torch.long, device=self.device)
            m = torch.tensor([[True, False]], device=self.device)
            return model(ids, m, ids, with_entropy)
        d = self.device
        return model(mb.input_ids.to(d), mb.loss_mask.to(d), mb.targets.to(d), with_entropy)

    def _all_sum(self, *xs: float) -> list[float]:
        t = torch.tensor(xs, dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.all_reduce(t)
        return t.tolist()

    # ------------------------------------------------------------------ the update
    @torch.no_grad()
    def _old_logprobs(self, samples: list[TrainSample]):
        """Per-sample old log-prob tensors, plus entropy / mismatch / token sums on this rank."""
        old: dict[int, torch.Tensor] = {}
        sums = [0.0, 0.0, 0.0]
        for mb in self._micro_batches(samples):
            logp, ent = self._forward(self.model, mb, with_entropy=True)
            if mb is None:
                continue
            self._add_diagnostics(sums, mb, logp, ent)
            for i, piece in zip(mb.index, torch.split(logp.float().cpu(), mb.seq_lens.tolist())):
                old[i] = piece
        return old, sums

    @staticmethod
    def _add_diagnostics(sums: list[float], mb: MicroBatch, logp: torch.Tensor, ent: torch.Tensor) -> None:
        """sums += [entropy, |trainer logp - engine logp|, tokens] of one micro-batch."""
        sums[0] += float(ent.sum())
        sums[1] += float((logp.detach().float().cpu() - mb.engine_logprobs).abs().sum())
        sums[2] += mb.n_tokens

    def update(self, samples: list[TrainSample], off_policy: bool = False) -> dict:
        """off_policy: the samples came from older weights than the trainer's (rollout.overlap)."""
        a = self.cfg.algorithm
        self.model.train()
        t0 = time.perf_counter()
        mb_size = (self.cfg.trainer.mini_batch_size or self.cfg.trainer.batch_size) * self.cfg.rollout.n
        reuse = self.cfg.trainer.reuse_old_logprobs and a.ppo_epochs == 1 and mb_size >= len(samples)
        old, diag = ({}, [0.0, 0.0, 0.0]) if reuse else self._old_logprobs(samples)
        t_logprob = time.perf_counter() - t0
        stats = {"loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "grad_norm": 0.0, "optimizer_steps": 0,
                 "nonfinite_steps": 0}
        clip_tok = kl_tok = all_tok = bw_tok = capped_tok = 0.0
        lr = self.scheduler.get_last_lr()[0]
        for _ in range(a.ppo_epochs):
            for start in range(0, len(samples), mb_size):
                mini = samples[start:start + mb_size]
                n_tokens = sum(len(s.completion_ids) for s in mini)
                loss_sum = clip_sum = kl_sum = bw_sum = capped_sum = 0.0
                bad_mb = None  # the first micro-batch whose loss was not finite
                for mb in self._micro_batches(mini):
                    logp, ent = self._forward(self.model, mb, with_entropy=reuse)
                    ref_lp = self._no_grad_forward(self.ref, mb) if self.ref is not None else None
                    if mb is None:
                        (logp.sum() * 0.0).backward()
                        continue
                    if reuse:
                        old_lp = logp.detach()
                        self._add_diagnostics(diag, mb, logp, ent)
                    else:
                        old_lp = torch.cat([old[start + i] for i in mb.index]).to(self.device)
                    adv = mb.advantages.to(self.device)
                    tok_loss, clipped = L.clipped_pg_loss(logp, old_lp, adv, a.clip_low, a.clip_high)
                    if off_policy:
                        bw = L.behaviour_weights(old_lp, mb.engine_logprobs.to(self.device), a.offpolicy_weight_cap)
                        tok_loss = tok_loss * bw
                        bw_sum += float(bw.sum())
                        capped_sum += float((bw >= a.offpolicy_weight_cap).sum())
                    if ref_lp is not None:
                        kl = L.kl_k3(logp, ref_lp)
                        tok_loss = tok_loss + a.kl_coef * kl
                        kl_sum += float(kl.detach().sum())
                    w = L.token_weights(mb.seq_lens, a.loss_agg, n_tokens, len(mini)).to(self.device)
                    mb_loss = (tok_loss * w).sum()
                    (mb_loss * self.world).backward()
                    loss_sum += float(mb_loss.detach())
                    if bad_mb is None and not math.isfinite(loss_sum):
                        bad_mb = mb
                    clip_sum += float(clipped.sum())
                loss_sum, clip_sum, kl_sum, bw_sum, capped_sum = self._all_sum(loss_sum, clip_sum, kl_sum, bw_sum,
                                                                               capped_sum)
                # clip_grad_norm_ in two halves, so a non-finite norm leaves the grads readable
                params = list(self.model.parameters())
                gn_t = torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None])
                gn = float(gn_t.full_tensor() if hasattr(gn_t, "full_tensor") else gn_t)
                if math.isfinite(loss_sum) and math.isfinite(gn):
                    torch.nn.utils.clip_grads_with_norm_(params, self.cfg.optimizer.max_grad_norm, gn_t)
                    self.optimizer.step()
                    self.scheduler.step()
                    stats["optimizer_steps"] += 1
                else:
                    stats["nonfinite_steps"] += 1
                    stats["nonfinite_detail"] = self._nonfinite_detail(loss_sum, bad_mb)
                self.optimizer.zero_grad(set_to_none=True)
                stats["loss"] += loss_sum
                stats["grad_norm"] = gn
                clip_tok += clip_sum
                kl_tok += kl_sum
                bw_tok += bw_sum
                capped_tok += capped_sum
                all_tok += n_tokens
        n_mb = max(1, stats["optimizer_steps"] + stats["nonfinite_steps"])
        ent_sum, mis_sum, toks = self._all_sum(*diag)
        stats.update(
            loss=stats["loss"] / n_mb, clip_frac=clip_tok / max(all_tok, 1), kl=kl_tok / max(all_tok, 1),
            entropy=ent_sum / max(toks, 1), logprob_mismatch=mis_sum / max(toks, 1),
            samples_trained=len(samples), tokens_trained=int(toks), lr=lr, time_logprob=t_logprob,
            time_train=time.perf_counter() - t0 - t_logprob, old_logprob_pass=not reuse,
            seq_tokens=sum(s.length for s in samples) * a.ppo_epochs,
        )
        if off_policy:
            stats.update(offpolicy_weight_mean=bw_tok / max(all_tok, 1),
                         offpolicy_capped_frac=capped_tok / max(all_tok, 1))
        return stats

    def _nonfinite_detail(self, loss_sum: float, bad_mb: MicroBatch | None) -> str:
        """One line for the log: where a skipped optimizer step went non-finite (this rank's view)."""
        named = [(i, n.removeprefix("hf.")) for i, (n, q) in enumerate(self.model.named_parameters())
                 if q.grad is not None
                 and not bool(torch.isfinite(q.grad.to_local() if hasattr(q.grad, "to_local") else q.grad).all())]
        bad = [n for _, n in named]
        s = f"loss {loss_sum:.4g}; non-finite grads in {len(bad)} tensor(s)"
        if bad:
            # backward runs from the output down, so the last bad tensor in parameter order is the one
            # nearest where the non-finite values were born; a contiguous run means they flowed down from it
            run = "a contiguous run" if named[-1][0] - named[0][0] == len(named) - 1 else "not contiguous"
            every = [n.removeprefix("hf.") for n, _ in self.model.named_parameters()]
            s += f" ({describe_tensors(every, bad)}; last {bad[-1]}; {run} in parameter order)"
        if bad_mb is not None:
            s += (f"; first non-finite micro-batch: {len(bad_mb.index)} samples, completion tokens "
                  f"{bad_mb.seq_lens.tolist()[:8]}, advantages {bad_mb.advantages.unique().tolist()[:4]}")
        return s

    @torch.no_grad()
    def _no_grad_forward(self, model, mb: MicroBatch | None) -> torch.Tensor:
        return self._forward(model, mb)[0]

    def named_tensors(self, dtype: torch.dtype | None = None):
        return full_named_tensors(self.model, dtype)


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
