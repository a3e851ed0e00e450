"""Fault injection for crash-consistency tests: ``ECHO_FAULT=<point>:<step>`` SIGKILLs this process there.

Points: ``kill_at_step`` (after step N is logged) and ``kill_in_save`` (inside the save of step N, after
the shards are written and before the checkpoint is renamed into place). Unset in normal runs. A top-level
module: the checkpoint writer and the training / RL loops all call it.
"""

from __future__ import annotations

import os
import signal


def maybe_fail(point: str, step: int) -> None:
    spec = os.environ.get("ECHO_FAULT", "")
    if spec and spec == f"{point}:{step}":
        import psutil  # like a node crash: this process and its helpers (dist_checkpointing's manager) die

        for child in psutil.Process().children(recursive=True):
            child.kill()
        os.kill(os.getpid(), signal.SIGKILL)
