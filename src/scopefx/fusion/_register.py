"""Registration of mosaic tiles from their overlaps (``scopefx fuse --register``).

The steps, in the order :func:`register` runs them (each in the module named):

1. **Neighbours from geometry** (:func:`~._overlaps.overlapping_pairs`). Pairs of tiles whose
   stage footprints overlap; a pair that overlaps partially along more than one axis
   (diagonal neighbours sharing only a corner) is not measured by default: its small corner
   holds mostly vignetting. A layout of far more pairs than a mosaic has (tiles stacked at
   one place) is refused before any is measured; measuring stops at the endpoint's task time.
2. **Measure each side pair** (:mod:`._measure`, :mod:`._correlate`): crops on the stage
   overlap enlarged by the search range, flat-field corrected when a flat field is given or
   estimated (``estimate_flatfield``), less the banding the tiles share (``remove_banding``;
   both estimated from the tiles in :mod:`._shading`); the normalised cross-correlation (NCC)
   on the pixels both tiles hold, each crop minus its quadratic fit over them (so smooth
   shading does not correlate), for every shift in range; the best refined by Gauss-Newton on
   the NCC of the unsmoothed common part (from the phase correlation's estimate). A match must
   reach ``min_quality``, stand above what chance gives over the whole search, with a
   confidence bound above zero, lie inside the search (on its edge the NCC may still rise
   beyond, and chance matches gather there: the bound favours the largest common part), and
   beat the best distinct runner-up by ``min_peak_margin`` (a repeated pattern, such as graph
   paper, gives several equally good peaks: such a pair is *ambiguous* and not used).
3. **Stage model** (MIST's, by stage move; :mod:`._stagemodel`): a side pair that gave no
   usable match takes the median correction of the usable pairs crossing the same boundary
   between rows (columns), one stage move in a raster or serpentine scan, backlash included,
   when at least two do; else of the pairs of its row (column); else of its direction.
4. **Global solve** (:mod:`._settle`, the solve itself in :mod:`._lsq`): sparse weighted least
   squares, weights the Fisher z of the NCC (``arctanh``, capped at NCC 0.99) x overlap area,
   and along each axis a share ``min(1, 1 px^2 / variance)`` of it, the variance that of the
   pair's shift along the axis (:attr:`~._correlate.Measured.spread`: a ridge or broad hill
   of the NCC is known poorly along it; each axis is then solved with its own weights);
   pairs whose standardised residual (``residual / sqrt(1 - h)``, ``h`` the share of its own
   shift the solve gives back to the pair: a wrong pair's residual is otherwise a fraction of
   its error spread over its loop) exceeds ``outlier_px`` are dropped, worst first, and the
   solve repeated. Second pass (:mod:`._loops`), over the refused side pairs (weak or
   ambiguous, NCC at least ``min_quality``, best shift inside the search), one step at a time
   with the solve repeated after each: a pair whose shift lands within ``outlier_px`` of what
   the used pairs predict is used (its loop confirms it); else two unambiguous ones between
   the same two groups of tiles that agree within ``outlier_px`` are used (they confirm each
   other as a loop does); else a group of tiles left apart from the main one is joined by its
   clearly best unambiguous match whose confidence bound is above zero. Groups of tiles still
   unconnected by usable pairs are then moved as wholes to fit the stage model's pairs between
   them (which so never bend the measured geometry). Each measurement also keeps its NCC's
   next few distinct local maxima (a chance match can beat the true shift when the true
   common part is thin or noisy; the true one is then usually among them): when the pairs'
   best peaks confirm nothing more, those of the pairs not used are tried the same two ways
   (landing within ``outlier_px`` of the prediction, or two agreeing between the same two
   groups), and one so confirmed replaces its pair's best peak. Last, a used pair that no loop
   confirms (a bridge: the only used link between two groups of tiles), weakest first, is
   outvoted when more pairs across the same cut (by their best or other peaks, its own other
   peaks among them) agree on another placement of the two groups than on its own: it is
   dropped and they are used.

The result is a :class:`~._regresult.Registration`. Fewer usable side pairs than
``min_usable_fraction`` of them (a weak match that no loop confirms, where the layout gives it
loops, does not count) is an error (:class:`~scopefx.errors.RegistrationError`)
unless ``allow_partial``. Transforms follow :mod:`scopefx.io._tiles`: homogeneous affines in
array index order (``(y, x)`` or ``(z, y, x)``), tile index -> mosaic index.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError, RegistrationError
from ..io import TileTable, layout_problems, read_image, read_metadata
from ._blend import tile_reader
from ._correlate import Measured, plan_pair
from ._flatfield import read_named
from ._fuse import colour_samples, fused_shape
from ._measure import _measure_all, _within_search_budget
from ._overlaps import _footprints, _shapes_array, overlapping_pairs
from ._regparams import RegistrationParams, _check, pair_reach
from ._regresult import Registration
from ._settle import _settle
from ._shading import _banding_estimate, _shading_estimate

__all__ = ["read_as_fused", "register"]

logger = logging.getLogger(__name__)


def _is_corner(olo: np.ndarray, ohi: np.ndarray, ext_i: np.ndarray, ext_j: np.ndarray) -> bool:
    """Partial overlap (under half the smaller tile) along more than one axis."""
    partial = (ohi - olo) < 0.5 * np.minimum(ext_i, ext_j)
    return int(partial.sum()) > 1


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
        A parameter is out of range, a tile's shape differs from ``shapes``, or the tiles
        overlap far more than a mosaic's do (over ``MAX_PAIRS_PER_TILE`` pairs per tile, see
        :func:`~._overlaps.overlapping_pairs`: many tiles at one place).
    RegistrationError
        No two tiles overlap at their stage positions, or fewer than
        ``params.min_usable_fraction`` of the side pairs gave a usable match (without
        ``params.allow_partial``); then its ``registration`` holds every pair as measured
        and classified, and the layout ``allow_partial`` would give.
    ResourceLimitError
        Measuring the pairs ran past the endpoint's task time (``SCOPEFX_TASK_TIMEOUT_S``,
        counted from this call), or a search would take more memory than it allows.
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
    return register_from(time.monotonic(), table, params=params, read=read, shapes=shapes,
                         flatfield=flatfield, workers=workers)  # fmt: skip


def register_from(
    started: float,
    table: TileTable,
    *,
    params: RegistrationParams | None = None,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    flatfield: Any = None,
    workers: int = 1,
) -> Registration:
    """:func:`register`, the endpoint's task time counted from ``started``
    (:func:`time.monotonic`): a task that does more than register (its QC report) checks
    one clock."""
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
        plans = [plan_pair(table, shape_arr, (lo, hi), i, j, pair_reach(params, shape_arr, i, j))
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
                                     workers, banding, shading == "estimated",
                                     started=started))  # fmt: skip
    empty = Measured(np.full(nd, np.nan), 0.0, 0.0, (0,) * nd)
    skipped = [c and not params.corner_pairs for c in corner]
    results = [empty if s else next(measured) for s in skipped]
    searched = iter(p.reach for p in plans)  # as searched: the memory budget may narrow it
    reach = [0.0 if s else next(searched) for s in skipped]
    reg, refusal = _settle(table, shape_arr, geometry, corner, results, params, reach)
    removed = banding is not None and banding.removed
    reg = dataclasses.replace(reg, flatfield=shading, banding="removed" if removed else "none")
    if refusal is not None:  # with the evidence: what was measured, what partial would give
        raise RegistrationError(refusal, registration=reg)
    return reg
