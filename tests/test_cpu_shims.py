"""Each CPU shim for megatron-core (echo_megatron/distributed/cpu_shims.py), exercised on its own."""

from __future__ import annotations

import torch

from echo_megatron.distributed import cpu_shims


def test_mode_maps_cuda_requests_to_cpu():
    with cpu_shims.CudaToCpuMode():
        a = torch.empty(3, device="cuda")  # megatron: grad buffers, optimizer scalars
        b = torch.zeros(2, device=0)  # megatron: device=torch.cuda.current_device() (an int on GPU)
        c = torch.ones(2).cuda()  # megatron: .cuda() calls
        d = torch.ones(2).to("cuda")
        assert a.device.type == b.device.type == c.device.type == d.device.type == "cpu"
        # the optimizer and grad clipping check param.type() == 'torch.cuda.FloatTensor'
        assert torch.ones(1).type() == "torch.cuda.FloatTensor"
        assert torch.ones(1, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
    assert torch.ones(1).type() == "torch.FloatTensor"  # scoped: gone outside the mode


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
