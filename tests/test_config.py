"""Config loading: presets, inheritance, overrides and clear errors (exit 2) for bad keys and types."""

from __future__ import annotations

import subprocess
import sys

import pytest

from echo_megatron.config import ConfigError, load_config


def test_preset_then_recipe_then_override(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model: {preset: paper_150m}\ntrain: {steps: 7}\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nmodel: {num_layers: 3}\n")
    cfg = load_config(str(child), ["train.steps=9"])
    assert cfg.model.hidden_size == 768  # from the preset
    assert cfg.model.num_layers == 3  # recipe beats preset
    assert cfg.train.steps == 9  # command line beats recipe


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.hidden_sise=64", "model.hidden_sise"),
        ("train.steps=abc", "train.steps"),
        ("parallel.tp=1.5", "parallel.tp"),
    ],
)
def test_bad_override_names_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_key_in_file_names_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("optimizer: {lr_typo: 1.0}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "optimizer.lr_typo" in str(e.value) and str(p) in str(e.value)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(None, ["model.preset=nope"])


def test_cli_exit_status_2(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train: {steps: 1}\n")
    r = subprocess.run(
        [sys.executable, "-m", "echo_megatron", "config", str(p), "model.hidden_sise=64"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "model.hidden_sise" in r.stderr


def test_child_recipe_preset_wins(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {preset: paper_150m}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nmodel: {preset: paper_1b}\n")
    assert load_config(str(tmp_path / "child.yaml")).model.hidden_size == 2048
