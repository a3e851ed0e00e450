"""The HF hub side of the sources: is the hub reachable, which commit a repo is at, where its files are cached.

A hub source is always read from local files: online, its repo is resolved to a commit sha and each file is
fetched into the hub cache (``HF_HOME`` / ``HF_HUB_CACHE``) by ``hf_hub_download`` when its shard is processed
(resumable, locked against concurrent downloads, only the files of this task's shards); offline, the same
files are found in that cache (``huggingface-cli download`` on a login node, see docs/data.md) through its
``refs/<revision>`` pointer. The probe goes through ``urllib``, so ``HTTPS_PROXY`` / ``NO_PROXY`` apply as they do
to ``huggingface_hub`` itself; ``HF_HUB_OFFLINE=1`` skips it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from echo_megatron.data.records import DataError

_SNAPSHOT = re.compile(r"^(datasets|models|spaces)--(.+)$")


@dataclass(frozen=True)
class HubFile:
    """One file of a hub dataset repo at a commit."""

    repo: str
    sha: str
    filename: str  # path inside the repo


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline() -> bool:
    return any(
        os.environ.get(v, "0") not in ("0", "", "false", "False")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether the hub answers an HTTP request (any status), through ``HTTPS_PROXY`` when set; False offline."""
    import urllib.error
    import urllib.request

    if offline():
        return False
    try:
        urllib.request.urlopen(
            urllib.request.Request(endpoint() + "/api/datasets?limit=1", method="HEAD"), timeout=timeout
        )
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def cache_dir() -> str:
    """The hub cache as huggingface_hub computes it, read now (tests and jobs set HF_HOME late)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(home, "hub")


def snapshot_of(path: str) -> tuple[str, str, str] | None:
    """``(repo id, sha, snapshot dir)`` when ``path`` is a hub-cache repo folder (``datasets--org--name``, via its
    ``refs/main``) or lies inside one of its ``snapshots/<sha>/`` folders; else None."""
    parts = os.path.abspath(path).split(os.sep)
    for i in range(len(parts) - 1, -1, -1):
        m = _SNAPSHOT.match(parts[i])
        if not m:
            continue
        repo = m.group(2).replace("--", "/")
        if i + 2 < len(parts) and parts[i + 1] == "snapshots":
            return repo, parts[i + 2], os.sep.join(parts[: i + 3])
        if i == len(parts) - 1:
            ref = os.path.join(path, "refs", "main")
            if not os.path.isfile(ref):
                raise DataError(
                    f"{path}: a hub-cache folder without refs/main; give its snapshots/<sha> folder"
                )
            with open(ref, encoding="utf-8") as f:
                sha = f.read().strip()
            return repo, sha, os.path.join(path, "snapshots", sha)
        return None
    return None


def cached_snapshot(repo: str, revision: str | None) -> str:
    """The cached snapshot folder of ``repo`` at ``revision`` (a branch, tag or sha; default main)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(
            repo, repo_type="dataset", revision=revision, cache_dir=cache_dir(), local_files_only=True
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError) as e:
        raise DataError(
            f"hub dataset {repo}@{revision or 'main'} is not reachable and not in the hub cache {cache_dir()} "
            f"({type(e).__name__}); download it first: huggingface-cli download --repo-type dataset {repo} "
            "--include PATTERN (docs/data.md), or set HF_HOME"
        ) from e


def resolve_sha(repo: str, revision: str | None) -> str:
    """The commit sha of ``repo`` at ``revision`` on the hub."""
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint()).dataset_info(repo, revision=revision).sha
    except Exception as e:
        raise DataError(f"hub dataset {repo}@{revision or 'main'}: {type(e).__name__}: {str(e)[:300]}") from e


def file_size(f: HubFile) -> int:
    from huggingface_hub import HfFileSystem

    return int(HfFileSystem(endpoint=endpoint()).info(f"datasets/{f.repo}@{f.sha}/{f.filename}")["size"])


def download(f: HubFile) -> str:
    """The local path of ``f`` in the hub cache, fetched first when it is not there (resumable)."""
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(f.repo, f.filename, repo_type="dataset", revision=f.sha, cache_dir=cache_dir())
    except Exception as e:
        raise DataError(
            f"hub file {f.repo}@{f.sha[:12]}/{f.filename}: {type(e).__name__}: {str(e)[:300]}"
        ) from e
