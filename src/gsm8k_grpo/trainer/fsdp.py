"""FSDP2 wrapping of a HF causal LM, chunked log-probs, and distributed setup.

``PolicyModel.forward`` returns log p(target) only at the loss positions, computing lm_head and
log-softmax one chunk of tokens at a time (each chunk recomputed in backward), so the
``tokens x vocab`` fp32 logits of a whole micro-batch never exist at once.
Every decoder layer is its own FSDP2 unit; the wrapper is the root unit (embeddings, norm, lm_head).
"""

from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join (or create, world size 1) the default process group; return (rank, world_size)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # torchrun
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        else:
            store = dist.TCPStore("127.0.0.1", free_port(), 1, is_master=True)
            dist.init_process_group(backend, store=store, rank=0, world_size=1,
                                    timeout=datetime.timedelta(minutes=30))
    return dist.get_rank(), dist.get_world_size()


def _logprob_chunk(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature   # [c, V]
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class PolicyModel(nn.Module):
    """The HF causal LM plus a memory-frugal token log-prob head."""

    def __init__(self, hf_model: nn.Module, chunk: int = 1024, temperature: float = 1.0):
        super().__init__()
        self.hf = hf_model
        self.chunk = chunk
        self.temperature = temperature

    def forward(self, input_ids, attention_mask, loss_mask, targets, with_entropy: bool = False):
        hidden = self.hf.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        h = hidden[loss_mask]                                  # [T, H]
        tgt = targets[loss_mask]                               # [T]
        head = self.hf.get_output_embeddings()
        out, ents = [], []
        for i in range(0, h.shape[0], self.chunk):
            hc, tc = h[i:i + self.chunk], tgt[i:i + self.chunk]
            if torch.is_grad_enabled():
                out.append(checkpoint(_logprob_chunk, hc, head.weight, head.bias, tc, self.temperature,
                                      use_reentrant=False))
            else:
                out.append(_logprob_chunk(hc, head.weight, head.bias, tc, self.temperature))
            if with_entropy:
                with torch.no_grad():
                    lg = torch.nn.functional.linear(hc, head.weight, head.bias).float() / self.temperature
                    lp = torch.log_softmax(lg, dim=-1)
                    ents.append(-(lp.exp() * lp).sum(-1))
        logp = torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)
        ent = torch.cat(ents) if ents else None
        return logp, ent


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
