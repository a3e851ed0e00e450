"""Precision on the GPU path: the FP8 recipe handed to megatron-core / TransformerEngine, the FP8 runtime
check, FP8 regions, shape alignment of RL batches for FP8 GEMMs, and bf16 generation.

Where FP8 happens in megatron-core 0.16.1. ``TransformerBlock.forward`` enters TransformerEngine's
``fp8_autocast`` itself, through ``megatron.core.fp8_utils.get_fp8_context``: once around all layers for the
*delayed* scaling recipe, per layer for the other recipes (that is how ``first_last_layers_bf16`` keeps the
first / last layers in bf16). The pipeline schedules add no context; the backward pass reuses the scaling
state recorded by the forward, and TE reduces the amaxes when the region closes. So a ``GPTModel`` (and the
critic's body) built with ``TransformerConfig.fp8`` trains in FP8 through ``training.step.train_step``
unchanged. What an FP8 run still needs is here:

1. A recipe megatron accepts (:func:`fp8_transformer_kwargs`). ``TransformerConfig`` refuses delayed scaling
   together with ``first_last_layers_bf16`` ("Delayed scaling does not support first / last layer in BF16").
   The amax history / algorithm / margin knobs belong to delayed scaling (Micikevicius et al. 2022, FP8
   Formats for Deep Learning: scale = (fp8_max / amax) / 2^margin, amax = max or most recent over the
   history window); per-tensor *current* scaling (``tensorwise``, TE >= 2.2) computes the scale from the
   tensor itself and can switch precision per layer.
2. A GPU that runs FP8 GEMMs (compute capability >= 8.9) with TE importable (:func:`fp8_runtime_problem`).
   Without TE, megatron's ``get_fp8_context`` silently returns a null context: an "fp8" run would train in
   bf16. :func:`fp8_context` refuses instead.
3. FP8 GEMM shapes. TE's FP8 linears need the token count of a GEMM (sequence x micro-batch rows) to be a
   multiple of 16 and the feature sizes multiples of 16. Pretraining batches (2,048 tokens per row) satisfy
   it; RL experience batches are as wide as their longest rollout: :func:`width_multiple` (``Experience.pad_to``).
4. Generation in bf16. The KV-cache sampler (rollout/kv_cache.py) calls each layer's modules directly, never
   ``TransformerBlock.forward``, so it runs outside any FP8 region and TE's linears use their bf16 GEMMs on
   the same bf16 weights. :func:`bf16_generation` makes that explicit for a caller that is inside an FP8
   region; :func:`generation_overrides` builds an FP8-trained checkpoint for inference in bf16.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from echo_megatron.config.loader import ConfigError

FP8_FORMATS = ("hybrid", "e4m3")  # hybrid: e4m3 forward, e5m2 gradients
FP8_RECIPES = ("delayed", "tensorwise")  # H100 recipes of megatron-core 0.16 (tensorwise: TE >= 2.2)
AMAX_ALGOS = ("max", "most_recent")
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper
FP8_ALIGN = 16  # tokens per GEMM (rows x sequence) and feature sizes, multiples of this


def fp8_recipe(f: Any) -> str:
    """The scaling recipe for ``cfg.fp8``: ``fp8.recipe`` when the config has that field and sets it; else
    ``tensorwise`` when layers stay in bf16 (delayed scaling cannot do that), else ``delayed``."""
    recipe = f.get("recipe", None) if hasattr(f, "get") else getattr(f, "recipe", None)
    if recipe in (None, "auto"):
        return "tensorwise" if f.first_last_layers_bf16 else "delayed"
    return str(recipe)


def validate_fp8(f: Any, num_layers: int, pp: int = 1) -> None:
    """Clear errors for FP8 knobs megatron-core / TE would reject later (or silently ignore)."""
    if f.format not in FP8_FORMATS:
        raise ConfigError(f"fp8.format: unknown value '{f.format}' ({' | '.join(FP8_FORMATS)})")
    recipe = fp8_recipe(f)
    if recipe not in FP8_RECIPES:
        raise ConfigError(f"fp8.recipe: unknown value '{recipe}' ({' | '.join(FP8_RECIPES)})")
    if f.amax_compute_algo not in AMAX_ALGOS:
        raise ConfigError(
            f"fp8.amax_compute_algo: unknown value '{f.amax_compute_algo}' ({' | '.join(AMAX_ALGOS)})"
        )
    if f.amax_history_len < 1:
        raise ConfigError(f"fp8.amax_history_len must be >= 1, got {f.amax_history_len}")
    if f.margin < 0:
        raise ConfigError(f"fp8.margin must be >= 0, got {f.margin}")
    if not f.first_last_layers_bf16:
        return
    if recipe == "delayed":
        raise ConfigError(
            "fp8.first_last_layers_bf16=true needs a per-layer recipe (fp8.recipe=tensorwise): megatron-core "
            "runs delayed scaling as one FP8 region over all layers (or set fp8.first_last_layers_bf16=false)"
        )
    per_stage = num_layers // pp
    for key in ("num_layers_at_start_in_bf16", "num_layers_at_end_in_bf16"):
        n = getattr(f, key)
        if not 0 <= n <= per_stage:
            raise ConfigError(
                f"fp8.{key} must be between 0 and the layers per pipeline stage ({per_stage}), got {n}"
            )
    if f.num_layers_at_start_in_bf16 + f.num_layers_at_end_in_bf16 >= num_layers:
        raise ConfigError(
            f"fp8: {f.num_layers_at_start_in_bf16} + {f.num_layers_at_end_in_bf16} bf16 layers leave none of the "
            f"{num_layers} layers in FP8; use train.precision=bf16"
        )


def check_fp8_sizes(m: Any) -> None:
    """FP8 GEMMs need feature sizes that are multiples of ``FP8_ALIGN`` (hidden, FFN, attention projections)."""
    heads, groups = m.num_attention_heads, m.num_query_groups or m.num_attention_heads
    head_dim = m.hidden_size // heads
    sizes = {
        "model.hidden_size": m.hidden_size,
        "model.ffn_hidden_size": m.ffn_hidden_size or 4 * m.hidden_size,
        "the fused QKV width": (heads + 2 * groups) * head_dim,
    }
    bad = [f"{k} = {v}" for k, v in sizes.items() if v % FP8_ALIGN]
    if bad:
        raise ConfigError(f"train.precision=fp8 needs multiples of {FP8_ALIGN}: " + ", ".join(bad))


def fp8_transformer_kwargs(cfg: Any) -> dict[str, Any]:
    """The ``TransformerConfig`` FP8 fields for ``cfg`` (empty unless ``train.precision=fp8``).

    Delayed scaling gets the amax history, algorithm and margin; tensorwise scaling gets the bf16 layer
    counts (megatron ignores the amax knobs there, so they are not passed).
    """
    if cfg.train.precision != "fp8":
        return {}
    f = cfg.fp8
    validate_fp8(f, cfg.model.num_layers, cfg.parallel.pp)
    check_fp8_sizes(cfg.model)
    recipe = fp8_recipe(f)
    out: dict[str, Any] = {"fp8": f.format, "fp8_recipe": recipe, "fp8_margin": f.margin}
    if recipe == "delayed":
        out.update(fp8_amax_history_len=f.amax_history_len, fp8_amax_compute_algo=f.amax_compute_algo)
    out.update(
        first_last_layers_bf16=bool(f.first_last_layers_bf16),
        num_layers_at_start_in_bf16=f.num_layers_at_start_in_bf16,
        num_layers_at_end_in_bf16=f.num_layers_at_end_in_bf16,
    )
    return out


def te_available() -> bool:
    """Whether TransformerEngine's PyTorch layers import here: the one probe (the TE layer spec, FP8 regions and
    ``model.runtime`` all ask this)."""
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def fp8_runtime_problem(device: int | None = None) -> str | None:
    """Why this process cannot run FP8 GEMMs (None when it can): CUDA, compute capability, TransformerEngine."""
    if not torch.cuda.is_available():
        return "train.precision=fp8 needs a CUDA GPU (none is visible); CPU runs use train.precision=fp32"
    cap = torch.cuda.get_device_capability(device)
    if cap < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(device)
        return (
            f"train.precision=fp8 needs FP8 tensor cores (compute capability >= 8.9: H100, L40S, ...); "
            f"{name} has {cap[0]}.{cap[1]}; use train.precision=bf16"
        )
    if not te_available():
        return "train.precision=fp8 needs TransformerEngine: pip install 'echo-megatron[gpu]' (or an NGC container)"
    try:
        from transformer_engine.pytorch.fp8 import check_fp8_support
    except ImportError:  # newer TE moved it; the capability check above stands
        return None
    ok, reason = check_fp8_support()
    return None if ok else f"TransformerEngine reports no FP8 support here: {reason}"


def check_fp8_runtime(device: int | None = None) -> None:
    problem = fp8_runtime_problem(device)
    if problem:
        raise RuntimeError(problem)


def fp8_context(config: Any, layer_no: int = -1):
    """The FP8 region megatron-core uses for ``config`` (a ``TransformerConfig``), for forwards that do not go
    through ``TransformerBlock.forward``; a null context when FP8 is off. Refuses when FP8 is on and
    TransformerEngine is missing (megatron's helper would silently run bf16)."""
    if not getattr(config, "fp8", None):
        return contextlib.nullcontext()
    if not te_available():
        raise RuntimeError("the model is configured for FP8 but TransformerEngine is not importable")
    from megatron.core.fp8_utils import get_fp8_context

    return get_fp8_context(config, layer_no)


@contextlib.contextmanager
def bf16_generation() -> Iterator[None]:
    """Generation in bf16: any enclosing TransformerEngine FP8 region is switched off inside the block."""
    if not te_available():
        yield
        return
    import transformer_engine.pytorch as te

    with te.fp8_autocast(enabled=False):
        yield


def generation_dtype(precision: str) -> torch.dtype:
    """The dtype generation runs in: bf16 for bf16 and FP8 runs (weights are kept in bf16), else fp32."""
    return torch.bfloat16 if precision in ("bf16", "fp8") else torch.float32


def generation_overrides(precision: str) -> list[str]:
    """Config overrides that build an FP8-trained model for inference in bf16 (same TE layers and weights,
    no FP8 recipe or shape constraints); nothing for the other precisions."""
    return ["train.precision=bf16"] if precision == "fp8" else []


def width_multiple(cfg: Any) -> int:
    """The multiple RL experience batches are padded to: ``FP8_ALIGN`` for FP8 runs, else 1."""
    return FP8_ALIGN if cfg.train.precision == "fp8" else 1
