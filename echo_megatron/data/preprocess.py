"""Preprocess: each source of a recipe -> documents -> token ids -> a megatron indexed dataset + sidecars.

Per source ``S`` it writes, under ``data.indexed_dir``:

    S.bin / S.idx          megatron ``IndexedDataset``: one sequence per document, ``prompt + solution + [eod]``
    S.prompt_len.npy       int32, per document: tokens of ``question + "\\n\\n"`` (0 for plain text)
    S.manifest.json        docs, tokens, format counts, tokenizer hash, source revision, fingerprint, timing

The prompt and the solution are tokenized apart and concatenated, exactly as a model sees them at RL/eval time
(prompt tokens, then generated solution tokens). Workers (``data.num_workers`` processes) parse, filter,
format and tokenize chunks of raw records; the main process reads and writes in order, so the output does not
depend on the number of workers. Idempotent: a source whose fingerprint (inputs, spec, tokenizer, options) is
unchanged is skipped; a changed tokenizer or input rebuilds it. Every source is checked (known type, inputs
present, at least one usable document) before any source is tokenized.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from echo_megatron.data.records import (
    DataError,
    Record,
    fingerprint_local,
    iter_hub,
    iter_local,
    parse_json_line,
)
from echo_megatron.data.sources import PROMPT_SEP, SourceSpec, get_spec, make_document, source_fields
from echo_megatron.data.tokenizer import Tokenizer, load_tokenizer
from echo_megatron.rewards.formats import FORMATS

VERSION = 1  # bump when the document or file layout changes (forces a rebuild)
MAX_BAD_EXAMPLES = 5


class SourceUnavailable(DataError):
    """A hub source that cannot be opened here (no network, unknown id): skipped unless ``strict``."""


@dataclass
class SourcePlan:
    name: str
    spec: SourceSpec
    cfg: Any  # SourceConfig
    prefix: str

    @property
    def local(self) -> bool:
        return bool(self.cfg.path)

    def hub_args(self) -> tuple[str, str | None, str, str | None, str | None]:
        hf_id = self.cfg.hf_id or self.spec.hf_id
        if not hf_id:
            hint = " (write it with `echo-megatron testbed`)" if self.spec.name == "testbed" else ""
            raise DataError(
                f"data.sources.{self.name}: no path and no hub id: set data.sources.{self.name}.path{hint}"
            )
        config = self.cfg.hf_config or (self.spec.hf_config if not self.cfg.hf_id else None)
        data_files = self.spec.data_files if not self.cfg.hf_id else None
        return hf_id, config, self.cfg.split or self.spec.split, self.cfg.revision, data_files

    def describe(self) -> str:
        if self.local:
            return os.path.abspath(self.cfg.path)
        hf_id, config, split, revision, _ = self.hub_args()
        return f"hf:{hf_id}" + (f"/{config}" if config else "") + f":{split}@{revision or 'main'}"

    def records(self) -> Iterator[Record]:
        if self.local:
            return iter_local(self.cfg.path, self.name)
        hf_id, config, split, revision, data_files = self.hub_args()
        try:
            return iter_hub(hf_id, config, split, revision, data_files)
        except Exception as e:  # no network, unknown dataset, ...
            raise SourceUnavailable(
                f"data.sources.{self.name}: cannot load hub dataset {self.describe()} ({type(e).__name__}: {e}); "
                f"set data.sources.{self.name}.path to a local jsonl/json/parquet copy"
            ) from e

    def revision(self) -> str:
        return fingerprint_local(self.cfg.path, self.name) if self.local else self.describe()


def source_prefix(indexed_dir: str, name: str) -> str:
    return os.path.join(indexed_dir, name)


def manifest_path(prefix: str) -> str:
    return prefix + ".manifest.json"


def prompt_len_path(prefix: str) -> str:
    return prefix + ".prompt_len.npy"


def read_manifest(prefix: str) -> dict | None:
    path = manifest_path(prefix)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def plan_sources(cfg: Any) -> list[SourcePlan]:
    """One plan per ``data.sources`` entry; unknown types and bad options fail here, before any work."""
    data = cfg.data
    if not data.sources:
        raise DataError("data.sources is empty: a recipe must name at least one source")
    if data.on_bad_record not in ("error", "skip"):
        raise DataError(f"data.on_bad_record: '{data.on_bad_record}' is not one of error, skip")
    plans = []
    for name, src in data.sources.items():
        spec = get_spec(name, src.type)
        if src.max_docs is not None and src.max_docs < 1:
            raise DataError(f"data.sources.{name}.max_docs must be >= 1")
        plan = SourcePlan(name, spec, src, source_prefix(data.indexed_dir, name))
        if not plan.local:
            plan.hub_args()  # a source with neither path nor hub id fails now
        plans.append(plan)
    return plans


# -- the worker side ------------------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer: Tokenizer, source: str, type_: str, on_bad_record: str, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core; parallelism is across processes
    spec = get_spec(source, type_)
    _WORKER.update(tokenizer=tokenizer, source=source, spec=spec, on_bad=on_bad_record, dtype=np.dtype(dtype))


def _single_threaded() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core; parallelism is across processes


def token_dtype(vocab_size: int) -> type:
    """The .bin token dtype megatron picks for a vocabulary (uint16 below 65,500 ids, else int32)."""
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


def documents_of_chunk(items: list[Record], spec: SourceSpec, source: str, on_bad: str):
    """(documents, filtered count, bad records) of one chunk of raw records."""
    docs, filtered, bad = [], 0, []
    for where, payload in items:
        try:
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


def tokenize_chunk(items: list[Record]) -> dict[str, Any]:
    """Parse, filter, format and tokenize one chunk (runs in a worker process, or inline)."""
    tok: Tokenizer = _WORKER["tokenizer"]
    docs, filtered, bad = documents_of_chunk(items, _WORKER["spec"], _WORKER["source"], _WORKER["on_bad"])
    prompts = tok.encode_batch([d.prompt for d in docs])
    solutions = tok.encode_batch([d.solution for d in docs])
    flat: list[int] = []
    for p, s in zip(prompts, solutions):
        flat += p
        flat += s
        flat.append(tok.eod)
    return {
        "ids": np.array(flat, dtype=_WORKER["dtype"]),
        "lengths": np.array([len(p) + len(s) + 1 for p, s in zip(prompts, solutions)], dtype=np.int64),
        "prompt_lens": np.array([len(p) for p in prompts], dtype=np.int32),
        "formats": np.array([FORMATS.index(d.format) for d in docs], dtype=np.int8),
        "filtered": filtered,
        "bad": bad,
        "n_items": len(items),
    }


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(islice(records, size)):
        yield chunk


# -- the main side --------------------------------------------------------------------------------------------
def preflight(plan: SourcePlan, on_bad_record: str) -> None:
    """Fail now if a source has no usable document (bad records raise here too unless skipped); a hub source
    that cannot be opened raises :class:`SourceUnavailable`."""
    seen = 0
    records = plan.records()
    if not plan.local:
        try:
            first = next(records, None)
        except Exception as e:  # the stream opens lazily: network and dataset errors surface here
            raise SourceUnavailable(
                f"data.sources.{plan.name}: cannot read hub dataset {plan.describe()} ({type(e).__name__}: {e}); "
                f"set data.sources.{plan.name}.path to a local jsonl/json/parquet copy"
            ) from e
        records = iter([first] if first is not None else [])
    for where, payload in records:
        seen += 1
        docs, _, _ = documents_of_chunk([(where, payload)], plan.spec, plan.name, on_bad_record)
        if docs:
            return
    raise DataError(
        f"data.sources.{plan.name}: source is empty ({plan.cfg.path}: {seen} records, no usable document)"
    )


def fingerprint(plan: SourcePlan, tokenizer: Tokenizer, on_bad_record: str, revision: str) -> str:
    key = {
        "version": VERSION,
        "spec": source_fields(plan.spec),
        "input": plan.describe(),
        "revision": revision,
        "max_docs": plan.cfg.max_docs,
        "on_bad_record": on_bad_record,
        "tokenizer": tokenizer.hash,
        "eod": tokenizer.eod,
        "prompt_sep": PROMPT_SEP,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def is_up_to_date(prefix: str, fp: str) -> bool:
    m = read_manifest(prefix)
    files = [prefix + ".bin", prefix + ".idx", prompt_len_path(prefix)]
    return m is not None and m.get("fingerprint") == fp and all(os.path.isfile(f) for f in files)


def tokenize_source(
    plan: SourcePlan, tokenizer: Tokenizer, num_workers: int, chunk_docs: int, on_bad_record: str
) -> Iterator[dict[str, Any]]:
    """Tokenized chunks of one source, in input order; in ``num_workers`` processes when > 1."""
    chunks = _chunks(plan.records(), chunk_docs)
    init_args = (
        tokenizer,
        plan.name,
        plan.spec.name,
        on_bad_record,
        np.dtype(token_dtype(tokenizer.vocab_size)).name,
    )
    if num_workers <= 1:
        _init_worker(*init_args)
        yield from map(tokenize_chunk, chunks)
        return
    if "fork" in mp.get_all_start_methods():
        # forked workers inherit the parent's state: no tokenizer JSON (2 MB for OLMo) to unpickle in each
        _WORKER.update(tokenizer=tokenizer, source=plan.name, spec=plan.spec, on_bad=on_bad_record)
        _WORKER["dtype"] = np.dtype(init_args[-1])
        pool = mp.get_context("fork").Pool(num_workers, initializer=_single_threaded)
    else:
        pool = mp.get_context("spawn").Pool(num_workers, initializer=_init_worker, initargs=init_args)
    with pool:
        yield from pool.imap(tokenize_chunk, chunks, chunksize=1)


def append_documents(builder: Any, ids: np.ndarray, lengths: np.ndarray) -> None:
    """Append documents (one sequence each) to a megatron ``IndexedDatasetBuilder`` in one write: the same
    ``.bin``/``.idx`` as ``add_document(doc, [len(doc)])`` per document, without a Python call per document."""
    builder.data_file.write(ids.astype(builder.dtype, copy=False).tobytes(order="C"))
    start = len(builder.sequence_lengths)
    builder.sequence_lengths.extend(int(n) for n in lengths)
    builder.document_indices.extend(range(start + 1, start + len(lengths) + 1))


def write_source(
    plan: SourcePlan,
    tokenizer: Tokenizer,
    num_workers: int = 2,
    chunk_docs: int = 512,
    on_bad_record: str = "error",
    revision: str | None = None,
) -> dict[str, Any]:
    """Tokenize one source into ``plan.prefix`` (.bin/.idx/.prompt_len.npy/.manifest.json); its manifest."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    t0 = time.perf_counter()
    revision = revision or plan.revision()
    os.makedirs(os.path.dirname(os.path.abspath(plan.prefix)), exist_ok=True)
    tmp = plan.prefix + ".tmp"
    dtype = token_dtype(tokenizer.vocab_size)
    builder = IndexedDatasetBuilder(tmp + ".bin", dtype=dtype)
    limit = plan.cfg.max_docs
    docs = tokens = prompt_tokens = filtered = n_bad = records = 0
    formats: Counter = Counter()
    bad_examples: list[str] = []
    prompt_lens: list[np.ndarray] = []
    try:
        for chunk in tokenize_source(plan, tokenizer, num_workers, chunk_docs, on_bad_record):
            n = len(chunk["lengths"]) if limit is None else min(len(chunk["lengths"]), limit - docs)
            lengths = chunk["lengths"][:n]
            append_documents(builder, chunk["ids"][: int(lengths.sum())], lengths)
            prompt_lens.append(chunk["prompt_lens"][:n])
            docs, tokens = docs + n, tokens + int(lengths.sum())
            prompt_tokens += int(chunk["prompt_lens"][:n].sum())
            records += chunk["n_items"]
            filtered += chunk["filtered"]
            n_bad += len(chunk["bad"])
            bad_examples += chunk["bad"][: MAX_BAD_EXAMPLES - len(bad_examples)]
            formats.update(FORMATS[i] for i in chunk["formats"][:n])
            if limit is not None and docs >= limit:
                break
        builder.finalize(tmp + ".idx")
    except BaseException:
        for suffix in (".bin", ".idx"):
            if os.path.exists(tmp + suffix):
                os.remove(tmp + suffix)
        raise
    if docs == 0:
        for suffix in (".bin", ".idx"):
            os.remove(tmp + suffix)
        raise DataError(
            f"data.sources.{plan.name}: source is empty ({plan.describe()}: {records} records, "
            f"{filtered} filtered out, {n_bad} bad)"
        )
    np.save(tmp + ".prompt_len.npy", np.concatenate(prompt_lens).astype(np.int32))
    os.replace(tmp + ".bin", plan.prefix + ".bin")
    os.replace(tmp + ".idx", plan.prefix + ".idx")
    os.replace(tmp + ".prompt_len.npy", prompt_len_path(plan.prefix))
    seconds = time.perf_counter() - t0
    manifest = {
        "version": VERSION,
        "source": plan.name,
        "type": plan.spec.name,
        "prefix": os.path.basename(plan.prefix),
        "docs": docs,
        "tokens": tokens,
        "prompt_tokens": prompt_tokens,
        "format_counts": dict(sorted(formats.items())),
        "format": plan.spec.format,
        "records_read": records,
        "filtered_out": filtered,
        "bad_records": {"count": n_bad, "examples": bad_examples},
        "tokenizer": {"path": tokenizer.path, "hash": tokenizer.hash, "vocab_size": tokenizer.vocab_size},
        "eod": tokenizer.eod,
        "dtype": np.dtype(dtype).name,
        "input": plan.describe(),
        "source_revision": revision,
        "max_docs": limit,
        "fingerprint": fingerprint(plan, tokenizer, on_bad_record, revision),
        "num_workers": num_workers,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None,
    }
    with open(manifest_path(plan.prefix) + ".tmp", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    os.replace(manifest_path(plan.prefix) + ".tmp", manifest_path(plan.prefix))
    return manifest


def preprocess(
    cfg: Any, force: bool = False, strict: bool = False, log: Callable[[str], None] = print
) -> tuple[list[dict[str, Any]], list[str]]:
    """Preprocess every source of ``cfg`` (all checked first): (manifests in recipe order, skipped sources).

    A hub source that cannot be opened here is skipped with a message (an error when ``strict``); the mixture
    and ``resolve_blend`` refuse a recipe whose sources are not all preprocessed, so nothing trains on less.
    """
    plans = plan_sources(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    on_bad = cfg.data.on_bad_record
    ready, skipped = [], []
    for plan in plans:
        try:
            preflight(plan, on_bad)
            ready.append(plan)
        except SourceUnavailable as e:
            if strict:
                raise
            log(f"{plan.name}: skipped: {e}")
            skipped.append(plan.name)
    manifests = []
    for plan in ready:
        revision = plan.revision()
        fp = fingerprint(plan, tokenizer, on_bad, revision)
        if not force and is_up_to_date(plan.prefix, fp):
            log(f"{plan.name}: up to date ({plan.prefix}.bin)")
            manifests.append(read_manifest(plan.prefix))
            continue
        m = write_source(plan, tokenizer, cfg.data.num_workers, cfg.data.chunk_docs, on_bad, revision)
        bad = f", {m['bad_records']['count']} bad records skipped" if m["bad_records"]["count"] else ""
        log(
            f"{plan.name}: {m['docs']:,} docs, {m['tokens']:,} tokens in {m['seconds']:.2f}s "
            f"({m['tokens_per_s']:,.0f} tokens/s, {cfg.data.num_workers} workers){bad} -> {plan.prefix}.bin"
        )
        manifests.append(m)
    return manifests, skipped
