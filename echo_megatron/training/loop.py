"""The pretraining loop: config -> (process groups, model, optimizer, data) -> steps -> checkpoints.

Also the entry point for SFT (Expert Iteration reuses it with a prompt-masked dataset).
Resume is exact: model, optimizer, scheduler, RNG and the data position (consumed samples) are restored
from ``RUN_DIR/checkpoints/latest``, so a resumed run logs the same losses as an uninterrupted one.
SIGTERM / SIGUSR1 (Slurm preemption) finish the current step, save and exit 0.
"""

from __future__ import annotations

import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf

from echo_megatron.checkpoint import find_checkpoint, latest_checkpoint, load_checkpoint, save_checkpoint
from echo_megatron.checkpoint.schedule import is_save_step
from echo_megatron.data.shards import source_of_prefix
from echo_megatron.distributed import collectives
from echo_megatron.faults import maybe_fail
from echo_megatron.model.runtime import resolve_runtime
from echo_megatron.model.vocab import Vocab, resolve_vocab
from echo_megatron.rundir import RunDir
from echo_megatron.training.batches import GlobalBatchSampler
from echo_megatron.training.metrics import MetricsLogger
from echo_megatron.training.progress import Progress
from echo_megatron.training.setup import build_train_state
from echo_megatron.training.step import lm_loss, train_step


class StopSignal:
    """Records SIGTERM / SIGUSR1; the loop checks it (agreed over all ranks) after each step."""

    def __init__(self) -> None:
        self.received: int | None = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def any_rank(self, device: torch.device) -> bool:
        return collectives.any_rank(self.received is not None, device)


def with_train_steps(cfg: DictConfig) -> DictConfig:
    """``cfg`` with the run's length in ``train.steps``: a copy in which ``train.epochs`` (when set) is resolved
    to steps from the preprocessed mixture (data/mixture.py ``resolve_train_steps``) and then cleared."""
    if cfg.train.epochs is None:
        return cfg
    from echo_megatron.data.mixture import resolve_train_steps

    steps = resolve_train_steps(cfg)
    return OmegaConf.merge(cfg, {"train": {"steps": steps, "epochs": None}})


def save_config(cfg: DictConfig, run_dir: str, vocab: Vocab | None = None) -> None:
    """RUN_DIR/config.yaml (rank 0): the config as run; with ``vocab``, ``model.vocab_size`` records the
    vocabulary the model was built with (the tokenizer's, when the recipe names one)."""
    if dist.get_rank() == 0:
        RunDir(run_dir).make()
        saved = cfg if vocab is None else OmegaConf.merge(cfg, {"model": {"vocab_size": vocab.size}})
        OmegaConf.save(saved, RunDir(run_dir).config)


def _source_counts(train_ds, start: int, n: int) -> dict[str, float]:
    """Samples per blended source in ``[start, start + n)`` (BlendedDataset.dataset_index)."""
    index = getattr(train_ds, "dataset_index", None)
    if index is None:
        return {}
    ids = np.asarray([index[(start + j) % len(index)] for j in range(n)])
    counts: dict[str, float] = {}
    for i, d in enumerate(train_ds.datasets):  # a source's shards count as that source
        name = source_of_prefix(getattr(d, "dataset_path", None) or f"ds{i}")
        counts[f"samples/{name}"] = counts.get(f"samples/{name}", 0.0) + float((ids == i).sum())
    return counts


def pretrain(cfg: DictConfig) -> dict[str, float]:
    """Run (or resume) pretraining for ``cfg``; returns the last step's metrics."""
    from megatron.core import parallel_state as ps

    from echo_megatron.data.gpt_datasets import DatasetTokenizer, build_train_valid_datasets
    from echo_megatron.distributed.init import initialize
    from echo_megatron.training.flops import flops_per_token, peak_flops

    env, device = initialize(cfg)
    rank = dist.get_rank()
    cfg = with_train_steps(cfg)  # train.epochs -> train.steps (the saved config records the steps)
    vocab = resolve_vocab(cfg)
    save_config(cfg, cfg.run_dir, vocab)
    run = RunDir(cfg.run_dir)
    state = build_train_state(cfg, vocab.size, device, cfg.train.steps, resolve_runtime(cfg))
    start_iter, consumed = 0, 0
    ckpt = latest_checkpoint(run.checkpoints) if cfg.checkpoint.resume else None
    if ckpt:
        common = load_checkpoint(
            ckpt, state.model, state.optimizer, state.scheduler, load_rng=cfg.checkpoint.load_rng
        )
        start_iter, consumed = common["iteration"], common["state"].get("consumed_samples", 0)
        _say(rank, f"resumed from {ckpt} at step {start_iter}")
    elif cfg.checkpoint.load:  # initialise weights (and optionally the optimizer) from another run
        path = find_checkpoint(cfg.checkpoint.load)
        load_checkpoint(
            path,
            state.model,
            state.optimizer,
            load_rng=False,
            load_optimizer_state=cfg.checkpoint.load_optimizer,
        )
        _say(rank, f"initialised from {path}")

    t = cfg.train
    train_ds, _ = build_train_valid_datasets(
        cfg, DatasetTokenizer(vocab.size, vocab.eod), t.steps * t.global_batch_size
    )
    sampler = GlobalBatchSampler(
        train_ds,
        t.global_batch_size,
        t.micro_batch_size,
        ps.get_data_parallel_rank(),
        ps.get_data_parallel_world_size(),
        consumed,
    )
    logger = MetricsLogger(cfg, cfg.run_dir, rank)
    n_params = _global_param_count(state.model)
    fpt = flops_per_token(cfg, n_params)
    peak = peak_flops(device) * dist.get_world_size() if cfg.logging.log_interval else 0.0
    stop = StopSignal()
    bar = _progress(cfg, rank, start_iter)
    out: dict[str, float] = {}
    last_saved = start_iter if ckpt else -1
    step = start_iter
    if t.steps == 0:  # train.steps=0 writes the initial weights (a shared starting point for comparisons)
        save_checkpoint(
            run.checkpoints, 0, state.model, None, None, {"consumed_samples": 0}, cfg.checkpoint.keep_last
        )
    for step in range(start_iter + 1, t.steps + 1):
        first_sample = sampler.consumed_samples
        microbatches = sampler.next_microbatches()
        t0 = time.perf_counter()
        out = train_step(
            state.model, state.optimizer, state.scheduler, microbatches, lm_loss, cfg.model.seq_length
        )
        dt = time.perf_counter() - t0
        if not np.isfinite(out["loss"]):
            save_checkpoint(
                run.checkpoints,
                step - 1,
                state.model,
                state.optimizer,
                state.scheduler,
                {"consumed_samples": first_sample},
                cfg.checkpoint.keep_last,
            ) if last_saved != step - 1 else None
            raise FloatingPointError(
                f"step {step}: loss is {out['loss']} (stopped; the last good state is saved)"
            )
        tokens = t.global_batch_size * cfg.model.seq_length
        out.update(tokens_per_s=tokens / dt, step_time=dt, consumed_samples=float(sampler.consumed_samples))
        out["mfu"] = fpt * tokens / dt / peak if peak else float("nan")
        if rank == 0:
            out.update(_source_counts(train_ds, first_sample, t.global_batch_size))
        if step % cfg.logging.log_interval == 0 or step == t.steps:
            logger.log(step, "pretrain", out)
        maybe_fail("kill_at_step", step)
        bar.update(1, loss=f"{out['loss']:.4f}", tok_s=f"{out['tokens_per_s']:.0f}")
        want_stop = stop.any_rank(device)
        ck = cfg.checkpoint
        if (
            is_save_step(step, ck.save_interval, ck.save_steps, t.steps)
            or want_stop
            or step == t.exit_after_steps
        ):
            save_checkpoint(
                run.checkpoints,
                step,
                state.model,
                state.optimizer,
                state.scheduler,
                {"consumed_samples": sampler.consumed_samples},
                cfg.checkpoint.keep_last,
            )
            last_saved = step
        if want_stop or step == t.exit_after_steps:
            _say(
                rank,
                f"stopping at step {step} ({'signal' if want_stop else 'exit_after_steps'}); checkpoint saved",
            )
            break
    bar.close()
    logger.close()
    out["step"] = float(step)
    out["rank"] = float(rank)
    return out


def _global_param_count(model: list) -> int:
    """Parameters of the whole model (summed over TP and PP ranks; DP replicas counted once)."""

    n = sum(count_by_component_total(c) for c in model)
    return int(collectives.model_parallel_all_reduce_(torch.tensor([float(n)])).item())


def count_by_component_total(chunk) -> int:
    from echo_megatron.model.params import count_by_component

    return count_by_component(chunk)["total"]


def _progress(cfg: DictConfig, rank: int, start: int) -> Progress:
    return Progress(
        cfg.train.steps,
        "pretrain",
        initial=start,
        enabled=rank == 0 and cfg.logging.progress_bar,
        interval_s=cfg.logging.progress_interval_s,
    )


def _say(rank: int, msg: str) -> None:
    if rank == 0:
        print(f"[echo-megatron] {msg}", flush=True)
