"""Which tiles overlap, from geometry alone: each tile's footprint in the mosaic
(:func:`_footprints`) and the pairs whose footprints overlap (:func:`overlapping_pairs`, by
grid hashing), the first step of registration and of its QC report. A layout with far more
overlapping pairs than a mosaic can have (:data:`MAX_PAIRS_PER_TILE`) is refused as soon as
they are found, before registration measures them."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io import TileTable

__all__ = ["overlapping_pairs"]


_CHUNK = 250_000  # candidate pairs examined at once by the sweep (about 40 MB)

#: Overlapping pairs per tile above which a layout is refused. A tile of a raster scan
#: overlaps 8 neighbours (26 in 3-D: 13 pairs per tile); one overlapping its neighbours by
#: 80 % overlaps 80 (40 pairs per tile). More means tiles stacked at one place, whose pairs
#: grow with the square of their number (20,000 tiles at one position: 2 x 10^8 pairs).
MAX_PAIRS_PER_TILE = 64


def _shapes_array(table: TileTable, shapes: Any) -> np.ndarray:
    s = np.asarray(shapes, dtype=float)
    if s.shape != (len(table), table.ndim) or not np.all(s >= 1):
        raise ConfigError(
            f"shapes must give a spatial shape (all >= 1) per tile, shape "
            f"({len(table)}, {table.ndim}), got an array of shape {s.shape}"
        )
    return s


def _footprints(table: TileTable, shapes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes ``[lo, hi)`` of the transformed tile boxes ``[0, shape)``, index order."""
    nd = table.ndim
    a = table.affines
    unit = np.array(np.meshgrid(*[[0.0, 1.0]] * nd, indexing="ij")).reshape(nd, -1).T
    corners = unit[None] * shapes[:, None, :]  # (n, 2**nd, nd)
    mapped = np.einsum("nab,ncb->nca", a[:, :nd, :nd], corners) + a[:, None, :nd, nd]
    return mapped.min(axis=1), mapped.max(axis=1)


def overlapping_pairs(
    table: TileTable, shapes: Any, *, min_overlap_px: float = 16
) -> list[tuple[int, int, tuple[float, ...], tuple[float, ...]]]:
    """Pairs of tiles whose footprints overlap, from geometry alone.

    Parameters
    ----------
    table : TileTable
    shapes : array-like, shape (n_tiles, ndim)
        Spatial shape of each tile, index order.
    min_overlap_px : float
        Smallest overlap width along every axis (an axis on which a tile is thinner than this
        needs only that tile's full extent).

    Returns
    -------
    list of (i, j, lo, hi)
        ``i < j``, sorted; ``[lo, hi)`` is the overlap box in mosaic pixels, index order.

    Notes
    -----
    Footprints are bounding boxes of the transformed tile corners. Grid hashing (cells the size
    of the largest footprint) keeps this vectorised: 10,000 tiles take tens of milliseconds.

    Raises
    ------
    ConfigError
        More than :data:`MAX_PAIRS_PER_TILE` overlapping pairs per tile: tiles stacked at one
        place (no mosaic has so many). Refused as soon as that many are found, so the pairs
        held stay within that bound, whatever the layout.
    """
    if not min_overlap_px > 0:
        raise ConfigError(f"min_overlap_px must be > 0, got {min_overlap_px!r}")
    lo, hi = _footprints(table, _shapes_array(table, shapes))
    n, nd = lo.shape
    ext = hi - lo
    # Grid hashing: cells as large as the largest footprint, so overlapping tiles sit in the
    # same or adjacent cells (by the cell of their low corner).
    cell = np.maximum(ext.max(axis=0), 1e-6)
    key = np.floor((lo - lo.min(axis=0)) / cell).astype(np.int64) + 1
    dims = key.max(axis=0) + 2
    if np.prod(dims.astype(float)) > 2.0**62:
        raise ConfigError(f"tile footprints span {dims.tolist()} cells; check the positions")
    strides = np.cumprod(np.concatenate([dims[1:], [1]])[::-1])[::-1]
    lin = key @ strides
    order = np.argsort(lin, kind="stable")
    sorted_lin = lin[order]
    bound = MAX_PAIRS_PER_TILE * n
    found_i, found_j, n_found = [], [], 0
    for step in itertools.product((-1, 0, 1), repeat=nd):
        target = lin + np.dot(step, strides)
        first = np.searchsorted(sorted_lin, target, side="left")
        counts = np.searchsorted(sorted_lin, target, side="right") - first
        for block in np.array_split(np.arange(n), int(counts.sum()) // _CHUNK + 1):
            c = counts[block]  # blocks of tiles: a crowded cell cannot exhaust memory
            a = np.repeat(block, c)
            b = order[np.repeat(first[block] - np.cumsum(c) + c, c) + np.arange(len(a))]
            a, b = a[a < b], b[a < b]
            width = np.minimum(hi[a], hi[b]) - np.maximum(lo[a], lo[b])
            need = np.minimum(min_overlap_px, np.minimum(ext[a], ext[b])) - 1e-9
            keep = np.all((width >= need) & (width > 0), axis=1)
            found_i.append(a[keep])
            found_j.append(b[keep])
            n_found += int(keep.sum())
            if n_found > bound:
                _refuse_crowded(table, n_found, np.concatenate(found_i), np.concatenate(found_j))
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    sort = np.lexsort((j, i))
    i, j = i[sort], j[sort]
    olo = np.maximum(lo[i], lo[j]).tolist()
    ohi = np.minimum(hi[i], hi[j]).tolist()
    return list(zip(i.tolist(), j.tolist(), map(tuple, olo), map(tuple, ohi), strict=True))


def _refuse_crowded(table: TileTable, n_found: int, i: np.ndarray, j: np.ndarray) -> None:
    """Refuse a layout found to hold more than :data:`MAX_PAIRS_PER_TILE` pairs per tile,
    naming the tile found to overlap the most others."""
    n = len(table)
    per_tile = np.bincount(np.concatenate([i, j]), minlength=n)
    worst = int(np.argmax(per_tile))
    raise ConfigError(
        f"{n:,} tiles overlap at least {2 * n_found / n:,.0f} others on average ({n_found:,} "
        f"overlapping pairs found before stopping; tile {worst} ({table[worst].ref}) overlaps "
        f"{per_tile[worst]:,} or more), where a mosaic's tile overlaps its 8 neighbours (26 in "
        f"3-D), and more than {MAX_PAIRS_PER_TILE} pairs per tile is refused: the tile "
        "positions look wrong (many tiles at one place?). Check the table's positions; its "
        "layout warning names the tiles that share a position"
    )
