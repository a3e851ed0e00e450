"""Raw records of one data file, through HF ``datasets``' packaged builders, streamed in Arrow batches.

A record is ``(where, row)``: ``where`` names its file and row (``data/x.jsonl[17]``, 0-based) or line
(``data/x.jsonl:18``) for error messages, ``row`` a dict of the columns asked for. :func:`iter_rows` reads the
rows ``[start, stop)`` of a file with ``load_dataset("json" | "parquet" | "arrow", data_files=[file],
streaming=True)``: nothing is copied into a cache, memory stays at one batch, rows before ``start`` are skipped
as Arrow tables (never converted to Python), and parquet reads only the needed columns. ``.jsonl.gz`` and
``.jsonl.zst`` are decompressed on the fly (``zstandard``).

JSON Lines that the builder cannot parse (a malformed line, a field whose type changes between blocks) are
read on from the failing block line by line with ``json.loads`` (the builder's rows are the file's non-blank
lines, so the row numbers agree): a malformed line is then named by file and line, or skipped and counted with
``data.on_bad_record=skip`` (it yields ``(where, BadRecord)``).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from echo_megatron.config import ConfigError

BUILDERS = {  # file suffix -> HF datasets packaged builder
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".jsonl.zst": "json",
    ".json.zst": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
}
BATCH_ROWS = 1000


class DataError(ConfigError):
    """Bad input data (a malformed record, a missing field, an empty or unknown source): exit status 2."""


@dataclass(frozen=True)
class BadRecord:
    """A record that could not be parsed (``data.on_bad_record=skip`` counts it)."""

    message: str


Record = tuple[str, Any]  # (where, row dict | BadRecord)


def quiet_megatron_import() -> None:
    """Hide megatron-core's CPU import notices (no TransformerEngine/Apex): the data commands never use them."""
    import warnings

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")


def builder_of(path: str) -> str | None:
    """The packaged builder that reads ``path`` (by suffix), None for an unsupported file."""
    name = os.path.basename(path).lower()
    return next((b for suffix, b in BUILDERS.items() if name.endswith(suffix)), None)


def is_json_lines(path: str) -> bool:
    return builder_of(path) == "json" and ".jsonl" in os.path.basename(path).lower()


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
    """``(line number, row)`` of a small JSONL input file (prompts, eval sets; ``.gz`` or plain), blank lines
    skipped; a line that is not a JSON object raises a DataError naming file and line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                yield i, parse_json_line(line, f"{path}:{i}")


def quiet_datasets() -> None:
    """No log lines or bars per file, and no download-count ping to S3 per ``load_dataset`` (these are local
    files; on an offline node each ping would wait for its timeout)."""
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False


def _stream(path: str, columns: list[str] | None):
    """The file as an IterableDataset of Arrow tables (parquet: only ``columns`` that exist)."""
    import datasets

    quiet_datasets()
    builder = builder_of(path)
    kwargs: dict[str, Any] = {}
    if builder == "parquet" and columns is not None:
        import pyarrow.parquet as pq

        present = set(pq.read_schema(path).names)
        kwargs["columns"] = [c for c in columns if c in present] or None
    ds = datasets.load_dataset(builder, data_files=[path], split="train", streaming=True, **kwargs)
    return ds.with_format("arrow")


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the non-blank lines of a (possibly compressed) text file."""
    import fsspec

    with fsspec.open(path, "rt", compression="infer", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                yield i, line


def _line_rows(path: str, start: int, stop: int | None, columns: list[str] | None, on_bad: str):
    """Rows [start, stop) of a JSON Lines file read with ``json.loads`` (row i = the i-th non-blank line)."""
    for row, (lineno, line) in enumerate(_lines(path)):
        if stop is not None and row >= stop:
            return
        if row < start:
            continue
        where = f"{path}:{lineno}"
        try:
            record = parse_json_line(line, where)
        except DataError as e:
            if on_bad != "skip":
                raise
            yield where, BadRecord(str(e))
            continue
        yield where, record if columns is None else {c: record[c] for c in columns if c in record}


def iter_rows(
    path: str,
    start: int = 0,
    stop: int | None = None,
    columns: list[str] | None = None,
    on_bad: str = "error",
) -> Iterator[Record]:
    """Records ``[start, stop)`` of one data file (``columns``: only these fields), in file order."""
    if builder_of(path) is None:
        raise DataError(f"{path}: unsupported file type (use {', '.join(BUILDERS)})")
    row = 0  # rows the builder has delivered (yielded or skipped)
    try:
        for table in _stream(path, columns).iter(batch_size=BATCH_ROWS):
            n = table.num_rows
            if row + n <= start:
                row += n
                continue
            lo, hi = max(0, start - row), n if stop is None else min(n, stop - row)
            if hi > lo:
                part = table.slice(lo, hi - lo)
                if columns is not None:
                    part = part.select([c for c in columns if c in part.column_names])
                for i, rec in enumerate(part.to_pylist()):
                    yield f"{path}[{row + lo + i}]", rec
            row += n
            if stop is not None and row >= stop:
                return
    except DataError:
        raise
    except Exception as e:  # the builder gave up on this file (a parse or schema error)
        if not is_json_lines(path):
            raise DataError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:300]})") from e
        yield from _line_rows(path, max(row, start), stop, columns, on_bad)


def count_rows(path: str) -> int:
    """Rows of one data file as :func:`iter_rows` numbers them (parquet and Arrow from their metadata)."""
    builder = builder_of(path)
    if builder == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if builder == "arrow":
        import datasets

        return datasets.Dataset.from_file(path).num_rows
    try:
        return sum(t.num_rows for t in _stream(path, None).iter(batch_size=10 * BATCH_ROWS))
    except Exception as e:
        if not is_json_lines(path):
            raise DataError(f"{path}: cannot read it ({type(e).__name__}: {str(e)[:300]})") from e
        return sum(1 for _ in _lines(path))
