"""Pure pieces of the rollout engine: logit filtering, inverse-CDF sampling, log-probs, stop conditions."""

from __future__ import annotations

import math

import pytest
import torch

from echo_megatron.rollout.backend import SamplingParams
from echo_megatron.rollout.sampling import choose_tokens, filter_logits, sample_inverse_cdf, token_logprobs
from echo_megatron.rollout.stops import StopChecker, cut_text


def test_top_k_keeps_the_k_largest():
    z = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(z, top_k=2))[0].tolist()
    assert kept == [False, True, False, True, False]


def test_top_p_keeps_the_smallest_nucleus():
    p = torch.tensor([[0.05, 0.5, 0.3, 0.15]])
    z = p.log()
    # sorted: 0.5, 0.3 (mass before 0.5 < 0.7), 0.15 (mass before 0.8 >= 0.7) -> keep {1, 2}
    assert torch.isfinite(filter_logits(z, top_p=0.7))[0].tolist() == [False, True, True, False]
    # p tiny: the most likely token is always kept
    assert torch.isfinite(filter_logits(z, top_p=1e-6))[0].tolist() == [False, True, False, False]
    assert torch.isfinite(filter_logits(z, top_p=1.0)).all()


def test_padded_vocabulary_is_never_chosen():
    z = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    assert torch.isfinite(filter_logits(z, vocab_size=2))[0].tolist() == [True, True, False, False]
    tok, _ = choose_tokens(z, torch.tensor([0.99]), 0.0, vocab_size=2)
    assert tok.item() in (0, 1)


def test_inverse_cdf_maps_uniforms_to_their_interval():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3]])
    cases = {0.0: 0, 0.19: 0, 0.2: 2, 0.69: 2, 0.7: 3, 0.999999: 3}
    for u, want in cases.items():
        assert sample_inverse_cdf(probs, torch.tensor([u])).item() == want, u


def test_inverse_cdf_never_returns_zero_probability_tokens():
    probs = torch.tensor([[0.3, 0.7, 0.0, 0.0]] * 3)
    got = sample_inverse_cdf(probs, torch.tensor([0.0, 0.5, 1.0 - 1e-9]))
    assert got.tolist() == [0, 1, 1]


def test_inverse_cdf_frequencies_match_probabilities():
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.3])
    draws = sample_inverse_cdf(probs.expand(20000, 3), torch.rand(20000))
    freq = torch.bincount(draws, minlength=3).float() / 20000
    assert torch.allclose(freq, probs, atol=0.015)


def test_logprobs_are_of_the_tempered_unfiltered_distribution():
    z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    t = 0.5
    tok, lp = choose_tokens(z, torch.tensor([0.3]), t, top_k=2)
    want = z[0] / t - torch.logsumexp(z[0] / t, 0)
    assert lp.item() == pytest.approx(want[tok.item()].item(), abs=1e-6)
    # greedy: argmax with log-probs at T = 1
    tok, lp = choose_tokens(z, torch.tensor([0.3]), 0.0)
    assert tok.item() == 0
    assert lp.item() == pytest.approx(2.0 - math.log(sum(math.exp(x) for x in (2, 1, 0, -1))), abs=1e-6)
    assert token_logprobs(z, torch.tensor([3]), 0.0).item() == pytest.approx(
        token_logprobs(z, torch.tensor([3]), 1.0).item()
    )


# --- stops -----------------------------------------------------------------------------------------------------
PIECES = {0: "The an", 1: "swer is", 2: " 4", 3: "2.\n\nQ", 4: "uestion", 5: ":", 6: "é", 7: "x"}


def toy_decode(ids: list[int]) -> str:
    return "".join(PIECES[i] for i in ids)


def first_stop(checker: StopChecker, ids: list[int]) -> tuple[int, object]:
    """Feed ids one at a time; (number of tokens when the checker fired, what matched)."""
    for k in range(1, len(ids) + 1):
        hit = checker(ids[:k])
        if hit is not None:
            return k, hit
    return -1, None


def test_stop_string_across_token_boundaries():
    ids = [0, 1, 2, 3, 4, 5, 7]
    # "\n\nQuestion:" begins inside token 3 and ends with token 5
    assert first_stop(StopChecker(["\n\nQuestion:"], decode=toy_decode), ids) == (6, "\n\nQuestion:")
    # "answer" spans tokens 0 and 1; fires on token 1
    assert first_stop(StopChecker(["answer"], decode=toy_decode), ids) == (2, "answer")
    # a stop that ends inside a token fires on that token
    assert first_stop(StopChecker(["2."], decode=toy_decode), ids) == (4, "2.")
    # the earliest of several stops wins
    assert first_stop(StopChecker(["uestion", " 4"], decode=toy_decode), ids) == (3, " 4")
    assert first_stop(StopChecker(["nothing"], decode=toy_decode), ids) == (-1, None)


def test_stop_window_handles_multibyte_text_and_long_responses():
    ids = [7] * 50 + [6, 6, 0]  # "xxx...ééThe an"
    assert first_stop(StopChecker(["xééThe"], decode=toy_decode), ids) == (53, "xééThe")


def test_stop_token_sequences():
    checker = StopChecker(stop_token_seqs=[[3, 4], [9]])
    assert first_stop(checker, [0, 3, 1, 3, 4, 5]) == (5, [3, 4])
    assert first_stop(checker, [0, 9]) == (2, [9])
    assert first_stop(checker, [4, 3]) == (-1, None)


def test_stop_strings_need_a_decode_function():
    with pytest.raises(ValueError, match="decode"):
        StopChecker(["\n\n"])


def test_cut_text_at_the_earliest_stop():
    assert cut_text("x = 2\n\nQuestion: y", ["Question", "\n\n"]) == ("x = 2", "\n\n")
    assert cut_text("no stop here", ["Question"]) == ("no stop here", None)


def test_sampling_params_validation():
    SamplingParams(n=2, temperature=0.0).validate()
    for bad in (dict(n=0), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(stop=[""])):
        with pytest.raises(ValueError):
            SamplingParams(**bad).validate()
