"""``rl.experience.Experience``: rollouts -> label-space tensors (hand example), row slicing into micro-batches
and shuffled mini-batches, device moves; and the algorithms' advantages through it (REINFORCE++ is the tested
reference function, DP-split whitening equals the unsplit batch). Pure CPU, well under a second.
"""

from __future__ import annotations

import pytest
import torch

from echo_megatron.rl import functional as F
from echo_megatron.rl.experience import Experience
from echo_megatron.rollout.backend import Rollout

PAD = 0


def _hand() -> Experience:
    return Experience.from_rollouts(
        [
            Rollout(0, 0, [1, 2, 3], [4, 5], [-0.1, -0.2], "eos"),
            Rollout(1, 0, [6], [7, 8, 9], [-0.3, -0.4, -0.5], "length"),
        ],
        PAD,
    )


def test_from_rollouts_hand_example():
    exp = _hand()
    assert exp.tokens.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, PAD]]
    assert exp.labels.tolist() == [[2, 3, 4, 5, PAD], [7, 8, 9, PAD, PAD]]
    # position j is a response action where labels[j] is a response token: row 0 -> 4, 5; row 1 -> 7, 8, 9
    assert exp.mask.tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert exp.mask.dtype == torch.float32
    torch.testing.assert_close(
        exp.sampler_logp, torch.tensor([[0, 0, -0.1, -0.2, 0], [-0.3, -0.4, -0.5, 0, 0]]), rtol=0, atol=0
    )
    assert exp.position_ids.tolist() == [list(range(5))] * 2
    assert exp.old_logp is None and exp.advantages is None and exp.rows == 2
    assert set(exp.tensors()) == {"tokens", "labels", "mask", "position_ids", "sampler_logp"}


def test_replace_returns_a_new_experience():
    exp = _hand()
    adv = torch.ones(2, 5)
    out = exp.replace(advantages=adv)
    assert out.advantages is adv and exp.advantages is None
    with pytest.raises(AttributeError):
        exp.advantages = adv  # frozen


def _numbered(rows: int, width: int = 3) -> Experience:
    """Row r holds the value r everywhere (so a row can be traced through any slicing)."""
    r = torch.arange(rows).unsqueeze(1).expand(rows, width)
    return Experience(r, r, r.float(), r, r.float(), old_logp=r.float(), advantages=r.float())


def test_micro_batches_are_consecutive_rows_last_one_smaller():
    exp = _numbered(7)
    mbs = exp.micro_batches(3)
    assert [mb.rows for mb in mbs] == [3, 3, 1]
    assert [mb.tokens[:, 0].tolist() for mb in mbs] == [[0, 1, 2], [3, 4, 5], [6]]
    for mb in mbs:
        assert torch.equal(mb.advantages, mb.tokens.float()) and mb.ref_logp is None


def test_mini_batches_shuffle_rows_once_each_and_split_into_micro_batches():
    exp = _numbered(12)
    minis = exp.mini_batches(6, 4, torch.Generator().manual_seed(3))
    assert len(minis) == 2 and [[mb.rows for mb in m] for m in minis] == [[4, 2], [4, 2]]
    seen = [int(v) for m in minis for mb in m for v in mb.tokens[:, 0]]
    assert sorted(seen) == list(range(12)) and seen != list(range(12))  # a permutation, not the identity
    for m in minis:
        for mb in m:  # every field of a row moved together
            for t in mb.tensors().values():
                assert torch.equal(t.float(), mb.tokens.float())
    again = exp.mini_batches(6, 4, torch.Generator().manual_seed(3))
    assert [int(v) for m in again for mb in m for v in mb.tokens[:, 0]] == seen  # same seed, same order
    with pytest.raises(ValueError, match="mini-batch size 5 does not divide the 12 rows"):
        exp.mini_batches(5, 4, torch.Generator())


def test_to_moves_every_tensor():
    exp = _hand().replace(advantages=torch.zeros(2, 5))
    meta = exp.to("meta")
    assert all(t.device.type == "meta" for t in meta.tensors().values())
    assert set(meta.tensors()) == set(exp.tensors())


# -- the algorithms over an Experience ---------------------------------------------------------------------------
def _algorithm(name: str, *overrides: str):
    from echo_megatron.config import load_config
    from echo_megatron.rl.algorithms import make_algorithm

    cfg = load_config("recipes/demo/grpo_testbed.yaml", [f"rl.algorithm={name}", *overrides])
    return make_algorithm(cfg)


def _random_experience(rows: int = 8, width: int = 10, seed: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    rollouts = []
    for i in range(rows):
        p, r = (
            int(torch.randint(1, 4, (1,), generator=g)),
            int(torch.randint(1, width - 4, (1,), generator=g)),
        )
        ids = torch.randint(1, 50, (p + r,), generator=g).tolist()
        rollouts.append(Rollout(i, 0, ids[:p], ids[p:], [-0.5] * r, "length"))
    exp = Experience.from_rollouts(rollouts, PAD)
    old = torch.randn(exp.mask.shape, generator=g) * exp.mask
    ref = torch.randn(exp.mask.shape, generator=g) * exp.mask
    return exp.replace(old_logp=old, ref_logp=ref, old_values=torch.randn(exp.mask.shape, generator=g))


def test_reinforce_pp_trains_on_the_tested_reference_function():
    """REINFORCE++'s advantages are ``functional.reinforce_pp_baseline_advantages`` (hand-checked in
    test_rl_functional.py) of the k1 KL between the old and reference log-probs."""
    algo = _algorithm("reinforce_pp", "rl.initial_policy_kl_penalty=0.1")
    exp = _random_experience()
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    out = algo.advantages(exp, scores, group_size=4)
    kl = F.kl_k1(exp.old_logp, exp.ref_logp)
    expected = F.reinforce_pp_baseline_advantages(scores, 4, exp.mask, kl=kl, kl_coef=0.1)
    assert torch.equal(out.advantages, expected) and out.returns is None


def test_grpo_and_ppo_return_their_advantages():
    exp = _random_experience(seed=1)
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    grpo = _algorithm("grpo").advantages(exp, scores, group_size=4)
    a = F.grpo_advantages(scores, 4, eps=1e-6)
    assert torch.equal(grpo.advantages, a[:, None] * exp.mask) and grpo.returns is None
    ppo = _algorithm("ppo", "rl.initial_policy_kl_penalty=0.0").advantages(exp, scores, group_size=4)
    adv, ret = F.gae_advantages_and_returns(
        F.ppo_token_rewards(scores, None, exp.mask), exp.old_values, exp.mask
    )
    assert torch.equal(ppo.returns, ret)
    assert torch.equal(ppo.advantages, F.masked_whiten(adv, exp.mask))


def test_whitening_split_over_ranks_equals_the_unsplit_batch():
    """``masked_whiten(all_reduce_=...)``: each half whitened with the summed statistics of both halves (what
    the data-parallel all-reduce gives) equals the whitening of the whole batch."""
    exp = _random_experience(seed=2)
    x, m = exp.old_values, exp.mask
    stats = {}

    def keep(name):
        def fn(t):
            stats[name] = t.clone()
            return t

        return fn

    F.masked_whiten(x[:4], m[:4], all_reduce_=keep("a"))
    F.masked_whiten(x[4:], m[4:], all_reduce_=keep("b"))
    a = F.masked_whiten(x[:4], m[:4], all_reduce_=lambda t: t.add_(stats["b"]))
    b = F.masked_whiten(x[4:], m[4:], all_reduce_=lambda t: t.add_(stats["a"]))
    torch.testing.assert_close(torch.cat([a, b]), F.masked_whiten(x, m), rtol=0, atol=1e-6)
    assert not torch.allclose(a, F.masked_whiten(x[:4], m[:4]))  # the local statistics alone differ
