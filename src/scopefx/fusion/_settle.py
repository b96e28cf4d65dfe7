"""From the measured pairs to the registration (:func:`_settle`, steps 3 and 4 of
:mod:`._register`): each measurement classified (used, low quality, ambiguous, blank, corner),
the global solve (:mod:`._lsq`) repeated as outliers are dropped, refused and other peaks
admitted where loops confirm them and bridges outvoted (:mod:`._loops`), the stage model
(:mod:`._stagemodel`) for the side pairs left unusable, the final solve holding each tile to
the stage as far as the evidence says (:func:`_held_to_stage`; with too few loops to judge it,
the groups of tiles still apart placed by the model instead), and the
:class:`~._regresult.Registration` built; the tiles that no used pair placed are named in a
warning."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Sequence

import numpy as np

from ..io import TileTable
from ._correlate import STRONG_MATCH, Measured
from ._loops import (
    _agreeing_joins,
    _components,
    _confirmed,
    _lone_best,
    _other_peaks,
    _outvoted_bridge,
    _place_components,
)
from ._lsq import _misfit, _normal_lu, _solve
from ._regparams import AUTO_SHIFT, RegistrationParams
from ._regresult import PairResult, Registration, unmatched_note
from ._stagemodel import _implausible_bridges, _ridge_steps, _stage_fit

logger = logging.getLogger("scopefx.fusion._register")  # registration's messages, one logger


_NCC_CAP = 0.99  # above it, a match's weight stops growing (resampling, not noise, limits it)
_SPREAD_PX = 1.0  # a shift's sd along an axis (Measured.spread) above which it weighs less there
# ... down to this share of its weight: far above the solve's prior (1e-4), which would
# otherwise pull a tile held only along a ridge towards its stage position
_SPREAD_FLOOR = 0.01


def _settle(
    table: TileTable,
    shapes: np.ndarray,
    geometry: list[tuple[int, int, tuple[float, ...], tuple[float, ...]]],
    corner: list[bool],
    results: list[Measured],
    params: RegistrationParams,
    reach: Sequence[float],
) -> tuple[Registration, str | None]:
    """Classify the measurements, model the unusable side pairs, solve, drop outliers.

    Returns the registration and, where too few side pairs gave a usable match for
    ``params`` (``min_usable_fraction``, without ``allow_partial``), why it is refused (None
    otherwise): the registration is then what ``allow_partial`` would give, the evidence
    :class:`~scopefx.errors.RegistrationError` carries."""
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
    area = np.prod(np.maximum(ohi - olo, 1.0), axis=1)
    unit_area = max(float(np.median(area[used])) if used.any() else 1.0, 1e-12)
    full = _strength(quality) * area / unit_area
    factor = _axis_factor(results, nd)
    weight = np.where(used[:, None], full[:, None] * factor, 0.0)
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
            parts = c[ij[:, 1]] - c[ij[:, 0]] - shifts
            residual = np.linalg.norm(parts, axis=1)  # NaN: unmeasured
            misfit = _misfit(n, ij, used, weight, residual, params, lu, parts)
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
            factor[moved] = 1.0  # an other peak's spread is not measured
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
                factor[moved] = 1.0  # an other peak's spread is not measured
        if not len(admit):
            admit = _lone_best(n, ij, used, candidate & distinct & established, quality,
                               params.min_peak_margin)  # fmt: skip
        if not len(admit):
            break
        used[admit], status[admit] = True, "used"
        weight[admit] = full[admit, None] * factor[admit]
        candidate[admit] = False
    model: dict[int, np.ndarray] = {}
    ridged: dict[int, np.ndarray] = {}
    measured = shifts  # what the report gives as each pair's shift
    if params.stage_model:
        drop = _implausible_bridges(table, shapes, ij, shifts, used, side, olo, ohi, quality,
                                    np.asarray(reach, float),
                                    [r.near for r in results],
                                    np.array([r.concentration for r in results]))  # fmt: skip
        if len(drop):
            used[drop], status[drop], weight[drop] = False, "outlier", 0.0
            c = _solve(n, ij[used], shifts[used], weight[used], params.prior_weight)
            residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)
        # where only a ridge of their NCC joins tiles along an axis, the stage says as much
        ridged = _ridge_steps(table, shapes, ij, shifts, used, side, olo, ohi,
                              _variance(results, nd), _SPREAD_PX**2)  # fmt: skip
        if ridged:
            measured = shifts.copy()
            for k, step in ridged.items():
                shifts[k] = step
            c = _solve(n, ij[used], shifts[used], weight[used], params.prior_weight)
            residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)
        # where most pairs with content failed, the usable few are no sure sign of the stage's
        # errors: their steps are not spread to the rest (see _stage_fit's ``trusted``)
        content = side & (status != "blank")
        trusted = int((used & side).sum()) >= params.min_usable_fraction * int(content.sum())
        steps, miss = _stage_fit(table, shapes, ij, shifts, used, side, olo, ohi, trusted)
        model = {k: v for k, v in steps.items() if not used[k]}
        held = _held_to_stage(n, ij, shifts, used, side, weight, c, steps, miss,
                              params.prior_weight)  # fmt: skip
        if held is None:  # the groups of tiles left apart placed by the model's steps
            c = c + _place_components(n, ij, used, model, c)
            residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)
        else:  # each tile held to the model (or the stage), the groups apart with it
            c, target = held
            model = {k: target[ij[k, 1]] - target[ij[k, 0]] for k in model}
            residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)
    affines = table.affines
    if used.any():  # nothing registered: the stage positions stay as they are
        c = c + _whole_pixel_gauge(affines[:, :nd, nd] + c)
    affines[:, :nd, nd] += c
    extent = np.rint(np.maximum(ohi - olo, 0)).astype(int)
    stand_in = {**ridged, **model}  # what the solve took in place of the measured shift
    pairs = tuple(
        PairResult(
            int(ij[k, 0]),
            int(ij[k, 1]),
            tuple(map(float, measured[k])),
            float(quality[k]),
            tuple(map(int, extent[k])),
            bool(used[k]),
            float(residual[k]),
            str(status[k]),
            float(runner[k]),
            float(weight[k].min()),
            tuple(map(float, stand_in[k])) if k in stand_in else None,
        )
        for k in range(m)
    )
    counts = collections.Counter(status.tolist())
    logger.info("registered %d tiles from %d pairs: %s; %d modelled", n, m,
                dict(sorted(counts.items())), len(model))  # fmt: skip
    reg = Registration(table.with_affines(affines), pairs, c, params, table)
    # judged on the pairs the solve kept: those the loops confirmed count, outliers do not,
    # so that the refusal and its report (the statuses above) give one count; nor do weak
    # matches that no loop confirms where the layout has loops
    n_side, n_ok = int(side.sum()), int((used & side).sum())
    n_weak = len(reg.unconfirmed_weak_pairs())
    refusal = None
    if n > 1 and n_ok - n_weak < params.min_usable_fraction * n_side and not params.allow_partial:
        counts = collections.Counter(status[side].tolist())
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(counts.items()))
        if n_weak:
            what = "is a weak match" if n_weak == 1 else "are weak matches"
            detail += (f"; {n_weak} of the used {what} (NCC under {STRONG_MATCH:g}) that no "
                       "loop of pairs confirms, not counted: such a match is as often chance "
                       "as not")  # fmt: skip
        turns = table.extra.get("stage_turns") or []
        turned = f"; these positions were read with {' and '.join(turns)}" if turns else ""
        refusal = (
            f"only {n_ok - n_weak} of {n_side} neighbouring tile pairs gave a usable match "
            f"({detail}); "
            f"at least {params.min_usable_fraction:.0%} are needed. Low quality or blank: the "
            "overlaps hold too little content; ambiguous: a repeated pattern; outlier: a "
            "match the other pairs contradict. Widen the search "
            "(max_shift_px / --max-shift) or lower min_overlap_px (--min-overlap) if the "
            "stage positions are far off; if the pairs of one direction all fail, the stage's "
            f"axis may run against the image's (flip_x / flip_y: --flip-x / --flip-y{turned}); or "
            "register what can be registered with allow_partial=True "
            "(--allow-partial-registration)"
        )
    if refusal is None:  # a refusal says why instead
        _warn_unmatched(reg)
    return reg, refusal


#: Loops (used pairs beyond a tree of the tiles) needed to judge how far the pairs err.
_PRIOR_LOOPS = 3
#: px^2: the least variance granted to each tile's stage error about the stage model.
_PRIOR_FLOOR = 0.25
#: Confidence of the lower bound taken for the pairs' variance factor (``kappa``).
_PRIOR_CONFIDENCE = 0.95


def _held_to_stage(
    n: int, ij: np.ndarray, shifts: np.ndarray, used: np.ndarray, side: np.ndarray,
    weight: np.ndarray, c: np.ndarray, steps: dict[int, np.ndarray], miss: float, floor: float,
) -> tuple[np.ndarray, np.ndarray] | None:  # fmt: skip
    """The tiles' corrections with each tile held to the stage model as its error allows: a
    maximum a posteriori solve, each used pair's shift with the variance ``kappa / w`` (``w``:
    its weight; ``kappa`` per axis from how well the pairs' loops close: the a posteriori
    variance factor ``sum w r^2`` over the upper ``_PRIOR_CONFIDENCE`` quantile of the
    chi-square of ``loops`` degrees of freedom: its lower confidence bound), each tile's
    correction with the prior ``N(m, sigma^2)`` (``m``: where the stage model's steps put it,
    least squares over the side pairs; ``sigma^2``: its error about the model, from ``miss``,
    the median length by which the model misses a usable pair's correction, the difference of
    two tiles' errors). ``c``: the pairs' own solve (``floor`` its prior), whose residuals
    give ``kappa``. None where that cannot be judged (fewer than ``_PRIOR_LOOPS`` loops, the
    model not judged).

    The solve alone holds the tiles only by the pairs (its prior, ``floor``, fixes the common
    offset alone), and a chain of weak pairs that no loop checks adds their errors: a 20x20
    scan of 64 px ``cell`` tiles at 15 % overlap and 300 photons, whose matches err by 1-5 px,
    came out 5.8 px off on average (16.7 px at most) where the stage was 2.9 px off; held to
    the stage as the pairs' loops and the stage's own scatter say, 2.4 / 6.6 px. Held to the
    model's layout alone, the same scan went to 8.3 px: at thin noisy overlaps the weak
    matches lean one way and the model's median step with them (1.5 px a step), hence the
    stage where it predicts the pairs better; a stage that steps 1 % short is the model's
    (held to the stage, a 10x10 scan bent back from 0.20 to 1.0 px). ``kappa`` at its lower
    bound, not its estimate: the Leica scan's loops (5) miss by 0.6 px in x, for it is not
    rigid, and held as hard as the estimate says its overlap agreement fell from 0.402 to
    0.397 (0.403 now, 0.402 with the pairs alone; the noisy 20x20 scan pays 0.1 px). A
    strong pair (a loop-checked sub-pixel match) outweighs the prior by orders of magnitude
    and is left as it was. Returns the corrections and the prior's layout (the tiles'
    corrections it is about)."""
    from scipy.special import gammaincinv  # the chi-square's quantiles (scipy.stats is heavy)

    def chi2_quantile(q: float, dof: float) -> float:
        return 2.0 * float(gammaincinv(dof / 2.0, q))

    nd = shifts.shape[1]
    links = np.flatnonzero(used)
    loops = len(links) - (n - _components(n, ij[links])[0])
    if loops < _PRIOR_LOOPS or not math.isfinite(miss) or not steps:
        return None
    w = np.broadcast_to(weight[links].reshape(len(links), -1), (len(links), nd))
    r = c[ij[links, 1]] - c[ij[links, 0]] - shifts[links]
    # the lower confidence bound of kappa (chi-square with ``loops`` degrees of freedom): held
    # only as far as the loops surely say the pairs err
    kappa = np.sum(w * r * r, axis=0) / chi2_quantile(_PRIOR_CONFIDENCE, loops)
    # the stage itself, where it predicts the used side pairs better than the model does (at
    # thin noisy overlaps the weak matches lean one way, and their median step with them)
    still = float(np.median(np.linalg.norm(shifts[used & side], axis=1)))
    if still <= miss:
        miss, steps = still, {k: np.zeros(nd) for k in steps}
    # the miss of a pair is two tiles' errors, each N(0, sigma^2) per axis
    sigma2 = max(miss**2 / (2 * chi2_quantile(0.5, nd)), _PRIOR_FLOOR)
    keys = np.array(sorted(steps), dtype=int)
    m = _solve(n, ij[keys], np.array([steps[k] for k in keys]), np.ones(len(keys)), floor)
    held = np.empty((n, nd))
    d = shifts[links] - (m[ij[links, 1]] - m[ij[links, 0]])
    for a in range(nd):
        held[:, a] = m[:, a] + _solve(n, ij[links], d[:, a : a + 1], w[:, a],
                                      max(float(kappa[a]) / sigma2, floor))[:, 0]  # fmt: skip
    return held, m


#: At most this many candidate shifts per axis for :func:`_whole_pixel_gauge`.
_GAUGE_CANDIDATES = 256


def _whole_pixel_gauge(positions: np.ndarray) -> np.ndarray:
    """The common shift (under half a pixel per axis) that puts the tiles nearest to whole
    pixels: the one that minimises the summed distance of every tile's position to its
    nearest whole pixel, 0 unless another is better.

    The pairs fix the tiles' positions relative to each other; where the whole layout sits is
    the solve's choice (its weak prior keeps the corrections' mean near 0). Left there, two
    tiles whose stage step was 3 px short each moved 1.5 px, and both were resampled at a
    half pixel, blurring all of the mosaic; a common shift of 0.5 px puts both on whole
    pixels, changes no relative position and moves the mosaic by less than a pixel."""
    shift = np.zeros(positions.shape[1])
    for axis in range(positions.shape[1]):
        frac = positions[:, axis] - np.rint(positions[:, axis])  # in [-0.5, 0.5]
        candidates = np.unique(np.rint(-frac * 1e6) / 1e6)
        if len(candidates) > _GAUGE_CANDIDATES:  # evenly through them, in sorted order
            picks = np.linspace(0, len(candidates) - 1, _GAUGE_CANDIDATES).round().astype(int)
            candidates = candidates[picks]
        candidates = np.concatenate([[0.0], candidates])
        cost = np.zeros(len(candidates))
        for start in range(0, len(frac), 4096):  # bounded memory for tens of thousands of tiles
            moved = frac[start : start + 4096][None, :] + candidates[:, None]
            cost += np.abs(moved - np.rint(moved)).sum(axis=1)
        best = int(np.argmin(cost))
        if cost[best] < cost[0] - 1e-9 * len(frac):  # strictly better than not moving
            shift[axis] = candidates[best]
    return shift


def _warn_unmatched(reg: Registration) -> None:
    """Name the tiles whose every measured pair failed (:meth:`Registration.unmatched_tiles`):
    the run goes on (the usable share of the pairs decides that), but such a tile is where
    the stage put it, which registration was asked to correct. A tile far beyond the search
    range fails every pair so (a 3x3 scan's centre tile 70 px off, 15 % of 300 px searched:
    8 of 11 pairs used, rms 0.00 px, and the tile left 73 px off, unreported)."""
    lone = reg.unmatched_tiles()
    if not lone:
        return
    placed = reg.placed_by()
    note = unmatched_note([reg.table.refs[k] for k in lone], [placed[k] for k in lone], shown=5)
    theirs = [p for p in reg.pairs if p.status != "corner" and (p.i in lone or p.j in lone)]
    counts = collections.Counter(p.status.replace("_", " ") for p in theirs)
    why = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    hint = ""
    if any(p.status != "blank" for p in theirs):  # content that did not match: too far off?
        reach = reg.params.max_shift_px
        searched = f"{reach:g} px" if reach is not None else f"{AUTO_SHIFT:.0%} of the tile"
        hint = (f"; if the stage may be further off than the search range ({searched}), "
                "widen it (max_shift_px / --max-shift)")  # fmt: skip
    one = len(lone) == 1
    their, positions = ("its", "its position is") if one else ("their", "their positions are")
    logger.warning("registration: %s; none of %s pairs gave a usable match (%s), so %s only "
                   "as good as the stage's%s", note, their, why, positions, hint)  # fmt: skip


def _axis_factor(results: Sequence[Measured], nd: int) -> np.ndarray:
    """Per pair and axis, the share of its weight a pair keeps along that axis:
    ``min(1, _SPREAD_PX^2 / var)`` with ``var`` its shift's variance along the axis
    (:attr:`Measured.spread`; 1 where none was measured). A shift known to a pixel or better
    along an axis keeps its weight; one spread along a ridge of the NCC (one edge, smooth
    haze) weighs less along the ridge, as an inverse variance would have it, and the pairs
    that do fix that axis decide it."""
    return np.clip(_SPREAD_PX**2 / _variance(results, nd), _SPREAD_FLOOR, 1.0)


def _variance(results: Sequence[Measured], nd: int) -> np.ndarray:
    """Per pair and axis, its shift's variance (:attr:`Measured.spread`'s diagonal, px^2; 1
    where none was measured)."""
    out = np.ones((len(results), nd))
    for k, r in enumerate(results):
        if r.spread is not None:
            out[k] = np.maximum(np.diag(np.asarray(r.spread, dtype=float))[:nd], 1e-12)
    return out


def _strength(quality: np.ndarray) -> np.ndarray:
    """A match's weight per unit of overlap area: the Fisher z of its NCC, ``arctanh(q)``
    (``q`` capped at ``_NCC_CAP``). The NCC itself ranks matches the same way but too evenly:
    weighted by it, a chance match (NCC 0.54, 47 px off) and a true one (0.998) in the same
    loops came out with equal misfits and the true one was dropped (vignetted ``cell``, 5x5
    tiles at 6 % overlap: 15 px mean error); z grows as a match nears perfect (0.55, 0.97 and
    2.65 at 0.5, 0.75 and 0.99), so the true pair outweighs the chance match 4.4 to 1."""
    return np.arctanh(np.clip(quality, 0.0, _NCC_CAP))
