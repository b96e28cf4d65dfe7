"""Streaming DoG scale space in the cosine domain, and 3x3 non-maximum suppression.

The image is transformed once with a DCT-II, which is exactly the real FFT of the image mirrored
about its borders, so every Gaussian blur has symmetric ("reflect") boundaries and never wraps
around, whatever its sigma, with no padded copy in memory. Each band
``DoG_i = t_i (L(t_{i+1}) - L(t_i))`` is one product with an analytic transfer function and one
inverse transform, and is folded into a running maximum (and its scale index) at once: no stack
of planes is ever held.

Two exact shortcuts keep the inverse transforms cheap: a band's transfer function falls below
float32 resolution beyond ``~1.81 N / sigma`` coefficients, so the transform along the first
axis only runs over those columns. In ``fast`` mode, bands with ``sigma >= 3 d`` are evaluated on
a grid decimated by ``d`` (the truncated spectrum inverted at the smaller size) and linearly
interpolated back (cubic).
"""

from __future__ import annotations

import collections
import functools
import math
import threading
from typing import Any

import numpy as np

from .._backend import Backend

__all__ = ["count_peaks", "drop_device_caches", "response_max"]

#: Transfer values below this (relative) are dropped: below float32 round-off.
_SPECTRUM_EPS = 1e-7
_CUTOFF_FACTOR = math.sqrt(2 * math.log(1 / _SPECTRUM_EPS)) / math.pi
#: In fast mode a band is evaluated on a grid decimated by d only if sigma >= this * d.
FAST_SAMPLES_PER_SIGMA = 3.0
#: ... and d is at most this (each decimation level costs one full-size interpolation).
FAST_MAX_DECIMATION = 8
_BLOCK_BYTES = 256 * 2**10  # rows interpolated at once: they stay in cache between passes
_CACHE_BYTES = 256 * 2**20  # all cached plans together: two 4096^2 plans (~120 MiB each)


def _cutoff(n: int, sigma: float) -> int:
    """Number of DCT coefficients along an axis of length ``n`` where ``G_sigma`` is above eps."""
    return min(n, math.ceil(_CUTOFF_FACTOR * n / sigma) + 1)


def _decimation(sigma: float, mode: str) -> int:
    if mode != "fast":
        return 1
    d = 1
    while sigma >= FAST_SAMPLES_PER_SIGMA * 2 * d and 2 * d <= FAST_MAX_DECIMATION:
        d *= 2
    return d


def _band_sizes(
    shape: tuple[int, int], sigmas: tuple[float, ...], mode: str
) -> list[tuple[int, int, int]]:
    """Per band: (decimation d, spectrum rows kept, spectrum columns kept)."""
    h, w = shape
    sizes = []
    for s0 in sigmas[:-1]:
        d = _decimation(s0, mode)
        ry, rx = _cutoff(h, s0), _cutoff(w, s0)
        if d > 1:
            ry, rx = min(ry, math.ceil(h / d)), min(rx, math.ceil(w / d))
        sizes.append((d, ry, rx))
    return sizes


def _gauss(xp: Any, sigma: float, k: Any) -> Any:
    """Gaussian transfer at angular DCT frequencies ``k``, computed in float64, stored float32."""
    return xp.exp(-0.5 * (sigma * k) ** 2).astype(xp.float32)


def _build_plan(
    shape: tuple[int, int], sigmas: tuple[float, ...], sign: float, mode: str, backend: Backend
) -> tuple[tuple[int, int, int, Any], ...]:
    """Per band: (decimation d, rows kept, columns kept, float32 transfer block on the device).

    The transfer of a Gaussian on the DCT-II grid of length n is ``exp(-(pi sigma k / n)^2 / 2)``
    (frequency ``k / 2n`` cycles per pixel); the band's is ``t_i (G_{i+1} - G_i)``, computed
    analytically in float64 and stored in float32.
    """
    xp = backend.xp
    h, w = shape
    plan = []
    sizes = _band_sizes(shape, sigmas, mode)
    for (d, ry, rx), s0, s1 in zip(sizes, sigmas[:-1], sigmas[1:], strict=True):
        ky = xp.arange(ry, dtype=xp.float64) * (np.pi / h)
        kx = xp.arange(rx, dtype=xp.float64) * (np.pi / w)
        # 1-D factors in float64, the 2-D block in float32: no image-sized float64 temporaries
        block = xp.outer(_gauss(xp, s1, ky), _gauss(xp, s1, kx))
        block -= xp.outer(_gauss(xp, s0, ky), _gauss(xp, s0, kx))
        block *= xp.float32(sign * s0)
        plan.append((d, ry, rx, block))
    return tuple(plan)


_plans: collections.OrderedDict[tuple[Any, ...], tuple[int, tuple[Any, ...]]] = (
    collections.OrderedDict()
)
_plans_lock = threading.Lock()


def _device_id(backend: Backend) -> int:
    """The device a plan's arrays live on: -1 for host memory, else the current CUDA device."""
    return backend.device_id


def _plan(
    shape: tuple[int, int], sigmas: tuple[float, ...], sign: float, mode: str, backend: Backend
) -> tuple[tuple[int, int, int, Any], ...]:
    """The band plan, cached per (shape, scales, polarity, mode, backend, device).

    The cache holds at most ``_CACHE_BYTES`` of plans in all, least recently used out first,
    so a long-lived process (``scopefx watch``, an endpoint worker) seeing many image sizes
    stays bounded; a plan larger than the whole budget is built for each call.
    """
    nbytes = 4 * sum(ry * rx for _, ry, rx in _band_sizes(shape, sigmas, mode))
    key = (shape, sigmas, sign, mode, backend.name, _device_id(backend))
    with _plans_lock:
        hit = _plans.get(key)
        if hit is not None:
            _plans.move_to_end(key)
            return hit[1]
    plan = _build_plan(shape, sigmas, sign, mode, backend)
    if nbytes <= _CACHE_BYTES:
        with _plans_lock:
            _plans[key] = (nbytes, plan)
            while sum(n for n, _ in _plans.values()) > _CACHE_BYTES:
                _plans.popitem(last=False)
    return plan


#: On a GPU, a band whose inverse is at most this many pixels a side is inverted by two matrix
#: products with the DCT-III matrices (cuBLAS) instead of two inverse DCTs: CuPy's DCTs cost
#: ~0.2 ms of host time each (several kernels and their twiddle factors per call), which made a
#: 1024^2 score host-bound (10 ms, the GPU mostly idle). Above this side the products' cost
#: (~4 n^3 per band) outgrows the transforms'.
MATRIX_MAX_SIDE = 2048
#: DCT-III matrices cached (per length and device), least recently used out first: 16 MiB at
#: 2048, and fast mode on a 2048 x 1536 frame uses 8 lengths (35 MiB).
_MATRIX_CACHE_BYTES = 128 * 2**20
_matrices: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()


def _uses_matrix(backend: Backend, out_h: int, out_w: int) -> bool:
    """Whether a band inverted to ``out_h x out_w`` goes through matrix products."""
    return backend.is_gpu and max(out_h, out_w) <= MATRIX_MAX_SIDE


def _idct_matrix(n: int, backend: Backend) -> Any:
    """The inverse of the unnormalised DCT-II of length ``n`` (SciPy's ``idct(type=2)``) as a
    float32 matrix ``T`` with ``x = T[:r].T @ X[:r]`` for ``X`` zero beyond ``r`` coefficients:
    ``T[k, j] = c_k cos(pi k (2j + 1) / 2n) / 2n``, ``c_0 = 1``, else 2. Rows are coefficients,
    so the first ``r`` of them are one contiguous block."""
    key = (n, backend.name, _device_id(backend))
    with _plans_lock:
        hit = _matrices.get(key)
        if hit is not None:
            _matrices.move_to_end(key)
            return hit
    matrix = backend.asarray(_idct_table(n))
    with _plans_lock:
        _matrices[key] = matrix
        while sum(int(m.nbytes) for m in _matrices.values()) > _MATRIX_CACHE_BYTES:
            _matrices.popitem(last=False)
    return matrix


def _idct_table(n: int) -> np.ndarray:
    """:func:`_idct_matrix`'s values, computed in float64 on the host, stored float32."""
    k = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    table = np.cos(np.pi * k * (2 * j + 1) / (2 * n)) / n
    table[0] *= 0.5
    return table.astype(np.float32)


def drop_device_caches() -> None:
    """Forget the band plans and DCT-III matrices kept on GPUs (after the GPU ran out of
    memory: they are the first things to give back)."""
    with _plans_lock:
        for cache in (_plans, _matrices):
            for key in [k for k in cache if k[-1] != -1]:  # -1: host memory
                del cache[key]


def _inverse(
    product: Any, out_h: int, out_w: int, backend: Backend, matrix: bool | None = None
) -> Any:
    """The 2-D inverse DCT-II of the truncated spectrum ``product`` at ``out_h x out_w``
    (zero beyond its coefficients), by inverse DCTs or (``matrix``; default
    :func:`_uses_matrix`) by two matrix products, the cheaper order first."""
    if matrix is None:
        matrix = _uses_matrix(backend, out_h, out_w)
    if not matrix:
        fft = backend.fft
        return fft.idct(fft.idct(product, type=2, n=out_h, axis=0), type=2, n=out_w, axis=1)
    ry, rx = (int(v) for v in product.shape)
    rows = _idct_matrix(out_h, backend)[:ry].T  # (out_h, ry)
    cols = _idct_matrix(out_w, backend)[:rx]  # (rx, out_w)
    if out_h * rx * (ry + out_w) <= ry * out_w * (rx + out_h):
        return (rows @ product) @ cols
    return rows @ (product @ cols)


@functools.lru_cache(maxsize=32)
def _cubic_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Taps and weights to resample ``n_in`` cell-centred samples onto ``n_out`` pixels.

    A truncated DCT inverted at size ``n_in`` samples the band-limited signal at pixel positions
    ``(m + 1/2) n_out / n_in - 1/2``. Keys' cubic convolution (a = -1/2) interpolates it; the
    signal is mirror-symmetric about the outer half-pixel, so taps past the ends are reflected.

    Returns
    -------
    taps : (4, n_out) intp
    weights : (4, n_out) float32
    nearest : (n_out,) intp
    """
    c = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(c).astype(np.intp)
    t = c - base
    weights = np.stack(
        [
            ((-0.5 * t + 1.0) * t - 0.5) * t,
            (1.5 * t - 2.5) * t * t + 1.0,
            ((-1.5 * t + 2.0) * t + 0.5) * t,
            (0.5 * t - 0.5) * t * t,
        ]
    ).astype(np.float32)
    taps = base + np.arange(-1, 3)[:, None]
    taps = np.where(taps < 0, -1 - taps, taps)  # reflect about -1/2
    taps = np.where(taps > n_in - 1, 2 * n_in - 1 - taps, taps)
    nearest = np.clip(np.rint(c), 0, n_in - 1).astype(np.intp)
    return np.clip(taps, 0, n_in - 1), weights, nearest


def _upsample(coarse: Any, index: Any, shape: tuple[int, int], backend: Backend) -> tuple[Any, Any]:
    """Cubic interpolation of ``coarse`` (nearest of ``index``) onto ``shape``.

    Columns are interpolated first, on the few coarse rows; whole rows are then gathered,
    which is contiguous and cheap. An axis that exactly doubles (every level, where the image's
    sides are multiples of 8) is interpolated from shifted slices instead of gathered copies
    (:func:`_doubled`).
    """
    xp = backend.xp
    (h, w), (mh, mw) = shape, coarse.shape
    ty, wy, ny = _cubic_weights(h, mh)
    tx, wx, nx = _cubic_weights(w, mw)
    cols = _interpolated(coarse, 1, tx, wx, backend)
    out = _interpolated(cols, 0, ty, wy, backend)
    return out, xp.take(index, backend.asarray(nx), axis=1)[backend.asarray(ny)]


def _interpolated(
    x: Any, axis: int, taps: np.ndarray, weights: np.ndarray, backend: Backend
) -> Any:
    """``sum_k x[taps[k]] * weights[k]`` along ``axis``, the terms added in order ``k``."""
    xp = backend.xp
    n_in, n_out = int(x.shape[axis]), taps.shape[1]
    if n_out == 2 * n_in and n_in >= 4:
        return _doubled(x, axis, weights[:, 0], weights[:, 1], backend)
    t, wt = backend.asarray(taps), backend.asarray(weights)
    shape = (1, -1) if axis == 1 else (-1, 1)
    out = xp.take(x, t[0], axis=axis) * wt[0].reshape(shape)
    for k in range(1, 4):
        out += xp.take(x, t[k], axis=axis) * wt[k].reshape(shape)
    return out


def _doubled(x: Any, axis: int, even: np.ndarray, odd: np.ndarray, backend: Backend) -> Any:
    """:func:`_interpolated` onto twice as many samples along ``axis``.

    Output ``2j`` has taps ``j-2..j+1`` and output ``2j+1`` taps ``j-1..j+2``, each parity
    with one set of weights (``even``, ``odd``: 4 float32 each), so both are sums of four
    shifted views of ``x`` padded by two reflected samples per end: no gathered copies. The
    same products are added in the same order as by the gathers, so the result is identical.
    On the CPU, the rows are done in blocks of about ``_BLOCK_BYTES``, which stay in cache
    between the products and the sums (3.7 -> 1.1 ms for 512 -> 1024 rows of 1024); a GPU
    takes each parity's rows at once (a block per kernel launch would cost more than it saves).
    """
    xp = backend.xp
    n = int(x.shape[axis])

    def cut(a: Any, start: int, stop: int | None, step: int = 1) -> Any:
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop, step)
        return a[tuple(index)]

    # reflected about the outer half-pixel, as _cubic_weights's taps: -1 -> 0, -2 -> 1, ...
    padded = xp.concatenate([cut(x, 1, None, -1), x, cut(x, n - 1, n - 3, -1)], axis=axis)
    shape = list(x.shape)
    shape[axis] = 2 * n
    out = xp.empty(shape, dtype=x.dtype)
    line = x.dtype.itemsize * (x.size // n)  # bytes of one sample along the axis
    block = n if axis or backend.is_gpu else max(1, min(n, _BLOCK_BYTES // max(line, 1)))
    term = xp.empty(cut(x, 0, block).shape, dtype=x.dtype)
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        spare = cut(term, 0, hi - lo)
        for parity, weights in ((0, even), (1, odd)):
            target = cut(out, 2 * lo + parity, 2 * hi, 2)
            for k in range(4):
                source = cut(padded, lo + parity + k, hi + parity + k)
                xp.multiply(source, xp.float32(weights[k]), out=target if k == 0 else spare)
                if k:
                    target += spare
    return out


def _fold(
    best: Any, best_index: Any, plane: Any, index: Any, scratch: Any, backend: Backend
) -> None:
    """best = max(best, plane), remembering which band (``index``, scalar or array) won.

    ``scratch`` is a boolean array of the same shape, reused between calls.

    The index is updated by arithmetic, not by a masked copy: ``best_index += (index -
    best_index) * won``, in the index's unsigned dtype, whose wrap-around the addition undoes.
    A masked copy branches on every pixel, and where the winning band changes from pixel to
    pixel it took most of the time of the whole scale space (4.9 of 5.2 ms per 1024^2 fold
    on a random mask; the arithmetic: 0.1 ms).
    """
    xp = backend.xp
    xp.greater(plane, best, out=scratch)
    step = xp.subtract(index, best_index, dtype=best_index.dtype)
    step *= scratch
    best_index += step
    xp.maximum(best, plane, out=best)


#: Working memory of the scale space per pixel beyond its filters: the spectrum, the band
#: being made and its transforms, the running maximum, its band index, the interpolation
#: scratch (about 11 float32 planes at most; docs/limits.md, measured).
_WORK_BYTES_PER_PX = 48


def working_bytes(shape: tuple[int, int], sigmas: tuple[float, ...], mode: str) -> int:
    """Estimated peak working memory of :func:`response_max` on an image of ``shape``: the
    band filters (float32, one block per band, as large as the image for fine scales) and
    ``_WORK_BYTES_PER_PX`` per pixel."""
    filters = 4 * sum(ry * rx for _, ry, rx in _band_sizes(shape, sigmas, mode))
    return filters + _WORK_BYTES_PER_PX * shape[0] * shape[1]


def _check_memory(shape: tuple[int, int], sigmas: tuple[float, ...], mode: str) -> None:
    """Refuse, before anything is built, a scale space over the process's focus budget
    (:attr:`~scopefx.io.EndpointLimits.max_focus_bytes`): 256 scales of 0.5-0.51 px on a
    1344 x 1024 image took 1.4 GiB, and would take 256 GiB on the largest image allowed."""
    from ..errors import ResourceLimitError
    from ..io import EndpointLimits
    from ..io.confined import LIMIT_ENV, size_text

    need = working_bytes(shape, sigmas, mode)
    limit = EndpointLimits.from_env().max_focus_bytes
    if need > limit:
        raise ResourceLimitError(
            f"scoring a {shape[1]} x {shape[0]} px plane with {len(sigmas) - 1} scales "
            f"({mode}) needs about {size_text(need)} of working memory, over this process's "
            f"limit of {size_text(limit)} ({LIMIT_ENV['max_focus_bytes']}); use fewer scales "
            "(n_scales) or a smaller image, or ask the endpoint's operator to raise the limit"
        )


def response_max(
    image: Any,
    sigmas: tuple[float, ...],
    *,
    polarity: str,
    mode: str,
    backend: Backend,
    spectrum_out: list[Any] | None = None,
) -> tuple[Any, Any]:
    """Maximum over bands of the scale-normalised DoG response, and the band index.

    Parameters
    ----------
    image : (H, W) float32 array on ``backend``
        Normalised image.
    sigmas : tuple of float
        The ``n + 1`` Gaussian scales in pixels.

    Returns
    -------
    best : (H, W) float32 array
        ``max_i DoG_i`` per pixel (``max_i |DoG_i|`` for ``polarity="both"``).
    index : (H, W) uint8 or uint16 array
        The band ``i`` (0-based) where the maximum is reached.

    ``spectrum_out``, a list, receives the image's DCT-II (for :func:`band_energy_ratio`).
    """
    xp, fft = backend.xp, backend.fft
    shape = (int(image.shape[0]), int(image.shape[1]))
    h, w = shape
    _check_memory(shape, sigmas, mode)
    sign = -1.0 if polarity == "bright" else 1.0
    plan = _plan(shape, sigmas, sign, mode, backend)
    index_dtype = xp.uint8 if len(plan) < 256 else xp.uint16
    spectrum = fft.dctn(image, type=2)
    if spectrum_out is not None:
        spectrum_out.append(spectrum)

    best: Any = None  # the first full-size band becomes the running maximum itself
    best_index = xp.zeros(shape, dtype=index_dtype)
    scratch = xp.empty(shape, dtype=bool)
    coarse: dict[int, tuple[Any, Any, Any]] = {}
    for i, (d, ry, rx, block) in enumerate(plan):
        product = spectrum[:ry, :rx] * block
        out_h, out_w = (h, w) if d == 1 else (math.ceil(h / d), math.ceil(w / d))
        plane = _inverse(product, out_h, out_w, backend)
        if d > 1:  # the truncated inverse at size M carries a factor M / N per axis
            plane *= xp.float32((out_h / h) * (out_w / w))
        if polarity == "both":
            xp.abs(plane, out=plane)
        if d == 1 and best is None:
            best = plane
            best_index[...] = i
        elif d == 1:
            _fold(best, best_index, plane, index_dtype(i), scratch, backend)
        elif d not in coarse:
            level_index = xp.full(plane.shape, i, dtype=index_dtype)
            coarse[d] = (plane, level_index, xp.empty(plane.shape, dtype=bool))
        else:
            _fold(*coarse[d][:2], plane, index_dtype(i), coarse[d][2], backend)
    # Cascade coarse levels into the next finer one, and the finest into full resolution, so
    # only one interpolation runs at full size.
    if best is None:  # only possible with a single, decimated band
        best = xp.full(shape, -xp.inf, dtype=xp.float32)
    levels = sorted(coarse, reverse=True)
    for k, d in enumerate(levels):
        level_best, level_index, _ = coarse[d]
        target = coarse[levels[k + 1]] if k + 1 < len(levels) else (best, best_index, scratch)
        up, up_index = _upsample(level_best, level_index, target[0].shape, backend)
        _fold(target[0], target[1], up, up_index, target[2], backend)
    return best, best_index


def count_peaks(response: Any, threshold: float, backend: Backend) -> np.ndarray:
    """Positions of 3x3 local maxima of ``response`` above ``threshold``, a plateau once.

    A pixel is a peak if no 8-neighbour is larger and it exceeds ``threshold``. Adjacent peaks
    (a plateau of equal values) form one feature, represented by its first pixel in raster
    order. Plateaus are merged on the sparse peak coordinates, not on the image.

    Returns
    -------
    positions : (K, 2) int64 ndarray (on the host)
        Row, column of each feature, in raster order.
    """
    xp = backend.xp
    h, w = response.shape
    padded = xp.full((h + 2, w + 2), -xp.inf, dtype=response.dtype)
    padded[1:-1, 1:-1] = response
    rows = xp.maximum(padded[:, :-2], padded[:, 2:])
    xp.maximum(rows, padded[:, 1:-1], out=rows)
    neighbourhood = xp.maximum(rows[:-2], rows[2:])
    xp.maximum(neighbourhood, rows[1:-1], out=neighbourhood)
    peaks = response >= neighbourhood
    peaks &= response > threshold
    flat = backend.to_numpy(xp.flatnonzero(peaks))  # raster order, sorted
    return _merge_plateaus(flat, w)


def _merge_plateaus(flat: np.ndarray, width: int) -> np.ndarray:
    """Keep one pixel (the first in raster order) of each 8-connected group of peaks."""
    if flat.size < 2:
        return np.stack([flat // width, flat % width], axis=1)
    col = flat % width
    not_last, not_first = col < width - 1, col > 0
    edges = []  # (peak, later neighbouring peak): right, down-left, down, down-right
    for offset, allowed in (
        (1, not_last),
        (width - 1, not_first),
        (width, None),
        (width + 1, not_last),
    ):
        target = flat + offset
        j = np.minimum(np.searchsorted(flat, target), flat.size - 1)
        hit = flat[j] == target
        if allowed is not None:
            hit &= allowed
        if hit.any():
            edges.append((np.flatnonzero(hit), j[hit]))
    if edges:
        import scipy.sparse
        from scipy.sparse.csgraph import connected_components

        a = np.concatenate([e[0] for e in edges])
        b = np.concatenate([e[1] for e in edges])
        graph = scipy.sparse.coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(flat.size,) * 2)
        _, labels = connected_components(graph, directed=False)
        _, keep = np.unique(labels, return_index=True)
        flat = flat[np.sort(keep)]
    return np.stack([flat // width, flat % width], axis=1)


#: The reference band of :func:`band_energy_ratio`: the first whose scale is at least this many
#: times the finest (4.6 px at the default scales: structure mild defocus leaves).
REFERENCE_SCALE_RATIO = 4.0
#: Floor of a band's noise-corrected energy, as a share of its noise energy (a band whose
#: energy is all noise is not allowed to reach zero or below).
_ENERGY_FLOOR = 0.01
#: The ratio is kept within these bounds: beyond them the image is degenerate (a reference
#: band of no energy in a noiseless frame), and ``R ** band_ratio`` (up to the 8th power)
#: must stay a finite number.
RATIO_RANGE = (1e-6, 1e6)


def band_energy_ratio(
    spectrum: Any, sigmas: tuple[float, ...], noise_variance: float, backend: Backend
) -> float:
    """Noise-corrected energy of the finest DoG band over that of the reference band.

    ``spectrum`` is the image's (unnormalised) DCT-II, as :func:`response_max` leaves it in
    ``spectrum_out``; it is squared in place. ``E_i``, the mean square of
    ``DoG_i = t_i (L(t_{i+1}) - L(t_i))`` over the image, follows by Parseval without an
    inverse transform, and as the band's transfer is a difference of two separable Gaussians,
    ``|H_i|^2`` is a sum of three separable terms: ``E_i`` takes one matrix product of the
    power spectrum with six vectors. ``N_i = noise_variance * mean_k |H_i(k)|^2`` is what white
    noise of that variance adds to it. Returns ``max(E_1 - N_1, f N_1) / max(E_r - N_r, f N_r)``
    (``f`` 1 %; kept within :data:`RATIO_RANGE`), band ``r`` the first with
    ``t_r >= REFERENCE_SCALE_RATIO * t_1`` (the
    coarsest when none is). A ratio of two energies of the same frame: the amount and the
    brightness of the structure cancel, and the noise terms take out the signal-to-noise
    ratio; defocus lowers it.
    """
    h, w = (int(v) for v in spectrum.shape)
    ky = np.arange(h, dtype=np.float64) * (np.pi / h)
    kx = np.arange(w, dtype=np.float64) * (np.pi / w)
    # orthonormal scaling of the unnormalised DCT-II, squared, and the mean over the pixels
    fy = np.full(h, 1.0 / (2 * h))
    fy[0] = 1.0 / (4 * h)
    fx = np.full(w, 1.0 / (2 * w * h * w))
    fx[0] = 1.0 / (4 * w * h * w)
    ref = next(
        (i for i, t in enumerate(sigmas[:-1]) if t >= REFERENCE_SCALE_RATIO * sigmas[0]),
        len(sigmas) - 2,
    )

    def gauss(sigma: float, k: np.ndarray) -> np.ndarray:
        return np.exp(-0.5 * (sigma * k) ** 2)

    rows, cols, noise = [], [], []
    for i in (0, ref):
        s0, s1 = sigmas[i], sigmas[i + 1]
        ay, by, ax, bx = gauss(s1, ky), gauss(s0, ky), gauss(s1, kx), gauss(s0, kx)
        # |H|^2 / t_i^2 = (a_y a_x - b_y b_x)^2 = a_y^2 a_x^2 - 2 a_y b_y a_x b_x + b_y^2 b_x^2
        terms = ((ay * ay, ax * ax, 1.0), (ay * by, ax * bx, -2.0), (by * by, bx * bx, 1.0))
        for u, v, c in terms:
            rows.append(c * s0 * s0 * u * fy)
            cols.append(v * fx)
        noise.append(s0 * s0 * sum(c * u.mean() * v.mean() for u, v, c in terms))
    spectrum *= spectrum
    projected = backend.to_numpy(spectrum @ backend.asarray(np.stack(cols, 1).astype(np.float32)))
    values = [float(rows[j] @ projected[:, j].astype(np.float64)) for j in range(len(rows))]
    energies = []
    for n in range(2):
        energy, noise_energy = sum(values[3 * n : 3 * n + 3]), noise_variance * noise[n]
        energies.append(max(energy - noise_energy, _ENERGY_FLOOR * noise_energy, 1e-30))
    return float(min(max(energies[0] / energies[1], RATIO_RANGE[0]), RATIO_RANGE[1]))
