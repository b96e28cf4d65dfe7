"""Registration of mosaic tiles from their overlaps (``scopefx fuse --register``).

The steps, in the order :func:`register` runs them:

1. **Neighbours from geometry.** Pairs of tiles whose stage footprints overlap; a pair that
   overlaps partially along more than one axis (diagonal neighbours sharing only a corner) is
   not measured by default: its small corner holds mostly vignetting.
2. **Measure each side pair** (:mod:`._correlate`): crops on the stage overlap enlarged by the
   search range, flat-field corrected when a flat field is given; the normalised
   cross-correlation (NCC) on the pixels both tiles hold, each crop minus its quadratic fit
   over them (so smooth shading does not correlate), for every shift in range; the best
   refined by Gauss-Newton on the NCC of the unsmoothed common part (from the phase
   correlation's estimate). A match must reach ``min_quality``, stand above what chance
   gives over the whole search, with a confidence bound above zero, lie inside the search
   (on its edge the NCC may still rise beyond, and chance matches gather there: the bound
   favours the largest common part), and beat the best distinct runner-up by
   ``min_peak_margin`` (a repeated pattern, such as graph paper, gives several equally good
   peaks: such a pair is *ambiguous* and not used).
3. **Stage model** (MIST's, by stage move): a side pair that gave no usable match takes the
   median correction of the usable pairs crossing the same boundary between rows (columns),
   one stage move in a raster or serpentine scan, backlash included, when at least two do;
   else of the pairs of its row (column); else of its direction.
4. **Global solve**: sparse weighted least squares, weights the Fisher z of the NCC
   (``arctanh``, capped at NCC 0.99) x overlap area; pairs whose
   standardised residual (``residual / sqrt(1 - h)``, ``h`` the share of its own shift the
   solve gives back to the pair: a wrong pair's residual is otherwise a fraction of its error
   spread over its loop) exceeds ``outlier_px`` are dropped, worst first, and the solve
   repeated. Second
   pass, over the refused side pairs (weak or ambiguous, NCC at least ``min_quality``, best
   shift inside the search), one step at a time with the solve repeated after each: a pair
   whose shift lands within ``outlier_px`` of what the used pairs predict is used (its loop
   confirms it); else two unambiguous ones between the same two groups of tiles that agree
   within ``outlier_px`` are used (they confirm each other as a loop does); else a group of
   tiles left apart from the main one is joined by its clearly best unambiguous match whose
   confidence bound is above zero. Groups of tiles still unconnected by usable pairs are then
   moved as wholes to fit the stage model's pairs between them (which so never bend the
   measured geometry). Each measurement also keeps its NCC's next few distinct local maxima
   (a chance match can beat the true shift when the true common part is thin or noisy; the
   true one is then usually among them): when the pairs' best peaks confirm nothing more,
   those of the pairs not used are tried the same two ways (landing within ``outlier_px`` of
   the prediction, or two agreeing between the same two groups), and one so confirmed
   replaces its pair's best peak. Last, a used pair that no loop confirms (a bridge: the only
   used link between two groups of tiles), weakest first, is outvoted when more pairs across
   the same cut (by their best or other peaks, its own other peaks among them) agree on
   another placement of the two groups than on its own: it is dropped and they are used.

Fewer usable side pairs than ``min_usable_fraction`` of them is an error
(:class:`~scopefx.errors.RegistrationError`) unless ``allow_partial``. Transforms follow
:mod:`scopefx.io._tiles`: homogeneous affines in array index order (``(y, x)`` or
``(z, y, x)``), tile index -> mosaic index.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import itertools
import logging
import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, RegistrationError, ResourceLimitError
from ..io import EndpointLimits, TileTable, layout_problems, read_image, read_metadata
from ..io.confined import LIMIT_ENV, size_text
from ._blend import read_masked, read_opaque, tile_reader
from ._correlate import Measured, Plan, cut, measure, plan_pair, prepare, search_bytes
from ._flatfield import MIN_TILES, FlatField, estimate_flatfield, note_tile, read_named
from ._fuse import colour_samples, fused_shape
from ._regparams import AUTO_SHIFT, RegistrationParams, _check

__all__ = [
    "PairResult",
    "Registration",
    "RegistrationParams",
    "overlapping_pairs",
    "register",
]

logger = logging.getLogger(__name__)

_MODEL_GAIN = 0.75  # a stage-model grouping must predict the usable pairs this much better
_NCC_CAP = 0.99  # above it, a match's weight stops growing (resampling, not noise, limits it)
_WEAK_BRIDGE = 0.5  # NCC under which an unconfirmed pair is checked against the stage model
_PLAUSIBLE_SPREAD = 4.0  # robust standard deviations of the confirmed corrections allowed
_PLAUSIBLE_MIN_PX = 4.0  # however tight the confirmed corrections are
_PLAUSIBLE_POOL = 4  # confirmed pairs of the same direction needed for the check

_CHUNK = 4_000_000  # candidate pairs examined at once by the sweep
_MIN_NARROWED_PX = 8  # a default search is narrowed to fit the memory limit down to this reach

#: Values of :attr:`PairResult.status`.
STATUSES = ("used", "outlier", "low_quality", "ambiguous", "blank", "corner")


@dataclass(frozen=True)
class PairResult:
    """What one overlap measured.

    Attributes
    ----------
    i, j : int
        Tile indices, ``i < j``.
    shift_px : tuple of float
        Correction of tile ``j`` relative to tile ``i`` beyond what the current transforms
        predict, index order, mosaic pixels (NaN when nothing could be measured).
    quality : float
        Normalised cross-correlation (0..1) of the two crops at the shift, each minus its
        polynomial fit over their common pixels (``detrend_degree``).
    overlap_px : tuple of int
        Extent of the stage overlap, index order.
    used : bool
        The measurement entered the final solve.
    residual_px : float
        ``|(c_j - c_i) - shift|`` after the solve; NaN when the shift was not measurable.
    status : str
        ``"used"``, ``"outlier"`` (dropped by the solve), ``"low_quality"`` (NCC under
        ``min_quality``, not above chance, or the best shift on the edge of the search),
        ``"ambiguous"`` (a runner-up match almost as good), ``"blank"`` (no content) or
        ``"corner"`` (diagonal neighbour, not measured).
    runner_up : float
        The best distinct other shift, on the NCC scale (shifts are ranked by a lower
        confidence bound of their NCC, so a thin common part does not win by chance; the
        runner-up is that bound plus the match's own margin between NCC and bound).
    weight : float
        Weight in the solve (0 when not used).
    modelled_px : tuple of float or None
        For an unusable side pair: the stage-model correction put in its place.
    """

    i: int
    j: int
    shift_px: tuple[float, ...]
    quality: float
    overlap_px: tuple[int, ...]
    used: bool
    residual_px: float
    status: str = "used"
    runner_up: float = 0.0
    weight: float = 0.0
    modelled_px: tuple[float, ...] | None = None


@dataclass(frozen=True, eq=False)
class Registration:
    """The refined tile table and the evidence behind it.

    Attributes
    ----------
    table : TileTable
        Each affine's translation column corrected; the linear parts are unchanged.
    pairs : tuple of PairResult
        Every neighbouring pair, sorted by ``(i, j)``.
    corrections_px : ndarray, shape (n_tiles, ndim)
        Correction added to each tile's translation, index order, mosaic pixels.
    params : RegistrationParams
        The settings used.
    stage_table : TileTable or None
        The table before registration.
    flatfield : str
        The flat field the tiles were corrected by before correlation: ``"given"`` (the
        caller's), ``"estimated"`` (from the tiles, ``RegistrationParams.estimate_flatfield``)
        or ``"none"``.
    banding : str
        ``"removed"`` when row and column offsets shared by the tiles (a camera's banding,
        ``RegistrationParams.remove_banding``) were found and taken out before correlation,
        else ``"none"``.
    """

    table: TileTable
    pairs: tuple[PairResult, ...]
    corrections_px: np.ndarray
    params: RegistrationParams = dataclasses.field(default_factory=RegistrationParams)
    stage_table: TileTable | None = None
    flatfield: str = "none"
    banding: str = "none"

    @property
    def rms_residual_px(self) -> float:
        """Root-mean-square residual over the used pairs (NaN when none was used)."""
        res = [p.residual_px for p in self.pairs if p.used]
        return float(np.sqrt(np.mean(np.square(res)))) if res else math.nan

    def pairs_to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write ``i,j,ref_i,ref_j,dx,dy[,dz],quality,used,residual_px,status`` (x, y order)."""
        axes = ["dx", "dy", "dz"][: self.table.ndim]
        refs = self.table.refs

        def num(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["i", "j", "ref_i", "ref_j", *axes, "quality", "used", "residual_px",
                        "status"])  # fmt: skip
            for p in self.pairs:
                shift = [num(v) for v in p.shift_px[::-1]]
                w.writerow([p.i, p.j, refs[p.i], refs[p.j], *shift, num(p.quality), p.used,
                            num(p.residual_px), p.status])  # fmt: skip


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


def _normal_lu(n: int, ij: np.ndarray, w: np.ndarray, prior: float) -> Any:
    """Sparse LU of the solve's normal matrix ``A^T W A + prior I`` (``A``: the pairs'
    incidence rows)."""
    from scipy import sparse
    from scipy.sparse.linalg import splu

    i, j = ij[:, 0], ij[:, 1]
    rows = np.concatenate([i, j, i, j, np.arange(n)])
    cols = np.concatenate([i, j, j, i, np.arange(n)])
    vals = np.concatenate([w, w, -w, -w, np.full(n, prior)])
    return splu(sparse.csc_matrix((vals, (rows, cols)), shape=(n, n)))


def _solve(
    n: int, ij: np.ndarray, s: np.ndarray, w: np.ndarray, prior: float, lu: Any = None
) -> np.ndarray:
    """Minimise sum w (c_j - c_i - s)^2 + prior sum c^2 (normal equations, sparse LU; ``lu``:
    that of :func:`_normal_lu`, when already made)."""
    i, j = ij[:, 0], ij[:, 1]
    rhs = np.zeros((n, s.shape[1]))
    np.add.at(rhs, j, w[:, None] * s)
    np.add.at(rhs, i, -w[:, None] * s)
    lu = _normal_lu(n, ij, w, prior) if lu is None else lu
    return np.asarray(lu.solve(rhs)).reshape(n, -1)


def _misfit(
    n: int, ij: np.ndarray, used: np.ndarray, weight: np.ndarray, residual: np.ndarray,
    params: RegistrationParams, lu: Any = None,
) -> np.ndarray:  # fmt: skip
    """Each used pair's misfit, to hold against ``outlier_px``: its standardised residual
    ``residual / sqrt(1 - h)`` (``h``: :func:`_leverage`, the share of its own shift the
    solve gives back to it; Baarda's data snooping). The solve spreads one wrong shift over
    its loop, so that its own residual is a fraction of its error: a quarter in a loop of four
    (5.5 px off showed as 1.5 px, under ``outlier_px``, and half a sparse scan followed); the
    standardised residual is half of it there, the error against what the other pairs
    predict (``residual / (1 - h)``) scaled by ``sqrt(1 - h)``, so that of two pairs in series
    (one tile between them, both equally far from the rest's prediction) the weaker, which
    took more of the misfit, stands out. Half, not the whole: loops of true pairs of a real
    scan miss by 1-2 px (it is not rigid), and at the whole a true pair of the Leica scan was
    dropped. A bridge (``h`` about 1) is checked by nothing and keeps its residual (0).
    Pairs whose residual could not count unless ``h > 0.98`` are not looked at."""
    out = np.where(used, residual, 0.0)
    look = np.flatnonzero(used & (residual > params.outlier_px / 7))
    if not len(look):
        return out
    links = np.flatnonzero(used)
    where = np.searchsorted(links, look)
    if lu is None:
        lu = _normal_lu(n, ij[links], weight[links], params.prior_weight)
    h = _leverage(lu, n, ij[links], weight[links], where)
    free = 1 - h
    out[look] = np.where(free > 1e-6, residual[look] / np.sqrt(np.maximum(free, 1e-6)),
                         residual[look])  # fmt: skip
    return out


def _leverage(lu: Any, n: int, ij: np.ndarray, w: np.ndarray, which: np.ndarray) -> np.ndarray:
    """For the pairs ``which`` (indices into ``ij``): how much of its own measurement the
    solve of :func:`_solve` gives back to each, ``h = w a^T (A^T W A + prior)^-1 a`` with ``a``
    the pair's row of the incidence matrix and ``lu`` :func:`_normal_lu` of the pairs (1: a
    bridge, no other path checks it; in a loop of four equal pairs 3/4, so a quarter of a
    misfit shows in the pair's own residual)."""
    i, j = ij[:, 0], ij[:, 1]
    out = np.zeros(len(which))
    for start in range(0, len(which), 256):
        part = which[start : start + 256]
        rhs = np.zeros((n, len(part)))
        cols_ = np.arange(len(part))
        rhs[j[part], cols_] += 1.0
        rhs[i[part], cols_] -= 1.0
        x = lu.solve(rhs)
        out[start : start + len(part)] = w[part] * (x[j[part], cols_] - x[i[part], cols_])
    return out


def _is_corner(olo: np.ndarray, ohi: np.ndarray, ext_i: np.ndarray, ext_j: np.ndarray) -> bool:
    """Partial overlap (under half the smaller tile) along more than one axis."""
    partial = (ohi - olo) < 0.5 * np.minimum(ext_i, ext_j)
    return int(partial.sum()) > 1


def _reach(params: RegistrationParams, shapes: np.ndarray, i: int, j: int) -> float:
    """The pair's search range: ``max_shift_px`` up to the larger tile's extent (no shift
    beyond it leaves a common part), else the default share of the smaller tile."""
    if params.max_shift_px is not None:
        return min(params.max_shift_px, float(max(shapes[i].max(), shapes[j].max())))
    return max(8.0, AUTO_SHIFT * float(min(shapes[i].min(), shapes[j].min())))


def read_as_fused(
    table: TileTable, map_: Callable[..., Any] = map
) -> tuple[Callable[[str], Any], list[tuple[int, ...]]]:
    """The default reader of ``table``'s tiles, colour tiles channels first as fusion reads
    them, and the tiles' spatial shapes, from their headers (read with ``map_``)."""
    metas = list(map_(read_metadata, table.refs))
    samples = colour_samples(metas, table.ndim)
    reader = tile_reader(None, samples)
    return reader, [fused_shape(m.shape, samples)[-table.ndim :] for m in metas]


def register(
    table: TileTable,
    *,
    params: RegistrationParams | None = None,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    flatfield: Any = None,
    workers: int = 1,
) -> Registration:
    """Refine tile translations from the content of their overlaps.

    Parameters
    ----------
    table : TileTable
        Tiles and their current (stage) transforms.
    params : RegistrationParams, optional
        Search range, minimum overlap, quality thresholds, ``allow_partial``; defaults work
        for 5-50 % overlaps.
    read : callable, optional
        ``read(ref) -> array``; default :func:`scopefx.io.read_image`. Leading axes beyond the
        table's ``ndim`` are channels and are summed. With the default reader and no
        ``shapes``, colour tiles (RGB(A), samples last) are registered on the sum of their
        red, green and blue.
    shapes : array-like, shape (n_tiles, ndim), optional
        Spatial shape of each tile. Default: from the file headers
        (:func:`scopefx.io.read_metadata`), or, with a custom ``read``, by reading each tile.
    flatfield : FlatField or callable, optional
        Applied to each tile before it is correlated (``flatfield.apply(tile)``, or
        ``flatfield(tile)`` for a callable), so vignetting does not correlate.
    workers : int
        Threads that read tiles and correlate overlaps.

    Returns
    -------
    Registration

    Raises
    ------
    ConfigError
        A parameter is out of range, or a tile's shape differs from ``shapes``.
    RegistrationError
        No two tiles overlap at their stage positions, or fewer than
        ``params.min_usable_fraction`` of the side pairs gave a usable match (without
        ``params.allow_partial``).
    ImageNotFoundError, CorruptImageError, ...
        As ``read`` raises them, for the first tile that cannot be read.

    Notes
    -----
    Each tile is read once and dropped after its crops are cut. Translation-only tiles are
    sliced at their rounded offsets (the rounding is added back to the measured shift); other
    tiles are resampled into the mosaic grid (linear interpolation). Peaks are refined to
    1/20 px by a local upsampled DFT.

    References
    ----------
    Guizar-Sicairos, Thurman & Fienup, "Efficient subpixel image registration algorithms",
    Opt. Lett. 33, 156 (2008). Chalfoun et al., "MIST: accurate and scalable microscopy image
    stitching tool with stage modeling and error minimization", Sci. Rep. 7, 4988 (2017).

    Examples
    --------
    >>> reg = register(read_tile_table("run/tiles.csv"), workers=8)  # doctest: +SKIP
    >>> reg.table.to_csv("run/tiles.registered.csv")  # doctest: +SKIP
    """
    params = RegistrationParams() if params is None else params
    if not isinstance(params, RegistrationParams):
        raise ConfigError(f"params must be a RegistrationParams, got {type(params).__name__}")
    ok_workers = isinstance(workers, (int, np.integer)) and not isinstance(workers, bool)
    _check("workers", workers, ok_workers and workers >= 1, "an integer >= 1")
    nd, n = table.ndim, len(table)
    reader = read or read_image
    with ThreadPoolExecutor(max_workers=workers) as pool:
        if shapes is None and read is None:  # from the headers; colour tiles read channels first
            reader, shapes = read_as_fused(table, pool.map)
        elif shapes is None:
            shapes = [
                np.shape(s)[-nd:]
                for s in pool.map(functools.partial(read_named, reader), table.refs)
            ]
        shape_arr = _shapes_array(table, shapes)
        geometry = overlapping_pairs(table, shape_arr, min_overlap_px=1.0)
        if not geometry and n > 1:
            raise RegistrationError(
                f"no two of the {n} tiles overlap at their stage positions, so there is "
                "nothing to register; check the table's positions and units (pixels, not "
                "micrometres?)"
            )
        for problem in layout_problems(table, shape_arr):
            logger.warning("%s: %s", table.source or "tile layout", problem)
        lo, hi = _footprints(table, shape_arr)
        ext = hi - lo
        corner = [
            _is_corner(np.asarray(a), np.asarray(b), ext[i], ext[j]) for i, j, a, b in geometry
        ]
        plans = [plan_pair(table, shape_arr, (lo, hi), i, j, _reach(params, shape_arr, i, j))
                 for (i, j, _, _), c in zip(geometry, corner, strict=True)
                 if params.corner_pairs or not c]  # fmt: skip
        plans = _within_search_budget(table, shape_arr, (lo, hi), plans, params)
        shading = "given" if flatfield is not None else "none"
        if flatfield is None and params.estimate_flatfield and plans:
            flatfield = _shading_estimate(table, reader, shape_arr, workers)
            shading = "none" if flatfield is None else "estimated"
        banding = None
        if params.remove_banding != "off" and plans:
            banding = _banding_estimate(table, reader, shape_arr, flatfield, params, pool)
        measured = iter(_measure_all(table, reader, shape_arr, plans, params, flatfield, pool,
                                     workers, banding, shading == "estimated"))  # fmt: skip
    empty = Measured(np.full(nd, np.nan), 0.0, 0.0, (0,) * nd)
    results = [empty if (c and not params.corner_pairs) else next(measured) for c in corner]
    reg = _settle(table, shape_arr, geometry, corner, results, params)
    removed = banding is not None and banding.removed
    return dataclasses.replace(reg, flatfield=shading, banding="removed" if removed else "none")


def _not_estimable(table: TileTable, shapes: np.ndarray, min_tiles: int) -> str | None:
    """Why an estimate over the tiles (flat field, banding: one (Y, X) plane for all) cannot
    be made from them, or None."""
    nd, n = table.ndim, len(table)
    if nd != 2:
        return f"it is estimated for 2D tiles only, these are {nd}D"
    if n < min_tiles:
        return f"it needs at least {min_tiles} tiles, there are {n}"
    if len({tuple(s) for s in shapes.tolist()}) != 1:
        return "the tiles differ in shape (one estimate fits one tile geometry)"
    return None


def _shading_estimate(
    table: TileTable, reader: Callable[[str], Any], shapes: np.ndarray, workers: int
) -> FlatField | None:
    """The flat field registration corrects the tiles by when the caller gave none
    (``RegistrationParams.estimate_flatfield``): estimated from 2D tiles of one shape, at
    least ``MIN_TILES``, on the sum of their channels (what is correlated: one (Y, X) flat,
    whatever the number of channels); None (logged) where no estimate can be made."""
    nd = table.ndim
    why = _not_estimable(table, shapes, MIN_TILES)
    if why is not None:
        logger.info("registration correlates the tiles without a flat field: %s", why)
        return None

    def summed(ref: str) -> np.ndarray:  # NaN (transparent) stays NaN in the sum
        data = read_masked(reader, ref, nd)
        return data.reshape(-1, *data.shape[-nd:]).sum(axis=0)

    try:
        return estimate_flatfield(table.refs, read=summed, workers=workers)
    except ConfigError as exc:
        logger.info("registration correlates the tiles without a flat field: %s", exc)
        return None


@dataclass(frozen=True)
class Banding:
    """Row and column offsets shared by every tile at the same sensor row (column): a
    camera's fixed-pattern banding, in the units of the planes registration correlates."""

    rows: np.ndarray  # (Y,) offset of each tile row
    cols: np.ndarray  # (X,) offset of each tile column
    kept: tuple[float, float]  # share of the row and column estimates kept (0: not significant)

    @property
    def removed(self) -> bool:
        return max(self.kept) > 0

    def remove(self, plane: np.ndarray) -> np.ndarray:
        """``plane`` (one tile, Y, X) minus the offsets."""
        return plane - (self.rows[:, None] + self.cols[None, :]).astype(plane.dtype)


_BANDING_MIN_TILES = 4  # the median over fewer tiles keeps too much of their content
_BANDING_MAX_TILES = 100  # tiles read for the estimate, spread over the table
_BANDING_DEGREE = 4  # each line profile minus its polynomial of this degree (smooth shading)
_BANDING_NULL = 20  # random misalignments of the tiles' profiles: what chance shares
_BANDING_AUTO_SHARE = 0.95  # remove_banding='auto': the share the tiles must hold in common
_BANDING_AUTO_SMOOTH = 0.5  # ... and the shared line's largest lag-1 autocorrelation


def _banding_estimate(
    table: TileTable,
    reader: Callable[[str], Any],
    shapes: np.ndarray,
    flatfield: Any,
    params: RegistrationParams,
    pool: ThreadPoolExecutor,
) -> Banding | None:
    """Row and column offsets that every tile shares (``RegistrationParams.remove_banding``);
    None (logged) where they cannot be estimated.

    Banding is the same at the same sensor row in every tile, so in each overlap it matches
    the two tiles at their stage positions: a row pattern of the size of the pixel noise put
    3x3 mosaics cut from real frames 5-20 px off. Each tile's mean along its rows (columns),
    as registration sees it (flat-field corrected), minus that profile's polynomial of degree
    ``_BANDING_DEGREE`` (shading is smooth across the tile, and what is smooth over a crop the
    correlation's detrend takes out), is the tile's content there plus the banding; the median
    over the tiles keeps the banding. It is kept only where the tiles' profiles share more
    than chance alignment gives, and scaled by the share they hold in common
    (:func:`_shrunk_median`), so tiles without banding are left as they are.
    """
    n = len(table)
    why = _not_estimable(table, shapes, _BANDING_MIN_TILES)
    if why is not None:
        logger.info("registration does not look for banding: %s", why)
        return None
    picked = np.unique(np.linspace(0, n - 1, min(n, _BANDING_MAX_TILES)).round().astype(int))

    def profiles(k: int) -> tuple[np.ndarray, np.ndarray]:
        plane, _, _ = _prepared(table, reader, shapes, k, flatfield, params)
        # means over the pixels a line holds, NaN where it holds none; no nanmean, whose
        # warning for such a line cannot be silenced from this worker thread (catch_warnings
        # changes the whole process's filters and races with the other threads)
        hold = np.isfinite(plane)
        total = np.where(hold, plane, 0).astype(np.float64)

        def mean(axis: int) -> np.ndarray:
            n = hold.sum(axis=axis)
            return np.divide(total.sum(axis=axis), n, out=np.full(n.shape, np.nan), where=n > 0)

        return mean(1), mean(0)

    got = list(pool.map(profiles, picked.tolist()))
    lines, kept = [], []
    for axis in (0, 1):
        prof = np.stack([_unsmooth(g[axis]) for g in got])
        line, share = _shrunk_median(prof)
        if params.remove_banding == "auto" and not _looks_like_banding(line, share):
            line, share = np.zeros_like(line), 0.0
        lines.append(line)
        kept.append(share)
    banding = Banding(lines[0], lines[1], (kept[0], kept[1]))
    if banding.removed:
        logger.info(
            "registration removes banding shared by the tiles: rms %.3g (rows), %.3g (columns) "
            "in the tiles' units, %.0f %% and %.0f %% of the estimates kept",
            float(np.sqrt(np.mean(lines[0] ** 2))), float(np.sqrt(np.mean(lines[1] ** 2))),
            100 * kept[0], 100 * kept[1],
        )  # fmt: skip
    return banding


def _looks_like_banding(line: np.ndarray, share: float) -> bool:
    """``remove_banding="auto"``: the tiles hold nearly all of the shared line in common, and
    it changes from line to line (a black border, or shading every tile shares, is smooth)."""
    if share < _BANDING_AUTO_SHARE:
        return False
    centred = line - line.mean()
    power = float(centred @ centred)
    return power > 0 and float(centred[1:] @ centred[:-1]) / power <= _BANDING_AUTO_SMOOTH


def _unsmooth(profile: np.ndarray) -> np.ndarray:
    """A tile's line profile minus its least-squares polynomial of degree
    ``_BANDING_DEGREE`` (NaN where the line holds no pixel): what varies from line to line."""
    hold = np.isfinite(profile)
    out = np.full(profile.shape, np.nan)
    if np.count_nonzero(hold) <= _BANDING_DEGREE + 1:
        return out
    t = np.linspace(-1, 1, len(profile))
    design = t[hold, None] ** np.arange(_BANDING_DEGREE + 1)
    coef = np.linalg.lstsq(design, profile[hold].astype(np.float64), rcond=None)[0]
    out[hold] = profile[hold] - design @ coef
    return out


def _shrunk_median(prof: np.ndarray) -> tuple[np.ndarray, float]:
    """The median over tiles (axis 0, NaN left out) of their line profiles, scaled by the
    share of it that the tiles hold in common; the share (0 when what they share is no more
    than chance alignment gives).

    What the tiles share is measured by the median over pairs of different tiles of their
    profiles' inner product (banding is in every pair; content that two tiles happen to share,
    a repeated pattern, in a few), against the same statistic with each tile's profile rolled
    by its own random offset, which keeps each profile's smoothness and breaks only the
    alignment (``_BANDING_NULL`` draws; the shared part must exceed their largest). The share
    kept is the Wiener factor of a mean over ``n`` tiles, ``shared / (shared + own / n)``."""
    n, length = prof.shape
    hold = np.isfinite(prof)  # no nan-reductions over empty slices: no warnings to silence
    count = hold.sum(axis=1, keepdims=True)
    level = np.where(hold, prof, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
    filled = np.where(hold, prof - level, 0.0)
    off = ~np.eye(n, dtype=bool)

    def shared(x: np.ndarray) -> float:  # median over pairs of different tiles, per line
        return float(np.median((x @ x.T)[off]) / length)

    common = shared(filled)
    rng = np.random.default_rng(0)
    rows = np.arange(length)
    null = max(shared(filled[np.arange(n)[:, None], (rows + rng.integers(0, length, (n, 1)))
                             % length]) for _ in range(_BANDING_NULL))  # fmt: skip
    if not common > max(null, 0.0):
        return np.zeros(length), 0.0
    own = float(np.median(np.einsum("ij,ij->i", filled, filled)) / length) - common
    share = common / (common + max(own, 0.0) / n)
    whole = np.zeros(length)
    held = hold.any(axis=0)  # a line no tile holds stays 0
    whole[held] = np.nanmedian(prof[:, held], axis=0)
    return share * whole, share


def _settle(
    table: TileTable,
    shapes: np.ndarray,
    geometry: list[tuple[int, int, tuple[float, ...], tuple[float, ...]]],
    corner: list[bool],
    results: list[Measured],
    params: RegistrationParams,
) -> Registration:
    """Classify the measurements, model the unusable side pairs, solve, drop outliers."""
    nd, n, m = table.ndim, len(table), len(geometry)
    ij = np.array([(i, j) for i, j, _, _ in geometry], dtype=int).reshape(m, 2)
    olo = np.array([g[2] for g in geometry], dtype=float).reshape(m, nd)
    ohi = np.array([g[3] for g in geometry], dtype=float).reshape(m, nd)
    shifts = np.array([r.shift for r in results], dtype=float).reshape(m, nd)
    quality = np.array([r.quality for r in results], dtype=float)
    runner = np.array([r.runner_up for r in results], dtype=float)
    is_corner = np.array(corner, dtype=bool)
    status = np.full(m, "used", dtype=object)
    status[~np.all(np.isfinite(shifts), axis=1)] = "blank"
    chance = np.array([not r.significant for r in results], dtype=bool)
    status[(status == "used") & ((quality < params.min_quality) | chance)] = "low_quality"
    status[(status == "used") & (quality - runner < params.min_peak_margin)] = "ambiguous"
    inside = np.array([r.inside for r in results], dtype=bool)  # on the search's edge: no peak
    status[(status == "used") & ~inside] = "low_quality"
    if not params.corner_pairs:
        status[is_corner] = "corner"
    used = status == "used"
    side = ~is_corner
    n_side, n_ok = int(side.sum()), int((used & side).sum())
    if n > 1 and n_ok < params.min_usable_fraction * n_side and not params.allow_partial:
        counts = collections.Counter(status[side].tolist())
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))
        raise RegistrationError(
            f"only {n_ok} of {n_side} neighbouring tile pairs gave a usable match ({detail}); "
            f"at least {params.min_usable_fraction:.0%} are needed. Low quality or blank: the "
            "overlaps hold too little content; ambiguous: a repeated pattern. Widen the search "
            "(max_shift_px / --max-shift) or lower min_overlap_px (--min-overlap) if the "
            "stage positions are far off; if the pairs of one direction all fail, the stage's "
            "axis may run against the image's (flip_x / flip_y: --flip-x / --flip-y); or "
            "register what can be registered with allow_partial=True "
            "(--allow-partial-registration)"
        )
    area = np.prod(np.maximum(ohi - olo, 1.0), axis=1)
    unit_area = max(float(np.median(area[used])) if used.any() else 1.0, 1e-12)
    full = _strength(quality) * area / unit_area
    weight = np.where(used, full, 0.0)
    # Second pass: refused side pairs (weak or ambiguous) that the used ones then confirm
    candidate = side & ~used & np.all(np.isfinite(shifts), axis=1) & inside
    candidate &= quality >= params.min_quality
    distinct = quality - runner >= params.min_peak_margin
    established = np.array([r.bound for r in results], dtype=float) > 0
    # Other local maxima of each measurable side pair's NCC: when the best is a chance match,
    # the true shift is often among them; one is used only where the loops confirm it.
    measurable = side & np.all(np.isfinite(shifts), axis=1) & ~is_corner
    alt_of = np.array([k for k in range(m) if measurable[k] for a in results[k].alternatives
                       if a[1] >= params.min_quality], dtype=int)  # fmt: skip
    alt_shift = np.array([a[0] for k in range(m) if measurable[k] for a in results[k].alternatives
                          if a[1] >= params.min_quality], dtype=float).reshape(-1, nd)  # fmt: skip
    alt_quality = np.array([a[1] for k in range(m) if measurable[k]
                            for a in results[k].alternatives if a[1] >= params.min_quality],
                           dtype=float)  # fmt: skip
    alt_open = np.ones(len(alt_of), dtype=bool)  # not yet taken
    while True:
        while True:
            lu = _normal_lu(n, ij[used], weight[used], params.prior_weight)
            c = _solve(n, ij[used], shifts[used], weight[used], params.prior_weight, lu)
            residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)  # NaN: unmeasured
            misfit = _misfit(n, ij, used, weight, residual, params, lu)
            bad = np.flatnonzero(used & (misfit > params.outlier_px))
            if not len(bad):
                break
            worst = bad[np.argmax(misfit[bad])]
            used[worst], status[worst], weight[worst] = False, "outlier", 0.0
            candidate[worst] = False
        admit = _confirmed(n, ij, used, candidate, residual, params.outlier_px)
        if not len(admit):
            admit = _agreeing_joins(n, ij, used, candidate & distinct, shifts, quality, c,
                                    params.outlier_px)  # fmt: skip
        if not len(admit) and len(alt_of):  # the same two steps over the other peaks
            others = (alt_of, alt_shift, alt_quality, alt_open & ~used[alt_of])
            admit, picked = _other_peaks(n, ij, used, candidate & distinct, shifts, quality,
                                         others, c, params.outlier_px)  # fmt: skip
            moved, picked = admit[picked >= 0], picked[picked >= 0]
            alt_open[picked] = False  # each other peak is taken at most once
            shifts[moved], quality[moved] = alt_shift[picked], alt_quality[picked]
            full[moved] = _strength(quality[moved]) * area[moved] / unit_area
        if not len(admit) and len(alt_of):
            bridge, admit, picked = _outvoted_bridge(
                n, ij, used, candidate & distinct, shifts, quality,
                (alt_of, alt_shift, alt_quality, alt_open), c, params.outlier_px, full,
            )  # fmt: skip
            if bridge >= 0:
                used[bridge], status[bridge], weight[bridge] = False, "outlier", 0.0
                candidate[bridge] = False
                moved, picked = admit[picked >= 0], picked[picked >= 0]
                alt_open[picked] = False
                shifts[moved], quality[moved] = alt_shift[picked], alt_quality[picked]
                full[moved] = _strength(quality[moved]) * area[moved] / unit_area
        if not len(admit):
            admit = _lone_best(n, ij, used, candidate & distinct & established, quality,
                               params.min_peak_margin)  # fmt: skip
        if not len(admit):
            break
        used[admit], status[admit], weight[admit] = True, "used", full[admit]
        candidate[admit] = False
    model: dict[int, np.ndarray] = {}
    if params.stage_model:
        drop = _implausible_bridges(table, shapes, ij, shifts, used, side, olo, ohi, quality)
        if len(drop):
            used[drop], status[drop], weight[drop] = False, "outlier", 0.0
            c = _solve(n, ij[used], shifts[used], weight[used], params.prior_weight)
            residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)
        model = _stage_model(table, shapes, ij, shifts, used, side, olo, ohi)
        c = c + _place_components(n, ij, used, model, c)
    affines = table.affines
    affines[:, :nd, nd] += c
    extent = np.rint(np.maximum(ohi - olo, 0)).astype(int)
    pairs = tuple(
        PairResult(
            int(ij[k, 0]),
            int(ij[k, 1]),
            tuple(map(float, shifts[k])),
            float(quality[k]),
            tuple(map(int, extent[k])),
            bool(used[k]),
            float(residual[k]),
            str(status[k]),
            float(runner[k]),
            float(weight[k]),
            tuple(map(float, model[k])) if k in model else None,
        )
        for k in range(m)
    )
    counts = collections.Counter(status.tolist())
    logger.info("registered %d tiles from %d pairs: %s; %d modelled", n, m,
                dict(sorted(counts.items())), len(model))  # fmt: skip
    return Registration(table.with_affines(affines), pairs, c, params, table)


def _strength(quality: np.ndarray) -> np.ndarray:
    """A match's weight per unit of overlap area: the Fisher z of its NCC, ``arctanh(q)``
    (``q`` capped at ``_NCC_CAP``). The NCC itself ranks matches the same way but too evenly:
    weighted by it, a chance match (NCC 0.54, 47 px off) and a true one (0.998) in the same
    loops came out with equal misfits and the true one was dropped (vignetted ``cell``, 5x5
    tiles at 6 % overlap: 15 px mean error); z grows as a match nears perfect (0.55, 0.97 and
    2.65 at 0.5, 0.75 and 0.99), so the true pair outweighs the chance match 4.4 to 1."""
    return np.arctanh(np.clip(quality, 0.0, _NCC_CAP))


def _confirmed(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, residual: np.ndarray,
    tolerance: float,
) -> np.ndarray:  # fmt: skip
    """Candidate pairs (refused as weak or ambiguous) whose shift agrees within ``tolerance``
    with what the used pairs already predict for them (both tiles joined by used pairs).

    Over the whole search a weak match may be chance; landing within ``tolerance`` of an
    independent prediction by chance is about ``pi tolerance^2 / shifts searched`` (0.1 % for
    a 1.5 px tolerance in a +-38 px search), so such a match is confirmed by its loop.
    """
    label = _components(n, ij[used])[1]
    joined = label[ij[:, 0]] == label[ij[:, 1]]
    ok = candidate & joined & (np.nan_to_num(residual, nan=np.inf) <= tolerance)
    return np.flatnonzero(ok)


def _agreeing_joins(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, shifts: np.ndarray,
    quality: np.ndarray, c: np.ndarray, tolerance: float, owner: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Refused matches (``candidate``) that join two groups of tiles left apart by the used
    pairs and agree with each other: for each candidate between two groups (best NCC first),
    the group of its tile ``j`` moved as a whole to fit it, the other candidates between the
    same two groups that then land within ``tolerance`` of their shift. Two routes that agree
    confirm each other as a loop does (by chance: about ``pi tolerance^2 / shifts searched``).
    Returns the first such set (the caller re-solves and looks again). ``owner``: the pair
    each row measures, when a pair has several rows (candidate shifts): rows of one pair never
    confirm each other."""
    owner = np.arange(len(ij)) if owner is None else owner
    n_comp, label = _components(n, ij[used])
    if n_comp == 1:
        return np.zeros(0, dtype=int)
    li, lj = label[ij[:, 0]], label[ij[:, 1]]
    across = np.flatnonzero(candidate & (li != lj))
    order = across[np.argsort(-quality[across], kind="stable")].tolist()
    routes: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for k in order:  # the candidates between each two groups
        routes[(min(li[k], lj[k]), max(li[k], lj[k]))].append(k)
    base = c[ij[:, 1]] - c[ij[:, 0]]  # what the current solve gives each pair
    for k in order:
        others = np.array(routes[(min(li[k], lj[k]), max(li[k], lj[k]))])
        if len(others) < 2:
            continue
        move = shifts[k] - base[k]  # moves the group of tile j (lj[k]) to fit pair k
        sign = (lj[others] == lj[k]).astype(float) - (li[others] == lj[k]).astype(float)
        d = base[others] + sign[:, None] * move - shifts[others]
        agree = others[(owner[others] != owner[k]) & (np.linalg.norm(d, axis=1) <= tolerance)]
        if len(agree):
            return np.array([k, *agree.tolist()], dtype=int)
    return np.zeros(0, dtype=int)


def _other_peaks(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, shifts: np.ndarray,
    quality: np.ndarray, others: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    c: np.ndarray, tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`_confirmed` and :func:`_agreeing_joins` over the other local maxima of the
    pairs not used (``others``: each one's pair, shift, NCC, and whether it is still open),
    beside the best peaks of the ``candidate`` pairs. A chance match can beat the true shift
    (a thin true common part, noise); the true shift is then usually among the next few peaks,
    and a loop tells which: landing within ``tolerance`` of an independent prediction by
    chance is about ``peaks pi tolerance^2 / shifts searched`` per pair.

    Returns the pairs to use and, for each, which of ``others`` it takes (its shift replaces
    the best peak's), -1 for a best peak (chosen by agreement with another pair's peak).
    """
    of, alt_shift, alt_quality, still = others
    m, k = len(ij), len(of)
    owner = np.concatenate([np.arange(m), of])
    every = np.concatenate([shifts, alt_shift])
    used_rows = np.concatenate([used, np.zeros(k, dtype=bool)])
    off = np.linalg.norm(c[ij[owner, 1]] - c[ij[owner, 0]] - every, axis=1)
    alt_rows = np.concatenate([np.zeros(m, dtype=bool), still])
    entry = _confirmed(n, ij[owner], used_rows, alt_rows, off, tolerance)
    if not len(entry):
        open_ = alt_rows | np.concatenate([candidate, np.zeros(k, dtype=bool)])
        q_rows = np.concatenate([quality, alt_quality])
        entry = _agreeing_joins(n, ij[owner], used_rows, open_, every, q_rows, c, tolerance,
                                owner)  # fmt: skip
    entry = _one_per_pair(entry, owner, off)
    mains = entry[entry < m]
    picked = entry[entry >= m] - m
    return np.concatenate([mains, of[picked]]), np.concatenate([
        np.full(len(mains), -1), picked])  # fmt: skip


def _bridges(n: int, links: np.ndarray) -> list[int]:
    """Indices of the ``links`` (shape (m, 2)) whose removal splits a group of the ``n``
    tiles: no loop runs through them (Tarjan's low-link, iterative)."""
    adjacency: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e, (a, b) in enumerate(links.tolist()):
        adjacency[a].append((b, e))
        adjacency[b].append((a, e))
    order, low = np.full(n, -1), np.zeros(n, dtype=int)
    found, clock = [], 0
    for root in range(n):
        if order[root] >= 0:
            continue
        order[root] = low[root] = clock
        clock += 1
        stack = [(root, -1, iter(adjacency[root]))]
        while stack:
            node, via, edges = stack[-1]
            step = next(edges, None)
            if step is None:
                stack.pop()
                if stack:
                    parent = stack[-1][0]
                    low[parent] = min(low[parent], low[node])
                    if low[node] > order[parent]:
                        found.append(via)
                continue
            nxt, e = step
            if e == via:
                continue
            if order[nxt] < 0:
                order[nxt] = low[nxt] = clock
                clock += 1
                stack.append((nxt, e, iter(adjacency[nxt])))
            else:
                low[node] = min(low[node], order[nxt])
    return found


def _outvoted_bridge(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, shifts: np.ndarray,
    quality: np.ndarray, others: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    c: np.ndarray, tolerance: float, strength: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:  # fmt: skip
    """A used pair that no loop confirms (a bridge: without it its group splits in two),
    outvoted by the pairs across the same cut: two or more of them (by their best peak when
    a ``candidate``, else by one of their other peaks, ``others``: pair, shift, NCC, still
    open, as for :func:`_other_peaks`) agree on one placement of the two sides, the bridge's
    own best peak on another that no other pair supports. A chance match that is the only
    link between two groups is so replaced by the placement the other links agree on (the
    bridge's own other peak among them, where it agrees).

    Other peaks alone do not outvote a bridge whose NCC (``quality``) is above each of theirs:
    they are their pairs' lesser matches, and across a cut of many pairs some two of them
    agree by chance (noisy ``retina``, 5x5 at 6 %, draw 2: a true bridge of NCC 0.86 dropped
    for two other peaks of 0.70 and 0.58 that agreed 43 px off, 21.8 px mean error). Best
    peaks among the voters keep their say (noisy ``moon``, draw 1: a chance bridge of 0.85
    outvoted by two true best peaks of 0.77 and 0.73).

    Returns the bridge (-1: none), the pairs to use and, for each, which of ``others`` it
    takes (-1: its best peak).
    """
    of, alt_shift, alt_quality, still = others
    links = np.flatnonzero(used)
    nothing = (-1, np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    base = c[ij[:, 1]] - c[ij[:, 0]]
    bridges = links[_bridges(n, ij[links])]
    for k in bridges[np.argsort(strength[bridges], kind="stable")].tolist():
        keep = used.copy()
        keep[k] = False
        label = _components(n, ij[keep])[1]
        side_b = label[ij[k, 1]]
        li, lj = label[ij[:, 0]], label[ij[:, 1]]
        across = ((li == side_b) ^ (lj == side_b)) & (
            (li == label[ij[k, 0]]) | (lj == label[ij[k, 0]])
        )
        mains = np.flatnonzero(across & candidate & ~used)
        alts = np.flatnonzero(still & across[of] & (~used[of] | (of == k)))
        owner = np.concatenate([mains, of[alts]])
        if len(np.unique(owner[owner != k])) < 2:
            continue
        row_shift = np.concatenate([shifts[mains], alt_shift[alts]])
        sign = np.where(lj[owner] == side_b, 1.0, -1.0)
        move = sign[:, None] * (row_shift - base[owner])  # moves side b to fit each row
        best, support = None, 1  # the bridge's own placement: move 0, its own vote
        # its own other peaks do not vote against it (periodic content repeats in them): two
        # other pairs at least must agree
        for r in range(len(owner)):
            near = np.linalg.norm(move - move[r], axis=1) <= tolerance
            voters = set(owner[near].tolist())
            if np.linalg.norm(move[r]) > tolerance and len(voters - {k}) > max(support, 1):
                best, support = near, len(voters - {k})
        if best is None:
            continue
        voting = best & (owner != k)  # other peaks alone, each weaker: chance agreement
        alone = not voting[: len(mains)].any()
        if alone and float(alt_quality[alts][voting[len(mains) :]].max()) < quality[k]:
            continue
        rows = np.flatnonzero(best)
        rows = _one_per_pair(rows, owner, np.linalg.norm(move - move[rows[0]], axis=1))
        picked = np.where(rows >= len(mains), alts[np.maximum(rows - len(mains), 0)], -1)
        return k, owner[rows], picked
    return nothing


def _one_per_pair(entry: np.ndarray, owner: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Of the rows ``entry``, one per pair (``owner``): the one nearest the prediction."""
    best: dict[int, int] = {}
    for e in entry.tolist():
        k = int(owner[e])
        if k not in best or off[e] < off[best[k]]:
            best[k] = e
    return np.array(sorted(best.values()), dtype=int)


def _lone_best(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, quality: np.ndarray,
    margin: float,
) -> np.ndarray:  # fmt: skip
    """For each group of tiles that the used pairs leave apart from the largest group (which
    must hold more than half of the tiles): the best candidate joining the two, when it beats
    every other candidate touching the group by ``margin`` (one pair per group; the caller
    re-solves and looks again). Otherwise the stage model places such a group: at most the
    stage error off, where a chance match may be off by the whole search."""
    n_comp, label = _components(n, ij[used])
    if n_comp == 1:
        return np.zeros(0, dtype=int)
    sizes = np.bincount(label)
    main = int(np.argmax(sizes))
    if 2 * sizes[main] <= n:
        return np.zeros(0, dtype=int)
    li, lj = label[ij[:, 0]], label[ij[:, 1]]
    across = candidate & (li != lj)
    chosen = []
    for comp in range(n_comp):
        touch = np.flatnonzero(across & ((li == comp) | (lj == comp)))
        if comp == main or not len(touch):
            continue
        order = touch[np.argsort(-quality[touch])]
        joins_main = {int(li[order[0]]), int(lj[order[0]])} == {comp, main}
        if joins_main and (len(order) == 1 or quality[order[0]] - quality[order[1]] >= margin):
            chosen.append(int(order[0]))
    return np.array(chosen, dtype=int)


def _components(n: int, links: np.ndarray) -> tuple[int, np.ndarray]:
    """Groups of the ``n`` tiles joined by the pairs ``links`` (shape (m, 2)): their number
    and each tile's label."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    n_comp, label = connected_components(graph, directed=False)
    return int(n_comp), label


def _place_components(
    n: int, ij: np.ndarray, used: np.ndarray, model: dict[int, np.ndarray], c: np.ndarray
) -> np.ndarray:
    """Offsets that move each group of tiles joined by used pairs as one, so that the stage
    model's pairs between groups hold (least squares); the largest group stays put. Model
    pairs never bend the measured geometry inside a group."""
    n_comp, label = _components(n, ij[used])
    if n_comp == 1 or not model:
        return np.zeros_like(c)
    keys = [k for k in sorted(model) if label[ij[k, 0]] != label[ij[k, 1]]]
    if not keys:
        return np.zeros_like(c)
    pairs = np.array([(label[ij[k, 0]], label[ij[k, 1]]) for k in keys], dtype=int)
    target = np.array([model[k] - (c[ij[k, 1]] - c[ij[k, 0]]) for k in keys])
    offset = _solve(n_comp, pairs, target, np.ones(len(keys)), 1e-6)
    main = int(np.argmax(np.bincount(label)))
    offset -= offset[main]
    return offset[label]


def _steps(
    table: TileTable, shapes: np.ndarray, ij: np.ndarray, olo: np.ndarray, ohi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the axis along which it steps (where its overlap is thinnest) and the sign
    that orients its correction so that the step runs forward."""
    offs = _footprints(table, shapes)[0]
    step = offs[ij[:, 1]] - offs[ij[:, 0]]
    frac = (ohi - olo) / np.minimum(shapes[ij[:, 0]], shapes[ij[:, 1]])
    axis = np.argmin(frac, axis=1)
    sign = np.where(step[np.arange(len(ij)), axis] < 0, -1.0, 1.0)
    return axis, sign


def _implausible_bridges(
    table: TileTable, shapes: np.ndarray, ij: np.ndarray, shifts: np.ndarray, used: np.ndarray,
    side: np.ndarray, olo: np.ndarray, ohi: np.ndarray, quality: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Weak used side pairs that no loop confirms (bridges, NCC under ``_WEAK_BRIDGE``) whose
    correction lies far outside those of the loop-confirmed pairs stepping the same way:
    beyond ``_PLAUSIBLE_SPREAD`` robust standard deviations of theirs (at least
    ``_PLAUSIBLE_MIN_PX``) from their median. Such a match is most likely chance (in a nearly
    blank overlap of sparse content: a 32 px jump at NCC 0.28, where the stage was 3 px off),
    and the stage model (:func:`_stage_model`, MIST's repeatability check in spirit) places
    the pair better. Needs ``_PLAUSIBLE_POOL`` confirmed pairs of that direction."""
    sides = np.flatnonzero(used & side)
    if len(sides) < _PLAUSIBLE_POOL:
        return np.zeros(0, dtype=int)
    bridges = set(sides[_bridges(len(table), ij[sides])].tolist())
    axis, sign = _steps(table, shapes, ij, olo, ohi)
    oriented = shifts * sign[:, None]
    drop = []
    for k in sorted(bridges):
        if quality[k] >= _WEAK_BRIDGE:
            continue
        pool = np.array([oriented[q] for q in sides if q not in bridges and axis[q] == axis[k]])
        if len(pool) < _PLAUSIBLE_POOL:
            continue
        centre = np.median(pool, axis=0)
        spread = 1.4826 * np.median(np.abs(pool - centre), axis=0)
        limit = max(_PLAUSIBLE_SPREAD * float(np.linalg.norm(spread)), _PLAUSIBLE_MIN_PX)
        if float(np.linalg.norm(oriented[k] - centre)) > limit:
            drop.append(k)
    if drop:
        logger.info("dropped %d weak unconfirmed pair(s) far from the stage model: %s",
                    len(drop), [tuple(map(int, ij[k])) for k in drop])  # fmt: skip
    return np.array(drop, dtype=int)


def _stage_model(
    table: TileTable, shapes: np.ndarray, ij: np.ndarray, shifts: np.ndarray, used: np.ndarray,
    side: np.ndarray, olo: np.ndarray, ohi: np.ndarray,
) -> dict[int, np.ndarray]:  # fmt: skip
    """Median correction, for each unusable side pair, of the usable pairs of its direction
    that share the stage's error with it, the grouping chosen by how well it predicts.

    Per direction, three groupings are tried: the pairs crossing the same boundary between
    rows (columns), the pairs of the same row (column, MIST's), and all of the direction. Each
    usable pair is predicted by the median of the others in its group; the grouping with the
    smallest median prediction error is used where it beats the whole direction's by
    ``_MODEL_GAIN`` (else the whole direction: independent errors are best averaged over
    all). A boundary is one stage move in a raster or serpentine scan: with backlash every
    other row sits a few pixels to one side, the vertical pairs of one column alternate
    between +b and -b (their median placed a blank tile 3.5 px off under 7 px of backlash),
    those of one boundary agree. Pairs are oriented so that the step runs forward.

    The stage itself (no correction) is a fourth candidate, used where it predicts the usable
    pairs better than the chosen grouping by ``_MODEL_GAIN``: where each tile's stage error is
    its own (no step, scale or backlash shared), the median of a few other pairs only adds
    their errors to the pair's (3x3 cuts of real frames with independent jitter: 3.08 px mean
    error with the median, 2.94 with the stage; the real tile sets, whose errors are shared,
    keep the median). Where no grouping can be judged (a lone usable pair), the median is
    kept: that pair's step is all there is to go on."""
    nd = table.ndim
    offs = _footprints(table, shapes)[0]
    axis, sign = _steps(table, shapes, ij, olo, ohi)
    # row / column index of each tile along each axis, in units of the grid's step there (the
    # tile size is no unit: at 30 % overlap it gave two neighbouring columns one index)
    index = np.zeros(offs.shape, dtype=int)
    for a in range(nd):
        along = side & (axis == a)
        steps = np.abs(offs[ij[along, 1], a] - offs[ij[along, 0], a])
        step = float(np.median(steps)) if steps.size else float(np.median(shapes[:, a]))
        index[:, a] = np.round((offs[:, a] - offs[:, a].min()) / max(step, 1e-9)).astype(int)

    def key(k: int, grouping: str) -> tuple[int, ...]:
        a = int(axis[k])
        if grouping == "boundary":
            return a, int(min(index[ij[k, 0], a], index[ij[k, 1], a]))
        if grouping == "line":
            return (a, *(int(index[ij[k, 0], o]) for o in range(nd) if o != a))
        return (a,)

    oriented = shifts * sign[:, None]
    usable = np.flatnonzero(used & side).tolist()
    groupings = ("direction", "boundary", "line")
    pools: dict[str, dict[tuple[int, ...], list[int]]] = {
        g: collections.defaultdict(list) for g in groupings
    }
    for k in usable:
        for g in groupings:
            pools[g][key(k, g)].append(k)
    # each usable pair's distance from the median of the others in its group (NaN: alone)
    missed = {g: np.full(len(shifts), np.nan) for g in groupings}
    for g in groupings:
        for members in pools[g].values():
            others = _leave_one_out_median(oriented[members])
            missed[g][members] = np.linalg.norm(oriented[members] - others, axis=1)

    def typical(e: np.ndarray) -> float:  # median of the predicted pairs (inf: none)
        e = e[np.isfinite(e)]
        return float(np.median(e)) if e.size else math.inf

    chosen: dict[int, str] = {}
    for a in range(nd):
        members = [k for k in usable if axis[k] == a]
        chosen[a], score = "direction", typical(missed["direction"][members])
        for g in groupings[1:]:
            e = missed[g][members]
            if np.isfinite(e).sum() * 2 < max(len(members), 2):
                continue  # the grouping predicts too few of the pairs to be judged
            if typical(e) < _MODEL_GAIN * score:
                chosen[a], score = g, typical(e)
        if members and math.isfinite(score):
            # the stage itself: each usable pair's correction is what it would miss by
            still = typical(np.linalg.norm(oriented[members], axis=1))
            if still < _MODEL_GAIN * score:
                chosen[a], score = "stage", still
        if any(not used[k] and axis[k] == a for k in np.flatnonzero(side).tolist()):
            if chosen[a] == "stage":
                logger.info("stage model, pairs stepping along axis %d: the stage positions "
                            "(they predict the usable pairs within %.2f px, better than a "
                            "median of the others)", a, score)  # fmt: skip
            else:
                logger.info("stage model, pairs stepping along axis %d: median of the usable "
                            "pairs of the same %s (they predict each other within %.2f px)",
                            a, chosen[a], score)  # fmt: skip
    medians: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
    model: dict[int, np.ndarray] = {}
    for k in np.flatnonzero(side & ~used).tolist():
        g = chosen[int(axis[k])]
        if g == "stage":
            model[k] = np.zeros(nd)
            continue
        if not pools[g].get(key(k, g)):
            g = "direction"
        if not pools[g].get(key(k, g)):
            continue
        at = (g, key(k, g))
        if at not in medians:
            medians[at] = np.median(oriented[pools[g][key(k, g)]], axis=0)
        model[k] = medians[at] * sign[k]
    return model


def _leave_one_out_median(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` (n, d), the per-column median of the other rows (NaN when n < 2),
    from one sort: O(n log n) where recomputing each median is O(n^2)."""
    n = len(values)
    if n < 2:
        return np.full(values.shape, np.nan)
    order = np.argsort(values, axis=0, kind="stable")
    ranked = np.take_along_axis(values, order, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(n)[:, None], order.shape), axis=0)

    def at(i: int) -> np.ndarray:  # the i-th smallest of the others, per row and column
        return np.where(i < rank, ranked[i], ranked[min(i + 1, n - 1)])

    m = n - 1
    return at(m // 2) if m % 2 else (at(m // 2 - 1) + at(m // 2)) / 2


def _within_search_budget(
    table: TileTable, shapes: np.ndarray, footprints: tuple[np.ndarray, np.ndarray],
    plans: list[Plan], params: RegistrationParams,
) -> list[Plan]:  # fmt: skip
    """``plans`` whose searches fit the process's memory limit (``max_search_bytes`` of
    :class:`~scopefx.io.EndpointLimits`), judged from the geometry before any tile is read.

    A search over that limit is narrowed to the largest reach that fits (at least
    ``_MIN_NARROWED_PX``), with a warning, when the reach is the default; one the caller asked
    for (``max_shift_px``), or one whose overlap alone is over the limit, is refused with a
    :class:`ResourceLimitError` that names the pair and the largest ``max_shift_px`` that fits.
    """
    budget = EndpointLimits.from_env().max_search_bytes
    out, narrowed = [], []
    for plan in plans:
        need = search_bytes(plan.size, plan.reach)
        if need <= budget:
            out.append(plan)
            continue

        def planned(r: int, plan: Plan = plan) -> Plan:
            return plan_pair(table, shapes, footprints, plan.i, plan.j, float(r))

        fits, hi_r = 0, math.ceil(plan.reach) - 1  # the largest reach that fits, or 0
        while fits < hi_r:
            mid = (fits + hi_r + 1) // 2
            p = planned(mid)
            fits, hi_r = (mid, hi_r) if search_bytes(p.size, p.reach) <= budget else (fits, mid - 1)
        if params.max_shift_px is None and fits >= _MIN_NARROWED_PX:
            narrowed.append((plan.i, plan.j, plan.reach, fits))
            out.append(planned(fits))
            continue
        refs = f"tiles {plan.i} ({table[plan.i].ref}) and {plan.j} ({table[plan.j].ref})"
        advice = (f"lower max_shift_px (--max-shift) to {fits} px or less" if fits
                  else "their overlap alone is too large to search: split the tiles")  # fmt: skip
        raise ResourceLimitError(
            f"registering {refs} would search {'x'.join(map(str, plan.size))} px crops over "
            f"+-{plan.reach:g} px: about {size_text(need)} of working memory, over this "
            f"process's limit of {size_text(budget)} ({LIMIT_ENV['max_search_bytes']}); "
            f"no tile was read. To register, {advice}, or ask the endpoint's operator to "
            "raise the limit"
        )
    if narrowed:
        i, j, was, now = narrowed[0]
        logger.warning(
            "%d pair(s) searched over a narrower range than the default, to stay within this "
            "process's %s per search (%s): tiles %d and %d over +-%d px instead of "
            "+-%g px%s", len(narrowed), size_text(budget), LIMIT_ENV["max_search_bytes"], i, j,
            now, was, "" if len(narrowed) == 1 else ", and others alike",
        )  # fmt: skip
    return out


def _prepared(
    table: TileTable, reader: Callable[[str], Any], shapes: np.ndarray, k: int, flatfield: Any,
    params: RegistrationParams, raw: bool = False,
) -> tuple[np.ndarray, float, Callable[[], np.ndarray] | None]:  # fmt: skip
    """Tile ``k`` read, checked against its expected shape and prepared for correlation
    (:func:`~._correlate.prepare`): the plane, its scale and (``raw``) a function that
    prepares it without the flat field (called once the first plane's crops are cut, so the
    two planes are not held at once), else None."""
    nd = table.ndim
    try:
        data, opaque = read_opaque(reader, table[k].ref, nd)
    except Exception as exc:
        note_tile(exc, table[k].ref)
        raise
    got = tuple(np.shape(data)[-nd:])
    if got != tuple(int(v) for v in shapes[k]):
        raise ConfigError(
            f"tile {k} ({table[k].ref}): spatial shape {got}, expected "
            f"{tuple(int(v) for v in shapes[k])} (from shapes or the file header)"
        )
    plane, scale = prepare(data, nd, flatfield, params.highpass_sigma_px, opaque)
    if not raw or flatfield is None:
        return plane, scale, None
    return plane, scale, lambda: prepare(data, nd, None, params.highpass_sigma_px, opaque)[0]


def _failed(r: Measured, params: RegistrationParams) -> bool:
    """A measurement that gives no usable match on its own: blank, weak (NCC under
    ``min_quality``), no better than chance, or on the search's edge (no peak): what
    :func:`_settle` files as ``blank`` or ``low_quality`` (there a repeated pattern's pair on
    the edge is filed ``ambiguous`` first, the more telling reason)."""
    return (not np.all(np.isfinite(r.shift)) or r.quality < params.min_quality
            or not r.significant or not r.inside)  # fmt: skip


def _measure_all(
    table: TileTable, reader: Callable[[str], Any], shapes: np.ndarray, plans: list[Plan],
    params: RegistrationParams, flatfield: Any, pool: ThreadPoolExecutor, workers: int,
    banding: Banding | None = None, fallback: bool = False,
) -> list[Measured]:  # fmt: skip
    """Read each tile once, cut its crops, correlate each pair as soon as both crops exist.

    ``fallback`` (the flat field is an estimate): a pair that gives no usable match on the
    corrected crops is measured again on crops without the flat field, and that result is
    kept if it is usable. Where the overlaps' content is faint, the estimate's own error at
    the tiles' edges (where every overlap lies; 8 % rms at the bottom edge of a 5x5 scan of
    `camera` under 50 % vignetting) swamps it, while the vignetting it should remove is smooth
    over a thin overlap and mostly taken out by the detrend (NCC 0.99 raw, -0.35 corrected, on
    one such pair)."""
    by_tile: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    for p, plan in enumerate(plans):
        by_tile[plan.i].append((p, 0))
        by_tile[plan.j].append((p, 1))
    lo, hi = _footprints(table, shapes)  # visit tiles band by band (bands one tile high)
    band = np.floor(lo / np.median(hi - lo, axis=0)).T[::-1]
    order = [k for k in np.lexsort((np.arange(len(lo)), *band)).tolist() if k in by_tile]
    Crop = tuple[np.ndarray, float, np.ndarray | None]

    def load(k: int) -> list[tuple[int, int, Crop]]:
        plane, scale, raw = _prepared(table, reader, shapes, k, flatfield, params, fallback)
        affine = table[k].affine

        def crops(x: np.ndarray) -> list[np.ndarray]:
            if banding is not None and banding.removed:
                x = banding.remove(x)
            return [cut(x, affine, plans[p]) for p, _ in by_tile[k]]

        main = crops(plane)
        del plane  # before the raw plane is made
        spare = crops(raw()) if raw is not None else [None] * len(main)
        return [(p, side, (a, scale, b))
                for (p, side), a, b in zip(by_tile[k], main, spare, strict=True)]  # fmt: skip

    def one(p: int, a: np.ndarray, b: np.ndarray, scales: tuple[float, float],
            shaded: bool = False) -> Measured:  # fmt: skip
        return measure(a, b, plans[p].reach, params.min_overlap_px, scales,
                       params.detrend_degree, params.min_quality, shaded)  # fmt: skip

    def correlate(p: int, a: Crop, b: Crop) -> Measured:
        r = one(p, a[0], b[0], (a[1], b[1]))
        if a[2] is not None and b[2] is not None and _failed(r, params):
            again = one(p, a[2], b[2], (a[1], b[1]), shaded=True)
            if not _failed(again, params):
                r = again
        others = tuple((s + plans[p].adjust, *rest) for s, *rest in r.alternatives)
        return r._replace(shift=r.shift + plans[p].adjust, alternatives=others)

    pending: dict[int, list[Crop | None]] = {}
    results: dict[int, Future[Measured]] = {}
    loads: collections.deque[Future[list[tuple[int, int, Crop]]]] = collections.deque()

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
