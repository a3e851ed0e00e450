"""When to save: a regular interval, a list of steps, the end of the run (``checkpoint:`` section).

The paper saves its RL checkpoints on a log-spaced grid, ``int(np.logspace(-2.1, 0, 15) * total_steps)``
(openrlhf-pretrain ``ppo_actor.py``; 9, 13, 18, ..., 821, 1160 for 1,160 GSM8K rollouts), plus one at the end
of every episode; its format-share-over-training figures evaluate exactly those checkpoints. A recipe lists such
steps in ``checkpoint.save_steps`` (the pretraining loop and the RL loop read the same key).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def log_spaced_steps(total: int, n: int = 15, start: float = -2.1) -> list[int]:
    """``int(x * total)`` for the ``n`` values x of ``np.logspace(start, 0, n)`` (10**start ... 1), as the paper
    computes them; sorted, without duplicates and without 0 (a small ``total`` maps several x to one step)."""
    if total < 1 or n < 1:
        raise ValueError(f"log_spaced_steps needs total >= 1 and n >= 1, got total={total}, n={n}")
    steps = {int(x) for x in np.logspace(start, 0, n) * total}
    return sorted(s for s in steps if s > 0)


def is_save_step(step: int, interval: int, save_steps: Sequence[int], last_step: int) -> bool:
    """Whether ``step`` is saved: a multiple of ``interval`` (0 = none), listed in ``save_steps``, or the last."""
    return bool(interval and step % interval == 0) or step in save_steps or step == last_step


def log_spaced_checkpoints(steps: list[int], count: int = 2) -> list[int]:
    """Of the saved ``steps``, the ones nearest ``last / 2**j`` for j = count..1 (``last = max(steps)`` itself
    is evaluated anyway), sorted and distinct: e.g. 10, 20 of 10, 20, 30, 40 (the paper evaluates its RL
    checkpoints on a log-spaced grid too, see ``log_spaced_steps``)."""
    if not steps:
        return []
    last = max(steps)
    earlier = [s for s in steps if s < last]
    picked = (
        {min(earlier, key=lambda s: (abs(s - last / 2**j), s)) for j in range(count, 0, -1)}
        if earlier
        else set()
    )
    return sorted(picked)
