"""The rollout interface the RL loop and eval use, independent of the engine behind it.

A backend turns token-id prompts into :class:`Rollout` records. The in-process megatron sampler
(``rollout/sampler.py``) is the one implemented; a GPU engine (megatron-core's dynamic inference engine,
vLLM, SGLang) would be a second class with the same two methods. docs/rollout.md explains how one slots in
and what keeping its weights in sync costs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

FINISH_REASONS = ("eos", "stop", "length")


@dataclass
class Rollout:
    """One sampled response.

    ``response_ids`` are exactly the sampled tokens, ``logprobs[i]`` = log_softmax(z_i / T)[response_ids[i]]
    (T = 1 for greedy), the value a teacher-forced training forward gives for the same tokens.
    finish_reason:
      * ``eos``: the last response token is the EOS id (kept in ``response_ids``, with its log-prob: the
        policy chose to stop); ``text`` excludes it.
      * ``stop``: a stop string or stop token sequence was completed by the last token; ``response_ids``
        end with that token (a stop string may end inside it); ``text`` is cut where the stop begins and
        ``stop`` names what matched.
      * ``length``: ``max_new_tokens`` or the sampler's ``max_seq_len`` was reached.
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    text: str | None = None  # the decoded response (when the sampler has a decode function)
    stop: str | list[int] | None = None

    @property
    def ids(self) -> list[int]:
        """prompt + response, as the training forward sees them."""
        return self.prompt_ids + self.response_ids


@dataclass
class SamplingParams:
    """Keyword arguments of ``generate`` (``RolloutConfig`` carries the same names)."""

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_seqs: list[list[int]] = field(default_factory=list)
    seed: int = 0
    ignore_eos: bool = False

    @classmethod
    def from_config(cls, rollout_cfg, **overrides) -> SamplingParams:
        keys = ("n", "max_new_tokens", "temperature", "top_p", "top_k", "seed")
        kw = {k: getattr(rollout_cfg, k) for k in keys}
        kw["stop"] = list(getattr(rollout_cfg, "stop", []) or [])
        kw.update(overrides)
        return cls(**kw)

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        if any(not s for s in self.stop_token_seqs):
            raise ValueError("stop token sequences must be non-empty")


class RolloutBackend(Protocol):
    """What the RL loop and eval call. All ranks of a tensor-parallel group call ``generate`` together."""

    def generate(self, prompts: Sequence[Sequence[int]], **params) -> list[Rollout]:
        """``len(prompts) * n`` rollouts ordered by (prompt_index, sample_index)."""
        ...

    def sync_weights(self) -> float:
        """Make the engine sample from the policy's current weights; returns the seconds it took."""
        ...


def make_backend(
    name: str,
    model,
    *,
    eod_id: int,
    pad_id: int,
    max_seq_len: int,
    vocab_size: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
    max_batch: int = 64,
) -> RolloutBackend:
    """The backend named by ``rollout.backend``: ``megatron`` (in-process KV-cache sampler on ``model``)."""
    if name == "megatron":
        from echo_megatron.rollout.sampler import Sampler

        return Sampler(
            model,
            eod_id=eod_id,
            pad_id=pad_id,
            max_seq_len=max_seq_len,
            vocab_size=vocab_size,
            decode=decode,
            max_batch=max_batch,
        )
    raise ValueError(
        f"rollout.backend: unknown backend '{name}' (megatron; see docs/rollout.md for adding a GPU engine)"
    )
