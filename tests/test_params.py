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
