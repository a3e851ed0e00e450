"""Preprocessing progress: a tqdm bar per source and one overall on a terminal, else a plain line per interval.

Counts arrive as the workers tokenize (documents and tokens of each batch) and as shards finish (their input
bytes). The ETA is the input bytes left over the bytes/s so far, where the bytes of shards still in flight are
estimated from their tokens at the source's bytes per token (of its finished shards; 4 before the first).
Lines (stdout not a TTY: Slurm logs, CI) carry no carriage return::

    [preprocess 0:12:30] finemath: 1,234,567 docs, 2,001,234,567 tokens, 2,668,312 tokens/s, shards 12/128, ETA 1:02:11
    [preprocess 0:12:30] all: ...
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

BYTES_PER_TOKEN_GUESS = 4.0


@dataclass
class SourceCounts:
    shards_total: int
    shards_done: int  # finished, in this run or before it
    bytes_total: int  # input bytes of all its shards
    bytes_done: int  # input bytes of the finished shards
    docs: int = 0  # documents and tokens written in this run
    tokens: int = 0
    inflight_tokens: int = 0  # tokens of shards not finished yet
    run_bytes: int = 0  # input bytes and tokens of the shards finished in this run
    run_tokens: int = 0

    def __post_init__(self) -> None:
        self.bytes_start = self.bytes_done

    def bytes_now(self) -> float:
        """Finished bytes + the in-flight shards' tokens at this source's bytes per token."""
        per_token = self.run_bytes / self.run_tokens if self.run_tokens else BYTES_PER_TOKEN_GUESS
        return self.bytes_done + min(self.inflight_tokens * per_token, self.bytes_total - self.bytes_done)


def _hms(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def status_line(name: str, counts: list[SourceCounts], elapsed: float) -> str:
    """``name: docs, tokens, tokens/s, shards done/total, ETA`` over ``counts`` (one source, or all)."""
    total = lambda k: sum(getattr(c, k) for c in counts)  # noqa: E731
    now = sum(c.bytes_now() for c in counts)
    rate = (now - total("bytes_start")) / max(elapsed, 1e-9)
    left = total("bytes_total") - now
    eta = "done" if left <= 0 else (_hms(left / rate) if rate > 0 else "?")
    return (
        f"{name}: {total('docs'):,} docs, {total('tokens'):,} tokens, {total('tokens') / max(elapsed, 1e-9):,.0f} "
        f"tokens/s, shards {total('shards_done')}/{total('shards_total')}, ETA {eta}"
    )


class Progress:
    """Counts per source; ``tick()`` redraws the bars or, every ``interval`` seconds, prints the lines."""

    def __init__(
        self,
        sources: dict[str, SourceCounts],
        interval: float = 30.0,
        out: TextIO | None = None,
        tty: bool | None = None,
    ) -> None:
        self.sources = sources
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.interval = interval
        self.t0 = self.last_print = time.monotonic()
        self.bars: dict[str, object] = {}
        if self.tty:
            from tqdm import tqdm

            groups = [("all", list(sources.values()))] + [(n, [c]) for n, c in sources.items()]
            for i, (name, cs) in enumerate(groups):
                self.bars[name] = tqdm(
                    total=sum(c.bytes_total for c in cs), initial=sum(c.bytes_done for c in cs), unit="B",
                    unit_scale=True, desc=name, position=i, file=self.out, dynamic_ncols=True,
                )  # fmt: skip

    def add(self, source: str, docs: int, tokens: int) -> None:
        c = self.sources[source]
        c.docs, c.tokens, c.inflight_tokens = c.docs + docs, c.tokens + tokens, c.inflight_tokens + tokens

    def shard_done(self, source: str, input_bytes: int, tokens: int) -> None:
        c = self.sources[source]
        c.shards_done, c.bytes_done, c.inflight_tokens = (
            c.shards_done + 1,
            c.bytes_done + input_bytes,
            c.inflight_tokens - tokens,
        )
        c.run_bytes, c.run_tokens = c.run_bytes + input_bytes, c.run_tokens + tokens

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            groups = [("all", list(self.sources.values()))] + [(n, [c]) for n, c in self.sources.items()]
            for name, cs in groups:
                bar = self.bars[name]
                bar.n = int(sum(c.bytes_now() for c in cs))
                line = status_line(name, cs, now - self.t0).split(": ", 1)[1]
                bar.set_postfix_str(line, refresh=False)
                bar.refresh()
            return
        if not force and now - self.last_print < self.interval:
            return
        self.last_print = now
        stamp = f"[preprocess {_hms(now - self.t0)}]"
        for name, c in self.sources.items():
            print(f"{stamp} {status_line(name, [c], now - self.t0)}", file=self.out, flush=True)
        print(
            f"{stamp} {status_line('all', list(self.sources.values()), now - self.t0)}",
            file=self.out,
            flush=True,
        )

    def close(self) -> None:
        self.tick(force=True)
        for bar in self.bars.values():
            bar.close()
