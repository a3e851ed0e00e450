"""Data: sources, tokenizer, preprocessing, mixture and the format testbed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SourceConfig:
    """One corpus of the mixture. Registry defaults (HF id, fields, format) apply unless set here."""

    path: Optional[str] = None  # local jsonl / json / parquet file or directory (overrides the hub)
    hf_id: Optional[str] = None
    hf_config: Optional[str] = None
    split: Optional[str] = None
    max_docs: Optional[int] = None
    multiplier: float = 1.0  # N = N passes over this source in one run; 0.5 = half of it
    weight: Optional[float] = None  # an explicit blend weight instead of the multiplier


@dataclass
class TokenizerConfig:
    path: Optional[str] = None  # a HF `tokenizers` JSON file, a directory, or a hub name
    vocab_size: int = 4096  # for `echo-megatron tokenizer train`
    train_out: Optional[str] = None


@dataclass
class BlendItem:
    prefix: str = "???"  # megatron indexed-dataset prefix (PREFIX.bin / PREFIX.idx)
    weight: float = 1.0


@dataclass
class DataConfig:
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    indexed_dir: str = "data/indexed"  # where preprocess writes <source>.bin/.idx + manifest
    blend: list[BlendItem] = field(default_factory=list)  # explicit prefixes; else built from sources
    split: str = "98,2,0"
    seed: int = 1234
    num_workers: int = 2
    on_bad_record: str = "error"  # error | skip
    document_aligned: bool = False  # one document per row from position 0 (as at inference), padded
    loss_on: str = "all"  # all | solution (prompt-masked loss; needs the prompt-length sidecar)
    mock: bool = False  # megatron's MockGPTDataset (random tokens): for throughput benchmarks only


@dataclass
class TestbedConfig:
    out: str = "data/testbed"
    seed: int = 0
    n_train: int = 20000
    n_test: int = 200
    min_ops: int = 2
    max_ops: int = 3
    min_operand: int = 2
    max_operand: int = 30
    max_answer: int = 999
    formats: dict[str, float] = field(default_factory=lambda: {"code": 0.2, "code_interp": 0.3, "nl": 0.5})
