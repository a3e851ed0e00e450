"""Shared helpers for the data tests: a small testbed run through testbed -> tokenizer -> preprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_megatron.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "recipes" / "demo" / "testbed.yaml")
SMALL = [
    "testbed.n_train=3000",
    "testbed.n_test=50",
    "testbed.tokenizer_vocab_size=512",
    "model.seq_length=96",
]


def demo_cfg(out: Path, *overrides: str):
    """The demo testbed recipe pointed at ``out`` with a small testbed."""
    return load_config(DEMO, [f"testbed.out={out}", *SMALL, "data.num_workers=1", *overrides])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(cfg, out dir) after `testbed` and `preprocess` of the small demo testbed."""
    from echo_megatron.data.preprocess import preprocess
    from echo_megatron.data.testbed import write_testbed

    out = tmp_path_factory.mktemp("testbed")
    cfg = demo_cfg(out)
    write_testbed(cfg.testbed)
    manifests, skipped = preprocess(cfg, log=lambda s: None)
    assert not skipped and len(manifests) == 3
    return cfg, out
