"""``echo-megatron report --study DIR``: the four findings of the Echo Chamber paper, one section each.

Reads ``DIR/study.json`` (written by ``echo-megatron sweep STUDY.yaml``) and the run dirs it lists, and writes
``OUT/study.html`` with a figure, a table and a measured verdict per finding:

1. echo chamber: format share over RL steps, one panel per base (mixture x scale): does one format take over?
2. mixture and scale decide the winner: the winning format per (mixture, scale) beside the base's share and
   greedy accuracy per format: is the winner the base's most frequent or its most accurate format?
3. refinement and transfer: greedy pass@1 on the held-out split and on the harder one, before and after RL;
   the winning format's own property (echo_megatron/report/properties.py) over RL steps
4. algorithms differ: accuracy and the dominant format's share over steps per algorithm, mean and spread over
   seeds; the same at a KL penalty

Each verdict is computed from the numbers shown, never written by hand.
"""

from __future__ import annotations

import glob
import html
import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from echo_megatron.report.html import CSS, Report, _img, _table
from echo_megatron.report.plots import _stack_shares, png_bytes
from echo_megatron.report.properties import PROPERTIES, property_series
from echo_megatron.report.runs import Run, eval_metric, final_shares, load_run, pct, series
from echo_megatron.report.style import ACCURACY_COLOR, CELL, FIGSIZE, color, figure, legend_outside, styled
from echo_megatron.rewards.formats import SOLUTION_FORMATS
from echo_megatron.rundir import RunDir, read_jsonl, write_text_atomic

MANIFEST = "study.json"
TAKEOVER = 0.9  # "one format took over": its share of the samples at the last RL step


@dataclass
class StudyRun:
    name: str
    kind: str  # base | rl
    group: str | None
    axes: dict[str, str]  # axis -> label (for RL runs: the base's axes too)
    base_run: str | None
    run: Run | None  # None while its run dir does not exist yet


@dataclass
class Study:
    name: str
    tasks: list[str]
    base_axes: list[str]
    runs: list[StudyRun]

    def base_of(self, r: StudyRun) -> StudyRun | None:
        return next((b for b in self.runs if b.name == r.base_run), None)

    def group(self, name: str) -> list[StudyRun]:
        return [r for r in self.runs if r.group == name and r.run is not None]


def load_study(study_dir: str) -> Study:
    path = os.path.join(study_dir, MANIFEST)
    if not os.path.isfile(path):
        raise ValueError(f"{study_dir}: no {MANIFEST} (write it with `echo-megatron sweep STUDY.yaml`)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    runs = []
    base_axes: list[str] = []
    bases = {r["name"]: r for r in manifest["runs"] if r["kind"] == "base"}
    for r in manifest["runs"]:
        axes = dict(r["axes"])
        if r["kind"] == "base":
            base_axes = base_axes or list(axes)
        else:
            axes = {**bases[r["base_run"]]["axes"], **axes}
        run = load_run(r["run_dir"], r["name"]) if os.path.isdir(r["run_dir"]) else None
        runs.append(StudyRun(r["name"], r["kind"], r.get("group"), axes, r.get("base_run"), run))
    return Study(manifest["name"], list(manifest.get("eval") or ["testbed"]), base_axes, runs)


# ---- numbers ------------------------------------------------------------------------------------------------


def winner(run: Run) -> tuple[str | None, float]:
    """The format with the largest share at the last RL step (None before any step) and that share."""
    shares = {f: s for f, s in final_shares(run).items() if f in SOLUTION_FORMATS}
    if not shares or not run.rl:
        return None, math.nan
    fmt = max(shares, key=lambda f: shares[f])
    return fmt, shares[fmt]


def base_formats(base: Run, task: str) -> dict[str, dict[str, float]]:
    """The base's share and accuracy per format on ``task``: of its samples at temperature (the format
    distribution RL starts from) when the eval drew them, else of its greedy answers."""
    ev = base.evals.get(task) or {}
    table = (ev.get("sampled") or ev.get("greedy") or ev).get("per_format") or {}
    return {
        f: {"share": float(t.get("share") or 0.0), "accuracy": float(t.get("accuracy") or 0.0)}
        for f, t in table.items()
        if f in SOLUTION_FORMATS and t.get("count")
    }


def samples_by_step(run: Run) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(RunDir(run.root).samples, "step_*.jsonl"))):
        rows = list(read_jsonl(path))
        if rows:
            out[int(rows[0].get("step", 0))] = rows
    return out


def switch_gain(run: Run, fmt: str) -> tuple[float, float]:
    """(accuracy gain per step during the switch, per step over the rest of the run), to test "the largest
    gain at the switch". The switch is the window in which ``fmt``'s share covers 10% to 90% of its rise
    (from the last step at or below 10% before the first step at or above 90%); NaNs when the share rose by
    less than 0.2 or the run is too short to tell."""
    steps, acc = series(run.rl, "accuracy")
    _, share = series(run.rl, f"share/{fmt}")
    if len(steps) < 6 or len(share) != len(steps):
        return math.nan, math.nan
    lo, hi = share[0], max(share)
    if hi - lo < 0.2:
        return math.nan, math.nan
    b = next(i for i, s in enumerate(share) if s >= lo + 0.9 * (hi - lo))
    a = max((i for i in range(b) if share[i] <= lo + 0.1 * (hi - lo)), default=0)
    if b <= a or b - a >= len(steps) - 1:
        return math.nan, math.nan
    during = acc[b] - acc[a]
    rest = (acc[-1] - acc[0]) - during
    return during / (b - a), rest / (len(steps) - 1 - (b - a))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _pm(values: Sequence[float]) -> str:
    m, s = _mean_std(values)
    return "—" if math.isnan(m) else f"{100 * m:.1f} ± {100 * s:.1f}%"


# ---- figures ------------------------------------------------------------------------------------------------


def _layout(study: Study, runs: list[StudyRun]) -> tuple[list[str], list[str]]:
    """Row labels (first base axis) and column labels (second), in the study's order."""
    rows_axis = study.base_axes[0] if study.base_axes else None
    cols_axis = study.base_axes[1] if len(study.base_axes) > 1 else None
    rows = list(dict.fromkeys(r.axes.get(rows_axis, "") for r in runs)) if rows_axis else [""]
    cols = list(dict.fromkeys(r.axes.get(cols_axis, "") for r in runs)) if cols_axis else [""]
    return rows, cols


def _cell(study: Study, r: StudyRun) -> tuple[str, str]:
    a = study.base_axes
    return (r.axes.get(a[0], "") if a else ""), (r.axes.get(a[1], "") if len(a) > 1 else "")


@styled
def echo_figure(study: Study, runs: list[StudyRun]) -> Figure | None:
    """Finding 1: stacked format share with accuracy over RL steps, rows = first base axis, cols = second."""
    runs = [r for r in runs if r.run and r.run.rl]
    if not runs:
        return None
    rows, cols = _layout(study, runs)
    fig = figure((max(FIGSIZE[0], CELL[0] * len(cols) + 1.4), max(FIGSIZE[1], CELL[1] * len(rows))))
    handles: dict = {}
    for r in runs:
        i, j = rows.index(_cell(study, r)[0]), cols.index(_cell(study, r)[1])
        ax = fig.add_subplot(len(rows), len(cols), i * len(cols) + j + 1)
        _stack_shares(ax, r.run.rl)
        ax.plot(*series(r.run.rl, "accuracy"), color=ACCURACY_COLOR, lw=1.2, label="accuracy")
        ax.set_title(" · ".join(x for x in _cell(study, r) if x))
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.supxlabel("RL step", fontsize=9)
    fig.supylabel("share of samples / accuracy", fontsize=9)
    legend_outside(fig, handles=list(handles.values()), labels=list(handles))
    return fig


@styled
def winner_figure(study: Study, runs: list[StudyRun]) -> Figure | None:
    """Finding 2: the winning format per cell (colour) with its final share and the base's greedy share and
    accuracy of that format written in the cell."""
    runs = [r for r in runs if r.run and r.run.rl]
    if not runs:
        return None
    rows, cols = _layout(study, runs)
    fig = figure((max(FIGSIZE[0], 1.9 * len(cols) + 2.2), max(FIGSIZE[1], 0.9 * len(rows) + 1.0)))
    ax = fig.add_subplot()
    task = study.tasks[0]
    for r in runs:
        fmt, share = winner(r.run)
        i, j = rows.index(_cell(study, r)[0]), cols.index(_cell(study, r)[1])
        base = study.base_of(r)
        bf = base_formats(base.run, task).get(fmt or "", {}) if base and base.run else {}
        ax.add_patch(_rect(j, i, color(fmt or "") or "#ffffff"))
        text = f"{fmt}\n{pct(share)} after RL\nbase: {pct(bf.get('share'))} of samples, {pct(bf.get('accuracy'))} right"
        ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7.5)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(rows), 0)
    ax.set_xticks([j + 0.5 for j in range(len(cols))], cols)
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows)
    ax.grid(False)
    names = study.base_axes + ["", ""]
    ax.set(xlabel=names[1], ylabel=names[0], title="the format RL converged to, per base")
    return fig


def _rect(x: float, y: float, fill: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x + 0.03, y + 0.05), 0.94, 0.9, facecolor=fill, alpha=0.35, edgecolor="none")


@styled
def transfer_figure(study: Study, runs: list[StudyRun]) -> Figure | None:
    """Finding 3: greedy pass@1 before (base) and after RL on every eval task, one group of bars per base."""
    runs = [r for r in runs if r.run and r.run.evals and study.base_of(r) and study.base_of(r).run]
    if not runs:
        return None
    fig = figure((max(FIGSIZE[0], 0.9 * len(runs) + 2.5), FIGSIZE[1]))
    ax = fig.add_subplot()
    width = 0.8 / (2 * len(study.tasks))
    palette = ["#9ecae1", "#3182bd", "#fdae6b", "#e6550d"]
    for x, r in enumerate(runs):
        base = study.base_of(r).run
        for t, task in enumerate(study.tasks):
            for k, (label, run) in enumerate((("base", base), ("after RL", r.run))):
                v = eval_metric(run, task, "pass@1")
                pos = x - 0.4 + width * (2 * t + k + 0.5)
                ax.bar(
                    pos,
                    v or 0.0,
                    width,
                    color=palette[(2 * t + k) % 4],
                    label=f"{task} {label}" if x == 0 else None,
                )
    ax.set_xticks(range(len(runs)), [" · ".join(x for x in _cell(study, r) if x) for r in runs], rotation=30)
    ax.set(
        ylabel="greedy pass@1", title="held-out accuracy before and after RL (testbed_hard: the harder split)"
    )
    ax.set_ylim(0, 1)
    legend_outside(fig, ax)
    return fig


@styled
def refinement_figure(study: Study, runs: list[StudyRun]) -> Figure | None:
    """Finding 3: the winning format's property over RL steps, one line per run (one panel per format)."""
    lines: dict[str, list[tuple[str, list[int], list[float]]]] = {}
    for r in runs:
        if not (r.run and r.run.rl):
            continue
        fmt, _ = winner(r.run)
        if fmt in PROPERTIES:
            steps, vals = property_series(samples_by_step(r.run), fmt)
            if len(steps) > 1:
                lines.setdefault(fmt, []).append((" · ".join(x for x in _cell(study, r) if x), steps, vals))
    if not lines:
        return None
    fig = figure((max(FIGSIZE[0], CELL[0] * len(lines) + 1.4), FIGSIZE[1]))
    for i, (fmt, items) in enumerate(sorted(lines.items())):
        ax = fig.add_subplot(1, len(lines), i + 1)
        for label, steps, vals in items:
            ax.plot(steps, vals, marker=".", label=f"{label} ({fmt})")
        ax.set(xlabel="RL step", ylabel=PROPERTIES[fmt].name, title=f"inside {fmt}")
    legend_outside(fig, handles=[h for a in fig.axes for h in a.get_legend_handles_labels()[0]],
                   labels=[lab for a in fig.axes for lab in a.get_legend_handles_labels()[1]])  # fmt: skip
    return fig


def _by(runs: list[StudyRun], axis: str) -> dict[str, list[StudyRun]]:
    out: dict[str, list[StudyRun]] = {}
    for r in runs:
        out.setdefault(r.axes.get(axis, r.name), []).append(r)
    return out


def _per_step(runs: list[StudyRun], key: str) -> dict[int, list[float]]:
    """RL step -> the values of ``key`` logged at that step by each run (seed) that has one."""
    per_step: dict[int, list[float]] = {}
    for r in runs:
        for s, v in zip(*series(r.run.rl, key)):
            if not math.isnan(v):
                per_step.setdefault(s, []).append(v)
    return per_step


def _final(runs: list[StudyRun], key: str) -> list[float]:
    """``key`` at the last RL step of each run that has RL rows."""
    return [r.run.rl[-1].get(key, math.nan) for r in runs if r.run.rl]


def _band(ax, runs: list[StudyRun], key: str, col: str, label: str, ls: str = "-") -> None:
    """Mean over runs (seeds) of ``key`` per step with a band of +- one standard deviation."""
    per_step = _per_step(runs, key)
    if not per_step:
        return
    steps = sorted(per_step)
    stats = [_mean_std(per_step[s]) for s in steps]
    mean = [m for m, _ in stats]
    ax.plot(steps, mean, color=col, ls=ls, label=f"{label} (n={len(runs)})")
    ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], color=col, alpha=0.15, lw=0)


ALGO_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


@styled
def algorithms_figure(groups: dict[str, list[StudyRun]], fmt: str | None) -> Figure | None:
    """Finding 4: per algorithm, accuracy and the dominant format's share over RL steps (mean +- sd over
    seeds); groups other than the first are drawn dashed (e.g. the KL group)."""
    if not any(runs for runs in groups.values()):
        return None
    fig = figure((max(FIGSIZE[0], 2 * CELL[0] + 1.4), FIGSIZE[1]))
    ax_acc, ax_share = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    algos = list(dict.fromkeys(a for runs in groups.values() for a in _by(runs, "algorithm")))
    for g, (gname, runs) in enumerate(groups.items()):
        for algo, members in _by([r for r in runs if r.run and r.run.rl], "algorithm").items():
            col = ALGO_COLORS[algos.index(algo) % len(ALGO_COLORS)]
            label = algo if g == 0 else f"{algo}, {gname}"
            if any((m.run.config.get("rl") or {}).get("algorithm") == "ei" for m in members):
                label += " (x: EI round)"  # EI logs one row per round of sample -> filter -> SFT
            _band(ax_acc, members, "accuracy", col, label, "-" if g == 0 else "--")
            if fmt:
                _band(ax_share, members, f"share/{fmt}", col, label, "-" if g == 0 else "--")
    ax_acc.set(xlabel="RL step", ylabel="sample accuracy", title="accuracy (mean ± sd over seeds)")
    ax_share.set(xlabel="RL step", ylabel=f"share of {fmt}", title=f"share of {fmt}")
    for ax in (ax_acc, ax_share):
        ax.set_ylim(0, 1)
    legend_outside(fig, ax_acc)
    return fig


# ---- verdicts -----------------------------------------------------------------------------------------------


def verdict_echo(runs: list[StudyRun]) -> str:
    done = [r for r in runs if r.run and r.run.rl]
    if not done:
        return "no RL run has finished yet."
    took = [r for r in done if winner(r.run)[1] >= TAKEOVER]
    gains = [switch_gain(r.run, winner(r.run)[0]) for r in done]
    at_switch = [d > rest for d, rest in gains if not math.isnan(d)]
    text = f"one format reached ≥ {TAKEOVER:.0%} of the samples in {len(took)} of {len(done)} runs"
    if at_switch:
        text += (
            f"; in {sum(at_switch)} of {len(at_switch)} runs whose winner rose by ≥ 20 points, accuracy rose faster "
            "per step during the switch (10% to 90% of that rise) than over the rest of the run"
        )
    return text + "."


def verdict_winners(study: Study, runs: list[StudyRun]) -> str:
    task = study.tasks[0]
    rows = []
    for r in runs:
        base = study.base_of(r)
        if not (r.run and r.run.rl and base and base.run):
            continue
        fmt, _ = winner(r.run)
        bf = base_formats(base.run, task)
        if fmt and bf:
            rows.append((r, fmt, fmt == max(bf, key=lambda f: bf[f]["share"]),
                         fmt == max(bf, key=lambda f: bf[f]["accuracy"])))  # fmt: skip
    if not rows:
        return "no RL run has finished yet."
    parts = [
        f"the winner was the base's most frequent format in {sum(x[2] for x in rows)} of {len(rows)} runs and its "
        f"most accurate in {sum(x[3] for x in rows)} of {len(rows)}"
    ]
    for axis in study.base_axes:
        counts = {}
        for r, fmt, _, _ in rows:
            counts.setdefault(r.axes.get(axis), {}).setdefault(fmt, 0)
            counts[r.axes.get(axis)][fmt] += 1
        parts.append(
            f"by {axis}: "
            + "; ".join(
                f"{lab}: " + ", ".join(f"{f} {n}" for f, n in sorted(c.items())) for lab, c in counts.items()
            )
        )
    return ". ".join(parts) + "."


def verdict_transfer(study: Study, runs: list[StudyRun]) -> str:
    parts = []
    for task in study.tasks:
        pairs = []
        for r in runs:
            base = study.base_of(r)
            if r.run and base and base.run:
                a, b = eval_metric(base.run, task, "pass@1"), eval_metric(r.run, task, "pass@1")
                if a is not None and b is not None:
                    pairs.append((a, b))
        if pairs:
            up = sum(b > a for a, b in pairs)
            parts.append(
                f"{task}: greedy pass@1 rose in {up} of {len(pairs)} runs, mean "
                f"{pct(statistics.fmean(a for a, _ in pairs))} → {pct(statistics.fmean(b for _, b in pairs))}"
            )
    return ("; ".join(parts) + ".") if parts else "no evaluated RL run yet."


def verdict_algorithms(groups: dict[str, list[StudyRun]], fmt: str | None, task: str) -> str:
    """Per algorithm of the first group: the dominant format's final share and the held-out pass@1, mean +- sd
    over seeds, and the step-wise spread of sample accuracy across seeds (mean over steps of the sd)."""
    if not groups or not fmt:
        return "no RL run of these groups has finished yet."
    first = next(iter(groups.values()))
    parts = []
    for algo, members in _by([r for r in first if r.run and r.run.rl], "algorithm").items():
        spread = [statistics.stdev(v) for v in _per_step(members, "accuracy").values() if len(v) > 1]
        parts.append(
            f"{algo}: {fmt} {_pm(_final(members, f'share/{fmt}'))} at the end, {task} pass@1 "
            f"{_pm([eval_metric(r.run, task, 'pass@1') for r in members])}"
            + (f", seed spread of accuracy {100 * statistics.fmean(spread):.1f} points" if spread else "")
        )
    return "; ".join(parts) + "." if parts else "no RL run of these groups has finished yet."


# ---- the page -----------------------------------------------------------------------------------------------


def write_study_report(study_dir: str, out_dir: str) -> Report:
    study = load_study(study_dir)
    os.makedirs(out_dir, exist_ok=True)
    images: list[str] = []
    groups = list(dict.fromkeys(r.group for r in study.runs if r.group))
    formats_group = groups[0] if groups else None
    fruns = study.group(formats_group) if formats_group else []
    algo_groups = {g: study.group(g) for g in groups[1:]}

    def emit(fig: Figure | None, name: str, alt: str) -> str:
        if fig is None:
            return "<p class='meta'>no data yet for this figure.</p>"
        png = png_bytes(fig)
        path = os.path.join(out_dir, f"{name}.png")
        with open(path + ".tmp", "wb") as f:
            f.write(png)
        os.replace(path + ".tmp", path)
        images.append(path)
        return _img(png, alt)

    task = study.tasks[0]
    table = []
    for r in fruns:
        base = study.base_of(r)
        bf = base_formats(base.run, task) if base and base.run else {}
        fmt, share = winner(r.run)
        row = {"run": r.name, **{a: r.axes.get(a, "") for a in study.base_axes}}
        for f in SOLUTION_FORMATS:
            if f in bf:
                row[f"base {f} share / acc"] = f"{pct(bf[f]['share'])} / {pct(bf[f]['accuracy'])}"
        row["winner after RL"] = f"{fmt} {pct(share)}" if fmt else "—"
        for t in study.tasks:
            b = eval_metric(base.run, t, "pass@1") if base and base.run else None
            row[f"{t} pass@1 base → RL"] = f"{pct(b)} → {pct(eval_metric(r.run, t, 'pass@1'))}"
        table.append(row)

    dominant = None
    all_algo = [r for runs in algo_groups.values() for r in runs if r.run and r.run.rl]
    if all_algo:
        winners = [winner(r.run)[0] for r in all_algo if winner(r.run)[0]]
        dominant = max(set(winners), key=winners.count) if winners else None
    algo_rows = []
    for gname, runs in algo_groups.items():
        for algo, members in _by([r for r in runs if r.run], "algorithm").items():
            finals = _final(members, "accuracy")
            shares = _final(members, f"share/{dominant}") if dominant else []
            algo_rows.append(
                {
                    "group": gname,
                    "algorithm": algo,
                    "seeds": str(len(members)),
                    f"{task} pass@1": _pm([eval_metric(r.run, task, "pass@1") for r in members]),
                    "final sample accuracy": _pm(finals),
                    f"final share of {dominant}": _pm(shares),
                }
            )

    sections = [
        f"<h1>{html.escape(study.name)}: the Echo Chamber findings</h1>",
        f"<p class='meta'>{len([r for r in study.runs if r.run])} of {len(study.runs)} runs present · eval "
        f"{', '.join(study.tasks)} · {html.escape(os.path.abspath(study_dir))}</p>",
        "<h2>1. RL converges to one pretraining format</h2>",
        f"<p class='headline'>{html.escape(verdict_echo(fruns))}</p>",
        emit(echo_figure(study, fruns), "study_echo", "format share over RL steps per base"),
        "<h2>2. Mixture and scale decide the winner</h2>",
        f"<p class='headline'>{html.escape(verdict_winners(study, fruns))}</p>",
        emit(winner_figure(study, fruns), "study_winners", "winning format per mixture and scale"),
        _table(table),
        "<h2>3. Refinement inside the format, and transfer to harder problems</h2>",
        f"<p class='headline'>{html.escape(verdict_transfer(study, fruns))}</p>",
        emit(transfer_figure(study, fruns), "study_transfer", "pass@1 before and after RL"),
        emit(refinement_figure(study, fruns), "study_refinement", "the winning format's property over steps"),
        "<h2>4. Algorithms differ; KL slows the collapse</h2>",
        f"<p class='headline'>{html.escape(verdict_algorithms(algo_groups, dominant, task))}</p>",
        emit(algorithms_figure(algo_groups, dominant), "study_algorithms", "per-algorithm curves over seeds"),
        _table(algo_rows),
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(study.name)}</title><style>{CSS}</style></head><body>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    path = os.path.join(out_dir, "study.html")
    write_text_atomic(path, page)
    return Report(path=path, headlines={}, images=images)
