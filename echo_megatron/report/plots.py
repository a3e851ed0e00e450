"""Report figures (matplotlib, Agg, no pyplot state): one function per figure, each returning a Figure
or None when the run has no data for it. The data come from :mod:`echo_megatron.report.runs`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from echo_megatron.report.runs import (  # noqa: E402
    SHARE_THRESHOLD,
    Run,
    format_accuracy_series,
    format_share_series,
    primary_task,
    series,
)

FORMAT_COLORS = {
    "code": "#1f77b4",
    "code_interp": "#ff7f0e",
    "nl": "#2ca02c",
    "other": "#9a9a9a",
    "empty": "#d9d9d9",
}
WIDE = (6.4, 3.4)


def color(fmt: str) -> str | None:
    return FORMAT_COLORS.get(fmt)


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _stack_shares(ax, rows: Sequence[dict], legend: bool = True) -> bool:
    steps, shares = format_share_series(rows)
    if not shares:
        return False
    fmts = list(shares)
    ax.stackplot(steps, *[shares[f] for f in fmts], labels=fmts, colors=[color(f) for f in fmts], alpha=0.9)
    ax.axhline(SHARE_THRESHOLD, color="k", lw=0.6, ls=":")
    ax.set_ylim(0, 1)
    ax.set_xlim(min(steps), max(steps) if len(steps) > 1 else min(steps) + 1)
    if legend:
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return True


def format_share(run: Run) -> Figure | None:
    """Share of each output format among the RL samples per step (stacked area)."""
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    if not _stack_shares(ax, run.rl):
        return None
    ax.set(xlabel="RL step", ylabel="share of samples", title=f"{run.label}: output format share")
    return fig


def format_accuracy(run: Run) -> Figure | None:
    """Training accuracy of the samples in each format, per RL step."""
    steps, acc = format_accuracy_series(run.rl)
    if not acc:
        return None
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    for fmt, vals in acc.items():
        ax.plot(steps, vals, label=fmt, color=color(fmt), marker="." if len(steps) < 40 else None)
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="RL step", ylabel="accuracy", title=f"{run.label}: accuracy per format")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return fig


def reward_accuracy(run: Run) -> Figure | None:
    """Mean reward and accuracy of the RL samples per step."""
    lines = [(k, *series(run.rl, k)) for k in ("reward", "accuracy")]
    lines = [(k, s, v) for k, s, v in lines if any(not math.isnan(x) for x in v)]
    if not lines:
        return None
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    for key, steps, vals in lines:
        ax.plot(steps, vals, label=key)
    ax.set(xlabel="RL step", title=f"{run.label}: reward and accuracy")
    ax.legend(fontsize=8, frameon=False)
    return fig


def kl_entropy(run: Run) -> Figure | None:
    """KL to the reference policy and policy entropy per RL step, side by side."""
    present = [k for k in ("kl", "entropy") if any(not math.isnan(v) for v in series(run.rl, k)[1])]
    if not present:
        return None
    fig = Figure(figsize=(6.4, 2.8))
    for i, key in enumerate(present):
        ax = fig.add_subplot(1, len(present), i + 1)
        ax.plot(*series(run.rl, key), color="#7b3294" if key == "kl" else "#008837")
        ax.set(xlabel="RL step", title=key)
    fig.suptitle(run.label, fontsize=9)
    fig.tight_layout()
    return fig


def _k_curve(ev: dict, metric: str) -> tuple[list[int], list[float]]:
    pts = sorted(
        (int(k), float(v)) for k, v in (ev.get(metric) or {}).items() if str(k).isdigit() and v is not None
    )
    return [k for k, _ in pts], [v for _, v in pts]


def pass_at_k(run: Run) -> Figure | None:
    """pass@k (solid) and maj@k (dashed) against k for each evaluated task."""
    curves = {t: (_k_curve(ev, "pass@k"), _k_curve(ev, "maj@k")) for t, ev in sorted(run.evals.items())}
    curves = {t: c for t, c in curves.items() if c[0][0] or c[1][0]}
    if not curves:
        return None
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    for i, (task, ((pk, pv), (mk, mv))) in enumerate(curves.items()):
        c = f"C{i}"
        if pk:
            ax.plot(pk, pv, marker="o", color=c, label=f"{task} pass@k")
        if mk:
            ax.plot(mk, mv, marker="s", ls="--", color=c, label=f"{task} maj@k")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="k", ylabel="accuracy", title=f"{run.label}: pass@k / maj@k")
    ax.legend(fontsize=8, frameon=False)
    return fig


def pretrain_loss(run: Run) -> Figure | None:
    steps, loss = series(run.pretrain, "loss")
    if not any(not math.isnan(v) for v in loss):
        return None
    fig = Figure(figsize=WIDE)
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
    "pretrain_loss": pretrain_loss,
}


# ---- several runs ---------------------------------------------------------------------------------------


def _grid(n: int, cell: tuple[float, float] = (2.8, 2.0), max_cols: int = 4) -> tuple[Figure, int, int]:
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    return Figure(figsize=(cell[0] * cols + 1.2, cell[1] * rows + 0.6)), rows, cols


def share_small_multiples(runs: Sequence[Run]) -> Figure | None:
    """Format share over RL steps, one small stacked-area panel per run, same axes."""
    runs = [r for r in runs if format_share_series(r.rl)[1]]
    if not runs:
        return None
    fig, rows, cols = _grid(len(runs))
    handles: dict = {}
    for i, run in enumerate(runs):
        ax = fig.add_subplot(rows, cols, i + 1)
        _stack_shares(ax, run.rl, legend=False)
        ax.set_title(run.label, fontsize=8)
        ax.tick_params(labelsize=7)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="upper right", fontsize=8, frameon=False)
    fig.suptitle("output format share over RL steps", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    return fig


def accuracy_small_multiples(runs: Sequence[Run]) -> Figure | None:
    """Training accuracy per format over RL steps, one small panel per run."""
    runs = [r for r in runs if format_accuracy_series(r.rl)[1] or any("accuracy" in row for row in r.rl)]
    if not runs:
        return None
    fig, rows, cols = _grid(len(runs))
    for i, run in enumerate(runs):
        ax = fig.add_subplot(rows, cols, i + 1)
        steps, acc = format_accuracy_series(run.rl)
        for fmt, vals in acc.items():
            ax.plot(steps, vals, color=color(fmt), lw=1, label=fmt)
        ax.plot(*series(run.rl, "accuracy"), color="k", lw=1.4, label="all")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(run.label, fontsize=8)
        ax.tick_params(labelsize=7)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=8, frameon=False)
    fig.suptitle("accuracy per format (black: all samples) over RL steps", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.9, 0.97))
    return fig


def pass_at_k_compare(runs: Sequence[Run]) -> Figure | None:
    """pass@k against k on the primary task, one line per run."""
    task = primary_task(sorted({t for r in runs for t in r.evals}))
    lines = [(r.label, _k_curve(r.evals.get(task or "", {}), "pass@k")) for r in runs]
    lines = [(lab, c) for lab, c in lines if c[0]]
    if not lines:
        return None
    fig = Figure(figsize=WIDE)
    ax = fig.add_subplot()
    for lab, (ks, vals) in lines:
        ax.plot(ks, vals, marker="o", label=lab)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set(xlabel="k", ylabel="pass@k", title=f"{task}: pass@k by run")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    return fig


COMPARE_FIGURES = {
    "compare_format_share": share_small_multiples,
    "compare_accuracy": accuracy_small_multiples,
    "compare_pass_at_k": pass_at_k_compare,
}
