"""Input checks, saturation/normalisation, downsampling and the robust noise estimate.

Shared by the fast kernel and the float64 reference, on NumPy and CuPy alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._backend import Backend
from ..errors import ConfigError, InvalidImageError
from ..io import SAMPLES_LAST

__all__ = [
    "auto_threshold",
    "band_gains",
    "block_downsample",
    "check_image",
    "normalize",
    "to_grey",
]

#: Weights of R, G, B in the luma a colour image is scored on (ITU-R BT.709, the weights of
#: ``skimage.color.rgb2gray``).
LUMA_WEIGHTS = (0.2125, 0.7154, 0.0721)

#: 1 / Phi^-1(3/4): turns a median absolute deviation into a Gaussian standard deviation.
MAD_TO_SIGMA = 1.482602218505602
#: L2 norm of the Immerkaer mask (1, -2, 1) x (1, -2, 1): sqrt(36).
_IMMERKAER_NORM = 6.0


def check_image(image: Any, *, min_side: int) -> None:
    """Raise :class:`InvalidImageError` (with a status) unless ``image`` is a scorable 2-D array."""
    dtype = image.dtype
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        raise InvalidImageError(
            f"image has shape {tuple(image.shape)}: an RGB(A) colour image; focus scoring needs "
            "one grey channel (convert it, e.g. skimage.color.rgb2gray, or pick a channel)",
            status="rgb",
        )
    if image.ndim != 2:
        raise InvalidImageError(
            f"image must be 2-D (rows, columns), got {image.ndim}-D "
            f"with shape {tuple(image.shape)}",
            status="ndim",
        )
    numeric = np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)
    if not numeric or dtype == np.bool_:
        raise InvalidImageError(
            f"image dtype must be an integer or floating type, got {dtype}", status="dtype"
        )
    if min(image.shape) < min_side:
        raise InvalidImageError(
            f"image of shape {tuple(image.shape)} is too small for the scale space: each side "
            f"must be at least {min_side} px (lower min_sigma_px or score a larger image)",
            status="too_small",
        )


def to_grey(image: Any, channel: int | None, backend: Backend) -> tuple[Any, str]:
    """One grey plane of an image, and how it was made.

    A 2-D image is returned as is (``"grey"``). An (H, W, 3) or (H, W, 4) colour image gives
    its channel ``channel`` (``"channel N"``) or, for ``None``, its BT.709 luma
    (``"luma709"``): ``0.2125 R + 0.7154 G + 0.0721 B``, rounded back to uint8/uint16 for
    such input (so the quantisation floor still applies), float32 otherwise. Alpha is not
    part of the grey plane (:func:`~scopefx.focus.focus_score` leaves transparent pixels out).
    An (H, W, 2) image (grey + alpha, or two channels) gives its channel ``channel``, the
    first for ``None`` (``"channel N"``). Anything else is returned unchanged for
    :func:`check_image` to judge.

    Raises
    ------
    ConfigError
        ``channel`` is not one of the image's channels (a grey image has channel 0 only).
    """
    if image.ndim != 3 or image.shape[-1] not in SAMPLES_LAST:
        if channel not in (None, 0) and image.ndim == 2:  # was ignored: scored as grey, "ok"
            raise ConfigError(
                f"channel {channel!r}: a grey image (shape {tuple(image.shape)}) has one "
                "channel, 0; leave channel unset for grey images"
            )
        return image, "grey"
    if image.shape[-1] == 2:
        if channel is not None and not 0 <= channel < 2:
            raise ConfigError(
                f"channel must be None (the first) or 0 or 1 for a two-channel (grey + alpha) "
                f"image of shape {tuple(image.shape)}, got {channel!r}"
            )
        channel = channel or 0
        return image[..., channel], f"channel {channel}"
    if channel is not None:
        if not 0 <= channel < 3:
            raise ConfigError(
                f"channel must be None (luma) or 0, 1 or 2 (red, green, blue) for a colour "
                f"image of shape {tuple(image.shape)}, got {channel!r}"
            )
        return image[..., channel], f"channel {channel}"
    xp = backend.xp
    rgb = image[..., :3]
    luma = xp.zeros(rgb.shape[:2], dtype=xp.float32)
    for c, weight in enumerate(LUMA_WEIGHTS):
        luma += rgb[..., c].astype(xp.float32) * xp.float32(weight)
    if image.dtype in (np.uint8, np.uint16):
        top = float(np.iinfo(image.dtype).max)
        luma = xp.clip(xp.rint(luma), 0, top).astype(image.dtype)
    return luma, "luma709"


def block_downsample(image: Any, factor: int, backend: Backend) -> Any:
    """Block-mean downsample by an integer ``factor`` (the remainder rows/columns are dropped)."""
    if factor <= 1:
        return image
    xp = backend.xp
    h, w = (s // factor for s in image.shape)
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor)
    return blocks.mean(axis=(1, 3), dtype=xp.float32)


#: A sample of this many pixels (at most) tells whether a floating-point or wide-integer image
#: holds few distinct values (it is quantised) and how far apart.
_QUANTUM_SAMPLE = 1 << 18
#: Fewer distinct values than this, and the image is not a grey image (a mask, labels): its
#: step says nothing of its noise, and the dtype's grey level is kept.
_MIN_LEVELS = 16
#: More distinct values than this in the sample, and a floating-point image is continuous.
_MAX_LEVELS = 4096


def _quantum(data: Any, hist: Any, integer: bool, backend: Backend) -> float:
    """One grey level of the input, in its units: the step between the values it holds.

    The same picture stored as uint8, as uint16 scaled by 257, or as float divided by 255
    has one grey level of 1, 257 and 1/255: the quantisation floor of the threshold must be
    the same for the three (it was 1, 1 and 0: about 4 % more features from the last two;
    review 42, F7). Integers: the greatest common step of the values present (a 12-bit
    camera writing into the top bits of uint16 steps by 16); floats: the smallest step, when
    every other is a whole number of it. Where no such step shows (continuous data, fewer
    than 16 levels), the dtype's: 1 for integers, 0 for floats."""
    default = 1.0 if integer else 0.0
    if hist is not None:  # uint8 / uint16: the occupied levels of the histogram
        levels = backend.to_numpy(backend.xp.flatnonzero(hist))
        if len(levels) < _MIN_LEVELS:
            return default
        return float(np.gcd.reduce(np.diff(levels)))
    flat = data.ravel()
    values = np.unique(backend.to_numpy(flat[:: max(1, flat.size // _QUANTUM_SAMPLE)]))
    if not _MIN_LEVELS <= len(values) <= (_MAX_LEVELS if not integer else len(values)):
        return default
    gaps = np.diff(values)
    if integer:
        return float(np.gcd.reduce(gaps.astype(np.int64)))
    step = float(gaps.min())
    whole = np.abs(gaps / step - np.rint(gaps / step)) < 0.01  # float rounding allowed
    return step if step > 0 and bool(whole.all()) else default


def _hist_quantiles(
    image: Any, fractions: tuple[float, float], backend: Backend
) -> tuple[list[float], Any]:
    """Quantiles of a uint8/uint16 image from its histogram, equal to ``numpy.quantile``'s
    default ("linear") method, at a fraction of its cost; and the histogram."""
    xp = backend.xp
    hist = xp.bincount(image.ravel())
    cdf = xp.cumsum(hist)
    n = image.size
    out = []
    for q in fractions:
        h = q * (n - 1)
        j = math.floor(h)
        lo_hi = xp.searchsorted(cdf, xp.asarray([j, min(j + 1, n - 1)]), side="right")
        v0, v1 = (float(v) for v in backend.to_numpy(lo_hi))
        out.append(v0 + (h - j) * (v1 - v0))
    return out, hist


def normalize(
    image: Any, saturation_pct: float, backend: Backend, valid: np.ndarray | None = None
) -> tuple[Any, float] | None:
    """Saturate ``saturation_pct`` percent at both tails and map to [0, 1] in float32.

    ``valid`` (a bool mask of the image's shape, optional): the tails are those of these
    pixels only (the opaque pixels of an RGBA image; the others are filled copies of them).

    Returns ``(normalised, lsb)``, where ``lsb`` is one input grey level in normalised units
    (see :func:`_quantum`; 0 for continuous floating-point input), or ``None`` for a constant
    image.

    Raises
    ------
    InvalidImageError
        The image holds infinity, or no number at all (status ``"invalid_values"``; NaN
        pixels among numbers are masked before, by the caller).
    """
    xp = backend.xp
    fractions = (saturation_pct / 100.0, 1.0 - saturation_pct / 100.0)
    lut = image.dtype in (np.uint8, np.uint16)
    integer = np.issubdtype(image.dtype, np.integer)
    data = image if valid is None or bool(valid.all()) else image[backend.asarray(valid)]
    hist = None
    if lut:
        (lo, hi), hist = _hist_quantiles(data, fractions, backend)
    else:
        if not bool(xp.isfinite(image).all()):  # on the input, before a cast can overflow
            raise InvalidImageError(
                "image holds infinite values, or nothing but NaN; replace the infinities "
                "before scoring (NaN pixels among numbers are no data: scored around)",
                status="invalid_values",
            )
        if image.dtype.kind == "f" and image.dtype.itemsize > 4:
            top = float(xp.abs(image).max())
            if top > float(np.finfo(np.float32).max):
                raise InvalidImageError(
                    f"image values reach {top:.3g}, beyond float32's range (3.4e38) in which "
                    "it is scored; rescale the image before scoring",
                    status="invalid_values",
                )
        # float32 holds integers exactly up to 2^24 only: wider integers and float64 are
        # shifted and scaled in float64 (a uint32 frame with an offset of 3e9 lost its noise
        # to float32 rounding: noise 0, 2.8 times the features)
        wide = image.dtype.itemsize > 4 or (integer and image.dtype.itemsize == 4)
        if integer and image.dtype.itemsize > 4:
            # float64 holds integers exactly up to 2^53 only: 64-bit integers are shifted to
            # their minimum first, in uint64 (an int64 less its minimum may overflow int64 but
            # fits uint64, and modulo 2^64 the difference is exact); cast first, an offset of
            # 2^62 cost every bit of the noise: 0 features
            low = image.min().astype(xp.uint64)
            image = image.astype(xp.uint64) - low
            data = data.astype(xp.uint64) - low
        work = xp.float64 if wide else xp.float32
        image = image.astype(work, copy=False)
        data = data.astype(work, copy=False)
        lo, hi = (float(v) for v in backend.to_numpy(xp.quantile(data, xp.asarray(fractions))))
    if hi <= lo:  # more than saturation_pct of the pixels share the extreme values
        lo, hi = float(image.min()), float(image.max())
        if hi <= lo:
            return None
    lsb = _quantum(data, hist, integer, backend) / (hi - lo)
    if lut:
        levels = 256 if image.dtype == np.uint8 else 65536
        table = xp.clip((xp.arange(levels, dtype=xp.float32) - lo) / (hi - lo), 0.0, 1.0)
        # take, not fancy indexing: half the time (0.7 against 1.3 ms per 1024^2 uint8)
        return xp.take(table.astype(xp.float32, copy=False), image), lsb
    scaled = image - image.dtype.type(lo)
    inverse = 1.0 / (hi - lo)
    if inverse <= float(np.finfo(image.dtype).max):
        scaled *= image.dtype.type(inverse)
    else:  # a range of subnormal numbers, whose inverse overflows (0 x inf gave NaN)
        scaled /= image.dtype.type(hi - lo)
    xp.clip(scaled, 0.0, 1.0, out=scaled)
    return scaled.astype(xp.float32, copy=False), lsb


def band_gains(sigmas: tuple[float, ...]) -> np.ndarray:
    """White-noise gain (L2 norm) of each scale-normalised DoG band ``t_i (g_{i+1} - g_i)``.

    Closed form for continuous 2-D Gaussians: ``||g_a||^2 = 1 / (4 pi a^2)`` and
    ``<g_a, g_b> = 1 / (2 pi (a^2 + b^2))``. It depends on the scales only, never on image size.
    """
    s = np.asarray(sigmas, dtype=np.float64)
    a, b = s[:-1], s[1:]
    sq = (1 / a**2 + 1 / b**2 - 4 / (a**2 + b**2)) / (4 * np.pi)
    return a * np.sqrt(np.maximum(sq, 0.0))


def auto_threshold(
    noise_sigma: float, lsb: float, *, threshold_k: float, sigmas: tuple[float, ...]
) -> float:
    """``threshold_k * max(noise, quantisation noise) * largest band gain``, floored above
    floating-point round-off."""
    floor_sigma = max(noise_sigma, lsb / math.sqrt(12.0))
    return max(threshold_k * floor_sigma * float(band_gains(sigmas).max()), 1e-6)
