"""What registration takes out of the tiles before it correlates them, estimated from the
tiles: a flat field when the caller gave none (:func:`_shading_estimate`,
``RegistrationParams.estimate_flatfield``) and the row and column offsets a camera's banding
adds to every tile alike (:func:`_banding_estimate`, :class:`Banding`,
``RegistrationParams.remove_banding``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io import TileTable
from ._blend import read_masked
from ._flatfield import MIN_TILES, FlatField, estimate_flatfield
from ._measure import _prepared
from ._regparams import RegistrationParams

__all__ = ["Banding"]

logger = logging.getLogger("scopefx.fusion._register")  # registration's messages, one logger


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
