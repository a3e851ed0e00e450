"""Rollouts: the KV-cache sampler over the megatron model behind a small backend interface (docs/rollout.md)."""

from echo_megatron.rollout.backend import Rollout, RolloutBackend, SamplingParams, make_backend
from echo_megatron.rollout.sampler import Sampler

__all__ = ["Rollout", "RolloutBackend", "Sampler", "SamplingParams", "make_backend"]
