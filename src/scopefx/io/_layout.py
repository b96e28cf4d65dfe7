"""What looks wrong with a tile layout, from its geometry alone (:func:`layout_problems`): no
overlap, tiles that overlap no other, a layout far larger than its tiles (positions in the wrong
unit), tiles at one position. Warned of when a table is fused and registered, and carried in
the run's summary.

A caller's table may hold thousands of rows at one position: every step here costs about
``n log n`` time and ``n`` memory whatever the layout, and each message names a few tiles and
counts the rest."""

from __future__ import annotations

import itertools
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

_NAMED_PER_GROUP = 3  # tiles named per group of tiles at one position; the rest are counted
_NAMED_GROUPS = 5  # groups named; the rest are counted
_CROWDED = 16  # a cell of SAME_POSITION_PX holding more tiles is searched by representatives
_WIDE = 1024  # a sweep window of more tiles is searched only among those not yet overlapping


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
        the same position, within :data:`SAME_POSITION_PX` (at most five groups, three tiles
        named in each and the rest counted: one tile under two names, positions not filled
        in, or images that are no tiles of the mosaic, such as a reduced-resolution copy or a
        slide's label image); tiles whose affine scales them by over :data:`SCALE_LIMIT`
        (or under its inverse; an affine in micrometres made a 32 GiB mosaic of two tiles).

    Notes
    -----
    About ``n log n`` time and ``n`` memory for ``n`` tiles, however many share a place (the
    table is a caller's: 20,000 rows at one position took 2 x 10^8 pairs and gigabytes).

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
        touched = _touched(lo, hi)
        alone = np.flatnonzero(~touched)
        if not touched.any():
            problems.append(
                f"no two of the {n} tiles overlap; check the positions and their unit "
                "(pixels, not micrometres?)"
            )
        elif len(alone):
            names = _names(table, alone, 5)
            problems.append(f"{len(alone)} tile(s) overlap no other tile: {names}")
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
            _names(table, group, _NAMED_PER_GROUP) + " at " + _at(a[group[0], :nd, nd])
            for group in same[:_NAMED_GROUPS]
        )
        more = len(same) - _NAMED_GROUPS
        more_text = f" and {more:,} more group(s)" if more > 0 else ""
        problems.append(
            f"{sum(map(len, same)):,} tiles share a position with another tile (within "
            f"{SAME_POSITION_PX} px): {groups}{more_text}; one tile listed under two names, "
            "positions not filled in, or images that are no tiles of the mosaic (a "
            "reduced-resolution copy, a label or overview image)? Check the positions"
        )
    scaled = _scaled(a[:, :nd, :nd])
    if len(scaled):
        k = int(scaled[0])
        factor = float(np.linalg.svd(a[k, :nd, :nd], compute_uv=False).max())
        problems.append(
            f"{len(scaled):,} tile(s) are scaled by their affine far from 1:1 "
            f"({_names(table, scaled, 3)}; {factor:.3g}x): the mosaic grows with the square "
            "of the scale; check the affines' units (pixels, not micrometres?)"
        )
    return problems


#: An affine whose linear part scales a tile beyond this factor (either way) is suspicious.
SCALE_LIMIT = 10.0


def _scaled(linear: np.ndarray) -> np.ndarray:
    """Tiles whose affine's linear part scales by more than :data:`SCALE_LIMIT` along some
    direction, or by less than its inverse."""
    if not len(linear):
        return np.zeros(0, dtype=int)
    sv = np.linalg.svd(linear, compute_uv=False)
    odd = (sv.max(axis=1) > SCALE_LIMIT) | (sv.min(axis=1) < 1 / SCALE_LIMIT)
    return np.flatnonzero(odd)


def _touched(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Which footprints ``[lo, hi)`` overlap another (by a positive width along every axis).

    A sweep along the axis on which the tiles' extents overlap least (a column of tiles is
    swept along its length). A tile is compared with every tile ahead of it within its extent,
    unless it is already known to overlap another and they are more than ``_WIDE``: then only
    with those not yet known to (a sorted list of them, rebuilt when half of it is stale), so
    tiles stacked at one place cost one comparison with all of them, not one each."""
    n = len(lo)
    sweeps = []
    for ax in range(lo.shape[1]):
        order = np.argsort(lo[:, ax], kind="stable")
        ends = np.searchsorted(lo[order, ax], hi[order, ax], side="left")
        sweeps.append((int(np.maximum(ends - np.arange(n) - 1, 0).sum()), ax, order, ends))
    _, _, order, ends = min(sweeps, key=lambda sweep: sweep[:2])
    lo_s, hi_s = lo[order], hi[order]
    touched = np.zeros(n, dtype=bool)
    open_ = np.arange(n)  # not yet touched when last rebuilt
    stale = 0
    ends_list = ends.tolist()
    for k in np.flatnonzero(ends > np.arange(n) + 1).tolist():
        end = ends_list[k]
        if end - k - 1 > _WIDE and touched[k]:
            if not len(open_):
                continue
            first, last = np.searchsorted(open_, (k + 1, end)).tolist()
            other = open_[first:last]
            other = other[~touched[other]]
            if not len(other):
                continue
        else:
            other = np.arange(k + 1, end)
        hit = np.all(
            (np.minimum(hi_s[k], hi_s[other]) - np.maximum(lo_s[k], lo_s[other])) > 0, axis=1
        )
        if hit.any():
            new = other[hit]
            stale += int(not touched[k]) + int(np.count_nonzero(~touched[new]))
            touched[k] = True
            touched[new] = True
            if 2 * stale > len(open_):
                open_, stale = np.flatnonzero(~touched), 0
    out = np.zeros(n, dtype=bool)
    out[order] = touched
    return out


def _same_position(offsets: np.ndarray) -> list[list[int]]:
    """Groups (tile indices, ascending; groups by their first tile) of two or more tiles whose
    offsets lie within :data:`SAME_POSITION_PX` of each other along every axis, chained.

    Offsets are binned in cells :data:`SAME_POSITION_PX` wide: the tiles of one cell are one
    group, and only neighbouring cells can hold tiles within reach of each other. Pairs within
    reach are sought among every tile of a cell of up to ``_CROWDED`` tiles, and among the
    tiles furthest out (along each axis and each diagonal) of a more crowded one, so the pairs
    found are at most a few dozen per tile: ``n log n`` time, ``n`` memory. Groups are exact
    unless a cell holds more than ``_CROWDED`` tiles and a chain leaves it through a diagonal
    neighbour from a tile not furthest out (thousands of tiles within half a pixel: the
    warning is about them either way)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n, nd = offsets.shape
    if n < 2:
        return []
    cells = np.floor(offsets / SAME_POSITION_PX)  # floats: no overflow on huge offsets
    _, first, cell, count = np.unique(
        cells, axis=0, return_index=True, return_inverse=True, return_counts=True
    )
    cell = cell.reshape(-1)
    crowded = count[cell] > _CROWDED
    keep = [np.flatnonzero(~crowded)]
    if crowded.any():
        members = np.flatnonzero(crowded)
        for d in itertools.product((-1, 0, 1), repeat=nd):
            if not any(d) or (nd > 2 and 0 in d and sum(map(abs, d)) > 1):
                continue  # the faces and, in 3-D, the corners (not the edges)
            score = offsets[members] @ np.asarray(d, dtype=float)
            by = np.lexsort((score, cell[members]))
            last = np.r_[cell[members][by][1:] != cell[members][by][:-1], True]
            keep.append(members[by][last])  # the tile furthest along d in each cell
    reps = np.unique(np.concatenate(keep))
    pairs = reps[
        cKDTree(offsets[reps]).query_pairs(SAME_POSITION_PX, p=np.inf, output_type="ndarray")
    ]
    pairs = pairs.reshape(-1, 2)
    rows = np.concatenate([pairs[:, 0], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], first[cell]])  # each tile to its cell's first tile
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    labels = connected_components(graph, directed=False)[1]
    size = np.bincount(labels)
    grouped = np.flatnonzero(size[labels] > 1)
    if not len(grouped):
        return []
    grouped = grouped[np.argsort(labels[grouped], kind="stable")]
    splits = np.flatnonzero(np.diff(labels[grouped])) + 1
    groups = [g.tolist() for g in np.split(grouped, splits)]
    return sorted(groups, key=lambda g: g[0])


def _names(table: TileTable, indices: Any, limit: int) -> str:
    """``a.tif, b.tif, c.tif and 1,234 more``: the first ``limit`` tiles named."""
    indices = sorted(int(i) for i in indices)
    names = ", ".join(_tile_name(table[i].ref) for i in indices[:limit])
    return names + (f" and {len(indices) - limit:,} more" if len(indices) > limit else "")


def _at(offset: np.ndarray) -> str:
    """A position in index order as the tables write it: ``x 10, y 0[, z 2]``."""
    return ", ".join(f"{ax} {v + 0.0:.6g}" for ax, v in zip("xyz", offset[::-1], strict=False))


def _tile_name(ref: str) -> str:
    """A tile's file name, with what follows ``::`` (``scan.ome.tif::tile/3``)."""
    path, sep, part = ref.partition(ZARR_SEP)
    return Path(path).name + sep + part
