"""Loss functions against hand-computed values, for every variant."""

from __future__ import annotations

import math

import pytest
import torch

from gsm8k_grpo.trainer import loss as pg_loss
from gsm8k_grpo.trainer.batching import TrainSample, collate, plan_micro_batches, shard_for_rank


def test_group_advantages_grpo_and_dr_grpo():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]])
    dr = pg_loss.group_advantages(r, "none")
    assert torch.allclose(dr[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    assert torch.allclose(dr[1], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.allclose(dr[2], torch.zeros(4))
    g = pg_loss.group_advantages(r, "std", eps=0.0 + 1e-12)
    # group 0: mean 0.5, population std 0.5 -> +-1
    assert torch.allclose(g[0], torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-6)
    # group 1: mean 0.25, std sqrt(0.1875) = 0.4330127
    s = math.sqrt(0.1875)
    assert torch.allclose(g[1], torch.tensor([0.75 / s, -0.25 / s, -0.25 / s, -0.25 / s]), atol=1e-5)
    assert torch.allclose(pg_loss.group_advantages(r, "std")[2], torch.zeros(4))  # zero variance: 0, not NaN
    with pytest.raises(ValueError):
        pg_loss.group_advantages(r, "bogus")


def test_group_has_signal():
    r = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.1, 0.0]])
    assert pg_loss.group_has_signal(r).tolist() == [True, False, False, True]


def test_clipped_pg_loss_hand_values():
    # ratios: e^0 = 1, e^0.5 = 1.6487, e^-0.5 = 0.6065; clip 0.2 low / 0.28 high -> [0.8, 1.28]
    logp = torch.tensor([0.0, 0.5, -0.5, 0.5, -0.5])
    old = torch.zeros(5)
    adv = torch.tensor([2.0, 1.0, 1.0, -1.0, -1.0])
    loss, clipped = pg_loss.clipped_pg_loss(logp, old, adv, 0.2, 0.28)
    r = torch.exp(logp)
    expected = torch.tensor([
        -2.0,                         # ratio 1: -1*2
        -1.28,                        # A>0, ratio above 1.28: clipped at 1.28
        -float(r[2]),                 # A>0, ratio 0.6065 < 0.8: min(0.6065, 0.8) = unclipped
        float(r[3]),                  # A<0, ratio 1.6487: min(-1.6487, -1.28) = -1.6487 (unclipped)
        0.8,                          # A<0, ratio 0.6065: min(-0.6065, -0.8) = -0.8 (clipped)
    ])
    assert torch.allclose(loss, expected, atol=1e-5)
    assert clipped.tolist() == [False, True, False, False, True]


def test_clip_higher_is_asymmetric():
    logp = torch.tensor([math.log(1.25), math.log(0.75)])
    loss, clipped = pg_loss.clipped_pg_loss(logp, torch.zeros(2), torch.tensor([1.0, -1.0]), 0.2, 0.28)
    assert clipped.tolist() == [False, True]   # 1.25 < 1.28 passes; 0.75 < 0.8 clips (A<0)
    assert torch.allclose(loss, torch.tensor([-1.25, 0.8]), atol=1e-6)


def test_gradient_is_zero_where_clipped_and_sign_follows_advantage():
    logp = torch.tensor([0.0, 0.5], requires_grad=True)
    loss, _ = pg_loss.clipped_pg_loss(logp, torch.zeros(2), torch.tensor([1.0, 1.0]), 0.2, 0.28)
    loss.sum().backward()
    assert logp.grad[0] == pytest.approx(-1.0)  # d(-ratio*A)/dlogp = -ratio*A = -1: raising logp lowers loss
    assert logp.grad[1] == 0.0                  # clipped: no gradient


def test_kl_k3_hand_values():
    logp = torch.tensor([0.0, -1.0, -2.0])
    ref = torch.tensor([0.0, -2.0, -1.0])
    d = ref - logp  # [0, -1, 1]
    expected = torch.exp(d) - d - 1
    assert torch.allclose(pg_loss.kl_k3(logp, ref), expected)
    assert pg_loss.kl_k3(logp, ref)[0] == 0.0 and (pg_loss.kl_k3(logp, ref) >= 0).all()
    assert pg_loss.kl_k3(logp, ref)[2] == pytest.approx(math.e - 2)


def test_token_weights_token_and_sequence_aggregation():
    lens = torch.tensor([2, 3])
    w_tok = pg_loss.token_weights(lens, "token", n_tokens=10, n_seqs=4)
    assert torch.allclose(w_tok, torch.full((5,), 0.1))
    w_seq = pg_loss.token_weights(lens, "sequence", n_tokens=10, n_seqs=4)
    assert torch.allclose(w_seq, torch.tensor([1 / 8, 1 / 8, 1 / 12, 1 / 12, 1 / 12]))
    # sequence aggregation: each sequence's weights sum to 1/n_seqs
    assert w_seq[:2].sum() == pytest.approx(0.25) and w_seq[2:].sum() == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pg_loss.token_weights(lens, "bogus", 1, 1)


def test_micro_batch_weights_sum_to_the_mini_batch_mean():
    """Splitting a mini-batch into micro-batches with global weights gives the same loss."""
    torch.manual_seed(0)
    lens = torch.tensor([3, 5, 2, 4])
    per_token = torch.randn(int(lens.sum()))
    for agg in ("token", "sequence"):
        whole = (per_token * pg_loss.token_weights(lens, agg, int(lens.sum()), 4)).sum()
        a = (per_token[:8] * pg_loss.token_weights(lens[:2], agg, int(lens.sum()), 4)).sum()
        b = (per_token[8:] * pg_loss.token_weights(lens[2:], agg, int(lens.sum()), 4)).sum()
        assert torch.allclose(whole, a + b)
    seq_means = torch.stack([c.mean() for c in torch.split(per_token, lens.tolist())]).mean()
    assert torch.allclose((per_token * pg_loss.token_weights(lens, "sequence", 14, 4)).sum(), seq_means)


def test_plan_micro_batches_respects_budget_and_covers_all():
    lengths = [10, 50, 20, 40, 30, 5, 100]
    groups = plan_micro_batches(lengths, budget=100)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        assert len(g) == 1 or len(g) * max(lengths[i] for i in g) <= 100
    assert [6] in groups  # the 100-token sample fills a micro-batch alone


def test_collate_masks_predict_completion_tokens():
    s = [TrainSample([1, 2, 3], [7, 8], 0.5, [-0.1, -0.2]), TrainSample([4], [9, 10, 11], -1.0, [-1, -2, -3])]
    mb = collate(s, [0, 1], pad_id=0)
    assert mb.input_ids.tolist() == [[1, 2, 3, 7, 8], [4, 9, 10, 11, 0]]
    # positions predicting completion tokens: sample 0 -> positions 2,3 (predict 7, 8); sample 1 -> 0,1,2,
    # which are 5,6,7 of the flattened [2 x 5]
    assert mb.positions.tolist() == [2, 3, 5, 6, 7]
    assert mb.targets.tolist() == [7, 8, 9, 10, 11]
    assert mb.advantages.tolist() == [0.5, 0.5, -1.0, -1.0, -1.0]
    assert mb.seq_lens.tolist() == [2, 3] and mb.n_tokens == 5


def test_shard_for_rank_partitions():
    assert shard_for_rank(5, 0, 2) == [0, 2, 4] and shard_for_rank(5, 1, 2) == [1, 3]
    assert shard_for_rank(3, 0, 1) == [0, 1, 2]


def test_behaviour_weights_truncate_and_carry_no_gradient():
    """min(pi_prox / pi_behaviour, cap) per token, a constant for autograd."""
    prox = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    behav = torch.tensor([-1.0, -3.0, -0.4])
    w = pg_loss.behaviour_weights(prox, behav, cap=2.0)
    assert torch.allclose(w, torch.tensor([1.0, 2.0, math.exp(-0.1)]))  # e^1 = 2.72 is truncated to 2
    assert not w.requires_grad
    # the weighted loss's gradient is the unweighted one scaled per token
    adv = torch.tensor([1.0, -1.0, 0.5])
    logp = prox.detach().clone().requires_grad_(True)
    (pg_loss.clipped_pg_loss(logp, prox.detach(), adv, 0.2, 0.28)[0] * w).sum().backward()
    assert torch.allclose(logp.grad, -adv * w)
