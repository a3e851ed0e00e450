"""``echo-megatron eval CHECKPOINT|RUN_DIR [k=v ...] [--out DIR]``: pass@1 / pass@k / maj@k per task and format.

The ``k=v`` overrides apply to the run's own ``config.yaml``, e.g.::

    echo-megatron eval runs/demo_grpo eval.tasks=[testbed]
    echo-megatron eval runs/demo_grpo --steps 5,10,20    # those checkpoints of the run too, then the latest
    echo-megatron eval runs/grpo_150m eval.tasks=[gsm8k,math500] eval.n=8 eval.ks=[1,8] eval.max_problems=50
    torchrun --nproc-per-node 2 -m echo_megatron eval runs/grpo_150m        # tensor parallel 2

Writes ``eval/<task>.json`` and ``eval/<task>.generations.jsonl`` under the checkpoint's run dir (or ``--out``)
and appends a ``phase: eval`` row to its ``metrics.jsonl``; prints one table per task. ``--steps`` evaluates earlier
checkpoints of the same run first, in the same process (the model is built once and each checkpoint's weights
are loaded into it); each lands in ``eval/steps/`` and ``metrics.jsonl``, so the report draws pass@k by step. Under torchrun the world
is one tensor-parallel group unless ``parallel.tp`` says otherwise (then the problems are split over the
data-parallel replicas; see echo_megatron/eval/run.py).
"""

from __future__ import annotations

import argparse
import os

from echo_megatron.rewards.formats import FORMATS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="checkpoint dir (iter_NNNNNNN), checkpoints dir or run dir")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the run's config")
    parser.add_argument(
        "--out", default=None, help="output dir for eval/ and metrics.jsonl (default: run dir)"
    )
    parser.add_argument(
        "--steps",
        default="",
        metavar="S1,S2,...",
        help="also evaluate these steps' checkpoints of the same run (RUN_DIR/checkpoints/iter_NNNNNNN), first",
    )


def _pct(x) -> str:
    return "     -" if x is None else f"{100 * x:5.1f}%"


def _ks(block: dict) -> str:
    return "  ".join(f"@{k} {_pct(v).strip()}" for k, v in block.items()) or "-"


def format_result(res: dict) -> str:
    """A plain-text table of one ``eval/<task>.json``: headline numbers, then count / share / accuracy per
    format for the greedy generations and for the samples."""
    greedy, sampled = res.get("greedy"), res.get("sampled")
    modes = [("greedy", greedy)] if greedy else []
    if sampled:
        modes.append((f"{sampled['n']} samples T={sampled['temperature']:g}", sampled))
    lines = [
        f"{res['task']}  step {res['step']}  {res['num_problems']} problems  ({' + '.join(m for m, _ in modes)})"
    ]
    lines.append(f"  pass@1 {'(greedy) ' if greedy else ''}{_pct(res['pass@1']).strip()}")
    if sampled:
        lines.append(f"  pass@k  {_ks(sampled['pass@k'])}")
        lines.append(f"  maj@k   {_ks(sampled['maj@k'])}")
    head = f"  {'format':<12}" + "".join(f" | {name[:22]:<22}" for name, _ in modes)
    sub = f"  {'':<12}" + "".join(f" | {'count':>6} {'share':>6} {'acc':>6}" + " " * 1 for _ in modes)
    lines += [head.rstrip(), sub.rstrip()]
    for fmt in FORMATS:
        cells = [b["per_format"][fmt] for _, b in modes]
        if not any(c["count"] for c in cells):
            continue
        row = f"  {fmt:<12}" + "".join(
            f" | {c['count']:>6} {_pct(c['share'])} {_pct(c['accuracy'])} " for c in cells
        )
        lines.append(row.rstrip())
    return "\n".join(lines)


def step_checkpoints(ckpt: str, steps: str) -> list[str]:
    """The checkpoint dirs of ``steps`` (comma-separated) next to ``ckpt`` (``.../checkpoints/iter_NNNNNNN``), in
    step order, without ``ckpt`` itself; a ConfigError naming a step that has no checkpoint."""
    from echo_megatron.config import ConfigError

    try:
        wanted = sorted({int(s) for s in steps.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--steps: expected comma-separated steps, e.g. 5,10,20; got {steps!r}") from None
    root = os.path.dirname(os.path.abspath(ckpt))
    out = []
    for step in wanted:
        path = os.path.join(root, f"iter_{step:07d}")
        if not os.path.isdir(path):
            have = sorted(d for d in os.listdir(root) if d.startswith("iter_"))
            raise ConfigError(f"--steps: no checkpoint for step {step} in {root} (there: {', '.join(have)})")
        if os.path.abspath(path) != os.path.abspath(ckpt):
            out.append(path)
    return out


def _precheck(path: str, overrides: list[str], out: str | None = None):
    """The run config with the overrides, checked before any model is built (cheap, clear errors).
    A transformers model (directory or hub id) is imported into OUT/base_import first."""
    from echo_megatron.checkpoint.base import is_hf_model, resolve_base
    from echo_megatron.config import ConfigError, load_config
    from echo_megatron.eval.run import check_eval_config, task_path
    from echo_megatron.eval.tasks import load_task
    from echo_megatron.rollout.loading import run_config_path

    if is_hf_model(path) and not out:
        raise ConfigError(f"{path}: evaluating a transformers model needs --out DIR (it is imported there)")
    ckpt = resolve_base(path, out or ".")
    cfg = load_config(run_config_path(ckpt), overrides)
    if not cfg.data.tokenizer.path:
        raise ConfigError(
            f"{ckpt}: the run has no tokenizer (data.tokenizer.path), so questions cannot be turned into "
            f"prompts; eval needs a run trained on real text"
        )
    check_eval_config(cfg.eval, list(cfg.eval.tasks))
    for task in cfg.eval.tasks:  # a missing or malformed task file fails now, not after loading the model
        load_task(task, path=task_path(cfg, task), max_problems=1)
    return ckpt, cfg


def run(args: argparse.Namespace) -> int:
    ckpt, _ = _precheck(args.checkpoint, list(args.overrides), args.out)
    earlier = step_checkpoints(ckpt, args.steps) if args.steps else []

    import torch.distributed as dist

    from echo_megatron.checkpoint import load_checkpoint, read_common_state
    from echo_megatron.distributed.init import destroy
    from echo_megatron.eval.generation import model_generator
    from echo_megatron.eval.run import evaluate
    from echo_megatron.rollout.loading import load_policy
    from echo_megatron.rundir import RunDir

    out = args.out or os.path.dirname(os.path.dirname(os.path.abspath(ckpt)))
    try:
        policy = load_policy(earlier[0] if earlier else ckpt, list(args.overrides))
        cfg = policy.cfg
        for i, path in enumerate([*earlier, ckpt]):
            if i:  # same run, same model: load the next checkpoint's weights into it
                load_checkpoint(path, [policy.model], load_rng=False)
                policy.model.eval()
            step = int(read_common_state(path).get("iteration", 0)) if i else policy.iteration
            generate = model_generator(policy.model, policy.tokenizer, cfg)
            results = evaluate(generate, list(cfg.eval.tasks), cfg, step=step, run_dir=out, checkpoint=path)
            if dist.get_rank() == 0:
                print(f"# {path} (step {step})")
                for task, res in results.items():
                    print(format_result(res))
                    print(f"  wrote {RunDir(out).eval_file(task)} and {RunDir(out).eval_generations(task)}")
        if dist.get_rank() == 0:
            print(f"metrics: {RunDir(out).metrics}")
    finally:
        destroy()
    return 0
