"""Measuring one overlap: crops on the stage overlap enlarged by the search range, flat-field
corrected (optionally high-passed), then smoothed (a small Gaussian); the normalised
cross-correlation (NCC) on the pixels both tiles hold, each crop taken minus its quadratic fit
over those pixels (smooth shading drops out), is computed for every shift in range at once
(masked NCC by FFT), its maximum is the match, refined by phase correlation of the
unsmoothed, detrended common part and then by Gauss-Newton on its NCC (both crops resampled
half-way: no window, no pull to whole pixels; exact on common parts 13 px wide, where the
phase correlation kept three quarters of a sub-pixel remainder); the best NCC away from that
peak (the runner-up) tells whether the match is unique (a repeated pattern gives several
equally good peaks).

References
----------
Padfield, "Masked object registration in the Fourier domain", IEEE TIP 21, 2706 (2012).
Guizar-Sicairos, Thurman & Fienup, "Efficient subpixel image registration algorithms",
Opt. Lett. 33, 156 (2008).
Lucas & Kanade, "An iterative image registration technique with an application to stereo
vision", IJCAI (1981).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..io import translation

_UPSAMPLE = 20  # sub-pixel resolution of the peak search: 1 / 20 px
_LOWPASS = 0.25  # Gaussian weight on the whitened spectrum (sigma, cycles/px): damps aliasing
_SMOOTH_PX = 2.0  # Gaussian (sigma) of the crops in the search for the best shift: pixel noise
_SMOOTH_SHARE = 16.0  # ... at most 1/16 of the stage overlap's extent along each axis
_CONFIDENCE = 2.0  # standard errors below the NCC that a shift is scored by
_CHANCE = 0.01  # accepted probability that unrelated content gives a match (over the search)
_DISTINCT_PX = 3.0  # a runner-up peak closer than this to the best is the same match
_NOISE_BAND = 0.35  # cycles/px beyond which the cross-power's median is taken as noise
_NOISE_MARGIN = 4.0  # a frequency counts fully once its cross-power is well above that
_ALTERNATIVES = 3  # other local maxima kept per pair (settled by the global solve)
# NCC from which a match vouches for itself without a loop (under it, its neighbourhood and
# support are recorded, for the stage model's checks)
STRONG_MATCH = 0.8
_SUPPORT_BLOCKS = 8  # slices of a weak match's common part whose covariance shares are compared
_GN_REACH = 1.5  # px the Gauss-Newton refinement may move from where it starts
_GN_FAR_QUALITY = 0.5  # NCC from which it may also land over _GN_REACH from the integer peak
_GN_ITERATIONS = 12
_GN_TOLERANCE = 0.002  # px: a step this small ends the refinement
_GRAM_BAND = 1 << 20  # Gram entries solved at once by the search (8 MiB of float64)
_DETREND_BAND = 1 << 16  # pixels whose polynomial terms are summed at once
_SATURATED = 0.005  # share of a tile's pixels at its maximum that makes that maximum clipping
#: Peak working memory of one search per element of its FFT grid (each crop axis plus the
#: reach): 126-155 bytes measured (tracemalloc) on smooth random crops of 256-2048 px and
#: reaches of 5-50 % of a tile, 72 on a real 2048 px pair; an upper bound, not an average.
SEARCH_BYTES_PER_PX = 160


class Measured(NamedTuple):
    """What :func:`measure` found for one pair."""

    shift: np.ndarray  # correction of j relative to i (NaN: nothing to measure)
    quality: float  # NCC at the shift, 0..1
    runner_up: float  # best NCC of a distinct candidate shift (0 when none)
    overlap: tuple[int, ...]  # extent of the common pixels at the shift
    significant: bool = True  # above what chance gives over the search, its bound above 0
    inside: bool = True  # the best shift lies inside the search, not on its edge
    bound: float = 0.0  # lower confidence bound of the NCC at the shift (the score it won by)
    # other distinct local maxima of the score, best first: (shift, quality, bound, significant)
    alternatives: tuple[tuple[np.ndarray, float, float, bool], ...] = ()
    # of a match that does not vouch for itself (NCC under STRONG_MATCH; else None and 0):
    # how well the stage's own neighbourhood matches, as the radii (row 0) at which the best
    # NCC of the shifts within that radius of no shift (and nearer to it than to the match)
    # rises, and that NCC (row 1) (see near_ncc); and the share of the match's covariance
    # that the largest of _SUPPORT_BLOCKS slices of its common part holds (1 / _SUPPORT_BLOCKS
    # where the content matches evenly, about 1 where one feature makes the match)
    near: np.ndarray | None = None
    concentration: float = 0.0
    # covariance (px^2, nd x nd) of the best shift: how far along each axis the shifts whose
    # NCC is within one standard error of the best's reach (see _peak_spread); None: unknown
    spread: np.ndarray | None = None


class Plan(NamedTuple):
    """How to cut pair ``(i, j)``: a box of the mosaic grid, ``size`` pixels from ``box_lo``."""

    i: int
    j: int
    box_lo: np.ndarray  # int
    size: tuple[int, ...]
    sliced: bool  # True: both tiles are translations, cut at their rounded offsets
    adjust: np.ndarray  # added to the crop-level shift to give the correction
    reach: float  # largest shift searched along each axis


def plan_pair(
    table: Any, shapes: np.ndarray, footprints: tuple[np.ndarray, np.ndarray], i: int, j: int,
    reach: float,
) -> Plan:  # fmt: skip
    """The stage overlap of ``i`` and ``j`` enlarged by ``reach``, within the two footprints
    (``footprints``: the tiles' bounding boxes ``[lo, hi)``, index order)."""
    ti, tj = table[i], table[j]
    nd = table.ndim
    if ti.is_translation and tj.is_translation:
        r_i, r_j = np.round(ti.offset), np.round(tj.offset)
        lo_i, hi_i, lo_j, hi_j = r_i, r_i + shapes[i], r_j, r_j + shapes[j]
        adjust, sliced = (r_j - tj.offset) - (r_i - ti.offset), True
    else:
        lo, hi = footprints[0][[i, j]], footprints[1][[i, j]]
        lo_i, lo_j, hi_i, hi_j = np.ceil(lo[0]), np.ceil(lo[1]), np.floor(hi[0]), np.floor(hi[1])
        adjust, sliced = np.zeros(nd), False
    r = math.ceil(reach)
    box_lo = np.maximum(np.maximum(lo_i, lo_j) - r, np.minimum(lo_i, lo_j))
    box_hi = np.minimum(np.minimum(hi_i, hi_j) + r, np.maximum(hi_i, hi_j))
    size = tuple(int(v) for v in np.maximum(box_hi - box_lo, 0))
    return Plan(i, j, box_lo.astype(int), size, sliced, adjust, float(reach))


def search_bytes(size: Sequence[int], reach: float) -> int:
    """Peak working memory (bytes) of :func:`measure` on crops of ``size`` searched over
    ``reach`` px, from the geometry alone (before any pixel is read)."""
    from scipy import fft

    r = math.ceil(reach)
    grid = [fft.next_fast_len(int(n) + max(min(r, int(n) - 1), 0), real=True) for n in size]
    return SEARCH_BYTES_PER_PX * math.prod(grid)


def prepare(
    data: Any,
    nd: int,
    flatfield: Any,
    highpass_sigma_px: float | None,
    opaque: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """One tile as registration sees it: channels summed, flat-field corrected, high-passed
    when ``highpass_sigma_px`` is given (None or 0: not); NaN (no pixel) where ``opaque``, a
    mask of the tile's spatial shape, is False (transparent pixels of a colour tile), and
    where a float tile holds inf or NaN.

    Returns the plane and its mean absolute raw value (the scale a blank crop is judged by).
    """
    from scipy import ndimage

    saturated = None if flatfield is None else _saturated(np.asarray(data), nd)
    if saturated is not None:
        opaque = ~saturated if opaque is None else (np.asarray(opaque).reshape(saturated.shape)
                                                    & ~saturated)  # fmt: skip
    if flatfield is not None:
        data = flatfield.apply(np.asarray(data)) if hasattr(flatfield, "apply") else flatfield(data)
    plane = np.asarray(data, dtype=np.float32)
    if plane.ndim > nd:
        plane = plane.reshape(-1, *plane.shape[-nd:]).sum(axis=0)
    broken = ~np.isfinite(plane)  # a float tile's inf (or NaN) pixel: no data, as transparent
    if broken.any():  # (one inf pixel made every crop of the tile blank, even outside them)
        opaque = ~broken if opaque is None else np.asarray(opaque).reshape(plane.shape) & ~broken
    if opaque is not None:  # their mean stands in for the transparent pixels in the high-pass
        opaque = np.asarray(opaque).reshape(plane.shape)
        fill = float(plane[opaque].mean()) if opaque.any() else 0.0
        plane = np.where(opaque, plane, np.float32(fill))
    scale = float(np.mean(np.abs(plane), dtype=np.float64)) + 1e-12
    if highpass_sigma_px:
        sigma = [min(highpass_sigma_px, n / 4) for n in plane.shape]
        plane = plane - ndimage.gaussian_filter(plane, sigma, mode="reflect")
    if opaque is not None:
        plane = np.where(opaque, plane, np.float32(np.nan))
    return plane, scale


def _saturated(data: np.ndarray, nd: int) -> np.ndarray | None:
    """Where an integer tile is clipped: pixels of any channel at that channel's maximum, when
    at least ``_SATURATED`` of its pixels hold it (a plateau, not the brightest speck); None
    when there are none. Under a flat-field correction clipped pixels are no data: the
    correction turns a plateau into a copy of the inverse shading, which differs between the
    two tiles of an overlap and pulled matches by up to 10 px (a 3x3 scan of ``cell`` under a
    ``1 - 0.5 r^2`` fall-off, 3 % clipped: 5 of 16 cases over 1 px through the estimated flat
    field, 0 of 16 as read). Without a correction a plateau is level in both tiles and its
    edge is content: kept."""
    if data.dtype.kind not in "ui" or data.size == 0:
        return None
    planes = data.reshape(-1, *data.shape[-nd:])
    out = None
    for plane in planes:
        top = plane.max()
        at = plane == top
        if np.count_nonzero(at) >= _SATURATED * at.size:
            out = at if out is None else out | at
    return out


def cut(plane: np.ndarray, affine: np.ndarray, plan: Plan) -> np.ndarray:
    """The box of ``plan`` from one prepared tile, float32; NaN where the tile has no pixel."""
    nd = len(plan.size)
    out = np.full(plan.size, np.nan, dtype=np.float32)
    if plan.sliced:
        start = plan.box_lo - np.round(affine[:nd, nd]).astype(int)
        src_lo = np.maximum(start, 0)
        src_hi = np.minimum(start + plan.size, plane.shape[-nd:])
        if np.any(src_hi <= src_lo):
            return out
        dst = tuple(map(slice, src_lo - start, src_hi - start))
        out[dst] = plane[tuple(map(slice, src_lo, src_hi))]
        return out
    from scipy import ndimage

    matrix = np.linalg.inv(affine) @ translation(plan.box_lo)
    return ndimage.affine_transform(plane, matrix, output_shape=plan.size, order=1, cval=np.nan)


def _tukey(n: int) -> np.ndarray:
    """Window flat in the middle, a Hann ramp over 25% at each end."""
    edge = np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)) / (0.25 * n)
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0, 1))


def _freqs(shape: Sequence[int]) -> list[np.ndarray]:
    """Frequencies (cycles per pixel) of each axis of ``scipy.fft.rfftn``'s output."""
    return [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]


def _outer(profiles: Sequence[np.ndarray]) -> np.ndarray:
    out = np.ones((), dtype=np.float32)
    for p in profiles:
        out = np.multiply.outer(out, p.astype(np.float32))
    return out


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


def _monomials(nd: int, degree: int) -> list[tuple[int, ...]]:
    """Exponents of the monomials of ``nd`` coordinates up to total ``degree``, constant first."""
    out = [e for e in itertools.product(range(degree + 1), repeat=nd) if sum(e) <= degree]
    return sorted(out, key=lambda e: (sum(e), e[::-1]))


def _ncc_surface(
    a: np.ndarray, b: np.ndarray, reach: np.ndarray, degree: int
) -> tuple[np.ndarray, ...]:
    """NCC of ``a(m + q)`` and ``b(m)`` over the pixels both hold, for every ``|q| <= reach``,
    each crop taken minus its least-squares polynomial of ``degree`` in the coordinates over
    those common pixels (degree 0: minus its mean, the plain masked NCC).

    Both crops are fitted on the same pixels with the same basis, so shading that is smooth
    over the common part (vignetting, uneven illumination) drops out of the match without a
    per-tile high-pass, whose estimate near a tile's edge (where every overlap lies) differs
    between the two tiles and so biases smooth content. The fits' sums are masked
    correlations of coordinate-weighted crops and masks (Padfield 2012 extended from the mean
    to a polynomial): by FFT in general; where each crop's pixels fill a box (the common case:
    no transparent, clipped or resampled-away pixels) every sum but the cross term is a box
    sum, read from summed-area tables (:func:`_box_sums`), and only the cross term takes FFTs
    (3 instead of about 60 at degree 2). Returns the NCC surface, the number of common pixels,
    and for each axis the extent of the common part, all indexed by ``q + reach``.
    """
    from scipy import fft

    nd = a.ndim
    va, vb = np.isfinite(a), np.isfinite(b)
    fa = np.where(va, a - a[va].mean(dtype=np.float64), 0.0)
    fb = np.where(vb, b - b[vb].mean(dtype=np.float64), 0.0)
    sa_, sb_ = np.std(fa[va]) or 1.0, np.std(fb[vb]) or 1.0
    fa, fb = fa / sa_, fb / sb_  # unit spread: the sums below stay well scaled
    # circular correlation equals the linear one for every |q| <= reach once padded to n + reach
    pad = [fft.next_fast_len(n + int(r), real=True) for n, r in zip(a.shape, reach, strict=True)]
    basis = _monomials(nd, degree)
    k = len(basis)
    index = np.ix_(*[np.arange(-r, r + 1) % p for r, p in zip(reach, pad, strict=True)])

    def spec(x: np.ndarray) -> np.ndarray:
        return fft.rfftn(x, s=pad)

    def corr(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(fft.irfftn(x * y, s=pad)[index], dtype=np.float64)

    boxes = _box(va), _box(vb)
    if boxes[0] is not None and boxes[1] is not None and min(a.shape) > 1:
        s_ab = corr(spec(fa), np.conj(spec(fb)))  # no spectrum kept: only this one needs it
        sums, sum_a, sum_b, s_aa, s_bb = _box_sums(fa, fb, boxes[0], boxes[1], reach, basis)
    else:
        s_fa = spec(fa)
        s_ab = corr(s_fa, np.conj(spec(fb)))
        powers = _coordinate_powers(a.shape, 2 * degree)
        s_va = spec(va.astype(np.float64))
        vbm = vb.astype(np.float64)
        # conj spectra of vb times each basis monomial (kept: the fits use each twice)
        specs = {e: np.conj(spec(vbm * _monomial(powers, e))) for e in basis}
        sums = {}
        for u in range(k):
            for w in range(u, k):
                e = tuple(x + y for x, y in zip(basis[u], basis[w], strict=True))
                if e not in sums:
                    weight = specs[e] if e in specs else np.conj(spec(vbm * _monomial(powers, e)))
                    sums[e] = corr(s_va, weight)
        sum_a = np.stack([corr(s_fa, specs[e]) for e in basis], axis=-1)
        sum_b = np.stack([corr(s_va, np.conj(spec(fb * _monomial(powers, e)))) for e in basis],
                         axis=-1)  # fmt: skip
        s_aa = corr(spec(fa * fa), specs[basis[0]])
        s_bb = corr(s_va, np.conj(spec(fb * fb)))
    shape = tuple(2 * int(r) + 1 for r in reach)
    n = np.maximum(np.round(np.broadcast_to(sums[basis[0]], shape)), 0)
    ncc = np.zeros(shape)
    # the fits, shift by shift, a band of shifts at a time: a (k, k) Gram per shift for the
    # whole surface is 109 MB at 2048 px tiles (615^2 shifts), and the solve copies it
    rows = max(1, _GRAM_BAND // (math.prod(shape[1:]) * k * k))
    for lo in range(0, shape[0], rows):
        band = slice(lo, min(lo + rows, shape[0]))
        ncc[band] = _fitted_ncc(
            {e: np.broadcast_to(v, shape)[band] for e, v in sums.items()}, sum_a[band],
            sum_b[band], np.broadcast_to(s_ab, shape)[band], np.broadcast_to(s_aa, shape)[band],
            np.broadcast_to(s_bb, shape)[band], n[band], basis,
        )  # fmt: skip
    # extent of the common part along each axis: from the masks' 1-D projections
    extents = []
    for ax in range(nd):
        other = tuple(o for o in range(nd) if o != ax)
        px, py = va.any(axis=other), vb.any(axis=other)
        r = int(reach[ax])
        e1 = np.array([np.count_nonzero(_overlap_1d(px, py, q)) for q in range(-r, r + 1)])
        sh = [1] * nd
        sh[ax] = len(e1)
        extents.append(e1.reshape(sh))
    return (ncc, n, *extents)


def _fitted_ncc(
    sums: dict[tuple[int, ...], np.ndarray],
    sum_a: np.ndarray,
    sum_b: np.ndarray,
    s_ab: np.ndarray,
    s_aa: np.ndarray,
    s_bb: np.ndarray,
    n: np.ndarray,
    basis: list[tuple[int, ...]],
) -> np.ndarray:
    """The NCC of the two crops' residuals from their least-squares polynomials, per shift,
    from the masked sums (:func:`_ncc_surface`); 0 where too few pixels or no variance."""
    k = len(basis)
    gram = np.empty((*n.shape, k, k))
    for u in range(k):
        for w in range(u, k):
            e = tuple(x + y for x, y in zip(basis[u], basis[w], strict=True))
            gram[..., u, w] = gram[..., w, u] = sums[e]
    ok = n >= max(16, 4 * k)
    diagonal = np.arange(k)
    gram[..., diagonal, diagonal] += 1e-9 * np.maximum(n, 1)[..., None]
    gram[~ok] = np.eye(k)
    both = np.linalg.solve(gram, np.stack([sum_a, sum_b], axis=-1))  # (..., k, 2)
    pa, pb = both[..., 0], both[..., 1]
    num = s_ab - np.einsum("...k,...k->...", sum_a, pb)
    var_a = s_aa - np.einsum("...k,...k->...", sum_a, pa)
    var_b = s_bb - np.einsum("...k,...k->...", sum_b, pb)
    var = var_a * var_b
    scale = 1e-9 * np.maximum(s_aa * s_bb, 1e-300)
    ncc = np.where(ok & (var_a > 0) & (var_b > 0) & (var > scale),
                   num / np.sqrt(np.maximum(var, 1e-300)), 0.0)  # fmt: skip
    return np.clip(ncc, -1, 1)


def _coordinate_powers(shape: Sequence[int], top: int) -> list[np.ndarray]:
    """Per axis, the powers ``0..top`` of its coordinate (``-1..1`` across the crop), (top+1, n)."""
    return [np.linspace(-1, 1, n)[None, :] ** np.arange(top + 1)[:, None] for n in shape]


def _monomial(powers: list[np.ndarray], e: tuple[int, ...]) -> np.ndarray:
    """The monomial of exponents ``e`` over the crop, from the axes' coordinate powers."""
    out = np.ones(())
    for ax, (pw, p) in enumerate(zip(powers, e, strict=True)):
        shape = [1] * len(powers)
        shape[ax] = pw.shape[1]
        out = out * pw[p].reshape(shape)
    return np.broadcast_to(out, tuple(pw.shape[1] for pw in powers))


def _box(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``[lo, hi)`` per axis when ``valid`` is True exactly on a box (and somewhere), else None."""
    lo, hi = [], []
    for ax in range(valid.ndim):
        other = tuple(o for o in range(valid.ndim) if o != ax)
        hit = np.flatnonzero(valid.any(axis=other))
        if hit.size == 0:
            return None
        lo.append(int(hit[0]))
        hi.append(int(hit[-1]) + 1)
    inner = valid[tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))]
    return (np.array(lo), np.array(hi)) if inner.all() else None


def _box_sums(
    fa: np.ndarray,
    fb: np.ndarray,
    box_a: tuple[np.ndarray, np.ndarray],
    box_b: tuple[np.ndarray, np.ndarray],
    reach: np.ndarray,
    basis: list[tuple[int, ...]],
) -> tuple[dict[tuple[int, ...], np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The masked sums of :func:`_ncc_surface` (monomial sums of the common part, ``a`` and
    ``b`` against each basis monomial, ``a^2``, ``b^2``) when each crop's pixels fill a box.

    At shift ``q`` the common part is, in ``b``'s coordinates ``m``, the box ``box_b`` within
    ``box_a - q``: per axis ``[lo(q), hi(q))``, so each sum is a box sum read from a
    summed-area table at its corners. Sums of monomials alone factor into 1-D sums. ``a`` is
    weighted by the monomials at ``m = n - q`` (``n`` its own pixel): with ``c(n - q) = c(n) -
    q h`` (``h`` the coordinate's step) each is a binomial combination of box sums of ``a``
    times the monomials at ``n``, which do not depend on ``q``.
    """
    nd = fa.ndim
    shape = fa.shape
    top = 2 * max(sum(e) for e in basis)
    powers = _coordinate_powers(shape, top)
    lo, hi = [], []  # per axis, over q = -r..r: the common part in b's coordinates
    for ax in range(nd):
        q = np.arange(-int(reach[ax]), int(reach[ax]) + 1)
        low = np.maximum(box_b[0][ax], box_a[0][ax] - q)
        high = np.maximum(np.minimum(box_b[1][ax], box_a[1][ax] - q), low)
        lo.append(np.minimum(low, shape[ax]))  # an empty part may start past the end
        hi.append(np.minimum(high, shape[ax]))
    grid = tuple(len(x) for x in lo)

    def line(ax: int, p: int) -> np.ndarray:  # 1-D sums of c^p over [lo, hi) on axis ax
        cum = np.concatenate([[0.0], np.cumsum(powers[ax][p])])
        shp = [1] * nd
        shp[ax] = grid[ax]
        return (cum[hi[ax]] - cum[lo[ax]]).reshape(shp)

    def boxed(x: np.ndarray, shift: list[np.ndarray] | None = None) -> np.ndarray:
        """Box sums of x over the common part (in a's coordinates when ``shift``)."""
        table = np.zeros(tuple(n + 1 for n in shape))
        table[tuple(slice(1, None) for _ in range(nd))] = x
        for ax in range(nd):
            np.cumsum(table, axis=ax, out=table)
        ends = [(np.clip(lo[ax] + (0 if shift is None else shift[ax]), 0, shape[ax]),
                 np.clip(hi[ax] + (0 if shift is None else shift[ax]), 0, shape[ax]))
                for ax in range(nd)]  # fmt: skip
        total = np.zeros(grid)
        for corner in itertools.product((0, 1), repeat=nd):
            sign = (-1) ** (nd - sum(corner))
            total += sign * table[np.ix_(*[ends[ax][c] for ax, c in enumerate(corner)])]
        return total

    sums: dict[tuple[int, ...], np.ndarray] = {}
    for u in range(len(basis)):
        for w in range(u, len(basis)):
            e = tuple(x + y for x, y in zip(basis[u], basis[w], strict=True))
            if e not in sums:
                term = np.ones(())
                for ax, p in enumerate(e):
                    term = term * line(ax, p)
                sums[e] = np.broadcast_to(term, grid)
    shifts = [np.arange(-int(r), int(r) + 1) for r in reach]
    steps = [2.0 / (n - 1) for n in shape]
    sum_a = np.zeros((*grid, len(basis)))
    for kk in basis:  # each box sum of a times a monomial, added to every basis term it feeds
        at = boxed(fa * _monomial(powers, kk), shifts)
        for i, e in enumerate(basis):
            if any(j > p for j, p in zip(kk, e, strict=True)):
                continue
            coef = np.ones(())
            for ax, (p, j) in enumerate(zip(e, kk, strict=True)):
                shp = [1] * nd
                shp[ax] = grid[ax]
                coef = coef * (math.comb(p, j) * (-shifts[ax] * steps[ax]) ** (p - j)).reshape(shp)
            sum_a[..., i] += coef * at
    sum_b = np.stack([boxed(fb * _monomial(powers, e)) for e in basis], axis=-1)
    return sums, sum_a, sum_b, boxed(fa * fa, shifts), boxed(fb * fb)


def _overlap_1d(pa: np.ndarray, pb: np.ndarray, q: int) -> np.ndarray:
    """``pa[m + q] & pb[m]`` over the valid ``m``."""
    n = len(pa)
    return pa[max(0, q) : n + min(0, q)] & pb[max(0, -q) : n - max(0, q)]


def measure(
    a: np.ndarray, b: np.ndarray, reach: float, min_overlap_px: float, blank: tuple[float, float],
    degree: int = 2, min_quality: float = 0.0, shaded: bool = False,
) -> Measured:  # fmt: skip
    """Shift ``d`` with ``b(m) ~ a(m + d)``: the NCC maximum within ``reach``; NaN if blank.

    ``degree``: each crop is taken minus its least-squares polynomial of this degree over the
    common part of every shift (see :func:`_ncc_surface`) in the search and in the sub-pixel
    step.

    ``blank`` holds each tile's raw scale: a crop whose band-passed spread is below 1e-5 of it
    has no content. Shifts whose common part is narrower than ``min_overlap_px`` along an axis
    (or than the stage overlap, where that is smaller) are not considered. The runner-up is the
    best NCC at least one peak width away from the best (a repeated pattern gives several).
    The next ``_ALTERNATIVES`` distinct local maxima of the score whose NCC reaches
    ``min_quality`` are kept too, refined alike (``Measured.alternatives``). ``shaded``: the
    crops are not flat-field corrected (the content's correlation area, by which thin common
    parts are discounted, is then measured after the detrend).
    """

    nd = a.ndim
    nothing = Measured(np.full(nd, np.nan), 0.0, 0.0, (0,) * nd)
    va, vb = np.isfinite(a), np.isfinite(b)
    if min(a.shape) < 2 or va.sum() < 16 or vb.sum() < 16:
        return nothing
    for x, v, scale in ((a, va, blank[0]), (b, vb, blank[1])):
        if float(np.std(x[v], dtype=np.float64)) <= 1e-5 * scale:
            return nothing  # a blank crop: nothing to measure
    stage = _extent(va & vb) or list(a.shape)
    need = np.array([min(min_overlap_px, n) for n in stage], dtype=float)
    r = np.minimum(math.ceil(reach), np.array(a.shape) - 1)
    # thinner than 16 sigma, a common part is smoothed less across: the smoothing is one-sided
    # at each tile's edge, where every overlap lies, and displaces the content it sees there
    # (by a pixel on 13 px overlaps of a 10x10 scan at 2 px)
    sigma = [min(_SMOOTH_PX, n / _SMOOTH_SHARE) for n in stage]
    sa, sb = _smooth(a, sigma), _smooth(b, sigma)
    ncc, count, *extents = _ncc_surface(sa, sb, r, degree)
    ok = count >= 16
    for ax, e in enumerate(extents):
        ok = ok & (e >= need[ax] - 1e-9)
    # A thin common part gives high NCC by chance: score each shift by a lower confidence
    # bound of its NCC (Fisher z minus _CONFIDENCE standard errors, with the pixels counted in
    # independent samples of the content's correlation area).
    # (``shaded``: the crops still hold the tiles' shading, whose smooth ramp would pass for
    # content correlated over the whole crop: measured on them minus their polynomial)
    area = max(_corr_area(_detrend(x, np.isfinite(x), degree) if shaded else x) for x in (sa, sb))
    samples = count / area
    fisher = np.arctanh(np.clip(ncc, -0.999, 0.999))
    error = 1 / np.sqrt(np.maximum(samples - 3, 1))
    z = fisher - _CONFIDENCE * error
    lower = np.tanh(z)  # every shift's bound, the excluded ones too (see _inside)
    score = np.where(ok, lower, -np.inf)
    if not np.isfinite(score).any():
        return nothing
    best = np.array(np.unravel_index(int(np.argmax(score)), score.shape))
    quality = float(max(ncc[tuple(best)], 0.0))
    # the runner-up on the NCC scale: its bound plus the best's own NCC-to-bound margin (both
    # unclipped: a bound below zero still ranks the shifts)
    runner = _runner_up(score, best) - float(score[tuple(best)])
    runner = float(np.clip(quality + runner, 0, 1)) if math.isfinite(runner) else 0.0
    peak = best - r
    shift, settled = _refined(a, b, peak, degree, score, best, quality >= _GN_FAR_QUALITY)
    overlap = tuple(int(e.flat[int(best[ax])]) for ax, e in enumerate(extents))
    # Significance over the whole search: on unrelated content the best of M independent
    # shifts exceeds t standard errors with probability about M P(Z > t); a match must beat
    # the t at which that is _CHANCE. Shifts closer than the content's correlation length are
    # not independent, so M = shifts / correlation area; the NCC's standard error under that
    # null is Bartlett's, from the two crops' autocorrelations (_shared_area).
    from scipy.special import ndtri

    shared = _shared_area(sa, sb, degree)
    tries = max(float(np.count_nonzero(ok)) / shared, 1.0)
    spread = 1 / math.sqrt(max(float(count[tuple(best)]) / shared - 3, 1))
    chance = -float(ndtri(_CHANCE / tries)) * spread
    # A match whose own confidence bound is not above zero is not established either. A best
    # shift on the edge of the search is no peak: the NCC may still rise beyond it (chance
    # matches gather there: the bound favours the largest common part).
    bound = float(score[tuple(best)])
    significant = bool(fisher[tuple(best)] > chance) and bound > 0
    inside = _inside(ok, lower, ncc, best, shift - peak if settled else None)
    alternatives = []
    for other in _other_peaks(score, best, _ALTERNATIVES):
        at = tuple(other)
        if ncc[at] < min_quality:
            continue  # not a match to consider
        spread_k = 1 / math.sqrt(max(float(count[at]) / shared - 3, 1))
        chance_k = -float(ndtri(_CHANCE / tries)) * spread_k
        # the phase correlation alone for these fallbacks (a thin one may keep a pull to the peak)
        shift_k = _phase_start(a, b, other - r, degree, score, other)
        b_k = float(score[at])
        alternatives.append((shift_k, float(max(ncc[at], 0.0)), b_k,
                             bool(fisher[at] > chance_k) and b_k > 0))  # fmt: skip
    near, concentration = None, 0.0
    if quality < STRONG_MATCH:
        near = _near(ncc, ok, best, r)
        concentration = _concentration(sa, sb, best - r, degree)
    cov = _peak_spread(ncc, ok, best, float(error[tuple(best)]))
    return Measured(shift, quality, runner, overlap, significant, inside, bound,
                    tuple(alternatives), near, concentration, cov)  # fmt: skip


def _peak_spread(ncc: np.ndarray, ok: np.ndarray, best: np.ndarray, error: float) -> np.ndarray:
    """:attr:`Measured.spread` of the best shift ``best`` (an index of the ``ncc`` surface):
    the second moments about it of the searched shifts, joined to it, whose NCC is within one
    standard error of the best's (``error``: the Fisher z's, so ``error (1 - r^2)`` on the NCC
    scale), plus a twelfth of a pixel squared (the whole-pixel grid). Content that is one edge
    or smooth haze makes a ridge or a broad hill of the NCC, and the shift is then uncertain
    along it by pixels (a light-sheet pair: NCC 0.871 at the best, 0.864 at the true shift 6 px
    along the ridge), however high its NCC; a sharp peak keeps the variance near 1/12."""
    from scipy import ndimage

    top = float(ncc[tuple(best)])
    r = min(abs(top), 0.999999)
    near = ok & (ncc >= top - max(error * (1 - r * r), 1e-9))
    near[tuple(best)] = True  # the peak itself, whatever rounding says
    label = ndimage.label(near, structure=np.ones((3,) * ncc.ndim))[0]  # diagonal ridges too
    d = np.argwhere(label == label[tuple(best)]) - best
    return d.T @ d / max(len(d), 1) + np.eye(ncc.ndim) / 12


def _near(ncc: np.ndarray, ok: np.ndarray, best: np.ndarray, r: np.ndarray) -> np.ndarray:
    """:attr:`Measured.near` of an NCC surface whose index ``r`` is no shift: the best NCC of
    the searched shifts ``d`` with ``|d| <= k`` that lie nearer to no shift than to ``best``
    (the match's own flank is no rival), for each whole radius ``k``, kept where it rises:
    float32 ``[radii, NCCs]``."""
    grids = np.ogrid[tuple(slice(0, n) for n in ncc.shape)]
    distance = np.sqrt(sum((g - float(c)) ** 2 for g, c in zip(grids, r, strict=True)))
    to_best = np.sqrt(sum((g - float(c)) ** 2 for g, c in zip(grids, best, strict=True)))
    keep = ok & (distance < to_best) & np.isfinite(ncc)
    top = np.full(math.ceil(float(np.linalg.norm(r))) + 1, -np.inf)
    if keep.any():
        rings = np.minimum(np.ceil(distance[keep] - 1e-9).astype(int), len(top) - 1)
        np.maximum.at(top, rings, ncc[keep].astype(np.float64))
    top = np.maximum.accumulate(top)
    rises = np.flatnonzero(np.isfinite(top) & (top > np.concatenate([[-np.inf], top[:-1]])))
    return np.stack([rises.astype(np.float32), top[rises].astype(np.float32)])


def near_ncc(near: np.ndarray | None, radius: float) -> float:
    """The best NCC within ``radius`` px of no shift, from :attr:`Measured.near` (-1 where
    it holds no shift that close, or is None)."""
    if near is None or near.shape[1] == 0:
        return -1.0
    at = int(np.searchsorted(near[0], math.floor(radius), side="right")) - 1
    return float(near[1, at]) if at >= 0 else -1.0


def _concentration(a: np.ndarray, b: np.ndarray, q: np.ndarray, degree: int) -> float:
    """Share of the covariance of ``a(m + q)`` and ``b(m)`` over their common part (each minus
    its polynomial of ``degree`` there, as the NCC sees them) held by the largest of
    ``_SUPPORT_BLOCKS`` equal slices of that part along its longest axis; 1 where the
    covariance is not positive. Content that matches throughout the common part spreads it
    (about ``1 / _SUPPORT_BLOCKS``); one feature, say a speck that moved between the two
    exposures, holds it in one slice."""
    sl_a: list[slice] = []
    sl_b: list[slice] = []
    for n_a, n_b, d in zip(a.shape, b.shape, (int(v) for v in q), strict=True):
        lo, hi = max(0, -d), min(n_b, n_a - d)
        if hi <= lo:
            return 1.0
        sl_a.append(slice(lo + d, hi + d))
        sl_b.append(slice(lo, hi))
    x, y = a[tuple(sl_a)], b[tuple(sl_b)]
    keep = np.isfinite(x) & np.isfinite(y)
    if np.count_nonzero(keep) < 16 * _SUPPORT_BLOCKS:
        return 1.0
    product = np.where(keep, _detrend(x, keep, degree) * _detrend(y, keep, degree), 0.0)
    extents = _extent(keep)
    axis = int(np.argmax(extents))
    other = tuple(o for o in range(keep.ndim) if o != axis)
    rows = np.flatnonzero(keep.any(axis=other))
    line = product.sum(axis=other)
    edges = np.linspace(rows[0], rows[-1] + 1, _SUPPORT_BLOCKS + 1).round().astype(int)
    shares = [float(line[lo:hi].sum()) for lo, hi in itertools.pairwise(edges)]
    total = sum(shares)
    return 1.0 if total <= 0 else min(max(shares) / total, 1.0)


def _inside(
    ok: np.ndarray, bound: np.ndarray, ncc: np.ndarray, best: np.ndarray,
    moved: np.ndarray | None,
) -> bool:  # fmt: skip
    """Whether ``best`` is a peak: no neighbour along an axis lies beyond the reach, and where
    one was left out of the search for a common part narrower than ``min_overlap_px`` and its
    ``bound`` (the NCC's lower confidence bound, by which shifts are ranked) is higher, the
    refined shift (``moved`` from ``best``; None: it did not settle) lies between the two, a
    quarter of a pixel or more towards it (the bound and the refinement agree on a peak there).
    A best shift there is otherwise the narrowest allowed, not a peak: a pair whose true
    common part is 2 px wide matched 4 px further in (a 10x10 scan of 13 px overlaps), while
    one 5.3 px wide is found within 0.5 px by the refinement.

    Nor is it a peak when the ``ncc`` itself rises from ``best`` through the few shifts left
    (up to ``_DISTINCT_PX``) to the first one left out: the bound fell there only because the
    common part narrows. Where the tiles do not overlap at all, the content nearest across
    the gap correlates best at the narrowest common part allowed, and such matches of one row
    of a 5x5 scan at 6 % overlap agreed with each other and outvoted the true pair.
    """
    for ax in range(ok.ndim):
        for step in (-1, 1):
            at = best.copy()
            at[ax] += step
            if not 0 <= at[ax] < ok.shape[ax]:
                return False
            rising = not ok[tuple(at)] and bound[tuple(at)] >= bound[tuple(best)]
            if rising and (moved is None or not 0.25 <= step * moved[ax] < 1):
                return False
            if ok[tuple(at)] and _rises_out(ok, ncc, best, ax, step):
                return False
    return True


def _rises_out(ok: np.ndarray, ncc: np.ndarray, best: np.ndarray, ax: int, step: int) -> bool:
    """Whether the ``ncc`` keeps rising from ``best`` along ``ax`` in the direction ``step``
    to the first shift left out of the search (``ok`` False) within ``_DISTINCT_PX + 1``."""
    at, last = best.copy(), float(ncc[tuple(best)])
    for _ in range(int(_DISTINCT_PX) + 1):
        at[ax] += step
        if not 0 <= at[ax] < ok.shape[ax]:
            return False
        value = float(ncc[tuple(at)])
        if not value >= last:  # NaN: no common part to compare
            return False
        if not ok[tuple(at)]:
            return True
        last = value
    return False


def _corr_area(x: np.ndarray) -> float:
    """Area (px^nd) over which the content of ``x`` stays correlated: per axis
    ``sqrt(2) std(x) / std(dx)`` (exact for Gaussian-correlated texture), 1 to 64 px."""
    v = x[np.isfinite(x)]
    spread = float(np.std(v, dtype=np.float64)) if v.size else 0.0
    area = 1.0
    for ax in range(x.ndim):
        d = np.diff(x, axis=ax)
        d = d[np.isfinite(d)]
        step = float(np.std(d, dtype=np.float64)) if d.size else 0.0
        area *= float(np.clip(math.sqrt(2) * spread / max(step, 1e-12), 1.0, 64.0))
    return area


def _shared_area(a: np.ndarray, b: np.ndarray, degree: int, max_lag: int = 32) -> float:
    """Bartlett's effective area (px^nd): ``sum_t rho_a(t) rho_b(t)`` over lags up to
    ``max_lag``, of the crops minus their polynomial of ``degree`` (as the NCC sees them), so
    that the NCC of ``n`` common pixels of two unrelated crops has variance about
    ``area / n``."""
    from scipy import fft

    rho = []
    for x in (a, b):
        v = np.isfinite(x)
        z = np.where(v, _detrend(x, v, degree), 0.0)
        pad = [fft.next_fast_len(n + max_lag, real=True) for n in z.shape]
        auto = fft.irfftn(np.abs(fft.rfftn(z, s=pad)) ** 2, s=pad)
        lags = np.ix_(*[np.arange(-min(max_lag, n - 1), min(max_lag, n - 1) + 1) % p
                        for n, p in zip(z.shape, pad, strict=True)])  # fmt: skip
        rho.append(auto[lags] / max(float(auto.flat[0]), 1e-300))
    return float(np.clip(np.sum(rho[0] * rho[1]), 1.0, None))


def _smooth(x: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Gaussian of ``sigma`` (per axis) over the valid pixels only (normalised convolution):
    pixel noise out of the search for the best shift; the sub-pixel step sees the unsmoothed
    crops."""
    from scipy import ndimage

    valid = np.isfinite(x)
    num = ndimage.gaussian_filter(np.where(valid, x, np.float32(0)), sigma)
    den = ndimage.gaussian_filter(valid.astype(np.float32), sigma)
    return np.where(valid, num / np.maximum(den, 1e-6), np.float32(np.nan))


def _subpixel(a: np.ndarray, b: np.ndarray, peak: np.ndarray, degree: int) -> np.ndarray | None:
    """Sub-pixel remainder by phase correlation of the common part at the integer ``peak``,
    both crops cut to the same box, taken minus their polynomial of ``degree`` over the common
    pixels and given the same window (so neither shading nor the windows can bias it), the
    frequencies weighted by their margin over the noise floor; None when it lands more than a
    pixel away."""
    from scipy import fft

    sa = tuple(slice(max(0, k), n + min(0, k)) for k, n in zip(peak, a.shape, strict=True))
    sb = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(peak, a.shape, strict=True))
    x, y = a[sa], b[sb]
    keep = np.isfinite(x) & np.isfinite(y)
    box = tuple(
        slice(int(h[0]), int(h[-1]) + 1)
        for h in (
            np.flatnonzero(keep.any(axis=tuple(o for o in range(keep.ndim) if o != ax)))
            for ax in range(keep.ndim)
        )
    )
    x, y, keep = x[box], y[box], keep[box]
    if min(x.shape) < 4:
        return None
    window = _outer([_tukey(n) for n in x.shape])
    crops = [np.where(keep, _detrend(z, keep, degree), 0.0) * window for z in (x, y)]
    cross = fft.rfftn(crops[0]) * np.conj(fft.rfftn(crops[1]))
    lowpass = _outer([np.exp(-0.5 * (f / _LOWPASS) ** 2) for f in _freqs(x.shape)])
    # Whitened (phase only), weighted by a Gaussian low-pass and by how far each frequency's
    # cross-power stands above the noise floor (its median beyond 0.35 cycles/px, where
    # microscopy content is weakest): noise-dominated frequencies, whose phases are random,
    # drop out instead of counting as much as the content's.
    mag = np.abs(cross)
    radius = np.sqrt(sum(np.square(g) for g in np.meshgrid(*_freqs(x.shape), indexing="ij")))
    high = mag[radius > _NOISE_BAND]
    noise = float(np.median(high)) if high.size else 0.0
    safe = np.maximum(mag, 1e-30 + 1e-12 * mag.max())
    weight = lowpass * np.clip(1 - _NOISE_MARGIN * noise / safe, 0, 1)
    if not np.any(weight > 0):
        return None  # nothing above the noise: the caller falls back to the NCC surface
    cross *= weight / safe
    d = _refine(cross, x.shape, np.zeros(x.ndim))
    return d if np.all(np.abs(d) <= 1) else None


def _phase_start(
    a: np.ndarray, b: np.ndarray, peak: np.ndarray, degree: int, score: np.ndarray,
    at: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """``peak`` plus the phase correlation's sub-pixel remainder (the score's parabola where
    that finds nothing)."""
    sub = _subpixel(a, b, peak, degree)
    return peak + (sub if sub is not None else _parabola(score, at))


def _refined(
    a: np.ndarray, b: np.ndarray, peak: np.ndarray, degree: int, score: np.ndarray,
    at: np.ndarray, far: bool = False,
) -> tuple[np.ndarray, bool]:  # fmt: skip
    """The shift near the integer ``peak``: the phase-correlation estimate (or the score's
    parabola) as the start of :func:`_gauss_newton`, which has the last word when it converges
    (within ``_GN_REACH`` px of that start; then True). With ``far`` (a match of NCC
    ``_GN_FAR_QUALITY`` or more) it is not held to the integer peak: the search's smoothing,
    one-sided at each tile's edge, can put that peak more than a pixel off (a Leica pair through
    the estimated flat field, NCC 0.83: peak at -1 px, the unsmoothed NCC's maximum at +0.65,
    where the refinement went; kept to 1.5 px of the peak, the pair stayed 0.95 px off). A weak
    match's unsmoothed NCC is mostly noise, and there a refinement that wanders beyond
    ``_GN_REACH`` of the peak follows it (a pair of NCC 0.33 in a 3x3 cut of the Leica frame:
    2.5 px off, 1.6 with the phase estimate), so the phase estimate stands."""
    start = _phase_start(a, b, peak, degree, score, at)
    final = _gauss_newton(a, b, start, degree)
    if final is None or (not far and np.any(np.abs(final - peak) > _GN_REACH)):
        return start, False
    return final, True


def _gauss_newton(
    a: np.ndarray, b: np.ndarray, start: np.ndarray, degree: int
) -> np.ndarray | None:
    """``d`` with ``b(m) ~ a(m + d)`` maximising the NCC of the common part, each side minus its
    polynomial of ``degree``, by Gauss-Newton from ``start`` (Lucas & Kanade 1981); None when
    it does not settle.

    Both crops are resampled, ``a`` at ``m + d/2`` and ``b`` at ``m - d/2`` (cubic splines),
    so neither is smoothed more than the other at any ``d`` and whole pixels attract nothing.
    No window is needed either: the phase correlation's window, the same on both crops, pulls
    its estimate towards the integer peak by a share that grows as the common part thins
    (a third of a 0.3 px remainder kept on a 52 px wide strip, three quarters on 13 px), and
    the search's smoothing, one-sided at each tile's edge, can put that peak a pixel off.
    The slopes come from Gaussian derivatives (sigma 1 px), taken anew once ``d`` has moved a
    quarter pixel; the curvature from the two crops' slopes against each other (their noise
    drops out); a step is halved until it improves the NCC.
    """
    from scipy import ndimage

    nd = a.ndim
    start = np.asarray(start, dtype=np.float64)
    va, vb = np.isfinite(a), np.isfinite(b)
    # the pixels a pixel or more inside what each crop holds (the cubic spline's reach): no
    # sample taken there leans on the copies that fill the rest
    inner_a = ndimage.binary_erosion(va, border_value=0).astype(np.float32)
    inner_b = ndimage.binary_erosion(vb, border_value=0).astype(np.float32)

    def common(d: np.ndarray) -> np.ndarray:  # where both samples at d lie inside
        m = ndimage.shift(inner_a, -d / 2, order=1, cval=0.0) > 0.999
        return m & (ndimage.shift(inner_b, d / 2, order=1, cval=0.0) > 0.999)

    mask = common(start)
    if np.count_nonzero(mask) < 64:
        return None
    pad = math.ceil(_GN_REACH) + 3  # the common part may grow by the largest move
    lo = [max(0, int(i.min()) - pad) for i in np.nonzero(mask)]
    hi = [min(n, int(i.max()) + 1 + pad) for i, n in
          zip(np.nonzero(mask), a.shape, strict=True)]  # fmt: skip
    box = tuple(slice(x, y) for x, y in zip(lo, hi, strict=True))
    a, b, va, vb = a[box], b[box], va[box], vb[box]
    # within the box its edge counts as missing too (the samples stay a pixel inside it)
    inner_a = ndimage.binary_erosion(va, border_value=0).astype(np.float32)
    inner_b = ndimage.binary_erosion(vb, border_value=0).astype(np.float32)

    def coefficients(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        # the nearest valid pixel stands in for each missing one: no step for the spline to ring on
        near = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        filled = x[tuple(near)] if not valid.all() else x
        return ndimage.spline_filter(filled.astype(np.float64), order=3, mode="mirror")

    ca, cb = coefficients(a, va), coefficients(b, vb)
    powers = _coordinate_powers(a.shape, degree)
    monomials = _monomials(nd, degree)

    def flattener(keep: np.ndarray) -> Any:
        basis = np.stack([_monomial(powers, e)[keep] for e in monomials], axis=-1)
        # the projection by the normal equations (k x k): a QR's Q would be a second copy of
        # the basis (100 MB on a 2048 x 1024 common part); over the box's own -1..1
        # coordinates the basis is well conditioned
        inverse = np.linalg.pinv(basis.T @ basis)

        def flat(x: np.ndarray) -> np.ndarray:  # x on the common part minus its polynomial
            v = x[keep]
            return v - basis @ (inverse @ (basis.T @ v))

        return flat

    def sample(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        A = ndimage.shift(ca, -d / 2, order=3, mode="mirror", prefilter=False)
        B = ndimage.shift(cb, d / 2, order=3, mode="mirror", prefilter=False)
        return A, B

    def slopes(x: np.ndarray, spread: float) -> np.ndarray:
        return np.stack([flat(ndimage.gaussian_filter(x, 1.0, order=[int(k == ax) for k in
                                                                     range(nd)])) / spread
                         for ax in range(nd)], axis=1)  # fmt: skip

    def ncc(fa: np.ndarray, fb: np.ndarray) -> float:
        den = float(np.sqrt(np.dot(fa, fa) * np.dot(fb, fb)))
        return float(np.dot(fa, fb)) / den if den > 0 else -math.inf

    d, at = start.copy(), None
    flat: Any = None
    ga: Any = None
    gb: Any = None
    jac: Any = None
    A, B = sample(d)
    for _ in range(_GN_ITERATIONS):
        if at is None or np.any(np.abs(d - at) > 0.25):
            # the common part, its polynomial and the slopes, anew once d has moved a
            # quarter pixel (in between, a sample leans at most an eighth of a pixel outward)
            keep, at = common(d), d.copy()
            if np.count_nonzero(keep) < 64:
                return None
            flat = ga = gb = jac = None  # the last common part's arrays go before the new ones
            flat = flattener(keep)
            fa, fb = flat(A), flat(B)
            sa, sb = float(np.std(fa)), float(np.std(fb))
            if sa <= 0 or sb <= 0:
                return None
            ga, gb = slopes(A, sa), slopes(B, sb)
            jac = (ga + gb) / 2
            # the curvature from the two crops' slopes against each other: the noise of either
            # crop is not in the other, so it drops out (in J^T J it would shorten every step)
            cross = ga.T @ gb
            normal = (cross + cross.T) / 2
            if np.linalg.eigvalsh(normal)[0] <= 1e-6 * np.trace(jac.T @ jac):
                normal = jac.T @ jac
        try:
            step = -np.linalg.solve(normal, jac.T @ (fa / np.std(fa) - fb / np.std(fb)))
        except np.linalg.LinAlgError:
            return None
        step = np.clip(step, -0.5, 0.5)
        # a step is taken only where it improves the match (halved until it does): two tiles
        # that differ (shading, a bent specimen) make the curvature a rough guess
        now = ncc(fa, fb)
        for _ in range(4):
            trial = d + step
            if np.all(np.abs(trial - start) <= _GN_REACH):
                tA, tB = sample(trial)
                ta, tb = flat(tA), flat(tB)
                if ncc(ta, tb) > now:
                    break
            step = step / 2
        else:
            return d  # no step along the way improves it: settled
        d, A, B, fa, fb = trial, tA, tB, ta, tb
        if np.all(np.abs(step) < _GN_TOLERANCE):
            return d
    return None


def _detrend(z: np.ndarray, keep: np.ndarray, degree: int) -> np.ndarray:
    """``z`` minus its least-squares polynomial of ``degree`` over the pixels ``keep``.

    The normal equations are summed a band of rows at a time (a design matrix of the whole
    crop would be 6 float64 per pixel: 100 MB for a 2048 x 1024 crop), on ``z`` minus its mean
    over ``keep`` (for conditioning; the basis holds the constant)."""
    exps = _monomials(z.ndim, degree)
    powers = _coordinate_powers(z.shape, degree)
    k = len(exps)
    normal, rhs = np.zeros((k, k)), np.zeros(k)
    rows = max(1, _DETREND_BAND // max(1, math.prod(z.shape[1:])))
    offset = float(np.nanmean(z[keep])) if keep.any() else 0.0  # conditioning only
    for lo in range(0, z.shape[0], rows):
        band = slice(lo, lo + rows)
        hold = keep[band]
        if not hold.any():
            continue
        # the band's own monomials (of the whole crop, each would cost the crop's size)
        in_band = [powers[0][:, band], *powers[1:]]
        design = np.stack([_monomial(in_band, e)[hold] for e in exps], axis=-1)
        normal += design.T @ design
        rhs += design.T @ (z[band][hold].astype(np.float64) - offset)
    # lstsq on the k x k system keeps the minimum-norm answer of a degenerate common part
    # (one row, say, where a quadratic is not determined)
    coef = np.linalg.lstsq(normal, rhs, rcond=None)[0]
    out = z.astype(np.float64) - offset
    for c, e in zip(coef, exps, strict=True):
        out -= c * _monomial(powers, e)
    return out


def _parabola(score: np.ndarray, best: np.ndarray) -> np.ndarray:
    """Sub-pixel offset of the peak from a parabola through it and its neighbours per axis."""
    out = np.zeros(len(best))
    for ax in range(len(best)):
        if 0 < best[ax] < score.shape[ax] - 1:
            lo, hi = best.copy(), best.copy()
            lo[ax] -= 1
            hi[ax] += 1
            y0, y1, y2 = score[tuple(lo)], score[tuple(best)], score[tuple(hi)]
            den = y0 - 2 * y1 + y2
            if np.isfinite(den) and den < 0:
                out[ax] = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
    return out


def _runner_up(score: np.ndarray, best: np.ndarray) -> float:
    """Best score outside the main peak: beyond where the score first falls to half the way
    from the peak to the surface's median, along each axis (at least ``_DISTINCT_PX``)."""
    top = score[tuple(best)]
    finite = score[np.isfinite(score)]
    half = 0.5 * (top + float(np.median(finite)))
    width = []
    for ax in range(score.ndim):
        line = score[tuple(slice(None) if o == ax else int(best[o]) for o in range(score.ndim))]
        w = 1
        while (best[ax] - w >= 0 and line[best[ax] - w] > half) or (
            best[ax] + w < len(line) and line[best[ax] + w] > half
        ):
            w += 1
        width.append(max(float(w), _DISTINCT_PX))
    grids = np.ogrid[tuple(slice(0, n) for n in score.shape)]
    dist2 = sum(((g - c) / w) ** 2 for g, c, w in zip(grids, best, width, strict=True))
    outside = score[(dist2 > 1) & np.isfinite(score)]
    return float(outside.max()) if outside.size else -math.inf


def _other_peaks(score: np.ndarray, best: np.ndarray, count: int) -> list[np.ndarray]:
    """Up to ``count`` local maxima of ``score`` other than ``best``, best first, each at
    least ``_DISTINCT_PX`` from the best and from each other, strictly inside the surface."""
    from scipy import ndimage

    if count <= 0:
        return []
    size = 2 * math.ceil(_DISTINCT_PX) + 1
    filled = np.where(np.isfinite(score), score, -np.inf)
    top = ndimage.maximum_filter(filled, size=size, mode="constant", cval=-np.inf)
    interior = np.zeros(score.shape, dtype=bool)
    interior[tuple(slice(1, n - 1) for n in score.shape)] = True
    where = np.flatnonzero((filled == top) & np.isfinite(filled) & interior)
    where = where[np.argsort(-filled.flat[where], kind="stable")]
    chosen: list[np.ndarray] = []
    for flat in where.tolist():
        pos = np.array(np.unravel_index(flat, score.shape))
        if all(np.max(np.abs(pos - q)) >= _DISTINCT_PX for q in [best, *chosen]):
            chosen.append(pos)
            if len(chosen) == count:
                break
    return chosen


def _extent(mask: np.ndarray) -> list[int]:
    """Extent along each axis of the stage overlap (empty list when there is none)."""
    if not mask.any():
        return []
    return [
        int(np.count_nonzero(mask.any(axis=tuple(o for o in range(mask.ndim) if o != ax))))
        for ax in range(mask.ndim)
    ]
