"""Stop conditions on a growing response: stop strings (through a decode function) and stop token sequences.

A stop string may begin in one token and end in another, or end inside a token. After each new token the
checker decodes only a window of the last tokens, long enough to hold any stop string even at one byte per
token, so a check costs O(stop length) rather than O(response length). :func:`cut_text` finds the
earliest stop in the full decoded text for the final ``Rollout.text``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


class StopChecker:
    def __init__(
        self,
        stop: Sequence[str] = (),
        stop_token_seqs: Sequence[Sequence[int]] = (),
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        if stop and decode is None:
            raise ValueError("stop strings need a decode function (the sampler's tokenizer)")
        self.stop = [s for s in stop if s]
        self.seqs = [list(s) for s in stop_token_seqs if s]
        self.decode = decode
        # A token decodes to at least one byte and a character is at most 4 bytes (UTF-8); +1 for a token
        # that began before the window.
        self.window = max((len(s.encode("utf-8")) for s in self.stop), default=0) + 1

    @property
    def active(self) -> bool:
        return bool(self.stop or self.seqs)

    def __call__(self, ids: Sequence[int], new: int = 1) -> str | list[int] | None:
        """The stop completed by the last ``new`` tokens of ``ids``, or None."""
        for seq in self.seqs:
            k = len(seq)
            for end in range(max(len(ids) - new + 1, k), len(ids) + 1):
                if list(ids[end - k : end]) == seq:
                    return seq
        if self.stop:
            # Any match in this window ends in the new tokens: an older one was seen by an earlier call.
            text = self.decode(list(ids[-(self.window + new - 1) :]))
            for s in self.stop:
                if s in text:
                    return s
        return None


def cut_text(text: str, stop: Sequence[str]) -> tuple[str, str | None]:
    """(text before the earliest stop string, that stop string or None)."""
    best, which = len(text), None
    for s in stop:
        i = text.find(s) if s else -1
        if 0 <= i < best:
            best, which = i, s
    return text[:best], which
