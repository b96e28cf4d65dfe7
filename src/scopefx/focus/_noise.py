"""Noise of an image as a function of its intensity, estimated from the image itself.

Shot noise makes the noise of a camera frame grow with the signal (Poisson-Gaussian:
``var = a mu + b``). One global noise level is dominated by the background, so bright, hazy
regions of a fluorescence frame fill the count with noise peaks. Here the noise level function
is estimated in the manner of Foi et al. (2008), simplified: robust residuals against local
mean intensity, binned, and a straight line fitted to the binned variances.

Shared by NumPy and CuPy: the per-pixel work is a handful of strided slices and one
``bincount``; everything after that is a few dozen numbers on the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import Backend
from ._normalize import _IMMERKAER_NORM, MAD_TO_SIGMA, block_downsample

__all__ = [
    "NoiseModel",
    "abs_residuals",
    "estimate_noise",
    "estimate_noise_model",
    "flat_cells",
    "flat_pixels",
    "local_means",
]

#: Intensity bins of the noise level function (equal counts) ...
_INTENSITY_BINS = 16
#: ... and residual bins per global noise sigma, up to this many sigmas.
_RESIDUAL_STEPS_PER_SIGMA = 16
_RESIDUAL_MAX_SIGMAS = 24
#: Whole neighbourhoods on valid pixels needed to measure only those.
_MIN_VALID = 256
#: Levels of the grouped median of integer input's residuals (beyond: the plain median).
_GROUPED_LEVELS = 4096
#: Blocks of this many residual cells per side (2 px each) that are all zero hold no noise.
_FLAT_BLOCK = 8
#: Fine histogram of the local mean used to place the equal-count intensity bins.
_MEAN_LEVELS = 1024
#: Block-transform coding (JPEG, JPEG-in-TIFF, SVS, MPEG) works on blocks of this many pixels.
_BLOCK_PX = 8
#: An image is block coded when the gradient across one phase of the 8-pixel grid exceeds the
#: median over the other phases by this factor (lossless: at most 1.01 on the real series,
#: 1.06 on noisy synthetic images; JPEG q75 and below: 1.7 or more).
_BLOCK_EXCESS = 1.1
#: A grid this strong marks heavy coding (JPEG q75 and below: 1.7 or more on the real series;
#: q95: 1.28-1.39), which removes the noise up to 2-px scales, so it is measured on 4-px block
#: means too; a lighter grid stops at 2 px, since beyond that an image's own fine texture
#: (a noiseless image once stored as JPEG shows one) would be taken for noise.
_HEAVY_BLOCK_EXCESS = 1.7
#: Block sizes at which the noise is measured again when it is not white (8, JPEG's block,
#: would measure the quantised block means instead) ...
_NOISE_SCALES_PX = (2, 4)
#: ... and by how much an estimate must exceed the finer one for the coarser scale to be used:
#: white noise gives the same estimate at every scale (lossless: within 1.08 from 1 to 2 px);
#: what JPEG leaves of the noise lives at coarser scales than its 1-px estimate sees.
_NOISE_SCALE_STEP = (1.25, 1.5)


@dataclass(frozen=True)
class NoiseModel:
    """Noise standard deviation as a function of normalised intensity.

    ``sigma(mu) = max(sqrt(gain * mu + offset), floor)`` in normalised [0, 1] units.

    Attributes
    ----------
    kind : {"global", "signal"}
        ``"global"``: ``gain = 0``, one level for the whole image.
    gain, offset : float
        Poisson (``a``) and Gaussian (``b``) terms of the variance.
    floor : float
        Quantisation noise of one input grey level, ``lsb / sqrt(12)`` (0 for float input).
    sigma : float
        The global robust estimate (median absolute Immerkaer residual), whatever ``kind``; of
        a block-coded image, measured on block means of ``scale_px`` pixels.
    scale_px : int
        Block size, in pixels, at which the noise was measured: 1 for white noise; 2, 4 or 8
        when the image is block coded (JPEG) and its noise is measured on block means (see
        :func:`estimate_noise_model`).
    block_coded : bool
        An 8-pixel block grid was found in the image (JPEG or another block-transform code).
    """

    kind: str
    gain: float
    offset: float
    floor: float
    sigma: float
    scale_px: int = 1
    block_coded: bool = False

    def sigma_at(self, mu: Any, xp: Any = np) -> Any:
        """Noise standard deviation at intensity ``mu`` (scalar or array of ``xp``, NumPy by
        default: an array on the GPU stays there)."""
        variance = xp.maximum(self.gain * xp.asarray(mu, dtype=xp.float64) + self.offset, 0.0)
        return xp.maximum(xp.sqrt(variance), self.floor)

    def variance_at(self, mu: Any, xp: Any = np) -> Any:
        """``sigma_at(mu) ** 2``, in the precision of ``mu`` (no float64 copy, no square
        root): what averaging the variance over a plane needs."""
        return xp.maximum(self.gain * xp.asarray(mu) + self.offset, self.floor * self.floor)

    @property
    def min_sigma(self) -> float:
        """The smallest noise level over intensities in [0, 1]."""
        return float(min(self.sigma_at(0.0), self.sigma_at(1.0)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "gain": self.gain,
            "offset": self.offset,
            "floor": self.floor,
            "sigma": self.sigma,
            "scale_px": self.scale_px,
            "block_coded": self.block_coded,
        }


def _residuals(image: Any) -> Any:
    """Immerkaer residual ``(1, -2, 1) x (1, -2, 1)`` (not yet divided by its norm, 6) on
    every second row and column."""
    rows = image[0:-2:2] - 2 * image[1:-1:2] + image[2::2]
    return rows[:, 0:-2:2] - 2 * rows[:, 1:-1:2] + rows[:, 2::2]


def _means(image: Any) -> Any:
    """Mean of the same 3x3 neighbourhoods as :func:`_residuals`."""
    rows = image[0:-2:2] + image[1:-1:2] + image[2::2]
    return (rows[:, 0:-2:2] + rows[:, 1:-1:2] + rows[:, 2::2]) / 9.0


def block_excess(image: Any, backend: Backend) -> float:
    """How much stronger the gradient is across one phase of an 8-pixel grid than across the
    others: about 1 for a lossless image, above :data:`_BLOCK_EXCESS` for a block-coded one.

    Absolute differences between neighbouring columns (on every second row), clipped at 3
    times their mean so that a few strong edges do not decide; their mean per phase of the
    column index modulo 8; the largest phase over the median of the other seven. The same for
    rows; the smaller of the two, since block coding makes both grids. Any grid phase counts,
    so a cropped JPEG is found too.
    """
    xp = backend.xp
    h, w = (int(v) for v in image.shape)
    if min(h, w) < 4 * _BLOCK_PX:
        return 1.0
    ratios = []
    for axis, diffs in (
        (0, xp.abs(xp.diff(image[::2], axis=1))),
        (1, xp.abs(xp.diff(image[:, ::2], axis=0))),
    ):
        clip = 3.0 * float(xp.mean(diffs))
        sums = backend.to_numpy(xp.minimum(diffs, clip).sum(axis=axis)).astype(np.float64)
        phase = np.arange(sums.size) % _BLOCK_PX
        means = np.bincount(phase, weights=sums, minlength=_BLOCK_PX) / np.bincount(
            phase, minlength=_BLOCK_PX
        )
        top = int(np.argmax(means))
        rest = float(np.median(np.delete(means, top)))
        ratios.append(float(means[top]) / rest if rest > 0 else 1.0)
    return min(ratios)


def _flat_cells(residuals: Any, backend: Backend) -> Any:
    """Cells of the residual grid inside blocks of ``_FLAT_BLOCK`` x ``_FLAT_BLOCK`` cells
    whose residuals are all exactly zero (``None`` when there are none).

    No camera noise leaves a block of 16 x 16 pixels without a single non-zero residual: such
    a block is padding (the zero fill of an aligned stack, a scanner's margin), a burnt-in data
    bar or clipped saturation, which hold no noise to measure. Counted in, they pulled the
    median residual down and the threshold with it: a bright-field frame 24 um out of focus
    went from 387 to 10,288 features with a 100 px black border around it.
    """
    xp = backend.xp
    h, w = (int(v) // _FLAT_BLOCK for v in residuals.shape)
    if h == 0 or w == 0:
        return None
    edge = _FLAT_BLOCK
    blocks = residuals[: h * edge, : w * edge].reshape(h, edge, w, edge).max(axis=(1, 3))
    flat_blocks = blocks == 0
    if not bool(flat_blocks.any()):
        return None
    flat = xp.zeros(residuals.shape, dtype=bool)
    flat[: h * edge, : w * edge] = xp.repeat(xp.repeat(flat_blocks, edge, axis=0), edge, axis=1)
    # out to the padding's edge, at most a block further: the zero cells next to the flat
    # blocks (a block that the edge crosses holds noise, and data only on its far side)
    # brute_force: the same result; cupyx implements only that form of a masked iteration
    grown = backend.ndimage.binary_dilation(
        flat, iterations=edge - 1, mask=residuals == 0, brute_force=backend.is_gpu
    )
    return grown | flat


def abs_residuals(image: Any, backend: Backend) -> Any:
    """Absolute Immerkaer residuals of ``image`` on every second pixel (:func:`_residuals`),
    computed once for :func:`flat_cells` and :func:`estimate_noise_model` (``residuals=``)."""
    return backend.xp.abs(_residuals(image))


def flat_cells(image: Any, backend: Backend, valid: Any = None, residuals: Any = None) -> Any:
    """:func:`_flat_cells` of ``image``'s residual grid: where it holds no noise (``None``:
    nowhere), among the cells wholly on ``valid`` pixels (a NumPy mask of the image's shape;
    the others are no data already). Pass it on to :func:`estimate_noise_model` (``flat=``)
    and :func:`flat_pixels`."""
    if residuals is None:
        residuals = abs_residuals(image, backend)
    flat = _flat_cells(residuals, backend)
    if flat is None or valid is None:
        return flat
    flat = flat & _valid_grid(backend.asarray(valid), backend.xp)
    return flat if bool(flat.any()) else None


def flat_pixels(cells: Any, shape: tuple[int, int], backend: Backend) -> np.ndarray:
    """The pixels of an image of ``shape`` that :func:`flat_cells` found flat, as a NumPy
    mask (cell ``(i, j)`` is the neighbourhood centred on pixel ``(2i + 1, 2j + 1)``)."""
    cells = backend.to_numpy(cells)
    grown = np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1)
    out = np.zeros(shape, dtype=bool)
    h, w = min(shape[0] - 1, grown.shape[0]), min(shape[1] - 1, grown.shape[1])
    out[1 : 1 + h, 1 : 1 + w] = grown[:h, :w]
    return out


def _robust_sigma(residuals: Any, factor: int, backend: Backend, lsb: float = 0.0) -> float:
    """Noise standard deviation from absolute residuals (of block means of ``factor`` px).

    With ``lsb`` (one grey level of integer input, single pixels only), the residuals are
    whole multiples of it (the mask's weights are integers and sum to zero), and their plain
    median moves in whole steps: at 1.5 grey levels of noise a median of 6 levels, the next
    5 or 7, 17 % apart; one border of padding turned the threshold of a bright-field frame
    down by that step, and its count up 2.7-fold. The grouped median (each level spread
    over its width) moves smoothly with the noise instead.
    """
    xp = backend.xp
    median = _grouped_median(residuals, lsb, backend) if lsb > 0 else None
    if median is None:
        median = float(xp.median(residuals))
    return median * MAD_TO_SIGMA / _IMMERKAER_NORM * factor


def _grouped_median(residuals: Any, lsb: float, backend: Backend) -> float | None:
    """Median of absolute residuals that are whole multiples of ``lsb``, interpolated within
    the level that holds it (level 0 covers [0, 0.5) lsb, level k >= 1 [k - 0.5, k + 0.5));
    ``None`` when it lies beyond ``_GROUPED_LEVELS`` levels, where the steps no longer
    matter."""
    xp = backend.xp
    n = int(residuals.size)
    if n == 0:
        return None
    levels = xp.minimum(xp.rint(residuals / lsb), _GROUPED_LEVELS).astype(xp.int32)
    counts = backend.to_numpy(xp.bincount(levels.ravel(), minlength=_GROUPED_LEVELS + 1))
    below = np.cumsum(counts) - counts  # residuals under each level
    half = n / 2.0
    k = int(np.searchsorted(below + counts, half))  # first level whose cumulative count >= n/2
    if k >= _GROUPED_LEVELS or counts[k] == 0:
        return None
    lower, width = (0.0, 0.5) if k == 0 else (k - 0.5, 1.0)
    return (lower + (half - float(below[k])) / float(counts[k]) * width) * lsb


def _valid_grid(valid: Any, xp: Any) -> Any:
    """Where the 3x3 neighbourhoods of :func:`_residuals` lie wholly on ``valid`` pixels."""
    rows = valid[0:-2:2] & valid[1:-1:2] & valid[2::2]
    return rows[:, 0:-2:2] & rows[:, 1:-1:2] & rows[:, 2::2]


def estimate_noise(image: Any, backend: Backend, lsb: float = 0.0) -> float:
    """Robust standard deviation of white noise in ``image``: the level of the ``"global"``
    noise model (:func:`estimate_noise_model`).

    The image is filtered with Immerkaer's mask ``(1, -2, 1) x (1, -2, 1)``, which cancels
    anything locally linear along either axis, at every second row and column; the median
    absolute response (grouped, for integer input: ``lsb`` > 0), scaled by ``1.4826 / 6``,
    estimates the noise standard deviation. The median ignores the minority of pixels on
    edges and texture; blocks without noise (padding) are left out.
    """
    return estimate_noise_model(image, lsb, kind="global", backend=backend)[0].sigma


def estimate_noise_model(
    image: Any,
    lsb: float,
    *,
    kind: str,
    backend: Backend,
    valid: np.ndarray | None = None,
    flat: Any = ...,
    residuals: Any = None,
) -> tuple[NoiseModel, Any]:
    """The noise level function of a normalised image.

    Parameters
    ----------
    image : (H, W) float32 array on ``backend``, values in [0, 1]
    lsb : float
        One input grey level in normalised units (0 for float input).
    kind : {"global", "signal"}
    valid : (H, W) bool ndarray, optional
        The pixels that are data (the opaque pixels of an RGBA image): only neighbourhoods
        wholly on them are measured. Transparent pixels are filled from their nearest opaque
        pixel, which copies values without their noise: measured, they would pull the noise
        level down (a ring-shaped field of view of pure noise scored 1,500 times the density
        of the same noise unmasked).
    flat : array or None, optional
        :func:`flat_cells` of ``image`` when the caller has it (``None``: it found none);
        computed here by default.
    residuals : array, optional
        :func:`abs_residuals` of ``image`` when the caller has them.

    Returns
    -------
    model : NoiseModel
    means : (H // 2 - 1, W // 2 - 1) float32 array on ``backend`` or None
        Local 3x3 means on the grid of every second pixel (``"signal"`` only), the input of
        :func:`local_means`.

    Notes
    -----
    ``"signal"``: Immerkaer residuals and 3x3 means on every second pixel; 16 intensity bins of
    equal counts; in each, the median absolute residual (from a histogram, so no sort)
    estimates the noise; ``var = a mu + b`` is fitted to the bins by least squares, with
    ``a, b >= 0``. Bins whose mean lies at the saturated ends (normalised 0 or 1) are left out:
    clipping hides their noise.

    Block-coded images (JPEG): quantising 8x8 block transforms removes most of the noise at the
    finest scale, where the residual measures it, and keeps it at the scales the DoG bands see.
    When :func:`block_excess` finds an 8-pixel grid, the noise is measured again on block means
    of 2 and 4 pixels (times the block size, which leaves white noise's estimate unchanged);
    the coarsest scale whose estimate still exceeds the finer one by :data:`_NOISE_SCALE_STEP`
    gives the global level. The noise level function is fitted at single pixels as before and
    the difference of the two variances is added to its offset: block-coding error does not
    grow with the intensity (the same quantisation steps everywhere).
    """
    xp = backend.xp
    floor = lsb / math.sqrt(12.0)
    if residuals is None:
        residuals = abs_residuals(image, backend)
    ok: Any = None
    mask: Any = None
    if valid is not None:
        mask = backend.asarray(valid)
        ok = _valid_grid(mask, xp)
    if flat is ...:
        flat = _flat_cells(residuals, backend)
    if flat is not None:
        ok = ~flat if ok is None else ok & ~flat
    if ok is not None and int(ok.sum()) < _MIN_VALID:
        ok = None  # too few whole neighbourhoods: measure them all
    measured = residuals if ok is None else residuals[ok]
    sigma = fine = _robust_sigma(measured, 1, backend, lsb)
    factor = 1
    # JPEG decodes to integers: float input (lsb 0) is not taken for block coded, whatever
    # grid it shows (a noiseless float image once stored as JPEG would otherwise have its
    # texture at block scale taken for noise, and its sharp version score below a blur)
    excess = block_excess(image, backend) if lsb > 0 else 1.0
    blocky = excess > _BLOCK_EXCESS
    if blocky:
        for size, step in zip(_NOISE_SCALES_PX, _NOISE_SCALE_STEP, strict=True):
            if min(int(v) for v in image.shape) < 8 * size:
                break
            if size > _NOISE_SCALES_PX[0] and excess < _HEAVY_BLOCK_EXCESS:
                break  # light coding removed the noise at single pixels only
            coarse_image = block_downsample(image, size, backend)
            coarse_res = xp.abs(_residuals(coarse_image))
            coarse_ok: Any = None
            if ok is not None and mask is not None:  # blocks wholly on valid pixels
                whole = block_downsample(mask.astype(xp.float32), size, backend)
                coarse_ok = _valid_grid(whole >= 1, xp)
            coarse_flat = _flat_cells(coarse_res, backend)
            if coarse_flat is not None:
                coarse_ok = ~coarse_flat if coarse_ok is None else coarse_ok & ~coarse_flat
            if coarse_ok is not None and int(coarse_ok.sum()) >= _MIN_VALID:
                coarse_res = coarse_res[coarse_ok]
            coarse = _robust_sigma(coarse_res, size, backend)
            if coarse <= 0:  # quantised flat at this scale too: look coarser
                continue
            if coarse <= step * sigma:
                break
            factor, sigma = size, coarse
    # what block coding adds at the block scale, beyond the noise seen at single pixels
    extra = max(sigma * sigma - fine * fine, 0.0)
    if kind == "global" or sigma <= 0:
        return NoiseModel("global", 0.0, sigma * sigma, floor, sigma, factor, blocky), None
    means = _means(image)
    fit = None
    if fine > 0:
        fit = _fit_signal(measured, means if ok is None else means[ok], fine, backend)
    if fit is None:
        return NoiseModel("global", 0.0, sigma * sigma, floor, sigma, factor, blocky), None
    gain, offset = fit
    return NoiseModel("signal", gain, offset + extra, floor, sigma, factor, blocky), means


def _fit_signal(
    residuals: Any, means: Any, sigma: float, backend: Backend
) -> tuple[float, float] | None:
    """``var = a mu + b`` from absolute residuals and the means of the same neighbourhoods
    (``sigma``: their global robust estimate); ``None`` when fewer than 2 bins are usable."""
    xp = backend.xp
    # equal-count intensity bins from a fine histogram of the means
    level = xp.clip((means * _MEAN_LEVELS).astype(xp.int32), 0, _MEAN_LEVELS - 1)
    cdf = backend.to_numpy(xp.cumsum(xp.bincount(level.ravel(), minlength=_MEAN_LEVELS)))
    n = int(cdf[-1])
    level_bin = np.minimum((cdf - 1) * _INTENSITY_BINS // max(n, 1), _INTENSITY_BINS - 1)
    intensity_bin = backend.asarray(level_bin.astype(np.int32))[level]
    # per intensity bin: histogram of |residual| in steps of sigma / 16, and the mean intensity
    step = sigma * _IMMERKAER_NORM / _RESIDUAL_STEPS_PER_SIGMA  # in raw residual units
    n_steps = _RESIDUAL_STEPS_PER_SIGMA * _RESIDUAL_MAX_SIGMAS
    # clipped before the cast: a tiny step must not overflow int32
    residual_bin = xp.minimum(residuals / step, n_steps - 1).astype(xp.int32)
    joint = (intensity_bin * n_steps + residual_bin).ravel()
    hist = backend.to_numpy(xp.bincount(joint, minlength=_INTENSITY_BINS * n_steps))
    hist = hist.reshape(_INTENSITY_BINS, n_steps)
    sums = backend.to_numpy(
        xp.bincount(intensity_bin.ravel(), weights=means.ravel(), minlength=_INTENSITY_BINS)
    )
    counts = hist.sum(axis=1)
    keep = counts >= max(64, n // (4 * _INTENSITY_BINS))
    mu = sums / np.maximum(counts, 1)
    keep &= (mu > 1.0 / _MEAN_LEVELS) & (mu < 1.0 - 1.0 / _MEAN_LEVELS)
    if keep.sum() < 2:
        return None
    cumulative = np.cumsum(hist[keep], axis=1)
    half = counts[keep, None] / 2.0
    median_step = (cumulative < half).sum(axis=1) + 0.5  # the step holding the median
    bin_sigma = median_step * step * MAD_TO_SIGMA / _IMMERKAER_NORM
    return _fit_line(mu[keep], bin_sigma**2)


def _fit_line(mu: np.ndarray, variance: np.ndarray) -> tuple[float, float]:
    """Least-squares ``variance = a mu + b`` with ``a, b >= 0``."""
    design = np.stack([mu, np.ones_like(mu)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, variance, rcond=None)
    if a < 0:  # no growth with intensity: one level
        return 0.0, float(variance.mean())
    if b < 0:  # pure shot noise: a line through the origin
        return float(mu @ variance / (mu @ mu)), 0.0
    return float(a), float(b)


def local_means(
    means: Any, positions: np.ndarray, scales_px: np.ndarray, backend: Backend
) -> np.ndarray:
    """Mean intensity in a square of half-side ``scale`` around each position.

    Parameters
    ----------
    means : (h, w) array on ``backend``
        The grid returned by :func:`estimate_noise_model` (pixel ``(2i + 1, 2j + 1)`` of the
        image at ``(i, j)``).
    positions : (K, 2) int ndarray
        Row, column in the image.
    scales_px : (K,) ndarray
        Half-side of each square, in image pixels (at least one grid step is used).

    Returns
    -------
    (K,) float64 ndarray
    """
    xp = backend.xp
    if positions.shape[0] == 0:
        return np.zeros(0)
    h, w = (int(s) for s in means.shape)
    integral = _summed_area(means, xp)
    half = np.maximum(1, np.rint(np.asarray(scales_px) / 2.0)).astype(np.intp)
    row = np.clip((positions[:, 0] - 1) // 2, 0, h - 1)
    col = np.clip((positions[:, 1] - 1) // 2, 0, w - 1)
    r0, r1 = np.clip(row - half, 0, h), np.clip(row + half + 1, 0, h)
    c0, c1 = np.clip(col - half, 0, w), np.clip(col + half + 1, 0, w)
    corners = backend.asarray(np.stack([r0, r1, c0, c1]))
    total = (
        integral[corners[1], corners[3]]
        - integral[corners[0], corners[3]]
        - integral[corners[1], corners[2]]
        + integral[corners[0], corners[2]]
    )
    return backend.to_numpy(total) / ((r1 - r0) * (c1 - c0))


def _summed_area(values: Any, xp: Any) -> Any:
    """Summed-area table of a 2-D array: float64, ``(h + 1, w + 1)``, zero first row and
    column. On NumPy the column sums are taken by adding each row to the next: NumPy's
    ``cumsum`` down an axis of a C-ordered array ran 4 times slower (6.0 vs 1.5 ms for both
    sums of a 511 x 511 grid, the means of a 1024^2 image), a tenth of the fluorescence
    preset's whole cost over ``em``."""
    h, w = (int(s) for s in values.shape)
    table = xp.zeros((h + 1, w + 1), dtype=xp.float64)
    body = table[1:, 1:]
    if xp is not np:  # one kernel per axis on the GPU
        body[...] = xp.cumsum(xp.cumsum(values, axis=0, dtype=xp.float64), axis=1)
        return table
    body[...] = values
    np.cumsum(body, axis=1, out=body)
    for row in range(1, h):
        body[row] += body[row - 1]
    return table
