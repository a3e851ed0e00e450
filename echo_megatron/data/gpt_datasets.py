"""Megatron datasets for training: indexed ``.bin/.idx`` prefixes blended by weight.

``build_train_valid_datasets`` builds a ``BlendedMegatronDatasetBuilder`` over ``GPTDataset`` (packed
rows, the paper-scale default) or ``DocumentAlignedDataset`` (one document per row from position 0,
optionally solution-only loss: ``data.document_aligned`` / ``data.loss_on``), or megatron's
``MockGPTDataset`` for throughput benchmarks (``data.mock``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist
from omegaconf import DictConfig


@dataclass
class DatasetTokenizer:
    """The two tokenizer facts megatron's datasets read (``pad`` absent -> megatron's -1 sentinel)."""

    vocab_size: int
    eod: int
    name: str = "echo"  # e.g. the tokenizer's content hash: part of megatron's dataset cache key

    @property
    def unique_identifiers(self) -> dict:
        return {
            "class": "DatasetTokenizer",
            "name": self.name,
            "vocab_size": self.vocab_size,
            "eod": self.eod,
        }


def resolve_blend_prefixes(cfg: DictConfig) -> list[tuple[str, float]]:
    if cfg.data.blend:
        blend = [(b.prefix, float(b.weight)) for b in cfg.data.blend]
    else:
        from echo_megatron.data.mixture import resolve_blend

        blend = resolve_blend(cfg)
    if not blend:
        raise ValueError("data: no dataset to train on (set data.blend or data.sources)")
    for prefix, weight in blend:
        for ext in (".bin", ".idx"):
            if not os.path.isfile(prefix + ext):
                raise FileNotFoundError(
                    f"data: missing indexed dataset file {prefix + ext} "
                    f"(run `echo-megatron preprocess` for this recipe)"
                )
        if weight <= 0:
            raise ValueError(f"data: blend weight of {prefix} must be > 0, got {weight}")
    return blend


def build_train_valid_datasets(
    cfg: DictConfig, tokenizer: DatasetTokenizer, train_samples: int, valid_samples: int = 0
):
    """(train, valid) megatron datasets; rank 0 builds the index caches first, the others then read them."""
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset

    common = dict(
        random_seed=cfg.data.seed,
        sequence_length=cfg.model.seq_length,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
        path_to_cache=os.path.join(cfg.run_dir, "data_cache"),
    )
    if cfg.data.mock:
        config, cls = GPTDatasetConfig(split="1,0,0", **common), MockGPTDataset
        config.mock = True
    else:
        blend = resolve_blend_prefixes(cfg)
        blend_arg = ([p for p, _ in blend], [w for _, w in blend] if len(blend) > 1 else None)
        if cfg.data.document_aligned:
            from echo_megatron.data.aligned import AlignedDatasetConfig, DocumentAlignedDataset

            config = AlignedDatasetConfig(
                blend=blend_arg, split=cfg.data.split, loss_on=cfg.data.loss_on, **common
            )
            cls = DocumentAlignedDataset
        else:
            if cfg.data.loss_on != "all":
                raise ValueError("data.loss_on=solution needs data.document_aligned=true")
            config, cls = GPTDatasetConfig(blend=blend_arg, split=cfg.data.split, **common), GPTDataset
    sizes = [train_samples, valid_samples, 0]
    rank = dist.get_rank() if dist.is_initialized() else 0
    datasets = None
    if rank == 0:
        datasets = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    if dist.is_initialized():
        dist.barrier()
    if rank != 0:
        datasets = BlendedMegatronDatasetBuilder(cls, sizes, lambda: True, config).build()
    return datasets[0], datasets[1]
