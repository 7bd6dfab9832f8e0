"""A candidate log-prob head with fewer passes over the [chunk, vocab] logits (issue 21), as a bench seam.

The production head (src/gsm8k_grpo/logprobs.py, ``ChunkLogprob``) was 40 % of the update's GPU time at
L on an H200 (bench/results/2026-12-03-h200-session11.md): per chunk its forward writes the bf16 logits,
casts them to fp32 and divides by T; its backward recomputes them and makes seven full passes (cast,
divide, subtract, exp, multiply, divide, cast back). Here:
  - on CUDA the matmul writes fp32 logits itself (``torch.mm(..., out_dtype=torch.float32)``): no bf16
    copy, no cast pass, and no rounding of the logits to bf16 before the log-softmax;
  - dividing by T = 1 is skipped;
  - the backward's element-wise work, -softmax * dL + onehot * dL, divided by T and cast to the weight's
    dtype, is one function that torch.compile fuses into one kernel on CUDA (one read of the fp32 logits,
    one write of the bf16 gradient). On the CPU it runs eagerly (the same math).
Not a setting: ``profile_update.py --variants fusedhead`` installs it (``install()``) for its runs. If it
wins on the GPU it replaces ChunkLogprob. tests/test_fused_head.py checks it against ChunkLogprob on the CPU.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from gsm8k_grpo.logprobs import input_grads


def logits_fp32(hidden: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """hidden @ weight.T (+ bias) as fp32: written as fp32 by the matmul on CUDA, cast on the CPU."""
    if hidden.is_cuda and hidden.dtype != torch.float32:
        z = torch.mm(hidden, weight.t(), out_dtype=torch.float32)
        return z.add_(bias.float()) if bias is not None else z
    return torch.nn.functional.linear(hidden, weight, bias).float()


def grad_of_logits(z: torch.Tensor, lse: torch.Tensor, grad_logp: torch.Tensor, targets: torch.Tensor,
                   inv_t: float, dtype: torch.dtype) -> torch.Tensor:
    """d L / d (x W^T + b) from the fp32 logits z (before dividing by T): (onehot - softmax(z/T)) * dL / T."""
    zt = z * inv_t if inv_t != 1.0 else z
    onehot = torch.arange(z.shape[-1], device=z.device) == targets.unsqueeze(-1)
    dl = grad_logp.unsqueeze(-1)
    return ((onehot.to(z.dtype) - torch.exp(zt - lse.unsqueeze(-1))) * (dl * inv_t)).to(dtype)


_compiled = {}


def fused_grad(z, lse, grad_logp, targets, inv_t, dtype):
    if not z.is_cuda:
        return grad_of_logits(z, lse, grad_logp, targets, inv_t, dtype)
    if "f" not in _compiled:
        _compiled["f"] = torch.compile(grad_of_logits, dynamic=True)
    return _compiled["f"](z, lse, grad_logp, targets, inv_t, dtype)


class FusedChunkLogprob(torch.autograd.Function):
    """ChunkLogprob's contract: (hidden [c, H], weight [V, H], bias | None, targets [c], T, with_entropy,
    entropy_grad) -> (logp [c], entropy); saves no [c, V] tensor between forward and backward. Without
    the entropy's gradient (entropy_grad must be False)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, with_entropy, entropy_grad):
        if entropy_grad:
            raise NotImplementedError("the fused head has no entropy gradient (algorithm.entropy_coef > 0)")
        z = logits_fp32(hidden, weight, bias)
        if temperature != 1.0:
            z.div_(temperature)
        lse = torch.logsumexp(z, dim=-1)
        logp = z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        entropy = z.new_zeros(0)
        if with_entropy:
            entropy = lse - (torch.exp(z - lse.unsqueeze(-1)) * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        z = logits_fp32(hidden, weight, bias)
        g = fused_grad(z, lse, grad_logp, targets, 1.0 / ctx.temperature, weight.dtype)
        del z
        return input_grads(ctx, g, hidden, weight, bias)


def install() -> None:
    """Make head_logprobs (and so the trainer) use FusedChunkLogprob in this process."""
    import gsm8k_grpo.logprobs as lp

    lp.ChunkLogprob = FusedChunkLogprob
