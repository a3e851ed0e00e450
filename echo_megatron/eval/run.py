"""The eval run: problems -> generations (in chunks, over the parallel layout) -> scores -> files.

    from echo_megatron.eval.run import evaluate
    from echo_megatron.eval.generation import model_generator
    results = evaluate(model_generator(model, tokenizer, cfg), cfg.eval.tasks, cfg, step=step, run_dir=cfg.run_dir)

Problems go to the generator in chunks of ``eval.batch_size`` sequences (``batch_size // n`` problems), with
progress counted on rank 0. The samples of a chunk are drawn with the seed
``eval.seed * 1000003 + (index of the chunk's first problem)`` (the sampler then seeds every sequence by its place
in the chunk and its sample index), so results depend on the config alone, not on the parallel layout.

Parallel layouts (``torchrun``): all ranks of a tensor-parallel group generate the same chunks in lockstep (the
sampler keeps them bit-identical). With data parallelism the chunks are dealt round-robin to the DP replicas, each
replica's TP rank 0 scores its own generations in its sandbox pool, and global rank 0 gathers them, writes
``RUN_DIR/eval/<task>.json`` + ``<task>.generations.jsonl`` and one ``phase: eval`` row of ``metrics.jsonl``.
Every rank returns the same result dicts. PP > 1 is refused (the sampler needs the whole model on one rank).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

from echo_megatron.config import ConfigError
from echo_megatron.distributed import collectives
from echo_megatron.eval.aggregation import (
    GREEDY,
    SAMPLED,
    EvalRecord,
    metric_row,
    mode_problems,
    modes,
    summarize_task,
)
from echo_megatron.eval.generation import PROMPT_TOO_LONG, Completion, Generator
from echo_megatron.eval.tasks import Problem, get_task, load_task, resolve_source
from echo_megatron.rundir import RunDir, read_metrics, write_text_atomic
from echo_megatron.training.progress import Progress

CHUNK_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Generated:
    """One generation before scoring: which problem, which pass, which sample."""

    problem_index: int
    mode: str
    sample: int
    completion: Completion


@dataclass(frozen=True)
class Layout:
    """Where this process sits: global rank, data-parallel replica, tensor-parallel rank."""

    rank: int = 0
    dp_rank: int = 0
    dp_size: int = 1
    tp_rank: int = 0
    distributed: bool = False

    @classmethod
    def current(cls) -> Layout:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        from megatron.core import parallel_state as ps

        if not ps.model_parallel_is_initialized():
            if dist.get_world_size() > 1:
                raise RuntimeError("eval under torch.distributed needs megatron's parallel_state initialised")
            return cls()
        if ps.get_pipeline_model_parallel_world_size() > 1:
            raise ConfigError("eval generates with the whole model on each rank: use parallel.pp=1")
        return cls(
            rank=dist.get_rank(),
            dp_rank=ps.get_data_parallel_rank(),
            dp_size=ps.get_data_parallel_world_size(),
            tp_rank=ps.get_tensor_model_parallel_rank(),
            distributed=dist.get_world_size() > 1,
        )

    @property
    def scores(self) -> bool:
        """Whether this rank scores (TP rank 0 of each DP replica)."""
        return self.tp_rank == 0


def check_eval_config(ev, tasks: Sequence[str]) -> None:
    """A clear ConfigError for eval settings that cannot run."""
    if not tasks:
        raise ConfigError("eval.tasks: no task given (e.g. eval.tasks=[gsm8k,math500])")
    for t in tasks:
        get_task(t)
    if ev.n < 1:
        raise ConfigError(f"eval.n must be >= 1, got {ev.n}")
    if any(int(k) < 1 for k in ev.ks):
        raise ConfigError(f"eval.ks must be >= 1, got {list(ev.ks)}")
    if ev.temperature < 0:
        raise ConfigError(f"eval.temperature must be >= 0, got {ev.temperature}")
    if not 0.0 < ev.top_p <= 1.0:
        raise ConfigError(f"eval.top_p must be in (0, 1], got {ev.top_p}")
    if ev.max_new_tokens < 1 or ev.batch_size < 1:
        raise ConfigError("eval.max_new_tokens and eval.batch_size must be >= 1")
    if ev.max_problems is not None and ev.max_problems < 1:
        raise ConfigError(f"eval.max_problems must be >= 1 (or null for all), got {ev.max_problems}")
    if ev.sample_problems is not None and ev.sample_problems < 1:
        raise ConfigError(f"eval.sample_problems must be >= 1 (or null for all), got {ev.sample_problems}")


def task_path(cfg, task: str) -> str | None:
    """The file a task reads: ``eval.paths[task]``, else for the testbed ``<testbed.out>/test.jsonl`` (and
    ``test_hard.jsonl`` for testbed_hard) of this config when it exists, else None (the registry's shipped file
    or hub set)."""
    paths = cfg.eval.paths or {}
    if paths.get(task):
        return str(paths[task])
    testbed_files = {"testbed": "test.jsonl", "testbed_hard": "test_hard.jsonl"}
    if task in testbed_files:
        out = os.path.join(str(cfg.testbed.out), testbed_files[task])
        if os.path.isfile(out):
            return out
    return None


def chunks(num_problems: int, per_chunk: int, layout: Layout) -> list[tuple[int, int]]:
    """This DP replica's ``[start, end)`` problem ranges: fixed-size chunks dealt round-robin over replicas."""
    starts = range(0, num_problems, per_chunk)
    return [
        (s, min(s + per_chunk, num_problems))
        for c, s in enumerate(starts)
        if c % layout.dp_size == layout.dp_rank
    ]


def _generate_mode(
    generate: Generator,
    problems: list[Problem],
    mode: str,
    n: int,
    temperature: float,
    cfg,
    layout: Layout,
    bar: Progress,
) -> list[Generated]:
    ev = cfg.eval
    per_chunk = max(1, int(ev.batch_size) // n)
    out: list[Generated] = []
    for start, end in chunks(len(problems), per_chunk, layout):
        comps = generate(
            problems[start:end],
            n=n,
            temperature=temperature,
            top_p=float(ev.top_p) if mode == SAMPLED else 1.0,
            max_new_tokens=int(ev.max_new_tokens),
            seed=int(ev.seed) * CHUNK_SEED_STRIDE + start,
        )
        if len(comps) != end - start or any(len(c) != n for c in comps):
            raise RuntimeError(
                f"generator returned {[len(c) for c in comps]} completions for {end - start} x {n}"
            )
        for i, per_problem in enumerate(comps):
            for j, c in enumerate(per_problem):
                out.append(Generated(start + i, mode, j, c))
        bar.update((end - start) * n)
    return out


def _score(items: list[Generated], problems: list[Problem], reward_task: str, cfg, pool) -> list[EvalRecord]:
    from echo_megatron.rewards import score

    texts = [it.completion.text for it in items]
    refs = [problems[it.problem_index].answer for it in items]
    results = score(
        texts, refs, reward_task, cfg.rewards, pool, purpose="eval", classifier=cfg.formats.classifier
    )
    records = []
    for it, res in zip(items, results):
        p, c = problems[it.problem_index], it.completion
        records.append(
            EvalRecord(
                problem_index=it.problem_index,
                problem_id=p.id,
                mode=it.mode,
                sample=it.sample,
                answer=p.answer,
                completion=c.text,
                finish_reason=c.finish_reason,
                num_tokens=c.num_tokens,
                format=res.format,
                extracted=None if res.extracted is None else str(res.extracted),
                correct=bool(res.correct),
                reward=float(res.reward),
                error=res.error,
            )
        )
    return records


def write_task_files(run_dir: str, task: str, result: dict, records: list[EvalRecord]) -> tuple[str, str]:
    """``eval/<task>.json`` and ``eval/<task>.generations.jsonl`` (one line per generation, problem order), and
    the same result as ``eval/steps/<task>.<step>.json``, so the evals of several checkpoints of one run are kept
    (the report draws pass@k per evaluated step)."""
    rd = RunDir(run_dir)
    os.makedirs(rd.eval_steps, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    write_text_atomic(rd.eval_file(task), text)
    write_text_atomic(rd.eval_step_file(task, int(result["step"])), text)
    order = {GREEDY: 0, SAMPLED: 1}
    rows = sorted(records, key=lambda r: (r.problem_index, order[r.mode], r.sample))
    lines = "".join(json.dumps(r.to_row()) + "\n" for r in rows)
    write_text_atomic(rd.eval_generations(task), lines)
    return rd.eval_file(task), rd.eval_generations(task)


def log_metrics(run_dir: str, cfg, step: int, results: dict[str, dict], logger=None) -> dict[str, float]:
    """Append one ``phase: eval`` row; the values of other tasks already logged at this step are carried over
    (``read_metrics`` keeps one row per (phase, step))."""
    row = metric_row(results)
    try:
        earlier = [r for r in read_metrics(run_dir, "eval") if r.get("step") == step]
    except ValueError:
        earlier = []
    prefixes = tuple(f"{t}/" for t in results)
    for r in earlier:
        for k, v in r.items():
            if k not in ("step", "phase", "time") and not k.startswith(prefixes):
                row.setdefault(k, v)
    if logger is not None:
        logger.log(step, "eval", row)
        return row
    from echo_megatron.training.metrics import MetricsLogger

    own = MetricsLogger(cfg, run_dir)
    try:
        own.log(step, "eval", row)
    finally:
        own.close()
    return row


def evaluate(
    generate: Generator,
    tasks: Sequence[str] | None,
    cfg,
    *,
    step: int = 0,
    run_dir: str | None = None,
    pool=None,
    logger=None,
    checkpoint: str | None = None,
    progress: bool | None = None,
) -> dict[str, dict]:
    """Evaluate ``generate`` on ``tasks`` (default ``cfg.eval.tasks``); returns ``{task: eval/<task>.json dict}``.

    ``run_dir``: where ``eval/`` and ``metrics.jsonl`` are written (None: nothing is written). ``pool``: a
    ``SandboxPool`` to score with (the RL loop's); else one is started on each scoring rank and closed after.
    ``logger``: a ``MetricsLogger`` to log through (else one is opened on ``run_dir``). Every rank of a
    torchrun launch must call this together; every rank returns the same dicts.
    """
    tasks = list(cfg.eval.tasks if tasks is None else tasks)
    check_eval_config(cfg.eval, tasks)
    layout = Layout.current()
    if progress is None:
        progress = bool(cfg.logging.progress_bar)
    own_pool = None
    results: dict[str, dict] = {}
    try:
        if pool is None and layout.scores:
            from echo_megatron.rewards import SandboxPool

            pool = own_pool = SandboxPool.from_config(cfg.rewards)
        for task in tasks:
            results[task] = _evaluate_task(
                generate, task, cfg, layout, pool, step, run_dir, checkpoint, progress
            )
    finally:
        if own_pool is not None:
            own_pool.close()
    if run_dir is not None and layout.rank == 0:
        log_metrics(run_dir, cfg, step, results, logger)
    return results


def _evaluate_task(generate, task, cfg, layout, pool, step, run_dir, checkpoint, progress) -> dict:
    spec = get_task(task)
    path = task_path(cfg, task)
    problems = load_task(task, path=path, max_problems=cfg.eval.max_problems)
    passes = modes(cfg.eval)
    counts = {mode: mode_problems(cfg.eval, mode, len(problems)) for mode, _, _ in passes}
    total = sum(
        (e - s) * n
        for mode, n, _ in passes
        for s, e in chunks(counts[mode], max(1, int(cfg.eval.batch_size) // n), layout)
    )
    bar = Progress(
        total,
        f"eval/{task}",
        enabled=progress and layout.rank == 0,
        stream=sys.stderr,
        interval_s=cfg.logging.progress_interval_s,
        unit="gen",
    )
    t0 = time.perf_counter()
    items: list[Generated] = []
    try:
        for mode, n, temperature in passes:
            items += _generate_mode(
                generate, problems[: counts[mode]], mode, n, temperature, cfg, layout, bar
            )
    finally:
        bar.close()
    t1 = time.perf_counter()
    records = _score(items, problems, spec.reward_task, cfg, pool) if layout.scores else []
    t2 = time.perf_counter()
    records = collectives.gather_to_rank0(records)
    result = None
    if layout.rank == 0:
        result = summarize_task(
            task,
            records,
            len(problems),
            cfg,
            step=step,
            source=resolve_source(spec, path),
            checkpoint=checkpoint,
        )
        result["time_s"] = {"generate": round(t1 - t0, 3), "score": round(t2 - t1, 3)}
        too_long = len({r.problem_index for r in records if r.finish_reason == PROMPT_TOO_LONG})
        if too_long:
            result["prompts_too_long"] = too_long
            print(
                f"[eval] {task}: {too_long} of {len(problems)} prompts do not fit the model's context "
                f"(model.seq_length); their generations are empty and count as wrong",
                file=sys.stderr,
            )
        if run_dir is not None:
            write_task_files(run_dir, task, result, records)
    return collectives.broadcast_from_rank0(result)
