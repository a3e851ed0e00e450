"""Rollouts -> ``Experience``: the padded training tensors of one RL step, in label space.

Row i holds prompt + response, right-padded. Position ``j`` predicts ``labels[j] = tokens[j + 1]``; the
response mask is 1 where ``labels[j]`` is a response token. Log-probs, values, rewards and advantages all
live on these positions, so the policy's ``logp[j]`` and the critic's ``V[j]`` describe the same action.

An ``Experience`` is immutable: each stage of a step adds what it computed with ``replace`` (old / reference
log-probs and values where the models are, then advantages and returns from the algorithm). Slices of rows
(``micro_batches``, ``mini_batches``) are Experiences too; they are what megatron's schedule hands to the
forward and loss functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from echo_megatron.rl.functional import mini_batch_rows, span_mask
from echo_megatron.rollout.backend import Rollout

# [rows, width] tensors filled with the pad token (not 0) when the width grows
_TOKEN_FIELDS = ("tokens", "labels")


@dataclass(frozen=True)
class Experience:
    """``[rows, width]`` tensors of one batch of rollouts; the optional ones are None until computed."""

    tokens: torch.Tensor  # prompt + response ids, right-padded with the pad id
    labels: torch.Tensor  # tokens shifted left by one (the last column: pad)
    mask: torch.Tensor  # float, 1 where labels[j] is a response token
    position_ids: torch.Tensor
    sampler_logp: torch.Tensor  # the sampler's log-probs of the response tokens (0 elsewhere)
    old_logp: torch.Tensor | None = None  # the policy's, before this step's update
    ref_logp: torch.Tensor | None = None  # the frozen reference's (KL term)
    old_values: torch.Tensor | None = None  # the critic's, before this step's update
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None  # the critic's targets

    @classmethod
    def from_rollouts(cls, rollouts: Sequence[Rollout], pad_id: int) -> Experience:
        """One row per rollout, as wide as the longest prompt + response."""
        n = len(rollouts)
        prompt_len = torch.tensor([len(r.prompt_ids) for r in rollouts])
        total_len = prompt_len + torch.tensor([len(r.response_ids) for r in rollouts])
        width = int(total_len.max())
        tokens = torch.full((n, width), pad_id, dtype=torch.long)
        # label positions of the response tokens: [prompt length - 1, total length - 1)
        mask = span_mask(prompt_len - 1, total_len - 1, width).float()
        sampler_logp = torch.zeros(n, width, dtype=torch.float32)
        for i, r in enumerate(rollouts):
            ids = r.prompt_ids + r.response_ids
            tokens[i, : len(ids)] = torch.tensor(ids)
            sampler_logp[i, len(r.prompt_ids) - 1 : len(ids) - 1] = torch.tensor(
                r.logprobs, dtype=torch.float32
            )
        labels = torch.full_like(tokens, pad_id)
        labels[:, :-1] = tokens[:, 1:]
        position_ids = torch.arange(width).unsqueeze(0).expand(n, width).contiguous()
        return cls(tokens, labels, mask, position_ids, sampler_logp)

    @property
    def rows(self) -> int:
        return self.tokens.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields computed so far, by name."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }

    def replace(self, **fields: torch.Tensor | None) -> Experience:
        return dataclasses.replace(self, **fields)

    def _map(self, fn) -> Experience:
        return dataclasses.replace(self, **{k: fn(k, v) for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> Experience:
        return self._map(lambda _, t: t.to(device, non_blocking=True))

    def pad_to(self, multiple: int, pad_id: int) -> Experience:
        """Right-pad the width to a multiple of ``multiple`` (FP8 GEMMs need multiples of 16).

        ``tokens`` / ``labels`` get ``pad_id``, ``position_ids`` keep counting, every other tensor (mask,
        log-probs, values, advantages) gets 0, so padded positions are never loss tokens. With causal
        attention a right pad changes no earlier position's output. An aligned Experience is returned as is.
        """
        extra = -self.tokens.shape[1] % multiple
        if extra == 0:
            return self

        def pad(name: str, t: torch.Tensor) -> torch.Tensor:
            if name == "position_ids":
                tail = t[:, -1:] + torch.arange(1, extra + 1, dtype=t.dtype, device=t.device)
            else:
                fill = pad_id if name in _TOKEN_FIELDS else 0
                tail = torch.full((t.shape[0], extra), fill, dtype=t.dtype, device=t.device)
            return torch.cat([t, tail], dim=1)

        return self._map(pad)

    def select(self, rows: slice | torch.Tensor) -> Experience:
        """The given rows (a slice gives views; an index tensor, copies in its order)."""
        if isinstance(rows, torch.Tensor):
            rows = rows.to(self.tokens.device)
        return self._map(lambda _, t: t[rows])

    def micro_batches(self, size: int) -> list[Experience]:
        """Consecutive rows, ``size`` at a time (the last one may be smaller); full width."""
        return [self.select(slice(s, s + size)) for s in range(0, self.rows, size)]

    def mini_batches(
        self, size: int | None, micro_batch_size: int, generator: torch.Generator | None = None
    ) -> list[list[Experience]]:
        """The optimizer steps of one pass over the rows (``functional.mini_batch_rows``), each split into
        micro-batches: shuffled groups of ``size`` rows drawn with ``generator`` (every row in exactly one;
        ``size`` must divide the number of rows), or for ``size`` None all rows in their order, one step."""
        steps = mini_batch_rows(self.rows, size, generator)
        if size is None:
            return [self.micro_batches(micro_batch_size)]
        return [self.select(rows).micro_batches(micro_batch_size) for rows in steps]
