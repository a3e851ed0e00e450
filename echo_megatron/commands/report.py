"""``echo-megatron report RUN_DIR [RUN_DIR ...] --out DIR``: report.html + PNGs from run directories.

Reads only the run-directory layout (config.yaml, metrics.jsonl, eval/*.json, eval/steps/), so runs copied from
a cluster report the same. A directory holding run directories (a sweep) expands to them. ``--screenshot PNG``
renders the report in headless Chromium (echo_megatron/report/browser.py), e.g. for docs/img/demo_report.png.

``echo-megatron report --study DIR [--out OUT]``: a study written by ``echo-megatron sweep STUDY.yaml`` (its
``study.json``): OUT/study.html with one figure, table and measured verdict per finding of the Echo Chamber
paper (echo_megatron/report/study.py).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories (or a sweep dir)")
    parser.add_argument(
        "--study", default=None, metavar="DIR", help="a study's output dir (holds study.json)"
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: RUN_DIR/report for one run, else ./report)"
    )
    parser.add_argument("--title", default="echo-megatron report")
    parser.add_argument(
        "--screenshot",
        default=None,
        metavar="PNG",
        help="also save a 1280 x 1800 px screenshot of the report's top as headless Chromium renders it",
    )


def run(args: argparse.Namespace) -> int:
    from echo_megatron.report.html import write_report

    if args.study:
        return _study(args)
    if not args.run_dirs:
        print("echo-megatron report: give RUN_DIR(s) or --study DIR", file=sys.stderr)
        return 2
    out = args.out or (os.path.join(args.run_dirs[0], "report") if len(args.run_dirs) == 1 else "report")
    try:
        rep = write_report(args.run_dirs, out, title=args.title)
    except ValueError as e:
        print(f"echo-megatron report: {e}", file=sys.stderr)
        return 2
    width = max(len(k) for k in rep.headlines) if rep.headlines else 0
    for label, line in rep.headlines.items():
        print(f"{label:<{width}}  {line}")
    print(f"report: {os.path.abspath(rep.path)} ({len(rep.images)} figures)")
    return _screenshot(rep.path, args.screenshot)


def _study(args: argparse.Namespace) -> int:
    from echo_megatron.report.study import write_study_report

    if args.run_dirs:
        print("echo-megatron report: --study takes no RUN_DIR", file=sys.stderr)
        return 2
    try:
        rep = write_study_report(args.study, args.out or os.path.join(args.study, "report"))
    except ValueError as e:
        print(f"echo-megatron report: {e}", file=sys.stderr)
        return 2
    print(f"study report: {os.path.abspath(rep.path)} ({len(rep.images)} figures)")
    return _screenshot(rep.path, args.screenshot)


def _screenshot(page: str, png: str | None) -> int:
    if png:
        from echo_megatron.report.browser import screenshot

        try:
            print(f"screenshot: {screenshot(page, png)}")
        except RuntimeError as e:
            print(f"echo-megatron report: --screenshot: {e}", file=sys.stderr)
            return 1
    return 0
