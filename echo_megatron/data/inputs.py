"""Where a source's rows are: its root (a local file or folder, a hub-cache snapshot, a hub repo at a commit)
and the exact list of data files its :class:`~echo_megatron.data.sources.Selection` picks there, in order.

Roots, in order of precedence: ``path``; ``hf_id`` when it names a local folder (e.g. a hub-cache snapshot);
the hub repo (``hf_id`` or the registry's), online at its resolved commit or, offline, its cached snapshot.
Inside a folder root the files are, in order of precedence:

  * the recipe's ``data_files`` globs, relative to the root (or absolute, or ``hf://`` URLs);
  * the registry variant's repo-relative globs for the chosen splits, *anchored*: a glob ``data/train-*.parquet``
    matches ``ROOT/data/train-*.parquet`` and, when ROOT itself is a ``data`` folder (a copy of that part of the
    repo), ``ROOT/train-*.parquet`` - never files of another folder (``incorrect_solutions/`` for
    ``correct_solutions/...``);
  * the README config ``hf_config``'s files for the splits (``datasets.load_dataset_builder``);
  * HF's split rules (``datasets.data_files.get_data_patterns``).

A ``save_to_disk`` folder (``load_from_disk``) gives its Arrow files (a DatasetDict: those of the split). Globs are
resolved by ``datasets.data_files.resolve_pattern``, the same code ``load_dataset(..., data_files=...)`` uses.
Each file carries its identity (what makes its shards stale): size + mtime + a hash of three 64 KiB samples for a
local file, the repo, commit and path (+ size) for a hub or hub-cache file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from echo_megatron.data import hub
from echo_megatron.data.records import BUILDERS, DataError, builder_of
from echo_megatron.data.sources import Selection

SAMPLE_BYTES = 64 << 10


@dataclass(frozen=True)
class InputFile:
    """One data file of a source: a local path, or a hub file fetched into the hub cache when first read."""

    path: str  # local path, or "hf://datasets/<repo>@<sha>/<file>"
    size: int
    identity: dict[str, Any] = field(hash=False)
    hub_file: hub.HubFile | None = None

    def local(self) -> str:
        """A local path to read (downloads a hub file into the cache if it is not there yet)."""
        return hub.download(self.hub_file) if self.hub_file and not os.path.isfile(self.path) else self.path


@dataclass(frozen=True)
class SourceInputs:
    files: list[InputFile]
    revision: str  # "hf:<repo>@<sha>" (hub or hub cache) or "local"
    root: str  # what the files were resolved in (for messages and the manifest)


def sample_hash(path: str, size: int) -> str:
    """sha256 of the size and three 64 KiB samples (start, middle, end): cheap, and catches most rewrites."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - SAMPLE_BYTES // 2), max(0, size - SAMPLE_BYTES)}):
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()[:32]


def local_file(path: str, snapshot: tuple[str, str, str] | None = None) -> InputFile:
    path = os.path.abspath(path)
    st = os.stat(path)
    if snapshot:  # content addressed by the commit: moving HF_HOME or re-linking a blob changes nothing
        repo, sha, root = snapshot
        rel = os.path.relpath(path, root)
        ident = {"repo": repo, "sha": sha, "file": rel, "size": st.st_size}
        return InputFile(path, st.st_size, ident)
    ident = {
        "path": path,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sample": sample_hash(path, st.st_size),
    }
    return InputFile(path, st.st_size, ident)


def hub_input(repo: str, sha: str, filename: str) -> InputFile:
    f = hub.HubFile(repo, sha, filename)
    size = hub.file_size(f)
    ident = {"repo": repo, "sha": sha, "file": filename, "size": size}
    return InputFile(f"hf://datasets/{repo}@{sha}/{filename}", size, ident, f)


def _resolve(pattern: str, base: str) -> list[str]:
    from datasets.data_files import resolve_pattern

    try:
        return sorted(resolve_pattern(pattern, base_path=base))
    except FileNotFoundError:
        return []


def anchored_matches(root: str, pattern: str) -> list[str]:
    """Files for a repo-relative ``pattern`` in ``root``: the pattern itself, or its tail when ``root`` ends in
    the pattern's leading folders (``data/x-*`` in a folder named ``data`` matches ``x-*``)."""
    parts = pattern.split("/")
    root_parts = os.path.abspath(root).split(os.sep)
    for k in range(len(parts)):
        if k and root_parts[-k:] != parts[:k]:
            continue
        found = _resolve("/".join(parts[k:]), root)
        if found:
            return found
    return []


def _split_files(files_by_split: Any, splits: tuple[str, ...], where: str, what: str) -> list[str]:
    known = [str(s) for s in files_by_split]
    missing = [s for s in splits if s not in known]
    if missing:
        raise DataError(
            f"{where}.split: no split {'+'.join(missing)} in {what} (splits there: {', '.join(known) or 'none'})"
        )
    return [str(f) for s in splits for f in files_by_split[s]]


def _hf_rule_files(base: str, sel: Selection, where: str) -> list[str]:
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(base)
    except FileNotFoundError as e:
        raise DataError(f"{where}: no data files in {base}") from e
    files = _split_files(DataFilesDict.from_patterns(patterns, base_path=base), sel.splits, where, base)
    return [f for f in files if builder_of(f)]  # HF's rules also match READMEs and scripts


def _config_files(base: str, sel: Selection, where: str, revision: str | None = None) -> list[str]:
    import datasets

    try:
        builder = datasets.load_dataset_builder(base, sel.hf_config, revision=revision)
    except Exception as e:
        raise DataError(
            f"{where}.hf_config: '{sel.hf_config}' of {base}: {type(e).__name__}: {str(e)[:300]}"
        ) from e
    return _split_files(
        builder.config.data_files or {}, sel.splits, where, f"config {sel.hf_config} of {base}"
    )


def _globbed(base: str, sel: Selection, where: str) -> list[str]:
    files: list[str] = []
    for pattern in sel.globs or ():
        if "://" in pattern or os.path.isabs(pattern):
            found = _resolve(pattern, "")
        elif sel.anchored:
            found = anchored_matches(base, pattern)
        else:
            found = _resolve(pattern, base)
        if not found:
            key = (
                "data_files"
                if not sel.anchored
                else f"variant '{sel.variant}' (split {'+'.join(sel.splits)})"
            )
            raise DataError(
                f"{where}: no file matches '{pattern}' of its {key} in {base}"
                + ("" if not sel.anchored else f"; set {where}.data_files to choose files")
            )
        files += [f for f in found if f not in files]
    return files


def _arrow_files(root: str, sel: Selection, where: str) -> list[str]:
    import datasets

    ds = datasets.load_from_disk(root)
    if isinstance(ds, datasets.DatasetDict):
        missing = [s for s in sel.splits if s not in ds]
        if missing:
            raise DataError(
                f"{where}.split: no split {'+'.join(missing)} in {root} (splits there: {', '.join(ds)})"
            )
        parts = [ds[s] for s in sel.splits]
    else:
        if sel.split_given and sel.splits != ("train",):
            raise DataError(f"{where}.split: {root} is a single saved Dataset, it has no splits")
        parts = [ds]
    return [c["filename"] for part in parts for c in part.cache_files]


def is_saved_dataset(path: str) -> bool:
    """A ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` folder."""
    has = lambda name: os.path.isfile(os.path.join(path, name))  # noqa: E731
    return has("dataset_dict.json") or (has("state.json") and has("dataset_info.json"))


def _local_root(root: str, sel: Selection, where: str) -> SourceInputs:
    if not os.path.exists(root):
        raise DataError(f"{where}: path {root} does not exist")
    snapshot = hub.snapshot_of(root)
    if snapshot and os.path.basename(os.path.abspath(root)).startswith(("datasets--", "models--")):
        root = snapshot[2]  # a repo cache folder: its snapshot at refs/main
    revision = f"hf:{snapshot[0]}@{snapshot[1]}" if snapshot else "local"
    if os.path.isfile(root):
        if sel.globs is not None and not sel.anchored:
            raise DataError(f"{where}.data_files: path {root} is a file; data_files needs a folder")
        if sel.split_given or sel.hf_config:
            raise DataError(f"{where}: path {root} is one file; it has no split or config to choose")
        if builder_of(root) is None:
            raise DataError(f"{where}: {root}: unsupported file type (use {', '.join(BUILDERS)})")
        paths = [root]
    elif is_saved_dataset(root):
        paths = _arrow_files(root, sel, where)
    elif sel.globs is not None:
        paths = _globbed(root, sel, where)
    elif sel.hf_config:
        paths = _config_files(root, sel, where)
    else:
        paths = _hf_rule_files(root, sel, where)
    bad = [p for p in paths if builder_of(p) is None]
    if bad:
        raise DataError(f"{where}: unsupported file type {bad[0]} (use {', '.join(BUILDERS)})")
    if not paths:
        raise DataError(f"{where}: no data files in {root}")
    return SourceInputs([local_file(p, snapshot) for p in paths], revision, os.path.abspath(root))


def _hub_root(repo: str, sel: Selection, revision: str | None, where: str) -> SourceInputs:
    if not hub.hub_reachable():
        return _local_root(hub.cached_snapshot(repo, revision), sel, where)
    sha = hub.resolve_sha(repo, revision)
    base = f"hf://datasets/{repo}@{sha}"
    if sel.globs is not None:
        urls = _globbed(base, sel, where)
    elif sel.hf_config:
        urls = _config_files(repo, sel, where, revision=sha)
    else:
        urls = _hf_rule_files(base, sel, where)
    prefix = f"hf://datasets/{repo}@{sha}/"
    files = [hub_input(repo, sha, u.split(prefix, 1)[1] if u.startswith(prefix) else u) for u in urls]
    return SourceInputs(files, f"hf:{repo}@{sha}", base)


def resolve_inputs(name: str, cfg: Any, sel: Selection) -> SourceInputs:
    """The data files of source ``name`` (its SourceConfig ``cfg`` and Selection ``sel``); DataError naming the
    source, the root and what to set when there are none or they cannot be reached."""
    where = f"data.sources.{name}"
    if cfg.path:
        return _local_root(str(cfg.path), sel, where)
    hf_id = cfg.hf_id or sel.spec.hf_id
    absolute = sel.globs is not None and not sel.anchored and all(os.path.isabs(g) for g in sel.globs)
    if absolute and not cfg.hf_id:  # data_files alone, as absolute globs
        paths = _globbed("", sel, where)
        bad = [p for p in paths if builder_of(p) is None]
        if bad:
            raise DataError(f"{where}: unsupported file type {bad[0]} (use {', '.join(BUILDERS)})")
        return SourceInputs([local_file(p) for p in paths], "local", os.path.commonpath(paths))
    if not hf_id:
        hint = " (write it with `echo-megatron testbed`)" if sel.spec.name == "testbed" else ""
        raise DataError(f"{where}: no path and no hub id: set {where}.path{hint}")
    if os.path.exists(hf_id) or os.path.isabs(hf_id):
        return _local_root(hf_id, sel, where)
    return _hub_root(hf_id, sel, cfg.revision, where)
