"""The eval runner: generate -> score -> pass@1 / pass@k / maj@k and the per-format table, per task.

    from echo_megatron.eval.runner import evaluate, model_generator
    results = evaluate(model_generator(model, tokenizer, cfg), cfg.eval.tasks, cfg, step=step, run_dir=cfg.run_dir)

Generation is a pluggable step: a *generator* is any callable

    generator(problems, *, n, temperature, top_p, max_new_tokens, seed) -> [[Completion] * n per problem]

:func:`model_generator` wraps a live megatron model (the RL loop's policy, a loaded checkpoint) through the
rollout backend; :func:`reference_generator` returns each problem's reference solution (the gold check of the
scoring path). Per task, one pass per mode:

- ``greedy`` (``eval.greedy``): one generation at temperature 0: pass@1 and the greedy per-format table;
- ``sampled`` (``eval.n > 1``, or ``eval.greedy=false``): ``eval.n`` samples at ``eval.temperature`` /
  ``eval.top_p``: the unbiased pass@k and maj@k over ``eval.ks`` (``echo_megatron.eval.estimators``).

Problems go to the generator in chunks of ``eval.batch_size`` sequences (``batch_size // n`` problems), a
progress bar counting them on rank 0. The samples of a chunk are drawn with the seed
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from echo_megatron.config import ConfigError
from echo_megatron.distributed import collectives
from echo_megatron.eval.estimators import format_stats, k_metrics, mean_pass_at_k
from echo_megatron.eval.tasks import Problem, get_task, load_task, resolve_source
from echo_megatron.rewards.equivalence import normalize_latex, parse_number
from echo_megatron.rundir import RunDir, read_metrics, write_text_atomic
from echo_megatron.training.progress import Progress

GREEDY, SAMPLED = "greedy", "sampled"
PROMPT_TOO_LONG = "prompt_too_long"  # finish reason of a problem whose prompt leaves no room to generate
CHUNK_SEED_STRIDE = 1_000_003


@dataclass
class Completion:
    """One generated solution (the text after the prompt)."""

    text: str
    finish_reason: str | None = None  # eos | stop | length | prompt_too_long | None (not from a sampler)
    num_tokens: int | None = None


Generator = Callable[..., list[list[Completion]]]


# ---- generators ---------------------------------------------------------------------------------------------


class SamplerGenerator:
    """Generations from a rollout backend (``Sampler.generate``) on the prompts ``question + "\\n\\n"``.

    A prompt that leaves no room to generate (``len(ids) >= backend.max_seq_len``) gets an empty completion
    with finish reason ``prompt_too_long`` (scored as wrong), not an error.
    """

    def __init__(self, backend, tokenizer, *, top_k: int = 0, stop: Sequence[str] = ()) -> None:
        if tokenizer is None:
            raise ConfigError(
                "eval needs the run's tokenizer (data.tokenizer.path) to turn questions into prompts; "
                "this run has none (a mock-data run)"
            )
        self.backend = backend
        self.tokenizer = tokenizer
        self.top_k = int(top_k)
        self.stop = list(stop)
        self.max_seq_len = getattr(backend, "max_seq_len", None)

    def __call__(
        self,
        problems: Sequence[Problem],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[list[Completion]]:
        ids = [self.tokenizer.encode(p.prompt) for p in problems]
        fits = [i for i, q in enumerate(ids) if self.max_seq_len is None or len(q) < self.max_seq_len]
        out = [[Completion("", PROMPT_TOO_LONG, 0) for _ in range(n)] for _ in problems]
        if fits:
            rollouts = self.backend.generate(
                [ids[i] for i in fits],
                n=n,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                top_k=self.top_k,
                stop=self.stop,
                seed=seed,
            )
            for ro in rollouts:
                out[fits[ro.prompt_index]][ro.sample_index] = Completion(
                    ro.text or "", ro.finish_reason, len(ro.response_ids)
                )
        return out


def model_generator(model, tokenizer, cfg) -> SamplerGenerator:
    """A generator on a live model (this rank's megatron GPTModel, DDP-wrapped or not; weights used in place)."""
    from echo_megatron.rollout.backend import make_backend

    if tokenizer is None:
        return SamplerGenerator(None, None)  # raises the clear error
    backend = make_backend(
        cfg.rollout.backend,
        model,
        eod_id=tokenizer.eod,
        pad_id=tokenizer.pad,
        max_seq_len=cfg.model.seq_length,
        vocab_size=tokenizer.vocab_size,
        decode=tokenizer.decode,
        max_batch=cfg.eval.batch_size,
    )
    return SamplerGenerator(backend, tokenizer, stop=list(cfg.rollout.stop))


def reference_generator(fmt: str | None = None) -> Generator:
    """Each problem's reference solution as every one of its n generations (the testbed's ``fmt`` rendering when
    given). Scoring these must give (almost) 100%: the gold check of the scoring path."""

    def generate(problems: Sequence[Problem], *, n: int, **_: Any) -> list[list[Completion]]:
        out = []
        for p in problems:
            text = (p.solutions or {}).get(fmt) if fmt else p.solution
            if text is None:
                raise ValueError(
                    f"problem {p.id} has no reference solution{f' in format {fmt}' if fmt else ''}"
                )
            out.append([Completion(text) for _ in range(n)])
        return out

    return generate


# ---- the parallel layout ------------------------------------------------------------------------------------


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


# ---- config -------------------------------------------------------------------------------------------------


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


def task_path(cfg, task: str) -> str | None:
    """The file a task reads: ``eval.paths[task]``, else for the testbed ``<testbed.out>/test.jsonl`` of this
    config when it exists, else None (the registry's shipped file or hub set)."""
    paths = cfg.eval.paths or {}
    if paths.get(task):
        return str(paths[task])
    if task == "testbed":
        out = os.path.join(str(cfg.testbed.out), "test.jsonl")
        if os.path.isfile(out):
            return out
    return None


def _modes(ev) -> list[tuple[str, int, float]]:
    """(mode, samples per problem, temperature) of each pass."""
    modes = [(GREEDY, 1, 0.0)] if ev.greedy else []
    if ev.n > 1 or not ev.greedy:
        modes.append((SAMPLED, int(ev.n), float(ev.temperature)))
    return modes


# ---- aggregation (pure) -------------------------------------------------------------------------------------


def vote_key(extracted: str | None, reward_task: str) -> Any:
    """The answer a sample votes for in maj@k: its number (9 significant digits) when it is one, else the
    normalised LaTeX string; None (no vote) when nothing was extracted."""
    if extracted is None or not str(extracted).strip():
        return None
    num = parse_number(extracted, strict=reward_task == "math")
    if num is not None:
        return float(f"{num:.9g}")
    return normalize_latex(str(extracted))


def _maj_inputs(records: list[dict], reward_task: str) -> tuple[list, list[bool]]:
    """Vote keys and the correctness of each key's first sample (equal keys share one verdict even if a
    comparison failed once, so the estimator's consistency check holds)."""
    keys = [vote_key(r["extracted"], reward_task) for r in records]
    verdict: dict = {}
    for k, r in zip(keys, records):
        if k is not None:
            verdict.setdefault(k, bool(r["correct"]))
    return keys, [verdict[k] if k is not None else False for k in keys]


def summarize_mode(
    records: list[dict], num_problems: int, ks: Sequence[int], reward_task: str, maj_expected: bool
):
    """One mode's block: accuracy, pass@k / maj@k over ks (<= samples per problem), per-format table, finishes.

    ``records`` hold every generation of the mode, each with ``problem_index`` and ``sample``.
    """
    by_problem: list[list[dict]] = [[] for _ in range(num_problems)]
    for r in records:
        by_problem[r["problem_index"]].append(r)
    for rows in by_problem:
        rows.sort(key=lambda r: r["sample"])
    n = min(len(rows) for rows in by_problem)
    counts = [(len(rows), sum(bool(r["correct"]) for r in rows)) for rows in by_problem]
    pass_k = {str(k): mean_pass_at_k(counts, k) for k in sorted({int(k) for k in ks}) if 1 <= k <= n}
    answers, votes_correct = zip(*(_maj_inputs(rows, reward_task) for rows in by_problem))
    maj_k = k_metrics(list(answers), list(votes_correct), ks, maj_expected=maj_expected)["maj@k"]
    finishes: dict[str, int] = {}
    for r in records:
        key = r.get("finish_reason") or "none"
        finishes[key] = finishes.get(key, 0) + 1
    return {
        "num_generations": len(records),
        "accuracy": sum(bool(r["correct"]) for r in records) / max(len(records), 1),
        "pass@k": pass_k,
        "maj@k": maj_k,
        "per_format": format_stats([r["format"] for r in records], [bool(r["correct"]) for r in records]),
        "finish_reasons": dict(sorted(finishes.items())),
    }


def summarize_task(
    task: str, records: list[dict], num_problems: int, cfg, *, step: int, source: str, checkpoint: str | None
) -> dict:
    """``eval/<task>.json``: the documented top-level keys plus a ``greedy`` and a ``sampled`` block.

    Top level: ``pass@1`` is greedy when there is a greedy pass (else the unbiased pass@1 of the samples);
    ``pass@k`` / ``maj@k`` and ``n`` / ``temperature`` describe the samples when there are (else the greedy
    pass as k = 1); ``per_format`` is the greedy table when there is one, else the samples'.
    """
    ev = cfg.eval
    spec = get_task(task)
    blocks: dict[str, dict | None] = {GREEDY: None, SAMPLED: None}
    for mode, n, temperature in _modes(ev):
        rows = [r for r in records if r["mode"] == mode]
        ks = [1] if mode == GREEDY else list(ev.ks)
        block = summarize_mode(rows, num_problems, ks, spec.reward_task, bool(ev.maj_expected))
        block.update({"n": n, "temperature": temperature})
        if mode == SAMPLED:
            block["top_p"] = float(ev.top_p)
            skipped = sorted(int(k) for k in set(ev.ks) if int(k) > n)
            if skipped:
                block["ks_skipped"] = skipped
        blocks[mode] = block
    greedy, sampled = blocks[GREEDY], blocks[SAMPLED]
    top = sampled if sampled is not None else greedy
    return {
        "task": task,
        "n": top["n"],
        "temperature": top["temperature"],
        "num_problems": num_problems,
        "pass@1": greedy["accuracy"] if greedy is not None else sampled["accuracy"],
        "pass@k": top["pass@k"],
        "maj@k": top["maj@k"],
        "per_format": (greedy or sampled)["per_format"],
        "step": int(step),
        "reward_task": spec.reward_task,
        "source": source,
        "checkpoint": checkpoint,
        "max_new_tokens": int(ev.max_new_tokens),
        "greedy": greedy,
        "sampled": sampled,
    }


def metric_row(results: dict[str, dict]) -> dict[str, float]:
    """The ``phase: eval`` values of ``metrics.jsonl``: ``<task>/pass@1``, ``<task>/pass@<k>``, ``<task>/maj@<k>``,
    ``<task>/share/<fmt>`` and ``<task>/acc/<fmt>`` (formats seen)."""
    row: dict[str, float] = {}
    for task, res in results.items():
        row[f"{task}/pass@1"] = res["pass@1"]
        for k, v in res["pass@k"].items():
            row.setdefault(f"{task}/pass@{k}", v)  # pass@1 stays the top-level (greedy) one
        for k, v in res["maj@k"].items():
            row[f"{task}/maj@{k}"] = v
        for fmt, s in res["per_format"].items():
            row[f"{task}/share/{fmt}"] = s["share"]
            if s["accuracy"] is not None:
                row[f"{task}/acc/{fmt}"] = s["accuracy"]
    return row


# ---- running ------------------------------------------------------------------------------------------------


def _chunks(num_problems: int, per_chunk: int, layout: Layout) -> list[tuple[int, int]]:
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
    bar,
) -> list[dict]:
    ev = cfg.eval
    per_chunk = max(1, int(ev.batch_size) // n)
    out: list[dict] = []
    for start, end in _chunks(len(problems), per_chunk, layout):
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
                out.append({"problem_index": start + i, "mode": mode, "sample": j, "completion": c})
        bar.update((end - start) * n)
    return out


def _score(items: list[dict], problems: list[Problem], reward_task: str, cfg, pool) -> list[dict]:
    from echo_megatron.rewards import score

    texts = [it["completion"].text for it in items]
    refs = [problems[it["problem_index"]].answer for it in items]
    results = score(texts, refs, reward_task, cfg.rewards, pool)
    records = []
    for it, res in zip(items, results):
        p, c = problems[it["problem_index"]], it["completion"]
        records.append(
            {
                "problem_index": it["problem_index"],
                "problem_id": p.id,
                "mode": it["mode"],
                "sample": it["sample"],
                "answer": p.answer,
                "completion": c.text,
                "finish_reason": c.finish_reason,
                "num_tokens": c.num_tokens,
                "format": res.format,
                "extracted": None if res.extracted is None else str(res.extracted),
                "correct": bool(res.correct),
                "reward": float(res.reward),
                "error": res.error,
            }
        )
    return records


def write_task_files(run_dir: str, task: str, result: dict, records: list[dict]) -> tuple[str, str]:
    """``eval/<task>.json`` and ``eval/<task>.generations.jsonl`` (one line per generation, problem order)."""
    rd = RunDir(run_dir)
    os.makedirs(rd.eval, exist_ok=True)
    write_text_atomic(rd.eval_file(task), json.dumps(result, indent=2) + "\n")
    order = {GREEDY: 0, SAMPLED: 1}
    rows = sorted(records, key=lambda r: (r["problem_index"], order[r["mode"]], r["sample"]))
    lines = "".join(json.dumps({k: v for k, v in r.items() if k != "problem_index"}) + "\n" for r in rows)
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
    modes = _modes(cfg.eval)
    total = sum(
        (e - s) * n
        for _, n, _ in modes
        for s, e in _chunks(len(problems), max(1, int(cfg.eval.batch_size) // n), layout)
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
    items: list[dict] = []
    try:
        for mode, n, temperature in modes:
            items += _generate_mode(generate, problems, mode, n, temperature, cfg, layout, bar)
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
        too_long = len({r["problem_index"] for r in records if r["finish_reason"] == PROMPT_TOO_LONG})
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
