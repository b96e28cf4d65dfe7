"""What looks wrong with a tile layout, from its geometry alone (:func:`layout_problems`): no
overlap, tiles that overlap no other, a layout far larger than its tiles (positions in the wrong
unit), tiles at one position. Warned of when a table is fused and registered, and carried in
the run's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._refsyntax import ZARR_SEP
from ._tiles import TileTable

__all__ = ["SAME_POSITION_PX", "SPARSE_LAYOUT_RATIO", "layout_problems"]

#: A layout whose bounding box is this many times the tiles' summed area is suspicious.
SPARSE_LAYOUT_RATIO = 4.0
#: Tiles whose pixel 0 lands within this many pixels (along every axis) share a position.
SAME_POSITION_PX = 0.5


def layout_problems(table: TileTable, shapes: Any) -> list[str]:
    """What looks wrong with a layout, from geometry alone: one message per problem.

    Parameters
    ----------
    table : TileTable
    shapes : array-like, shape (n_tiles, ndim)
        Spatial shape of each tile, index order.

    Returns
    -------
    list of str
        Empty when nothing looks wrong. Problems: no two tiles overlap; tiles that overlap no
        other (named, at most five); a bounding box more than :data:`SPARSE_LAYOUT_RATIO` times
        the tiles' summed area (typical of positions in the wrong unit); two or more tiles at
        the same position, within :data:`SAME_POSITION_PX` (named, at most five groups: one
        tile under two names, positions not filled in, or images that are no tiles of the
        mosaic, such as a reduced-resolution copy or a slide's label image).

    Examples
    --------
    >>> table = TileTable.from_positions(["a.tif", "b.tif"], [(0, 0), (5000, 0)])
    >>> layout_problems(table, [(100, 100)] * 2)[0]  # doctest: +ELLIPSIS
    'no two of the 2 tiles overlap...'
    """
    nd, n = table.ndim, len(table)
    s = np.asarray(shapes, dtype=float).reshape(n, nd)
    a = table.affines
    unit = np.array(np.meshgrid(*[[0.0, 1.0]] * nd, indexing="ij")).reshape(nd, -1).T
    corners = np.einsum("nab,ncb->nca", a[:, :nd, :nd], unit[None] * s[:, None, :])
    corners += a[:, None, :nd, nd]
    lo, hi = corners.min(axis=1), corners.max(axis=1)
    problems = []
    if n > 1:
        order = np.argsort(lo[:, -1], kind="stable")
        lo_s, hi_s = lo[order], hi[order]
        touched = np.zeros(n, dtype=bool)
        for k in range(n):  # sweep along the last axis (x)
            end = int(np.searchsorted(lo_s[:, -1], hi_s[k, -1], side="left"))
            if end <= k + 1:
                continue
            other = slice(k + 1, end)
            hit = np.all(
                (np.minimum(hi_s[k], hi_s[other]) - np.maximum(lo_s[k], lo_s[other])) > 0, axis=1
            )
            if hit.any():
                touched[k] = True
                touched[np.arange(k + 1, end)[hit]] = True
        alone = order[~touched]
        if not touched.any():
            problems.append(
                f"no two of the {n} tiles overlap; check the positions and their unit "
                "(pixels, not micrometres?)"
            )
        elif len(alone):
            names = ", ".join(_tile_name(table[int(i)].ref) for i in sorted(alone)[:5])
            more = f" and {len(alone) - 5} more" if len(alone) > 5 else ""
            problems.append(f"{len(alone)} tile(s) overlap no other tile: {names}{more}")
    box = float(np.prod(hi.max(axis=0) - lo.min(axis=0)))
    area = float(np.sum(np.prod(hi - lo, axis=1)))
    if n > 1 and box > SPARSE_LAYOUT_RATIO * area:
        extent = " x ".join(f"{v:.0f}" for v in (hi.max(axis=0) - lo.min(axis=0))[::-1])
        problems.append(
            f"the layout spans {extent} px, {box / area:.0f} times the tiles' summed area; "
            "check the positions and their unit"
        )
    same = _same_position(a[:, :nd, nd])
    if same:
        groups = "; ".join(
            ", ".join(_tile_name(table[i].ref) for i in group) + " at " + _at(a[group[0], :nd, nd])
            for group in same[:5]
        )
        more = f" and {len(same) - 5} more group(s)" if len(same) > 5 else ""
        problems.append(
            f"{sum(map(len, same))} tiles share a position with another tile (within "
            f"{SAME_POSITION_PX} px): {groups}{more}; one tile listed under two names, positions "
            "not filled in, or images that are no tiles of the mosaic (a reduced-resolution "
            "copy, a label or overview image)? Check the positions"
        )
    return problems


def _same_position(offsets: np.ndarray) -> list[list[int]]:
    """Groups (tile indices, ascending; groups by their first tile) of two or more tiles whose
    offsets lie within :data:`SAME_POSITION_PX` of each other along every axis, chained."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(offsets)
    if n < 2:
        return []
    pairs = cKDTree(offsets).query_pairs(SAME_POSITION_PX, p=np.inf, output_type="ndarray")
    if not len(pairs):
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def _at(offset: np.ndarray) -> str:
    """A position in index order as the tables write it: ``x 10, y 0[, z 2]``."""
    return ", ".join(f"{ax} {v + 0.0:.6g}" for ax, v in zip("xyz", offset[::-1], strict=False))


def _tile_name(ref: str) -> str:
    """A tile's file name, with what follows ``::`` (``scan.ome.tif::tile/3``)."""
    path, sep, part = ref.partition(ZARR_SEP)
    return Path(path).name + sep + part
