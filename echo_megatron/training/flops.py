"""Model FLOPs per token and the peak to compare against (MFU)."""

from __future__ import annotations

import time

import torch
from omegaconf import DictConfig

H100_BF16_DENSE_TFLOPS = 989.0


def flops_per_token(cfg: DictConfig, num_params: int) -> float:
    """Training FLOPs per token: 6N (Kaplan et al. 2020) + causal attention 6·L·s·d (PaLM, Chowdhery et al. 2022,
    App. B: 12·L·s·d for full attention, halved for the causal mask)."""
    m = cfg.model
    return 6.0 * num_params + 6.0 * m.num_layers * m.seq_length * m.hidden_size


def matmul_kernels() -> dict:
    """torch's fp32 CPU GEMMs: ``torch`` (``a @ b``: MKL / OpenBLAS) and, where built, ``onednn`` (the kernel of
    ``model.cpu_gemm=onednn``, ``a @ b^T``: the same FLOPs)."""
    from echo_megatron.distributed.cpu_shims import onednn_available, onednn_linear

    kernels = {"torch": torch.matmul}
    if onednn_available():
        kernels["onednn"] = onednn_linear
    return kernels


def measure_matmul_rates(
    dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5
) -> tuple[float, float]:
    """(FLOP per wall second, FLOP per CPU second of this process) of square ``n`` matmuls with the current thread
    count: the faster of torch's GEMM kernels (:func:`matmul_kernels`), each timed for ``seconds / len(kernels)``.
    On a shared machine the wall-clock rate follows the load, the rate per CPU-second much less."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    kernels = matmul_kernels()
    best_wall = best_cpu = 0.0
    for mm in kernels.values():
        for _ in range(2):
            mm(a, b)
        iters, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds / len(kernels):
            mm(a, b)
            iters += 1
        flops = 2.0 * n**3 * iters
        best_wall = max(best_wall, flops / (time.perf_counter() - t0))
        best_cpu = max(best_cpu, flops / max(time.process_time() - c0, 1e-9))
    return best_wall, best_cpu


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5) -> float:
    """This machine's achieved square-matmul FLOP/s with the current thread count (the CPU 'peak'): the wall-clock
    rate of :func:`measure_matmul_rates`."""
    return measure_matmul_rates(dtype, n, seconds)[0]


def peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        return H100_BF16_DENSE_TFLOPS * 1e12
    return measure_matmul_peak()
