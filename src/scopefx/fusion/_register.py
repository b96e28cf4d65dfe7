"""Registration of mosaic tiles from their overlaps (``scopefx fuse --register``).

Each pair of tiles whose footprints overlap is measured by phase correlation of the two overlap
crops; a sparse weighted least-squares solve then turns the pairwise shifts into one translation
correction per tile. Transforms follow :mod:`scopefx.io._tiles`: homogeneous affines in array
index order (``(y, x)`` or ``(z, y, x)``), tile index -> mosaic index.
"""

from __future__ import annotations

import collections
import csv
import itertools
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from ..errors import ConfigError
from ..io import TileTable, read_image, read_metadata, translation

__all__ = ["PairResult", "Registration", "overlapping_pairs", "register"]

logger = logging.getLogger(__name__)

_UPSAMPLE = 20  # sub-pixel resolution of the peak search: 1 / 20 px
_LOWPASS = 0.25  # Gaussian weight on the whitened spectrum (sigma, cycles/px): damps aliasing
_CANDIDATES = 4  # phase-correlation peaks checked by cross-correlation
_CHUNK = 4_000_000  # candidate pairs examined at once by the sweep


@dataclass(frozen=True)
class PairResult:
    """What one overlap measured.

    Attributes
    ----------
    i, j : int
        Tile indices, ``i < j``.
    shift_px : tuple of float
        Correction of tile ``j`` relative to tile ``i`` beyond what the current transforms
        predict, index order, mosaic pixels (NaN when the overlap holds no content).
    quality : float
        Normalised cross-correlation (0..1) of the two overlap crops after the shift.
    overlap_px : tuple of int
        Size of the overlap box that was compared, index order.
    used : bool
        Kept by the global solve (False: quality below ``min_quality``, or an outlier).
    residual_px : float
        ``|(c_j - c_i) - shift|`` after the solve; NaN when the shift was not measurable.
    """

    i: int
    j: int
    shift_px: tuple[float, ...]
    quality: float
    overlap_px: tuple[int, ...]
    used: bool
    residual_px: float


@dataclass(frozen=True, eq=False)
class Registration:
    """The refined tile table and the evidence behind it.

    Attributes
    ----------
    table : TileTable
        Each affine's translation column corrected; the linear parts are unchanged.
    pairs : tuple of PairResult
        Every overlapping pair, sorted by ``(i, j)``.
    corrections_px : ndarray, shape (n_tiles, ndim)
        Correction added to each tile's translation, index order, mosaic pixels.
    """

    table: TileTable
    pairs: tuple[PairResult, ...]
    corrections_px: np.ndarray

    @property
    def rms_residual_px(self) -> float:
        """Root-mean-square residual over the used pairs (NaN when none was used)."""
        res = [p.residual_px for p in self.pairs if p.used]
        return float(np.sqrt(np.mean(np.square(res)))) if res else math.nan

    def pairs_to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write ``i,j,ref_i,ref_j,dx,dy[,dz],quality,used,residual_px`` (x, y order)."""
        axes = ["dx", "dy", "dz"][: self.table.ndim]
        refs = self.table.refs

        def num(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["i", "j", "ref_i", "ref_j", *axes, "quality", "used", "residual_px"])
            for p in self.pairs:
                shift = [num(v) for v in p.shift_px[::-1]]
                w.writerow([p.i, p.j, refs[p.i], refs[p.j], *shift, num(p.quality), p.used,
                            num(p.residual_px)])  # fmt: skip


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
    found_i, found_j = [], []
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
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    sort = np.lexsort((j, i))
    i, j = i[sort], j[sort]
    olo = np.maximum(lo[i], lo[j]).tolist()
    ohi = np.minimum(hi[i], hi[j]).tolist()
    return list(zip(i.tolist(), j.tolist(), map(tuple, olo), map(tuple, ohi), strict=True))


def _outer(profiles: Sequence[np.ndarray]) -> np.ndarray:
    """The separable N-D array ``p0[:, None, ...] * p1[None, :, ...] * ...``, float32."""
    out = np.ones((), dtype=np.float32)
    for p in profiles:
        out = np.multiply.outer(out, p.astype(np.float32))
    return out


def _tukey(n: int) -> np.ndarray:
    """Window flat in the middle, a Hann ramp over 25% at each end."""
    edge = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)) / (0.25 * n)
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0, 1))


def _freqs(shape: Sequence[int]) -> list[np.ndarray]:
    """Frequencies (cycles per pixel) of each axis of ``scipy.fft.rfftn``'s output."""
    return [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]


def _refine(half: np.ndarray, shape: Sequence[int], peak: np.ndarray) -> np.ndarray:
    """Sub-pixel peak by a local upsampled DFT (Guizar-Sicairos et al. 2008) around ``peak``.

    ``half`` is an ``rfftn`` spectrum: the other half is its conjugate, so the real part of the
    sum with the interior of the last axis counted twice is the full inverse DFT.
    """
    size, k = math.ceil(1.5 * _UPSAMPLE), np.arange(half.shape[-1])
    centre, data = size // 2, half * np.where((k == 0) | (2 * k == shape[-1]), 1, 2).astype("f4")
    for ax, f in reversed(list(enumerate(_freqs(shape)))):
        t = peak[ax] + (np.arange(size) - centre) / _UPSAMPLE
        kernel = np.exp(2j * np.pi * t[:, None] * f[None, :]).astype(np.complex64)
        data = np.einsum("uk,...k->u...", kernel, data)  # no BLAS: no threads to contend
    up = np.unravel_index(int(np.argmax(data.real)), data.shape)
    return peak + (np.asarray(up) - centre) / _UPSAMPLE


def _ncc(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None, q: np.ndarray) -> float:
    """Normalised cross-correlation of ``a(m + q)`` and ``b(m)`` on their common part."""
    sa = tuple(slice(max(0, k), n + min(0, k)) for k, n in zip(q, a.shape, strict=True))
    sb = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(q, a.shape, strict=True))
    x, y = a[sa], b[sb]
    if valid is not None:
        keep = valid[sa] & valid[sb]
        x, y = x[keep], y[keep]
    if x.size < 16:
        return 0.0
    x, y = x - np.float32(x.mean(dtype=np.float64)), y - np.float32(y.mean(dtype=np.float64))
    sums = [float(np.sum(u * v, dtype=np.float64)) for u, v in ((x, y), (x, x), (y, y))]
    return float(np.clip(sums[0] / math.sqrt(sums[1] * sums[2]), 0, 1)) if sums[0] > 0 else 0.0


def _measure(a: np.ndarray, b: np.ndarray, max_shift: float) -> tuple[np.ndarray, float]:
    """Shift ``d`` with ``b(m) ~ a(m + d)`` by windowed phase correlation, and its quality.

    NaN marks pixels outside a tile; a blank or too small overlap gives NaN and quality 0.
    """
    from scipy import fft, ndimage

    nd, valid = a.ndim, None
    if np.isnan(a).any() or np.isnan(b).any():
        valid = np.isfinite(a) & np.isfinite(b)
        a, b = np.nan_to_num(a), np.nan_to_num(b)
    if min(a.shape) < 2 or (valid is not None and valid.sum() < 16):
        return np.full(nd, np.nan), 0.0
    crops = []
    for x in (a, b):
        m = np.float32(x[valid].mean() if valid is not None else x.mean())
        x = x - m if valid is None else np.where(valid, x - m, np.float32(0))
        if np.abs(x).max() <= 1e-6 * (abs(m) + 1e-12):
            return np.full(nd, np.nan), 0.0  # a blank crop: nothing to measure
        crops.append(x * _outer([_tukey(n) for n in x.shape]))
    cross = fft.rfftn(crops[0]) * np.conj(fft.rfftn(crops[1]))
    lowpass = _outer([np.exp(-0.5 * (f / _LOWPASS) ** 2) for f in _freqs(a.shape)])
    cross *= lowpass / np.maximum(np.abs(cross), 1e-30 + 1e-12 * np.abs(cross).max())
    corr = fft.fftshift(fft.irfftn(cross, s=a.shape))  # shift 0 at index n // 2
    centre, reach = np.array(a.shape) // 2, int(max_shift)
    first = centre - np.minimum(reach, centre)
    sub = corr[tuple(map(slice, first, centre + reach + 1))]  # the allowed shifts
    local_max = np.flatnonzero(sub == ndimage.maximum_filter(sub, size=3, mode="nearest"))
    top = local_max[np.argsort(sub.flat[local_max])[::-1][:_CANDIDATES]]
    peaks = [np.array(np.unravel_index(f, sub.shape)) + first - centre for f in top]
    peak = max(peaks, key=lambda c: _ncc(a, b, valid, c)).astype(float)  # best of a few peaks
    shift = _refine(cross, a.shape, peak)
    return shift, _ncc(a, b, valid, np.round(shift).astype(int))


class _Plan(NamedTuple):
    """How to cut pair ``(i, j)``: a box of the mosaic grid, ``size`` pixels from ``box_lo``."""

    i: int
    j: int
    box_lo: np.ndarray  # int
    size: tuple[int, ...]
    sliced: bool  # True: both tiles are translations, cut at their rounded offsets
    adjust: np.ndarray  # added to the crop-level shift to give the correction


def _plan(table: TileTable, shapes: np.ndarray, i: int, j: int, lo: Any, hi: Any) -> _Plan:
    ti, tj = table[i], table[j]
    if ti.is_translation and tj.is_translation:
        r_i, r_j = np.round(ti.offset), np.round(tj.offset)
        box_lo, box_hi = np.maximum(r_i, r_j), np.minimum(r_i + shapes[i], r_j + shapes[j])
        adjust, sliced = (r_j - tj.offset) - (r_i - ti.offset), True
    else:
        box_lo, box_hi = np.ceil(np.asarray(lo) - 1e-6), np.floor(np.asarray(hi) + 1e-6)
        adjust, sliced = np.zeros(table.ndim), False
    size = tuple(int(v) for v in np.maximum(box_hi - box_lo, 0))
    return _Plan(i, j, box_lo.astype(int), size, sliced, adjust)


def _cut(data: np.ndarray, affine: np.ndarray, plan: _Plan) -> np.ndarray:
    """The overlap crop of one tile (channels summed), float32; NaN outside the tile."""
    nd = len(plan.size)
    if plan.sliced:
        start = plan.box_lo - np.round(affine[:nd, nd]).astype(int)
        box: tuple[Any, ...] = (..., *map(slice, start, start + plan.size))
        crop = np.asarray(data[box], dtype=np.float32)
        return crop.reshape(-1, *plan.size).sum(axis=0) if crop.ndim > nd else crop
    from scipy import ndimage

    plane = np.asarray(data, dtype=np.float32)
    plane = plane.reshape(-1, *plane.shape[-nd:]).sum(axis=0) if plane.ndim > nd else plane
    matrix = np.linalg.inv(affine) @ translation(plan.box_lo)
    return ndimage.affine_transform(plane, matrix, output_shape=plan.size, order=1, cval=np.nan)


def _solve(n: int, ij: np.ndarray, s: np.ndarray, w: np.ndarray, prior: float) -> np.ndarray:
    """Minimise sum w (c_j - c_i - s)^2 + prior sum c^2 (normal equations, sparse LU)."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    i, j = ij[:, 0], ij[:, 1]
    rows = np.concatenate([i, j, i, j, np.arange(n)])
    cols = np.concatenate([i, j, j, i, np.arange(n)])
    vals = np.concatenate([w, w, -w, -w, np.full(n, prior)])
    normal = sparse.csc_matrix((vals, (rows, cols)), shape=(n, n))
    rhs = np.zeros((n, s.shape[1]))
    np.add.at(rhs, j, w[:, None] * s)
    np.add.at(rhs, i, -w[:, None] * s)
    return np.asarray(splu(normal).solve(rhs)).reshape(n, -1)


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {value!r}")


def register(
    table: TileTable,
    *,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    min_quality: float = 0.2,
    max_shift_px: float | None = None,
    prior_weight: float = 0.01,
    outlier_px: float = 2.0,
    min_overlap_px: float = 16,
    workers: int = 1,
) -> Registration:
    """Refine tile translations from the content of their overlaps.

    Parameters
    ----------
    table : TileTable
        Tiles and their current (stage) transforms.
    read : callable, optional
        ``read(ref) -> array``; default :func:`scopefx.io.read_image`. Leading axes beyond the
        table's ``ndim`` are channels and are summed.
    shapes : array-like, shape (n_tiles, ndim), optional
        Spatial shape of each tile. Default: from the file headers
        (:func:`scopefx.io.read_metadata`), or, with a custom ``read``, by reading each tile.
    min_quality : float
        Pairs below this normalised cross-correlation (0..1) do not enter the solve.
    max_shift_px : float, optional
        Largest shift searched along each axis; default a third of the pair's smallest overlap
        width, at least 2 px.
    prior_weight : float
        Weight of ``c_k = 0`` for every tile: keeps tiles without content at their stage
        position and fixes the global offset.
    outlier_px : float
        Used pairs whose residual exceeds this are dropped, worst first, and the solve repeated.
    min_overlap_px : float
        See :func:`overlapping_pairs`.
    workers : int
        Threads that read tiles and correlate overlaps.

    Returns
    -------
    Registration

    Raises
    ------
    ConfigError
        A parameter is out of range, or a tile's shape differs from ``shapes``.
    ImageNotFoundError, CorruptImageError, ...
        As ``read`` raises them, for the first tile that cannot be read.

    Notes
    -----
    Each tile is read once and dropped after its overlap crops are cut. Translation-only tiles
    are sliced at their rounded offsets (the rounding is added back to the measured shift);
    other tiles are resampled into the mosaic grid (linear interpolation). Peaks are refined
    to 1/20 px by a local upsampled DFT.

    References
    ----------
    Guizar-Sicairos, Thurman & Fienup, "Efficient subpixel image registration algorithms",
    Opt. Lett. 33, 156 (2008).

    Examples
    --------
    >>> reg = register(read_tile_table("run/tiles.csv"), workers=8)  # doctest: +SKIP
    >>> reg.table.to_csv("run/tiles.registered.csv")  # doctest: +SKIP
    >>> reg.pairs_to_csv("run/pairs.csv")  # doctest: +SKIP
    """
    _check("min_quality", min_quality, 0 <= min_quality <= 1, "in [0, 1]")
    _check("max_shift_px", max_shift_px, max_shift_px is None or max_shift_px > 0, "> 0 or None")
    _check("prior_weight", prior_weight, prior_weight > 0, "> 0")
    _check("outlier_px", outlier_px, outlier_px > 0, "> 0")
    _check("min_overlap_px", min_overlap_px, min_overlap_px > 0, "> 0")
    ok_workers = isinstance(workers, (int, np.integer)) and not isinstance(workers, bool)
    _check("workers", workers, ok_workers and workers >= 1, "an integer >= 1")
    nd, n = table.ndim, len(table)
    reader = read or read_image
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if shapes is None:

            def head(ref: str) -> tuple[int, ...]:
                return read_metadata(ref).shape if read is None else np.shape(reader(ref))

            shapes = [s[-nd:] for s in pool.map(head, table.refs)]
        shape_arr = _shapes_array(table, shapes)
        geometry = overlapping_pairs(table, shape_arr, min_overlap_px=min_overlap_px)
        plans = [_plan(table, shape_arr, i, j, lo, hi) for i, j, lo, hi in geometry]
        measured = _measure_all(table, reader, shape_arr, plans, max_shift_px, pool, workers)
    m = len(plans)
    ij = np.array([(p.i, p.j) for p in plans], dtype=int).reshape(m, 2)
    shifts = np.array([s for s, _ in measured], dtype=float).reshape(m, nd)
    quality = np.array([q for _, q in measured], dtype=float)
    finite = np.all(np.isfinite(shifts), axis=1)
    used = finite & (quality >= min_quality)
    while True:
        c = _solve(n, ij[used], shifts[used], quality[used], prior_weight)
        residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)  # NaN: unmeasured
        bad = np.flatnonzero(used & (residual > outlier_px))
        if not len(bad):
            break
        used[bad[np.argmax(residual[bad])]] = False
    affines = table.affines
    affines[:, :nd, nd] += c
    pairs = tuple(
        PairResult(int(i), int(j), tuple(map(float, s)), float(q), p.size, bool(u), float(r))
        for (i, j), s, q, p, u, r in zip(ij, shifts, quality, plans, used, residual, strict=True)
    )
    logger.info(
        "registered %d tiles from %d pairs (%d used, %d below quality %.2f)",
        n, m, int(used.sum()), int(np.sum(finite & (quality < min_quality))), min_quality,
    )  # fmt: skip
    return Registration(table.with_affines(affines), pairs, c)


def _measure_all(
    table: TileTable, reader: Callable[[str], Any], shapes: np.ndarray, plans: list[_Plan],
    max_shift_px: float | None, pool: ThreadPoolExecutor, workers: int,
) -> list[tuple[np.ndarray, float]]:  # fmt: skip
    """Read each tile once, cut its crops, correlate each pair as soon as both crops exist."""
    nd = table.ndim
    by_tile: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for p, plan in enumerate(plans):
        by_tile[plan.i].append((p, 0))
        by_tile[plan.j].append((p, 1))
    lo, hi = _footprints(table, shapes)  # visit tiles band by band (bands one tile high)
    band = np.floor(lo / np.median(hi - lo, axis=0)).T[::-1]
    order = [k for k in np.lexsort((np.arange(len(lo)), *band)).tolist() if k in by_tile]

    def load(k: int) -> list[tuple[int, int, np.ndarray]]:
        data = reader(table[k].ref)
        got = tuple(np.shape(data)[-nd:])
        if got != tuple(int(v) for v in shapes[k]):
            raise ConfigError(
                f"tile {k} ({table[k].ref}): spatial shape {got}, expected "
                f"{tuple(int(v) for v in shapes[k])} (from shapes or the file header)"
            )
        return [(p, side, _cut(data, table[k].affine, plans[p])) for p, side in by_tile[k]]

    def correlate(p: int, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
        limit = max(2.0, min(plans[p].size) / 3) if max_shift_px is None else max_shift_px
        shift, quality = _measure(a, b, limit)
        return shift + plans[p].adjust, quality

    pending: dict[int, list[np.ndarray | None]] = {}
    results: dict[int, Future[tuple[np.ndarray, float]]] = {}
    loads: collections.deque[Future[list[tuple[int, int, np.ndarray]]]] = collections.deque()

    def drain() -> None:
        for p, side, crop in loads.popleft().result():
            slot = pending.setdefault(p, [None, None])
            slot[side] = crop
            if slot[0] is not None and slot[1] is not None:
                results[p] = pool.submit(correlate, p, slot[0], slot[1])
                del pending[p]

    for k in order:  # at most `workers` tiles in memory at once, plus the pending crops
        loads.append(pool.submit(load, k))
        while len(loads) > workers:
            drain()
    while loads:
        drain()
    return [results[p].result() for p in range(len(plans))]
