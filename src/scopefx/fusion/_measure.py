"""Measuring every pair registration plans (step 2 of :mod:`._register`): searches bounded by
the process's memory limit before any tile is read (:func:`_within_search_budget`), each tile
read once, prepared (:func:`_prepared`) and cut into its crops, each pair correlated
(:mod:`._correlate`) as soon as both its crops exist (:func:`_measure_all`), within the
endpoint's task time (``SCOPEFX_TASK_TIMEOUT_S``)."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, ResourceLimitError
from ..io import EndpointLimits, TaskClock, TileTable
from ..io.confined import LIMIT_ENV, size_text
from ._blend import read_opaque
from ._correlate import Measured, Plan, cut, measure, plan_pair, prepare, search_bytes
from ._flatfield import note_tile
from ._overlaps import _footprints
from ._regparams import RegistrationParams

if TYPE_CHECKING:
    from ._shading import Banding

logger = logging.getLogger("scopefx.fusion._register")  # registration's messages, one logger


_MIN_NARROWED_PX = 8  # a default search is narrowed to fit the memory limit down to this reach


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
    :func:`~._settle._settle` files as ``blank`` or ``low_quality`` (there a repeated pattern's
    pair on the edge is filed ``ambiguous`` first, the more telling reason)."""
    return (not np.all(np.isfinite(r.shift)) or r.quality < params.min_quality
            or not r.significant or not r.inside)  # fmt: skip


def _measure_all(
    table: TileTable, reader: Callable[[str], Any], shapes: np.ndarray, plans: list[Plan],
    params: RegistrationParams, flatfield: Any, pool: ThreadPoolExecutor, workers: int,
    banding: Banding | None = None, fallback: bool = False, started: float | None = None,
) -> list[Measured]:  # fmt: skip
    """Read each tile once, cut its crops, correlate each pair as soon as both crops exist.

    ``fallback`` (the flat field is an estimate): a pair that gives no usable match on the
    corrected crops is measured again on crops without the flat field, and that result is
    kept if it is usable. Where the overlaps' content is faint, the estimate's own error at
    the tiles' edges (where every overlap lies; 8 % rms at the bottom edge of a 5x5 scan of
    `camera` under 50 % vignetting) swamps it, while the vignetting it should remove is smooth
    over a thin overlap and mostly taken out by the detrend (NCC 0.99 raw, -0.35 corrected, on
    one such pair).

    The endpoint's task time (``task_timeout_s`` of :class:`~scopefx.io.EndpointLimits`),
    counted from ``started`` (a :func:`time.monotonic` time; default: now), is checked before
    each tile is read and each pair's result is taken: past it, the work not started is
    cancelled and a :class:`ResourceLimitError` names the setting."""
    clock = TaskClock("registration", start=started)
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

    def check_time() -> None:
        if not clock.over():
            return
        measured = sum(future.done() for future in results.values())
        for load_future in loads:
            load_future.cancel()
        for future in results.values():
            future.cancel()
        raise clock.error(
            f"{measured:,} of {len(plans):,} tile pairs were measured (none is kept). Register "
            "fewer tiles at once, or ask the endpoint's operator for a longer limit"
        )

    for k in order:  # at most `workers` tiles in memory at once, plus the pending crops
        check_time()
        loads.append(pool.submit(load, k))
        while len(loads) > workers:
            drain()
    while loads:
        drain()
    out = []
    for p in range(len(plans)):
        check_time()
        out.append(results[p].result())
    return out
