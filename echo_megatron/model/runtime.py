"""The runtime a model is built for: device, TransformerEngine, layer implementation, precision, CPU shims.

Everything the builder needs to know about *this machine* is answered here, in one place, and handed to
it as a :class:`Runtime`; the builder itself probes nothing. :func:`resolve_runtime` is called

* by a command before any process group starts (``pretrain``, ``rl``): a setting this machine cannot run
  (``train.precision=fp8`` on a CPU, ``model.transformer_impl=transformer_engine`` without TE or CUDA, a
  GPU without FP8 tensor cores) is a :class:`ConfigError`, the CLI's one-line exit 2, not a traceback;
* by the model setup after ``distributed.init.initialize``, which on a CPU has installed the shims of
  ``distributed.cpu_shims``: their record (:attr:`Runtime.cpu_shims`) carries the TransformerConfig
  fusion fields they make usable, and one Runtime is passed to every model chunk that setup builds.

TransformerEngine is probed once, by ``model.precision.te_available`` (the same import the TE layer spec and
the FP8 regions need).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from echo_megatron.config import ConfigError
from echo_megatron.distributed.cpu_shims import CpuShims, installed_shims
from echo_megatron.distributed.init import resolve_device
from echo_megatron.model import precision

PRECISIONS = ("fp32", "bf16", "fp8")
IMPLS = ("local", "transformer_engine")


@dataclass(frozen=True)
class Runtime:
    device: torch.device  # cpu | cuda (the process's current CUDA device)
    transformer_impl: str  # local | transformer_engine (``auto`` resolved)
    precision: str  # fp32 | bf16 | fp8
    te_available: bool
    cpu_shims: CpuShims | None = None  # installed by distributed.init on CPU runs; None on GPU and before

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def transformer_overrides(self, *, rope: bool, trained: bool) -> dict[str, Any]:
        """The ``TransformerConfig`` fields this runtime decides: parameter dtype from the precision, the CPU
        shims' fusions for the local spec (see ``CpuShims.transformer_overrides``; GPU runs keep them off
        in the local spec, TE has its own kernels), and freeing pipeline outputs early on a GPU."""
        half = self.precision in ("bf16", "fp8")
        dtype = torch.bfloat16 if half else torch.float32
        out: dict[str, Any] = dict(
            bf16=half,
            params_dtype=dtype,
            pipeline_dtype=dtype,
            apply_rope_fusion=False,
            gradient_accumulation_fusion=False,
            deallocate_pipeline_outputs=not self.on_cpu,
        )
        if self.cpu_shims is not None and self.transformer_impl == "local":
            out.update(self.cpu_shims.transformer_overrides(rope=rope, trained=trained))
        return out


def resolve_transformer_impl(cfg: Any) -> str:
    """``local`` | ``transformer_engine``; ``auto`` = TE when importable and CUDA is present."""
    impl = cfg.model.transformer_impl
    te_ok, cuda = precision.te_available(), torch.cuda.is_available()
    if impl == "auto":
        return "transformer_engine" if te_ok and cuda else "local"
    if impl == "transformer_engine" and not (te_ok and cuda):
        raise RuntimeError(
            "model.transformer_impl=transformer_engine needs TransformerEngine and a CUDA GPU "
            f"(TransformerEngine importable: {te_ok}; CUDA available: {cuda}). "
            "Use model.transformer_impl=local on CPU."
        )
    if impl not in IMPLS:
        raise ValueError(
            f"model.transformer_impl: unknown value '{impl}' (local | transformer_engine | auto)"
        )
    return impl


def check_precision(cfg: Any, impl: str) -> None:
    """``train.precision`` this machine and layer implementation can run."""
    prec = cfg.train.precision
    if prec not in PRECISIONS:
        raise ValueError(f"train.precision: unknown value '{prec}' ({' | '.join(PRECISIONS)})")
    if prec == "fp8" and impl != "transformer_engine":
        missing = ""
        if torch.cuda.is_available() and not precision.te_available():
            missing = "; this machine has CUDA but needs TransformerEngine: pip install 'echo-megatron[gpu]'"
        raise RuntimeError(
            "train.precision=fp8 needs model.transformer_impl=transformer_engine on a CUDA GPU "
            f"with TransformerEngine (FP8 is an H100/Hopper feature){missing}"
        )
    if prec == "bf16" and not torch.cuda.is_available():
        raise RuntimeError("train.precision=bf16 is for GPU runs; CPU runs use fp32")


def resolve_runtime(cfg: Any) -> Runtime:
    """The :class:`Runtime` for ``cfg`` on this machine; a :class:`ConfigError` naming what it cannot run."""
    try:
        device = resolve_device(cfg)
        impl = resolve_transformer_impl(cfg)
        check_precision(cfg, impl)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    if cfg.train.precision == "fp8":
        precision.validate_fp8(cfg.fp8, cfg.model.num_layers, cfg.parallel.pp)
        problem = precision.fp8_runtime_problem()
        if problem:
            raise ConfigError(problem)
    return Runtime(
        device=device,
        transformer_impl=impl,
        precision=cfg.train.precision,
        te_available=precision.te_available(),
        cpu_shims=installed_shims() if device.type == "cpu" else None,
    )
