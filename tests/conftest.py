"""Fixtures: the repo root and the real sample data the tests read (``data_dir``: see ``echo_testing.data_root``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from echo_testing import REPO, data_root


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return data_root()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
