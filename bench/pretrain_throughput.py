"""Pretraining throughput: the echo-megatron training step vs a plain-PyTorch decoder with the same math, and
the achieved model FLOP/s vs this CPU's measured fp32 matmul peak.

    python bench/pretrain_throughput.py                    # ~25M model (d512, 6 layers, SwiGLU 4d), seq 256
    python bench/pretrain_throughput.py --model small      # d256, 4 layers: where fixed overheads show most
    python bench/pretrain_throughput.py --quick            # fewer steps and trials (a smoke run)
    python bench/pretrain_throughput.py --core-attention megatron   # megatron's DotProductAttention instead of SDPA
    python bench/pretrain_throughput.py --cpu-gemm torch   # our linears' GEMMs through torch.matmul, as the ref's

Both sides train the same architecture (non-parametric LN, RoPE, SwiGLU, no biases, untied output layer) on
the same random batches, in the same process, with the same thread count:

* ours:  ``echo_megatron.training.setup.build_train_state`` + ``training.step.train_step`` (megatron GPTModel,
         local spec with SDPA core attention and the SwiGLU MLP of ``model/``, the CPU versions of megatron's
         fused RoPE and weight-gradient accumulation and the linears' GEMMs through oneDNN
         (``distributed/cpu_shims.py``, ``model.cpu_gemm``), megatron DDP grad buffers,
         megatron optimizer = torch's fused AdamW on CPU, grad clipping, LR schedule, per-token loss
         reporting): exactly what ``echo-megatron pretrain`` runs per step;
* ref:   ``bench/reference_decoder.py`` with ``torch.optim.AdamW`` (torch's default, per-tensor on CPU) and
         ``clip_grad_norm_`` (SDPA attention, RoPE as x cos + rotate_half(x) sin, ``nn.Linear``: torch's BLAS,
         MKL in the x86 wheels).

Before timing, the reference loads the megatron model's weights and both losses are compared (same math).
Timing interleaves single steps: ``--pairs`` pairs of one ours step and one ref step (the order alternating),
after ``--warmup`` steps of each. This machine's speed drifts by 10% over seconds (the matmul peak measured a
few seconds apart does), so the ratio is the median over pairs of t_ref / t_ours of adjacent steps, with its
interquartile range; tokens/s are the median step of each side. The matmul peak (1024^3 fp32, the faster of
torch's BLAS and oneDNN: ``training.flops.measure_matmul_rates``, which the training loop's MFU also uses) is
measured every 4 pairs and the highest counts. Every figure is also given per CPU-second of this process
(``time.process_time``).

Model FLOPs per token = 6 N + 6 L s d (``training.flops.flops_per_token``) with N the parameters that
multiply (all but the input embedding, a lookup). The vocabulary stays small (1024): at a 32k vocab the
output projection dominates tiny CPU models.
Targets (issue 3): ours / ref >= 1.0; ours >= 60% of the matmul peak for the ~25M model at seq 256.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODELS = {
    # name: (hidden, layers, heads, ffn per SwiGLU half, vocab)
    "25m": (512, 6, 8, 2048, 1024),  # 25.2M in the layers + 1.0M embedding/output = 26.2M
    "small": (256, 4, 4, 1024, 1024),
}
LR, BETAS, EPS, WD, CLIP = 3e-4, (0.9, 0.95), 1e-8, 0.1, 1.0


def megatron_config(
    model: str, seq: int, batch: int, threads: int, core_attention: str = "sdpa", cpu_gemm: str = "auto"
):
    from echo_megatron.config import load_config

    h, layers, heads, ffn, vocab = MODELS[model]
    return load_config(
        None,
        [
            f"model.hidden_size={h}",
            f"model.num_layers={layers}",
            f"model.num_attention_heads={heads}",
            f"model.ffn_hidden_size={ffn}",
            f"model.vocab_size={vocab}",
            f"model.seq_length={seq}",
            "model.normalization=NonParametricLayerNorm",
            f"model.core_attention={core_attention}",
            f"model.cpu_gemm={cpu_gemm}",
            "model.activation=swiglu",
            "model.position_embedding_type=rope",
            "model.untie_embeddings_and_output_weights=true",
            "parallel.device=cpu",
            f"train.global_batch_size={batch}",
            f"train.micro_batch_size={batch}",
            f"train.threads={threads}",
            "train.precision=fp32",
            f"optimizer.lr={LR}",
            f"optimizer.beta1={BETAS[0]}",
            f"optimizer.beta2={BETAS[1]}",
            f"optimizer.eps={EPS}",
            f"optimizer.weight_decay={WD}",
            f"optimizer.clip_grad={CLIP}",
            "optimizer.min_lr_ratio=1.0",
            "schedule.warmup_steps=0",
            "schedule.decay_style=constant",
        ],
    )


def make_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        out.append(
            {
                "tokens": tokens[:, :-1].contiguous(),
                "labels": tokens[:, 1:].contiguous(),
                "loss_mask": torch.ones(batch, seq),
                "position_ids": torch.arange(seq).expand(batch, seq).contiguous(),
            }
        )
    return out


class Ours:
    """The echo-megatron training step."""

    def __init__(self, cfg) -> None:
        from echo_megatron.distributed.init import initialize
        from echo_megatron.training.setup import build_train_state

        self.cfg = cfg
        _, device = initialize(cfg)
        self.state = build_train_state(cfg, cfg.model.vocab_size, device, total_steps=10**6)
        self.gpt = self.state.model[0].module

    def step(self, batch: dict) -> float:
        from echo_megatron.training.step import lm_loss, train_step

        s = self.state
        return train_step(s.model, s.optimizer, s.scheduler, [batch], lm_loss, self.cfg.model.seq_length)[
            "loss"
        ]

    @torch.no_grad()
    def loss(self, batch: dict) -> float:
        per_token = self.gpt(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return float(per_token.float().mean())

    def matmul_params(self) -> int:
        """Parameters that multiply: all but the input embedding table."""
        return sum(p.numel() for n, p in self.gpt.named_parameters() if "word_embeddings" not in n)


class Ref:
    """The plain-PyTorch decoder with AdamW and grad clipping."""

    def __init__(self, model: str, seq: int) -> None:
        from reference_decoder import ReferenceDecoder

        h, layers, heads, ffn, vocab = MODELS[model]
        self.model = ReferenceDecoder(vocab, h, layers, heads, ffn, seq)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WD)

    def step(self, batch: dict) -> float:
        self.opt.zero_grad(set_to_none=True)
        loss = self.model(batch["tokens"], batch["labels"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def loss(self, batch: dict) -> float:
        return float(self.model(batch["tokens"], batch["labels"]))


def timed_step(step, batch: dict) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one step."""
    t0, c0 = time.perf_counter(), time.process_time()
    step(batch)
    return time.perf_counter() - t0, time.process_time() - c0


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile)."""
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def run(args: argparse.Namespace) -> dict:
    from reference_decoder import copy_from_megatron

    from echo_megatron.distributed import cpu_shims
    from echo_megatron.training.flops import flops_per_token, measure_matmul_rates

    torch.set_num_threads(args.threads)
    cfg = megatron_config(args.model, args.seq, args.batch, args.threads, args.core_attention, args.cpu_gemm)
    ours = Ours(cfg)
    ref = Ref(args.model, args.seq)
    vocab = cfg.model.vocab_size
    check = make_batches(1, args.batch, args.seq, vocab, seed=123)[0]
    copy_from_megatron(ref.model, ours.gpt)
    l_ours, l_ref = ours.loss(check), ref.loss(check)
    n = ours.matmul_params()
    total = sum(p.numel() for p in ours.gpt.parameters())
    fpt = flops_per_token(cfg, n)
    tokens = args.batch * args.seq
    print(
        f"model {args.model}: {total / 1e6:.1f}M parameters ({n / 1e6:.1f}M multiplying), seq {args.seq}, "
        f"batch {args.batch} ({tokens} tokens/step), vocab {vocab}, {args.threads} threads, "
        f"core attention {args.core_attention}, our GEMMs {cpu_shims.cpu_gemm_installed()}, "
        f"{fpt / 1e6:.1f} MFLOP/token",
        flush=True,
    )
    print(
        f"same math: loss at identical weights ours {l_ours:.6f} ref {l_ref:.6f} (|diff| {abs(l_ours - l_ref):.1e})"
    )
    if abs(l_ours - l_ref) > 1e-4 * max(1.0, abs(l_ref)):
        raise SystemExit("the reference decoder does not compute the same loss as the megatron model")

    batches = make_batches(args.warmup + 2, args.batch, args.seq, vocab)
    sides = {"ours": ours, "ref": ref}
    for b in batches[: args.warmup]:
        for side in sides.values():
            side.step(b)
    wall = {"ours": [], "ref": []}  # seconds per step
    cpu = {"ours": [], "ref": []}
    peaks_wall, peaks_cpu = [], []
    for pair in range(args.pairs):
        if pair % 4 == 0:
            pw, pc = measure_matmul_rates(seconds=0.5)
            peaks_wall.append(pw)
            peaks_cpu.append(pc)
        batch = batches[args.warmup + pair % 2]
        for name in ("ours", "ref") if pair % 2 == 0 else ("ref", "ours"):
            dt, dc = timed_step(sides[name].step, batch)
            wall[name].append(dt)
            cpu[name].append(dc)
        print(
            f"  pair {pair + 1:2d}: ours {tokens / wall['ours'][-1]:,.0f} tok/s  ref {tokens / wall['ref'][-1]:,.0f} "
            f"tok/s  ratio {wall['ref'][-1] / wall['ours'][-1]:.3f}",
            flush=True,
        )
    r_wall = quantiles([r / o for o, r in zip(wall["ours"], wall["ref"])])
    r_cpu = quantiles([r / o for o, r in zip(cpu["ours"], cpu["ref"])])
    tps = {k: tokens / statistics.median(v) for k, v in wall.items()}
    tps_cpu = {k: tokens / statistics.median(v) for k, v in cpu.items()}
    peak, peak_cpu = max(peaks_wall), max(peaks_cpu)
    res = {
        "model": args.model,
        "core_attention": args.core_attention,
        "cpu_gemm": cpu_shims.cpu_gemm_installed(),
        "params": total,
        "matmul_params": n,
        "seq": args.seq,
        "batch": args.batch,
        "threads": args.threads,
        "pairs": args.pairs,
        "flops_per_token": fpt,
        "loss_diff_at_init": abs(l_ours - l_ref),
        "ours_tokens_per_s": tps["ours"],
        "ref_tokens_per_s": tps["ref"],
        "ratio": r_wall[1],
        "ratio_iqr": [r_wall[0], r_wall[2]],
        "matmul_peak_flops": peak,
        "peak_fraction": tps["ours"] * fpt / peak,
        "ref_peak_fraction": tps["ref"] * fpt / peak,
        "cpu_ratio": r_cpu[1],
        "cpu_peak_fraction": tps_cpu["ours"] * fpt / peak_cpu,
        "steps_wall_s": wall,
        "steps_cpu_s": cpu,
        "loadavg_1min": os.getloadavg()[0],
    }
    bw = tps
    print(
        f"ratio ours/ref: {res['ratio']:.2f}x  (median of {args.pairs} adjacent-step pairs, interquartile "
        f"{r_wall[0]:.2f}-{r_wall[2]:.2f}; median steps: ours {bw['ours']:,.0f} tokens/s, ref {bw['ref']:,.0f} "
        f"tokens/s; per CPU-second {res['cpu_ratio']:.2f}x; target >= 1.0)"
    )
    print(
        f"peak fraction: {res['peak_fraction']:.0%} of the fp32 matmul peak  (ours {bw['ours'] * fpt / 1e9:.1f} "
        f"GFLOP/s, peak {peak / 1e9:.1f} GFLOP/s, ref {res['ref_peak_fraction']:.0%}; per CPU-second "
        f"{res['cpu_peak_fraction']:.0%}; target >= 60% for 25m; load average {res['loadavg_1min']:.1f})"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="25m", choices=list(MODELS))
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="sequences per step (one micro-batch)")
    ap.add_argument("--pairs", type=int, default=16, help="timed (ours step, ref step) pairs")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps of each side first")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--quick", action="store_true", help="4 pairs, 1 warm-up step")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--core-attention",
        default="sdpa",
        choices=["sdpa", "megatron"],
        help="model.core_attention of our side (sdpa, the default, or megatron's DotProductAttention)",
    )
    ap.add_argument(
        "--cpu-gemm",
        default="auto",
        choices=["auto", "onednn", "torch"],
        help="model.cpu_gemm of our side: the linears' GEMMs through oneDNN (auto's choice where torch has it) "
        "or torch.matmul's BLAS, the reference's kernel",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.warmup = 4, 1
    warnings.filterwarnings("ignore")
    from echo_megatron.distributed.init import destroy

    try:
        res = run(args)
    finally:
        destroy()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
