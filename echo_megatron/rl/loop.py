"""RL runs: config -> session (session.py) -> the algorithm's models -> the step loop.

    train_pg   PPO, GRPO, REINFORCE++: one step = ``pg.pg_step`` (rollout, advantages, clipped update)
    train_ei   Expert Iteration: one step = one round, ``ei.ei_round`` (best-of-n, filter, SFT)

Both run ``run_steps``: log each step's metrics, save a checkpoint every ``checkpoint.save_interval`` steps
and at the steps listed in ``checkpoint.save_steps`` (the paper's log-spaced rollouts; checkpoint/schedule.py,
as pretraining reads them; EI: every round, with its SFT set), at the end and on SIGTERM / SIGUSR1 (then
stop). Resume is exact:
policy, critic, optimizers, schedulers, RNG and the prompt position (= the step) come back from
``RUN_DIR/checkpoints`` (critic: ``checkpoints/critic``); EI's accumulated SFT set from its round file.
The config is read, never written, except the model's vocabulary size set from the tokenizer (session.py).
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from echo_megatron.checkpoint.schedule import is_save_step
from echo_megatron.faults import maybe_fail
from echo_megatron.rl.algorithms import make_algorithm
from echo_megatron.rl.ei import ei_round, load_kept
from echo_megatron.rl.pg import build_pg, pg_step, total_rl_steps
from echo_megatron.rl.session import RLSession, build_session
from echo_megatron.training.loop import StopSignal, _say
from echo_megatron.training.progress import Progress


def run_steps(
    session: RLSession,
    start: int,
    step_fn: Callable[[int], dict[str, float]],
    save: Callable[[int], None],
    save_interval: int,
) -> dict[str, float]:
    """Steps ``start + 1 .. session.steps``; the last step's metrics, with this process's rank."""
    cfg = session.cfg
    stop = StopSignal()
    bar = Progress(
        session.steps,
        f"rl/{cfg.rl.algorithm}",
        initial=start,
        enabled=session.rank == 0 and cfg.logging.progress_bar,
        interval_s=cfg.logging.progress_interval_s,
    )
    out: dict[str, float] = {}
    try:
        for step in range(start + 1, session.steps + 1):
            out = step_fn(step)
            session.logger.log(step, "rl", out)
            maybe_fail("kill_at_step", step)
            shown = (("acc", "accuracy"), ("reward", "reward"))
            bar.update(1, **{name: f"{out[key]:.2f}" for name, key in shown if key in out})
            want_stop = stop.any_rank(session.device)
            if is_save_step(step, save_interval, cfg.checkpoint.save_steps, session.steps) or want_stop:
                save(step)
            if want_stop:
                _say(session.rank, f"stopping at RL step {step} (signal); checkpoint saved")
                break
    finally:
        bar.close()
        session.close()
    out["rank"] = float(session.rank)
    return out


def train_pg(cfg: DictConfig) -> dict[str, float]:
    algo = make_algorithm(cfg)
    session = build_session(cfg, lambda num_prompts: total_rl_steps(cfg, num_prompts))
    pg, start = build_pg(session, algo)
    return run_steps(
        session,
        start,
        lambda step: pg_step(session, pg, step),
        lambda step: session.save(step, pg.critic),
        cfg.checkpoint.save_interval,
    )


def train_ei(cfg: DictConfig) -> dict[str, float]:
    session = build_session(cfg, lambda _: cfg.rl.ei_rounds)  # a step of this run is one round
    start = session.restore()
    kept = load_kept(session.run, start)

    def one_round(rnd: int) -> dict[str, float]:
        nonlocal kept
        kept, out = ei_round(session, kept, rnd)
        return out

    return run_steps(session, start, one_round, session.save, save_interval=1)


def train_rl(cfg: DictConfig) -> dict[str, float]:
    return train_ei(cfg) if cfg.rl.algorithm == "ei" else train_pg(cfg)
