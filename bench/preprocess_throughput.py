"""Preprocess throughput and memory on a generated multi-shard corpus: tokens/s per core, the speed-up of N worker
processes over one, and peak memory against corpus size.

The corpus is generated (JSON Lines of question/solution documents in ``--file-mb`` files, one shard each), so
nothing outside the repo is read. Each run is ``echo_megatron.data.preprocess.preprocess`` in a fresh process
(imports done before the clock starts); the bench samples the memory of that process and its workers every
0.2 s as the sum of their PSS (proportional set size: pages the forked workers share with the main process are
counted once, so the sum is what the node holds). Runs:

    1 worker  on the first --small-gb              tokens/s per core
    N workers on the first --small-gb              ratio N workers / 1 worker (target >= 1.8x with 2 on 2 cores)
    N workers on the whole corpus (--size-gb)      peak memory flat in corpus size (within 1.25x of the small run)

and checks that the 1- and N-worker shards are byte-identical. The tokenizer is OLMo-1's (the paper's, found by
``load_tokenizer`` as for the recipes) or, when it is not available, a 32k byte-level BPE trained here.

    python bench/preprocess_throughput.py              # 1 GB in 16 x 64 MB files (~12 min on 2 idle cores)
    python bench/preprocess_throughput.py --quick      # 16 MB in 4 x 4 MB files (~1 min)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OLMO = "allenai/gpt-neox-olmo-dolma-v1_5"
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


def tokenizer_path(work: Path) -> str:
    """OLMo's tokenizer if ``load_tokenizer`` finds it (ECHO_TOKENIZER_DIR, the hub), else a 32k BPE trained here."""
    from echo_megatron.data.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

    try:
        return load_tokenizer(argparse.Namespace(path=OLMO, eod=None, pad=None)).path
    except Exception:
        path = work / "bpe32k.json"
        if not path.exists():
            texts = (json.loads(line)["solution"] for line in documents(np.random.default_rng(1), 20_000))
            save_tokenizer(train_tokenizer(texts, "bpe", 32_000), str(path))
        return str(path)


# -- one measured run, in a fresh process ----------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    """``--child``: preprocess ``--files`` with ``--workers`` processes; print one JSON line of figures."""
    import resource
    import warnings

    warnings.filterwarnings("ignore")  # megatron's CPU import notices
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401  (import not timed)

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
    """Proportional set size of a psutil process: /proc/PID/smaps_rollup (one summed record) where the kernel has
    it, else psutil's full smaps walk, which costs this monitor enough CPU to slow the workers it is watching."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return proc.memory_full_info().pss


def measure(files: list[Path], workers: int, tokenizer: str, out: Path) -> dict:
    """Run the child; its figures plus the peak memory (sum of PSS) of its process tree (MB)."""
    import psutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", "--workers", str(workers), "--tokenizer", tokenizer,
           "--out", str(out), "--files", *map(str, files)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    root, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(pss_bytes(p) for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.5)
    text = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(cmd)}")
    result = json.loads(text.strip().splitlines()[-1])
    result["peak_mb"] = peak / 2**20
    result["digest"] = hashlib.sha256(
        b"".join(p.read_bytes() for p in sorted(out.rglob("shard_*.bin")))
    ).hexdigest()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size-gb", type=float, default=1.0, help="the whole corpus")
    ap.add_argument("--small-gb", type=float, default=0.25, help="the smaller corpus of the RSS comparison")
    ap.add_argument("--file-mb", type=int, default=64, help="size of one input file (= one shard)")
    ap.add_argument(
        "--quick", action="store_true", help="--size-gb 0.015625 --small-gb 0.0078125 --file-mb 4"
    )
    ap.add_argument("--work", type=Path, help="where the corpus is generated and kept (default: a temp dir)")
    ap.add_argument(
        "--tokenizer", help="a tokenizers JSON file (default: OLMo-1's, else a 32k BPE trained here)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--files", nargs="*", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.size_gb, args.small_gb, args.file_mb = 0.015625, 0.0078125, 4
    work = args.work or Path(tempfile.mkdtemp(prefix="echo_bench_"))
    try:
        t0 = time.perf_counter()
        files = make_corpus(work / "corpus", args.size_gb, args.file_mb)
        small = files[: max(1, round(args.small_gb * 1024 / args.file_mb))]
        tok = args.tokenizer or tokenizer_path(work)
        gb = lambda fs: sum(f.stat().st_size for f in fs) / 2**30  # noqa: E731
        print(f"corpus: {gb(files):.2f} GB in {len(files)} files of {args.file_mb} MB (one shard each), "
              f"generated in {time.perf_counter() - t0:.0f}s; tokenizer {Path(tok).name}; cpus {os.cpu_count()}")  # fmt: skip
        load0 = os.getloadavg()
        one = measure(small, 1, tok, work / "out1")
        many = measure(small, args.workers, tok, work / "outN")
        full = measure(files, args.workers, tok, work / "outF")
        load1 = os.getloadavg()
        print(
            f"load average (1/5/15 min) before: {load0[0]:.1f}/{load0[1]:.1f}/{load0[2]:.1f}, "
            f"after: {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} (other processes share the cores)"
        )
        rate1, rateN = one["tokens"] / one["wall"], many["tokens"] / many["wall"]
        print(
            f"single process: {rate1:,.0f} tokens/s ({one['tokens']:,} tokens, {one['docs']:,} docs in "
            f"{one['shards']} shards, {one['wall']:.1f}s, {one['cpu'] / one['wall']:.2f} cores busy); "
            f"{one['tokens'] / one['cpu']:,.0f} tokens per CPU-second"
        )
        print(
            f"{args.workers} workers: {rateN:,.0f} tokens/s ({many['wall']:.1f}s, {many['cpu'] / many['wall']:.2f} "
            f"cores busy), identical shards: {one['digest'] == many['digest']}; whole corpus "
            f"{full['tokens'] / full['wall']:,.0f} tokens/s ({full['tokens']:,} tokens in {full['shards']} shards, "
            f"{full['wall']:.1f}s)"
        )
        print(
            f"peak memory (PSS of main + {args.workers} workers): {gb(small):.2f} GB corpus {many['peak_mb']:,.0f} MB, "
            f"{gb(files):.2f} GB corpus {full['peak_mb']:,.0f} MB (x{full['peak_mb'] / many['peak_mb']:.2f}; "
            f"flat = within 1.25x); 1 worker {one['peak_mb']:,.0f} MB"
        )
        print(
            f"ratio {args.workers} workers/single: {rateN / rate1:.2f}x (target >= 1.8x with 2 workers on 2 cores)"
        )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
