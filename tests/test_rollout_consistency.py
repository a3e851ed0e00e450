"""The sampler against the training forward pass, in one process (TP = 1, fp32, CPU).

* the KV-cache path picks the same tokens as a loop that recomputes the whole sequence every step;
* sampled-token log-probs equal a teacher-forced training forward (and megatron's own CE) within 1e-4;
* generation is seeded, reproducible and independent of batching; EOS / length / stop strings end rows
  where documented; the model comes back in training mode with autograd intact.
"""

from __future__ import annotations

import pytest
import torch

from echo_megatron.rollout.reference import generate_no_cache, teacher_forced_logprobs
from echo_megatron.rollout.sampler import Sampler

VOCAB = 256
VARIANTS = {
    # OLMo-1 style (the paper's models): non-parametric LayerNorm, RoPE, SwiGLU, untied
    "olmo": [],
    # Llama-ish with GQA and tied embeddings; learned positions and GeLU exercise the other embedding/MLP paths
    "gqa_tied_learned": [
        "model.normalization=RMSNorm",
        "model.num_query_groups=2",
        "model.untie_embeddings_and_output_weights=false",
        "model.position_embedding_type=learned_absolute",
        "model.activation=gelu",
    ],
}


def tiny_model(extra: list[str]):
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    cfg = load_config(
        None,
        [
            "model.num_layers=2",
            "model.hidden_size=64",
            "model.num_attention_heads=4",
            "model.ffn_hidden_size=128",
            f"model.vocab_size={VOCAB}",
            "model.seq_length=96",
            "model.init_method_std=0.1",  # peaked logits: no near-ties for greedy to flip on
            "parallel.device=cpu",
            "train.seed=7",
            *extra,
        ],
    )
    initialize(cfg)
    return build_model(cfg, VOCAB)


@pytest.fixture(scope="module", params=list(VARIANTS))
def model(request):
    return tiny_model(VARIANTS[request.param])


PROMPTS = [[5, 9, 200, 3], [17], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49], [250, 1, 2]]
EOD = VOCAB - 1


def sampler(model, **kw) -> Sampler:
    return Sampler(model, eod_id=EOD, pad_id=0, max_seq_len=96, **kw)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (0.8, 40, 0.9), (1.3, 0, 1.0)])
def test_kv_cache_matches_no_cache_loop(model, temperature, top_k, top_p):
    kw = dict(n=2, max_new_tokens=24, temperature=temperature, top_k=top_k, top_p=top_p, seed=11)
    got = sampler(model).generate(PROMPTS, **kw)
    want = generate_no_cache(model, PROMPTS, eod_id=EOD, **kw)
    assert [r.response_ids for r in got] == want
    assert [(r.prompt_index, r.sample_index) for r in got] == [(i, j) for i in range(4) for j in range(2)]


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_logprobs_match_teacher_forced_forward(model, temperature):
    got = sampler(model).generate(PROMPTS, n=2, max_new_tokens=20, temperature=temperature, seed=3)
    ref = teacher_forced_logprobs(
        model, [r.prompt_ids for r in got], [r.response_ids for r in got], temperature=temperature
    )
    for r, want in zip(got, ref):
        assert len(r.logprobs) == len(r.response_ids) > 0
        assert torch.allclose(torch.tensor(r.logprobs), torch.tensor(want), atol=1e-4, rtol=0)


def test_logprobs_match_megatron_training_loss(model):
    """At T = 1 the sampled-token log-prob is minus megatron's per-token CE on the same tokens."""
    got = sampler(model).generate(PROMPTS[:1], n=1, max_new_tokens=16, temperature=1.0, seed=5)[0]
    ids = torch.tensor([got.ids])
    model.eval()
    with torch.no_grad():
        ce = model(ids[:, :-1], torch.arange(ids.shape[1] - 1)[None], None, labels=ids[:, 1:])
    model.train()
    want = -ce[0, len(got.prompt_ids) - 1 :]
    assert torch.allclose(torch.tensor(got.logprobs), want, atol=1e-4, rtol=0)


def test_seeded_reproducible_and_independent_of_batching(model):
    kw = dict(n=3, max_new_tokens=16, temperature=1.0, seed=21)
    a = sampler(model).generate(PROMPTS, **kw)
    b = sampler(model).generate(PROMPTS, **kw)
    small = sampler(model, max_batch=2).generate(PROMPTS, **kw)  # other chunks, other padding
    assert [r.response_ids for r in a] == [r.response_ids for r in b] == [r.response_ids for r in small]
    other = sampler(model).generate(PROMPTS, **{**kw, "seed": 22})
    assert [r.response_ids for r in a] != [r.response_ids for r in other]
    # the n samples of one prompt differ from each other
    assert len({tuple(r.response_ids) for r in a[:3]}) > 1


def test_eos_ends_a_row_and_other_rows_continue(model):
    free = sampler(model).generate(PROMPTS, max_new_tokens=12, temperature=0.0, ignore_eos=True)
    eod = free[0].response_ids[3]  # make prompt 0's 4th greedy token the EOS
    s = Sampler(model, eod_id=eod, pad_id=0, max_seq_len=96, decode=lambda ids: ",".join(map(str, ids)))
    got = s.generate(PROMPTS, max_new_tokens=12, temperature=0.0)
    first = free[0].response_ids.index(eod)
    assert got[0].finish_reason == "eos"
    assert got[0].response_ids == free[0].response_ids[: first + 1]
    assert got[0].text == ",".join(map(str, free[0].response_ids[:first]))  # EOS not in the text
    for g, f in zip(got[1:], free[1:]):  # the other rows are unaffected by prompt 0 finishing
        k = f.response_ids.index(eod) + 1 if eod in f.response_ids else len(f.response_ids)
        assert g.response_ids == f.response_ids[:k]
    # max_seq_len caps prompt + response
    capped = Sampler(model, eod_id=EOD, pad_id=0, max_seq_len=14).generate(
        PROMPTS, max_new_tokens=12, temperature=0.0, ignore_eos=True
    )
    assert [len(r.ids) for r in capped] == [14, 13, 14, 14]
    assert all(r.finish_reason == "length" for r in capped)


def piece(i: int) -> str:
    return chr(65 + i % 26) + chr(97 + (i // 26) % 26)


def decode(ids: list[int]) -> str:
    return "".join(piece(i) for i in ids)


def test_stop_string_cut_across_token_boundary(model):
    free = sampler(model, decode=decode).generate(PROMPTS[:1], max_new_tokens=20, temperature=0.0)[0]
    text = decode(free.response_ids)
    # a stop made of the last char of token k and the first of token k+1, at its first occurrence
    for k in range(2, 18):
        stop = piece(free.response_ids[k])[1] + piece(free.response_ids[k + 1])[0]
        if text.find(stop) == 2 * k + 1:
            break
    else:
        pytest.skip("no boundary-spanning stop string occurs first in this greedy output")
    got = sampler(model, decode=decode).generate(
        PROMPTS[:1], max_new_tokens=20, temperature=0.0, stop=[stop]
    )[0]
    assert got.finish_reason == "stop" and got.stop == stop
    assert got.response_ids == free.response_ids[: k + 2]  # ends with the token that completed the stop
    assert got.logprobs == pytest.approx(free.logprobs[: k + 2])
    assert got.text == text[: 2 * k + 1]  # cut where the stop begins, inside token k
    tok = sampler(model).generate(
        PROMPTS[:1], max_new_tokens=20, temperature=0.0, stop_token_seqs=[free.response_ids[k : k + 2]]
    )[0]
    assert tok.finish_reason == "stop" and tok.response_ids == free.response_ids[: k + 2]


def test_model_state_is_restored(model):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    sampler(model).generate(PROMPTS, max_new_tokens=8, temperature=1.0)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    loss = model(ids, torch.arange(6)[None], None, labels=ids).sum()
    loss.backward()  # no inference-mode tensors leaked into the model (e.g. cached RoPE tables)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)


def test_bad_prompts_raise_clear_errors(model):
    s = sampler(model)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        s.generate([[1], []], max_new_tokens=2)
    with pytest.raises(ValueError, match="leaves no room"):
        s.generate([[1] * 96], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside"):
        Sampler(model, eod_id=EOD, pad_id=0, max_seq_len=96, vocab_size=200).generate([[1, 250]])


def test_rows_finishing_at_different_steps(model):
    """EOS at scattered steps: finished rows first idle in the cache, then are compacted away."""
    kw = dict(n=8, max_new_tokens=20, temperature=1.5, seed=4)
    free = sampler(model).generate(PROMPTS, ignore_eos=True, **kw)
    counts = torch.bincount(torch.tensor([t for r in free for t in r.response_ids[:15]]), minlength=VOCAB)
    eod = int(counts.argmax())
    got = Sampler(model, eod_id=eod, pad_id=0, max_seq_len=96).generate(PROMPTS, **kw)
    want = generate_no_cache(model, PROMPTS, eod_id=eod, **kw)
    assert [r.response_ids for r in got] == want
    steps = {len(r.response_ids) for r in got if r.finish_reason == "eos"}
    assert len(steps) >= 3, steps  # several distinct finishing steps were exercised


def test_backend_from_config(model):
    from echo_megatron.config import ConfigError, load_config
    from echo_megatron.rollout import SamplingParams, make_backend

    cfg = load_config(
        None, ["rollout.n=3", "rollout.temperature=0.9", "rollout.max_new_tokens=8", "rollout.stop=[xx]"]
    )
    params = SamplingParams.from_config(cfg.rollout, stop=[])
    assert (params.n, params.temperature, params.max_new_tokens, params.top_p) == (3, 0.9, 8, 1.0)
    backend = make_backend(cfg.rollout.backend, model, eod_id=EOD, pad_id=0, max_seq_len=96)
    assert backend.sync_weights() == 0.0  # in-process: the training weights are the sampler's
    got = backend.generate(PROMPTS, **vars(params))
    want = sampler(model).generate(PROMPTS, **vars(params))
    assert [r.response_ids for r in got] == [r.response_ids for r in want] and len(got) == 12
    with pytest.raises((ValueError, ConfigError), match="unknown backend"):
        make_backend("vllm", model, eod_id=EOD, pad_id=0, max_seq_len=96)


@pytest.mark.parametrize("rot_dim", [16, 8])  # the whole head, and partial rotary (the rest passes through)
def test_cached_rope_is_megatrons_unfused_rope(model, rot_dim):
    """The cached forward's RoPE (cos / sin from tables) is megatron's unfused RoPE, to the bit."""
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    from echo_megatron.rollout.kv_cache import CachedForward

    g = torch.Generator().manual_seed(0)
    t = torch.randn(3, 2, 4, 16, generator=g)  # [s, b, heads, d]
    freqs = torch.randn(3, 2, 1, rot_dim, generator=g) * 3
    got = CachedForward(model)._rotate(t, freqs.cos(), freqs.sin())
    assert torch.equal(got, _apply_rotary_pos_emb_bshd(t, freqs))


def test_rows_reaching_the_last_position_at_different_steps(model):
    """Prompts of different lengths, all generating up to max_seq_len: the longest prompt's row runs out of room
    first and idles in the cache while the others go on (with learned positions, a position past the last is
    out of the table). Every row fills exactly its room and matches the no-cache loop."""
    prompts = PROMPTS + [
        [k, k + 1] for k in range(3, 40)
    ]  # many short rows: the long ones idle, not compacted
    kw = dict(n=1, max_new_tokens=200, temperature=0.0, seed=0, ignore_eos=True)
    got = sampler(model).generate(prompts, **kw)
    assert [len(r.response_ids) for r in got] == [96 - len(p) for p in prompts]
    assert all(r.finish_reason == "length" for r in got)
    want = [generate_no_cache(model, [p], max_new_tokens=96 - len(p), temperature=0.0)[0] for p in PROMPTS]
    got = got[: len(PROMPTS)]
    assert [r.response_ids for r in got] == want


def test_one_forward_serves_two_caches_of_different_lengths(model):
    """RoPE's tables belong to each cache: a long cache keeps decoding past the length of a shorter cache made
    after it by the same forward object, with the logits of a forward object that only ever saw the long one."""
    from echo_megatron.rollout.kv_cache import CachedForward

    prompt = torch.tensor([PROMPTS[2]])  # 10 tokens
    n = prompt.shape[1]

    def decode(fwd, cache, logits: list[torch.Tensor], upto: int) -> list[torch.Tensor]:
        """Greedy steps until position ``upto`` (the prompt first when ``logits`` is empty)."""
        if not logits:
            logits = [fwd(cache, prompt, torch.arange(n)[None])]
        for pos in range(n + len(logits) - 1, upto):
            logits.append(fwd(cache, logits[-1].argmax(-1, keepdim=True), torch.tensor([[pos]])))
        return logits

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = CachedForward(model)
            want = decode(alone, alone.new_cache(1, 40), [], 35)
            shared = CachedForward(model)
            long = shared.new_cache(1, 40)
            got = decode(shared, long, [], n + 1)
            short = shared.new_cache(1, n + 2)  # made after the long one, by the same forward
            assert torch.equal(decode(shared, short, [], n + 2)[0], got[0])
            got = decode(shared, long, got, 35)  # on, past the short cache's 12 slots
    finally:
        model.train(was_training)
    assert len(got) == len(want) == 26
    assert all(torch.equal(a, b) for a, b in zip(got, want))
