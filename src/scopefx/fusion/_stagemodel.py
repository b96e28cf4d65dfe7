"""The stage model (MIST's, by stage move; step 3 of :mod:`._register`): a correction for each
side pair without a usable match, from the usable pairs that share the stage's error with it
(:func:`_stage_fit`), the weak unconfirmed matches it overrules
(:func:`_implausible_bridges`), and the steps it gives along a ridge that alone joins tiles
(:func:`_ridge_steps`)."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Sequence

import numpy as np

from ..io import TileTable
from ._correlate import STRONG_MATCH, near_ncc
from ._loops import _bridges, _components
from ._overlaps import _footprints

logger = logging.getLogger("scopefx.fusion._register")  # registration's messages, one logger


_MODEL_GAIN = 0.75  # a stage-model grouping must predict the usable pairs this much better
_PLAUSIBLE_SPREAD = 4.0  # robust standard deviations of the confirmed corrections allowed
_PLAUSIBLE_MIN_PX = 4.0  # however tight the confirmed corrections are
_PLAUSIBLE_POOL = 4  # confirmed pairs of the same direction needed for the check
_STRONG_POOL = 3  # such pairs (or confirmed ones, any direction) needed for the scale check
_EDGE_ZONE = 0.25  # outer share of a pair's search where the edge check looks
_RIVAL_MARGIN = 0.1  # NCC by which a rival at a plausible shift may trail the match
_CONCENTRATED = 0.45  # share of a match's covariance in one of its common part's slices
_RIDGE_VAR = 16.0  # px^2 (a 4 px sd): a shift spread more along an axis is a ridge there
_RIDGE_POOL = 4  # sharp used pairs of a direction needed to say how the stage steps
_RIDGE_FLOOR = 0.25  # px^2: the least variance granted to those pairs' steps


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
    reach: np.ndarray, near: Sequence[np.ndarray | None], concentration: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """Used side pairs that no loop confirms (bridges) and that do not vouch for themselves
    (NCC under ``STRONG_MATCH``) whose correction the stage makes implausible and that are no
    evidence against the stage. (Under NCC 0.5 only, before: in a sparse specimen's scan,
    ``bench/register_sparse.py`` draw 1 of the bright-field frame, the specimen's edge crossed
    an overlap of a corner tile, and that pair's NCC was a crest along the edge, 0.69 at its
    best, 47 px along it, where the confidence bound leans (towards the largest common part);
    it outweighed the tile's true pair and placed it 45 px off.)

    Either check below drops a pair only where the match is no evidence against the stage:
    its own NCC offers a rival within ``_RIVAL_MARGIN`` of it at a shift within the plausible
    reach (:func:`_rivalled`; ``near``: each pair's :attr:`~._correlate.Measured.near`), or
    (the confirmed-pairs check only) one slice of its common part holds over
    ``_CONCENTRATED`` of its covariance (``concentration``:
    :attr:`~._correlate.Measured.concentration`; one feature, such as a speck that moved
    between the exposures, made it). A true weak match of a tile the stage put far off has
    neither (its overlap's other shifts hold noise, its content matches throughout) and stays:
    without the condition both checks dropped such matches (a 3x3 and a 2x3 scan, tile 6-20 px
    off, found by reviews). The edge check leaves the concentration out: in a small scan it
    dropped true matches of one or two cells (sparse fluorescence), which it had kept before,
    and those are no rarer than a speck that moved.

    With ``_PLAUSIBLE_POOL`` or more loop-confirmed pairs stepping the same way: a correction
    beyond ``_PLAUSIBLE_SPREAD`` robust standard deviations of theirs (at least
    ``_PLAUSIBLE_MIN_PX``) from their median. Such a match is most likely chance (in a nearly
    blank overlap of sparse content: a 32 px jump at NCC 0.28, where the stage was 3 px off),
    and the stage model (:func:`_stage_fit`, MIST's repeatability check in spirit) places
    the pair better. With fewer (a small scan, whose few loops rarely close), the edge check,
    given the reach each pair was searched over: a weak bridge in the outer ``_EDGE_ZONE`` of
    its search along an axis (where chance matches gather: the NCC's bound favours the largest
    common part) whose correction is longer than any of ``_STRONG_POOL`` or more used pairs
    that vouch for themselves (confirmed, or NCC ``STRONG_MATCH`` or more; any direction) by
    ``_PLAUSIBLE_MIN_PX``."""
    sides = np.flatnonzero(used & side)
    if len(sides) < min(_PLAUSIBLE_POOL, _STRONG_POOL + 1):
        return np.zeros(0, dtype=int)
    bridges = set(sides[_bridges(len(table), ij[sides])].tolist())
    axis, sign = _steps(table, shapes, ij, olo, ohi)
    oriented = shifts * sign[:, None]
    drop = []
    for k in sorted(bridges):
        if quality[k] >= STRONG_MATCH:
            continue
        pool = np.array([oriented[q] for q in sides if q not in bridges and axis[q] == axis[k]])
        if len(pool) >= _PLAUSIBLE_POOL:
            centre = np.median(pool, axis=0)
            spread = 1.4826 * np.median(np.abs(pool - centre), axis=0)
            limit = max(_PLAUSIBLE_SPREAD * float(np.linalg.norm(spread)), _PLAUSIBLE_MIN_PX)
            radius = float(np.linalg.norm(centre)) + limit  # the plausible disc, and more
            if float(np.linalg.norm(oriented[k] - centre)) > limit and (
                concentration[k] > _CONCENTRATED or _rivalled(near[k], radius, float(quality[k]))
            ):
                drop.append(k)
            continue
        # Too few confirmed pairs of its direction: the pairs that vouch for themselves still
        # say how far the stage errs. A weak bridge near the edge of its search that corrects
        # more than any of theirs is most likely chance (3x3 cuts of a light-sheet frame: weak
        # matches 26-27 px off, 2-3 px inside a 29 px search, where the strong pairs corrected
        # <= 12.5 px; a true weak pair 15 px off in a search of 28 stays).
        if not np.any(np.abs(shifts[k]) >= (1 - _EDGE_ZONE) * reach[k]):
            continue
        scale = [float(np.linalg.norm(shifts[q])) for q in sides
                 if q != k and (q not in bridges or quality[q] >= STRONG_MATCH)]  # fmt: skip
        if len(scale) < _STRONG_POOL:
            continue
        limit = max(scale) + _PLAUSIBLE_MIN_PX
        if float(np.linalg.norm(shifts[k])) <= limit:
            continue
        if _rivalled(near[k], limit, float(quality[k])):
            drop.append(k)
    if drop:
        logger.info("dropped %d weak unconfirmed pair(s) far from the stage model: %s",
                    len(drop), [tuple(map(int, ij[k])) for k in drop])  # fmt: skip
    return np.array(drop, dtype=int)


def _ridge_steps(
    table: TileTable, shapes: np.ndarray, ij: np.ndarray, shifts: np.ndarray, used: np.ndarray,
    side: np.ndarray, olo: np.ndarray, ohi: np.ndarray, variance: np.ndarray, sharp_var: float,
) -> dict[int, np.ndarray]:  # fmt: skip
    """Used side pairs that join their tiles along an axis only by a ridge of their NCC, each
    with the shift the solve should take: along that axis, its own and the stage's step
    combined by their precision.

    ``variance`` (m, nd): each pair's shift variance per axis (:attr:`Measured.spread`'s
    diagonal; 1 where unknown). A used pair is sharp where it is at most ``sharp_var`` on
    every axis (the variance from which a pair weighs less in the solve). Along axis ``a``
    the sharp pairs of a direction (at least ``_RIDGE_POOL``) give the stage's step there:
    their median ``m``, with their robust spread squared ``v`` (at least ``_RIDGE_FLOOR``) as
    its variance. A pair of that direction whose variance ``w`` along ``a`` is over
    ``_RIDGE_VAR`` and over ``v`` is a ridge there (one straight feature, a vessel or a
    fibre, crossing the overlap). Where such ridges are all that joins two groups of tiles
    along ``a`` (no other used pair links them), nothing else decides where the groups sit
    along it, and the solve followed the ridge's best shift, chance on a flat crest (the
    confidence bound leans it towards the larger common part): ``m + (s - m) v / (v + w)``
    replaces the shift ``s`` there, the precision-weighted mean of the two estimates. A ridge
    inside a group is left as it is: the sharp pairs around it decide.

    On 8x8 mosaics of the bundled ``retina`` (256 px tiles, 10 % overlap, tiles up to 5 px off,
    vignetted, 300 and 2,000 photons), a tile hung on a vessel crossing its one usable
    overlap: 8.4 px along the vessel where the stage was 6 px off the other way (14.2 px
    error); 0.92 -> 0.55 px mean error, and 2.84 -> 1.34 at 300 photons
    (``bench/register_synthetic.py --grid 8x8 --overlaps 0.1 --jitter 5``)."""
    axis_of, sign = _steps(table, shapes, ij, olo, ohi)
    nd = shifts.shape[1]
    sharp = used & side & np.all(variance <= sharp_var, axis=1)
    out: dict[int, np.ndarray] = {}
    for a in range(nd):
        prior: dict[int, tuple[float, float]] = {}
        for d in range(nd):
            pool = np.flatnonzero(sharp & (axis_of == d))
            if len(pool) >= _RIDGE_POOL:
                steps = shifts[pool, a] * sign[pool]
                centre = float(np.median(steps))
                spread = 1.4826 * float(np.median(np.abs(steps - centre)))
                prior[d] = (centre, max(spread**2, _RIDGE_FLOOR))
        # per direction, the variance over which a pair is a ridge (none without a pool)
        over = np.array([max(prior[d][1], _RIDGE_VAR) if d in prior else np.inf
                         for d in range(nd)])  # fmt: skip
        ridge = used & side & (variance[:, a] > over[axis_of])
        if not ridge.any():
            continue
        label = _components(len(table), ij[used & ~ridge])[1]
        for k in np.flatnonzero(ridge).tolist():
            if label[ij[k, 0]] == label[ij[k, 1]]:
                continue
            centre, var = prior[int(axis_of[k])]
            own = float(shifts[k, a] * sign[k])
            step = centre + (own - centre) * var / (var + float(variance[k, a]))
            out.setdefault(k, shifts[k].astype(float).copy())[a] = step * sign[k]
    if out:
        steps = {tuple(map(int, ij[k])): tuple(np.round(v, 2).tolist()) for k, v in out.items()}
        logger.info("steps along a ridge that alone joins tiles, drawn to the stage's: %s", steps)
    return out


def _rivalled(near: np.ndarray | None, radius: float, quality: float) -> bool:
    """A shift within ``radius`` px of the stage's matches about as well as the match (within
    ``_RIVAL_MARGIN`` of its NCC; ``near``: :attr:`~._correlate.Measured.near` of the pair)."""
    return near_ncc(near, radius) >= quality - _RIVAL_MARGIN


def _stage_fit(
    table: TileTable, shapes: np.ndarray, ij: np.ndarray, shifts: np.ndarray, used: np.ndarray,
    side: np.ndarray, olo: np.ndarray, ohi: np.ndarray, trusted: bool = True,
) -> tuple[dict[int, np.ndarray], float]:  # fmt: skip
    """The stage model's correction for every side pair (used or not): the median of the
    usable pairs of its direction that share the stage's error with it, the grouping chosen
    by how well it predicts; and how far that model misses the usable pairs (the median
    length of each one's miss, the worst axis; inf where it cannot be judged).

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
    keep the median). Where no grouping can be judged (a lone usable pair), its step is used
    only where the usable pairs of another axis were judged to share the stage's errors (one
    stage moves along every axis); else the stage itself: one pair cannot tell a shared error
    from its own tiles', and repeated along a row its own error grows with every tile (3x3
    cuts of a real frame with independent jitter, three tiles of a row 14-16 px off where the
    stage left them 6-9 px off).

    Not ``trusted`` (fewer of the side pairs with content gave a usable match than
    ``min_usable_fraction`` asks, which only ``allow_partial`` registers): the stage itself
    for every pair. Where most pairs with content fail, so do many of those that passed: at
    thin overlaps of faint content the chance matches lean the same way (towards a larger
    common part, which the NCC's confidence bound favours), their median is a step the stage
    never made, and repeated over every modelled pair of a row it carried the tiles far off (a
    16x16 scan of 64 px tiles at 10 % overlap, 82 of 480 pairs usable, 49 of them wrong: the
    median step 2.8 px short, 18.5 px mean error where the stage was 1.9 px off). Pairs that
    are blank (no content) say nothing about the measurements and do not count."""
    nd = table.ndim
    if not trusted:
        logger.info("stage model: the stage positions for every unusable pair (most pairs with "
                    "content gave no usable match: the steps of the few that did are not "
                    "trusted)")  # fmt: skip
        return {k: np.zeros(nd) for k in np.flatnonzero(side).tolist()}, math.inf
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
    scores: dict[int, float] = {}
    lone: dict[int, bool] = {}  # one usable pair: no grouping can be judged
    for a in range(nd):
        members = [k for k in usable if axis[k] == a]
        lone[a] = len(members) == 1
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
        scores[a] = score
    # a lone usable pair (nothing to judge its step by): one stage moves along every axis, so
    # an axis whose pairs were judged to share their errors lends the lone pair's step its
    # trust; else its step may be its own tiles' error alone, which the median would repeat
    # along the whole row (tile k moved k times it)
    shared = any(math.isfinite(v) and chosen[b] != "stage" for b, v in scores.items())
    for a in range(nd):
        if lone[a] and not shared:
            chosen[a] = "stage"
    for a in range(nd):
        if not any(not used[k] and axis[k] == a for k in np.flatnonzero(side).tolist()):
            continue
        if lone[a]:
            logger.info("stage model, pairs stepping along axis %d: %s (one usable pair, "
                        "nothing to judge its step by; %s)", a,
                        "the stage positions" if chosen[a] == "stage" else "its step",
                        "the pairs of another axis share their errors" if shared
                        else "no axis shows the stage's errors shared")  # fmt: skip
        elif chosen[a] == "stage":
            logger.info("stage model, pairs stepping along axis %d: the stage positions "
                        "(they predict the usable pairs within %.2f px, better than a "
                        "median of the others)", a, scores[a])  # fmt: skip
        else:
            logger.info("stage model, pairs stepping along axis %d: median of the usable "
                        "pairs of the same %s (they predict each other within %.2f px)",
                        a, chosen[a], scores[a])  # fmt: skip
    medians: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}
    model: dict[int, np.ndarray] = {}
    for k in np.flatnonzero(side).tolist():
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
    judged = [v for v in scores.values() if math.isfinite(v)]
    return model, (max(judged) if judged else math.inf)


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
