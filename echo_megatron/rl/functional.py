"""The pure math of RL post-training: masked statistics, advantages, KL estimators and losses.

Conventions for every function here:
  * token tensors are ``[B, T]`` (B sequences, T token positions, right-padded), sequence tensors are ``[B]``;
  * ``mask`` is ``[B, T]``, bool or 0/1 float, 1 on the positions a statistic or loss should see (the generated
    response tokens) and 0 on prompt and padding positions. Masked-out positions never leak into a result, even
    when they hold NaN or inf, and outputs are 0 there;
  * ``logp`` is the log-probability of the sampled token at each position (``[B, T]``), already aligned with the
    mask (position t scores the token generated at t);
  * ``groups`` names the prompt each sample answers: either an int ``n`` (samples come in consecutive groups of
    ``n``, the rollout layout) or a ``[B]`` integer tensor of group ids (any values, ragged groups allowed).

Nothing here touches a model, a process group or an optimizer; the algorithms in ``echo_megatron.rl`` compose
these functions. Several are checked against NeMo-Aligner 0.7.0's ``nemo_aligner/utils/ppo_utils.py`` in
tests/test_rl_nemo_aligner_conformance.py (noted as "NeMo-Aligner:" below).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from echo_megatron.config.rl import LOSS_AGG_MODES

__all__ = ["LOSS_AGG_MODES"]  # re-exported: the modes of aggregate_loss live with the config that names them

KL_ESTIMATORS: tuple[str, ...] = ("k1", "abs", "k2", "k3")

# ---------------------------------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------------------------------


def zero_outside(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values where mask, 0 elsewhere: applied before any arithmetic so that NaN/inf padding cannot reach a
    gradient (0 * NaN would)."""
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def masked_sum(
    values: torch.Tensor, mask: torch.Tensor, dim: int | None = None, keepdim: bool = False
) -> torch.Tensor:
    """sum_i m_i x_i over ``dim`` (all elements when None); positions with m_i = 0 are ignored, even NaN ones."""
    selected = zero_outside(values, mask)
    return selected.sum() if dim is None else selected.sum(dim=dim, keepdim=keepdim)


def masked_count(mask: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The number of unmasked positions, sum_i m_i, as a float tensor."""
    m = mask.bool().to(torch.get_default_dtype())
    return m.sum() if dim is None else m.sum(dim=dim, keepdim=keepdim)


def masked_mean(
    values: torch.Tensor, mask: torch.Tensor, dim: int | None = None, keepdim: bool = False
) -> torch.Tensor:
    """mean = sum_i m_i x_i / sum_i m_i; 0 where nothing is unmasked (an empty response adds no NaN)."""
    count = masked_count(mask, dim, keepdim).to(values.dtype)
    return masked_sum(values, mask, dim, keepdim) / count.clamp_min(1.0)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    all_reduce_: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Whitening over all unmasked positions: (x - mean) / sqrt(var + eps), biased var; 0 outside the mask.

    From the sums S1 = sum_i m_i x_i, S2 = sum_i m_i x_i^2, N = sum_i m_i in float64: mean = S1 / N,
    var = S2 / N - mean^2. ``all_reduce_`` (an in-place sum over processes, e.g. the data-parallel one) sums
    (S1, S2, N) first, so every process whitens with the statistics of the whole batch and a batch split
    over ranks gets the values of the unsplit batch. With ``shift_mean=False`` the mean is added back (only
    the scale changes). NeMo-Aligner: ``utils/distributed.py::normalize_tensor`` (its
    ``trainer.ppo.normalize_advantages``, all-reduced over data parallel).
    """
    v = zero_outside(values, mask).double()
    m = mask.double()
    stats = torch.stack([v.sum(), (v * v).sum(), m.sum()])
    if all_reduce_ is not None:
        stats = all_reduce_(stats)
    mean = stats[0] / stats[2].clamp_min(1)
    var = stats[1] / stats[2].clamp_min(1) - mean * mean
    whitened = (v - mean) * torch.rsqrt(var.clamp_min(0) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return zero_outside(whitened.to(values.dtype), mask)


# ---------------------------------------------------------------------------------------------------------------
# Grouping (one group = the samples drawn for one prompt)
# ---------------------------------------------------------------------------------------------------------------


def group_index(
    groups: torch.Tensor | int, batch_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Dense group indices 0..G-1 (``[B]`` long) from a group size or from arbitrary group ids."""
    if isinstance(groups, int):
        if groups <= 0 or batch_size % groups != 0:
            raise ValueError(f"group size {groups} does not divide the batch of {batch_size} samples")
        return torch.arange(batch_size, device=device) // groups
    if groups.dim() != 1 or groups.numel() != batch_size:
        raise ValueError(f"group ids have shape {tuple(groups.shape)}, expected ({batch_size},)")
    return torch.unique(groups, return_inverse=True)[1].to(device)


def group_sum_count(
    values: torch.Tensor, index: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample group sum S_g(i) = sum_{j in g(i), valid} x_j and count N_g(i), both ``[B]``."""
    weight = torch.ones_like(values) if valid is None else valid.to(values.dtype)
    slots = values.numel()  # dense group indices are < B: no host sync to count the groups
    sums = torch.zeros(slots, dtype=values.dtype, device=values.device)
    counts = torch.zeros(slots, dtype=values.dtype, device=values.device)
    sums.index_add_(0, index, torch.where(weight > 0, values, torch.zeros_like(values)))
    counts.index_add_(0, index, weight)
    return sums[index], counts[index]


def group_mean_std(
    values: torch.Tensor, groups: torch.Tensor | int, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and std of its group, ``[B]`` each. The std of a group of one is 0."""
    index = group_index(groups, values.numel(), values.device)
    sums, counts = group_sum_count(values, index)
    mean = sums / counts
    squares, _ = group_sum_count((values - mean) ** 2, index)
    denom = counts - 1.0 if unbiased else counts
    var = torch.where(denom > 0, squares / denom.clamp_min(1.0), torch.zeros_like(squares))
    return mean, var.sqrt()


# ---------------------------------------------------------------------------------------------------------------
# Sequence-level advantages and baselines (one scalar score per sample)
# ---------------------------------------------------------------------------------------------------------------


def grpo_advantages(
    scores: torch.Tensor,
    groups: torch.Tensor | int,
    eps: float = 1e-6,
    scale_by_std: bool = True,
    unbiased_std: bool = True,
) -> torch.Tensor:
    """GRPO outcome advantages A_i = (r_i - mean_g(r)) / (std_g(r) + eps), ``[B]``.

    Shao et al. 2024, DeepSeekMath (arXiv 2402.03300), section 4.1.2: each sample's reward normalised by the mean
    and std of the rewards of the group of samples drawn for its prompt; every token of the sample gets A_i.
    ``scale_by_std=False`` keeps only the centring, A_i = r_i - mean_g(r): Dr. GRPO (Liu et al. 2025,
    "Understanding R1-Zero-Like Training", arXiv 2503.20783), which shows the std division up-weights
    too-easy and too-hard prompts. ``unbiased_std`` uses Bessel's correction (``torch.std``). A group whose
    rewards are all equal (or of size one) gets A = 0 (std 0 is not divided by, so eps = 0 is allowed).
    """
    mean, std = group_mean_std(scores, groups, unbiased=unbiased_std)
    centred = scores - mean
    if not scale_by_std:
        return centred
    return torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))


# ---------------------------------------------------------------------------------------------------------------
# Token-level rewards, returns and advantages
# ---------------------------------------------------------------------------------------------------------------


def span_mask(starts: torch.Tensor, ends: torch.Tensor, width: int) -> torch.Tensor:
    """Float mask ``[B, width]`` with 1 on positions starts[i] <= t < ends[i] of row i.

    For log-probs of a prompt of length p followed by a response ending at total length L (position t scores
    token t + 1), the response mask is ``span_mask(p - 1, L - 1, S - 1)``: NeMo-Aligner's ``create_mask``.
    """
    positions = torch.arange(width, device=starts.device)
    inside = (positions >= starts.reshape(-1, 1)) & (positions < ends.reshape(-1, 1))
    return inside.to(torch.get_default_dtype())


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last unmasked position of each row, ``[B]`` (T - 1 for an empty row, masked anyway)."""
    t = mask.size(-1)
    return (t - 1) - mask.bool().flip(-1).int().argmax(dim=-1)


def ppo_token_rewards(
    scores: torch.Tensor, kl: torch.Tensor | None, mask: torch.Tensor, kl_coef: float = 0.0
) -> torch.Tensor:
    """Per-token rewards r_t = score * [t = last response token] - kl_coef * kl_t, 0 outside the mask.

    The KL-shaped reward of Ziegler et al. 2019 (arXiv 1909.08593) / Ouyang et al. 2022 (InstructGPT):
    the outcome score is paid on the last generated token and every token pays beta * KL_t, with KL_t a
    per-token estimate (``kl_estimate``; k1 = log pi - log pi_ref gives the sum of penalties an unbiased
    estimate of the sequence KL). NeMo-Aligner: ``calculate_ppo_rewards(values, rewards, response_lengths,
    init_policy_kl, penalty_factor)`` puts the score at ``response_lengths - 2``, which is the last position of
    its ``create_mask`` mask.
    """
    if not scores.is_floating_point():
        scores = scores.to(torch.get_default_dtype() if kl is None else kl.dtype)
    rewards = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device)
    rows = torch.arange(mask.size(0), device=scores.device)
    rewards[rows, last_token_index(mask)] = scores.reshape(-1)
    if kl is not None and kl_coef != 0.0:
        rewards = rewards - kl_coef * kl
    return zero_outside(rewards, mask)


def gae_advantages_and_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation and the critic's targets, ``[B, T]`` each.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation"
    (arXiv 1506.02438), eq. 16, computed backwards:
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   R_t = A_t + V_t,
    with V and r taken as 0 outside the mask, so the value after a sequence's last token is 0 (the episode ends
    there) and right padding contributes nothing. Masks are expected to be one contiguous run per row. Outputs
    are 0 outside the mask. NeMo-Aligner: ``calculate_advantages_and_returns(values, rewards, discount_factor,
    gae_lambda, mask)``, equal on the mask.
    """
    values, rewards = zero_outside(values, mask), zero_outside(rewards, mask)
    next_value = torch.zeros_like(values[:, 0])
    running = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(values.size(-1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        reversed_advantages.append(running)
        next_value = values[:, t]
    advantages = torch.stack(reversed_advantages[::-1], dim=-1)
    returns = advantages + values
    return zero_outside(advantages, mask), zero_outside(returns, mask)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go G_t = sum_{k >= t} gamma^(k - t) r_k within each row's mask, ``[B, T]``.

    The REINFORCE return (Williams 1992); it equals GAE with V = 0 and lam = 1. With the per-token rewards of
    ``ppo_token_rewards`` and gamma = 1 it is REINFORCE++'s A_t = r - beta * sum_{i >= t} KL_i (Hu 2025).
    """
    advantages, _ = gae_advantages_and_returns(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)
    return advantages


def reinforce_pp_baseline_advantages(
    scores: torch.Tensor,
    groups: torch.Tensor | int,
    mask: torch.Tensor,
    kl: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
    eps: float = 1e-8,
    all_reduce_: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """REINFORCE++-baseline token advantages, ``[B, T]``.

    Hu 2025, "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models"
    (arXiv 2501.03262): subtract the group mean from each score, r'_i = r_i - mean_g(r) (no std division),
    form per-token returns G_t of r' with the optional per-token KL penalty (``ppo_token_rewards`` then
    ``discounted_returns``), then normalise over the whole batch: A = (G - mean_batch(G)) / sqrt(var_batch(G)
    + eps) over all unmasked tokens (``masked_whiten``; ``all_reduce_`` makes the batch span processes).
    """
    mean, _ = group_mean_std(scores, groups)
    token_rewards = ppo_token_rewards(scores - mean, kl, mask, kl_coef)
    returns = discounted_returns(token_rewards, mask, gamma)
    return masked_whiten(returns, mask, eps=eps, all_reduce_=all_reduce_)


# ---------------------------------------------------------------------------------------------------------------
# KL estimators
# ---------------------------------------------------------------------------------------------------------------


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(x) - log pi_ref(x) = -log r with r = pi_ref / pi: unbiased for KL(pi || pi_ref), x ~ pi.

    Schulman 2020, "Approximating KL Divergence" (http://joschu.net/blog/kl-approx.html). Can be negative per
    token; high variance. The k1 reward penalty of PPO RLHF.
    """
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log r)^2 / 2: always >= 0, low variance, biased (the bias is third order in log r). Schulman 2020."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r, r = pi_ref / pi: unbiased for KL(pi || pi_ref) under x ~ pi and always >= 0.

    Schulman 2020 (the control-variate estimator); the KL loss term of GRPO (Shao et al. 2024, eq. 4).
    Computed as expm1(log r) - log r for accuracy near r = 1.
    """
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate by name: k1, abs (|k1|), k2 or k3.

    ``abs`` is NeMo-Aligner's ``calculate_kl_penalty(..., use_absolute_kl=True)`` (``trainer.ppo.use_absolute_kl``,
    its default); ``k1`` is the same with ``use_absolute_kl=False``.
    """
    if estimator == "k1":
        return kl_k1(logp, ref_logp)
    if estimator == "abs":
        return kl_k1(logp, ref_logp).abs()
    if estimator == "k2":
        return kl_k2(logp, ref_logp)
    if estimator == "k3":
        return kl_k3(logp, ref_logp)
    raise ValueError(f"unknown KL estimator '{estimator}' (expected one of {', '.join(KL_ESTIMATORS)})")


# ---------------------------------------------------------------------------------------------------------------
# Entropy
# ---------------------------------------------------------------------------------------------------------------


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token entropy H_t = -sum_v p_v log p_v of softmax(logits), ``[B, T]`` from ``[B, T, V]`` logits.

    Computed as logsumexp(z) - sum_v p_v z_v (no log of tiny probabilities); 0 outside ``mask``. The policy's
    entropy metric is ``masked_mean(entropy_from_logits(z), mask)`` (NeMo-Aligner: ``calculate_entropy``).
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if mask is not None:
        logits = zero_outside(logits, mask.unsqueeze(-1))
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
    return entropy if mask is None else zero_outside(entropy, mask)


# ---------------------------------------------------------------------------------------------------------------
# Loss aggregation and the losses
# ---------------------------------------------------------------------------------------------------------------


def aggregate_loss(
    loss: torch.Tensor,
    mask: torch.Tensor,
    mode: str = "token_mean",
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_seqs: float | torch.Tensor | None = None,
    norm_len: float | None = None,
    num_micro_batches: float | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar.

    token_mean               sum_{i,t} m l / sum_{i,t} m        every token weighs the same (DAPO, Yu et al.
                                                                2025, arXiv 2503.14476, "token-level loss")
    seq_mean_token_mean      1/B sum_i (sum_t m l / sum_t m)    the original GRPO objective (Shao et al. 2024
                                                                eq. 3): long responses' tokens weigh less
    seq_mean_token_sum       1/B sum_i sum_t m l                a sequence's loss grows with its length
    seq_mean_token_sum_norm  1/B sum_i sum_t m l / norm_len     Dr. GRPO (Liu et al. 2025): a constant
                                                                normaliser (the generation budget) removes the
                                                                length bias of seq_mean_token_mean
    micro_token_mean         (sum_{i,t} m l / sum_{i,t} m) / M  the token mean of this micro-batch, one of the M
                                                                micro-batches of an optimizer step (summed: the
                                                                mean of their token means; ``num_micro_batches``
                                                                = M, default 1). OpenRLHF's actor loss
                                                                (masked_mean per packed micro-batch, DeepSpeed
                                                                averaging the accumulated micro-batches): the
                                                                paper's setting; see micro_token_mean()
    ``num_tokens`` / ``num_seqs`` replace the local denominators sum m / B by global ones, so that summing the
    values of micro-batches (or of data-parallel ranks) gives exactly the value of the whole batch.
    """
    if mode == "token_mean":
        denom = masked_count(mask).to(loss.dtype) if num_tokens is None else num_tokens
        return masked_sum(loss, mask) / torch.as_tensor(denom, dtype=loss.dtype).clamp_min(1.0)
    if mode == "micro_token_mean":
        mean = masked_sum(loss, mask) / masked_count(mask).to(loss.dtype).clamp_min(1.0)
        return mean / (1.0 if num_micro_batches is None else num_micro_batches)
    if mode == "seq_mean_token_mean":
        per_seq = masked_mean(loss, mask, dim=-1)
    elif mode == "seq_mean_token_sum":
        per_seq = masked_sum(loss, mask, dim=-1)
    elif mode == "seq_mean_token_sum_norm":
        if norm_len is None or norm_len <= 0:
            raise ValueError("loss aggregation seq_mean_token_sum_norm needs norm_len > 0 (the token budget)")
        per_seq = masked_sum(loss, mask, dim=-1) / norm_len
    else:
        raise ValueError(f"unknown loss aggregation '{mode}' (expected one of {', '.join(LOSS_AGG_MODES)})")
    denom = loss.size(0) if num_seqs is None else num_seqs
    return per_seq.sum() / torch.as_tensor(denom, dtype=loss.dtype).clamp_min(1.0)


def micro_token_mean(losses: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """The loss of one optimizer step under ``micro_token_mean``: 1/M sum_k (sum m_k l_k / sum m_k) over its M
    micro-batches ``[B_k, T_k]`` (OpenRLHF, openrlhf/models/loss.py PolicyLoss masked_mean, with DeepSpeed's
    gradient accumulation dividing by M). Unlike token_mean, a token of a micro-batch with few response tokens
    weighs more; with one micro-batch the two agree. Equals the sum of
    ``aggregate_loss(l_k, m_k, "micro_token_mean", num_micro_batches=M)``.
    """
    if not losses or len(losses) != len(masks):
        raise ValueError(f"micro_token_mean: {len(losses)} losses for {len(masks)} masks (need >= 1 each)")
    means = [masked_sum(x, m) / masked_count(m).to(x.dtype).clamp_min(1.0) for x, m in zip(losses, masks)]
    return torch.stack(means).mean()


def mini_batch_rows(
    rows: int, size: int | None, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """The row indices of the optimizer steps over one pass of a rollout buffer of ``rows`` samples.

    ``size`` = None: one step over all rows in their order (no shuffle). Else a random permutation of the rows
    (drawn from ``generator``, a CPU generator: the same on every device) cut into ``rows / size`` steps of
    ``size``: every row in exactly one step (OpenRLHF's shuffled DataLoader over the replay buffer, one pass per
    ppo epoch, --train_batch_size samples per optimizer step). ``size`` must divide ``rows``.
    """
    if size is None:
        return [torch.arange(rows)]
    if size <= 0 or rows % size:
        raise ValueError(f"mini-batch size {size} does not divide the {rows} rows of the rollout")
    order = torch.randperm(rows, generator=generator)
    return [order[s : s + size] for s in range(0, rows, size)]


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: str = "token_mean",
    **agg_kwargs: float | torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss and its statistics.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms" (arXiv 1707.06347), eq. 7, as a loss:
        rho_t = exp(logp_t - old_logp_t),
        l_t = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps_low, 1 + eps_high)),
    aggregated by ``aggregate_loss(l, mask, agg, **agg_kwargs)``. ``clip_eps_high`` (default = ``clip_eps``) is
    DAPO's decoupled upper bound ("clip-higher"). NeMo-Aligner's actor loss
    (``megatron_gpt_ppo_actor.py``, ``model.ppo.ratio_eps``) is this with token_mean.
    Stats (detached, masked means): ``clip_frac`` = share of tokens where the clipped term is the larger one
    (their gradient is zero); ``approx_kl`` = k3 estimate of KL(pi_old || pi) from the samples of pi_old
    (Schulman 2020); ``ratio`` = mean rho.
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    logp, old_logp, advantages = (zero_outside(x, mask) for x in (logp, old_logp, advantages))
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, agg, **agg_kwargs)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            "approx_kl": masked_mean(kl_k3(old_logp, logp), mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    agg: str = "token_mean",
    **agg_kwargs: float | torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped critic loss l_t = 0.5 * max((V_t - R_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - R_t)^2).

    The value clipping of the PPO baselines implementation (Dhariwal et al. 2017, OpenAI baselines ppo2; studied
    by Engstrom et al. 2020, arXiv 2005.12729); ``clip <= 0`` gives the plain 0.5 (V - R)^2. NeMo-Aligner's
    critic loss (``megatron_gpt_critic.py``, ``loss_clip_val``) is this with token_mean. Stats: ``vf_clip_frac``
    = share of tokens where the clipped term is the larger one.
    """
    values, old_values, returns = (zero_outside(x, mask) for x in (values, old_values, returns))
    unclipped = (values - returns) ** 2
    if clip > 0:
        clipped = (old_values + (values - old_values).clamp(-clip, clip) - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
    else:
        clipped = unclipped
        per_token = unclipped
    loss = 0.5 * aggregate_loss(per_token, mask, agg, **agg_kwargs)
    with torch.no_grad():
        stats = {"vf_clip_frac": masked_mean((clipped > unclipped).to(values.dtype), mask)}
    return loss, stats
