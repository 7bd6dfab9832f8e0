"""FSDP2 wrapping of a HF causal LM with the chunked log-prob head (logprobs.py).

``PolicyModel.forward`` returns log p(target) only at the loss positions. Every decoder layer is its
own FSDP2 unit; the wrapper is the root unit (embeddings, norm, lm_head).
"""

from __future__ import annotations

import torch
from torch import nn

from gsm8k_grpo.logprobs import head_logprobs


class PolicyModel(nn.Module):
    """The HF causal LM plus a memory-frugal token log-prob head."""

    def __init__(self, hf_model: nn.Module, chunk: int = 1024, temperature: float = 1.0):
        super().__init__()
        self.hf = hf_model
        self.chunk = chunk
        self.temperature = temperature

    def forward(self, input_ids, positions, targets, with_entropy: bool = False, entropy_grad: bool = False):
        """input_ids [b, L], positions [T] (indices into the flattened [b * L]), targets [T]
        -> (log-probs [T] of the targets at those positions, entropy [T] or None).

        Rows are right-padded (``batching.collate``), so causal attention alone keeps every real token
        from seeing padding, and no attention mask is passed: SDPA runs plain causal attention. An
        explicit mask sends SDPA on Hopper to cuDNN's masked backward, whose grad_q can be NaN
        (pytorch/pytorch#196678; reproduced on H100 and H200 through Qwen2.5's layer-8 attention).
        """
        hidden = self.hf.model(input_ids=input_ids).last_hidden_state   # [b, L, H]; padding rows unused
        # index_select, not a boolean mask: a mask's output size is data-dependent, so the host would
        # wait for the device to count it
        return head_logprobs(hidden.flatten(0, 1).index_select(0, positions), self.hf.get_output_embeddings(),
                             targets, self.temperature, self.chunk, with_entropy, entropy_grad)


def wrap(model: PolicyModel, compute_dtype: torch.dtype) -> PolicyModel:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kw = {}
    if compute_dtype != torch.float32:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in model.hf.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def full_named_tensors(model: PolicyModel, dtype: torch.dtype | None = None, keep=None):
    """Yield (HF name, full tensor) for every parameter (whose name `keep` accepts); a collective:
    every rank must iterate."""
    for name, p in model.named_parameters():
        if keep is not None and not keep(name):
            continue
        t = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        if dtype is not None:
            t = t.to(dtype)
        yield name.removeprefix("hf."), t.detach()
