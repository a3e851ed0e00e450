"""Data files shipped inside the package (see README.md here): eval sets and the paper's tokenizer.

``asset("eval/gsm8k_test.jsonl.gz")`` is the installed file's path, whether the package is installed from a
wheel, editable, or run from a source tree; nothing here reads outside the package.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def asset(relpath: str) -> Path:
    """The path of a shipped data file (it may not exist: callers check)."""
    return ROOT / relpath
