"""Helpers for tests that run the CLI: tiny indexed datasets, recipes and launches (1 or N processes)."""

from __future__ import annotations

import atexit
import functools
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from echo_megatron.assets import asset

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"

# The real sample data the tests read, as unpacked by data_root(): path in the tree -> shipped gzip file
# (the eval sets installed with the package, and the fixtures in tests/data; sources in tests/data/README.md).
DATA_FILES: dict[str, Path] = {
    "gsm8k/train.jsonl": asset("eval/gsm8k_train.jsonl.gz"),
    "gsm8k/test.jsonl": asset("eval/gsm8k_test.jsonl.gz"),
    "math/math500_test.jsonl": asset("eval/math500_test.jsonl.gz"),
    "competition/aime24.jsonl": asset("eval/aime24.jsonl.gz"),
    "competition/amc23.jsonl": asset("eval/amc23.jsonl.gz"),
    **{
        f"sft_samples/{name}.jsonl": TEST_DATA / "sft_samples" / f"{name}.jsonl.gz"
        for name in (
            "openmathinstruct1_sample100",
            "openmathinstruct2_sample1000",
            "tinygsm_style_gpt41_sample1000",
        )
    },
    "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json": TEST_DATA
    / "tokenizers"
    / "allenai_gpt-neox-olmo-dolma-v1_5.json.gz",
    "tokenizers/gpt2/gpt2_tokenizer.json": TEST_DATA / "tokenizers" / "gpt2_tokenizer.json.gz",
}


@functools.cache
def data_root() -> Path:
    """A temporary tree (removed at exit) holding DATA_FILES unpacked, made once per test process."""
    root = Path(tempfile.mkdtemp(prefix="echo-test-data-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    for rel, src in DATA_FILES.items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return root


def make_indexed_dataset(
    prefix: str, n_docs: int, vocab: int, seed: int, min_len: int = 8, max_len: int = 80
) -> str:
    """A megatron ``.bin/.idx`` pair of random documents (token ids < vocab - 1; vocab - 1 is EOD)."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(seed)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for _ in range(n_docs):
        n = int(rng.integers(min_len, max_len))
        # skewed unigram distribution so that the model has something to learn
        doc = np.minimum(rng.geometric(0.05, size=n), vocab - 2).astype(np.int32)
        builder.add_document(torch.from_numpy(np.append(doc, vocab - 1).astype(np.int32)), [n + 1])
    builder.finalize(prefix + ".idx")
    return prefix


def writable(cfg):
    """A writable deep copy of a loaded (read-only) config, for tests that build variants of it by hand."""
    from omegaconf import OmegaConf

    out = cfg.copy()
    OmegaConf.set_readonly(out, False)
    return out


def write_recipe(path: Path, text: str) -> str:
    path.write_text(f"base: {REPO / 'recipes' / 'tiny_cpu.yaml'}\n" + text)
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(
    args: list[str], nproc: int = 1, env: dict | None = None, timeout: int = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``echo-megatron ARGS`` in 1 process or under torchrun with N processes."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    if nproc == 1:
        cmd = [sys.executable, "-m", "echo_megatron", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}",
            "-m",
            "echo_megatron",
            *args,
        ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        )
    return r


def losses(run_dir: str | Path, key: str = "loss") -> dict[int, float]:
    """step -> value from metrics.jsonl (the last row of a step wins, as after a resume)."""
    out: dict[int, float] = {}
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if row.get("phase") == "pretrain":
                out[row["step"]] = row[key]
    return out


def assert_close_losses(a: dict[int, float], b: dict[int, float], rtol: float) -> None:
    assert a.keys() == b.keys() and a, (sorted(a), sorted(b))
    for step in a:
        assert abs(a[step] - b[step]) <= rtol * abs(a[step]), (step, a[step], b[step])
