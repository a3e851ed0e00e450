"""Normalisation layers built by megatron's layer specs (local spec).

``NonParametricLayerNorm`` is OLMo-1's norm (Groeneveld et al. 2024): LayerNorm with no learnable
gain or bias, y = (x - mean(x)) / sqrt(var(x) + eps). ``LayerNorm`` and ``RMSNorm`` are the usual
parametric ones. Unlike torch's norms wrapped by megatron's local spec, these accept
``sequence_parallel=True``: their parameters are marked so megatron all-reduces their grads over TP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig


class Norm(torch.nn.Module):
    """The norm ``kind`` (``model.normalization``; model.builder passes it through the layer spec's params),
    else megatron's ``config.normalization``."""

    def __init__(
        self,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        kind: str | None = None,
        **_: object,
    ) -> None:
        super().__init__()
        self.kind = kind or config.normalization
        self.eps = eps
        self.hidden_size = hidden_size
        if self.kind == "NonParametricLayerNorm":
            self.weight = None
        elif self.kind in ("LayerNorm", "RMSNorm"):
            self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
            self.weight.sequence_parallel = config.sequence_parallel
        else:
            raise ValueError(f"model.normalization: unknown norm '{self.kind}'")
        if self.kind == "LayerNorm" and config.add_bias_linear:
            self.bias = torch.nn.Parameter(torch.zeros(hidden_size, dtype=config.params_dtype))
            self.bias.sequence_parallel = config.sequence_parallel
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "RMSNorm":
            return F.rms_norm(x, (self.hidden_size,), self.weight, self.eps)
        return F.layer_norm(x, (self.hidden_size,), self.weight, self.bias, self.eps)
