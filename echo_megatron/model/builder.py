"""Config -> megatron-core ``GPTModel``, in four steps:

1. the runtime: device, layer implementation, precision, CPU shims (``model.runtime.resolve_runtime``; the
   callers that build several models resolve it once and pass it in);
2. the ``TransformerConfig`` (:func:`transformer_config`): the architecture from ``cfg.model``, the layout from
   ``cfg.parallel``, and what the runtime decides (dtypes, the CPU shims' fusions, FP8 recipe knobs);
3. the layer spec (:func:`layer_spec`): megatron's local spec with our core attention, MLP and norms (the
   norm kind rides in the spec's params), or the TransformerEngine spec;
4. the model (:func:`build_model`) for the calling rank's pipeline stage.

Parallelism is applied to the model afterwards (training/setup.py wraps it in megatron DDP).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from echo_megatron.config import ConfigError
from echo_megatron.model.precision import fp8_transformer_kwargs
from echo_megatron.model.runtime import Runtime, resolve_runtime
from echo_megatron.model.vocab import padded_vocab_size


def truncated_normal_init(std: float):
    """N(0, std) truncated at +-3 std (the paper's / OLMo's init)."""

    def init_(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.trunc_normal_(t, mean=0.0, std=std, a=-3 * std, b=3 * std)

    return init_


def transformer_config(cfg: DictConfig, runtime: Runtime | None = None, *, for_ddp: bool = False):
    """The megatron ``TransformerConfig`` for ``cfg.model`` / ``cfg.parallel`` / ``cfg.train`` on ``runtime``
    (resolved here when not given).

    ``for_ddp``: the model will be wrapped in megatron DDP and trained, so its weights get a ``main_grad``
    buffer (on a CPU the shims then accumulate weight gradients straight into it).
    """
    from megatron.core.transformer.transformer_config import TransformerConfig

    runtime = runtime or resolve_runtime(cfg)
    m, p = cfg.model, cfg.parallel
    init = truncated_normal_init(m.init_method_std)
    kwargs = dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        ffn_hidden_size=m.ffn_hidden_size or 4 * m.hidden_size,
        normalization="RMSNorm" if m.normalization == "RMSNorm" else "LayerNorm",
        layernorm_epsilon=m.layernorm_epsilon,
        add_bias_linear=m.add_bias_linear,
        gated_linear_unit=m.activation == "swiglu",
        activation_func=F.silu if m.activation == "swiglu" else F.gelu,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method=init,
        output_layer_init_method=init,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tp,
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        sequence_parallel=p.sequence_parallel and p.tp > 1,
        use_cpu_initialization=True,  # TP-invariant init: the full matrix is drawn, then split
        calculate_per_token_loss=True,  # exact token-mean losses across DP / micro-batch layouts
        masked_softmax_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        persist_layer_norm=False,
    )
    if m.recompute:
        kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    kwargs.update(runtime.transformer_overrides(rope=m.position_embedding_type == "rope", trained=for_ddp))
    kwargs.update(fp8_transformer_kwargs(cfg))  # validated FP8 recipe knobs (empty unless precision=fp8)
    return TransformerConfig(**kwargs)


def layer_spec(cfg: DictConfig, tc, runtime: Runtime, vp_stage: int | None = None):
    """Block spec for this rank's pipeline stage: the local spec with our modules, or the TE spec."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.transformer_block import (
        TransformerBlockSubmodules,
        get_num_layers_to_build,
    )

    from echo_megatron.model.attention import SDPAttention
    from echo_megatron.model.mlp import GatedMLP
    from echo_megatron.model.norms import Norm

    if runtime.transformer_impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm

        spec = get_gpt_layer_with_transformer_engine_spec()
        final_norm = TENorm
    else:
        spec = get_gpt_layer_local_spec()
        core = cfg.model.core_attention
        if core == "sdpa":
            spec.submodules.self_attention.submodules.core_attention = SDPAttention
        elif core != "megatron":
            raise ConfigError(f"model.core_attention: unknown value '{core}' (sdpa | megatron)")
        spec.submodules.mlp = GatedMLP  # the local spec's linears; see model/mlp.py
        final_norm = ModuleSpec(module=Norm, params={"kind": cfg.model.normalization})
        spec.submodules.input_layernorm = final_norm
        spec.submodules.pre_mlp_layernorm = final_norm
    n = get_num_layers_to_build(tc, vp_stage=vp_stage, pp_rank=ps.get_pipeline_model_parallel_rank())
    return TransformerBlockSubmodules(layer_specs=[spec] * n, layer_norm=final_norm)


def build_model(
    cfg: DictConfig,
    vocab_size: int,
    vp_stage: int | None = None,
    pre_process: bool | None = None,
    post_process: bool | None = None,
    for_ddp: bool = False,
    runtime: Runtime | None = None,
):
    """A megatron ``GPTModel`` for this rank's pipeline stage (unwrapped, on the CPU until moved).

    ``vocab_size``: the tokenizer's (padded here, ``model.vocab.padded_vocab_size``). ``for_ddp``: it will be wrapped
    in megatron DDP and trained (see :func:`transformer_config`). ``runtime``: resolved here when not given."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel

    runtime = runtime or resolve_runtime(cfg)
    tc = transformer_config(cfg, runtime, for_ddp=for_ddp)
    if pre_process is None:
        pre_process = ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    model = GPTModel(
        config=tc,
        transformer_layer_spec=layer_spec(cfg, tc, runtime, vp_stage),
        vocab_size=padded_vocab_size(vocab_size, cfg.model.make_vocab_size_divisible_by, cfg.parallel.tp),
        max_sequence_length=cfg.model.seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=not cfg.model.untie_embeddings_and_output_weights,
        position_embedding_type=cfg.model.position_embedding_type,
        rotary_base=cfg.model.rotary_base,
        vp_stage=vp_stage,
        **rope_scaling_kwargs(cfg.model),
    )
    if tc.params_dtype != torch.float32:
        # Some modules ignore params_dtype (learned position embeddings are a plain torch Embedding): cast the
        # whole model, as megatron's Float16Module does, so no fp32 weight meets bf16 activations.
        model.to(dtype=tc.params_dtype)
    if (
        runtime.transformer_impl == "transformer_engine"
        and cfg.model.normalization == "NonParametricLayerNorm"
    ):
        freeze_te_norm_params(model)
    return model


def rope_scaling_kwargs(m: DictConfig) -> dict:
    """GPTModel's RoPE-scaling arguments for ``model.rope_scaling``: ``linear`` divides positions by the factor
    (megatron's ``seq_len_interpolation_factor``); ``llama3`` is megatron's Llama-3.x frequency rule (low / high
    frequency factors 1 / 4 over an original context of 8192, as Llama 3.1 / 3.2 ship)."""
    from echo_megatron.config.loader import ConfigError

    kind = m.rope_scaling
    if kind is None:
        return {}
    if kind == "linear":
        return {"seq_len_interpolation_factor": float(m.rope_scaling_factor)}
    if kind == "llama3":
        return {"rope_scaling": True, "rope_scaling_factor": float(m.rope_scaling_factor)}
    raise ConfigError(f"model.rope_scaling: unknown value '{kind}' (null | linear | llama3)")


def freeze_te_norm_params(model: torch.nn.Module) -> None:
    """TE fuses a parametric LayerNorm into its linears; gain 1 / bias 0, frozen == non-parametric LN."""
    for name, p in model.named_parameters():
        if name.endswith(("layer_norm_weight", "final_layernorm.weight")):
            torch.nn.init.ones_(p.data)
            p.requires_grad_(False)
        elif name.endswith(("layer_norm_bias", "final_layernorm.bias")):
            torch.nn.init.zeros_(p.data)
            p.requires_grad_(False)
