"""One look for every report figure: one size, one set of fonts, legends outside the axes, one colour per format.

The format colours are keyed by the labels of :data:`echo_megatron.rewards.formats.FORMATS`, which are also the
names of the per-format metrics (``share/<fmt>``, ``acc/<fmt>`` in ``metrics.jsonl`` and TensorBoard, the
``per_format`` block of ``eval/<task>.json``), so a format has one name and one colour everywhere. The PNGs in
``docs/img/`` are written by the report with this module, so the README shows the same colours.

Every figure is built with :func:`figure` (a fixed size, constrained layout, no pyplot state) and saved without
``bbox_inches="tight"``, so all single figures come out at the same pixel size; :func:`legend_outside` puts the
legend in the right margin, where it can overlap neither the data nor a title.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

FORMAT_COLORS: dict[str, str] = {
    "code": "#1f77b4",  # blue
    "code_interp": "#ff7f0e",  # orange
    "nl": "#2ca02c",  # green
    "other": "#9a9a9a",  # grey
    "empty": "#d9d9d9",  # light grey
}
ACCURACY_COLOR = "#000000"  # accuracy drawn over format shares
METRIC_COLORS = {"reward": "#d62728", "accuracy": ACCURACY_COLOR, "kl": "#7b3294", "entropy": "#008837"}
FIGSIZE = (7.2, 3.0)  # inches, every single-panel figure (at DPI: 720 x 300 px)
CELL = (3.2, 2.3)  # one panel of a small-multiples grid
DPI = 100
RC: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.5,
}

F = TypeVar("F", bound=Callable[..., Any])


def color(fmt: str) -> str | None:
    """The colour of output format ``fmt`` (None for a label that is not a format: matplotlib's cycle)."""
    return FORMAT_COLORS.get(fmt)


def styled(fn: F) -> F:
    """Build the figure of ``fn`` under :data:`RC` (fonts, grid, spines are read when artists are created)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with matplotlib.rc_context(RC):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def figure(size: tuple[float, float] = FIGSIZE) -> Figure:
    """A new figure of ``size`` inches with constrained layout (room is made for outside legends)."""
    return Figure(figsize=size, dpi=DPI, layout="constrained")


def legend_outside(fig: Figure, ax=None, handles=None, labels=None) -> None:
    """The legend of ``ax`` (or the given handles) in the figure's right margin, top-aligned, no frame."""
    if handles is None:
        handles, labels = (ax or fig.axes[0]).get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", frameon=False)
