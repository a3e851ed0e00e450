"""Rollout throughput: our KV-cache sampler vs HF ``generate`` on the same weights vs a no-cache loop.

    python bench/rollout_throughput.py                 # tiny + ~25M model, 64 prompts x 8 samples, 256 new tokens
    python bench/rollout_throughput.py --quick         # a one-minute smoke run
    python bench/rollout_throughput.py --device cuda   # the same on a GPU

Workload (issue 6): 64 prompts of 90-110 random token ids, 8 samples each (512 sequences), 256 new tokens each,
temperature 1, no top-k/top-p, EOS ignored so every path generates exactly the same number of tokens. Paths:

* ours:      ``Sampler`` on the megatron GPTModel (shared prefill per prompt, static KV cache, SDPA);
* hf:        ``transformers`` ``generate`` (num_return_sequences=8, sdpa attention, its default dynamic cache)
             on the model exported by ``checkpoint/hf_export.py`` (identical weights and logits);
* no-cache:  the training forward over the whole sequence at every step (``rollout/reference.py``); it runs on
             a subset of sequences and steps (``--nocache-rows``, ``--nocache-steps``); its first steps have
             the shortest contexts, so its tokens/s is an overestimate and ours/no-cache a lower bound.
* sync:      the cost a separate engine would pay per RL step: megatron state dict -> HF layout -> copy
             into the HF model (the in-process sampler pays nothing);
* train:     forward + backward of the training loss on a subset of the generated sequences (prompt +
             response), for the generate / train time split of an RL step.

Every path decodes ``--batch`` sequences at a time. ours and hf alternate ``--repeats`` times and the fastest
run of each counts (a shared machine's load varies). Peak RSS of the process is sampled every 10 ms while
each path runs, with its growth during the run (memory a path holds only while running).
Targets: ours >= 1.5x hf and >= 10x no-cache (tokens/s of newly generated tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings

import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MODELS = {
    # name: (hidden, layers, heads, ffn per SwiGLU half, vocab)
    "tiny": (64, 2, 4, 256, 512),  # the `tiny` preset, 0.2M parameters
    "25m": (512, 8, 8, 1024, 4096),  # 25.2M parameters
}


class PeakRSS:
    """Peak resident set size of this process while the block runs (sampled)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.proc, self.interval, self.peak = psutil.Process(), interval, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def build(name: str, device: torch.device, seq_len: int, precision: str):
    from echo_megatron.config import load_config
    from echo_megatron.distributed.init import initialize
    from echo_megatron.model.builder import build_model

    h, layers, heads, ffn, vocab = MODELS[name]
    cfg = load_config(
        None,
        [
            f"model.hidden_size={h}",
            f"model.num_layers={layers}",
            f"model.num_attention_heads={heads}",
            f"model.ffn_hidden_size={ffn}",
            f"model.vocab_size={vocab}",
            f"model.seq_length={seq_len}",
            f"parallel.device={device.type}",
            f"train.precision={precision}",
        ],
    )
    initialize(cfg)
    model = build_model(cfg, vocab).to(device).eval()
    return cfg, model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    with PeakRSS() as mem:
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        dt = time.perf_counter() - t0
    return out, dt, mem


def consistency(model, prompts: list[list[int]], vocab: int, seq_len: int, new: int = 32) -> dict:
    """KV-cache tokens vs the no-cache loop, and sampler log-probs vs a teacher-forced forward, at this precision."""
    from echo_megatron.rollout.reference import generate_no_cache, teacher_forced_logprobs
    from echo_megatron.rollout.sampler import Sampler

    s = Sampler(model, eod_id=vocab - 1, pad_id=0, max_seq_len=seq_len, vocab_size=vocab)
    out = {}
    for t in (0.0, 1.0):
        kw = dict(n=4, max_new_tokens=new, temperature=t, seed=5)
        got = s.generate(prompts, ignore_eos=True, **kw)
        want = generate_no_cache(model, prompts, vocab_size=vocab, **kw)
        same = sum(r.response_ids == w for r, w in zip(got, want))
        prefix = [
            next((i for i, (a, b) in enumerate(zip(r.response_ids, w)) if a != b), new)
            for r, w in zip(got, want)
        ]
        tf = teacher_forced_logprobs(model, [r.prompt_ids for r in got], [r.response_ids for r in got], t)
        err = max(max(abs(a - b) for a, b in zip(r.logprobs, f)) for r, f in zip(got, tf))
        mean = sum(sum(abs(a - b) for a, b in zip(r.logprobs, f)) for r, f in zip(got, tf)) / (len(got) * new)
        out[f"T={t}"] = {
            "identical": same,
            "of": len(got),
            "mean_first_divergence": sum(prefix) / len(prefix),
            "max_abs_logprob_err": err,
            "mean_abs_logprob_err": mean,
        }
        print(
            f"  check T={t}: {same}/{len(got)} sequences identical to the no-cache loop (first divergence at "
            f"token {sum(prefix) / len(prefix):.1f} on average); |logprob - teacher-forced| max {err:.1e} "
            f"mean {mean:.1e}",
            flush=True,
        )
    return out


def profile_paths(
    paths: dict, prompts: list[list[int]], samples: int, new: int, device: torch.device
) -> None:
    """Where each path's time goes: torch.profiler over one call, the top operators by self CPU time (and the
    GPU kernel total on CUDA). Per decode step, a small model is bound by the host issuing operators."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for name, fn in paths.items():
        with profile(activities=acts) as prof:
            fn(prompts, samples, new)
            sync(device)
        ev = prof.key_averages()
        gpu = sum(getattr(e, "self_device_time_total", 0) for e in ev) / 1e3
        cpu = sum(e.self_cpu_time_total for e in ev) / 1e3
        print(
            f"  profile {name}: self CPU {cpu:.0f} ms, GPU kernels {gpu:.0f} ms over {new} decode steps",
            flush=True,
        )
        print(ev.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=48), flush=True)


def bench_model(name: str, args, device: torch.device) -> dict:
    from echo_megatron.checkpoint.hf_export import build_hf_model, megatron_state_dict, to_hf_state_dict
    from echo_megatron.rollout.reference import generate_no_cache
    from echo_megatron.rollout.sampler import Sampler

    seq_len = 128 * ((110 + args.new_tokens + 127) // 128)
    cfg, model = build(name, device, seq_len, args.precision)
    vocab = MODELS[name][4]
    eod, pad = vocab - 1, 0
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(90, 111, (args.prompts,), generator=g).tolist()
    prompts = [torch.randint(1, vocab - 1, (n,), generator=g).tolist() for n in lengths]
    new = args.new_tokens
    total_new = args.prompts * args.samples * new
    row = {"model": name, "params": n_params, "sequences": args.prompts * args.samples, "new_tokens": new}
    if args.check or args.only_check:
        row["check"] = consistency(model, prompts[:4], vocab, seq_len)
        if args.only_check:
            return row

    # ours and hf, alternated `--repeats` times (the best run of each counts: this machine may be shared)
    sampler = Sampler(
        model, eod_id=eod, pad_id=pad, max_seq_len=seq_len, vocab_size=vocab, max_batch=args.batch
    )
    kw = dict(n=args.samples, max_new_tokens=new, temperature=1.0, seed=1, ignore_eos=True)
    rollouts: list = []

    def ours(prompts: list[list[int]], n: int, new: int) -> int:
        rollouts[:] = sampler.generate(prompts, **{**kw, "n": n, "max_new_tokens": new})
        return sum(len(r.response_ids) for r in rollouts)

    paths = {"ours": ours}
    if not args.skip_hf:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        hf = build_hf_model(model, cfg.model, eod_id=eod, pad_id=pad, dtype=dtype).to(device)
        per_chunk = max(1, args.batch // args.samples)

        def hf_generate(prompts: list[list[int]], n: int, new: int) -> int:
            n_out = 0
            for s in range(0, len(prompts), per_chunk):
                chunk = prompts[s : s + per_chunk]
                width = max(len(p) for p in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                att = torch.zeros_like(ids)
                for i, p in enumerate(chunk):
                    ids[i, width - len(p) :] = torch.tensor(p)
                    att[i, width - len(p) :] = 1
                with torch.no_grad():
                    out = hf.generate(
                        ids.to(device),
                        attention_mask=att.to(device),
                        do_sample=True,
                        temperature=1.0,
                        top_k=0,
                        top_p=1.0,
                        max_new_tokens=new,
                        min_new_tokens=new,
                        num_return_sequences=n,
                        pad_token_id=pad,
                        eos_token_id=eod,
                    )
                n_out += (out.shape[1] - width) * out.shape[0]
            return n_out

        paths["hf"] = hf_generate

        # what a separate engine pays per RL step to see new weights: megatron -> HF layout -> engine copy
        def weight_sync() -> None:
            state = to_hf_state_dict(megatron_state_dict(model), cfg.model)
            hf.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=False)

        weight_sync()
        _, dt, _ = timed(weight_sync, device)
        row["weight_sync_s"] = dt
        print(f"  weight sync into the HF copy: {dt * 1e3:.0f} ms", flush=True)
    for fn in paths.values():  # warm-up
        if device.type == "cuda":
            # at the measured shapes: the first call at a batch size pays for CUDA kernel and cuBLAS heuristic
            # selection (seconds for a 25M model on an H100, more than the timed run itself)
            fn(prompts, args.samples, new)
        else:
            fn(prompts[:2], 2, 4)
    for rep in range(args.repeats):
        for name_, fn in paths.items():
            made, dt, mem = timed(lambda fn=fn: fn(prompts, args.samples, new), device)
            assert made == total_new, (name_, made, total_new)
            res = row.setdefault(name_, {"runs_s": [], "peak_rss_mb": 0.0, "rss_growth_mb": 0.0})
            res["runs_s"].append(dt)
            res["peak_rss_mb"] = max(res["peak_rss_mb"], mem.peak / 2**20)
            res["rss_growth_mb"] = max(res["rss_growth_mb"], (mem.peak - mem.start) / 2**20)
            res["s"] = min(res["runs_s"])
            res["tok_s"] = total_new / res["s"]
            print(
                f"  {name_:9} {total_new / dt:10.0f} tok/s  ({dt:.1f} s; run {rep + 1}; peak RSS "
                f"{mem.peak / 2**20:.0f} MB, +{(mem.peak - mem.start) / 2**20:.0f} MB during the run)",
                flush=True,
            )

    if args.profile:
        profile_paths(paths, prompts, args.samples, new, device)

    # no-cache loop on a subset
    sub = prompts[: max(1, args.nocache_rows // args.samples)]
    steps = min(args.nocache_steps, new)
    nk = dict(
        n=min(args.samples, args.nocache_rows), max_new_tokens=steps, temperature=1.0, seed=1, pad_id=pad
    )
    if device.type == "cuda":  # warm-up at the measured shapes (see above)
        generate_no_cache(model, sub, vocab_size=vocab, **nk)
    out, dt, mem = timed(lambda: generate_no_cache(model, sub, vocab_size=vocab, **nk), device)
    made = sum(len(r) for r in out)
    row["no_cache"] = {
        "s": dt,
        "tok_s": made / dt,
        "rows": len(out),
        "steps": steps,
        "peak_rss_mb": mem.peak / 2**20,
    }
    print(
        f"  no-cache  {made / dt:10.0f} tok/s  ({len(out)} sequences x {steps} steps, {dt:.1f} s)", flush=True
    )

    # one training forward + backward over rollout sequences (the update side of an RL step)
    seqs = torch.tensor(
        [r.ids[: min(len(r.ids), 90 + new)] for r in rollouts[: args.train_rows]], device=device
    )
    model.train()

    def train_pass():
        tokens, labels = seqs[:, :-1], seqs[:, 1:]
        pos = torch.arange(tokens.shape[1], device=device)[None].expand_as(tokens)
        loss = model(tokens, pos, None, labels=labels).float().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        train_pass()  # warm-up: the backward kernels' first use
    _, dt, mem = timed(train_pass, device)
    model.eval()
    n_tok = seqs.shape[0] * (seqs.shape[1] - 1)
    row["train_fwd_bwd"] = {"s": dt, "tok_s": n_tok / dt, "rows": seqs.shape[0]}
    print(
        f"  train     {n_tok / dt:10.0f} tok/s  (forward+backward, {seqs.shape[0]} x {seqs.shape[1] - 1} tokens)"
    )

    ours = row["ours"]["tok_s"]
    if "hf" in row:
        row["ours_vs_hf"] = ours / row["hf"]["tok_s"]
    row["ours_vs_no_cache"] = ours / row["no_cache"]["tok_s"]
    # an RL step that generates G new tokens and trains once on prompt + response tokens:
    gen_s = total_new / ours
    train_s = args.prompts * args.samples * (100 + new) / row["train_fwd_bwd"]["tok_s"]
    row["rl_step_split"] = {"generate": gen_s / (gen_s + train_s), "train": train_s / (gen_s + train_s)}
    if "weight_sync_s" in row:
        row["weight_sync_vs_generate"] = row["weight_sync_s"] / gen_s
    return row


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny,25m", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128, help="sequences decoded together (both ours and hf)")
    ap.add_argument("--nocache-rows", type=int, default=16)
    ap.add_argument("--nocache-steps", type=int, default=64)
    ap.add_argument("--train-rows", type=int, default=16)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable on a shared machine)"
    )
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--precision", default=None, help="fp32 | bf16 (default: fp32 on cpu, bf16 on cuda)")
    ap.add_argument(
        "--check", action="store_true", help="also compare with the no-cache loop / teacher forcing"
    )
    ap.add_argument("--only-check", action="store_true", help="the consistency check only")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print where ours and hf spend their time")
    ap.add_argument("--repeats", type=int, default=1, help="alternate ours / hf this many times; best counts")
    ap.add_argument("--quick", action="store_true", help="8 prompts x 4 samples, 64 new tokens")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.samples, args.new_tokens, args.nocache_steps = 8, 4, 64, 16
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    print(
        f"rollout throughput: {args.prompts} prompts x {args.samples} samples, 90-110 prompt tokens, "
        f"{args.new_tokens} new tokens, decode batch {args.batch}, {args.precision}, {device.type}"
        + (f" ({args.threads} threads)" if device.type == "cpu" else f" ({torch.cuda.get_device_name()})"),
        flush=True,
    )
    rows = []
    for name in args.models.split(","):
        print(f"[{name}]", flush=True)
        rows.append(bench_model(name, args, device))
    if args.only_check:
        return 0
    print()
    print(
        f"{'model':6} {'params':>8} {'ours tok/s':>11} {'hf tok/s':>9} {'nocache':>8} {'ours/hf':>8} {'ours/nocache':>13} {'peak RSS ours/hf MB':>20} {'sync/gen':>9}  RL step gen:train"
    )
    for r in rows:
        hf = r.get("hf", {})
        print(
            f"{r['model']:6} {r['params'] / 1e6:7.1f}M {r['ours']['tok_s']:11.0f} {hf.get('tok_s', float('nan')):9.0f} "
            f"{r['no_cache']['tok_s']:8.0f} {r.get('ours_vs_hf', float('nan')):7.2f}x {r['ours_vs_no_cache']:12.1f}x "
            f"{r['ours']['peak_rss_mb']:9.0f}/{hf.get('peak_rss_mb', float('nan')):<9.0f} "
            f"{r.get('weight_sync_vs_generate', float('nan')):9.2%}  "
            f"{r['rl_step_split']['generate']:.0%}:{r['rl_step_split']['train']:.0%}"
        )
    print("targets: ours/hf >= 1.5x, ours/nocache >= 10x")
    print(
        "sync/gen: a separate engine's weight copy (megatron -> HF layout) per step, relative to our generate time; "
        "gen:train: one RL step that generates the batch and trains once (fwd+bwd) on prompt + response tokens"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
