"""Token log-probs through the LM head, one chunk of positions at a time.

The one definition of a token's log-prob: the trainer (with grad) and the HF engine (without) both
call ``head_logprobs``. For z = (hidden @ W.T + b) / T in fp32,
    log p(target) = z[target] - logsumexp(z),   d log p / d z_v = 1[v = target] - softmax(z)_v.
The fp32 ``tokens x vocab`` logits of a whole micro-batch never exist at once: each chunk of
positions is a ``ChunkLogprob`` autograd function whose forward keeps only the chunk's hidden
states and log-sum-exp, and whose backward recomputes the logits once and forms the gradient in
place in one fp32 [chunk, V] buffer. (tests/test_fsdp.py keeps plain autograd under activation
checkpointing as the oracle: the same numbers, more passes over [chunk, V].)
The entropy H = lse(z) - sum_v p_v z_v is a diagnostic without gradient, unless ``entropy_grad``
(algorithm.entropy_coef > 0): then d H / d z_v = -p_v (log p_v + H), formed in the same backward with a
second [chunk, V] buffer.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, bias, targets: torch.Tensor,
                   temperature: float, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p(target) [c], entropy [c] (empty unless asked; no grad), log-sum-exp [c]) for a chunk."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()   # [c, V]
    if temperature != 1.0:  # dividing by 1.0 is exact: skip a pass over [c, V]
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
    entropy = logits.new_zeros(0)
    if with_entropy:
        with torch.no_grad():
            entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy, lse


class ChunkLogprob(torch.autograd.Function):
    """(hidden [c, H], weight [V, H], bias [V] | None, targets [c], T, with_entropy, entropy_grad)
    -> (logp [c], entropy: empty unless with_entropy; differentiable only with entropy_grad).

    Saves no [c, V] tensor between forward and backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, with_entropy, entropy_grad):
        logp, entropy, lse = chunk_logprobs(hidden, weight, bias, targets, temperature,
                                            with_entropy or entropy_grad)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy if entropy_grad else None)
        ctx.temperature = temperature
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        scaled = ctx.temperature != 1.0  # as in forward: no passes over [c, V] to divide by 1.0
        g = torch.nn.functional.linear(hidden, weight, bias).float()                        # logits again
        if scaled:
            g.div_(ctx.temperature)
        g.sub_(lse.unsqueeze(-1))                                                            # log p
        if entropy is None:
            g.exp_().mul_(-grad_logp.unsqueeze(-1))                                          # -softmax * dL
        else:  # -p * (dL + dH * (log p + H))
            coef = (g + entropy.unsqueeze(-1)).mul_(grad_entropy.unsqueeze(-1)).add_(grad_logp.unsqueeze(-1))
            g.exp_().mul_(coef.neg_())
            del coef
        g.scatter_add_(-1, targets.unsqueeze(-1), grad_logp.unsqueeze(-1))                  # + onehot * dL
        if scaled:
            g.div_(ctx.temperature)
        return input_grads(ctx, g.to(weight.dtype), hidden, weight, bias)                  # dL/d(xW^T+b)


def input_grads(ctx, g: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor, bias) -> tuple:
    """A chunk head's backward from g = dL/d(hidden @ weight.T + bias): the grads of its seven inputs."""
    grad_hidden = g @ weight if ctx.needs_input_grad[0] else None
    grad_weight = g.t() @ hidden if ctx.needs_input_grad[1] else None
    grad_bias = g.sum(0) if bias is not None and ctx.needs_input_grad[2] else None
    return grad_hidden, grad_weight, grad_bias, None, None, None, None


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, temperature: float,
                  chunk: int, with_entropy: bool = False,
                  entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """hidden [T, H], targets [T] -> (log p(target) [T] fp32, entropy [T] or None), chunk positions at a time.
    entropy_grad: the entropy carries its gradient (an entropy term in the loss)."""
    out, entropies = [], []
    with_entropy = with_entropy or entropy_grad
    for i in range(0, hidden.shape[0], chunk):
        args = (hidden[i:i + chunk], head.weight, head.bias, targets[i:i + chunk], temperature, with_entropy)
        if torch.is_grad_enabled():
            logp, entropy = ChunkLogprob.apply(*args, entropy_grad)
        else:
            logp, entropy, _ = chunk_logprobs(*args)
        out.append(logp)
        entropies.append(entropy)
    logp = torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)
    return logp, (torch.cat(entropies) if with_entropy and entropies else None)
