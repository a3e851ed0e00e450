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
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False  # idempotence guard for enable_cpu_shims (process-wide, like torch's own mode stack)


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


def enable_cpu_shims() -> None:
    """Install shims 1-2 for the rest of the process (CPU runs only; idempotent)."""
    global _ENABLED
    if _ENABLED:
        return
    if torch.cuda.is_available():
        raise RuntimeError("enable_cpu_shims() is for CPU-only runs; this machine has CUDA")
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.empty_cache = lambda: None
    torch.cuda.Event = _WallClockEvent
    CudaToCpuMode().__enter__()  # stays on the mode stack for the life of the process
    _ENABLED = True
