"""Bundled images, defocus, detector noise, through-focus series (see :mod:`scopefx.samples`)."""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import ConfigError

__all__ = [
    "BUNDLED_IMAGES",
    "acquire",
    "bundled_image",
    "defocus",
    "partial_defocus",
    "write_defocus_series",
]

#: Grey-level images shipped inside scikit-image, by name (the loader's name in skimage.data).
BUNDLED_IMAGES = (
    "immunohistochemistry",  # histology, the closest to sections
    "retina",
    "moon",
    "camera",
    "brick",
    "grass",
    "gravel",
    "coins",
    "hubble_deep_field",  # sparse content
    "cell",
)


@functools.lru_cache(maxsize=16)
def _load(name: str) -> np.ndarray:
    from skimage import color, data, util

    if name not in BUNDLED_IMAGES:
        raise ConfigError(f"unknown bundled image {name!r}; expected one of {BUNDLED_IMAGES}")
    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3])
    return util.img_as_float32(image)


def bundled_image(
    name: str = "immunohistochemistry", *, size: int | tuple[int, int] = 1024
) -> np.ndarray:
    """A bundled scikit-image image as float32 in [0, 1], mirror-tiled or cropped to ``size``.

    Parameters
    ----------
    name : str
        One of :data:`BUNDLED_IMAGES`.
    size : int or (rows, cols)
        Output shape. Larger than the image: mirror tiling; smaller: a centred crop.
    """
    image = _load(name)
    rows, cols = (size, size) if isinstance(size, int) else size
    pad_r, pad_c = max(0, rows - image.shape[0]), max(0, cols - image.shape[1])
    if pad_r or pad_c:
        image = np.pad(image, ((0, pad_r), (0, pad_c)), mode="symmetric")
    top, left = (image.shape[0] - rows) // 2, (image.shape[1] - cols) // 2
    return np.ascontiguousarray(image[top : top + rows, left : left + cols])


def _disk_kernel(radius: float) -> np.ndarray:
    """Pillbox of ``radius`` px, anti-aliased by 4x supersampling, normalised to sum 1."""
    r = math.ceil(radius + 0.5)
    sub = (np.arange(-r * 4, r * 4 + 4) + 0.5) / 4 - 0.5
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    inside = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    kernel = inside.reshape(2 * r + 1, 4, 2 * r + 1, 4).mean(axis=(1, 3))
    return kernel / kernel.sum()


def defocus(
    image: np.ndarray,
    amount: float,
    *,
    psf: Literal["gaussian", "disk"] = "gaussian",
    blur_per_unit: float = 1.0,
) -> np.ndarray:
    """Blur ``image`` as a defocus of ``amount`` (any sign) would, with mirror boundaries."""
    from scipy import ndimage, signal

    width = blur_per_unit * abs(amount)
    if width <= 0:
        return image.astype(np.float32, copy=True)
    if psf == "gaussian":
        return ndimage.gaussian_filter(image, width, mode="reflect").astype(np.float32)
    if psf == "disk":
        if width < 0.5:
            return image.astype(np.float32, copy=True)
        kernel = _disk_kernel(width)
        pad = kernel.shape[0] // 2
        padded = np.pad(image, pad, mode="symmetric")
        return signal.fftconvolve(padded, kernel, mode="valid").astype(np.float32)
    raise ConfigError(f"psf must be 'gaussian' or 'disk', got {psf!r}")


def partial_defocus(
    image: np.ndarray,
    amount: float,
    *,
    fraction: float = 0.5,
    psf: Literal["gaussian", "disk"] = "gaussian",
) -> np.ndarray:
    """Defocus only the right ``fraction`` of the columns (a tilted or wrinkled section), with a
    smooth 32-px transition."""
    blurred = defocus(image, amount, psf=psf)
    cols = np.arange(image.shape[1])
    edge = image.shape[1] * (1 - fraction)
    weight = np.clip((cols - edge) / 32 + 0.5, 0, 1).astype(np.float32)
    return image * (1 - weight) + blurred * weight


def acquire(
    image: np.ndarray,
    *,
    photons: float | None = 200.0,
    read_noise: float = 2.0,
    dtype: type = np.uint8,
    seed: int | None = 0,
) -> np.ndarray:
    """Simulate a detector: shot noise, read noise, quantisation.

    Parameters
    ----------
    image : float array in [0, 1]
    photons : float or None
        Expected photon count at full scale (shot noise); ``None`` disables shot noise.
    read_noise : float
        Standard deviation of Gaussian read noise, in output grey levels.
    dtype : numpy integer type
        ``numpy.uint8`` or ``numpy.uint16``.
    seed : int or None
        Random seed.
    """
    rng = np.random.default_rng(seed)
    levels = float(np.iinfo(dtype).max)
    signal = np.clip(image.astype(np.float64), 0, 1)
    if photons is not None:
        signal = rng.poisson(signal * photons) / photons
    grey = signal * levels + rng.normal(0.0, read_noise, size=image.shape)
    return np.clip(np.rint(grey), 0, levels).astype(dtype)


def write_defocus_series(
    folder: str | Path,
    defocus_values: Sequence[float] | np.ndarray,
    *,
    image: str = "immunohistochemistry",
    size: int = 512,
    psf: Literal["gaussian", "disk"] = "gaussian",
    blur_per_unit: float = 1.0,
    photons: float | None = 200.0,
    read_noise: float = 2.0,
    seed: int = 0,
) -> Path:
    """Write a through-focus (or acquisition-run) series as 8-bit TIFFs plus ``defocus.csv``.

    Files are named ``section_0000.tif``, ... in the order of ``defocus_values``; the CSV has
    columns ``path`` (file name, relative to ``folder``) and ``defocus``. Returns the CSV path.
    """
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sharp = bundled_image(image, size=size)
    csv_path = folder / "defocus.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "defocus"])
        for i, value in enumerate(defocus_values):
            blurred = defocus(sharp, value, psf=psf, blur_per_unit=blur_per_unit)
            pixels = acquire(blurred, photons=photons, read_noise=read_noise, seed=seed + i)
            name = f"section_{i:04d}.tif"
            tifffile.imwrite(folder / name, pixels)
            writer.writerow([name, value])
    return csv_path
