"""Reference math the tests check and no training path uses: our side of the NeMo-Aligner conformance tests.

``masked_var`` is the two-pass masked variance (training whitens with ``functional.masked_whiten``'s one-pass
float64 sums, which the tests check against it); ``rloo_baseline`` is NeMo-Aligner's REINFORCE baseline (no
algorithm here uses it). Kept in tests/ so that the package holds only code that training runs.
"""

from __future__ import annotations

import torch

from echo_megatron.rl import functional as F


def masked_var(
    values: torch.Tensor,
    mask: torch.Tensor,
    dim: int | None = None,
    keepdim: bool = False,
    unbiased: bool = False,
) -> torch.Tensor:
    """var = sum_i m_i (x_i - mean)^2 / (n - 1 if unbiased else n), n = sum_i m_i.

    The biased (population) form is NeMo-Aligner's ``masked_global_mean_var``; ``unbiased=True`` is Bessel's
    correction, as ``torch.std``. Where n <= 1 (n = 0 for biased) the variance is 0, not NaN.
    """
    values = F.zero_outside(values, mask)
    mean = F.masked_mean(values, mask, dim, keepdim=True)
    squares = F.masked_sum((values - mean) ** 2, mask, dim, keepdim)
    count = F.masked_count(mask, dim, keepdim).to(values.dtype)
    denom = count - 1.0 if unbiased else count
    return torch.where(denom > 0, squares / denom.clamp_min(1.0), torch.zeros_like(squares))


def rloo_baseline(
    scores: torch.Tensor, groups: torch.Tensor | int, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """REINFORCE leave-one-out baseline b_i = (sum_{j in g(i), valid} r_j - v_i r_i) / (N_g - 1), ``[B]``.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human
    Feedback in LLMs" (arXiv 2402.14740), eq. (RLOO): the baseline of sample i is the mean reward of the other
    valid samples of its prompt; the advantage is r_i - b_i. ``valid`` (``[B]``, 1 = counted, e.g. the response
    ended) drops samples from the others' baselines; N_g counts the valid samples. A group with N_g <= 1 gets
    b_i = r_i (advantage 0). NeMo-Aligner: ``calculate_rloo_baseline(prompts, reward, mask)`` with groups = the
    unique prompt rows, equal on every entry including invalid ones.
    """
    index = F.group_index(groups, scores.numel(), scores.device)
    v = torch.ones_like(scores) if valid is None else valid.to(scores.dtype)
    sums, counts = F.group_sum_count(scores, index, v)
    own = torch.where(v > 0, scores, torch.zeros_like(scores)) * v
    loo = (sums - own) / (counts - 1.0).clamp_min(1.0)
    return torch.where(counts > 1, loo, scores)
