"""``echo-megatron sweep GRID.yaml [--dry-run] [--out DIR] [--run [--jobs N] [--quick]]``: expand a grid.

``--dry-run`` lists every run with its base recipe, its overrides and the planner's estimate of its cost
(``cluster.plan.estimate_gpu_hours``), and writes nothing. Otherwise the recipes go to ``--out`` (default
``sweeps/<grid name>``) with ``runs.txt`` and ``sweep.json``; each recipe is checked by loading it.

A study file (``bases`` + ``groups``, echo_megatron/config/study.py, e.g. recipes/demo/study.yaml) expands into
shared pretraining bases and the RL runs on them; ``--run`` runs it on this machine (echo_megatron/cluster/
local.py): the testbed and its indexed data once, every base (pretrain + eval), every RL run once its base is
done (rl + eval at log-spaced checkpoints), ``--jobs`` at a time, finished steps skipped. ``--quick`` keeps the
study's ``quick`` subset. ``echo-megatron report --study OUT`` then draws one figure per finding.
"""

from __future__ import annotations

import argparse
import os
import sys

from echo_megatron.config import ConfigError
from echo_megatron.config.loader import resolve_recipe
from echo_megatron.config.sweep import SweepRun


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", metavar="GRID.yaml", help="sweep grid file (see recipes/paper/sweeps/)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their cost; write nothing")
    parser.add_argument(
        "--out", default=None, help="directory for the generated recipes (default sweeps/<grid>)"
    )
    parser.add_argument("--run", action="store_true", help="a study: run it on this machine (resumable)")
    parser.add_argument("--jobs", type=int, default=1, help="with --run: steps at a time (default 1)")
    parser.add_argument("--quick", action="store_true", help="a study: only its `quick` subset")
    parser.add_argument(
        "--group", action="append", default=None, metavar="NAME", help="a study: only this group (repeatable)"
    )


def _fmt(v) -> str:
    return format(v, "g") if isinstance(v, float) else str(v)


def run_cost(run: SweepRun) -> float | None:
    """GPU-hours of one run of the grid from the planner; None when its base recipe is missing."""
    from echo_megatron.cluster.plan import estimate_gpu_hours
    from echo_megatron.config import load_config

    if run.base and not os.path.isfile(run.base):
        return None
    return float(estimate_gpu_hours(load_config(run.base, run.override_args())))


def run(args: argparse.Namespace) -> int:
    from echo_megatron.config.study import is_study
    from echo_megatron.config.sweep import expand, load_grid, missing_bases, write_recipes

    try:
        args.grid = resolve_recipe(args.grid)  # recipes/demo/study.yaml works from any folder
    except ConfigError:
        raise ConfigError(f"grid file not found: {args.grid}") from None
    if is_study(args.grid):
        return run_study(args)
    if args.run or args.quick or args.group:
        raise ConfigError(
            f"{args.grid}: --run, --quick and --group need a study file (bases + groups), not a grid"
        )
    grid = load_grid(args.grid)
    runs = expand(grid)
    missing = missing_bases(runs)
    shape = " x ".join(f"{a.name} {len(a.values)}" for a in grid.axes)
    print(f"grid {grid.name} ({os.path.relpath(grid.path)}): {len(runs)} runs = {shape}")
    if grid.fixed:
        print("every run sets: " + " ".join(f"{k}={_fmt(v)}" for k, v in grid.fixed.items()))
    if args.dry_run:
        costs = [run_cost(r) for r in runs]
        width = max(len(r.name) for r in runs)
        for i, (r, cost) in enumerate(zip(runs, costs), 1):
            base = os.path.relpath(r.base) if r.base else "(schema defaults)"
            flag = " (missing)" if r.base in missing else ""
            over = " ".join(f"{k}={_fmt(v)}" for k, v in r.overrides.items())
            cost_s = f"{cost:.1f} GPU-h" if cost is not None else "cost n/a"
            print(f"{i:>4}  {r.name:<{width}}  {cost_s:>12}  base={base}{flag}  {over}  -> {r.run_dir}")
        if all(c is not None for c in costs):
            print(f"total: {sum(costs):.1f} GPU-h")
        if missing:
            print("missing base recipes (create them before writing the sweep):")
            for m in missing:
                print(f"  {os.path.relpath(m)}")
        return 0
    if missing:
        raise ConfigError(
            "base recipe(s) not found: " + ", ".join(os.path.relpath(m) for m in missing) + " (see --dry-run)"
        )
    out = args.out or os.path.join("sweeps", grid.name)
    paths = write_recipes(grid, runs, out)
    print(f"wrote {len(paths)} recipes, runs.txt and sweep.json to {out}")
    print(f"report them with: echo-megatron report {os.path.dirname(runs[0].run_dir) or runs[0].run_dir}")
    return 0


def run_study(args: argparse.Namespace) -> int:
    from echo_megatron.cluster.local import LocalExecutor
    from echo_megatron.cluster.study import check_eval_tasks, study_steps, write_study
    from echo_megatron.config.study import load_study

    study = load_study(args.grid, quick=args.quick, only=args.group)
    check_eval_tasks(study)
    missing = sorted({r.base for r in study.runs if r.base and not os.path.isfile(r.base)})
    if missing:
        raise ConfigError("base recipe(s) not found: " + ", ".join(os.path.relpath(m) for m in missing))
    axes = lambda runs: " x ".join(  # noqa: E731
        f"{a} {len({r.axes[a] for r in runs})}" for a in (runs[0].axes if runs else {}) if a != "base"
    )
    print(
        f"study {study.name} ({os.path.relpath(study.path)}){' --quick' if args.quick else ''}"
        f"{''.join(f' --group {g}' for g in args.group or [])}: "
        f"{len(study.bases)} bases ({axes(study.bases)}), {len(study.rl)} RL runs; eval {', '.join(study.eval_tasks)}"
    )
    for g, names in study.groups.items():
        runs = [r for r in study.rl if r.name in names]
        print(f"  group {g}: {len(runs)} runs = bases {len({study.needs[n] for n in names})} x {axes(runs)}")
    if args.dry_run:
        width = max(len(r.name) for r in study.runs)
        print(f"   0  {'data':<{width}}  testbed + preprocess (once, from the first base's recipe)")
        for i, r in enumerate(study.runs, 1):
            after = study.needs.get(r.name, "data")
            over = " ".join(f"{k}={_fmt(v)}" for k, v in r.overrides.items() if k != "rl.base")
            print(
                f"{i:>4}  {r.name:<{width}}  after {after}  base={os.path.relpath(r.base)}  {over}  -> {r.run_dir}"
            )
        return 0
    out = args.out or os.path.join("sweeps", study.name)
    # every run's recipe and the whole study's manifest (the report reads it), whatever part of it runs now
    recipes = write_study(load_study(args.grid) if (args.quick or args.group) else study, out)
    print(f"wrote {len(recipes)} recipes and study.json to {out}")
    if not args.run:
        print(f"run them with: echo-megatron sweep {args.grid} --run [--jobs N]")
        return 0
    steps = study_steps(study, recipes)
    try:
        outcomes = LocalExecutor(out, jobs=args.jobs).run(steps)
    except KeyboardInterrupt:
        print(
            f"stopped; finished steps are kept: rerun the same command to go on ({out}/done/)",
            file=sys.stderr,
        )
        return 130
    failed = [o for o in outcomes if not o.ok]
    ran = [o for o in outcomes if o.ok and not o.skipped]
    print(
        f"study {study.name}: {len(ran)} steps run, {len(outcomes) - len(ran) - len(failed)} already done, {len(failed)} failed"
    )
    for o in failed:
        print(f"  FAILED {o.name}: {o.detail}")
    print(f"report: echo-megatron report --study {out} --out {os.path.join(out, 'report')}")
    return 1 if failed else 0
