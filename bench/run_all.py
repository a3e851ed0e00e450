"""Run every CPU benchmark and write ``bench/RESULTS.md``: the machine, each benchmark's figures, its output.

    python bench/run_all.py                       # all four, default sizes (~30 min on 2 busy cores)
    python bench/run_all.py --quick               # smaller runs of each (a few minutes)
    python bench/run_all.py --only pretrain,sandbox --out /tmp/RESULTS.md

Benchmarks (each one script in bench/, each printing ratios measured within its own run):
    pretrain    pretrain_throughput.py    echo-megatron step vs plain PyTorch; FLOP/s vs the fp32 matmul peak
    preprocess  preprocess_throughput.py  tokenize + index with N workers vs one process
    sandbox     sandbox_throughput.py     sandboxed program scoring (pool) vs a fresh python per program
    rollout     rollout_throughput.py     KV-cache sampler vs HF generate vs a no-cache loop
GPU figures come from ``bench/gpu_smoke.sh`` (docs/gpu.md); ``--gpu-summary`` adds its summary.md here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# name: (script, default arguments, --quick arguments, summary-line pattern, target)
BENCHES: dict[str, tuple[str, list[str], list[str], str, str]] = {
    "pretrain": (
        "pretrain_throughput.py",
        [],
        ["--quick"],
        r"^(model |same math|ratio|peak fraction)",
        "ours/ref >= 1.0; >= 60% of the fp32 matmul peak (~25M model, seq 256)",
    ),
    "preprocess": (
        "preprocess_throughput.py",
        [],
        ["--quick"],
        r"^(corpus|single process|\d+ workers|peak memory|ratio)",
        "parallel/single >= 1.8x on 2 cores; memory flat in corpus size (1 GB vs 0.25 GB)",
    ),
    "sandbox": (
        "sandbox_throughput.py",
        [],
        ["--baseline-n", "40"],
        r"^(pool:|subprocess:|ratio)",
        ">= 200 programs/s and >= 10x",
    ),
    "rollout": (
        "rollout_throughput.py",
        [],
        ["--quick"],
        r"^(model +params|tiny |25m |targets)",
        "ours/hf >= 1.5x, ours/no-cache >= 10x",
    ),
}
NOISE = re.compile(r"(Warning|warnings\.warn|^\s*$|^\s+warn\()")


def machine() -> list[str]:
    warnings.filterwarnings("ignore")  # megatron's "TE / Apex not installed" notes on import
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) / 2**20
        mem_s = f"{mem:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem_s = "RAM ?"
    try:
        import megatron.core

        mcore = megatron.core.__version__
    except Exception:  # noqa: BLE001 - reported as missing
        mcore = "not installed"
    return [
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, {mem_s}; {platform.system()} {platform.release()}",
        f"- Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads by "
        f"default), megatron-core {mcore}",
    ]


def run_bench(name: str, quick: bool) -> dict:
    script, default, quick_args, pattern, target = BENCHES[name]
    cmd = [sys.executable, str(REPO / "bench" / script), *(quick_args if quick else default)]
    load0 = os.getloadavg()[0]
    t0 = time.monotonic()
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    p = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1")
    )
    seconds = time.monotonic() - t0
    lines = [x.rstrip() for x in (p.stdout + ("\n" + p.stderr if p.returncode else "")).splitlines()]
    lines = [x for x in lines if not NOISE.search(x)]
    key = [x for x in lines if re.search(pattern, x)]
    for x in key:
        print("   " + x, flush=True)
    return {
        "name": name,
        "cmd": "python "
        + " ".join(str(Path(c).relative_to(REPO)) if c.startswith(str(REPO)) else c for c in cmd[1:]),
        "rc": p.returncode,
        "seconds": seconds,
        "load": (load0, os.getloadavg()[0]),
        "key": key,
        "output": lines,
        "target": target,
    }


def write(results: list[dict], out: Path, quick: bool, gpu_summary: Path | None) -> None:
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    md = [
        "# Benchmark results",
        "",
        f"Written by `python bench/run_all.py{' --quick' if quick else ''}` on {now}. Each figure is a ratio "
        "measured within one run of its script (both sides on the same machine, interleaved where the script "
        "says so), so a busy machine moves the absolute rates more than the ratios.",
        "",
        "## Machine",
        *machine(),
        "- load average while each ran (other processes share these cores): "
        + ", ".join(f"{r['name']} {r['load'][0]:.1f}->{r['load'][1]:.1f}" for r in results),
        "",
        "## Figures",
        "",
        "| benchmark | command | target | result | seconds |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in results:
        lines = [
            x for x in r["key"] if not (x.startswith(("model ", "corpus")) and ":" in x)
        ]  # context lines
        summary = "<br>".join(x.replace("|", "\\|") for x in lines)
        if r["rc"]:
            summary = f"FAILED (exit {r['rc']})" + (f"<br>{summary}" if summary else "")
        md.append(f"| {r['name']} | `{r['cmd']}` | {r['target']} | {summary or '-'} | {r['seconds']:.0f} |")
    md += [
        "",
        "GPU figures: `bash bench/gpu_smoke.sh` (measured on one H100 in bf16 on the local spec; FP8 needs "
        "TransformerEngine), see docs/gpu.md.",
    ]
    if gpu_summary and gpu_summary.is_file():
        md += ["", "## GPU smoke summary", "", gpu_summary.read_text().strip()]
    md += ["", "## Outputs"]
    for r in results:
        md += ["", f"### {r['name']}", "", "```", *r["output"], "```"]
    out.write_text("\n".join(md) + "\n" + kept_history(out))


HISTORY = "## History"


def kept_history(path: Path) -> str:
    """The hand-kept ``## History`` section of an existing results file (measurements of earlier builds),
    carried over when the figures above it are rewritten."""
    if not path.is_file():
        return ""
    text = path.read_text()
    at = text.find("\n" + HISTORY + "\n")
    return "\n" + text[at + 1 :] if at >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs of every benchmark")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "RESULTS.md")
    ap.add_argument("--gpu-summary", type=Path, help="a bench/gpu_smoke.sh summary.md to include")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown benchmark(s): {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    results = [run_bench(n, a.quick) for n in names]
    write(results, a.out, a.quick, a.gpu_summary)
    print(f"wrote {a.out}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
