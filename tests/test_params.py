"""Parameter counts of the paper presets (meta device) and the `params` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from echo_megatron.config import load_config
from echo_megatron.model.params import count_parameters

# (preset, expected total, tolerance): the paper's sizes (arXiv 2504.07912, OLMo-style; vocab 32,000)
EXPECTED = [
    ("paper_150m", 162.4e6, 0.1e6),
    ("paper_300m", 300.4e6, 0.1e6),
    ("paper_500m", 551.3e6, 0.1e6),
    ("paper_1b", 1.14e9, 0.01e9),
]


@pytest.mark.parametrize("preset, total, tol", EXPECTED)
def test_paper_preset_sizes(preset, total, tol):
    counts = count_parameters(load_config(None, [f"model.preset={preset}"]))
    assert abs(counts["total"] - total) <= tol, counts
    assert counts["norms"] == 0  # non-parametric LayerNorm


def test_components_add_up_and_tying():
    cfg = load_config(None, ["model.preset=paper_150m"])
    c = count_parameters(cfg)
    d, L, V = 768, 12, 32000
    assert c["embedding"] == V * d and c["output_layer"] == V * d  # untied
    assert c["attention"] == L * 4 * d * d  # qkv + proj, no biases
    assert c["mlp"] == L * 3 * d * 4 * d  # SwiGLU: fc1 (gate, up) + fc2, 4d per half
    tied = count_parameters(
        load_config(None, ["model.preset=paper_150m", "model.untie_embeddings_and_output_weights=false"])
    )
    assert tied["total"] == c["total"] - V * d


def test_params_command_prints_components():
    r = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "params", "paper_1b"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "1.14B" in r.stdout and "attention" in r.stdout


def test_params_counts_the_vocabulary_the_recipe_trains(data_dir, tmp_path, monkeypatch, capsys):
    """A recipe with data.tokenizer.path is counted with its tokenizer's vocabulary (OLMo-1's 50,280 tokens,
    50,304 rows), not model.vocab_size; when its tokenizer cannot be loaded here the fallback is said."""
    from echo_megatron.cli import main

    monkeypatch.setenv("ECHO_TOKENIZER_DIR", str(data_dir / "tokenizers"))
    monkeypatch.chdir(tmp_path)  # a shipped recipe by its recipes/ name, from a folder that is not the repo
    assert main(["params", "recipes/paper/150m_tg.yaml"]) == 0  # the paper's Llama-2 tokenizer, shipped
    out = capsys.readouterr().out
    assert (
        "vocab=32000 (padded 32000; from tokenizer meta-llama/Llama-2-7b-hf)" in out and "162,398,208" in out
    )
    olmo = "data.tokenizer.path=allenai/gpt-neox-olmo-dolma-v1_5"
    assert main(["params", "recipes/paper/150m_tg.yaml", olmo]) == 0
    out = capsys.readouterr().out
    assert "vocab=50280 (padded 50304; from tokenizer allenai/gpt-neox-olmo-dolma-v1_5)" in out
    embedding = next(line for line in out.splitlines() if line.strip().startswith("embedding"))
    assert f"{50304 * 768:,}" in embedding
    assert main(["params", "recipes/paper/150m_tg.yaml", f"data.tokenizer.path={tmp_path}"]) == 0  # no JSON
    out = capsys.readouterr().out
    assert f"vocab=32000 (padded 32000; from model.vocab_size (tokenizer {tmp_path} not found here))" in out


def test_resolve_vocab_returns_the_vocabulary_and_leaves_the_config_alone(data_dir, tmp_path):
    """The tokenizer's size and ids when the recipe names one (the config's model.vocab_size untouched), the
    trainer's convention (last id = EOD = pad) without one, and a named error unless a fallback is asked for."""
    from echo_megatron.config import ConfigError
    from echo_megatron.model.vocab import resolve_vocab

    olmo = data_dir / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json"
    cfg = load_config(None, [f"data.tokenizer.path={olmo}", "parallel.tp=4"])
    v = resolve_vocab(cfg)
    assert (v.size, v.padded, v.eod, v.pad) == (50280, 50304, 50279, 1) and v.source == f"tokenizer {olmo}"
    assert cfg.model.get("vocab_size") == 32000  # read, never written
    plain = resolve_vocab(load_config(None, ["model.vocab_size=1000"]))
    assert (plain.size, plain.padded, plain.eod, plain.pad, plain.source) == (
        1000,
        1024,
        999,
        999,
        "model.vocab_size",
    )
    odd_tp = resolve_vocab(load_config(None, ["model.vocab_size=1000"]), tp=3)
    assert odd_tp.padded == 1152  # a multiple of 128 x 3 where 3 does not divide 128
    missing = load_config(None, [f"data.tokenizer.path={tmp_path}"])  # a folder without tokenizer.json
    with pytest.raises(ConfigError, match="has no tokenizer.json"):
        resolve_vocab(missing)
    assert resolve_vocab(missing, missing_ok=True).size == 32000
