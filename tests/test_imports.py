"""Every module of the package imports (a name imported from the wrong module fails here, not in a long run)."""

from __future__ import annotations

import importlib
import pkgutil

import echo_megatron


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(echo_megatron.__path__, "echo_megatron.")]
    assert len(names) > 80
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - report every failure at once
            failed[name] = f"{type(e).__name__}: {e}"
    assert not failed, failed
