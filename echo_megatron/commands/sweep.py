"""``echo-megatron sweep GRID.yaml [--dry-run] [--out DIR]``: expand a grid into recipes.

``--dry-run`` lists every run with its base recipe, its overrides and the planner's estimate of its cost
(``cluster.plan.estimate_gpu_hours``), and writes nothing. Otherwise the recipes go to ``--out`` (default
``sweeps/<grid name>``) with ``runs.txt`` and ``sweep.json``; each recipe is checked by loading it.
"""

from __future__ import annotations

import argparse
import os

from echo_megatron.config import ConfigError
from echo_megatron.config.sweep import SweepRun


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid", metavar="GRID.yaml", help="sweep grid file (see recipes/paper/sweeps/)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their cost; write nothing")
    parser.add_argument(
        "--out", default=None, help="directory for the generated recipes (default sweeps/<grid>)"
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
    from echo_megatron.config.sweep import expand, load_grid, missing_bases, write_recipes

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
