"""``focus_score``: the MHFD focus score of one image, and its result."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .._backend import Backend, get_backend
from ..errors import ConfigError, InvalidImageError
from ._noise import (
    NoiseModel,
    abs_residuals,
    estimate_noise_model,
    flat_cells,
    flat_pixels,
    local_means,
)
from ._normalize import (
    auto_threshold,
    band_gains,
    block_downsample,
    check_image,
    normalize,
    to_grey,
)
from ._params import FocusParams
from ._scalespace import band_energy_ratio, count_peaks, response_max

#: A count is noise-limited when fewer than this share of its features clear their threshold by
#: ``NOISE_MARGIN`` noise standard deviations (features of real structure mostly stand well
#: above it; a noise peak that reached the threshold almost never reaches that far, and a
#: feature within that margin is one the noise could as well have made or unmade).
NOISE_LIMITED_RATIO = 0.1
#: The margin, in noise standard deviations (of the DoG response, as the threshold's ``k``):
#: features count as clear above ``threshold * (1 + NOISE_MARGIN / k)``. At ``em``'s k = 4 that
#: is twice the threshold. A fixed ``threshold`` has no noise unit: twice it.
NOISE_MARGIN = 4.0

__all__ = ["FocusResult", "focus_map_from_positions", "focus_response", "focus_score"]


@dataclass(frozen=True)
class FocusResult:
    """The focus score of one image and what it was computed from.

    Attributes
    ----------
    features : int
        Number of detected features. ``log(features)`` falls linearly with ``|defocus|``.
    score : float
        The focus score: the sum over features of ``(t_1 / t_i)^scale_weight`` (``t_i`` the
        scale of the feature's band; see :attr:`FocusParams.scale_weight`). Equal to
        ``features`` when the weight is 0 (``em``, the default).
    threshold : float
        Response threshold used, in normalised intensity units (see :class:`FocusParams`).
        With ``noise_model="signal"`` each feature has its own threshold; this is the median
        over the counted features (the smallest one when none is counted).
    noise_sigma : float
        Robust global noise estimate of the normalised image (``nan`` for a constant image).
    focus_map : (rows, cols) float32 ndarray
        Score density per cell of ``cell_px`` x ``cell_px`` pixels, in (weighted) features per
        megapixel (partial cells at the right and bottom edges are scaled by their area).
    cell_px : int
        Side of a focus-map cell in pixels of the scored image.
    positions : (features, 2) int32 ndarray
        Row, column of each feature in the scored image.
    sigmas_px : (features,) float32 ndarray
        Gaussian scale ``t_i`` of the band in which each feature peaked.
    shape : tuple of int
        Shape of the scored image (after ``target_px`` downsampling).
    downsample : int
        Block factor applied before scoring (1: none).
    params : FocusParams
        Parameters used.
    seconds : float
        Wall time of the scoring.
    features_clear : int
        Features that clear their threshold by ``NOISE_MARGIN`` (4) noise standard deviations
        (``threshold * (1 + 4 / threshold_k)``; twice a fixed ``threshold``).
    noise_limited : bool
        ``features_clear < NOISE_LIMITED_RATIO * features``: most of the count sits within the
        noise's reach of the threshold, so it says more about the noise than about focus.
    colour : str
        How the grey plane was made: ``"grey"`` (input was grey), ``"luma709"`` or
        ``"channel N"`` (see :attr:`FocusParams.channel`).
    noise_model : NoiseModel or None
        The noise level function used (``None`` for a constant image).
    block_coded : bool
        The image carries an 8-pixel block grid (JPEG, JPEG-in-TIFF, SVS): its noise was
        measured on block means of ``noise_scale_px`` pixels, where block coding leaves it,
        not at single pixels, where it removes it.
    noise_scale_px : int
        Block size at which the noise was measured (1: single pixels, white noise).
    band_ratio : float
        The image's noise-corrected band energy ratio ``R`` (see
        :func:`~scopefx.focus._scalespace.band_energy_ratio`); every feature's weight was
        multiplied by ``R^band_ratio`` (``nan`` when ``band_ratio`` is 0: not computed).
    opaque_px : int or None
        Pixels of the scored image that hold data, when an RGBA image has transparent pixels
        (alpha 0: the padding of a slide scanner's export), a float image NaN pixels (the
        fill of a registered frame), or any image flat blocks without noise (an aligned
        section's zero fill, see ``docs/focus.md``); the density is per megapixel of them,
        and focus-map cells with none are NaN. ``None``: every pixel.
    """

    features: int
    score: float
    threshold: float
    noise_sigma: float
    focus_map: np.ndarray = field(repr=False)
    cell_px: int
    positions: np.ndarray = field(repr=False)
    sigmas_px: np.ndarray = field(repr=False)
    shape: tuple[int, int]
    downsample: int
    params: FocusParams = field(repr=False)
    seconds: float
    features_clear: int = 0
    noise_limited: bool = False
    colour: str = "grey"
    noise_model: NoiseModel | None = field(default=None, repr=False)
    block_coded: bool = False
    noise_scale_px: int = 1
    opaque_px: int | None = None
    band_ratio: float = math.nan

    @property
    def density_per_mpx(self) -> float:
        """The score per megapixel of the scored image (features per megapixel when
        ``scale_weight`` is 0), of its opaque pixels when it has transparent ones."""
        area = self.shape[0] * self.shape[1] if self.opaque_px is None else self.opaque_px
        return self.score * 1e6 / area if area else math.nan

    def summary(self) -> dict[str, Any]:
        """Small JSON-able summary (no per-feature arrays)."""
        fmap = self.focus_map
        return {
            "features": self.features,
            "score": self.score,
            "threshold": self.threshold,
            "noise_sigma": self.noise_sigma,
            "density_per_mpx": self.density_per_mpx,
            "map_min": _nan_stat(np.nanmin, fmap),
            "map_median": _nan_stat(np.nanmedian, fmap),
            "map_max": _nan_stat(np.nanmax, fmap),
            "height": self.shape[0],
            "width": self.shape[1],
            "downsample": self.downsample,
            "seconds": self.seconds,
            "features_clear": self.features_clear,
            "noise_limited": self.noise_limited,
            "colour": self.colour,
            "modality": self.params.modality,
            "noise_model": None if self.noise_model is None else self.noise_model.to_dict(),
            "block_coded": self.block_coded,
            "noise_scale_px": self.noise_scale_px,
            "opaque_px": self.opaque_px,
            # None, not NaN, where it was not computed (band_ratio 0): plain JSON
            "band_ratio": None if math.isnan(self.band_ratio) else self.band_ratio,
        }


def _nan_stat(stat: Any, fmap: np.ndarray) -> float:
    """``stat`` over the focus map's cells that hold data (NaN when none does)."""
    return float(stat(fmap)) if fmap.size and not np.isnan(fmap).all() else math.nan


def focus_map_from_positions(
    positions: np.ndarray,
    shape: tuple[int, int],
    cell_px: int,
    weights: np.ndarray | None = None,
    opaque: np.ndarray | None = None,
) -> np.ndarray:
    """Feature density per ``cell_px`` cell (features per megapixel) from feature positions,
    each feature counting its ``weights`` entry (1 when ``None``); per pixel of ``opaque``
    (a boolean mask of ``shape``) when given, NaN in a cell with none."""
    h, w = shape
    rows, cols = math.ceil(h / cell_px), math.ceil(w / cell_px)
    cell = (positions[:, 0] // cell_px) * cols + positions[:, 1] // cell_px
    counts = np.bincount(cell, weights=weights, minlength=rows * cols).reshape(rows, cols)
    if opaque is not None:
        # opaque pixels per cell, summed in place: padded to whole cells, a thin image (4 x 2^26
        # px, within the pixel budget) asked for a 16 GiB mask at the default 256 px cells
        starts_x = np.arange(0, w, cell_px)
        area = np.empty((rows, cols))
        for i in range(rows):  # a band of cells at a time: one int32 line of working memory
            line = opaque[i * cell_px : (i + 1) * cell_px].sum(axis=0, dtype=np.int32)
            area[i] = np.add.reduceat(line, starts_x)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(area > 0, counts * 1e6 / area, np.nan).astype(np.float32)
    heights = np.minimum(cell_px, h - np.arange(rows) * cell_px)
    widths = np.minimum(cell_px, w - np.arange(cols) * cell_px)
    return (counts * 1e6 / np.outer(heights, widths)).astype(np.float32)


def _pixels(image: Any, params: FocusParams) -> tuple[Any, FocusParams]:
    """The image itself, or its pixels read from a path or ``store.zarr::array`` reference
    (a grey + alpha file as :func:`grey_alpha_as_rgba` gives it), and the parameters."""
    if isinstance(image, (str, os.PathLike)):
        from ..io import read_image, read_metadata

        pixels = read_image(image)
        try:
            meta = read_metadata(image)
        except Exception:  # metadata is optional: the pixels were read
            return pixels, params
        return as_read(pixels, meta.pages, meta.samples, params)
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise ConfigError(
            f"image must be an array (NumPy or CuPy) or the path of an image file, got "
            f"{type(image).__name__}"
        )
    return image, params


def as_read(
    pixels: Any, pages: int, samples: str | None, params: FocusParams
) -> tuple[Any, FocusParams]:
    """A file's pixels as they are scored: one page with its samples first (a planar RGB or
    grey + alpha TIFF, read as (S, H, W)) with its samples last, then a grey + alpha image as
    :func:`grey_alpha_as_rgba` gives it; a stack of pages is left as it is."""
    from ..io import SAMPLES_LAST

    if (
        pages == 1
        and np.ndim(pixels) == 3
        and pixels.shape[0] in SAMPLES_LAST
        and pixels.shape[-1] not in SAMPLES_LAST
    ):
        pixels = np.moveaxis(pixels, 0, -1)
    return grey_alpha_as_rgba(pixels, samples, params)


def grey_alpha_as_rgba(
    pixels: Any, samples: str | None, params: FocusParams
) -> tuple[Any, FocusParams]:
    """A grey + alpha image (``samples`` from the file's metadata says so; an (H, W, 2) array
    alone may be two channels) as RGBA with its grey in red, green and blue, and ``channel``
    0 scored: its transparent pixels are then left out as an RGBA image's are, and its record
    says ``channel 0`` as before. Anything else is returned as it is."""
    if samples != "grey+alpha" or np.ndim(pixels) != 3 or pixels.shape[-1] != 2:
        return pixels, params
    if params.channel not in (None, 0):
        return pixels, params  # its alpha (channel 1) asked for: scored as it is
    grey, alpha = pixels[..., :1], pixels[..., 1:]
    rgba = np.concatenate([grey, grey, grey, alpha], axis=-1)
    return rgba, dataclasses.replace(params, channel=0)


def _resolve(params: FocusParams | None, overrides: dict[str, Any]) -> FocusParams:
    return FocusParams.resolve(params, **overrides)


class _Prepared(NamedTuple):
    normalised: Any  # None for a constant image
    lsb: float
    factor: int
    colour: str
    shape: tuple[int, int]  # of the whole image at the scored resolution
    origin: tuple[int, int]  # of the scored part (the opaque pixels' box) in that grid
    opaque: np.ndarray | None  # of the scored part, where it has transparent pixels
    part: tuple[int, int] | None = None  # shape of the scored part; None: no transparency


def _prepare(image: Any, params: FocusParams, backend: Backend) -> _Prepared:
    """Grey conversion, check, move to the device, downsample and normalise.

    An RGBA image with transparent pixels (alpha 0), or a float image with NaN pixels, is
    scored on the box of the pixels that hold data, the others inside it filled from their
    nearest data pixel (so the edge of the padding is no feature) and the mask returned, to
    leave out what lies on them.
    """
    array = backend.asarray(image)
    alpha = _transparent(array, backend)
    grey, colour = to_grey(array, params.channel, backend)
    check_image(grey, min_side=params.min_image_px)
    extent = [int(v) for v in grey.shape]  # of what is scored: the opaque box, if any
    if alpha is not None:
        if not alpha.any():
            raise InvalidImageError(
                f"every pixel of the {array.shape[1]} x {array.shape[0]} px RGBA image is "
                "transparent (alpha 0): there is nothing to score",
                status="transparent",
            )
        rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
        extent = [int(rows[-1] - rows[0]) + 1, int(cols[-1] - cols[0]) + 1]
    factor = 1
    if params.target_px is not None:  # from the scored part: padding changes no resolution
        factor = max(1, math.ceil(max(extent) / params.target_px))
    shape = (int(grey.shape[0]) // factor, int(grey.shape[1]) // factor)
    origin, opaque = (0, 0), None
    if alpha is not None:
        y0 = int(rows[0]) // factor * factor  # on the block grid of the downsampling
        x0 = int(cols[0]) // factor * factor
        box = np.s_[y0 : int(rows[-1]) + 1, x0 : int(cols[-1]) + 1]
        grey, alpha = grey[box], alpha[box]
        check_image(grey, min_side=params.min_image_px)
        origin = (y0 // factor, x0 // factor)
        if not alpha.all():
            from scipy import ndimage

            near = ndimage.distance_transform_edt(~alpha, return_distances=False,
                                                  return_indices=True)  # fmt: skip
            grey = grey[backend.asarray(near[0]), backend.asarray(near[1])]
            opaque = alpha
    if factor > 1:
        before = tuple(int(v) for v in grey.shape)
        grey = block_downsample(grey, factor, backend)
        try:
            check_image(grey, min_side=params.min_image_px)
        except InvalidImageError as exc:  # the image was large enough: its downsampling not
            raise InvalidImageError(
                f"the {before[1]} x {before[0]} px image, downsampled {factor}x for target_px="
                f"{params.target_px} (--target-px) to {int(grey.shape[1])} x "
                f"{int(grey.shape[0])} px, is too small for the scale space: each side must "
                f"be at least {params.min_image_px} px; raise target_px or score it at full "
                "size",
                status=exc.status,
            ) from None
        if opaque is not None:
            h, w = (int(v) for v in grey.shape)
            blocks = opaque[: h * factor, : w * factor].reshape(h, factor, w, factor)
            opaque = blocks.mean(axis=(1, 3)) >= 0.5
    part = None if alpha is None else (int(grey.shape[0]), int(grey.shape[1]))
    normalised = normalize(grey, params.saturation_pct, backend, valid=opaque)
    if normalised is None:
        return _Prepared(None, 0.0, factor, colour, shape, origin, opaque, part)
    return _Prepared(normalised[0], normalised[1], factor, colour, shape, origin, opaque, part)


def _transparent(array: Any, backend: Backend) -> np.ndarray | None:
    """Where an image holds data, as a NumPy mask: an (H, W, 4) RGBA image's opaque pixels
    (alpha > 0); a floating-point image's pixels that are not NaN (the no-data fill of a
    registered or deconvolved frame), when some are. None when every pixel holds data, and
    for a float image with no number at all or with an infinity (refused when normalised:
    infinity is an overflow, not missing data)."""
    if array.ndim == 3 and array.shape[-1] == 4:
        opaque = backend.to_numpy(array[..., 3] > 0)
        return None if opaque.all() else opaque
    if array.dtype.kind != "f":
        return None
    xp = backend.xp
    missing = xp.isnan(array)
    if missing.ndim == 3:  # colour: a pixel is data where every channel is
        missing = missing.any(axis=-1)
    if not bool(missing.any()) or bool(missing.all()) or bool(xp.isinf(array).any()):
        return None
    return backend.to_numpy(~missing)


def focus_response(
    image: Any, *, params: FocusParams | None = None, device: str | None = None, **overrides: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel maximum of the DoG bands and the band index where it is reached.

    Same inputs as :func:`focus_score`. Useful to look at what the score counts.

    Returns
    -------
    response : (H, W) float32 ndarray
    band : (H, W) uint8 ndarray
        0-based band index ``i``; its scale is ``params.sigmas_px[i]``.
    """
    image, params = _pixels(image, _resolve(params, overrides))
    backend = get_backend(image, device=device)
    prep = _prepare(image, params, backend)
    response, band = np.zeros(prep.shape, np.float32), np.zeros(prep.shape, np.uint8)
    if prep.normalised is None:
        return response, band
    best, index = response_max(
        prep.normalised,
        params.sigmas_px,
        polarity=params.resolved_polarity,
        mode=params.mode,
        backend=backend,
    )
    best, index = backend.to_numpy(best), backend.to_numpy(index)
    if prep.opaque is not None:
        best = np.where(prep.opaque, best, np.float32(0))
    y0, x0 = prep.origin  # the opaque pixels' box in the whole image (transparent: 0)
    h, w = best.shape
    response[y0 : y0 + h, x0 : x0 + w] = best
    band[y0 : y0 + h, x0 : x0 + w] = index
    return response, band


def focus_score(
    image: Any, *, params: FocusParams | None = None, device: str | None = None, **overrides: Any
) -> FocusResult:
    """Score the focus of one image by multi-scale histologic feature detection (MHFD).

    Parameters
    ----------
    image : (H, W) or (H, W, 3|4) array, or path
        Grey image: uint8, uint16, or floating point (NumPy or CuPy), or the path (or
        ``store.zarr::array`` reference) of an image file to read. A CuPy array is scored on
        its GPU. A colour image is scored on its luma or on ``channel`` (see
        :class:`FocusParams`); ``FocusResult.colour`` records which. The transparent pixels
        (alpha 0) of an RGBA image, and the NaN pixels of a float image, are no data: the
        box of the pixels that hold data is scored, the others inside it filled from the
        nearest data pixel and no feature counted there; the density is per megapixel of
        data pixels (``FocusResult.opaque_px``). Infinity is refused (an overflow).
    params : FocusParams, optional
        Parameters; defaults to ``FocusParams()``.
    device : {None, "cpu", "gpu", "cuda:N"}, optional
        Where to compute; ``None`` follows the array.
    **overrides
        Any :class:`FocusParams` field (``mode="fast"``, ``n_scales=30``, ...), applied on top
        of ``params``.

    Returns
    -------
    FocusResult
        ``.score`` is the score (``.features`` the plain count); ``.density_per_mpx`` the
        score per megapixel. A constant image scores 0.

    Raises
    ------
    InvalidImageError
        Not 2-D nor colour (``ndim``), smaller than the scales need
        (``too_small``), NaN or infinity (``invalid_values``), non-numeric (``dtype``).
    ConfigError
        A parameter is out of range.

    Notes
    -----
    1. Saturate ``saturation_pct`` % of the darkest and brightest pixels and map to [0, 1].
    2. Gaussian scale space at ``t_1..t_{n+1}`` (sigma in pixels), by analytic transfer
       functions in the cosine (mirror-symmetric real FFT) domain, in float32.
    3. ``DoG_i = t_i (L(t_{i+1}) - L(t_i))``; per pixel the maximum over ``i``.
    4. 3x3 non-maximum suppression (a plateau counts once) and the threshold; what remains
       are the features, each adding ``(t_1 / t_i)^scale_weight`` to the score (1 with the
       default ``em``: the score is the count). The automatic threshold of a feature
       peaking in band ``i`` at a place of local mean intensity ``mu`` (a square of
       half-side ``t_i``) is
       ``k * gain * sigma(mu)``: the noise level function ``sigma`` (one level for
       ``noise_model="global"``) carried through the largest DoG white-noise gain.

    References
    ----------
    The MHFD focus measure for serial-section electron microscopy: the count of scale-space
    features, whose logarithm falls linearly with absolute defocus.

    Examples
    --------
    >>> import numpy as np, scopefx
    >>> from skimage import data
    >>> result = scopefx.focus_score(data.camera())
    >>> result.features > 100
    True
    """
    start = time.perf_counter()
    image, params = _pixels(image, _resolve(params, overrides))
    backend = get_backend(image, device=device)
    prep = _prepare(image, params, backend)
    normalised, lsb, factor, colour = prep.normalised, prep.lsb, prep.factor, prep.colour
    whole = _whole_opaque(prep)
    opaque_px = None if whole is None else int(whole.sum())
    if normalised is None:
        shape = prep.shape
        empty = np.zeros((0, 2), np.int32)
        return FocusResult(
            features=0,
            score=0.0,
            threshold=math.nan,
            noise_sigma=math.nan,
            focus_map=focus_map_from_positions(empty, shape, params.cell_px, opaque=whole),
            cell_px=params.cell_px,
            positions=empty,
            sigmas_px=np.zeros(0, np.float32),
            shape=shape,
            downsample=factor,
            params=params,
            seconds=time.perf_counter() - start,
            colour=colour,
            opaque_px=opaque_px,
        )
    sigmas = params.sigmas_px
    kind = "global" if params.threshold is not None else params.resolved_noise_model
    residuals = abs_residuals(normalised, backend)  # once, for both
    flat = flat_cells(normalised, backend, valid=prep.opaque, residuals=residuals)
    model, means = estimate_noise_model(normalised, lsb, kind=kind, backend=backend,
                                        valid=prep.opaque, flat=flat,
                                        residuals=residuals)  # fmt: skip
    if flat is not None:  # padding without noise holds no data: the density is per the rest
        flat_px = flat_pixels(flat, normalised.shape, backend)
        whole, opaque_px = _without_flat(prep, flat_px, whole)
    del residuals, flat  # a quarter plane, not to be held through the scale space
    spectrum: list[Any] | None = [] if params.resolved_band_ratio > 0 else None
    best, band = response_max(normalised, sigmas, polarity=params.resolved_polarity,
                              mode=params.mode, backend=backend,
                              spectrum_out=spectrum)  # fmt: skip
    ratio = math.nan
    if spectrum:  # before the peaks: the spectrum is not held through them
        # the noise variance averaged over the image: the model at each local mean, computed
        # where the means are (no copy of them off the GPU)
        xp = backend.xp
        mu = means if means is not None else 0.0
        variance = float(xp.mean(model.variance_at(mu, xp), dtype=xp.float64))
        ratio = band_energy_ratio(spectrum.pop(), sigmas, variance, backend)
    if params.threshold is not None:
        thresholds: float | np.ndarray = float(params.threshold)
        candidates = count_peaks(best, float(params.threshold), backend)
    elif model.kind == "global":
        thresholds = auto_threshold(
            model.sigma, lsb, threshold_k=params.resolved_threshold_k, sigmas=sigmas
        )
        candidates = count_peaks(best, thresholds, backend)
    else:
        scale = params.resolved_threshold_k * float(band_gains(sigmas).max())
        lowest = max(scale * model.min_sigma, 1e-6)
        candidates = count_peaks(best, lowest, backend)
    rows, cols = backend.asarray(candidates[:, 0]), backend.asarray(candidates[:, 1])
    candidate_bands = backend.to_numpy(band[rows, cols])
    responses = backend.to_numpy(best[rows, cols]).astype(np.float64)
    if model.kind == "signal" and params.threshold is None:
        mu = local_means(means, candidates, np.asarray(sigmas)[candidate_bands], backend)
        thresholds = np.maximum(scale * model.sigma_at(mu), 1e-6)
    keep = responses > thresholds
    if prep.opaque is not None:  # nothing counts on transparent pixels (filled, not data)
        keep &= prep.opaque[candidates[:, 0], candidates[:, 1]]
    positions_np = candidates[keep].astype(np.int32) + np.array(prep.origin, np.int32)
    features = int(positions_np.shape[0])
    feature_sigmas = np.asarray(sigmas, np.float64)[candidate_bands[keep]]
    weights = (sigmas[0] / feature_sigmas) ** params.resolved_scale_weight
    if not math.isnan(ratio):
        weights = weights * ratio**params.resolved_band_ratio
    score = float(weights.sum())
    margin = 2.0 if params.threshold is not None else 1 + NOISE_MARGIN / params.resolved_threshold_k
    features_clear = int(np.count_nonzero(keep & (responses > margin * np.asarray(thresholds))))
    if isinstance(thresholds, np.ndarray):
        kept = thresholds[keep]
        threshold = float(np.median(kept)) if kept.size else lowest
    else:
        threshold = float(thresholds)
    shape = prep.shape
    return FocusResult(
        features=features,
        score=score,
        threshold=threshold,
        noise_sigma=model.sigma,
        focus_map=focus_map_from_positions(positions_np, shape, params.cell_px, weights, whole),
        cell_px=params.cell_px,
        positions=positions_np,
        sigmas_px=feature_sigmas.astype(np.float32),
        shape=shape,
        downsample=factor,
        params=params,
        seconds=time.perf_counter() - start,
        features_clear=features_clear,
        noise_limited=features > 0 and features_clear < NOISE_LIMITED_RATIO * features,
        colour=colour,
        noise_model=model,
        block_coded=model.block_coded,
        noise_scale_px=model.scale_px,
        opaque_px=opaque_px,
        band_ratio=ratio,
    )


#: Less than this share of data pixels outside flat blocks: the flat blocks are not padding.
_MIN_DATA_SHARE = 0.05


def _without_flat(
    prep: _Prepared, flat: np.ndarray, whole: np.ndarray | None
) -> tuple[np.ndarray | None, int | None]:
    """The whole image's data mask (at the scored resolution) without the flat blocks of the
    scored part (``flat``, its shape), and its pixel count; ``whole`` (the mask without them)
    and its count where too little would be left."""
    data = _placed(prep, ~flat if prep.opaque is None else prep.opaque & ~flat)
    count = int(data.sum())
    if count < _MIN_DATA_SHARE * data.size:
        return whole, None if whole is None else int(whole.sum())
    return data, count


def _whole_opaque(prep: _Prepared) -> np.ndarray | None:
    """Where the whole image (at the scored resolution) holds data; None: everywhere."""
    if prep.part is None:
        return None
    return _placed(prep, np.ones(prep.part, bool) if prep.opaque is None else prep.opaque)


def _placed(prep: _Prepared, data: np.ndarray) -> np.ndarray:
    """``data`` (a mask of the scored part) placed in the whole image at the scored
    resolution; False outside it."""
    whole = np.zeros(prep.shape, bool)
    y0, x0 = prep.origin
    h, w = min(data.shape[0], prep.shape[0] - y0), min(data.shape[1], prep.shape[1] - x0)
    whole[y0 : y0 + h, x0 : x0 + w] = data[:h, :w]
    return whole
