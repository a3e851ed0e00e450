"""Tokenizers: loading HF tokenizer files and hub names offline, training bpe / numbers, losslessness."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from echo_megatron.config import ConfigError
from echo_megatron.config.data import TestbedConfig
from echo_megatron.data.testbed import generate
from echo_megatron.data.tokenizer import Tokenizer, load_tokenizer, save_tokenizer, train_tokenizer

OLMO = "allenai_gpt-neox-olmo-dolma-v1_5.json"


def tok_cfg(path, **kw):
    return SimpleNamespace(path=str(path), eod=kw.get("eod"), pad=kw.get("pad"))


@pytest.fixture(scope="module")
def texts():
    train, _ = generate(TestbedConfig(n_train=1500, n_test=10, seed=2))
    return [x for r in train for x in (r["question"] + "\n\n", r["solution"])]


def test_olmo_file_and_hub_name_resolve_offline(data_dir, monkeypatch):
    tok = load_tokenizer(tok_cfg(data_dir / "tokenizers" / OLMO))
    assert (tok.vocab_size, tok.eod, tok.pad) == (50280, 50279, 1)
    monkeypatch.setenv("ECHO_TOKENIZER_DIR", str(data_dir / "tokenizers"))
    by_name = load_tokenizer(tok_cfg("allenai/gpt-neox-olmo-dolma-v1_5"))
    assert by_name.hash == tok.hash and by_name.path.endswith(OLMO)
    text = "Natalia sold 48/2 = 24 clips.\n\n\\boxed{72}"
    assert tok.decode(tok.encode(text)) == text


def test_gpt2_file_has_endoftext_and_no_pad(data_dir):
    tok = load_tokenizer(tok_cfg(data_dir / "tokenizers" / "gpt2" / "gpt2_tokenizer.json"))
    assert tok.eod == 50256 and tok.pad == tok.eod  # no pad token: pad falls back to eod


def test_directory_and_errors(tmp_path, texts):
    backend = train_tokenizer(texts[:200], "bpe", 300)
    path = save_tokenizer(backend, str(tmp_path / "tokdir"))
    assert path.endswith("tokdir/tokenizer.json")
    assert load_tokenizer(tok_cfg(tmp_path / "tokdir")).vocab_size == backend.get_vocab_size()
    with pytest.raises(ConfigError, match="not set"):
        load_tokenizer(tok_cfg(""))
    with pytest.raises(ConfigError, match="no tokenizer.json"):
        load_tokenizer(tok_cfg(tmp_path))
    with pytest.raises(ConfigError, match="no eod token <nope>"):
        load_tokenizer(tok_cfg(path, eod="<nope>"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_tokenizer(tok_cfg(tmp_path / "bad.json"))


def test_numbers_tokenizer_makes_every_integer_one_token_and_is_lossless(tmp_path, texts):
    tok = Tokenizer(train_tokenizer(texts, "numbers", 512, max_number=999), "mem")
    assert [tok.token(i) for i in (0, 1)] == ["<|endoftext|>", "<|pad|>"]
    assert all(len(tok.encode(str(n))) == 1 for n in range(1000))
    for text in texts[:300] + ["Ünïcode 12345 and 007\ttabs", "x" * 50]:
        assert tok.decode(tok.encode(text)) == text
    # cheaper than a plain byte-level BPE of the same budget on the same documents
    bpe = Tokenizer(train_tokenizer(texts, "bpe", 512), "mem")
    n_num = sum(len(tok.encode(t)) for t in texts[:400])
    n_bpe = sum(len(bpe.encode(t)) for t in texts[:400])
    assert n_num < 0.8 * n_bpe


def test_training_is_deterministic_and_pickles(texts):
    a = Tokenizer(train_tokenizer(texts, "numbers", 256), "a")
    b = Tokenizer(train_tokenizer(texts, "numbers", 256), "b")
    assert a.hash == b.hash
    c = pickle.loads(pickle.dumps(a))
    assert (c.hash, c.eod, c.pad, c.vocab_size) == (a.hash, a.eod, a.pad, a.vocab_size)
    assert c.encode(texts[0]) == a.encode(texts[0])
    assert a.unique_identifiers["hash"] == a.hash
    with pytest.raises(ConfigError, match="unknown kind"):
        train_tokenizer(texts, "wordpiece")


def test_tokenizer_train_command_on_recipe_sources(tmp_path, data_dir):
    from echo_megatron.cli import main

    out = tmp_path / "tok.json"
    S = data_dir / "sft_samples"
    rc = main(["tokenizer", "train", "recipes/paper/150m_tg+omi2.yaml",
               "data.sources.finemath.multiplier=0", "data.sources.algebraic_stack.multiplier=0",
               f"data.sources.finemath.path={S / 'openmathinstruct2_sample1000.jsonl'}",
               f"data.sources.algebraic_stack.path={S / 'openmathinstruct2_sample1000.jsonl'}",
               "data.sources.finemath.type=omi2", "data.sources.algebraic_stack.type=omi2",
               f"data.sources.tinygsm.path={S / 'tinygsm_style_gpt41_sample1000.jsonl'}",
               f"data.sources.omi2.path={S / 'openmathinstruct2_sample1000.jsonl'}",
               "data.sources.tinygsm.max_docs=200", "data.sources.omi2.max_docs=200",
               "data.tokenizer.kind=numbers", "data.tokenizer.vocab_size=400", f"data.tokenizer.train_out={out}"])  # fmt: skip
    assert rc == 0
    tok = load_tokenizer(tok_cfg(out))
    assert tok.vocab_size >= 400 + 900 and len(tok.encode("573")) == 1
