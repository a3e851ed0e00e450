"""Unit tests of echo_megatron/rl/functional.py and rl/ei.py against hand-computed references, brute force and invariants.

Every expected number below is worked out by hand in the comment next to it (or by an explicit per-sequence
loop, for GAE), never by calling the function under test a second way.
"""

from __future__ import annotations

import math

import pytest
import torch
from rl_reference import masked_var, rloo_baseline

from echo_megatron.rl import functional as F
from echo_megatron.rl.ei import EISample, normalize_solution, select_for_sft, sft_documents

f64 = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=f64)


def close(actual: torch.Tensor, expected, atol: float = 1e-9) -> None:
    expected = expected if isinstance(expected, torch.Tensor) else t(expected)
    torch.testing.assert_close(actual.to(f64), expected.to(f64), atol=atol, rtol=0)


# ----------------------------------------------------------------------------------------------- masked statistics

NAN = float("nan")
VALUES = t([[1.0, 2.0, 3.0], [4.0, NAN, 6.0], [7.0, 8.0, 9.0]])
MASK = t([[1, 1, 0], [1, 0, 1], [0, 0, 0]])


def test_masked_sum_mean_ignore_masked_positions_even_nan():
    close(F.masked_sum(VALUES, MASK), 13.0)  # 1 + 2 + 4 + 6
    close(F.masked_mean(VALUES, MASK), 3.25)  # 13 / 4
    close(F.masked_sum(VALUES, MASK, dim=-1), [3.0, 10.0, 0.0])
    close(F.masked_mean(VALUES, MASK, dim=-1), [1.5, 5.0, 0.0])  # an empty row is 0, not NaN
    close(F.masked_mean(VALUES, MASK.bool(), dim=0, keepdim=True), [[2.5, 2.0, 6.0]])
    close(F.masked_count(MASK, dim=-1), [2.0, 2.0, 0.0])


def test_masked_var_biased_and_unbiased():
    # deviations from 3.25: -2.25, -1.25, 0.75, 2.75 -> squares 5.0625 + 1.5625 + 0.5625 + 7.5625 = 14.75
    close(masked_var(VALUES, MASK), 14.75 / 4)
    close(masked_var(VALUES, MASK, unbiased=True), 14.75 / 3)
    # per row: [1, 2] -> var 0.25 (biased), 0.5 (unbiased); [4, 6] -> 1, 2; empty -> 0
    close(masked_var(VALUES, MASK, dim=-1), [0.25, 1.0, 0.0])
    close(masked_var(VALUES, MASK, dim=-1, unbiased=True), [0.5, 2.0, 0.0])
    one = t([[5.0, 1.0]])
    close(masked_var(one, t([[1, 0]]), unbiased=True), 0.0)  # n = 1: 0, not NaN


def test_masked_whiten_hand_values_and_moments():
    out = F.masked_whiten(VALUES, MASK, eps=0.0)
    s = math.sqrt(14.75 / 4)
    close(out, [[-2.25 / s, -1.25 / s, 0.0], [0.75 / s, 0.0, 2.75 / s], [0.0, 0.0, 0.0]])
    close(F.masked_mean(out, MASK), 0.0, atol=1e-12)
    close(masked_var(out, MASK), 1.0, atol=1e-12)
    kept = F.masked_whiten(VALUES, MASK, shift_mean=False, eps=0.0)
    close(kept[0, 0], -2.25 / s + 3.25)


def test_masked_stats_give_finite_gradients_next_to_nan_padding():
    values = VALUES.clone().requires_grad_(True)
    (F.masked_mean(values, MASK) + masked_var(values, MASK, dim=-1).sum()).backward()
    assert torch.isfinite(values.grad).all()
    assert values.grad[1, 1] == 0 and values.grad[2].abs().sum() == 0
    close(values.grad[0, 0], 1 / 4 + 2 * (1.0 - 1.5) / 2)  # d mean/dx = 1/4; d var_row/dx = 2 (x - mean) / n


def test_span_mask():
    close(F.span_mask(torch.tensor([0, 2]), torch.tensor([2, 3]), 4), [[1, 1, 0, 0], [0, 0, 1, 0]])


# ------------------------------------------------------------------------------------------------------------ GAE


def test_gae_small_example_lambda_zero():
    # gamma 0.5, lambda 0: A_t = delta_t = r_t + 0.5 V_{t+1} - V_t with V = [0, 1, 2, 3], V_4 = 0
    values = t([[0.0, 1.0, 2.0, 3.0]])
    rewards = t([[0.0, 0.0, 1.0, 0.0]])
    adv, ret = F.gae_advantages_and_returns(rewards, values, torch.ones(1, 4), gamma=0.5, lam=0.0)
    close(adv, [[0.5, 0.0, 0.5, -3.0]])
    close(ret, [[0.5, 1.0, 2.5, 0.0]])


def test_gae_lambda_one_is_return_minus_value():
    # gamma 1, lambda 1: A_t = G_t - V_t; rewards [0, 1] -> G = [1, 1]; V = [1, 2] -> A = [0, -1]
    adv, ret = F.gae_advantages_and_returns(t([[0.0, 1.0]]), t([[1.0, 2.0]]), torch.ones(1, 2), 1.0, 1.0)
    close(adv, [[0.0, -1.0]])
    close(ret, [[1.0, 1.0]])


def test_gae_right_padded_row_ends_at_its_last_token():
    # row 0: 2 real tokens then padding holding garbage (V 9, r 7) that must not leak in.
    # gamma 1, lambda 0.5: delta_1 = 1 + 0 - 1 = 0; delta_0 = 0 + 1 - 0.5 = 0.5; A_0 = 0.5 + 0.5 * 0 = 0.5
    # row 1: 3 tokens, V = 0, r = [0, 0, 1]: A = [0.25, 0.5, 1]
    values = t([[0.5, 1.0, 9.0], [0.0, 0.0, 0.0]])
    rewards = t([[0.0, 1.0, 7.0], [0.0, 0.0, 1.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    adv, ret = F.gae_advantages_and_returns(rewards, values, mask, gamma=1.0, lam=0.5)
    close(adv, [[0.5, 0.0, 0.0], [0.25, 0.5, 1.0]])
    close(ret, [[1.0, 1.0, 0.0], [0.25, 0.5, 1.0]])


def _gae_brute_force(rewards: list[float], values: list[float], gamma: float, lam: float) -> list[float]:
    """A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l} on one unpadded sequence, V after the end = 0."""
    n = len(rewards)
    v = values + [0.0]
    deltas = [rewards[i] + gamma * v[i + 1] - v[i] for i in range(n)]
    return [sum((gamma * lam) ** (k - i) * deltas[k] for k in range(i, n)) for i in range(n)]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_equals_brute_force_sum_on_ragged_batch(gamma, lam):
    g = torch.Generator().manual_seed(0)
    batch, width = 6, 11
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = F.span_mask(torch.zeros(batch, dtype=torch.long), lengths, width)
    rewards = torch.randn(batch, width, generator=g, dtype=f64)
    values = torch.randn(batch, width, generator=g, dtype=f64)
    adv, ret = F.gae_advantages_and_returns(rewards, values, mask, gamma, lam)
    for i in range(batch):
        n = int(lengths[i])
        expected = _gae_brute_force(rewards[i, :n].tolist(), values[i, :n].tolist(), gamma, lam)
        close(adv[i, :n], expected, atol=1e-10)
        close(ret[i, :n], [a + v for a, v in zip(expected, values[i, :n].tolist())], atol=1e-10)
        assert (adv[i, n:] == 0).all() and (ret[i, n:] == 0).all()


def test_discounted_returns_reward_to_go():
    # gamma 0.5, r = [1, 2, 4] -> G_2 = 4, G_1 = 2 + 2 = 4, G_0 = 1 + 2 = 3; padding stays 0
    close(
        F.discounted_returns(t([[1.0, 2.0, 4.0, 8.0]]), t([[1, 1, 1, 0]]), gamma=0.5), [[3.0, 4.0, 4.0, 0.0]]
    )


# ---------------------------------------------------------------------------------------------------- PPO rewards


def test_ppo_token_rewards_score_on_last_token_minus_kl():
    scores = t([1.0, 2.0])
    kl = t([[0.1, 0.2, 0.3, 0.4], [0.5, -0.5, 1.0, 2.0]])
    mask = t([[0, 1, 1, 0], [1, 1, 1, 1]])  # row 0: prompt position 0, response at 1..2, padding at 3
    out = F.ppo_token_rewards(scores, kl, mask, kl_coef=0.1)
    close(out, [[0.0, -0.02, 1.0 - 0.03, 0.0], [-0.05, 0.05, -0.1, 2.0 - 0.2]])
    close(F.ppo_token_rewards(scores, None, mask), [[0, 0, 1, 0], [0, 0, 0, 2]])
    close(F.last_token_index(mask), [2, 3])
    close(F.ppo_token_rewards(torch.tensor([1, 0]), None, mask), [[0, 0, 1, 0], [0, 0, 0, 0]])


# ---------------------------------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_values():
    logp, ref = t([math.log(0.5)]), t([math.log(0.25)])  # r = pi_ref / pi = 0.5
    close(F.kl_k1(logp, ref), [math.log(2)])
    close(F.kl_k2(logp, ref), [0.5 * math.log(2) ** 2])
    close(F.kl_k3(logp, ref), [(0.5 - 1) + math.log(2)])  # (r - 1) - log r
    close(F.kl_estimate(ref, logp, "k1"), [-math.log(2)])
    close(F.kl_estimate(ref, logp, "abs"), [math.log(2)])
    close(F.kl_estimate(logp, ref, "k3"), F.kl_k3(logp, ref))
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        F.kl_estimate(logp, ref, "k4")


def test_kl_estimators_nonnegative_and_zero_on_equal_policies():
    g = torch.Generator().manual_seed(1)
    logp = torch.randn(200, generator=g, dtype=f64) * 3
    ref = torch.randn(200, generator=g, dtype=f64) * 3
    assert (F.kl_k3(logp, ref) >= 0).all() and (F.kl_k2(logp, ref) >= 0).all()
    assert (F.kl_k1(logp, ref) < 0).any()  # k1 alone can be negative
    for name in F.KL_ESTIMATORS:
        assert (F.kl_estimate(logp, logp, name) == 0).all()
    tiny = t([1e-9])  # expm1 keeps k3 accurate near r = 1: (log r)^2 / 2 = 5e-19
    close(F.kl_k3(t([0.0]), tiny), [0.5e-18], atol=1e-24)


def test_k1_and_k3_unbiased_for_kl_under_samples_from_the_policy():
    g = torch.Generator().manual_seed(2)
    p_logits = torch.randn(6, generator=g, dtype=f64)
    q_logits = p_logits + 0.3 * torch.randn(6, generator=g, dtype=f64)
    logp_all, logq_all = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    exact = (logp_all.exp() * (logp_all - logq_all)).sum()
    x = torch.multinomial(logp_all.exp(), 200_000, replacement=True, generator=g)
    logp, ref = logp_all[x], logq_all[x]
    stds = {}
    for name in ("k1", "k3"):
        est = F.kl_estimate(logp, ref, name)
        stderr = est.std() / math.sqrt(est.numel())
        assert abs(est.mean() - exact) < 4 * stderr, (name, est.mean().item(), exact.item())
        stds[name] = est.std()
    assert stds["k3"] < stds["k1"]  # the control variate lowers the variance for nearby policies
    assert abs(F.kl_k2(logp, ref).mean() - exact) < 0.1 * exact  # biased, but close for nearby policies


# --------------------------------------------------------------------------------------------------- GRPO / RLOO


def test_grpo_advantages_hand_example():
    scores = t([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    # group 0: mean 1/3, unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3); group 1: all equal -> 0
    s = math.sqrt(1 / 3)
    close(F.grpo_advantages(scores, 3, eps=0.0), [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0, 0, 0])
    close(F.grpo_advantages(scores, 3, scale_by_std=False), [2 / 3, -1 / 3, -1 / 3, 0, 0, 0])  # Dr. GRPO
    sb = math.sqrt(2 / 9)  # biased std: sqrt((4/9 + 2/9) / 3)
    close(
        F.grpo_advantages(scores, 3, eps=0.0, unbiased_std=False)[:3],
        [(2 / 3) / sb, (-1 / 3) / sb, (-1 / 3) / sb],
    )
    close(F.grpo_advantages(scores, 3, eps=1.0)[0], (2 / 3) / (s + 1.0))


def test_grpo_advantages_arbitrary_ragged_group_ids():
    # ids 7 and 3 interleaved; group 7 = [2, 4] (mean 3, std sqrt(2)), group 3 = [5] alone -> 0
    ids = torch.tensor([7, 3, 7])
    close(F.grpo_advantages(t([2.0, 5.0, 4.0]), ids, eps=0.0), [-1 / math.sqrt(2), 0.0, 1 / math.sqrt(2)])
    with pytest.raises(ValueError, match="group size 4 does not divide the batch of 6"):
        F.grpo_advantages(t([0.0] * 6), 4)
    with pytest.raises(ValueError, match="group ids have shape"):
        F.grpo_advantages(t([0.0] * 6), torch.zeros(5, dtype=torch.long))


def test_rloo_baseline_hand_examples():
    close(rloo_baseline(t([1.0, 2.0, 3.0]), 3), [2.5, 2.0, 1.5])  # mean of the two others
    # two prompts interleaved; sample 7 invalid: excluded from the others' baselines, its own = mean of the valid
    ids = torch.tensor([0, 0, 1, 0, 0, 1, 1, 1])
    rewards = t([1.0, 0.0, 2.0, -3.0, 5.0, 7.0, -1.0, 0.0])
    valid = t([1, 1, 1, 1, 1, 1, 1, 0])
    # prompt 0: rewards 1, 0, -3, 5 (sum 3): (3-1)/3, (3-0)/3, (3+3)/3, (3-5)/3
    # prompt 1: valid 2, 7, -1 (sum 8, N 3): (8-2)/2, (8-7)/2, (8+1)/2, invalid 0 -> 8/2
    expected = [2 / 3, 1.0, 3.0, 2.0, -2 / 3, 0.5, 4.5, 4.0]
    close(rloo_baseline(rewards, ids, valid), expected)
    close(rloo_baseline(t([4.0, 9.0]), 2, t([1, 0])), [4.0, 9.0])  # one valid sample: baseline = reward


def test_reinforce_pp_baseline_hand_example():
    scores = t([1.0, 0.0, 1.0, 1.0])  # groups of 2 -> centred [0.5, -0.5, 0, 0]
    mask = t([[1, 1], [1, 0], [1, 0], [1, 1]])  # tokens: 0.5, 0.5, -0.5, 0, 0, 0
    mean = 0.5 / 6
    var = (3 * 0.25) / 6 - mean**2
    s = math.sqrt(var)
    out = F.reinforce_pp_baseline_advantages(scores, 2, mask, eps=0.0)
    a, b, c = (0.5 - mean) / s, (-0.5 - mean) / s, -mean / s
    close(out, [[a, a], [b, 0.0], [c, 0.0], [c, c]], atol=1e-12)


def test_reinforce_pp_kl_penalty_sums_over_future_tokens():
    # one group of one sample, score 1 (centred to 0 in its own group: use two samples with equal scores)
    # A_t (before whitening) = r' - beta * sum_{i >= t} KL_i with r' = 0: kl [0.1, 0.2, 0.3], beta 1
    # -> returns [-0.6, -0.5, -0.3]; row 2 (all KL 0) -> [0, 0, 0]; whiten over the 6 tokens
    scores = t([1.0, 1.0])
    kl = t([[0.1, 0.2, 0.3], [0.0, 0.0, 0.0]])
    mask = torch.ones(2, 3)
    out = F.reinforce_pp_baseline_advantages(scores, 2, mask, kl=kl, kl_coef=1.0, eps=0.0)
    tokens = [-0.6, -0.5, -0.3, 0.0, 0.0, 0.0]
    mean = sum(tokens) / 6
    s = math.sqrt(sum((x - mean) ** 2 for x in tokens) / 6)
    close(out.flatten(), [(x - mean) / s for x in tokens], atol=1e-12)


# ----------------------------------------------------------------------------------------------------- entropy


def test_entropy_from_logits():
    uniform = torch.zeros(1, 1, 4, dtype=f64)
    close(F.entropy_from_logits(uniform), [[math.log(4)]])
    peaked = t([[[100.0, 0.0, 0.0]]])
    assert F.entropy_from_logits(peaked).item() < 1e-40
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 7, generator=g, dtype=f64) * 4
    close(F.entropy_from_logits(logits), torch.distributions.Categorical(logits=logits).entropy(), atol=1e-12)
    mask = t([[1, 1, 0, 0, 0]] * 3)
    masked = F.entropy_from_logits(logits, mask)
    assert (masked[:, 2:] == 0).all() and (masked[:, :2] > 0).all()
    half = F.entropy_from_logits(logits.to(torch.bfloat16))
    assert half.dtype == torch.float32
    close(half, torch.distributions.Categorical(logits=logits).entropy(), atol=0.05)


# ------------------------------------------------------------------------------------------------ loss aggregation

LOSS = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
LOSS_MASK = t([[1, 1, 1], [1, 0, 0]])


def test_aggregate_loss_modes_hand_values():
    close(F.aggregate_loss(LOSS, LOSS_MASK, "token_mean"), 10 / 4)  # (1+2+3+4) / 4 tokens
    close(F.aggregate_loss(LOSS, LOSS_MASK, "seq_mean_token_mean"), (2.0 + 4.0) / 2)
    close(F.aggregate_loss(LOSS, LOSS_MASK, "seq_mean_token_sum"), (6.0 + 4.0) / 2)
    close(F.aggregate_loss(LOSS, LOSS_MASK, "seq_mean_token_sum_norm", norm_len=4), (6 / 4 + 4 / 4) / 2)
    with pytest.raises(ValueError, match="unknown loss aggregation 'mean'"):
        F.aggregate_loss(LOSS, LOSS_MASK, "mean")
    with pytest.raises(ValueError, match="needs norm_len"):
        F.aggregate_loss(LOSS, LOSS_MASK, "seq_mean_token_sum_norm")


def test_aggregation_decides_how_much_a_long_response_token_weighs():
    # token_mean: every token 1/4. seq_mean_token_mean: tokens of the 3-token row 1/6, the lone token 1/2.
    weights = {}
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        loss = LOSS.clone().requires_grad_(True)
        F.aggregate_loss(loss, LOSS_MASK, mode).backward()
        weights[mode] = loss.grad
    close(weights["token_mean"], [[0.25, 0.25, 0.25], [0.25, 0, 0]])
    close(weights["seq_mean_token_mean"], [[1 / 6, 1 / 6, 1 / 6], [0.5, 0, 0]])
    close(weights["seq_mean_token_sum"], [[0.5, 0.5, 0.5], [0.5, 0, 0]])


@pytest.mark.parametrize("mode", [m for m in F.LOSS_AGG_MODES if m != "micro_token_mean"])
def test_aggregate_loss_micro_batches_with_global_normalisers_sum_to_the_batch(mode):
    g = torch.Generator().manual_seed(4)
    loss = torch.randn(6, 5, generator=g, dtype=f64)
    mask = F.span_mask(torch.zeros(6, dtype=torch.long), torch.tensor([5, 1, 3, 2, 4, 5]), 5)
    kwargs = {"norm_len": 5.0} if mode == "seq_mean_token_sum_norm" else {}
    whole = F.aggregate_loss(loss, mask, mode, **kwargs)
    parts = sum(
        F.aggregate_loss(loss[i : i + 2], mask[i : i + 2], mode, num_tokens=mask.sum(), num_seqs=6, **kwargs)
        for i in (0, 2, 4)
    )
    close(parts, whole, atol=1e-12)


def test_micro_token_mean_is_the_mean_of_micro_batch_token_means():
    # micro-batch 1 = LOSS: tokens 1, 2, 3 | 4 -> 10 / 4 = 2.5; micro-batch 2: one token 6 -> 6.
    loss2, mask2 = t([[6.0, 9.0]]), t([[1, 0]])
    close(F.micro_token_mean([LOSS, loss2], [LOSS_MASK, mask2]), (2.5 + 6.0) / 2)  # 4.25
    # token_mean over the 5 tokens would be 16 / 5 = 3.2: the lone token of micro-batch 2 weighs 1/2, not 1/5
    parts = [
        F.aggregate_loss(x, m, "micro_token_mean", num_micro_batches=2)
        for x, m in ((LOSS, LOSS_MASK), (loss2, mask2))
    ]
    close(sum(parts), 4.25)
    close(F.aggregate_loss(LOSS, LOSS_MASK, "micro_token_mean"), 2.5)  # one micro-batch: its token mean
    close(F.micro_token_mean([LOSS], [LOSS_MASK]), F.aggregate_loss(LOSS, LOSS_MASK, "token_mean"))
    with pytest.raises(ValueError, match="2 losses for 1 masks"):
        F.micro_token_mean([LOSS, loss2], [LOSS_MASK])


def test_mini_batch_rows_split_a_shuffled_rollout_into_optimizer_steps():
    assert [r.tolist() for r in F.mini_batch_rows(6, None)] == [list(range(6))]  # null: one step, in order
    g = torch.Generator().manual_seed(0)
    first = F.mini_batch_rows(12, 4, g)
    assert [len(r) for r in first] == [4, 4, 4]
    flat = [int(i) for r in first for i in r]
    assert sorted(flat) == list(range(12)) and flat != list(range(12))  # every row once, shuffled
    second = [int(i) for r in F.mini_batch_rows(12, 4, g) for i in r]  # the next ppo epoch: a new order
    assert sorted(second) == list(range(12)) and second != flat
    again = F.mini_batch_rows(12, 4, torch.Generator().manual_seed(0))
    assert [int(i) for r in again for i in r] == flat  # the same seed, the same steps
    assert len(F.mini_batch_rows(12, 12, g)) == 1
    with pytest.raises(ValueError, match="mini-batch size 5 does not divide the 12 rows"):
        F.mini_batch_rows(12, 5, g)


# ---------------------------------------------------------------------------------------------------------- losses


def test_ppo_clip_loss_clips_on_both_sides():
    # tokens: (A, rho) = (+1, 1.5) (-1, 1.5) (+1, 0.5) (-1, 0.5), eps 0.2
    #   +1, 1.5: max(-1.5, -1.2) = -1.2 clipped       -1, 1.5: max(1.5, 1.2) = 1.5
    #   +1, 0.5: max(-0.5, -0.8) = -0.5               -1, 0.5: max(0.5, 0.8) = 0.8 clipped
    old = torch.zeros(1, 4, dtype=f64)
    logp = torch.log(t([[1.5, 1.5, 0.5, 0.5]])).requires_grad_(True)
    adv = t([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = F.ppo_clip_loss(logp, old, adv, torch.ones(1, 4), clip_eps=0.2)
    close(loss, (-1.2 + 1.5 - 0.5 + 0.8) / 4)
    close(stats["clip_frac"], 0.5)
    close(stats["ratio"], 1.0)
    approx = (2 * ((1.5 - 1) - math.log(1.5)) + 2 * ((0.5 - 1) - math.log(0.5))) / 4  # k3 of KL(old || new)
    close(stats["approx_kl"], approx)
    loss.backward()
    # d(-A rho)/d logp = -A rho / 4 on unclipped tokens; 0 where the clipped term wins
    close(logp.grad, [[0.0, 1.5 / 4, -0.5 / 4, 0.0]])


def test_ppo_clip_loss_clip_higher_and_mask():
    old = torch.zeros(1, 3, dtype=f64)
    logp = torch.log(t([[1.5, 1.5, 9.0]]))
    adv = t([[1.0, 1.0, 1.0]])
    mask = t([[1, 1, 0]])  # the third token (ratio 9) is padding
    loss, stats = F.ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.6)
    close(loss, -1.5)  # 1.5 is inside [0.8, 1.6]: not clipped
    close(stats["clip_frac"], 0.0)
    loss, stats = F.ppo_clip_loss(logp, old, adv, mask, clip_eps=0.2, agg="seq_mean_token_sum")
    close(loss, -2.4)  # two tokens clipped to 1.2, summed, one sequence
    close(stats["clip_frac"], 1.0)


def test_clipped_value_loss_hand_values():
    values = t([[1.5, 0.9]]).requires_grad_(True)
    old = t([[1.0, 1.0]])
    returns = t([[2.0, 0.5]])
    mask = torch.ones(1, 2)
    # token 0: (1.5-2)^2 = 0.25 vs clipped V 1.2: (1.2-2)^2 = 0.64 -> 0.64; token 1: 0.9 inside, (0.4)^2 = 0.16
    loss, stats = F.clipped_value_loss(values, old, returns, mask, clip=0.2)
    close(loss, 0.5 * (0.64 + 0.16) / 2)
    close(stats["vf_clip_frac"], 0.5)
    loss.backward()
    close(values.grad, [[0.0, 0.5 * 2 * (0.9 - 0.5) / 2]])  # the clipped token passes no gradient
    loss, stats = F.clipped_value_loss(values, old, returns, mask, clip=0.0)
    close(loss, 0.5 * (0.25 + 0.16) / 2)
    close(stats["vf_clip_frac"], 0.0)


def test_losses_and_entropy_keep_nan_padding_out_of_gradients():
    mask = t([[1, 0]])
    logp = t([[math.log(1.1), NAN]]).requires_grad_(True)
    values = t([[0.5, NAN]]).requires_grad_(True)
    logits = t([[[1.0, 2.0], [NAN, NAN]]]).requires_grad_(True)
    loss, _ = F.ppo_clip_loss(logp, torch.zeros(1, 2, dtype=f64), t([[1.0, NAN]]), mask)
    v_loss, _ = F.clipped_value_loss(values, t([[0.4, NAN]]), t([[1.0, NAN]]), mask)
    entropy = F.masked_mean(F.entropy_from_logits(logits, mask), mask)
    (loss + v_loss + entropy).backward()
    close(loss, -1.1)
    close(v_loss, 0.5 * 0.5**2)  # V - V_old = 0.1 is inside the clip: 0.5 (0.5 - 1)^2
    for grad in (logp.grad, values.grad, logits.grad):
        assert torch.isfinite(grad).all()


# ------------------------------------------------------------------------------------- Expert Iteration helpers


def test_normalize_solution_ignores_whitespace_and_compat_forms_not_case():
    a = "def f():\r\n    return 1 +  2\n\n\n"
    b = "  def f():\n\treturn 1 + 2   "
    assert normalize_solution(a) == normalize_solution(b) == "def f():\nreturn 1 + 2"
    assert normalize_solution("ｘ = １") == "x = 1"  # NFKC: full-width forms
    assert normalize_solution("X = 1") != normalize_solution("x = 1")


def _samples() -> list[EISample]:
    return [
        EISample("Q1", "a = 2\nprint(a)", True, "code"),
        EISample("Q1", "a = 2\n\n  print(a) ", True, "code"),  # duplicate of the first
        EISample("Q1", "The answer is 2.", True, "nl"),
        EISample("Q1", "The answer is 3.", False, "nl"),
        EISample("Q2", "It is 5.", False, "nl"),
        EISample("Q2", "<llm-code>5</llm-code>", False, "code_interp"),
        EISample("Q3", "The answer is 2.", True, "nl"),  # same text, other question: kept
        EISample("Q3", "x = 7", True, "code"),
    ]


def test_select_for_sft_filters_dedups_and_counts():
    kept, stats = select_for_sft(_samples())
    assert [(s.question, s.solution) for s in kept] == [
        ("Q1", "a = 2\nprint(a)"),
        ("Q1", "The answer is 2."),
        ("Q3", "The answer is 2."),
        ("Q3", "x = 7"),
    ]
    assert (stats.num_questions, stats.num_samples, stats.num_correct) == (3, 8, 5)
    assert (stats.num_unique_correct, stats.num_kept, stats.num_solved) == (4, 4, 2)
    assert stats.accuracy == 5 / 8 and stats.coverage == 2 / 3
    assert stats.per_format["code"] == {"samples": 3, "correct": 3, "kept": 2}
    assert stats.per_format["nl"] == {"samples": 4, "correct": 2, "kept": 2}
    row = stats.metrics()
    assert row["share/nl"] == 4 / 8 and row["acc/nl"] == 2 / 4 and row["acc/code_interp"] == 0.0
    assert row["kept_share/code"] == 2 / 4 and row["share/empty"] == 0.0
    assert row["ei/duplicates"] == 1 and row["ei/kept"] == 4 and row["ei/coverage"] == 2 / 3
    assert sft_documents(kept[:1]) == ["Q1\n\na = 2\nprint(a)"]


def test_select_for_sft_caps_per_question_and_handles_empty_rounds():
    kept, stats = select_for_sft(_samples(), max_per_question=1)
    assert [(s.question, s.solution) for s in kept] == [("Q1", "a = 2\nprint(a)"), ("Q3", "The answer is 2.")]
    assert stats.num_unique_correct == 4 and stats.num_kept == 2
    with pytest.raises(ValueError, match="ei_max_per_question must be >= 1"):
        select_for_sft(_samples(), max_per_question=0)
    kept, stats = select_for_sft([EISample("Q", "wrong", False)])
    assert kept == [] and stats.coverage == 0.0 and stats.metrics()["kept_share/other"] == 0.0
    assert select_for_sft([])[1].metrics()["accuracy"] == 0.0


def test_micro_token_mean_policy_loss_is_the_micro_batch_token_mean_over_a_divisor_of_one():
    """megatron divides the step's summed numerators by the summed denominators: 1 per micro-batch makes the
    step's loss the mean of the micro-batches' token means (F.micro_token_mean)."""
    from echo_megatron.config import load_config
    from echo_megatron.rl.algorithms import make_algorithm
    from echo_megatron.rl.experience import Experience

    cfg = load_config("recipes/demo/grpo_testbed.yaml", ["rl.loss_agg=micro_token_mean"])
    algo = make_algorithm(cfg)
    mask = t([[1, 1, 1, 0], [1, 0, 0, 0]]).float()
    adv = t([[1.0, 1.0, 1.0, 0.0], [-2.0, 0.0, 0.0, 0.0]]).float()
    ids = torch.zeros(2, 4, dtype=torch.long)
    exp = Experience(ids, ids, mask, ids, torch.zeros(2, 4), old_logp=torch.zeros(2, 4), advantages=adv)
    num, den, report = algo.policy_loss(exp, torch.zeros(2, 4), torch.zeros(2, 4))
    # ratio 1: per-token loss -A = -1, -1, -1 | 2 -> token mean (-3 + 2) / 4 = -0.25, divisor 1
    assert int(den) == 1 and float(num) == pytest.approx(-0.25)
    assert report["pg_loss"].tolist() == pytest.approx([-0.25, 1.0])
    ppo = make_algorithm(load_config("recipes/demo/ppo_testbed.yaml", ["rl.loss_agg=micro_token_mean"]))
    values = t([[1.0, 3.0, 0.0, 9.0], [2.0, 9.0, 9.0, 9.0]]).float()
    exp = exp.replace(old_values=values, returns=torch.zeros(2, 4))
    loss, den, report = ppo.value_loss(exp, values)  # 0.5 x (1 + 9 + 0 + 4) / 4 tokens, divisor 1
    assert int(den) == 1 and float(loss) == pytest.approx(1.75)
    assert report["value_loss"].tolist() == pytest.approx([1.75, 1.0])


# -- device: every tensor an algorithm makes follows its inputs (on a GPU a CPU tensor is an error) --------------
@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "reinforce_pp"])
@pytest.mark.parametrize(
    "loss_agg",
    [
        "token_mean",
        "seq_mean_token_mean",
        "seq_mean_token_sum",
        "seq_mean_token_sum_norm",
        "micro_token_mean",
    ],
)
def test_algorithm_math_stays_on_the_inputs_device(algorithm, loss_agg):
    """Advantages, policy loss and value loss over inputs on the ``meta`` device: a tensor made on the CPU
    (``torch.tensor(n)`` without ``device=``) fails here as it does on a GPU, where GRPO's seq-mean loss
    denominator once did."""
    from echo_megatron.config import load_config
    from echo_megatron.rl.algorithms import make_algorithm
    from echo_megatron.rl.experience import Experience

    cfg = load_config(
        "recipes/demo/grpo_testbed.yaml",
        [f"rl.algorithm={algorithm}", f"rl.loss_agg={loss_agg}", "rl.initial_policy_kl_penalty=0.05"],
    )
    algo = make_algorithm(cfg)
    b, t, meta = 8, 12, torch.device("meta")
    ids = torch.zeros(b, t, dtype=torch.long, device=meta)
    exp = Experience(
        tokens=ids,
        labels=ids,
        mask=torch.ones(b, t, device=meta),
        position_ids=ids,
        sampler_logp=torch.zeros(b, t, device=meta),
        old_logp=torch.zeros(b, t, device=meta),
        ref_logp=torch.zeros(b, t, device=meta),
        old_values=torch.zeros(b, t, device=meta),
    )
    adv = algo.advantages(exp, torch.zeros(b, device=meta), group_size=4)
    exp = exp.replace(advantages=adv.advantages, returns=adv.returns)
    logp = torch.zeros(b, t, device=meta)
    num, den, report = algo.policy_loss(exp, logp, torch.zeros(b, t, device=meta))
    outs = [exp.advantages, num, den, *report.values()]
    if algo.needs_critic:
        outs += [exp.returns, *algo.value_loss(exp, torch.zeros(b, t, device=meta))[:2]]
    assert all(x.device == meta for x in outs), [x.device for x in outs]
