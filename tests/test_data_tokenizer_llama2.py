"""The paper's tokenizer: Llama-2's SentencePiece model, shipped as a HF ``tokenizers`` JSON converted from it.

The reference is the SentencePiece library itself on the shipped ``tokenizer.model``: the converted JSON must give
the same ids on real text (GSM8K, MATH-500, AIME, AMC questions and solutions, OpenMathInstruct-1/2 and
TinyGSM-style samples with code indentation) and on whitespace / Unicode / byte-fallback edge cases, and the
conversion must reproduce the shipped file exactly.
"""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import pytest
import sentencepiece

from echo_megatron.assets import asset
from echo_megatron.config import load_config
from echo_megatron.data.spm import bpe_merges, convert
from echo_megatron.data.tokenizer import load_tokenizer, resolve_tokenizer_path
from echo_megatron.model.builder import padded_vocab_size

MODEL = str(asset("tokenizers/llama2/tokenizer.model"))
SHIPPED = asset("tokenizers/llama2/tokenizer.json.gz")
HUB = "meta-llama/Llama-2-7b-hf"
EDGE_CASES = [
    "", " ", "   leading", "trailing   ", "a    b", "x\ty\t\tz", "a\r\nb", "x  \n  y",
    "def f():\n    return 1\n        x", "12345678901234567890", "3.14159 -2e10 1,000,000 $\\frac{1}{2}$",
    "日本語のテキスト", "😀🎉 emoji", "Ünïcödé façade naïve", "\u00a0nbsp\u2003em", "\x00\x01 control",
    "ﬁ ligature ①", "<llm-code>\nprint(2 + 2)\n</llm-code>\n<llm-code-output>\n4\n</llm-code-output>",
]  # fmt: skip


@pytest.fixture(scope="module")
def sp():
    return sentencepiece.SentencePieceProcessor(model_file=MODEL)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(SimpleNamespace(path=HUB, eod="</s>", pad=None))


def real_texts(data_dir) -> list[str]:
    """Every string field of the shipped eval sets and the sample corpora (questions, solutions, code)."""
    texts = []
    files = sorted(asset("eval").glob("*.jsonl.gz")) + sorted((data_dir / "sft_samples").glob("*.jsonl"))
    for path in files:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                texts += [v for v in json.loads(line).values() if isinstance(v, str) and v]
    return texts


def test_hub_name_resolves_offline_to_the_shipped_copy(tok):
    assert resolve_tokenizer_path(HUB) == str(SHIPPED)
    assert (tok.vocab_size, tok.eod, tok.pad) == (32000, 2, 2)  # </s> ends documents; no pad token: pad = eod
    assert [tok.token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    # no BOS: encode never adds special tokens; every digit is its own token
    ids = tok.encode("Natalia sold 48 clips in 2024.")
    assert ids[0] != 1 and [tok.token(i) for i in tok.encode("12345")] == ["▁", "1", "2", "3", "4", "5"]
    # the vocabulary is padded by nothing at TP 1/2/4/8 with the recipes' make_vocab_size_divisible_by
    cfg = load_config("recipes/paper/150m_tg+omi1.yaml")
    for tp in (1, 2, 4, 8):
        assert padded_vocab_size(tok.vocab_size, cfg.model.make_vocab_size_divisible_by, tp) == 32000


def test_conversion_reproduces_the_shipped_json():
    with gzip.open(SHIPPED, "rt", encoding="utf-8") as f:
        shipped = json.load(f)
    assert json.loads(convert(MODEL).to_str()) == shipped
    assert len(shipped["model"]["merges"]) == 61249 and shipped["model"]["byte_fallback"] is True


def test_same_ids_as_sentencepiece_on_real_text(tok, sp, data_dir):
    texts = real_texts(data_dir)
    assert len(texts) > 20000 and sum(map(len, texts)) > 5_000_000
    ours, ref = tok.encode_batch(texts), sp.encode(texts)
    bad = [t for t, a, b in zip(texts, ours, ref) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} texts differ, e.g. {bad[0][:200]!r}"
    for ids in ours[::50]:
        assert tok.decode(ids) == sp.decode(ids)


def test_edge_cases_whitespace_unicode_and_byte_fallback(tok, sp):
    for text in EDGE_CASES:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text)), text
    assert [tok.token(i) for i in tok.encode("😀")] == ["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    # As in the HF tokenizer the paper used (not the SentencePiece library), a literal "</s>" is the EOS id.
    assert tok.encode("a</s>")[-1] == 2 and 2 not in sp.encode("a</s>")


def test_merges_follow_piece_scores():
    pieces = [
        ("<unk>", 0.0, 2),
        ("a", -1.0, 1),
        ("b", -2.0, 1),
        ("ab", -3.0, 1),
        ("ba", -4.0, 1),
        ("aba", -5.0, 1),
    ]
    assert bpe_merges(pieces) == [("a", "b"), ("b", "a"), ("a", "ba"), ("ab", "a")]
