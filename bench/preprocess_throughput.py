"""Preprocess throughput: tokens/s of the parallel path (N worker processes) vs the single-process loop.

Both runs tokenize the same corpus (the shared OpenMathInstruct-2 and TinyGSM samples repeated to ~7M OLMo
tokens, or --input) with the same code (``echo_megatron.data.preprocess.write_source``); only
``num_workers`` differs. Prints one ratio line; the target on 2 cores is >= 1.8x.

    python bench/preprocess_throughput.py [--workers 2] [--repeat 12] [--input FILE.jsonl --type omi2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "tests" / "data" / "sft_samples"  # real samples shipped with the tests (gzip JSONL)


def sample_lines(name: str) -> list[str]:
    """The lines of ``tests/data/sft_samples/<name>.jsonl.gz``."""
    import gzip

    with gzip.open(SAMPLES / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def unpacked_tokenizer(tmp: Path) -> Path:
    """The OLMo-1 tokenizer shipped (gzip) in tests/data, unpacked into ``tmp``."""
    import gzip

    src = REPO / "tests" / "data" / "tokenizers" / "allenai_gpt-neox-olmo-dolma-v1_5.json.gz"
    dst = tmp / "olmo_tokenizer.json"
    with gzip.open(src, "rb") as fin:
        dst.write_bytes(fin.read())
    return dst


def corpus(tmp: Path, repeat: int) -> Path:
    """The two real samples as one testbed-schema JSONL, repeated ``repeat`` times."""
    import json

    rows = []
    for line in sample_lines("openmathinstruct2_sample1000"):
        r = json.loads(line)
        rows.append(json.dumps({"question": r["problem"], "solution": r["generated_solution"]}))
    for line in sample_lines("tinygsm_style_gpt41_sample1000"):
        r = json.loads(line)
        rows.append(json.dumps({"question": r["user"], "solution": r["assistant"]}))
    path = tmp / "corpus.jsonl"
    path.write_text("\n".join(rows * repeat) + "\n")
    return path


def run(path: Path, type_: str, tokenizer, workers: int, out: Path, chunk: int) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process and its workers, tokens) of one preprocess of ``path``."""
    from echo_megatron.data.preprocess import SourcePlan, write_source
    from echo_megatron.data.sources import get_spec

    src = SimpleNamespace(
        path=str(path), max_docs=None, hf_id=None, hf_config=None, split=None, revision=None
    )
    plan = SourcePlan("bench", get_spec("bench", type_), src, str(out / f"w{workers}"))
    cpu0 = _cpu()
    t0 = time.perf_counter()
    m = write_source(plan, tokenizer, num_workers=workers, chunk_docs=chunk, revision="bench")
    return time.perf_counter() - t0, _cpu() - cpu0, m["tokens"]


def _cpu() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--repeat", type=int, default=12, help="copies of the 2,000 sample documents (~7M tokens)"
    )
    ap.add_argument("--chunk", type=int, default=256, help="documents per work item (data.chunk_docs)")
    ap.add_argument("--trials", type=int, default=2, help="alternating single/parallel trials (best of each)")
    ap.add_argument("--input", type=Path, help="a JSONL source instead of the real samples")
    ap.add_argument("--type", default="testbed", help="its source type (registry entry)")
    ap.add_argument(
        "--tokenizer", help="a tokenizers JSON file (default: the OLMo-1 tokenizer in tests/data)"
    )
    args = ap.parse_args()

    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the single-process loop must really use one core
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: F401  (import cost not timed)

    from echo_megatron.data.tokenizer import load_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="echo_bench_"))
    try:
        tok_path = args.tokenizer or str(unpacked_tokenizer(tmp))
        tok = load_tokenizer(SimpleNamespace(path=tok_path, eod=None, pad=None))
        path = args.input or corpus(tmp, args.repeat)
        load0 = os.getloadavg()[0]
        best: dict[int, tuple[float, float, int]] = {}
        for _ in range(args.trials):  # alternate, keep each side's fastest: neighbours' load hits both alike
            for w in (1, args.workers):
                r = run(path, args.type, tok, w, tmp, args.chunk)
                best[w] = min(best.get(w, r), r)
        (s_time, s_cpu, s_tokens), (p_time, p_cpu, p_tokens) = best[1], best[args.workers]
        assert s_tokens == p_tokens
        same = (tmp / "w1.bin").read_bytes() == (tmp / f"w{args.workers}.bin").read_bytes()
        single, parallel = s_tokens / s_time, p_tokens / p_time
        print(
            f"corpus: {s_tokens:,} tokens ({path.name}), tokenizer {Path(args.tokenizer).name}, cpus {os.cpu_count()}"
        )
        print(
            f"load average before/after: {load0:.1f} / {os.getloadavg()[0]:.1f} (other processes share the cores)"
        )
        print(f"single process: {single:,.0f} tokens/s ({s_time:.2f}s, using {s_cpu / s_time:.2f} cores)")
        print(
            f"{args.workers} workers: {parallel:,.0f} tokens/s ({p_time:.2f}s, using {p_cpu / p_time:.2f} cores), "
            f"identical output: {same}"
        )
        print(
            f"ratio parallel/single: {parallel / single:.2f}x (target >= 1.8x on 2 cores; best of {args.trials} "
            f"alternating trials)"
        )
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
