"""Progress of a long loop (pretraining steps, RL steps, eval generations), for a person or a log file.

On a terminal it is a tqdm bar. Anywhere else (a Slurm ``.out`` file, a pipe, ``> log``) a bar's carriage
returns make the file unreadable, so it prints one plain line per ``interval_s`` seconds instead, and a last
one at the end:

    [pretrain] 120/1000 (12.0%) | loss 2.3100 | tok_s 5120 | 1.92 it/s | elapsed 1m02s | eta 7m38s

The rate and ETA count only this launch's steps (a resumed run starts at ``initial``).
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any


def format_duration(seconds: float) -> str:
    """``3h07m``, ``4m10s`` or ``12s``."""
    s = int(max(0.0, seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(desc: str, n: int, total: int, rate: float, elapsed: float, postfix: dict[str, str]) -> str:
    """One plain progress line (see the module docstring); ``rate`` in items per second over this launch."""
    pct = f" ({100.0 * n / total:.1f}%)" if total else ""
    parts = [f"[{desc}] {n}/{total}{pct}", *(f"{k} {v}" for k, v in postfix.items())]
    parts.append(f"{rate:.3g} it/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    if rate > 0 and total > n:
        parts.append(f"eta {format_duration((total - n) / rate)}")
    return " | ".join(parts)


class Progress:
    """``update(n, **postfix)`` after each item; ``close()`` at the end. Disabled: every call is a no-op."""

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval_s: float = 30.0,
        unit: str = "it",
    ) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.total, self.desc, self.n, self.start_n = int(total), desc, int(initial), int(initial)
        self.interval_s = float(interval_s)
        self.postfix: dict[str, str] = {}
        self.t0 = self.last = time.monotonic()
        self.printed_n = -1
        self.bar: Any = None
        if enabled and _is_terminal(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=self.stream
            )

    def update(self, n: int = 1, **postfix: Any) -> None:
        if not self.enabled:
            return
        self.n += n
        self.postfix.update({k: str(v) for k, v in postfix.items()})
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            return
        now = time.monotonic()
        if self.printed_n < 0 or now - self.last >= self.interval_s:
            self._print(now)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.n != self.printed_n:
            self._print(time.monotonic())
        self.enabled = False

    def _print(self, now: float) -> None:
        elapsed = now - self.t0
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        print(
            progress_line(self.desc, self.n, self.total, rate, elapsed, self.postfix),
            file=self.stream,
            flush=True,
        )
        self.last, self.printed_n = now, self.n


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
