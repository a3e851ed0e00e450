"""Preprocess: each source of a recipe -> its files -> shards of documents -> token ids -> megatron indexed shards.

For every source (``--only`` picks some) the main process resolves its files (echo_megatron/data/inputs.py),
plans its shards and writes ``plan.json`` (echo_megatron/data/shards.py); every check that can fail on a
source (unknown type, conflicting keys, missing files, an unreachable hub, a source without one usable document)
fails before any tokenizing. The shards are dealt round-robin over ``--num-shards N`` tasks (task
``--shard-index I`` does shards I, I+N, ...; all sources in one sequence, so small sources spread too), the
task's shards that are not complete already are built by ``data.num_workers`` worker processes (one whole shard
each: read -> filter -> document -> tokenize -> ``.bin/.idx``; memory stays at one batch of rows plus the
shard's index), and each finished source is merged into ``manifest.json``. Shards are written whole or not
at all, so a rerun (or a requeued job) redoes only what is missing or stale and the output does not depend on
the number of workers or tasks.

The prompt and the solution are tokenized apart and concatenated, exactly as a model sees them at RL/eval time
(prompt tokens, then generated solution tokens). Workers die with the main process (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from echo_megatron.data import shards as sh
from echo_megatron.data.inputs import SourceInputs, resolve_inputs
from echo_megatron.data.progress import Progress, SourceCounts
from echo_megatron.data.records import BadRecord, DataError, Record, count_rows, iter_rows, parse_json_line
from echo_megatron.data.sources import PROMPT_SEP, Selection, SourceSpec, make_document, needed_fields, select
from echo_megatron.data.tokenizer import Tokenizer, load_tokenizer
from echo_megatron.rewards.formats import FORMATS

MAX_BAD_EXAMPLES = 5
PROGRESS_EVERY_S = 1.0  # how often a worker reports its counts


@dataclass
class SourcePlan:
    """One ``data.sources`` entry: its config, what it selects and where its shards go."""

    name: str
    cfg: Any  # SourceConfig
    selection: Selection
    directory: str  # <indexed_dir>/<name>
    _inputs: SourceInputs | None = None

    @property
    def spec(self) -> SourceSpec:
        """The effective spec (the recipe's field overrides and filters applied)."""
        return self.selection.spec

    def inputs(self) -> SourceInputs:
        if self._inputs is None:
            self._inputs = resolve_inputs(self.name, self.cfg, self.selection)
        return self._inputs

    def records(self) -> Iterator[Record]:
        """Every record of the source, in order (``echo-megatron tokenizer train`` reads these)."""
        for f in self.inputs().files:
            yield from iter_rows(f.local(), columns=needed_fields(self.spec))


def plan_sources(cfg: Any, only: list[str] | None = None) -> list[SourcePlan]:
    """One plan per ``data.sources`` entry (``only``: those named); unknown types and bad keys fail here."""
    data = cfg.data
    if not data.sources:
        raise DataError("data.sources is empty: a recipe must name at least one source")
    if data.on_bad_record not in ("error", "skip"):
        raise DataError(f"data.on_bad_record: '{data.on_bad_record}' is not one of error, skip")
    if data.shard_docs < 1:
        raise DataError("data.shard_docs must be >= 1")
    unknown = sorted(set(only or ()) - set(data.sources))
    if unknown:
        raise DataError(
            f"--only: {', '.join(unknown)} not in data.sources (known: {', '.join(data.sources)})"
        )
    plans = []
    for name, src in data.sources.items():
        if only and name not in only:
            continue
        if src.max_docs is not None and src.max_docs < 1:
            raise DataError(f"data.sources.{name}.max_docs must be >= 1")
        plans.append(SourcePlan(name, src, select(name, src), sh.source_dir(data.indexed_dir, name)))
    return plans


def token_dtype(vocab_size: int) -> type:
    """The .bin token dtype megatron picks for a vocabulary (uint16 below 65,500 ids, else int32)."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def workers_of(num_workers: int) -> int:
    """``data.num_workers``: -1 = one per CPU this process may use (a Slurm task's --cpus-per-task)."""
    return len(os.sched_getaffinity(0)) if num_workers < 0 else num_workers


# -- documents and tokens (run in the workers, or inline) ------------------------------------------------------
def documents_of_chunk(items: list[Record], spec: SourceSpec, source: str, on_bad: str):
    """(documents, filtered count, bad-record messages) of one chunk of records."""
    docs, filtered, bad = [], 0, []
    for where, payload in items:
        try:
            if isinstance(payload, BadRecord):
                raise DataError(payload.message)
            row = parse_json_line(payload, where) if isinstance(payload, str) else payload
            doc = make_document(spec, row, source, where)
        except DataError as e:
            if on_bad != "skip":
                raise
            bad.append(str(e))
            continue
        if doc is None:
            filtered += 1
        else:
            docs.append(doc)
    return docs, filtered, bad


def tokenize_documents(tok: Tokenizer, docs: list, dtype: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat ids, per-document lengths, per-document prompt lengths): ``prompt + solution + [eod]`` each."""
    prompts = tok.encode_batch([d.prompt for d in docs])
    solutions = tok.encode_batch([d.solution for d in docs])
    flat: list[int] = []
    for p, s in zip(prompts, solutions):
        flat += p
        flat += s
        flat.append(tok.eod)
    lengths = np.array([len(p) + len(s) + 1 for p, s in zip(prompts, solutions)], dtype=np.int64)
    return np.array(flat, dtype=dtype), lengths, np.array([len(p) for p in prompts], dtype=np.int32)


def append_documents(builder: Any, ids: np.ndarray, lengths: np.ndarray) -> None:
    """Append documents (one sequence each) to a megatron ``IndexedDatasetBuilder`` in one write: the same
    ``.bin``/``.idx`` as ``add_document(doc, [len(doc)])`` per document, without a Python call per document."""
    builder.data_file.write(ids.astype(builder.dtype, copy=False).tobytes(order="C"))
    start = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(int(n) for n in lengths)
    builder.document_indices.extend(range(start + 1, start + len(lengths) + 1))


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to build one shard (the tokenizer is the worker's own)."""

    shard: sh.Shard
    spec: SourceSpec
    directory: str
    on_bad: str
    max_docs: int | None
    chunk_docs: int
    dtype: str


def _chunks_of(job: ShardJob) -> Iterator[list[Record]]:
    columns = needed_fields(job.spec)
    chunk: list[Record] = []
    for f in job.shard.files:
        for record in iter_rows(f.local(), job.shard.start, job.shard.stop, columns, job.on_bad):
            chunk.append(record)
            if len(chunk) == job.chunk_docs:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def build_shard(job: ShardJob, tok: Tokenizer, report: Callable[[str, int, int], None]) -> dict[str, Any]:
    """Write one shard (``.bin/.idx/.prompt_len.npy`` under private names, renamed, then its record); the record.
    ``report(source, docs, tokens)`` is called about once a second."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    t0 = time.perf_counter()
    shard, source = job.shard, job.shard.source
    prefix = sh.shard_prefix(job.directory, shard.name)
    tmp = {ext: sh.tmp_name(prefix + ext) for ext in sh.SHARD_FILES}
    dtype = np.dtype(job.dtype).type  # megatron wants the scalar type (np.uint16), not a dtype
    builder = IndexedDatasetBuilder(tmp[".bin"], dtype=dtype)
    docs = tokens = prompt_tokens = filtered = records = 0
    unreported = [0, 0, time.monotonic()]
    formats: Counter = Counter()
    bad: list[str] = []
    prompt_lens: list[np.ndarray] = []
    try:
        for chunk in _chunks_of(job):
            records += len(chunk)
            found, n_filtered, n_bad = documents_of_chunk(chunk, job.spec, source, job.on_bad)
            filtered += n_filtered
            bad += n_bad
            if job.max_docs is not None:
                found = found[: job.max_docs - docs]
            if found:
                ids, lengths, plens = tokenize_documents(tok, found, dtype)
                append_documents(builder, ids, lengths)
                prompt_lens.append(plens)
                formats.update(d.format for d in found)
                docs, tokens, prompt_tokens = (
                    docs + len(found),
                    tokens + int(lengths.sum()),
                    prompt_tokens + int(plens.sum()),
                )
                unreported[0] += len(found)
                unreported[1] += int(lengths.sum())
            if time.monotonic() - unreported[2] >= PROGRESS_EVERY_S:
                report(source, unreported[0], unreported[1])
                unreported[:] = [0, 0, time.monotonic()]
            if job.max_docs is not None and docs >= job.max_docs:
                break
        builder.finalize(tmp[".idx"])
        with open(tmp[".prompt_len.npy"], "wb") as f:
            np.save(f, np.concatenate(prompt_lens) if prompt_lens else np.zeros(0, np.int32))
        report(source, unreported[0], unreported[1])
        for ext, path in tmp.items():
            os.replace(path, prefix + ext)
    except BaseException:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        raise
    seconds = time.perf_counter() - t0
    record = {
        "version": sh.VERSION,
        "source": source,
        "name": shard.name,
        "key": shard.key,
        "files": [f.path for f in shard.files],
        "rows": [shard.start, shard.stop],
        "input_bytes": shard.weight,
        "docs": docs,
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "records_read": records,
        "filtered_out": filtered,
        "bad_records": {"count": len(bad), "examples": bad[:MAX_BAD_EXAMPLES]},
        "format_counts": {k: formats[k] for k in FORMATS if formats[k]},
        "bin_bytes": os.path.getsize(prefix + ".bin"),
        "seconds": round(seconds, 3),
        "host": socket.gethostname(),
    }
    sh.write_json_atomic(prefix + ".json", record)  # last: a shard with a record is complete
    return record


# -- the worker processes --------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the main process dies (a killed job leaves no orphans writing shards)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _init_worker(tokenizer: Tokenizer | None, progress: Any, parent: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core; parallelism is across processes
    _die_with_parent()
    if os.getppid() != parent:
        os._exit(1)
    if tokenizer is not None:  # spawn: the tokenizer comes pickled (fork inherits _WORKER)
        _WORKER["tokenizer"] = tokenizer
    _WORKER["progress"] = progress


def _report_to_queue(source: str, docs: int, tokens: int) -> None:
    if docs or tokens:
        _WORKER["progress"].put((source, docs, tokens))


def _run_job(job: ShardJob) -> dict[str, Any]:
    return build_shard(job, _WORKER["tokenizer"], _report_to_queue)


def run_jobs(
    jobs: list[ShardJob], tok: Tokenizer, num_workers: int, progress: Progress
) -> list[dict[str, Any]]:
    """Build ``jobs`` in ``num_workers`` processes (inline when <= 1); records in completion order."""
    done: list[dict[str, Any]] = []

    def finished(job: ShardJob, rec: dict[str, Any]) -> None:
        progress.shard_done(job.shard.source, job.shard.weight, rec["tokens"])
        done.append(rec)

    if num_workers <= 1 or len(jobs) <= 1:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        for job in jobs:
            rec = build_shard(job, tok, lambda s, d, t: (progress.add(s, d, t), progress.tick()))
            finished(job, rec)
        return done
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    counts = ctx.Queue()
    if method == "fork":  # forked workers inherit the tokenizer: no 2 MB JSON to unpickle in each
        _WORKER["tokenizer"] = tok
    init = (None if method == "fork" else tok, counts, os.getpid())
    pool = ctx.Pool(min(num_workers, len(jobs)), initializer=_init_worker, initargs=init)
    try:
        pending = {pool.apply_async(_run_job, (job,)): job for job in jobs}
        while pending:
            try:
                progress.add(*counts.get(timeout=0.2))
                while True:
                    progress.add(*counts.get_nowait())
            except queue.Empty:
                pass
            for res in [r for r in pending if r.ready()]:
                finished(pending.pop(res), res.get())
            progress.tick()
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    try:  # counts the workers sent after their last poll
        while True:
            progress.add(*counts.get_nowait())
    except queue.Empty:
        pass
    return done


# -- the main side -------------------------------------------------------------------------------------------
def shard_common(plan: SourcePlan, tok: Tokenizer, on_bad: str) -> dict[str, Any]:
    """What every shard of ``plan`` depends on besides its inputs (part of each shard key)."""
    return {
        "version": sh.VERSION,
        "selection": plan.selection.identity(),
        "max_docs": plan.cfg.max_docs,
        "on_bad_record": on_bad,
        "tokenizer": tok.hash,
        "eod": tok.eod,
        "prompt_sep": PROMPT_SEP,
    }


def plan_document(plan: SourcePlan, tok: Tokenizer, shards: list[sh.Shard]) -> dict[str, Any]:
    """``plan.json``: the source's identity and its shards."""
    inputs = plan.inputs()
    return {
        "version": sh.VERSION,
        "source": plan.name,
        "type": plan.spec.name,
        "format": plan.spec.format,
        "selection": plan.selection.identity(),
        "input": inputs.root,
        "source_revision": inputs.revision,
        "max_docs": plan.cfg.max_docs,
        "tokenizer": {"path": tok.path, "hash": tok.hash, "vocab_size": tok.vocab_size},
        "eod": tok.eod,
        "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
        "shards": [s.describe() for s in shards],
    }


def preflight(plan: SourcePlan, on_bad_record: str, shards: list[sh.Shard] | None = None) -> None:
    """Fail now unless the source has one usable document (a bad record fails here too unless skipped); the
    shards are scanned in order (``shards``: these first), stopping at the first document."""
    columns = needed_fields(plan.spec)
    seen = 0
    groups = (
        [(s.files, s.start, s.stop) for s in shards]
        if shards
        else [((f,), 0, None) for f in plan.inputs().files]
    )
    for files, start, stop in groups:
        for f in files:
            for record in iter_rows(f.local(), start, stop, columns, on_bad_record):
                seen += 1
                docs, _, _ = documents_of_chunk([record], plan.spec, plan.name, on_bad_record)
                if docs:
                    return
    raise DataError(
        f"data.sources.{plan.name}: source is empty ({plan.inputs().root}: {seen} records, no usable document)"
    )


def shards_of(plan: SourcePlan, tok: Tokenizer, data: Any) -> list[sh.Shard]:
    """The source's shards (its files resolve, and a single file is counted, here)."""
    rows_of = lambda f: sh.cached_row_count(plan.directory, f, count_rows)  # noqa: E731
    common = shard_common(plan, tok, data.on_bad_record)
    capped = plan.cfg.max_docs is not None
    return sh.plan_shards(plan.name, plan.inputs().files, common, data.shard_docs, capped, rows_of)


Planned = list[tuple[SourcePlan, list[sh.Shard]]]


def progress_counts(planned: Planned, redo: set[tuple[str, int]]) -> dict[str, SourceCounts]:
    """Per source: shards and input bytes, in all and already complete (not counting those to redo)."""
    counts = {}
    for plan, shards in planned:
        done = [
            s
            for s in shards
            if (plan.name, s.index) not in redo and sh.is_complete(plan.directory, s.describe())
        ]
        counts[plan.name] = SourceCounts(
            len(shards), len(done), sum(s.weight for s in shards), sum(s.weight for s in done)
        )
    return counts


def merge_all(
    planned: Planned, built: Counter, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Merge every complete source: (manifests, names of the sources that still miss shards)."""
    manifests, waiting = [], []
    for plan, shards in planned:
        try:
            m = sh.merge(plan.directory)
        except sh.IncompleteSource:
            waiting.append(plan.name)
            missing = len(sh.missing_shards(plan.directory))
            log(f"{plan.name}: {missing} of {len(shards)} shards still to come from other tasks")
            continue
        manifests.append(m)
        bad = f", {m['bad_records']['count']} bad records skipped" if m["bad_records"]["count"] else ""
        state = f"{built[plan.name]} shards built" if built[plan.name] else "up to date"
        log(
            f"{plan.name}: {state}; {m['docs']:,} docs, {m['tokens']:,} tokens in {m['num_shards']} shards{bad} "
            f"-> {plan.directory}"
        )
    return manifests, waiting


def preprocess(
    cfg: Any,
    force: bool = False,
    only: list[str] | None = None,
    shard_index: int = 0,
    num_shards: int = 1,
    log: Callable[[str], None] = print,
    progress_out: Any = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Preprocess the sources of ``cfg`` (``only`` those; as task ``shard_index`` of ``num_shards``):
    (manifests of the sources that are complete, names of those still waiting for other tasks' shards)."""
    if not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index {shard_index} is not in [0, --num-shards {num_shards})")
    data = cfg.data
    plans = plan_sources(cfg, only)  # unknown sources and bad keys fail first
    tok = load_tokenizer(data.tokenizer)
    planned = [(plan, shards_of(plan, tok, data)) for plan in plans]  # then every source's files resolve
    everything = [(plan, s) for plan, shards in planned for s in shards]
    # this task's shards: round-robin over the shards of all sources, so small sources spread too
    mine = [x for i, x in enumerate(everything) if i % num_shards == shard_index]
    todo = [(p, s) for p, s in mine if force or not sh.is_complete(p.directory, s.describe())]
    for plan, shards in planned:  # a source with nothing usable fails before any tokenizing
        pending = [s for p, s in todo if p is plan]
        if pending:
            preflight(plan, data.on_bad_record, pending + [s for s in shards if s not in pending])
    for plan, shards in planned:
        sh.write_plan(plan.directory, plan_document(plan, tok, shards))
    if todo:
        workers = workers_of(data.num_workers)
        log(
            f"preprocess: {len(todo)} shards to build of {len(everything)} (task {shard_index} of {num_shards}), "
            f"{min(workers, len(todo))} worker processes"
        )
        dtype = np.dtype(token_dtype(tok.vocab_size)).name
        jobs = [
            ShardJob(s, p.spec, p.directory, data.on_bad_record, p.cfg.max_docs, data.chunk_docs, dtype)
            for p, s in todo
        ]
        progress = Progress(
            progress_counts(planned, {(p.name, s.index) for p, s in todo}),
            data.progress_interval,
            progress_out,
        )
        try:
            run_jobs(jobs, tok, workers, progress)
        finally:
            progress.close()
    manifests, waiting = merge_all(planned, Counter(p.name for p, _ in todo), log)
    if waiting and num_shards == 1:
        raise DataError(f"sources still incomplete after a full run: {', '.join(waiting)}")
    return manifests, waiting


def merge_only(
    cfg: Any, only: list[str] | None = None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Merge every source's shard records into its manifest; IncompleteSource names the missing shards."""
    out = []
    for plan in plan_sources(cfg, only):
        m = sh.merge(plan.directory)
        log(
            f"{plan.name}: {m['docs']:,} docs, {m['tokens']:,} tokens in {m['num_shards']} shards -> {plan.directory}"
        )
        out.append(m)
    return out
