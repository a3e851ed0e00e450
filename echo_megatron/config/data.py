"""Data: sources, tokenizer, preprocessing, mixture and the format testbed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class SourceConfig:
    """One corpus of the mixture. Registry defaults (files, splits, fields, filters, format) apply unless set here.

    The key under ``data.sources`` names the source; ``type`` picks its registry entry (default: the key),
    so one recipe can hold several sources of the same type (e.g. three testbed files, one per format).
    Which rows are read (echo_megatron/data/sources.py): ``data_files`` if given, else the repo config
    ``hf_config``, else the registry ``variant``'s files for ``split``, else HF's split rules; then ``filters``.
    """

    type: Optional[str] = None  # registry entry (tinygsm, omi1, omi2, ..., testbed); None = the source's key
    # local file or folder: jsonl/json/parquet (.gz/.zst), a `save_to_disk` Arrow folder, or a hub-cache snapshot
    path: Optional[str] = None
    hf_id: Optional[str] = None  # hub dataset id (or a local hub-cache folder) instead of the registry's
    hf_config: Optional[str] = None  # a config of the repo's README (its data_files)
    split: Optional[str] = None  # split(s) of the registry / repo files, "train" or "train+validation"
    revision: Optional[str] = (
        None  # hub revision (branch, tag or commit); the resolved sha goes to the manifest
    )
    data_files: Optional[list[str]] = (
        None  # globs relative to path / the repo root (or absolute, or hf://...)
    )
    variant: Optional[str] = (
        None  # a named file/split/filter choice of the registry entry (None = its default)
    )
    filters: Optional[dict[str, Any]] = None  # field -> allowed value(s), over the registry's; null drops one
    question_field: Optional[str] = None  # field overrides (else the registry's candidate fields)
    solution_field: Optional[str] = None
    max_docs: Optional[int] = None  # the first N documents (then the source is one shard)
    multiplier: float = 1.0  # N = N passes over this source in one mixture epoch; 0.5 = half of it
    weight: Optional[float] = None  # an explicit blend weight instead of the multiplier


@dataclass
class TokenizerConfig:
    # a HF `tokenizers` JSON file (.json / .json.gz), a directory, a SentencePiece .model, or a hub name
    # (meta-llama/Llama-2-7b-hf, the paper's, resolves offline to the copy shipped with the package)
    path: Optional[str] = None
    kind: str = "bpe"  # for `tokenizer train`: bpe (byte-level BPE) | numbers (integers as single tokens)
    vocab_size: int = 4096  # for `tokenizer train`: the BPE target (numbers: before the number tokens)
    min_frequency: int = 2  # for `tokenizer train`: pieces rarer than this are left out
    max_number: int = 999  # numbers: every integer 0..max_number is one token
    train_out: Optional[str] = None  # where `tokenizer train` writes; None = `path`
    eod: Optional[str] = None  # the end-of-document token; None = the tokenizer's EOS/endoftext token
    pad: Optional[str] = None  # the padding token; None = the tokenizer's pad token, else eod


@dataclass
class BlendItem:
    prefix: str = "???"  # megatron indexed-dataset prefix (PREFIX.bin / PREFIX.idx)
    weight: float = 1.0


@dataclass
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    indexed_dir: str = "data/indexed"  # where preprocess writes <source>/shard_NNNNN.bin/.idx + manifest.json
    blend: list[BlendItem] = field(default_factory=list)  # explicit prefixes; else built from sources
    split: str = "98,2,0"
    seed: int = 1234
    num_workers: int = (
        2  # preprocess worker processes, one shard each (0 or 1 = in-process; -1 = one per CPU)
    )
    chunk_docs: int = 256  # documents tokenized per batch inside a worker
    shard_docs: int = 1_000_000  # a single-file source is cut into shards of this many input rows
    progress_interval: float = 30.0  # seconds between progress lines when stdout is not a terminal
    on_bad_record: str = "error"  # error | skip (malformed line or missing field; counted in the manifest)
    document_aligned: bool = False  # one document per row from position 0 (as at inference), padded
    loss_on: str = "all"  # all | solution (prompt-masked loss; needs the prompt-length sidecar)
    mock: bool = False  # megatron's MockGPTDataset (random tokens): for throughput benchmarks only


@dataclass
class TestbedConfig:
    """The controlled three-format arithmetic testbed (`echo-megatron testbed`); defaults = the demo's."""

    out: str = "data/testbed"
    seed: int = 0
    n_train: int = 20000
    n_test: int = 200
    # the harder held-out split (OUT/test_hard.jsonl, eval task testbed_hard; the MATH analogue of the study):
    # every problem has max_ops steps and its + / - operands (and start) lie above max_operand, up to this
    n_hard: int = 200
    hard_max_operand: int = 60
    min_ops: int = 2
    max_ops: int = 3
    min_operand: int = 2
    max_operand: int = 30
    mul_min: int = 2  # multiplier / divisor range of the x and / steps
    mul_max: int = 9
    max_answer: int = 999  # every intermediate value and answer stays in [1, max_answer]
    ops: list[str] = field(default_factory=lambda: ["+", "-", "*", "/"])
    formats: dict[str, float] = field(default_factory=lambda: {"code": 0.2, "code_interp": 0.3, "nl": 0.5})
    tokenizer: str = "numbers"  # numbers | bpe | none: the tokenizer written to OUT/tokenizer.json
    tokenizer_vocab_size: int = 1024  # its BPE target (numbers adds the integers 0..max_answer on top)
    gsm8k_path: Optional[str] = None  # also render this GSM8K train.jsonl into OUT/gsm8k3/ (the gsm8k3 set)
