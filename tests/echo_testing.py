"""Helpers for tests that run the CLI: tiny indexed datasets, recipes and launches (1 or N processes)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


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
