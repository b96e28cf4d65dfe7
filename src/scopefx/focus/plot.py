"""Figures: the run's focus plot, focus-map heat maps, the calibration fit.

Each function draws into a given Matplotlib ``Axes`` or creates a ``Figure`` (no pyplot state,
no display needed) and returns the figure. Save it with ``fig.savefig(path)``; in Jupyter it
shows as an image, with or without ``%matplotlib inline``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._verdict import FLAGGED

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ._batch import FocusRecord
    from ._verdict import Calibration

__all__ = ["plot_calibration", "plot_focus_map", "plot_focus_maps", "plot_focus_series"]

VERDICT_COLOURS = {
    "in_focus": "#1b9e77",
    "partial": "#e6ab02",
    "out_of_focus": "#d95f02",
    "warmup": "#7570b3",
    "unverifiable": "#a6761d",
    "": "#999999",
}


def _axes(ax: Axes | None, size: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax  # type: ignore[return-value]
    from .._figure import new_figure

    fig = new_figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def plot_focus_series(
    records: Sequence[FocusRecord], *, ax: Axes | None = None, title: str | None = None
) -> Figure:
    """Feature density per section (log scale) in run order, coloured by verdict.

    Failed items are marked along the bottom; out-of-focus and partial sections are labelled.
    """
    fig, ax = _axes(ax, (9, 3.6))
    index = np.arange(len(records))
    density = np.array([r.density_per_mpx if r.ok else math.nan for r in records])
    ax.plot(index, density, color="#bbbbbb", lw=1, zorder=1)
    for verdict, colour in VERDICT_COLOURS.items():
        sel = np.array([r.ok and r.verdict == verdict for r in records], dtype=bool)
        if sel.any():
            label = verdict.replace("_", " ") or "no verdict"
            ax.scatter(index[sel], density[sel], s=22, color=colour, label=label, zorder=2)
    failed = np.array([not r.ok for r in records], dtype=bool)
    if failed.any():
        floor = np.nanmin(density) if np.isfinite(density).any() else 1.0
        ax.scatter(
            index[failed],
            np.full(failed.sum(), floor),
            marker="x",
            color="k",
            label="unreadable",
            zorder=3,
        )
    for i, r in enumerate(records):
        if r.ok and r.verdict in FLAGGED:
            ax.annotate(
                str(i),
                (i, density[i]),
                textcoords="offset points",
                xytext=(0, -12),
                ha="center",
                fontsize=7,
                color=VERDICT_COLOURS[r.verdict],
            )
    if np.isfinite(density).any() and np.nanmin(density) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("section (run order)")
    ax.set_ylabel("MHFD score per megapixel")
    ax.set_title(title or "MHFD focus score per section")
    ax.legend(loc="best", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def plot_focus_map(
    focus_map: np.ndarray,
    *,
    image: np.ndarray | None = None,
    cell_px: int = 256,
    ax: Axes | None = None,
    title: str | None = None,
    vmax: float | None = None,
) -> Figure:
    """Heat map of feature density per cell, over the image when one is given."""
    fig, ax = _axes(ax, (5, 4.2))
    rows, cols = focus_map.shape
    extent = (0, cols * cell_px, rows * cell_px, 0)
    if image is not None:
        ax.imshow(image, cmap="gray")
        extent = (0, image.shape[1], image.shape[0], 0)
    shown = ax.imshow(
        focus_map,
        cmap="magma",
        extent=extent,
        alpha=0.55 if image is not None else 1,
        vmin=0,
        vmax=vmax,
        interpolation="nearest",
    )
    fig.colorbar(shown, ax=ax, label="MHFD score per megapixel", shrink=0.85)
    ax.set_title(title or "focus map")
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def plot_focus_maps(records: Sequence[FocusRecord], *, max_maps: int = 12) -> Figure:
    """A montage of focus maps, flagged sections first, on a shared colour scale."""
    from .._figure import new_figure

    usable = [r for r in records if r.ok and r.focus_map is not None]
    order = sorted(usable, key=lambda r: r.verdict not in FLAGGED)[:max_maps]
    n = max(1, len(order))
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig = new_figure(figsize=(3.2 * cols, 3.0 * rows), layout="constrained")
    vmax = max((float(np.max(r.focus_map)) for r in order if r.focus_map is not None), default=1.0)
    shown: Any = None
    for k, record in enumerate(order):
        ax = fig.add_subplot(rows, cols, k + 1)
        assert record.focus_map is not None
        shown = ax.imshow(
            record.focus_map, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest"
        )
        name = record.path.rsplit("/", 1)[-1] + ("" if record.page is None else f"[{record.page}]")
        ax.set_title(
            f"{name}\n{record.verdict.replace('_', ' ')}",
            fontsize=8,
            color=VERDICT_COLOURS.get(record.verdict, "k"),
        )
        ax.set_xticks([])
        ax.set_yticks([])
    if shown is not None:
        fig.colorbar(shown, ax=fig.axes, label="MHFD score per megapixel", shrink=0.8)
    return fig


def plot_calibration(
    calibration: Calibration,
    defocus: Sequence[float],
    density: Sequence[float],
    *,
    ax: Axes | None = None,
) -> Figure:
    """The through-focus series and its fit ``log(density) = a - b |defocus - center|``."""
    fig, ax = _axes(ax, (5.5, 4))
    x = np.asarray(defocus, dtype=float)
    y = np.asarray(density, dtype=float)
    ax.scatter(x, y, color="#1b9e77", zorder=2, label="sections")
    grid = np.linspace(x.min(), x.max(), 200)
    fit = np.exp(calibration.intercept - calibration.slope * np.abs(grid - calibration.center))
    ax.plot(
        grid,
        fit,
        color="k",
        lw=1,
        label=f"fit: slope {calibration.slope:.3g}/{calibration.unit}, r = {calibration.r:.3f}",
    )
    ax.axhline(
        calibration.min_density,
        color="#d95f02",
        ls="--",
        lw=1,
        label=f"in focus down to |defocus| = {calibration.max_defocus:g} {calibration.unit}",
    )
    ax.set_yscale("log")
    ax.set_xlabel(f"defocus ({calibration.unit})")
    ax.set_ylabel("MHFD score per megapixel")
    ax.set_title("focus calibration")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig
