"""The GPU figures in one invocation (driven by ``bench/gpu_smoke.sh``; docs/gpu.md quotes its table).

    python bench/gpu_smoke.py all --out DIR [--budget 420]      # every stage below, then the summary table
    python bench/gpu_smoke.py all --out DIR --dry-run-cpu       # the same stages, tiny and fp32, on a CPU

Stages (each in its own process, so a failure or an out-of-memory in one leaves the others standing; a stage
that would not fit in what is left of ``--budget`` seconds is skipped and says so):

1. ``pretrain``: ``paper_150m`` at seq 2048, N steps in bf16 and in FP8 (same seed, same initial weights, same
   batches), then ``paper_1b`` at seq 512 the same way. The step is the trainer's own (``training.setup`` +
   ``training.step.train_step``: megatron DDP, optimizer, schedule); the loop's checkpointing is left out so
   the figures are steps only. Data: a fixed random bigram chain (every token has 4 successors, entropy
   ln 4 = 1.39 nats), so the loss falls within a few dozen steps and bf16 / FP8 loss parity means something.
   Figures: tokens/s (median step after warm-up), MFU = flops_per_token x tokens/s / 989 TFLOP/s (H100 dense
   bf16; ``training.flops``), peak memory, and the loss after N steps.
2. ``grpo``: the testbed (``recipes/demo``): generate data, preprocess, pretrain a base with
   ``echo-megatron pretrain`` on the GPU (bf16, the real loop with its checkpoint), then a few GRPO steps in FP8
   through ``rl.loop.train_rl`` (generation in bf16; the loop pads experience batches to FP8's width multiple).
   Figures: rollout tokens/s, generate / train seconds per step, reward.
3. ``rollout``: ``bench/rollout_throughput.py --device cuda`` (the sampler vs HF generate on the same weights).

FP8 needs TransformerEngine and FP8 tensor cores: without them the FP8 runs are skipped with the reason, and
``model.transformer_impl=auto`` falls back to the local spec for the bf16 runs (the table says which ran).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# FP8 runs use the default fp8.* knobs (what users get): hybrid format, first and last layer in bf16, hence
# per-tensor current scaling (model.precision.fp8_recipe). Extra fp8.* overrides for every FP8 stage go here.
FP8_OVERRIDES: list[str] = []

PRETRAIN_RUNS = {
    # name: (preset, seq, micro batch, global batch, steps, warm-up steps)
    "paper_150m": ("paper_150m", 2048, 8, 64, 40, 5),
    "paper_1b": ("paper_1b", 512, 16, 64, 25, 5),
}
DRY_RUNS = {"tiny": ("tiny", 64, 4, 8, 8, 2)}


# -- stage: pretraining steps ----------------------------------------------------------------------------------
def bigram_batches(n: int, rows: int, seq: int, vocab: int, device, seed: int = 0, k: int = 4) -> list[dict]:
    """``n`` batches from a fixed random chain: token t is followed by one of ``k`` fixed successors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    succ = torch.randint(0, vocab - 1, (vocab, k), generator=g).to(device)
    cur = torch.randint(0, vocab - 1, (n * rows,), generator=g).to(device)
    choice = torch.randint(0, k, (n * rows, seq), generator=g).to(device)
    cols = [cur]
    for j in range(seq):
        cur = succ[cur, choice[:, j]]
        cols.append(cur)
    data = torch.stack(cols, dim=1).view(n, rows, seq + 1)
    pos = torch.arange(seq, device=device).expand(rows, seq).contiguous()
    ones = torch.ones(rows, seq, device=device)
    return [
        {
            "tokens": d[:, :-1].contiguous(),
            "labels": d[:, 1:].contiguous(),
            "loss_mask": ones,
            "position_ids": pos,
        }
        for d in data
    ]


def pretrain_stage(a: argparse.Namespace) -> dict:
    import torch

    from echo_megatron.config import ConfigError, load_config
    from echo_megatron.distributed.init import destroy, initialize
    from echo_megatron.model.runtime import resolve_runtime
    from echo_megatron.training.flops import H100_BF16_DENSE_TFLOPS, flops_per_token
    from echo_megatron.training.setup import build_train_state
    from echo_megatron.training.step import lm_loss, train_step

    preset, seq, mbs, gbs, steps, warmup = {**PRETRAIN_RUNS, **DRY_RUNS}[a.run]
    device_kind = "cpu" if a.dry_run_cpu else "cuda"
    overrides = [
        f"model.preset={preset}",
        f"model.seq_length={seq}",
        "model.transformer_impl=auto",
        f"parallel.device={device_kind}",
        "parallel.use_distributed_optimizer=false",
        f"train.precision={a.precision}",
        f"train.global_batch_size={gbs}",
        f"train.micro_batch_size={mbs}",
        "train.seed=1234",
        "optimizer.lr=6.0e-4",
        "optimizer.min_lr_ratio=1.0",
        "schedule.warmup_steps=5",
        "schedule.decay_style=constant",
        *(FP8_OVERRIDES if a.precision == "fp8" else []),
    ]
    cfg = load_config(None, overrides)
    res: dict = {
        "stage": f"pretrain {a.run} {a.precision}",
        "preset": preset,
        "seq": seq,
        "global_batch": gbs,
    }
    try:
        impl = resolve_runtime(cfg).transformer_impl
    except ConfigError as e:
        return {**res, "status": "skipped", "reason": str(e)}
    _, device = initialize(cfg)
    try:
        st = build_train_state(cfg, cfg.model.vocab_size, device, total_steps=steps)
        n_params = sum(p.numel() for p in st.model[0].module.parameters())
        fpt = flops_per_token(cfg, n_params)
        per_rank = gbs  # one process: every micro-batch of the global batch is ours
        batches = bigram_batches(steps * per_rank // mbs, mbs, seq, cfg.model.vocab_size, device)
        losses, times = [], []
        for i in range(steps):
            mb = batches[i * (per_rank // mbs) : (i + 1) * (per_rank // mbs)]
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = train_step(st.model, st.optimizer, st.scheduler, mb, lm_loss, seq)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(out["loss"])
            print(f"  step {i + 1:3d} loss {out['loss']:.4f}  {times[-1] * 1e3:.0f} ms", flush=True)
        dt = statistics.median(times[warmup:])
        tps = gbs * seq / dt
        res.update(
            status="ok",
            impl=impl,
            params=n_params,
            steps=steps,
            losses=losses,
            loss_first=losses[0],
            loss_last=statistics.fmean(losses[-5:]),
            step_s=dt,
            tokens_per_s=tps,
            mfu=fpt * tps / (H100_BF16_DENSE_TFLOPS * 1e12),
            peak_mem_gb=(torch.cuda.max_memory_allocated() / 2**30)
            if device.type == "cuda"
            else float("nan"),
        )
    finally:
        destroy()
    return res


# -- stage: GRPO on the testbed --------------------------------------------------------------------------------
def _cli(args: list[str], log) -> None:
    cmd = [sys.executable, "-m", "echo_megatron", *args]
    print("  $ echo-megatron " + " ".join(args), flush=True)
    start = log.tell()
    p = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    if p.returncode:
        log.flush()
        with open(log.name) as f:  # the command's own output, so a failure is readable in gpu_smoke.log
            f.seek(start)
            print("".join(f.readlines()[-40:]), flush=True)
        raise RuntimeError(f"echo-megatron {args[0]} failed (exit {p.returncode}); its output is above")


def grpo_stage(a: argparse.Namespace) -> dict:
    from omegaconf import OmegaConf

    from echo_megatron.config import ConfigError, load_config
    from echo_megatron.distributed.init import destroy
    from echo_megatron.model import precision as P
    from echo_megatron.model.runtime import resolve_runtime
    from echo_megatron.rl.base import inherit_base

    work = Path(a.workdir)
    tb, base, run = work / "testbed", work / "base", work / "grpo"
    dev = "cpu" if a.dry_run_cpu else "cuda"
    common = [f"testbed.out={tb}", f"parallel.device={dev}", "model.transformer_impl=auto"]
    base_prec = "fp32" if a.dry_run_cpu else "bf16"
    res: dict = {"stage": "grpo testbed"}
    with open(work / "cli.log", "a") as log:
        _cli(["testbed", "recipes/demo/testbed.yaml", f"testbed.out={tb}", "testbed.n_train=4000"], log)
        _cli(["preprocess", "recipes/demo/testbed.yaml", *common], log)
        _cli(
            [
                "pretrain",
                "recipes/demo/testbed.yaml",
                *common,
                f"run_dir={base}",
                f"train.precision={base_prec}",
                f"train.steps={a.base_steps}",
                "logging.progress_bar=false",
                "logging.tensorboard=false",
            ],
            log,
        )
    base_rows = [json.loads(x) for x in (base / "metrics.jsonl").read_text().splitlines()]
    res["base_loss"] = base_rows[-1]["loss"]
    prec = "fp32" if a.dry_run_cpu else "fp8"
    overrides = [
        *common,
        f"rl.base={base}",
        f"run_dir={run}",
        f"rl.steps={a.rl_steps}",
        f"train.precision={prec}",
        "logging.progress_bar=false",
        "logging.tensorboard=false",
        *(FP8_OVERRIDES if prec == "fp8" else []),
    ]
    cfg = inherit_base(load_config(str(REPO / "recipes/demo/grpo_testbed.yaml"), overrides))
    try:
        resolve_runtime(cfg)
    except ConfigError as e:
        res["fp8_skipped"] = str(e)
        prec = "bf16"
        cfg = OmegaConf.merge(cfg, {"train": {"precision": prec}})
    res["precision"] = prec
    res["generation"] = "bf16" if P.generation_dtype(prec).itemsize == 2 else "fp32"
    from echo_megatron.rl.loop import train_rl

    try:
        train_rl(cfg)  # the loop pads experience batches to FP8's width multiple itself
    finally:
        destroy()
    rows = [
        r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("phase") == "rl"
    ]
    later = rows[1:] or rows  # the first step includes start-up work (allocations, kernel selection)
    res.update(
        status="ok",
        steps=len(rows),
        rollout_tokens_per_s=statistics.median(r["tokens_per_s"] for r in later),
        generate_s=statistics.median(r["time/generate"] for r in later),
        train_s=statistics.median(r["time/train"] for r in later),
        reward=rows[-1]["reward"],
        response_len=rows[-1]["response_len"],
    )
    return res


# -- stage: rollout benchmark -----------------------------------------------------------------------------------
def rollout_stage(a: argparse.Namespace) -> dict:
    out = Path(a.workdir) / "rollout.json"
    dev = "cpu" if a.dry_run_cpu else "cuda"
    models = "tiny" if a.dry_run_cpu else "25m"
    cmd = [sys.executable, str(REPO / "bench/rollout_throughput.py"), "--device", dev, "--models", models]
    cmd += ["--quick", "--repeats", "3", "--json", str(out)]
    print("  $ " + " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    r = json.loads(out.read_text())["results"][0]
    return {
        "stage": f"rollout {models}",
        "status": "ok",
        "ours_tokens_per_s": r["ours"]["tok_s"],
        "hf_tokens_per_s": r.get("hf", {}).get("tok_s"),
        "ours_vs_hf": r.get("ours_vs_hf"),
    }


STAGES = {"pretrain": pretrain_stage, "grpo": grpo_stage, "rollout": rollout_stage}


# -- orchestration -------------------------------------------------------------------------------------------------
def plan(dry: bool) -> list[tuple[str, list[str], int]]:
    """(stage name, stage arguments, seconds it may take at most), in priority order."""
    if dry:
        return [
            ("pretrain tiny fp32", ["pretrain", "--run", "tiny", "--precision", "fp32"], 300),
            ("grpo testbed", ["grpo", "--base-steps", "30", "--rl-steps", "2"], 900),
            ("rollout tiny", ["rollout"], 900),
        ]
    return [
        ("pretrain paper_150m bf16", ["pretrain", "--run", "paper_150m", "--precision", "bf16"], 90),
        ("pretrain paper_150m fp8", ["pretrain", "--run", "paper_150m", "--precision", "fp8"], 90),
        ("grpo testbed", ["grpo", "--base-steps", "300", "--rl-steps", "4"], 150),
        ("pretrain paper_1b bf16", ["pretrain", "--run", "paper_1b", "--precision", "bf16"], 100),
        ("pretrain paper_1b fp8", ["pretrain", "--run", "paper_1b", "--precision", "fp8"], 100),
        ("rollout 25m", ["rollout"], 90),
    ]


def run_all(a: argparse.Namespace) -> int:
    out = Path(a.out)
    work = Path(a.workdir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + a.budget
    results = [environment()]
    print(json.dumps(results[0]), flush=True)
    for name, stage_args, need in plan(a.dry_run_cpu):
        left = deadline - time.monotonic()
        if left < need * 0.5:
            results.append({"stage": name, "status": "skipped", "reason": f"budget: {left:.0f}s left"})
            continue
        js = work / f"stage{len(results)}.json"
        cmd = [
            sys.executable,
            __file__,
            *stage_args,
            "--name",
            name,
            "--json",
            str(js),
            "--workdir",
            str(work),
        ]
        cmd += ["--dry-run-cpu"] if a.dry_run_cpu else []
        print(f"\n=== {name} (at most {min(need, left):.0f}s)", flush=True)
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=REPO, timeout=max(30.0, min(need, left)))
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        if js.exists():
            res = json.loads(js.read_text())
        else:
            res = {"stage": name, "status": "failed", "reason": f"exit {rc}"}
        res["seconds"] = time.monotonic() - t0
        results.append(res)
    summary = summarize(results)
    print("\n" + summary, flush=True)
    (out / "summary.md").write_text(summary + "\n")
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    return 0 if all(r.get("status") in ("ok", "skipped", None) for r in results) else 1


def environment() -> dict:
    import torch

    env = {"stage": "environment", "torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    for mod in ("megatron.core", "transformer_engine"):
        try:
            m = __import__(mod, fromlist=["__version__"])
            env[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001 - reported, not raised
            env[mod] = f"not importable ({type(e).__name__})"
    return env


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def summarize(results: list[dict]) -> str:
    env = results[0]
    lines = [
        f"GPU smoke: {env.get('gpu', 'no GPU')}, torch {env['torch']}, CUDA {env.get('cuda', '-')}, "
        f"megatron-core {env['megatron.core']}, TransformerEngine {env['transformer_engine']}",
        "",
        "| stage | status | spec | tokens/s | MFU (989 TF) | step s | loss start -> end | peak GB | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    by = {r["stage"]: r for r in results[1:]}
    for r in results[1:]:
        notes = r.get("reason", "")
        if r["stage"].startswith("pretrain"):
            loss = (
                f"{_fmt(r.get('loss_first'), '.3f')} -> {_fmt(r.get('loss_last'), '.3f')}"
                if "losses" in r
                else "-"
            )
            lines.append(
                f"| {r['stage']} | {r['status']} | {r.get('impl', '-')} | {_fmt(r.get('tokens_per_s'), ',.0f')} | "
                f"{_fmt(r.get('mfu'), '.1%')} | {_fmt(r.get('step_s'), '.3f')} | {loss} | "
                f"{_fmt(r.get('peak_mem_gb'), '.1f')} | {notes} |"
            )
        elif r["stage"].startswith("grpo"):
            notes = (notes + " " + ("fp8 skipped: " + r["fp8_skipped"] if "fp8_skipped" in r else "")).strip()
            lines.append(
                f"| {r['stage']} | {r['status']} | {r.get('precision', '-')} train, {r.get('generation', '-')} generation | "
                f"{_fmt(r.get('rollout_tokens_per_s'), ',.0f')} (rollout) | - | "
                f"{_fmt(r.get('generate_s'), '.2f')} gen + {_fmt(r.get('train_s'), '.2f')} train | "
                f"reward {_fmt(r.get('reward'), '.2f')} | - | {notes} |"
            )
        else:
            lines.append(
                f"| {r['stage']} | {r['status']} | ours vs HF generate | {_fmt(r.get('ours_tokens_per_s'), ',.0f')} | - "
                f"| - | ours/hf {_fmt(r.get('ours_vs_hf'), '.2f')}x | - | {notes} |"
            )
    for run in PRETRAIN_RUNS:
        b, f = by.get(f"pretrain {run} bf16", {}), by.get(f"pretrain {run} fp8", {})
        if b.get("status") == "ok" and f.get("status") == "ok":
            rel = abs(f["loss_last"] - b["loss_last"]) / b["loss_last"]
            lines.append(
                f"\nloss parity {run} after {b['steps']} steps: bf16 {b['loss_last']:.4f}, fp8 {f['loss_last']:.4f} "
                f"(|diff| {rel:.2%} of bf16); fp8/bf16 tokens/s {f['tokens_per_s'] / b['tokens_per_s']:.2f}x"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["all", *STAGES])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench/out/gpu_smoke"))
    ap.add_argument("--workdir", default="/tmp/echo-gpu-smoke")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all stages together")
    ap.add_argument("--dry-run-cpu", action="store_true", help="tiny fp32 versions of the stages on the CPU")
    ap.add_argument("--run", default="paper_150m", help="pretrain: paper_150m | paper_1b | tiny")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--base-steps", type=int, default=300)
    ap.add_argument("--rl-steps", type=int, default=4)
    ap.add_argument("--json", help="stage result file")
    ap.add_argument("--name", default=None, help="the stage's row name in the summary table")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if a.stage == "all":
        return run_all(a)
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    try:
        res = STAGES[a.stage](a)
    except Exception as e:  # noqa: BLE001 - one stage's failure is a row of the table
        import traceback

        traceback.print_exc()
        res = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    res["stage"] = a.name or a.stage
    if a.json:
        Path(a.json).write_text(json.dumps(res))
    return 0 if res.get("status") in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
