"""When checkpoints are written: the paper's log-spaced RL schedule and the save rule both loops use."""

from __future__ import annotations

import pytest

from echo_megatron.checkpoint.schedule import is_save_step, log_spaced_steps


def test_log_spaced_steps_are_the_papers():
    # int(np.logspace(-2.1, 0, 15) * total) for 1,160 GSM8K rollouts and 1,170 MATH rollouts
    # (docs/paper_settings_notes.md section 5)
    assert log_spaced_steps(1160) == [9, 13, 18, 25, 36, 51, 73, 103, 146, 206, 291, 411, 581, 821, 1160]
    assert log_spaced_steps(1170) == [9, 13, 18, 26, 36, 52, 73, 104, 147, 208, 293, 415, 586, 828, 1170]
    assert log_spaced_steps(40) == [1, 2, 3, 5, 7, 10, 14, 20, 28, 40]  # duplicates and 0 dropped
    assert log_spaced_steps(100, n=3, start=-1.0) == [10, 31, 100]
    with pytest.raises(ValueError, match="total >= 1"):
        log_spaced_steps(0)


def test_is_save_step():
    listed = [9, 13]
    saved = [s for s in range(1, 28) if is_save_step(s, 10, listed, last_step=27)]
    assert saved == [9, 10, 13, 20, 27]
    assert [s for s in range(1, 6) if is_save_step(s, 0, [], last_step=5)] == [5]
