"""Raw records of a source: local JSONL / JSON / parquet files or a HF hub dataset (streamed).

A record is ``(where, payload)``: ``where`` names its file and line (``data/x.jsonl:17``) or row index for error
messages; ``payload`` is the raw JSONL line (parsed later, in the worker processes, so that parsing runs in
parallel) or an already-parsed dict (JSON arrays, parquet, the hub). Parquet and the hub go through HF
``datasets`` in streaming mode; JSONL is read line by line so that a malformed line can be named.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

from echo_megatron.config import ConfigError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")

Record = tuple[str, Any]  # (where, raw line str | dict)


def quiet_megatron_import() -> None:
    """Hide megatron-core's CPU import notices (no TransformerEngine/Apex): the data commands never use them."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


class DataError(ConfigError):
    """Bad input data (a malformed record, a missing field, an empty or unknown source): exit status 2."""


def input_files(path: str, source: str) -> list[str]:
    """The data files of a local ``path``: the file itself, or a directory's jsonl/json/parquet files (sorted)."""
    if os.path.isfile(path):
        if not path.endswith(LOCAL_SUFFIXES):
            raise DataError(
                f"source '{source}': {path}: unsupported file type (use {', '.join(LOCAL_SUFFIXES)})"
            )
        return [path]
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, f)
            for f in os.listdir(path)
            if f.endswith(LOCAL_SUFFIXES) and not f.startswith(".")
        )
        if not files:
            raise DataError(f"source '{source}': directory {path} holds no {'/'.join(LOCAL_SUFFIXES)} files")
        return files
    raise DataError(f"source '{source}': path {path} does not exist")


def parse_json_line(line: str, where: str) -> dict:
    """One JSONL line as a dict, or a DataError naming file and line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON line: {e.msg} (column {e.colno})") from e
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def numbered_jsonl_rows(path: str) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` of a JSONL input file (prompts, eval sets; ``.gz`` or plain), parsed here, blank
    lines skipped; a line that is not a JSON object raises a DataError naming file and line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                yield i, parse_json_line(line, f"{path}:{i}")


def _iter_jsonl(path: str) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                yield f"{path}:{i}", line


def _iter_json(path: str) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        try:
            rows = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from e
    if isinstance(rows, dict):  # {"data": [...]} or a single record
        rows = next((v for v in rows.values() if isinstance(v, list)), [rows])
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _iter_datasets(where: str, *args: Any, **kwargs: Any) -> Iterator[Record]:
    import datasets

    ds = datasets.load_dataset(*args, streaming=True, **kwargs)
    for i, row in enumerate(ds):
        yield f"{where}[{i}]", row


def iter_local(path: str, source: str) -> Iterator[Record]:
    for f in input_files(path, source):
        if f.endswith(".jsonl"):
            yield from _iter_jsonl(f)
        elif f.endswith(".json"):
            yield from _iter_json(f)
        else:
            yield from _iter_datasets(f, "parquet", data_files=f, split="train")


def iter_hub(hf_id: str, hf_config: str | None, split: str, revision: str | None, data_files: str | None):
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # fail fast (or read the local cache) instead of retrying for 25 s
    kwargs: dict[str, Any] = {"split": split}
    if revision:
        kwargs["revision"] = revision
    if data_files:
        kwargs["data_files"] = data_files
    return _iter_datasets(hf_id, hf_id, hf_config, **kwargs)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the HF hub answers a TCP connect (offline mode counts as unreachable; cached data still loads)."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v, "0") not in ("0", "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fingerprint_local(path: str, source: str) -> str:
    """sha256 over the contents of the source's files (the manifest's ``source_revision``)."""
    h = hashlib.sha256()
    for f in input_files(path, source):
        h.update(os.path.basename(f).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:32]
