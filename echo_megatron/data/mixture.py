"""Mixtures: per-source multipliers (or weights) -> megatron blend weights, and the table that explains them.

Definitions (per source i, over the *train* split of its documents, which megatron takes as the contiguous
document range given by ``data.split``):

    P_i   samples in one pass over source i:
            packed rows (GPTDataset):        P_i = (T_i - 1) // L       T_i = train tokens, L = model.seq_length
            document-aligned rows:           P_i = D_i                  D_i = train documents
    m_i   the recipe's multiplier (``data.sources.<i>.multiplier``)
    E     = sum_i m_i P_i        samples in one *mixture epoch*: m_i passes over every source i
    w_i   = m_i P_i / E          the blend weight handed to megatron
    S     = train.steps * train.global_batch_size      samples the run draws (megatron's train size)
    passes_i = w_i S / P_i = m_i * (S / E)

So multiplier N means N passes over that source (and 0.5 half of it) per mixture epoch; a run of one mixture epoch
makes the passes equal the multipliers, and a run of R epochs gives R * m_i passes. ``train.epochs: R`` sets the
run's length that way: ``train.steps = floor(R * E / global_batch_size)`` (:func:`epoch_steps`), the paper's
``max_duration: 1ep`` whose ``max_steps = floor(sum_files floor(tokens_f / 2048) / 512)`` (OLMo drops each file's
tail and the last partial batch; here each source's tail, ``(T_i - 1) // L``, and the last partial batch).
``echo-megatron mixture`` prints the steps of one epoch. With explicit ``weight``s (all sources, or none) the
weights are normalized as given, the table shows the passes they imply, and an epoch is undefined.

A source is written as shards (echo_megatron/data/shards.py), each its own megatron prefix, and megatron splits
each prefix by ``data.split`` on its own; so P_i is the sum over the source's shards s of their P_is (the same
formula on each shard's train split), and the blend gives shard s the weight

    w_is = w_i P_is / P_i

so that every shard is read at the same rate: the source's weight, passes and share are those above, and a
source of one shard is exactly as before. Shards with no full sample (P_is = 0) are left out of the blend.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from echo_megatron.data.preprocess import plan_sources
from echo_megatron.data.records import DataError
from echo_megatron.data.shards import PLAN, read_manifest, shard_prefixes


@dataclass
class MixtureRow:
    source: str
    prefix: str  # the source's folder: <indexed_dir>/<source>
    format: str
    docs: int  # all documents of the source
    tokens: int
    train_docs: int
    train_tokens: int
    per_pass: int  # P_i: samples in one pass over the train split
    multiplier: float | None
    weight: float  # normalized blend weight w_i
    share: float  # share of the run's tokens
    passes: float  # passes over the source's train split in the configured run
    format_counts: dict[str, int] = field(default_factory=dict)
    shards: list[tuple[str, int]] = field(default_factory=list)  # (megatron prefix, P_is) per shard

    def blend(self) -> list[tuple[str, float]]:
        """(prefix, w_is = w_i P_is / P_i) of the shards with samples."""
        return [(prefix, self.weight * pp / self.per_pass) for prefix, pp in self.shards if pp > 0]


@dataclass
class Mixture:
    rows: list[MixtureRow]
    seq_length: int
    document_aligned: bool
    run_samples: int  # S
    epoch_samples: int  # E (0 with explicit weights)
    global_batch_size: int
    run_steps: int = 0  # train.steps, or what train.epochs resolves to
    epochs: float | None = None  # train.epochs when it set the length

    @property
    def steps_per_epoch(self) -> int:
        """train.steps of one mixture epoch: floor(E / global_batch_size), the last partial batch dropped."""
        return epoch_steps(self.epoch_samples, self.global_batch_size) if self.epoch_samples else 0

    def blend(self) -> list[tuple[str, float]]:
        """Megatron's blend: every shard of every source with a positive weight (module docstring)."""
        return [item for r in self.rows if r.weight > 0 for item in r.blend()]


def train_range(num_docs: int, split: str) -> tuple[int, int]:
    """[begin, end) documents of the train split, as megatron computes it: split weights normalized, then
    ``round(begin_fraction * n), round(end_fraction * n)``."""
    parts = [float(x) for x in re.findall(r"[.0-9]+", split)] + [0.0, 0.0, 0.0]
    total = sum(parts[:3])
    if total <= 0:
        raise DataError(f"data.split: '{split}' has no positive part")
    return 0, int(round(parts[0] / total * num_docs))


def epoch_steps(epoch_samples: int, global_batch_size: int, epochs: float = 1.0) -> int:
    """floor(epochs * E / B): optimizer steps in ``epochs`` mixture epochs of E samples at global batch B."""
    return int(math.floor(epochs * epoch_samples / global_batch_size))


def blend_weights(per_pass: list[int], multipliers: list[float]) -> tuple[list[float], int]:
    """(w_i = m_i P_i / E, E = sum_i m_i P_i)."""
    epoch = sum(m * p for m, p in zip(multipliers, per_pass))
    if epoch <= 0:
        raise DataError("the mixture is empty: every source has multiplier 0 or no train samples")
    return [m * p / epoch for m, p in zip(multipliers, per_pass)], int(math.ceil(epoch))


def _train_stats(prefix: str, docs: int, split: str) -> tuple[int, int, np.ndarray]:
    """(train documents, train tokens, train document lengths) of one indexed prefix under ``data.split``."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    index = IndexedDataset(prefix, mmap=False)  # copy the lengths out before the index is closed
    lengths = np.array(index.sequence_lengths)
    del index
    if len(lengths) != docs:
        raise DataError(f"{prefix}: index has {len(lengths)} documents, manifest {docs}: rerun preprocess")
    beg, end = train_range(len(lengths), split)
    return end - beg, int(lengths[beg:end].sum()), lengths[beg:end]


def samples_per_pass(train_docs: int, train_tokens: int, seq_length: int, aligned: bool) -> int:
    """P: documents (document-aligned rows) or ``(T - 1) // L`` packed rows of one train split."""
    return train_docs if aligned else max(0, (train_tokens - 1) // seq_length)


def _check_tokenizer(cfg: Any, name: str, manifest: dict) -> None:
    if not cfg.data.tokenizer.path:
        return
    from echo_megatron.data.tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.data.tokenizer)
    if manifest["tokenizer"]["hash"] != tok.hash:
        raise DataError(
            f"data.sources.{name}: preprocessed with another tokenizer ({manifest['tokenizer']['path']}); "
            "run `echo-megatron preprocess RECIPE` again"
        )


def plan_mixture(cfg: Any) -> Mixture:
    """The mixture of ``cfg`` from the preprocess manifests in ``cfg.data.indexed_dir`` (see module docstring)."""
    plans = plan_sources(cfg)  # a source with multiplier (or weight) 0 is left out: it need not exist
    given = [p.cfg.weight is not None for p in plans]
    if any(given) and not all(given):
        named = [p.name for p, g in zip(plans, given) if g]
        raise DataError(
            f"data.sources: weights given for {named} only; give a weight for every source or none"
        )
    L = int(cfg.model.seq_length)
    aligned = bool(cfg.data.document_aligned)
    plans = [p for p in plans if (p.cfg.multiplier if p.cfg.weight is None else p.cfg.weight) != 0]
    if not plans:
        raise DataError("data.sources: every source has multiplier (or weight) 0")
    rows, per_pass, mults, mean_lens = [], [], [], []
    for p in plans:
        m = read_manifest(p.directory)
        if m is None:
            raise DataError(
                f"data.sources.{p.name}: not preprocessed (no {p.directory}/{PLAN}); "
                "run `echo-megatron preprocess RECIPE` first"
            )
        if m["docs"] == 0:
            raise DataError(f"data.sources.{p.name}: preprocessed source is empty ({p.directory})")
        _check_tokenizer(cfg, p.name, m)
        mult = p.cfg.multiplier
        if mult < 0 or (p.cfg.weight is not None and p.cfg.weight < 0):
            raise DataError(f"data.sources.{p.name}: multiplier and weight must be >= 0")
        shards, train_docs, train_tokens, lengths = [], 0, 0, []
        for prefix, entry in zip(shard_prefixes(p.directory, m), m["shards"]):
            d, t, lens = _train_stats(prefix, entry["docs"], cfg.data.split)
            shards.append((prefix, samples_per_pass(d, t, L, aligned)))
            train_docs, train_tokens = train_docs + d, train_tokens + t
            lengths.append(lens)
        lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        pp = sum(n for _, n in shards)
        if pp == 0 and (mult > 0 if p.cfg.weight is None else p.cfg.weight > 0):
            raise DataError(
                f"data.sources.{p.name}: its train split holds no full sample ({train_tokens} tokens, "
                f"{train_docs} docs, seq_length {L}): add data or lower data.split's valid/test parts"
            )
        mean_len = float(np.minimum(lengths, L + 1).mean()) if aligned and len(lengths) else float(L)
        rows.append(
            MixtureRow(
                p.name, p.directory, m.get("format", ""), m["docs"], m["tokens"], train_docs, train_tokens, pp,
                None if p.cfg.weight is not None else mult, 0.0, 0.0, 0.0, m.get("format_counts", {}), shards,
            )
        )  # fmt: skip
        per_pass.append(pp)
        mults.append(mult)
        mean_lens.append(mean_len)
    if all(given):
        total = sum(p.cfg.weight for p in plans)
        if total <= 0:
            raise DataError("data.sources: the weights sum to 0")
        weights, epoch = [p.cfg.weight / total for p in plans], 0
    else:
        weights, epoch = blend_weights(per_pass, mults)
    gbs, epochs = int(cfg.train.global_batch_size), cfg.train.epochs
    steps = int(cfg.train.steps) if epochs is None else _steps_of_epochs(epoch, gbs, epochs)
    S = steps * gbs
    token_mass = [
        w * n for w, n in zip(weights, mean_lens)
    ]  # tokens per sample: L packed, mean doc length aligned
    for r, w, t in zip(rows, weights, token_mass):
        r.weight = w
        r.share = t / sum(token_mass)
        r.passes = w * S / r.per_pass if r.per_pass else 0.0
    return Mixture(rows, L, aligned, S, epoch, gbs, steps, epochs)


def _steps_of_epochs(epoch_samples: int, gbs: int, epochs: float) -> int:
    if not epoch_samples:
        raise DataError("train.epochs: a mixture epoch needs multipliers (explicit weights define none)")
    steps = epoch_steps(epoch_samples, gbs, epochs)
    if steps < 1:
        raise DataError(
            f"train.epochs {epochs:g}: {epochs:g} x {epoch_samples:,} samples is less than one global batch "
            f"of {gbs}"
        )
    return steps


def resolve_train_steps(cfg: Any) -> int:
    """The run's length in optimizer steps: ``train.steps``, or ``train.epochs`` resolved from the manifests."""
    if cfg.train.epochs is None:
        return int(cfg.train.steps)
    if cfg.data.blend:
        raise DataError(
            "train.epochs: a mixture epoch is defined by data.sources multipliers, not data.blend"
        )
    return plan_mixture(cfg).run_steps


def resolve_blend(cfg: Any) -> list[tuple[str, float]]:
    """[(megatron prefix, weight)] for ``BlendedMegatronDatasetBuilder``: ``data.blend`` if given, else the
    recipe's sources compiled from their multipliers/weights (module docstring). The builder's train size must be
    ``train.steps * train.global_batch_size`` for multiplier N to mean N passes per mixture epoch."""
    if cfg.data.blend:
        out = []
        for item in cfg.data.blend:
            if not (os.path.isfile(item.prefix + ".bin") and os.path.isfile(item.prefix + ".idx")):
                raise DataError(f"data.blend: no indexed dataset at {item.prefix}(.bin/.idx)")
            out.append((item.prefix, float(item.weight)))
        return out
    return plan_mixture(cfg).blend()


def format_table(mix: Mixture) -> str:
    """The ``echo-megatron mixture`` table."""
    head = (
        f"{'source':<18}{'format':<12}{'docs':>10}{'tokens':>13}{'mult':>7}{'weight':>8}{'tokens%':>9}{'passes':>8}"
        f"{'shards':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in mix.rows:
        mult = "w" if r.multiplier is None else f"{r.multiplier:g}x"
        fmt = (
            next(iter(r.format_counts))
            if len(r.format_counts) == 1
            else ("mixed" if r.format_counts else r.format)
        )
        lines.append(
            f"{r.source:<18}{fmt:<12}{r.docs:>10,}{r.tokens:>13,}{mult:>7}{r.weight:>8.3f}"
            f"{100 * r.share:>8.1f}%{r.passes:>8.2f}{len(r.shards):>8}"
        )
    lines.append("-" * len(head))
    unit = "documents (document-aligned rows)" if mix.document_aligned else f"rows of {mix.seq_length} tokens"
    length = f"train.epochs {mix.epochs:g} = " if mix.epochs is not None else ""
    lines.append(
        f"run: {length}train.steps {mix.run_steps:,} x global_batch_size {mix.global_batch_size} = "
        f"{mix.run_samples:,} samples, {unit}"
    )
    if mix.epoch_samples:
        lines.append(
            f"one mixture epoch (passes = multipliers): {mix.epoch_samples:,} samples = "
            f"train.steps {mix.steps_per_epoch:,} at global_batch_size {mix.global_batch_size}; "
            f"this run = {mix.run_samples / mix.epoch_samples:.4f} epochs"
        )
    return "\n".join(lines)
