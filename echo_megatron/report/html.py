"""Write ``report.html`` (self-contained: every figure is a base64 PNG data URI, no scripts, no server)
plus the same figures as PNG files, for one or many run directories.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from echo_megatron.report import plots
from echo_megatron.report.runs import (
    Run,
    base_name,
    headline,
    load_runs,
    mixture,
    pct,
    primary_task,
    report_k,
    scale,
    table_row,
)

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; margin-top: 2em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; margin: 0.4em 0; display: block; }
.headline { font-size: 1.05em; background: #f6f8fa; padding: 0.5em 0.8em; border-left: 4px solid #2ca02c; }
.meta { color: #666; font-size: 0.85em; overflow-wrap: anywhere; }
.scroll { overflow-x: auto; max-width: 100%; }
"""


@dataclass
class Report:
    path: str  # the report.html written
    headlines: dict[str, str] = field(default_factory=dict)  # run label -> headline
    images: list[str] = field(default_factory=list)  # PNG files written


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "run"


def _table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = str(r.get(c, "—"))
            cls = ' class="num"' if re.fullmatch(r"[-\d.,%e+ ]+", v) else ""
            cells.append(f"<td{cls}>{html.escape(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f"<div class='scroll'>{table}</div>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_ks(ks: Sequence[int], n: int | None) -> list[int]:
    """The ks an eval table lists: 1, the powers of two, and n (the figure draws every k)."""
    return [k for k in ks if k == 1 or k & (k - 1) == 0 or k == n]


def _subset(ev: dict, sampled: dict) -> str:
    """`` on the first N problems`` when the samples covered fewer problems than greedy (eval.sample_problems)."""
    m = sampled.get("num_problems")
    return f" on the first {m} problems" if m is not None and m != ev.get("num_problems") else ""


def _eval_tables(run: Run) -> str:
    """Per task: one line naming the passes, a pass@k / maj@k table (one row per metric, one column per k:
    no metric twice) and the per-format table (greedy, and the samples when there are)."""
    parts = []
    for task, ev in sorted(run.evals.items()):
        greedy, sampled = ev.get("greedy"), ev.get("sampled")
        n = ev.get("n")
        passes = []
        if greedy or not sampled:
            passes.append(f"greedy pass@1 {pct(ev.get('pass@1'))}")
        if sampled:
            passes.append(
                f"{n} samples per problem at T {ev.get('temperature')}{_subset(ev, sampled)} for pass@k and "
                f"maj@k (unbiased)"
            )
        meta = f"step {ev.get('step', '—')} · {ev.get('num_problems', '—')} problems · " + " · ".join(passes)
        parts.append(f"<h3>eval: {html.escape(task)}</h3><p class='meta'>{html.escape(meta)}</p>")
        ks = sorted({int(k) for m in ("pass@k", "maj@k") for k in (ev.get(m) or {}) if str(k).isdigit()})
        if sampled and ks:
            shown = _table_ks(ks, n)
            rows = []
            for m in ("pass@k", "maj@k"):
                vals = ev.get(m) or {}
                rows.append({"k": m, **{str(k): pct(vals.get(str(k))) for k in shown}})
            parts.append(_table(rows))
        blocks = [("greedy", greedy)] if greedy else []
        if sampled:
            blocks.append((f"T {sampled.get('temperature')}", sampled))
        if not blocks:  # an eval file without mode blocks: its top-level per-format table
            blocks = [("", ev)]
        fmt_rows = []
        for f in (greedy or sampled or ev).get("per_format") or {}:
            cells = [(label, (b.get("per_format") or {}).get(f) or {}) for label, b in blocks]
            if not any(c.get("count") for _, c in cells):
                continue
            row = {"format": f}
            for label, c in cells:
                pre = f"{label} " if label else ""
                row[f"{pre}count"] = str(c.get("count", "—"))
                row[f"{pre}share"] = pct(c.get("share"))
                row[f"{pre}accuracy"] = pct(c.get("accuracy"))
            fmt_rows.append(row)
        parts.append(_table(fmt_rows))
    return "".join(parts)


def write_report(run_dirs: Sequence[str], out_dir: str, title: str = "echo-megatron report") -> Report:
    """Read the run dirs, write ``out_dir/report.html`` and the PNGs; return paths and headlines."""
    runs = load_runs(run_dirs)
    os.makedirs(out_dir, exist_ok=True)
    report = Report(path=os.path.join(out_dir, "report.html"))

    def emit(fig, rel: str, alt: str) -> str:
        if fig is None:
            return ""
        png = plots.png_bytes(fig)
        path = os.path.join(out_dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(png)
        report.images.append(path)
        return _img(png, alt)

    task = primary_task(sorted({t for r in runs for t in r.evals}))
    k = report_k(runs, task)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    body = [f"<h1>{html.escape(title)}</h1>"]
    body.append(
        f"<p class='meta'>{len(runs)} run(s), written {stamp}. Eval columns: task "
        f"{html.escape(task or '—')}. Step ≥90%: the first RL step at which the dominant format's share "
        f"reached 90%.</p>"
    )
    body.append("<h2>Comparison</h2>" + _table([table_row(r, task, k) for r in runs]))
    if len(runs) > 1:
        body.append("<h2>Across runs</h2>")
        for name, fn in plots.COMPARE_FIGURES.items():
            body.append(emit(fn(runs), f"{name}.png", name))
    used: set[str] = set()
    for run in runs:
        slug = _slug(run.label)
        while slug in used:
            slug += "_"
        used.add(slug)
        report.headlines[run.label] = line = headline(run)
        body.append(f"<h2 id='{html.escape(slug)}'>{html.escape(run.label)}</h2>")
        body.append(f"<p class='headline'>{html.escape(line)}</p>")
        facts = [os.path.abspath(run.root), f"scale {scale(run)}"]
        if base_name(run) != "—":
            facts.append(f"base {base_name(run)}")
        facts.append(f"mixture {mixture(run)}")
        body.append(f"<p class='meta'>{html.escape(' · '.join(facts))}</p>")
        for name, fn in plots.RUN_FIGURES.items():
            body.append(emit(fn(run), os.path.join(slug, f"{name}.png"), f"{run.label} {name}"))
        body.append(_eval_tables(run))
    doc = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n"
    )
    with open(report.path, "w", encoding="utf-8") as f:
        f.write(doc)
    return report
