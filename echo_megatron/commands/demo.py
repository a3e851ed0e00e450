"""``echo-megatron demo [--out DIR] [--all]``: the whole study on the embedded testbed, on CPU, in minutes.

Stages (each one a separate ``echo-megatron`` process, each resumable: rerunning skips finished work):
  1. testbed      generate the three-format arithmetic problems and train the numbers tokenizer
  2. preprocess   tokenize them into megatron indexed datasets (one source per format)
  3. pretrain     a ~2M-parameter GPT from scratch (recipes/demo/testbed.yaml)
  4. eval         the base on the held-out problems: accuracy and share per format
  5. rl           GRPO (and, with --all, PPO and Expert Iteration) from that base
  6. eval         the RL policies on the same problems, at log-spaced checkpoints (last/4, last/2, last)
  7. report       DIR/report.html with the format-share curves, and the headline
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from echo_megatron.checkpoint.dist import saved_iterations
from echo_megatron.checkpoint.schedule import log_spaced_checkpoints
from echo_megatron.config.loader import SHIPPED_RECIPES
from echo_megatron.rundir import RunDir

RECIPES = os.path.join(SHIPPED_RECIPES, "demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="where everything goes (default runs/demo)")
    parser.add_argument("--all", action="store_true", help="also run PPO and Expert Iteration")
    parser.add_argument("--recipes", default=RECIPES, help="directory with testbed.yaml and *_testbed.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every stage")


def _stage(n: int, total: int, title: str, args: list[str]) -> float:
    print(f"\n== [{n}/{total}] {title}\n   $ echo-megatron {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "echo_megatron", *args])
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        print(
            f"demo: stage '{title}' failed (exit {r.returncode}); fix it and rerun: finished stages are kept",
            file=sys.stderr,
        )
        raise SystemExit(r.returncode)
    print(f"   done in {dt:.0f}s", flush=True)
    return dt


def run(args: argparse.Namespace) -> int:
    out = os.path.abspath(args.out)
    data = os.path.join(out, "data")
    base = os.path.join(out, "base")
    tb = [f"testbed.out={data}", *args.overrides]
    rec = lambda name: os.path.join(args.recipes, name)  # noqa: E731
    algos = ["grpo", "ppo", "ei"] if args.all else ["grpo"]
    total = 5 + 2 * len(algos)
    t0 = time.perf_counter()
    times: dict[str, float] = {}
    k = 0

    def stage(key: str, title: str, argv: list[str]) -> None:
        nonlocal k
        k += 1
        times[key] = _stage(k, total, title, argv)

    stage("testbed", "testbed: problems in three formats + tokenizer", ["testbed", rec("testbed.yaml"), *tb])
    stage("preprocess", "preprocess: indexed datasets", ["preprocess", rec("testbed.yaml"), *tb])
    stage(
        "pretrain",
        "pretrain the base from scratch",
        ["pretrain", rec("testbed.yaml"), *tb, f"run_dir={base}"],
    )
    stage("eval_base", "evaluate the base", ["eval", base, *tb, "eval.tasks=[testbed]"])
    runs = []
    for algo in algos:
        run_dir = os.path.join(out, algo)
        runs.append(run_dir)
        stage(
            algo,
            f"RL: {algo} from the base",
            ["rl", rec(f"{algo}_testbed.yaml"), *tb, f"rl.base={base}", f"run_dir={run_dir}"],
        )
        steps = log_spaced_checkpoints(saved_iterations(RunDir(run_dir).checkpoints))
        at = f" at steps {', '.join(map(str, steps))} and the last" if steps else ""
        argv = ["eval", run_dir, *tb, "eval.tasks=[testbed]"] + (
            ["--steps", ",".join(map(str, steps))] if steps else []
        )
        stage(f"eval_{algo}", f"evaluate the {algo} policy{at}", argv)
    stage("report", "report", ["report", base, *runs, "--out", out])

    from echo_megatron.report.runs import headline

    print(
        f"\n== echo-megatron demo finished in {time.perf_counter() - t0:.0f}s "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})"
    )
    print(f"   base: {headline(base)}")
    for r in runs:
        print(f"   {os.path.basename(r)}: {headline(r)}")
    print(f"   report: {os.path.join(out, 'report.html')}")
    return 0
