"""Next-token choice from a batch of logits: temperature, top-k, top-p, greedy, and sampled-token log-probs.

All functions are pure and batched over rows ``[B, V]``. Sampling is by the inverse CDF with one uniform
number per row and step, supplied by the caller (``Sampler`` draws them from a generator per sequence), so
the token chosen for a sequence never depends on which other sequences share its batch.
"""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(a | s) = log_softmax(z / T)[a], with T = 1 when ``temperature`` is 0 (greedy).

    ``logits`` [B, V] (fp32 recommended), ``tokens`` [B] -> [B]. This is the policy the training
    forward evaluates, over the whole (padded) vocabulary; top-k / top-p filtering is not reflected.
    """
    t = temperature if temperature > 0 else 1.0
    logp = torch.log_softmax(logits.float() / t, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def filter_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, vocab_size: int | None = None
) -> torch.Tensor:
    """Logits with excluded tokens set to -inf.

    * ``vocab_size``: ids >= vocab_size (megatron's vocabulary padding) are never chosen.
    * top-k (Fan et al. 2018): keep the k largest logits (0 = off).
    * top-p / nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
      probability mass reaches p; the most likely token is always kept (1.0 = off).
    """
    out = logits.float()
    if vocab_size is not None and vocab_size < out.shape[-1]:
        out = out.clone()
        out[..., vocab_size:] = float("-inf")
    if top_k and 0 < top_k < out.shape[-1]:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs  # mass of strictly more likely tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Token a with F(a - 1) <= u < F(a), F the row's CDF: one exact draw per row from one uniform u in [0, 1).

    ``probs`` [B, V] (rows need not be normalised), ``uniforms`` [B] -> [B] int64. Zero-probability tokens
    are never returned.
    """
    cdf = torch.cumsum(probs.float(), dim=-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    idx = idx.clamp_(max=probs.shape[-1] - 1)
    # Rounding can land on a zero-probability id after the last positive one: step back to it.
    bad = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) <= 0
    if bool(bad.any()):
        last_pos = (probs > 0).float().flip(-1).argmax(-1)
        idx = torch.where(bad, probs.shape[-1] - 1 - last_pos, idx)
    return idx


def choose_tokens(
    logits: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    vocab_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [B], log-probs [B]) for one decoding step.

    temperature 0 is greedy (argmax, the lowest id on ties) with log-probs of softmax(z); otherwise the
    token is drawn from softmax(filter(z / T)) and its log-prob is log_softmax(z / T)[token].
    """
    logits = logits.float()
    if temperature <= 0:
        masked = filter_logits(logits, vocab_size=vocab_size)
        tokens = masked.argmax(dim=-1)
    else:
        masked = filter_logits(logits / temperature, top_k, top_p, vocab_size)
        probs = torch.softmax(masked, dim=-1)
        tokens = sample_inverse_cdf(probs, uniforms)
    return tokens, token_logprobs(logits, tokens, temperature)
