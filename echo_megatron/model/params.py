"""Parameter counts of a model config, by component, from a meta-device build (no memory allocated)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from omegaconf import DictConfig, OmegaConf

COMPONENTS = ("embedding", "attention", "mlp", "norms", "output_layer")


def _component(name: str) -> str:
    if "embedding" in name:
        return "embedding"
    if "output_layer" in name:
        return "output_layer"
    if "self_attention" in name and "layer_norm" not in name:
        return "attention"
    if "mlp" in name and "layer_norm" not in name:
        return "mlp"
    return "norms"


def count_by_component(model: torch.nn.Module) -> OrderedDict[str, int]:
    counts: OrderedDict[str, int] = OrderedDict((c, 0) for c in COMPONENTS)
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        counts[_component(name)] += p.numel()
    counts["total"] = sum(counts[c] for c in COMPONENTS)
    return counts


def count_parameters(cfg: DictConfig, vocab_size: int | None = None) -> OrderedDict[str, int]:
    """Build the full (TP=PP=1) model on the meta device and count its parameters per component.

    ``vocab_size``: default the vocabulary ``cfg`` trains (``model.vocab.resolve_vocab``; ``model.vocab_size``
    when its tokenizer is not on this machine)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from echo_megatron.distributed.init import _free_port
    from echo_megatron.model.builder import build_model
    from echo_megatron.model.vocab import resolve_vocab

    vocab_size = vocab_size or resolve_vocab(cfg, missing_ok=True).size
    cfg = OmegaConf.merge(
        cfg,
        {
            "parallel": {"tp": 1, "pp": 1, "vpp": None, "sequence_parallel": False, "device": "cpu"},
            "model": {"transformer_impl": "local"},
            "train": {"precision": "fp32"},
        },
    )
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{_free_port()}")
    own_ps = not ps.model_parallel_is_initialized()
    if own_ps:
        ps.initialize_model_parallel(1, 1)
    try:
        with torch.device("meta"):
            model = build_model(cfg, vocab_size, pre_process=True, post_process=True)
        return count_by_component(model)
    finally:
        if own_ps:
            ps.destroy_model_parallel()
        if own_group:
            dist.destroy_process_group()


def human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}" if unit == "B" else f"{n / div:.1f}{unit}"
    return str(int(n))
