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
from ._normalize import _IMMERKAER_NORM, MAD_TO_SIGMA

__all__ = ["NoiseModel", "estimate_noise_model", "local_means"]

#: Intensity bins of the noise level function (equal counts) ...
_INTENSITY_BINS = 16
#: ... and residual bins per global noise sigma, up to this many sigmas.
_RESIDUAL_STEPS_PER_SIGMA = 16
_RESIDUAL_MAX_SIGMAS = 24
#: Fine histogram of the local mean used to place the equal-count intensity bins.
_MEAN_LEVELS = 1024


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
        The global robust estimate (median absolute Immerkaer residual), whatever ``kind``.
    """

    kind: str
    gain: float
    offset: float
    floor: float
    sigma: float

    def sigma_at(self, mu: Any) -> Any:
        """Noise standard deviation at intensity ``mu`` (scalar or NumPy array)."""
        variance = np.maximum(self.gain * np.asarray(mu, np.float64) + self.offset, 0.0)
        return np.maximum(np.sqrt(variance), self.floor)

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
        }


def _residuals(image: Any) -> Any:
    """Immerkaer residual ``(1, -2, 1) x (1, -2, 1)`` (not yet divided by its norm, 6) on
    every second row and column, as :func:`scopefx.focus._normalize.estimate_noise`."""
    rows = image[0:-2:2] - 2 * image[1:-1:2] + image[2::2]
    return rows[:, 0:-2:2] - 2 * rows[:, 1:-1:2] + rows[:, 2::2]


def _means(image: Any) -> Any:
    """Mean of the same 3x3 neighbourhoods as :func:`_residuals`."""
    rows = image[0:-2:2] + image[1:-1:2] + image[2::2]
    return (rows[:, 0:-2:2] + rows[:, 1:-1:2] + rows[:, 2::2]) / 9.0


def estimate_noise_model(
    image: Any, lsb: float, *, kind: str, backend: Backend
) -> tuple[NoiseModel, Any]:
    """The noise level function of a normalised image.

    Parameters
    ----------
    image : (H, W) float32 array on ``backend``, values in [0, 1]
    lsb : float
        One input grey level in normalised units (0 for float input).
    kind : {"global", "signal"}

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
    """
    xp = backend.xp
    floor = lsb / math.sqrt(12.0)
    residuals = xp.abs(_residuals(image))
    sigma = float(xp.median(residuals)) * MAD_TO_SIGMA / _IMMERKAER_NORM
    if kind == "global" or sigma <= 0:
        return NoiseModel("global", 0.0, sigma * sigma, floor, sigma), None
    means = _means(image)
    # equal-count intensity bins from a fine histogram of the means
    level = xp.clip((means * _MEAN_LEVELS).astype(xp.int32), 0, _MEAN_LEVELS - 1)
    cdf = backend.to_numpy(xp.cumsum(xp.bincount(level.ravel(), minlength=_MEAN_LEVELS)))
    n = int(cdf[-1])
    level_bin = np.minimum((cdf - 1) * _INTENSITY_BINS // max(n, 1), _INTENSITY_BINS - 1)
    intensity_bin = backend.asarray(level_bin.astype(np.int32))[level]
    # per intensity bin: histogram of |residual| in steps of sigma / 16, and the mean intensity
    step = sigma * _IMMERKAER_NORM / _RESIDUAL_STEPS_PER_SIGMA  # in raw residual units
    n_steps = _RESIDUAL_STEPS_PER_SIGMA * _RESIDUAL_MAX_SIGMAS
    residual_bin = xp.minimum((residuals / step).astype(xp.int32), n_steps - 1)
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
        return NoiseModel("global", 0.0, sigma * sigma, floor, sigma), None
    cumulative = np.cumsum(hist[keep], axis=1)
    half = counts[keep, None] / 2.0
    median_step = (cumulative < half).sum(axis=1) + 0.5  # the step holding the median
    bin_sigma = median_step * step * MAD_TO_SIGMA / _IMMERKAER_NORM
    gain, offset = _fit_line(mu[keep], bin_sigma**2)
    return NoiseModel("signal", gain, offset, floor, sigma), means


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
    integral = xp.zeros((h + 1, w + 1), dtype=xp.float64)
    integral[1:, 1:] = xp.cumsum(xp.cumsum(means, axis=0, dtype=xp.float64), axis=1)
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
