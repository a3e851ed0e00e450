"""``echo-megatron report RUN_DIR [RUN_DIR ...] --out DIR``: report.html + PNGs from run directories.

Reads only the run-directory layout (config.yaml, metrics.jsonl, eval/*.json, eval/steps/), so runs copied from
a cluster report the same. A directory holding run directories (a sweep) expands to them. ``--screenshot PNG``
renders the report in headless Chromium (echo_megatron/report/browser.py), e.g. for docs/img/demo_report.png.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (or a sweep dir)")
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
    if args.screenshot:
        from echo_megatron.report.browser import screenshot

        try:
            print(f"screenshot: {screenshot(rep.path, args.screenshot)}")
        except RuntimeError as e:
            print(f"echo-megatron report: --screenshot: {e}", file=sys.stderr)
            return 1
    return 0
