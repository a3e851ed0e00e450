"""Shards: the on-disk layout of a preprocessed source, its plan, and the merge that makes it one dataset.

Per source ``S`` under ``data.indexed_dir``::

    S/plan.json                   the shards this source must have: name, key, input files and row range
    S/shard_NNNNN.bin / .idx      megatron ``IndexedDataset``: one sequence per document, ``prompt + solution + [eod]``
    S/shard_NNNNN.prompt_len.npy  int32 per document: tokens of ``question + "\\n\\n"`` (0 for plain text)
    S/shard_NNNNN.json            the shard's record: its key, docs, tokens, format counts, ... (written last)
    S/manifest.json               the merge of plan + records: totals, per-shard counts, inputs, tokenizer
    S/rows.json                   row counts of single-file sources (cached: counting a big JSONL reads it)

A shard is one input file, or ``data.shard_docs`` rows of a source's single file, or - for a source capped
by ``max_docs`` - the first ``max_docs`` documents of all its files. Its *key* hashes everything its bytes
depend on (the input files' identities and row range, the selection, the tokenizer, the options), so a rerun
redoes exactly the shards whose key changed or whose files are missing. Every file is written under a name
private to its writer (``.tmp-<host>-<pid>``) and renamed into place; the record is renamed last, so a shard
with a record is complete, and a ``kill -9`` loses only the shards in flight. Each shard is written by one
process, so several processes (``--shard-index I --num-shards N``, on several nodes) never write the same file;
:func:`merge` reads the plan and the records, refuses an incomplete source naming its missing shards, and
writes ``manifest.json`` (only when its content changes).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from echo_megatron.data.inputs import InputFile
from echo_megatron.data.records import DataError

VERSION = 2  # bump when the document or file layout changes (forces a rebuild)
PLAN, MANIFEST, ROWS = "plan.json", "manifest.json", "rows.json"
SHARD_FILES = (".bin", ".idx", ".prompt_len.npy")
_SHARD = re.compile(r"^shard_\d{5,}$")


class IncompleteSource(DataError):
    """A source whose planned shards are not all written yet (another task, or a rerun, must finish them)."""


@dataclass(frozen=True)
class Shard:
    source: str
    index: int
    files: tuple[InputFile, ...]  # read in order
    start: int  # first row (a piece of a single file); 0 otherwise
    stop: int | None  # end row; None = to the end
    key: str

    @property
    def name(self) -> str:
        return f"shard_{self.index:05d}"

    @property
    def weight(self) -> int:
        """Input bytes this shard stands for (progress and ETA)."""
        return sum(f.size for f in self.files)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "files": [f.path for f in self.files],
            "rows": [self.start, self.stop],
            "bytes": self.weight,
            "inputs": [f.identity for f in self.files],  # size + mtime + sample hash, or repo + commit + path
        }


def source_dir(indexed_dir: str, name: str) -> str:
    return os.path.join(indexed_dir, name)


def shard_prefix(directory: str, name: str) -> str:
    return os.path.join(directory, name)


def source_of_prefix(prefix: str) -> str:
    """The source a megatron prefix belongs to: ``.../S/shard_00003`` -> ``S`` (any other prefix: its basename)."""
    base = os.path.basename(prefix)
    return os.path.basename(os.path.dirname(prefix)) if _SHARD.match(base) else base


def tmp_name(path: str) -> str:
    """A name only this process writes (several hosts share the folder)."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_dead_tmp(directory: str) -> None:
    """Remove this host's temporary files whose writer is gone (a killed run); other hosts' are left alone."""
    host = socket.gethostname()
    for path in glob.glob(os.path.join(directory, f"*.tmp-{host}-*")):
        pid = path.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass


def write_json_atomic(path: str, obj: Any) -> None:
    tmp = tmp_name(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DataError(
            f"{path}: unreadable ({type(e).__name__}: {e}); delete it and rerun preprocess"
        ) from e


def key_of(common: dict[str, Any], files: tuple[InputFile, ...], start: int, stop: int | None) -> str:
    """The shard key: sha256 of what its output depends on."""
    blob = {**common, "files": [f.identity for f in files], "rows": [start, stop]}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_row_count(directory: str, f: InputFile, count) -> int:
    """Rows of ``f`` (``count(local path)``), cached in ``S/rows.json`` by the file's identity."""
    ident = hashlib.sha256(json.dumps(f.identity, sort_keys=True).encode()).hexdigest()[:32]
    path = os.path.join(directory, ROWS)
    cache = read_json(path) or {}
    if ident not in cache:
        cache[ident] = int(count(f.local()))
        os.makedirs(directory, exist_ok=True)
        write_json_atomic(path, {**(read_json(path) or {}), ident: cache[ident]})
    return int(cache[ident])


def plan_shards(
    source: str, files: list[InputFile], common: dict[str, Any], shard_docs: int, capped: bool, rows_of
) -> list[Shard]:
    """The shards of a source: one per file; ``shard_docs``-row pieces of a single file (``rows_of(file)``
    counts them); one shard over every file when the source is ``capped`` by max_docs."""
    if capped:
        whole = tuple(files)
        return [Shard(source, 0, whole, 0, None, key_of(common, whole, 0, None))]
    if len(files) == 1:
        rows = rows_of(files[0])
        n = max(1, -(-rows // shard_docs))
        bounds = [(i * shard_docs, (i + 1) * shard_docs if i < n - 1 else None) for i in range(n)]
        return [
            Shard(source, i, (files[0],), a, b, key_of(common, (files[0],), a, b))
            for i, (a, b) in enumerate(bounds)
        ]
    return [Shard(source, i, (f,), 0, None, key_of(common, (f,), 0, None)) for i, f in enumerate(files)]


def write_plan(directory: str, plan: dict[str, Any]) -> None:
    """Write ``plan.json``; a changed plan first drops the merged manifest and the shards it no longer has."""
    os.makedirs(directory, exist_ok=True)
    remove_dead_tmp(directory)
    old = read_json(os.path.join(directory, PLAN))
    if old == plan:
        return
    if os.path.exists(os.path.join(directory, MANIFEST)):
        os.remove(os.path.join(directory, MANIFEST))
    keep = {s["name"] for s in plan["shards"]}
    for path in glob.glob(os.path.join(directory, "shard_*")):
        name = os.path.basename(path).split(".", 1)[0]
        if _SHARD.match(name) and name not in keep and ".tmp-" not in path:
            os.remove(path)
    write_json_atomic(os.path.join(directory, PLAN), plan)


def shard_record(directory: str, name: str) -> dict[str, Any] | None:
    return read_json(shard_prefix(directory, name) + ".json")


def is_complete(directory: str, planned: dict[str, Any]) -> bool:
    """A planned shard is complete when its record has the planned key and its files are all there."""
    rec = shard_record(directory, planned["name"])
    if rec is None or rec.get("key") != planned["key"]:
        return False
    prefix = shard_prefix(directory, planned["name"])
    try:
        return os.path.getsize(prefix + ".bin") == rec["bin_bytes"] and all(
            os.path.isfile(prefix + ext) for ext in SHARD_FILES
        )
    except OSError:
        return False


def missing_shards(directory: str) -> list[str]:
    plan = read_json(os.path.join(directory, PLAN))
    if plan is None:
        return ["(no plan.json: never preprocessed)"]
    return [s["name"] for s in plan["shards"] if not is_complete(directory, s)]


def _names(names: list[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def merge(directory: str) -> dict[str, Any]:
    """The source's manifest from its plan and shard records (written to ``manifest.json`` when it changes);
    :class:`IncompleteSource` naming the missing shards."""
    plan = read_json(os.path.join(directory, PLAN))
    if plan is None:
        raise IncompleteSource(
            f"{directory}: not preprocessed (no {PLAN}); run `echo-megatron preprocess RECIPE`"
        )
    missing = [s["name"] for s in plan["shards"] if not is_complete(directory, s)]
    if missing:
        raise IncompleteSource(
            f"data.sources.{plan['source']}: {len(missing)} of {len(plan['shards'])} shards missing in {directory}: "
            f"{_names(missing)}; run `echo-megatron preprocess RECIPE` (with the same --num-shards for each "
            "--shard-index that has not finished)"
        )
    records = [shard_record(directory, s["name"]) for s in plan["shards"]]
    formats: dict[str, int] = {}
    for r in records:
        for k, v in r["format_counts"].items():
            formats[k] = formats.get(k, 0) + v
    total = lambda k: sum(r[k] for r in records)  # noqa: E731
    seconds = total("seconds")
    manifest = {
        **{k: v for k, v in plan.items() if k != "shards"},
        "docs": total("docs"),
        "tokens": total("tokens"),
        "prompt_tokens": total("prompt_tokens"),
        "format_counts": dict(sorted(formats.items())),
        "records_read": total("records_read"),
        "filtered_out": total("filtered_out"),
        "bad_records": {
            "count": sum(r["bad_records"]["count"] for r in records),
            "examples": [e for r in records for e in r["bad_records"]["examples"]][:5],
        },
        "num_shards": len(records),
        "shard_seconds": round(seconds, 3),
        "tokens_per_core_s": round(total("tokens") / seconds, 1) if seconds > 0 else None,
        "shards": [
            {
                "name": s["name"],
                "docs": r["docs"],
                "tokens": r["tokens"],
                "files": s["files"],
                "rows": s["rows"],
                "inputs": s["inputs"],
                "format_counts": r["format_counts"],
            }
            for s, r in zip(plan["shards"], records)
        ],
    }
    if manifest["docs"] == 0:
        raise DataError(
            f"data.sources.{plan['source']}: source is empty ({plan['input']}: {manifest['records_read']} records, "
            f"{manifest['filtered_out']} filtered out, {manifest['bad_records']['count']} bad)"
        )
    if read_json(os.path.join(directory, MANIFEST)) != manifest:
        write_json_atomic(os.path.join(directory, MANIFEST), manifest)
    return manifest


def read_manifest(directory: str) -> dict[str, Any] | None:
    """The merged manifest, merging first when the shards are complete but not merged yet (the last task of a
    job array, or the first pretrain, does it); None when the source was never planned."""
    if read_json(os.path.join(directory, PLAN)) is None:
        return None
    manifest = read_json(os.path.join(directory, MANIFEST))
    return manifest if manifest is not None else merge(directory)


def shard_prefixes(directory: str, manifest: dict[str, Any]) -> list[str]:
    return [shard_prefix(directory, s["name"]) for s in manifest["shards"]]
