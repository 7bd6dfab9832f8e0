"""FSDP2 wrapping of a HF causal LM, chunked log-probs, and distributed setup.

``PolicyModel.forward`` returns log p(target) only at the loss positions, computing lm_head and
log-softmax one chunk of tokens at a time, so the ``tokens x vocab`` fp32 logits of a whole
micro-batch never exist at once. With grad, each chunk is a ``ChunkLogprob`` autograd function:
forward keeps only the chunk's hidden states and log-sum-exp, and backward recomputes the logits
once and forms d logp / d logits = (onehot(target) - softmax) / T in place in one fp32 [c, V] buffer
(``trainer.logprob_impl=checkpoint`` is the plain-autograd version under activation checkpointing:
the same numbers, more passes over [c, V]).
Every decoder layer is its own FSDP2 unit; the wrapper is the root unit (embeddings, norm, lm_head).
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join (or create, world size 1) the default process group; return (rank, world_size)."""
    from gsm8k_grpo.rollout.server import pin_nccl_env

    pin_nccl_env()  # before our first NCCL call: the SGLang server must use the same setting
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        else:
            store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
            dist.init_process_group(backend, store=store, rank=0, world_size=1,
                                    timeout=datetime.timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size()


def chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                   temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target), entropy (empty unless asked; no grad), log-sum-exp) for a chunk of positions.

    The one definition of a token's log-prob: the trainer's head and the HF engine both use it."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature   # [c, V]
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    ent = logits.new_zeros(0)
    if with_entropy:
        with torch.no_grad():
            ent = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, ent, lse


def _logprob_chunk(*args) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and entropy for a chunk (the arguments of chunk_logprobs), plain autograd."""
    return chunk_logprobs(*args)[:2]


class ChunkLogprob(torch.autograd.Function):
    """(hidden [c, H], weight [V, H], bias [V] | None, targets [c], T, with_entropy) -> (logp [c], entropy).

    logp_t = z_t[target_t] - logsumexp(z_t) with z = (hidden @ weight.T + bias) / T in fp32;
    d logp_t / d z_tv = 1[v = target_t] - softmax(z_t)_v. Entropy (forward only, no grad) is empty
    unless asked. Saves no [c, V] tensor between forward and backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, with_entropy):
        logp, ent, lse = chunk_logprobs(hidden, weight, bias, targets, temperature, with_entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        g = torch.nn.functional.linear(hidden, weight, bias).float().div_(ctx.temperature)  # logits again
        g.sub_(lse.unsqueeze(-1)).exp_().mul_(-grad_logp.unsqueeze(-1))                      # -softmax * dL
        g.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1))                  # + onehot * dL
        g = g.div_(ctx.temperature).to(weight.dtype)                                        # dL/d(xW^T+b)
        grad_hidden = g @ weight if ctx.needs_input_grad[0] else None
        grad_weight = g.t() @ hidden if ctx.needs_input_grad[1] else None
        grad_bias = g.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


class PolicyModel(nn.Module):
    """The HF causal LM plus a memory-frugal token log-prob head."""

    def __init__(self, hf_model: nn.Module, chunk: int = 1024, temperature: float = 1.0, impl: str = "fused"):
        super().__init__()
        self.hf = hf_model
        self.chunk = chunk
        self.temperature = temperature
        self.impl = impl

    def forward(self, input_ids, loss_mask, targets, with_entropy: bool = False):
        """-> (log-probs [T] of the targets at loss positions, entropy [T] or None).

        Rows are right-padded (``batching.collate``), so causal attention alone keeps every real token
        from seeing padding, and no attention mask is passed: SDPA runs plain causal attention. An
        explicit mask sent SDPA on H100 to cuDNN's masked backward, whose grad_q is NaN when the
        width is 64 mod 128 and a row's log-sum-exp is below about -88.7 (pytorch/pytorch#196678,
        torch 2.11; hit through Qwen2.5's layer-8 attention, huggingface/trl#7181): the 1 % of
        optimizer steps skipped as non-finite in docs/results/learning.md.
        """
        hidden = self.hf.model(input_ids=input_ids).last_hidden_state   # [b, L, H]; padding rows unused
        h = hidden[loss_mask]                                  # [T, H]
        tgt = targets[loss_mask]                               # [T]
        head = self.hf.get_output_embeddings()
        out, ents = [], []
        for i in range(0, h.shape[0], self.chunk):
            args = (h[i:i + self.chunk], head.weight, head.bias, tgt[i:i + self.chunk], self.temperature,
                    with_entropy)
            if not torch.is_grad_enabled():
                lp, ent = _logprob_chunk(*args)
            elif self.impl == "fused":
                lp, ent = ChunkLogprob.apply(*args)
            else:  # recompute the chunk's logits in backward instead of keeping them
                lp, ent = checkpoint(_logprob_chunk, *args, use_reentrant=False)
            out.append(lp)
            ents.append(ent)
        logp = torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)
        return logp, (torch.cat(ents) if with_entropy and ents else None)


def wrap(model: PolicyModel, device: torch.device, compute_dtype: torch.dtype) -> PolicyModel:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = None
    if compute_dtype != torch.float32:
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    kw = {"mp_policy": mp} if mp else {}
    for layer in model.hf.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def full_named_tensors(model: PolicyModel, dtype: torch.dtype | None = None):
    """Yield (HF name, full tensor) for every parameter; a collective: every rank must iterate."""
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        if dtype is not None:
            t = t.to(dtype)
        yield name.removeprefix("hf."), t.detach()
