"""Report figures (matplotlib, Agg, no pyplot state): one function per figure, each returning a Figure or None
when the runs hold no data for it. Size, fonts, legends and format colours come from
:mod:`echo_megatron.report.style` (one mapping, shared by every figure); the data from
:mod:`echo_megatron.report.runs`.

Per run: the paper's headline view (stacked format share over RL steps with accuracy on a second axis, as in
Fig. 2 of the Echo Chamber paper), accuracy per format, reward (only when it differs from accuracy: a binary
reward *is* the accuracy), KL and entropy in one figure, pass@k / maj@k per evaluated checkpoint, and pass@1
against pass@n over RL steps (the diversity view: pass@n falls late in RL as the distribution collapses, as Kirk
et al. 2024 found after RLHF). Across runs: the same views as small multiples, and every run's and checkpoint's
pass@k curve on one plot.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from echo_megatron.report.runs import (
    SHARE_THRESHOLD,
    Run,
    base_run,
    evals_by_step,
    format_accuracy_series,
    format_share_series,
    k_curve,
    primary_task,
    reward_differs,
    series,
)
from echo_megatron.report.style import (
    ACCURACY_COLOR,
    CELL,
    DPI,
    FIGSIZE,
    FORMAT_COLORS,
    METRIC_COLORS,
    color,
    figure,
    legend_outside,
    styled,
)


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes, at its own size (no tight bbox: every single figure has the same pixels)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _has(values: Sequence[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def _stack_shares(ax, rows: Sequence[dict]) -> bool:
    steps, shares = format_share_series(rows)
    if not shares:
        return False
    fmts = list(shares)
    ax.stackplot(steps, *[shares[f] for f in fmts], labels=fmts, colors=[color(f) for f in fmts], alpha=0.85)
    ax.axhline(SHARE_THRESHOLD, color="k", lw=0.6, ls=":")
    ax.set_ylim(0, 1)
    ax.set_xlim(min(steps), max(steps) if len(steps) > 1 else min(steps) + 1)
    ax.grid(False)
    return True


def _accuracy_twin(ax, rows: Sequence[dict]):
    """Accuracy (black) on a second y axis over a share plot; the twin axis, or None without accuracy."""
    steps, acc = series(rows, "accuracy")
    if not _has(acc):
        return None
    twin = ax.twinx()
    twin.plot(steps, acc, color=ACCURACY_COLOR, lw=1.6, label="accuracy (right axis)")
    twin.set_ylim(0, 1)
    twin.grid(False)
    twin.spines["right"].set_visible(True)
    return twin


@styled
def format_share(run: Run) -> Figure | None:
    """The headline view: share of each output format among the RL samples per step (stacked), with the
    samples' accuracy on the right axis."""
    fig = figure()
    ax = fig.add_subplot()
    if not _stack_shares(ax, run.rl):
        return None
    twin = _accuracy_twin(ax, run.rl)
    ax.set(
        xlabel="RL step", ylabel="share of samples", title=f"{run.label}: output format share and accuracy"
    )
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        twin.set_ylabel("accuracy")
        h, lab = twin.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    legend_outside(fig, handles=handles, labels=labels)
    return fig


@styled
def format_accuracy(run: Run) -> Figure | None:
    """Training accuracy of the samples in each format, per RL step."""
    steps, acc = format_accuracy_series(run.rl)
    if not acc:
        return None
    fig = figure()
    ax = fig.add_subplot()
    for fmt, vals in acc.items():
        ax.plot(steps, vals, label=fmt, color=color(fmt), marker="." if len(steps) < 40 else None)
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="RL step", ylabel="accuracy", title=f"{run.label}: accuracy per format")
    legend_outside(fig, ax)
    return fig


@styled
def reward_accuracy(run: Run) -> Figure | None:
    """Mean reward and accuracy of the RL samples per step: only when the reward differs from the accuracy
    (a binary reward equals it, and the accuracy is already on the format-share figure)."""
    if not reward_differs(run.rl):
        return None
    fig = figure()
    ax = fig.add_subplot()
    for key in ("reward", "accuracy"):
        steps, vals = series(run.rl, key)
        if _has(vals):
            ax.plot(steps, vals, label=key, color=METRIC_COLORS[key])
    ax.set(xlabel="RL step", title=f"{run.label}: reward and accuracy")
    legend_outside(fig, ax)
    return fig


@styled
def kl_entropy(run: Run) -> Figure | None:
    """KL to the reference policy and policy entropy per RL step, side by side in one figure (KL is logged when
    a KL penalty is on)."""
    present = [k for k in ("kl", "entropy") if _has(series(run.rl, k)[1])]
    if not present:
        return None
    fig = figure()
    for i, key in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        ax.plot(*series(run.rl, key), color=METRIC_COLORS[key])
        ax.set(xlabel="RL step", title=f"{run.label}: {key}" if len(present) == 1 else key)
    if len(present) > 1:
        fig.axes[0].set_title(f"{run.label}: kl")
    return fig


def _step_label(run: Run, ev: dict, many: bool) -> str:
    return f"{run.label} step {ev.get('step', '?')}" if many else run.label


def _step_colors(n: int, cmap: str) -> list:
    """``n`` shades of ``cmap`` from light to dark (later checkpoints darker)."""
    cm = colormaps[cmap]
    return [cm(0.45 + 0.5 * i / max(n - 1, 1)) for i in range(n)]


@styled
def pass_at_k(run: Run) -> Figure | None:
    """pass@k (solid) and maj@k (dashed) against k on the primary task, one colour per evaluated checkpoint."""
    task = primary_task(sorted(run.evals))
    evs = [ev for ev in evals_by_step(run, task) if k_curve(ev, "pass@k")[0] or k_curve(ev, "maj@k")[0]]
    if not evs:
        return None
    fig = figure()
    ax = fig.add_subplot()
    for ev, c in zip(evs, _step_colors(len(evs), "viridis_r")):
        lab = f"step {ev.get('step', '?')}" if len(evs) > 1 else task
        pk, pv = k_curve(ev, "pass@k")
        mk, mv = k_curve(ev, "maj@k")
        if pk:
            ax.plot(pk, pv, marker=".", color=c, label=f"{lab} pass@k")
        if mk:
            ax.plot(mk, mv, ls="--", color=c, label=f"{lab} maj@k")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    n = evs[-1].get("n")
    sub = f" (n {n}, T {evs[-1].get('temperature')})" if n and n > 1 else ""
    ax.set(xlabel="k", ylabel="accuracy", title=f"{run.label}: {task} pass@k and maj@k{sub}")
    legend_outside(fig, ax)
    return fig


def pass_over_steps_points(run: Run, task: str | None) -> list[tuple[int, dict]]:
    """(RL step, eval) of an RL run's evaluated checkpoints, the base's eval first at step 0 when it is here."""
    points = [(int(ev.get("step") or 0), ev) for ev in evals_by_step(run, task)]
    base = base_run(run) if run.rl else None
    if base is not None and task in base.evals:
        points = [(0, base.evals[task])] + [(s, ev) for s, ev in points if s > 0]
    return points


@styled
def pass_over_steps(run: Run) -> Figure | None:
    """pass@1 and pass@n (the largest k) on the primary task against the RL step of each evaluated checkpoint
    (step 0: the base): the diversity view, pass@1 rising while pass@n falls."""
    if not run.rl:
        return None
    task = primary_task(sorted(run.evals))
    points = [(s, ev) for s, ev in pass_over_steps_points(run, task) if k_curve(ev, "pass@k")[0]]
    if len(points) < 2:
        return None
    kmax = min(max(k_curve(ev, "pass@k")[0]) for _, ev in points)
    fig = figure()
    ax = fig.add_subplot()
    steps = [s for s, _ in points]
    for k, ls in ((1, "-"), (kmax, "--")):
        vals = [float((ev.get("pass@k") or {}).get(str(k), math.nan)) for _, ev in points]
        ax.plot(steps, vals, ls=ls, marker="o", color="k", label=f"pass@{k}")
    greedy = [float(ev["pass@1"]) if ev.get("pass@1") is not None else math.nan for _, ev in points]
    ax.plot(steps, greedy, ls=":", marker="s", color="#777777", label="pass@1 greedy")
    ax.set_ylim(-0.02, 1.02)
    ax.set(
        xlabel="RL step (0 = base)", ylabel="accuracy", title=f"{run.label}: {task} pass@1 and pass@{kmax}"
    )
    legend_outside(fig, ax)
    return fig


@styled
def sample_format_share(run: Run) -> Figure | None:
    """Per evaluated checkpoint (step 0: the base), the share of each output format among the eval samples
    (stacked bars) and their accuracy per format (dots, right axis): what pass@k is made of, per format."""
    task = primary_task(sorted(run.evals))
    points = [(s, ev.get("sampled") or ev) for s, ev in pass_over_steps_points(run, task)]
    points = [(s, b) for s, b in points if b.get("per_format") and (b.get("n") or 1) > 1]
    if len(points) < 2:
        return None
    fmts = [f for f in FORMAT_COLORS if any((b["per_format"].get(f) or {}).get("count") for _, b in points)]
    fig = figure()
    ax = fig.add_subplot()
    twin = ax.twinx()
    x = list(range(len(points)))
    bottom = [0.0] * len(points)
    for f in fmts:
        share = [float((b["per_format"].get(f) or {}).get("share") or 0.0) for _, b in points]
        ax.bar(x, share, bottom=bottom, width=0.6, color=color(f), alpha=0.85, label=f"{f} share")
        bottom = [a + b for a, b in zip(bottom, share)]
        acc = [(b["per_format"].get(f) or {}).get("accuracy") for _, b in points]
        acc = [math.nan if a is None else float(a) for a in acc]
        twin.plot(
            x, acc, ls="none", marker="D", ms=5, mec="k", mew=0.6, color=color(f), label=f"{f} accuracy"
        )
    ax.set_xticks(x, [f"{s}" if s else "base" for s, _ in points])
    ax.set_ylim(0, 1)
    twin.set_ylim(-0.02, 1.02)
    twin.grid(False)
    twin.spines["right"].set_visible(True)
    twin.set_ylabel("accuracy (dots)")
    n = points[-1][1].get("n")
    ax.set(
        xlabel="RL step", ylabel="share of samples", title=f"{run.label}: {task} samples (n {n}) per format"
    )
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    legend_outside(fig, handles=h1 + h2, labels=l1 + l2)
    return fig


@styled
def pretrain_loss(run: Run) -> Figure | None:
    steps, loss = series(run.pretrain, "loss")
    if not _has(loss):
        return None
    fig = figure()
    ax = fig.add_subplot()
    ax.plot(steps, loss)
    ax.set(xlabel="pretraining step", ylabel="loss", title=f"{run.label}: pretraining loss")
    return fig


RUN_FIGURES = {
    "format_share": format_share,
    "format_accuracy": format_accuracy,
    "reward_accuracy": reward_accuracy,
    "kl_entropy": kl_entropy,
    "pass_at_k": pass_at_k,
    "pass_over_steps": pass_over_steps,
    "sample_format_share": sample_format_share,
    "pretrain_loss": pretrain_loss,
}


# ---- several runs ---------------------------------------------------------------------------------------


def _grid(n: int, max_cols: int = 3) -> tuple[Figure, int, int]:
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    # never smaller than a single figure, so a one-run grid has the size of every other figure
    return figure((max(FIGSIZE[0], CELL[0] * cols + 1.4), max(FIGSIZE[1], CELL[1] * rows))), rows, cols


def _small_multiples(runs: Sequence[Run], draw: Callable[[Any, Run], None], ylabel: str) -> Figure:
    """One panel per run drawn by ``draw(ax, run)``, titled with the run's label, one legend for all panels."""
    fig, rows, cols = _grid(len(runs))
    handles: dict = {}
    for i, run in enumerate(runs):
        ax = fig.add_subplot(rows, cols, i + 1)
        draw(ax, run)
        ax.set_title(run.label)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.supxlabel("RL step", fontsize=9)
    fig.supylabel(ylabel, fontsize=9)
    legend_outside(fig, handles=list(handles.values()), labels=list(handles))
    return fig


@styled
def share_small_multiples(runs: Sequence[Run]) -> Figure | None:
    """Format share over RL steps (stacked) with accuracy (black), one small panel per run, same axes."""
    runs = [r for r in runs if format_share_series(r.rl)[1]]
    if not runs:
        return None

    def draw(ax, run: Run) -> None:
        _stack_shares(ax, run.rl)
        steps, acc = series(run.rl, "accuracy")
        if _has(acc):
            ax.plot(steps, acc, color=ACCURACY_COLOR, lw=1.2, label="accuracy")

    return _small_multiples(runs, draw, "share of samples / accuracy")


@styled
def accuracy_small_multiples(runs: Sequence[Run]) -> Figure | None:
    """Training accuracy per format over RL steps (black: all samples), one small panel per run."""
    runs = [r for r in runs if format_accuracy_series(r.rl)[1] or _has(series(r.rl, "accuracy")[1])]
    if not runs:
        return None

    def draw(ax, run: Run) -> None:
        steps, acc = format_accuracy_series(run.rl)
        for fmt, vals in acc.items():
            ax.plot(steps, vals, color=color(fmt), lw=1, label=fmt)
        ax.plot(*series(run.rl, "accuracy"), color=ACCURACY_COLOR, lw=1.4, label="all samples")
        ax.set_ylim(-0.02, 1.02)

    return _small_multiples(runs, draw, "accuracy per format")


RUN_CMAPS = ("Greys", "Reds", "Purples", "copper", "Blues", "Greens")


@styled
def pass_at_k_compare(runs: Sequence[Run]) -> Figure | None:
    """pass@k against k on the primary task for every run and every evaluated checkpoint of it, on one plot
    (one colour ramp per run, later checkpoints darker)."""
    task = primary_task(sorted({t for r in runs for t in r.evals}))
    per_run = [(r, [ev for ev in evals_by_step(r, task) if k_curve(ev, "pass@k")[0]]) for r in runs]
    per_run = [(r, evs) for r, evs in per_run if evs]
    if not per_run:
        return None
    fig = figure()
    ax = fig.add_subplot()
    for i, (run, evs) in enumerate(per_run):
        for ev, c in zip(evs, _step_colors(len(evs), RUN_CMAPS[i % len(RUN_CMAPS)])):
            ks, vals = k_curve(ev, "pass@k")
            ax.plot(ks, vals, marker=".", color=c, label=_step_label(run, ev, len(evs) > 1))
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="k", ylabel="pass@k", title=f"{task}: pass@k before and after RL")
    legend_outside(fig, ax)
    return fig


COMPARE_FIGURES = {
    "compare_pass_at_k": pass_at_k_compare,
    "compare_format_share": share_small_multiples,
    "compare_accuracy": accuracy_small_multiples,
}
