"""Everything megatron-core 0.16 needs to run on a CPU, in one scoped place.

megatron-core is written for CUDA. On a CPU-only machine (laptops, CI) a handful of its code paths
assume a GPU; each shim below says which and why. They are activated by :func:`enable_cpu_shims`,
which is called only when the run's device is the CPU (never on GPU runs), and are exercised by
``tests/test_cpu_shims.py``.

1. ``CudaToCpuMode`` (a ``TorchFunctionMode``): maps ``device='cuda'`` / ``device=0`` /
   ``torch.cuda.current_device()`` arguments and ``Tensor.cuda()`` calls to the CPU. megatron
   allocates grad buffers, optimizer scalars, grad-clipping norms, pipeline p2p buffers and
   schedule tensors on ``torch.cuda.current_device()``.
   It also answers ``Tensor.type()`` as ``torch.cuda.*Tensor`` for CPU tensors: the optimizer and
   grad clipping assert ``param.type() == 'torch.cuda.FloatTensor'`` to pick fp32 paths.
2. ``torch.cuda.current_device`` -> ``torch.device("cpu")`` (not 0: megatron also calls it inside
   autograd backward functions, e.g. the sequence-parallel reduce-scatter buffer, where the torch-function
   mode of shim 1 is not active), ``synchronize`` / ``empty_cache`` -> no-ops,
   ``torch.cuda.Event`` -> a wall-clock event: called unconditionally by the schedules, timers,
   the DDP bucket code and the inference engine.
3. ``CpuRNGStatesTracker``: megatron's RNG tracker (``model_parallel_cuda_manual_seed`` and every
   ``get_cuda_rng_tracker().fork()`` around dropout / init) stores CUDA generator states; on the CPU
   it keeps CPU generator states instead, with the same seeding rule (tp rank offset 2718).
4. Torch ``LayerNorm`` in megatron's local spec refuses ``sequence_parallel=True`` (it wants the
   fused Apex kernel only to mark its params); our norm modules (model/norms.py) support it, so
   sequence parallelism is testable on CPU.
5. ``CpuWgradGemmAccum``: megatron's ``gradient_accumulation_fusion`` accumulates each linear's weight gradient
   straight into the DDP grad buffer (``main_grad += dY^T X``) with the CUDA extension
   ``fused_weight_gradient_mlp_cuda``; without it every backward allocates a weight-sized gradient and the DDP
   hook adds it to ``main_grad`` in a second pass. On the CPU the same GEMM-accumulate is torch's in-place
   ``addmm_`` (BLAS with beta = 1), installed as that extension.
6. ``CpuFusedRoPE``: with ``apply_rope_fusion`` megatron applies rotary embeddings with TransformerEngine's fused
   kernel; its unfused fallback makes ~5 full passes per tensor plus two copies (a final ``cat`` with the empty
   non-rotary part and the backward of a full-width slice). The same rotation written as one autograd function
   with in-place half-width multiply-adds makes two passes forward and two backward.
7. ``OneDnnMatmulMode`` + megatron's linear autograd functions run under it: the forward and input-gradient GEMMs
   of every megatron linear (``torch.matmul(x, W^T)``, ``grad.matmul(W)``) go through oneDNN's fp32 matmul
   (``torch.ops.mkldnn._linear_pointwise``) instead of ``torch.matmul``'s BLAS. torch's CPU wheels call MKL,
   whose sgemm does not dispatch its AVX-512 kernels on AMD CPUs; oneDNN JIT-compiles for the ISA it finds. On
   this project's AMD EPYC (AVX-512, 2 threads) the linears' shapes ran 1.05-1.4x faster (``model.cpu_gemm``).
   The weight-gradient GEMM stays BLAS (shim 5's in-place accumulate, which oneDNN does not expose).

Shims 5 and 6 make two megatron fusions usable on a CPU. :func:`enable_cpu_shims` returns a :class:`CpuShims`
record of what it installed; it reaches the model builder through ``model.runtime.Runtime.cpu_shims``, and
its :meth:`CpuShims.transformer_overrides` are the TransformerConfig fields that turn the fusions on. So they
are on exactly where the CPU versions are installed, and the builder never inspects megatron's modules.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class CpuShims:
    """What :func:`enable_cpu_shims` installed, and the megatron fusions that need it."""

    wgrad_fusion: bool = True  # shim 5: fused_weight_gradient_mlp_cuda on the CPU
    rope_fusion: bool = True  # shim 6: fused_apply_rotary_pos_emb on the CPU

    def transformer_overrides(self, *, rope: bool, trained: bool) -> dict[str, bool]:
        """The ``TransformerConfig`` fusion fields for a local-spec model on this CPU: fused RoPE for RoPE models;
        weight gradients accumulated straight into DDP's ``main_grad`` buffer for ``trained`` models (wrapped in
        megatron DDP, so their weights have one). Models used without DDP (inference, the frozen reference)
        compute ordinary weight gradients."""
        return {
            "apply_rope_fusion": self.rope_fusion and rope,
            "gradient_accumulation_fusion": self.wgrad_fusion and trained,
        }


_INSTALLED: CpuShims | None = None  # what enable_cpu_shims installed (process-wide, like torch's mode stack)


def _is_cuda_device(dev: Any) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return isinstance(dev, int) and not isinstance(dev, bool)


class CudaToCpuMode(TorchFunctionMode):
    """Redirect CUDA device requests to the CPU (see the module docstring, shim 1)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func in (torch.Tensor.to,) and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _WallClockEvent:
    """Stands in for ``torch.cuda.Event(enable_timing=True)``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.t = 0.0

    def record(self, *args: Any) -> None:
        self.t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def wait(self, *args: Any) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: _WallClockEvent) -> float:
        return (end.t - self.t) * 1000.0


def _cpu_rng_tracker_class():
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    class CpuRNGStatesTracker(CudaRNGStatesTracker):
        """megatron's RNG tracker with CPU generator states (shim 3)."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng"):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


def cpu_model_parallel_seed(seed: int) -> None:
    """``model_parallel_cuda_manual_seed`` for CPU runs: same seeding rule, CPU generator states."""
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import random as mp_random

    tracker = _cpu_rng_tracker_class()()
    mp_random._CUDA_RNG_STATE_TRACKER = tracker
    mp_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    tp_rank = ps.get_tensor_model_parallel_rank() if ps.model_parallel_is_initialized() else 0
    torch.manual_seed(seed)
    tracker.add(mp_random._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mp_random._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mp_random._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024)


class CpuWgradGemmAccum:
    """``fused_weight_gradient_mlp_cuda`` on the CPU (shim 5): ``main_grad += grad_output^T @ total_input``.

    megatron calls it from the backward of its column/row-parallel linears with 2-D ``total_input``
    ``[tokens, in]`` and ``grad_output`` ``[tokens, out]`` and the weight's ``main_grad`` ``[out, in]``.
    """

    @staticmethod
    def wgrad_gemm_accum_fp32(
        total_input: torch.Tensor, grad_output: torch.Tensor, main_grad: torch.Tensor
    ) -> None:
        main_grad.addmm_(grad_output.t().to(main_grad.dtype), total_input.to(main_grad.dtype))

    wgrad_gemm_accum_fp16 = wgrad_gemm_accum_fp32


def install_wgrad_accumulation_fusion() -> None:
    """Make megatron's linears find ``fused_weight_gradient_mlp_cuda`` (shim 5)."""
    from megatron.core.tensor_parallel import layers

    layers.fused_weight_gradient_mlp_cuda = CpuWgradGemmAccum
    layers._grad_accum_fusion_available = True


def wgrad_fusion_installed() -> bool:
    from megatron.core.tensor_parallel import layers

    return getattr(layers, "fused_weight_gradient_mlp_cuda", None) is CpuWgradGemmAccum


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float) -> torch.Tensor:
    """``[x1, x2] -> [x1 c1 - sign x2 s1, x2 c2 + sign x1 s2]`` over the first ``cos.shape[-1]`` features (the
    rest copied), with half-width in-place multiply-adds. sign = +1: RoPE (x cos + rotate_half(x) sin, with
    rotate_half([x1, x2]) = [-x2, x1]); sign = -1: its transpose, the backward."""
    rot = cos.shape[-1]
    h = rot // 2
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    x1, x2 = x[..., :h], x[..., h:rot]
    o1, o2 = out[..., :h], out[..., h:rot]
    torch.mul(x1, cos[..., :h], out=o1)
    o1.addcmul_(x2, sin[..., :h], value=-sign)
    torch.mul(x2, cos[..., h:], out=o2)
    o2.addcmul_(x1, sin[..., h:], value=sign)
    if rot < x.shape[-1]:
        out[..., rot:] = x[..., rot:]
    return out


class CpuFusedRoPE(torch.autograd.Function):
    """Rotary position embedding (Su et al. 2021, eq. 34) on ``[s, b, heads, d]`` with ``freqs`` ``[s, 1, 1, r]``
    (r <= d, non-interleaved halves): y = x cos(freqs) + rotate_half(x) sin(freqs) (shim 6)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        cos, sin = freqs.cos().to(t.dtype), freqs.sin().to(t.dtype)
        ctx.save_for_backward(cos, sin)
        return _rotate(t, cos, sin, 1.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0), None


def cpu_fused_rope(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """megatron's ``fused_apply_rotary_pos_emb(t, freqs, interleaved)`` on the CPU."""
    if interleaved:
        raise ValueError("the CPU fused RoPE supports non-interleaved rotary embeddings only")
    return CpuFusedRoPE.apply(t, freqs)


def install_rope_fusion() -> None:
    """Give megatron's ``apply_rotary_pos_emb`` a fused RoPE for ``bshd`` tensors (shim 6)."""
    from megatron.core.models.common.embeddings import rope_utils

    rope_utils.fused_apply_rotary_pos_emb = cpu_fused_rope


def rope_fusion_installed() -> bool:
    from megatron.core.models.common.embeddings import rope_utils

    return getattr(rope_utils, "fused_apply_rotary_pos_emb", None) is cpu_fused_rope


def onednn_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w^T`` for 2-D ``x`` through oneDNN's fp32 matmul (shim 7's kernel; no autograd)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


class OneDnnMatmulMode(TorchFunctionMode):
    """``torch.matmul(a, b)`` / ``a.matmul(b)`` on fp32 CPU tensors with a 2-D ``b`` computed by oneDNN (shim 7).

    Only outside autograd (megatron's linear functions run their forward and backward with grad mode off):
    the oneDNN op has no derivative of its own."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (func is torch.matmul or func is torch.Tensor.matmul) and not kwargs and len(args) == 2:
            a, b = args
            if (
                b.dim() == 2
                and a.dim() >= 2
                and a.dtype == b.dtype == torch.float32
                and a.device.type == b.device.type == "cpu"
                and not torch.is_grad_enabled()
            ):
                # a @ b on the rows of a; the result is reshaped as torch.matmul does (not an autograd view)
                out = onednn_linear(a.reshape(-1, a.shape[-1]), b.t())
                return torch.ops.aten._unsafe_view(out, (*a.shape[:-1], b.shape[1]))
        return func(*args, **(kwargs or {}))


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's fp32 linear (x86 and most aarch64 wheels do)."""
    try:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._linear_pointwise is not None
    except (AttributeError, RuntimeError):
        return False


def _under_onednn(base: type) -> type:
    """A subclass of the autograd function ``base`` whose forward and backward run under ``OneDnnMatmulMode``."""

    class OneDnn(base):
        @staticmethod
        def forward(ctx, *args):
            with OneDnnMatmulMode():
                return base.forward(ctx, *args)

        @staticmethod
        def backward(ctx, *grads):
            with OneDnnMatmulMode():
                return base.backward(ctx, *grads)

    OneDnn.__name__ = OneDnn.__qualname__ = f"OneDnn{base.__name__}"
    return OneDnn


_LINEAR_NAMES = ("LinearWithGradAccumulationAndAsyncCommunication", "LinearWithFrozenWeight")


@functools.cache
def _linear_functions() -> dict[str, dict[str, type]]:
    """``{"torch": megatron's linear autograd functions, "onednn": shim 7's subclasses of them}``."""
    from megatron.core.tensor_parallel import layers

    originals = {n: getattr(layers, n) for n in _LINEAR_NAMES}
    return {"torch": originals, "onednn": {n: _under_onednn(f) for n, f in originals.items()}}


def set_cpu_gemm(kind: str) -> str:
    """Route megatron's linear GEMMs: ``onednn`` (shim 7), ``torch`` (megatron's own ``torch.matmul``) or
    ``auto`` (oneDNN where this torch build has it). Returns the kind in force."""
    from megatron.core.tensor_parallel import layers

    from echo_megatron.config import ConfigError

    functions = _linear_functions()
    if kind == "auto":
        kind = "onednn" if onednn_available() else "torch"
    if kind not in functions:
        raise ConfigError(f"model.cpu_gemm: unknown value '{kind}' (auto | onednn | torch)")
    if kind == "onednn" and not onednn_available():
        raise ConfigError("model.cpu_gemm=onednn: this torch build has no oneDNN (use auto or torch)")
    for n, f in functions[kind].items():
        setattr(layers, n, f)
    return kind


def cpu_gemm_installed() -> str:
    """``onednn`` or ``torch``: which GEMMs megatron's linears use now."""
    from megatron.core.tensor_parallel import layers

    onednn = _linear_functions()["onednn"]["LinearWithFrozenWeight"]
    return "onednn" if layers.LinearWithFrozenWeight is onednn else "torch"


def installed_shims() -> CpuShims | None:
    """The shims :func:`enable_cpu_shims` installed in this process; None before (and on GPU runs)."""
    return _INSTALLED


def enable_cpu_shims(gemm: str = "auto") -> CpuShims:
    """Install shims 1, 2, 5 and 6 for the rest of the process (CPU runs only; idempotent), and route the
    linears' GEMMs as ``gemm`` says (shim 7, see :func:`set_cpu_gemm`; applied on every call)."""
    global _INSTALLED
    if torch.cuda.is_available():
        raise RuntimeError("enable_cpu_shims() is for CPU-only runs; this machine has CUDA")
    set_cpu_gemm(gemm)
    if _INSTALLED is not None:
        return _INSTALLED
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.Event = _WallClockEvent
    CudaToCpuMode().__enter__()  # stays on the mode stack for the life of the process
    install_wgrad_accumulation_fusion()
    install_rope_fusion()
    _INSTALLED = CpuShims(wgrad_fusion=True, rope_fusion=True)
    return _INSTALLED
