"""Each CPU shim for megatron-core (echo_megatron/distributed/cpu_shims.py), exercised on its own."""

from __future__ import annotations

import pytest
import torch

from echo_megatron.distributed import cpu_shims


def test_mode_maps_cuda_requests_to_cpu():
    before = torch.ones(1).type()  # "torch.FloatTensor", unless an earlier in-process test enabled the shims
    with cpu_shims.CudaToCpuMode():
        a = torch.empty(3, device="cuda")  # megatron: grad buffers, optimizer scalars
        b = torch.zeros(2, device=0)  # megatron: device=torch.cuda.current_device() (an int on GPU)
        c = torch.ones(2).cuda()  # megatron: .cuda() calls
        d = torch.ones(2).to("cuda")
        assert a.device.type == b.device.type == c.device.type == d.device.type == "cpu"
        # the optimizer and grad clipping check param.type() == 'torch.cuda.FloatTensor'
        assert torch.ones(1).type() == "torch.cuda.FloatTensor"
        assert torch.ones(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.ones(1).type() == before  # scoped: gone outside the mode


def test_wall_clock_event():
    e1, e2 = cpu_shims._WallClockEvent(enable_timing=True), cpu_shims._WallClockEvent(enable_timing=True)
    e1.record()
    sum(range(10000))
    e2.record()
    assert e1.elapsed_time(e2) >= 0.0


def test_cpu_rng_tracker_forks_and_restores():
    tracker = cpu_shims._cpu_rng_tracker_class()()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with tracker.fork():
        x1 = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)  # the default stream is untouched
    with tracker.fork():
        x2 = torch.rand(3)
    assert not torch.equal(x1, x2)  # the forked stream advances
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), x1)  # seeded as asked


def test_wgrad_gemm_accumulate_adds_the_weight_gradient_in_place():
    g = torch.Generator().manual_seed(0)
    x, dy = torch.randn(24, 8, generator=g), torch.randn(24, 5, generator=g)
    main_grad = torch.randn(5, 8, generator=g)
    expected = main_grad + dy.t() @ x
    ptr = main_grad.data_ptr()
    cpu_shims.CpuWgradGemmAccum.wgrad_gemm_accum_fp32(x, dy, main_grad)
    torch.testing.assert_close(main_grad, expected)
    assert main_grad.data_ptr() == ptr  # accumulated in the DDP buffer itself


def _rope_freqs(seq: int, rot: int) -> torch.Tensor:
    """megatron's RotaryEmbedding angles ``[s, 1, 1, rot]``: position x base^(-2i/rot), the halves repeated."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, dtype=torch.float32) / rot))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq)
    return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]


def test_cpu_fused_rope_equals_megatron_unfused_rope_forward_and_backward():
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    g = torch.Generator().manual_seed(1)
    for rot in (16, 8):  # all features rotated, and partial rotary (the rest passes through)
        freqs = _rope_freqs(10, rot)
        qkv = torch.randn(10, 3, 4, 3 * 16, generator=g)
        t = qkv[..., 16:32]  # a non-contiguous view, as megatron's split of the fused QKV projection gives
        grad = torch.randn(10, 3, 4, 16, generator=g)
        a, b = t.clone().requires_grad_(), t.clone().requires_grad_()
        out_ref = _apply_rotary_pos_emb_bshd(a, freqs)
        out = cpu_shims.cpu_fused_rope(b, freqs)
        torch.testing.assert_close(out, out_ref)
        out_ref.backward(grad)
        out.backward(grad)
        torch.testing.assert_close(b.grad, a.grad)
    x = torch.randn(4, 1, 2, 8, dtype=torch.float64, requires_grad=True)
    f = _rope_freqs(4, 8).double()
    assert torch.autograd.gradcheck(lambda x: cpu_shims.CpuFusedRoPE.apply(x, f), (x,))


def test_fusions_are_on_for_trained_cpu_models_only():
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model, transformer_config

    cfg = load_config(None, ["model.num_layers=1", "model.vocab_size=128", "parallel.device=cpu"])
    initialize(cfg)
    assert cpu_shims.rope_fusion_installed() and cpu_shims.wgrad_fusion_installed()
    trained, frozen = transformer_config(cfg, for_ddp=True), transformer_config(cfg)
    assert trained.apply_rope_fusion and frozen.apply_rope_fusion
    assert trained.gradient_accumulation_fusion and not frozen.gradient_accumulation_fusion
    model = build_model(cfg, 128)  # used without DDP: its linears must compute ordinary weight grads
    tokens = torch.randint(0, 128, (2, 16))
    model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens).sum().backward()
    assert model.decoder.layers[0].mlp.linear_fc1.weight.grad is not None


def test_onednn_matmul_mode_equals_torch_matmul_and_is_not_an_autograd_view():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 8, generator=g)
    x2 = torch.randn(5, 8, generator=g)
    x3 = torch.randn(4, 3, 8, generator=g).transpose(0, 1)  # non-contiguous rows, as [s, b, h] slices give
    grad = torch.randn(4, 3, 6, generator=g)
    with torch.no_grad(), cpu_shims.OneDnnMatmulMode():
        with torch.profiler.profile() as prof:
            fwd2, fwd3 = torch.matmul(x2, w.t()), torch.matmul(x3, w.t())  # megatron's forward GEMM
            dgrad = grad.matmul(w)  # megatron's input-gradient GEMM (Tensor.matmul)
        assert not fwd3._is_view() and fwd3.shape == (3, 4, 6)
    assert any(e.name == "mkldnn::_linear_pointwise" for e in prof.events())  # oneDNN computed them
    torch.testing.assert_close(fwd2, x2 @ w.t())
    torch.testing.assert_close(fwd3, x3 @ w.t())
    torch.testing.assert_close(dgrad, grad @ w)
    # outside its scope (grad mode on: the oneDNN op has no derivative; other dtypes) torch.matmul runs
    a = torch.randn(5, 8, requires_grad=True)
    with cpu_shims.OneDnnMatmulMode():
        out = torch.matmul(a, w.t())
        half = torch.matmul(x2.double(), w.double().t())
    assert out.grad_fn is not None and half.dtype == torch.float64


def test_cpu_gemm_routes_megatron_linears_and_keeps_their_gradients():
    from megatron.core.tensor_parallel import layers

    from echo_megatron.config import ConfigError, load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    cfg = load_config(None, ["model.num_layers=2", "model.vocab_size=128", "parallel.device=cpu"])
    initialize(cfg)
    try:
        results = {}
        for kind in ("torch", "onednn"):
            assert cpu_shims.set_cpu_gemm(kind) == kind and cpu_shims.cpu_gemm_installed() == kind
            torch.manual_seed(0)
            model = build_model(cfg, 128)
            tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
            with torch.profiler.profile() as prof:
                loss = model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens).mean()
                loss.backward()
            kernels = {e.name for e in prof.events()}
            assert ("mkldnn::_linear_pointwise" in kernels) == (kind == "onednn")
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[kind] = (loss.detach(), grads)
            frozen = layers.LinearWithFrozenWeight  # the reference policy's linears follow the same switch
            assert frozen.__name__ == (
                "OneDnnLinearWithFrozenWeight" if kind == "onednn" else "LinearWithFrozenWeight"
            )
        torch.testing.assert_close(results["onednn"][0], results["torch"][0], rtol=1e-5, atol=1e-6)
        assert results["onednn"][1].keys() == results["torch"][1].keys() and len(results["torch"][1]) >= 6
        for name, g in results["torch"][1].items():
            torch.testing.assert_close(results["onednn"][1][name], g, rtol=1e-4, atol=1e-6, msg=name)
        with pytest.raises(ConfigError, match=r"model.cpu_gemm: unknown value 'blas'"):
            cpu_shims.set_cpu_gemm("blas")
    finally:
        cpu_shims.set_cpu_gemm("auto")
