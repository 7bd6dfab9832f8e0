"""GRPO loss as pure tensor functions.

For a group of G samples of one prompt with rewards r_1..r_G:
    A_i = r_i - mean(r)                      (Dr.GRPO, adv_norm="none")
    A_i = (r_i - mean(r)) / (std(r) + eps)   (GRPO,    adv_norm="std"; population std)
Per completion token t of sample i, with ratio rho = exp(logp_new - logp_old):
    l_t = -min(rho * A_i, clip(rho, 1 - clip_low, 1 + clip_high) * A_i)      (PPO clip, "clip-higher")
        + kl_coef * k3(logp_new, logp_ref),  k3 = exp(ref - new) - (ref - new) - 1
        - entropy_coef * H_t                 (H_t the policy's entropy at t; update.py, logprobs.py)
When logp_old is the same forward's log-probs (one epoch, one mini-batch: what the presets run),
rho = 1, the clip is inactive and d l_t = -A_i * d logp_new: REINFORCE with these advantages.
Off-policy samples (rollout.overlap, on by default with SGLang: drawn by the policy one update older, pi_b), decoupled PPO
(Hilton et al. 2021, as in AReaL): the ratio rho is taken against the trainer's own log-probs
before the update (the proximal policy), and the policy-gradient term of l_t (not the KL or entropy
terms) is multiplied by the truncated, gradient-free behaviour weight  min(pi_prox / pi_b, cap)  (see
behaviour_weights).
Aggregation over a mini-batch (weights w_t, see token_weights):
    "token"    (DAPO): sum_t l_t / (all completion tokens of the mini-batch)
    "sequence" (GRPO): sum_i mean_t(l_t) / (samples of the mini-batch)
Weights are global to the mini-batch, so summing micro-batch losses gives the exact mini-batch loss.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, norm: str = "std", eps: float = 1e-6) -> torch.Tensor:
    """rewards [B, G] -> advantages [B, G]."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if norm == "none":
        return centred
    if norm == "std":
        return centred / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    raise ValueError(f"unknown adv_norm {norm!r}; valid: std, none")


def group_has_signal(rewards: torch.Tensor) -> torch.Tensor:
    """rewards [B, G] -> bool [B]: False where every reward of the group is equal (zero advantage)."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0


def token_weights(seq_lens: torch.Tensor, agg: str, n_tokens: int, n_seqs: int) -> torch.Tensor:
    """Per-token weights for the tokens of a micro-batch, flattened in sample order.

    seq_lens [b]: completion tokens per sample; n_tokens / n_seqs: totals over the whole mini-batch.
    """
    if agg == "token":
        return torch.full((int(seq_lens.sum()),), 1.0 / max(n_tokens, 1))
    if agg == "sequence":
        per_seq = 1.0 / (seq_lens.clamp(min=1).float() * max(n_seqs, 1))
        return torch.repeat_interleave(per_seq, seq_lens)
    raise ValueError(f"unknown loss_agg {agg!r}; valid: token, sequence")


def clipped_pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                    clip_low: float, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO-clip loss and a bool mask of tokens where the clip was active. All inputs [T]."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped).detach()


def behaviour_weights(prox_logp: torch.Tensor, behav_logp: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token min(pi_prox / pi_behaviour, cap), no gradient. All inputs [T]."""
    return torch.exp(prox_logp.detach() - behav_logp).clamp(max=cap)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0
