"""Mosaic previews: a downsampled PNG of the fused image with tile outlines.

Outlines are coloured by each tile's focus score when the table carries one (or ``blend="focus"``
computed them), so soft tiles stand out at a glance; otherwise they are drawn in one colour.
Figures are made with :class:`matplotlib.figure.Figure` (no pyplot state).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._plan import FusionPlan, tile_corners

__all__ = ["plot_mosaic", "write_preview"]


def _pick_level(path: str, max_px: int) -> tuple[np.ndarray, int]:
    """The finest pyramid level whose longer side fits ``max_px`` (or the coarsest), read whole,
    and its factor relative to level 0. A TIFF mosaic (one level) is read and reduced here by
    2x means, as the pyramid would be; an RGB TIFF, (Y, X, 3) as its file says, is returned
    channels first as the OME-Zarr's levels are."""
    if path.lower().endswith((".tif", ".tiff")):
        from ..io import read_image, read_metadata

        data = np.asarray(read_image(path))
        if read_metadata(path).samples == "rgb":
            data = np.moveaxis(data, -1, 0)
        factor = 1
        while max(data.shape[-2:]) > max_px:
            h, w = (s // 2 * 2 for s in data.shape[-2:])
            data = data[..., :h, :w].reshape((*data.shape[:-2], h // 2, 2, w // 2, 2))
            data, factor = data.mean(axis=(-3, -1)), factor * 2
        return data, factor
    import zarr

    from ..io.confined import open_store

    group = zarr.open_group(store=open_store(path), mode="r")  # confined reads (no link out)
    levels = sorted(int(k) for k in group.array_keys() if k.isdigit())
    arrays = {lv: zarr.open_array(store=open_store(os.path.join(path, str(lv))), mode="r")
              for lv in levels}  # fmt: skip
    level = levels[-1]
    for lv in levels:
        if max(arrays[lv].shape[-2:]) <= max_px:
            level = lv
            break
    data = np.asarray(arrays[level][...])
    return data, 2**level


def plot_mosaic(
    image: np.ndarray,
    plan: FusionPlan | None = None,
    *,
    factor: int = 1,
    focus: Any = None,
    title: str | None = None,
) -> Any:
    """A figure of a (downsampled) mosaic with tile outlines.

    Parameters
    ----------
    image : (Y, X) or (C, Y, X) ndarray
        The mosaic (or a pyramid level of it). 3D volumes show their middle plane; channels
        show the first channel, except a mosaic of RGB tiles (``plan.samples_last`` 3), shown
        in colour.
    plan : FusionPlan, optional
        Draw the tiles' outlines (their transformed edges).
    factor : int
        Downsampling of ``image`` relative to the plan's output grid.
    focus : sequence of float, optional
        Per-tile focus scores colouring the outlines (default: the plan's, when every tile
        has one).
    title : str, optional
        Default: ``"mosaic, 1:S"``, ``S`` the mosaic's pixels per pixel of the figure at its
        dpi (``factor`` times the figure's own scaling of ``image``).

    Notes
    -----
    The figure has a fixed size (8 inches along the longer side, 120 dpi), so ``image`` is
    drawn scaled to it: scaled down, it is antialiased (``interpolation="antialiased"``: fine
    content such as a grid would alias to stripes), scaled up, its pixels are drawn as blocks.
    """
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    img = np.asarray(image, dtype=np.float32)
    spatial = plan.ndim if plan is not None else 2
    rgb = plan is not None and plan.samples_last == 3 and img.shape[: img.ndim - 2] == (3,)
    if rgb:  # one stretch for the three channels keeps the colour balance
        img = np.moveaxis(img, 0, -1)
    while img.ndim > 2 and not rgb:
        img = img[0] if img.ndim > spatial else img[img.shape[0] // 2]
    finite = img[np.isfinite(img)]
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1
    h, w = img.shape[:2]
    fig = Figure(figsize=(8, 8 * h / w + 0.6) if w >= h else (8 * w / h + 1.2, 8), dpi=120)
    ax = fig.add_subplot()
    if rgb:
        shown = np.clip((np.nan_to_num(img, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
        picture = ax.imshow(shown, interpolation="nearest")
    else:
        picture = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if plan is not None:
        polys = []
        for a, s in zip(plan.affines, plan.tile_shapes, strict=True):
            c = tile_corners(a, s)[:, -2:] / factor - (factor - 1) / (2 * factor)
            # corners come in product order (first face in 3D); go round the quad
            polys.append(c[[0, 1, 3, 2]][:, ::-1])  # (x, y) for matplotlib
        scores = np.asarray(plan.focus if focus is None else focus, dtype=float)
        coll = PolyCollection(polys, facecolors="none", linewidths=0.8)
        if np.all(np.isfinite(scores)):
            coll.set_array(scores)
            coll.set_cmap("viridis")
            ax.add_collection(coll)
            fig.colorbar(coll, ax=ax, fraction=0.04, label="focus (MHFD features)")
        else:
            coll.set_edgecolor("tab:orange")
            ax.add_collection(coll)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.apply_aspect()  # the axes as drawn: shrunk to the image's aspect, beside the colour bar
    drawn_px = ax.get_position().width * fig.get_figwidth() * fig.dpi
    if drawn_px < w:
        picture.set_interpolation("antialiased")
    # the title said 1:factor (the pyramid level's), of a picture then drawn 2.4x smaller
    ax.set_title(title or f"mosaic, {_scale(factor * w / drawn_px)}")
    ax.set_axis_off()
    return fig


def _scale(per_px: float) -> str:
    """``"1:2.4"`` for 2.4 mosaic pixels per pixel of the figure, ``"2:1"`` for 0.5."""

    def num(v: float) -> str:  # 2.4, 2, 12
        return f"{v:.1f}".removesuffix(".0") if v < 9.95 else f"{v:.0f}"

    if abs(per_px - 1) < 0.05:
        return "1:1"
    return f"1:{num(per_px)}" if per_px > 1 else f"{num(1 / per_px)}:1"


def write_preview(
    out_png: str | os.PathLike[str],
    mosaic: str | os.PathLike[str],
    plan: FusionPlan | None = None,
    *,
    max_px: int = 2048,
    focus: Any = None,
) -> str:
    """Save a preview PNG of an OME-Zarr mosaic from its smallest fitting pyramid level (or of
    a TIFF mosaic, reduced to fit)."""
    data, factor = _pick_level(os.fspath(mosaic), max_px)
    fig = plot_mosaic(data, plan, factor=factor, focus=focus)
    # at the figure's dpi (not savefig.dpi's), which the title's scale is of
    fig.savefig(os.fspath(out_png), bbox_inches="tight", dpi="figure")
    return os.fspath(out_png)
