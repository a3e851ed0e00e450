"""Preprocess throughput and memory on a generated multi-shard corpus: tokens/s per core, the speed-up of N worker
processes over one, and peak memory against corpus size.

The corpus is generated (JSON Lines of question/solution documents in ``--file-mb`` files, one shard each), so
nothing outside the repo is read. Each run is ``echo_megatron.data.preprocess.preprocess`` in a fresh process
(its imports, megatron's and datasets', done before the clock starts). Runs:

    1 worker and N workers on the first --small-gb,    the speed-up: median of --repeats interleaved pairs
    in alternating order (1,N  N,1  1,N ...)           (target >= 1.8x with 2 workers on 2 cores)
    N workers on the first --small-gb and on the       peak memory flat in corpus size (within 1.25x): the sum of
    whole corpus (--size-gb), watched                  the PSS (pages the forked workers share with the main
                                                       process count once) of the process tree every 0.5 s

and checks that the 1- and N-worker shards are byte-identical. A pair's ratio is about the product of two
measured factors, both printed: how many cores the N workers keep busy (the software: its serial setup, the last
shard's tail) and their tokens per CPU-second against one process alone (the machine: a VM's cores can be slower
together than alone). The tokenizer is the paper recipes' (Llama-2's, shipped in the package; ``--tokenizer``
takes any other).

    python bench/preprocess_throughput.py              # 1 GB in 16 x 64 MB files (~13 min on 2 idle cores)
    python bench/preprocess_throughput.py --quick      # 16 MB in 4 x 4 MB files (~1 min)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the of and a to in is that for it as with was on be by this are from at or an which we have one all if "
    "let find number value total each more less than twice half sum product difference equal equals solve "
    "answer therefore so then since because integer prime factor divisor remainder fraction ratio percent "
    "apples pears books students tickets minutes hours miles dollars cents price cost bought sold left "
    "triangle circle radius area perimeter angle side length width height volume square cube root"
).split()
MATH = [
    "$x$",
    "$y^2$",
    "$\\frac{a}{b}$",
    "$2x+3=7$",
    "$\\sqrt{n}$",
    "$\\pi r^2$",
    "=",
    "+",
    "-",
    "\\times",
    "\\boxed{",
]


def documents(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` JSON lines of question/solution documents (words, numbers, a little LaTeX)."""
    lines = []
    for _ in range(n):
        k = int(rng.integers(20, 120))
        toks = rng.choice(WORDS, size=k).tolist()
        for j in rng.integers(0, k, size=k // 6):
            toks[int(j)] = str(int(rng.integers(0, 10_000)))
        for j in rng.integers(0, k, size=k // 12):
            toks[int(j)] = MATH[int(rng.integers(0, len(MATH)))]
        cut = k // 4
        lines.append(
            json.dumps({"question": " ".join(toks[:cut]) + "?", "solution": " ".join(toks[cut:]) + "."})
        )
    return lines


def make_corpus(root: Path, size_gb: float, file_mb: int, seed: int = 0) -> list[Path]:
    """Files of ``file_mb`` MB adding up to ``size_gb`` GB (kept: a rerun with the same sizes reuses them)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pool = documents(
        rng, 20_000
    )  # sampled with replacement: tokenizers cache nothing, so repeats cost the same
    n_files = max(1, round(size_gb * 1024 / file_mb))
    files = []
    for f in range(n_files):
        path = root / f"part-{f:05d}.jsonl"
        files.append(path)
        if path.exists() and path.stat().st_size >= file_mb << 20:
            continue
        with open(path, "w", encoding="utf-8") as out:
            written = 0
            while written < file_mb << 20:
                chunk = "\n".join(pool[i] for i in rng.integers(0, len(pool), size=2000)) + "\n"
                out.write(chunk)
                written += len(chunk)
    return files


def paper_tokenizer() -> str:
    """The tokenizer of the paper recipes (``data.tokenizer.path`` of recipes/paper/_pretrain_base.yaml)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(REPO / "recipes" / "paper" / "_pretrain_base.yaml").data.tokenizer.path)


# -- one measured run, in a fresh process ----------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """``--child``: preprocess ``--files`` with ``--workers`` processes; print one JSON line of figures."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")  # megatron's CPU import notices
    import datasets  # noqa: F401  (imports not timed: the two runs of a pair pay them alike)
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401

    from echo_megatron.config import load_config
    from echo_megatron.data.preprocess import preprocess

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    cfg = load_config(None, [
        f"data.tokenizer.path={args.tokenizer}", f"data.indexed_dir={args.out}", f"data.num_workers={args.workers}",
        "data.sources.bench.type=testbed", f"data.sources.bench.data_files={json.dumps(args.files)}",
        "data.progress_interval=1e9",
    ])  # fmt: skip
    t0, cpu0 = time.perf_counter(), _cpu(resource)
    (m,), _ = preprocess(cfg, log=lambda s: None, progress_out=open(os.devnull, "w"))
    wall, cpu = time.perf_counter() - t0, _cpu(resource) - cpu0
    print(
        json.dumps(
            {"tokens": m["tokens"], "docs": m["docs"], "wall": wall, "cpu": cpu, "shards": m["num_shards"]}
        )
    )


def _cpu(resource) -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def pss_bytes(proc) -> int:
    """Proportional set size of a psutil process (0 once it has ended): /proc/PID/smaps_rollup (one summed
    record) where the kernel has it, else psutil's full smaps walk, which costs this monitor enough CPU to slow
    the workers it is watching."""
    if not os.path.exists("/proc/self/smaps_rollup"):
        return proc.memory_full_info().pss
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # the process ended between the listing and the read
        pass
    return 0


def measure(files: list[Path], workers: int, tokenizer: str, out: Path, memory: bool = False) -> dict:
    """Run the child; its figures, plus with ``memory`` the peak (sum of PSS, MB) of its process tree. Timed runs
    go unwatched: reading a 600 MB process's smaps_rollup takes ~15 ms of CPU, ~8% of a core at 3 processes every
    0.5 s, which a 1-worker run gets from the idle core and an N-worker run takes from its workers."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", "--workers", str(workers), "--tokenizer", tokenizer,
           "--out", str(out), "--files", *map(str, files)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while memory and proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(pss_bytes(p) for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.5)
    text, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_mb"] = peak / 2**20
    result["digest"] = hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(out.rglob("shard_*.bin")))
    ).hexdigest()
    return result


def rate(run: dict) -> float:
    """Tokens per second of wall clock."""
    return run["tokens"] / run["wall"]


def per_cpu(run: dict) -> float:
    """Tokens per CPU-second (the process and its workers)."""
    return run["tokens"] / run["cpu"]


def spread(values: list[float]) -> str:
    """``median (min-max)`` of a few ratios."""
    med = statistics.median(values)
    return f"{med:.2f}x" if len(values) == 1 else f"{med:.2f}x ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size-gb", type=float, default=1.0, help="the whole corpus")
    ap.add_argument(
        "--small-gb", type=float, default=0.25, help="the corpus of the speed-up and of the RSS comparison"
    )
    ap.add_argument("--file-mb", type=int, default=64, help="size of one input file (= one shard)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved (1 worker, N workers) pairs")
    ap.add_argument(
        "--quick", action="store_true", help="--size-gb 0.015625 --small-gb 0.0078125 --file-mb 4 --repeats 1"
    )
    ap.add_argument("--work", type=Path, help="where the corpus is generated and kept (default: a temp dir)")
    ap.add_argument(
        "--tokenizer", help="a tokenizer path or hub name (default: the paper recipes', Llama-2's)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.size_gb, args.small_gb, args.file_mb, args.repeats = 0.015625, 0.0078125, 4, 1
    N = args.workers
    work = args.work or Path(tempfile.mkdtemp(prefix="echo_bench_"))
    try:
        t0 = time.perf_counter()
        files = make_corpus(work / "corpus", args.size_gb, args.file_mb)
        small = files[: max(1, round(args.small_gb * 1024 / args.file_mb))]
        tok = args.tokenizer or paper_tokenizer()
        gb = lambda fs: sum(f.stat().st_size for f in fs) / 2**30  # noqa: E731
        print(f"corpus: {gb(files):.2f} GB in {len(files)} files of {args.file_mb} MB (one shard each), "
              f"generated in {time.perf_counter() - t0:.0f}s; tokenizer {tok}; cpus {os.cpu_count()}")  # fmt: skip
        load0 = os.getloadavg()
        ones, manys, ratios, busy, together = [], [], [], [], []
        for r in range(args.repeats):
            order = (1, N) if r % 2 == 0 else (N, 1)
            runs = {w: measure(small, w, tok, work / f"out{w}") for w in order}
            one, many = runs[1], runs[N]
            ones.append(one)
            manys.append(many)
            ratios.append(rate(many) / rate(one))
            busy.append(many["cpu"] / many["wall"])
            together.append(per_cpu(many) / per_cpu(one))
            print(
                f"pair {r + 1} ({order[0]} then {order[1]}): 1 worker {rate(one):,.0f} tokens/s ({one['wall']:.1f}s), "
                f"{N} workers {rate(many):,.0f} tokens/s ({many['wall']:.1f}s, {busy[-1]:.2f} cores busy): "
                f"{ratios[-1]:.2f}x; tokens per CPU-second {per_cpu(one):,.0f} alone, {per_cpu(many):,.0f} with {N}; "
                f"identical shards: {one['digest'] == many['digest']}",
                flush=True,
            )
        small_mem = measure(small, N, tok, work / "outM", memory=True)
        full = measure(files, N, tok, work / "outF", memory=True)
        load1 = os.getloadavg()
        print(
            f"load average (1/5/15 min) before: {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
            f"after: {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} (other processes share the cores)"
        )
        one, median = ones[0], statistics.median
        print(
            f"single process: {median(map(rate, ones)):,.0f} tokens/s (median; {one['tokens']:,} tokens, "
            f"{one['docs']:,} docs in {one['shards']} shards, {median(o['wall'] for o in ones):.1f}s); "
            f"{median(map(per_cpu, ones)):,.0f} tokens per CPU-second"
        )
        same = all(o["digest"] == m["digest"] for o, m in zip(ones, manys))
        print(
            f"{N} workers: {median(map(rate, manys)):,.0f} tokens/s (median), "
            f"identical shards in every pair: {same}; whole corpus {rate(full):,.0f} tokens/s "
            f"({full['tokens']:,} tokens in {full['shards']} shards, {full['wall']:.1f}s)"
        )
        small_peak = small_mem["peak_mb"]
        print(
            f"peak memory (PSS of main + {N} workers): {gb(small):.2f} GB corpus {small_peak:,.0f} MB, "
            f"{gb(files):.2f} GB corpus {full['peak_mb']:,.0f} MB (x{full['peak_mb'] / small_peak:.2f}; "
            f"flat = within 1.25x)"
        )
        print(
            f"ratio {N} workers/single: {spread(ratios)} over {len(ratios)} pairs (target >= 1.8x with 2 workers "
            f"on 2 cores) ~ cores busy with {N} workers {median(busy):.2f} (median) x their tokens per "
            f"CPU-second against 1 alone {median(together):.2f} (median)"
        )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
