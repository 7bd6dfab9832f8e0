"""bench/fused_head.py, the candidate log-prob head (issue 21), against the production ChunkLogprob on the CPU:
the same log-probs, entropies and gradients (its CUDA-only parts, the fp32-output matmul and the compiled
gradient, are the GPU bench's to check)."""

import pytest
import torch
from conftest import load_script


def fused_head():
    return load_script("bench/fused_head.py")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_head_gives_chunk_logprobs_numbers(bias, temperature, dtype):
    from gsm8k_grpo.logprobs import ChunkLogprob

    fused = fused_head().FusedChunkLogprob
    g = torch.Generator().manual_seed(0)
    c, hdim, vocab = 37, 16, 50
    leaves = [torch.randn(c, hdim, generator=g), torch.randn(vocab, hdim, generator=g),
              torch.randn(vocab, generator=g) if bias else None]
    leaves = [x.to(dtype) if x is not None else None for x in leaves]
    targets = torch.randint(0, vocab, (c,), generator=g)
    upstream = torch.randn(c, generator=g, dtype=torch.float64).float()
    results = []
    for fn in (ChunkLogprob.apply, fused.apply):
        xs = [x.clone().requires_grad_(True) if x is not None else None for x in leaves]
        logp, ent = fn(xs[0], xs[1], xs[2], targets, temperature, True, False)
        (logp * upstream.to(logp.dtype)).sum().backward()
        results.append((logp.detach(), ent, [x.grad for x in xs if x is not None]))
    (lp_a, ent_a, grads_a), (lp_b, ent_b, grads_b) = results
    # both compute in fp32 (the same math, other orders of rounding); bf16 leaves round the gradient
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(lp_b, lp_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, rtol=1e-4, atol=1e-4)  # exp(z - lse) against softmax: fp32 rounding
    assert len(grads_b) == (3 if bias else 2)
    for ga, gb in zip(grads_a, grads_b):
        assert ga.abs().sum() > 0
        torch.testing.assert_close(gb, ga, **tol)


def test_install_puts_it_under_head_logprobs(monkeypatch):
    import gsm8k_grpo.logprobs as lp

    mod = fused_head()
    monkeypatch.setattr(lp, "ChunkLogprob", lp.ChunkLogprob)  # undone after the test
    mod.install()
    hidden = torch.randn(5, 4, requires_grad=True)
    head = torch.nn.Linear(4, 9, bias=False)
    logp, _ = lp.head_logprobs(hidden, head, torch.tensor([1, 2, 3, 4, 5]), 1.0, chunk=2)
    assert lp.ChunkLogprob is mod.FusedChunkLogprob
    assert "FusedChunkLogprob" in type(logp.grad_fn.next_functions[0][0]).__name__
