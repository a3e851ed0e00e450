"""Document-aligned rows: one document per sample, starting at position 0 as at inference, padded to L.

``DocumentAlignedDataset`` is a megatron ``MegatronDataset`` that ``BlendedMegatronDatasetBuilder`` builds exactly
like ``GPTDataset``; select it with ``data.document_aligned: true`` and give the loss mode in
:class:`AlignedDatasetConfig` (a ``GPTDatasetConfig`` with one more field)::

    config = AlignedDatasetConfig(random_seed=..., sequence_length=L, blend=..., split=..., tokenizer=tok,
                                  loss_on=cfg.data.loss_on)       # "all" | "solution"
    BlendedMegatronDatasetBuilder(DocumentAlignedDataset, [S, V, T], lambda: True, config).build()

Sample ``i`` is document ``order[i]``: the split's documents in a seeded permutation, a fresh permutation per
epoch, as many epochs as ``num_samples`` needs. Its tokens ``t`` (with the trailing EOD, cut to L + 1) give

    tokens = t[:-1], labels = t[1:]  (padded to L; padding has loss_mask 0)
    loss_mask[j] = 0 where labels[j] is a prompt token (j < prompt_len - 1) when loss_on == "solution"

so the loss covers the solution and its EOD only. The prompt lengths come from ``PREFIX.prompt_len.npy``,
written by ``echo-megatron preprocess``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy
import torch
from megatron.core.datasets.gpt_dataset import GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split

LOSS_ON = ("all", "solution")


@dataclass
class AlignedDatasetConfig(GPTDatasetConfig):
    """``GPTDatasetConfig`` + ``loss_on``; the GPT-only flags default to off (they mean nothing here)."""

    reset_position_ids: Optional[bool] = False
    reset_attention_mask: Optional[bool] = False
    eod_mask_loss: Optional[bool] = False
    create_attention_mask: bool = False
    loss_on: str = "all"  # all | solution (no loss on the prompt tokens)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"data.loss_on: '{self.loss_on}' is not one of {', '.join(LOSS_ON)}")


def sample_order(indices: numpy.ndarray, num_samples: Optional[int], seed: int) -> numpy.ndarray:
    """Documents of samples 0..n-1: per epoch a permutation of ``indices`` drawn from RandomState(seed),
    ceil(num_samples / len(indices)) epochs (one when num_samples is None)."""
    n = len(indices)
    epochs = 1 if not num_samples or n == 0 else -(-num_samples // n)
    rng = numpy.random.RandomState(seed)
    return numpy.concatenate([rng.permutation(indices) for _ in range(epochs)] or [indices]).astype(
        numpy.int64
    )


def prompt_loss_mask(length: int, prompt_len: int, seq_length: int, loss_on: str) -> numpy.ndarray:
    """loss_mask of a row whose document has ``length`` tokens (after the L + 1 cut): 1 on real labels
    (j < length - 1), 0 on padding and, for loss_on == "solution", on labels inside the prompt (j < prompt_len - 1)."""
    mask = numpy.zeros(seq_length, dtype=numpy.float32)
    mask[: max(0, length - 1)] = 1.0
    if loss_on == "solution":
        mask[: max(0, min(prompt_len, length) - 1)] = 0.0
    return mask


class DocumentAlignedDataset(MegatronDataset):
    def __init__(
        self,
        indexed_dataset: IndexedDataset,
        dataset_path: Optional[str],
        indexed_indices: numpy.ndarray,
        num_samples: Optional[int],
        index_split: Split,
        config: GPTDatasetConfig,
    ) -> None:
        super().__init__(indexed_dataset, dataset_path, indexed_indices, num_samples, index_split, config)
        self.loss_on = getattr(config, "loss_on", "all")
        self.prompt_lens = self._load_prompt_lens(dataset_path, len(indexed_dataset))
        self.order = sample_order(numpy.asarray(indexed_indices), num_samples, config.random_seed)
        pad = self._pad_token_id
        self.pad_id = pad if pad is not None and pad >= 0 else 0

    def _load_prompt_lens(self, dataset_path: Optional[str], num_docs: int) -> numpy.ndarray:
        path = f"{dataset_path}.prompt_len.npy"
        if not os.path.isfile(path):
            if self.loss_on == "solution":
                raise FileNotFoundError(
                    f"{path} not found: data.loss_on=solution needs the prompt-length sidecar; "
                    "run `echo-megatron preprocess RECIPE`"
                )
            return numpy.zeros(num_docs, dtype=numpy.int32)
        lens = numpy.load(path, mmap_mode="r")
        if len(lens) != num_docs:
            raise ValueError(f"{path}: {len(lens)} entries for {num_docs} documents; rerun preprocess")
        return lens

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: IndexedDataset) -> int:
        return low_level_dataset.sequence_lengths.shape[0]

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: GPTDatasetConfig) -> IndexedDataset:
        return IndexedDataset(dataset_path, multimodal=False, mmap=config.mmap_bin_files)

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return MegatronDataset._key_config_attributes() + ["loss_on"]

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: Optional[int]) -> dict[str, torch.Tensor]:
        L = self.config.sequence_length
        doc = int(self.order[0 if idx is None else idx])
        ids = self.dataset.get(doc, offset=0, length=min(int(self.dataset.sequence_lengths[doc]), L + 1))
        row = numpy.full(L + 1, self.pad_id, dtype=numpy.int64)
        row[: len(ids)] = ids
        loss_mask = prompt_loss_mask(len(ids), int(self.prompt_lens[doc]), L, self.loss_on)
        if idx is None:  # a padding sample (megatron's convention): no loss
            loss_mask[:] = 0.0
        text = torch.from_numpy(row)
        out = {
            "tokens": text[:-1].contiguous(),
            "labels": text[1:].contiguous(),
            "loss_mask": torch.from_numpy(loss_mask),
            "position_ids": torch.arange(L, dtype=torch.long),
        }
        if getattr(self.config, "create_attention_mask", False):
            out["attention_mask"] = torch.triu(torch.ones(1, L, L, dtype=torch.bool), diagonal=1)
        return out
