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
    from echo_megatron.distributed.cpu_shims import onednn_available

    kernels = {"torch": torch.matmul}
    if onednn_available():
        kernels["onednn"] = lambda a, b: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return kernels


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.5) -> float:
    """This machine's achieved square-matmul FLOP/s with the current thread count (the CPU 'peak'): the faster
    of torch's GEMM kernels (:func:`matmul_kernels`), each timed for ``seconds / len(kernels)``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    kernels = matmul_kernels()
    best = 0.0
    for mm in kernels.values():
        for _ in range(2):
            mm(a, b)
        iters, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(kernels):
            mm(a, b)
            iters += 1
        best = max(best, 2.0 * n**3 * iters / (time.perf_counter() - t0))
    return best


def peak_flops(device: torch.device) -> float:
    if device.type == "cuda":
        return H100_BF16_DENSE_TFLOPS * 1e12
    return measure_matmul_peak()
