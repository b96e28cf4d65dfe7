"""A straightforward MHFD reference, kept to check the fast path.

float64 throughout, no caching, no streaming: every Gaussian level is computed in real space
with :func:`scipy.ndimage.gaussian_filter` (mirror boundaries, kernels truncated at 6 sigma), the
whole stack of DoG planes is held, the maximum and its index are taken with NumPy, and
non-maximum suppression uses :func:`scipy.ndimage.maximum_filter` and
:func:`scipy.ndimage.label`. Only the parameter object, the input checks and the definition of
the noise estimate and automatic threshold are shared with the fast path. It is slow (seconds
per megapixel) and memory hungry (``n + 1`` planes): use it in tests, not on a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .._backend import get_backend
from ._noise import estimate_noise
from ._normalize import auto_threshold, block_downsample, check_image
from ._params import FocusParams

__all__ = ["reference_features", "reference_response"]


def _normalise(image: np.ndarray, saturation_pct: float) -> tuple[np.ndarray, float] | None:
    values = image.astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("image holds NaN or infinite values")
    lo, hi = np.percentile(values, [saturation_pct, 100 - saturation_pct])
    if hi <= lo:
        lo, hi = values.min(), values.max()
        if hi <= lo:
            return None
    lsb = 1.0 / (hi - lo) if np.issubdtype(image.dtype, np.integer) else 0.0
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0), lsb


def _prepared(image: Any, params: FocusParams) -> tuple[np.ndarray, float] | None:
    image = np.asarray(image)
    check_image(image, min_side=params.min_image_px)
    if params.target_px is not None:
        factor = max(1, -(-max(image.shape) // params.target_px))
        image = block_downsample(image, factor, get_backend(image))
    return _normalise(image, params.saturation_pct)


def _response(values: np.ndarray, params: FocusParams) -> tuple[np.ndarray, np.ndarray]:
    sigmas = params.sigmas_px
    levels = [ndimage.gaussian_filter(values, s, mode="reflect", truncate=6.0) for s in sigmas]
    sign = -1.0 if params.resolved_polarity == "bright" else 1.0
    dog = np.stack([sign * sigmas[i] * (levels[i + 1] - levels[i]) for i in range(len(sigmas) - 1)])
    if params.resolved_polarity == "both":
        dog = np.abs(dog)
    return dog.max(axis=0), dog.argmax(axis=0)


def reference_response(image: Any, params: FocusParams) -> tuple[np.ndarray, np.ndarray] | None:
    """Maximum over bands of ``t_i (L(t_{i+1}) - L(t_i))`` and its band index, in float64.

    Returns ``None`` for a constant image.
    """
    prepared = _prepared(image, params)
    return None if prepared is None else _response(prepared[0], params)


def reference_features(image: Any, params: FocusParams | None = None) -> tuple[int, float]:
    """The MHFD count and threshold, computed the slow, obvious way.

    Returns
    -------
    features : int
    threshold : float
    """
    params = params or FocusParams()
    prepared = _prepared(image, params)
    if prepared is None:
        return 0, float("nan")
    values, lsb = prepared
    best, _ = _response(values, params)
    if params.threshold is None:
        noise = estimate_noise(values, get_backend(values), lsb)
        threshold = auto_threshold(
            noise, lsb, threshold_k=params.resolved_threshold_k, sigmas=params.sigmas_px
        )
    else:
        threshold = float(params.threshold)
    neighbourhood = ndimage.maximum_filter(best, size=3, mode="constant", cval=-np.inf)
    peaks = (best >= neighbourhood) & (best > threshold)
    _, count = ndimage.label(peaks, structure=np.ones((3, 3), dtype=bool))
    return int(count), threshold
