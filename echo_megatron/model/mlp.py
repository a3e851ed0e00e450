"""SwiGLU MLP for the local layer spec: megatron-core's ``MLP`` with a leaner gated activation.

megatron-core 0.16's unfused gated path computes ``act(x_glu) * (x_linear + glu_linear_offset)``: with the
default offset 0 the addition is a full extra pass (and a saved tensor) over the ``[s, b, ffn]`` activations
in every layer, ~2x the activation's time on a CPU. Here the gated unit is SwiGLU (Shazeer 2020, eq. 6:
FFN(x) = (Swish(x W) * x V) W2), computed as ``act(gate) * up`` on the two halves of ``linear_fc1``'s output.
Everything else (the linears, their TP sharding, the sharded state dict with its SwiGLU split) is megatron's;
configurations this path does not cover (clamping, an offset, expert scaling, TE activations) fall back to it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig


class SwiGLU(torch.autograd.Function):
    """y = silu(gate) * up on ``h = [gate; up]`` (last dim). The backward writes both halves' gradients straight
    into one ``h``-shaped buffer (no ``cat`` of the two, which autograd's ``chunk`` backward does):
    d gate = g * up * silu'(gate), d up = g * silu(gate)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        gate, up = torch.chunk(h, 2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate, up, act)
        return act * up

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        gate, up, act = ctx.saved_tensors
        n = gate.shape[-1]
        grad_h = torch.empty(*grad.shape[:-1], 2 * n, dtype=grad.dtype, device=grad.device)
        torch.mul(grad, act, out=grad_h[..., n:])
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_h[..., :n])
        return grad_h


class GatedMLP(MLP):
    """megatron ``MLP`` whose gated-linear-unit activation is ``act(gate) * up`` without extra passes.

    The layer spec names the class itself (not a ``ModuleSpec``): megatron's ``TransformerLayer`` then builds it
    with the default TP group and no warning, and the linears default to the local spec's.
    """

    def __init__(self, config: TransformerConfig, submodules: MLPSubmodules | None = None, **kwargs) -> None:
        local = MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)
        super().__init__(config, submodules or local, **kwargs)

    def forward(self, hidden_states: torch.Tensor, per_token_scale: torch.Tensor | None = None, **kwargs):
        c = self.config
        if (
            not c.gated_linear_unit
            or per_token_scale is not None
            or c.bias_activation_fusion
            or c.use_te_activation_func
            or c.activation_func_clamp_value is not None
            or c.glu_linear_offset != 0.0
        ):
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        h, bias = self.linear_fc1(hidden_states)  # [s, b, 2 * ffn / tp]: this rank's [gate; up]
        if bias is not None:
            h = h + bias
        if self.activation_func is F.silu:
            return self.linear_fc2(SwiGLU.apply(h))
        gate, up = torch.chunk(h, 2, dim=-1)
        return self.linear_fc2(self.activation_func(gate) * up)
