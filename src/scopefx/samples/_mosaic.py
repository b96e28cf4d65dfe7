"""Synthetic mosaics cut from a bundled image, with their ground truth (see :mod:`scopefx.samples`).

Steps, each documented and seeded:

1. Ground truth: :func:`scopefx.samples.bundled_image` mirror-tiled to the mosaic's size,
   optionally smoothed (``smooth_sigma_px``, so sub-pixel resampling is well defined). 3D:
   ``depth`` planes, plane ``z`` shifted by ``(1.5 z, -z)`` px and blurred by ``0.3 z`` px.
   Channels: channel 0 the image, channel 1 its negative, channel 2 its square, ...
2. Tiles on a ``rows x cols`` grid with ``overlap`` between neighbours; each true position is
   jittered uniformly by ``+-jitter_px`` (rounded to whole pixels unless ``subpixel``) and
   rotated by up to ``+-rotation_deg``. Tiles are sampled from the truth with a cubic spline
   (``scipy.ndimage.affine_transform``) unless placed at whole pixels, where they are copied.
3. Optional vignetting ``1 - vignetting * r^2`` (``r`` = 1 at the tile's corners) and
   detector noise (:func:`scopefx.samples.acquire`), then quantisation to ``dtype``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ._images import acquire, bundled_image

__all__ = ["SyntheticMosaic", "make_mosaic", "write_mosaic"]


@dataclass(frozen=True, eq=False)
class SyntheticMosaic:
    """Tiles, their true transforms, and the image they were cut from.

    ``affines[i]`` maps tile ``i``'s index to ``truth``'s index (index order, homogeneous).
    ``truth`` has the tiles' dtype; ``truth_float`` is the same before quantisation.
    """

    truth: np.ndarray = field(repr=False)
    truth_float: np.ndarray = field(repr=False)
    tiles: list[np.ndarray] = field(repr=False)
    affines: np.ndarray = field(repr=False)
    vignetting: np.ndarray | None = field(default=None, repr=False)

    @property
    def positions_xy(self) -> np.ndarray:
        """Where each tile's pixel 0 lands, ``(x, y[, z])`` as in a tile table."""
        n = self.affines.shape[1] - 1
        return self.affines[:, :n, n][:, ::-1]


def _truth(name: str, shape: tuple[int, ...], depth: int | None, channels: int | None,
           smooth: float) -> np.ndarray:  # fmt: skip
    from scipy import ndimage

    base = bundled_image(name, size=(shape[-2], shape[-1])).astype(np.float32)
    if smooth > 0:
        base = ndimage.gaussian_filter(base, smooth, mode="reflect")
    img = base
    if depth is not None:
        planes = [
            ndimage.gaussian_filter(ndimage.shift(base, (1.5 * z, -z), mode="mirror"), 0.3 * z)
            for z in range(depth)
        ]
        img = np.stack(planes).astype(np.float32)
    if channels is not None:
        img = np.stack([img, 1 - img, img**2, np.sqrt(img)][:channels]).astype(np.float32)
    return np.clip(img, 0, 1)


def make_mosaic(
    name: str = "retina",
    *,
    grid: tuple[int, int] = (4, 4),
    tile_px: int = 256,
    overlap: float = 0.1,
    jitter_px: float = 0.0,
    subpixel: bool = False,
    rotation_deg: float = 0.0,
    depth: int | None = None,
    channels: int | None = None,
    vignetting: float = 0.0,
    photons: float | None = None,
    read_noise: float = 0.0,
    smooth_sigma_px: float = 0.0,
    dtype: str = "uint16",
    seed: int = 0,
) -> SyntheticMosaic:
    """A mosaic of tiles cut from a bundled image, with ground truth (see the module docs)."""
    from scipy import ndimage

    if not 0 <= overlap < 0.5:
        raise ConfigError(f"overlap must be in [0, 0.5), got {overlap!r}")
    rng = np.random.default_rng(seed)
    rows, cols = grid
    step = round(tile_px * (1 - overlap))
    margin = math.ceil(jitter_px + tile_px * math.sin(math.radians(rotation_deg))) + 2
    shape = (2 * margin + step * (rows - 1) + tile_px, 2 * margin + step * (cols - 1) + tile_px)
    truth = _truth(name, shape, depth, channels, smooth_sigma_px)
    lead = truth.ndim - 2 - (depth is not None)
    spatial = truth.shape[lead:]
    nd = len(spatial)
    tiles: list[np.ndarray] = []
    affines: list[np.ndarray] = []
    ramp = None
    if vignetting:
        yy, xx = np.meshgrid(*[np.linspace(-1, 1, tile_px)] * 2, indexing="ij")
        ramp = (1 - vignetting * (yy**2 + xx**2) / 2).astype(np.float32)
    planes = truth.reshape(-1, *spatial)
    for r in range(rows):
        for c in range(cols):
            jitter = rng.uniform(-jitter_px, jitter_px, 2)
            if not subpixel:
                jitter = np.round(jitter)
            theta = math.radians(rng.uniform(-rotation_deg, rotation_deg))
            a = np.eye(nd + 1)
            a[-3:-1, -3:-1] = [
                [math.cos(theta), -math.sin(theta)],
                [math.sin(theta), math.cos(theta)],
            ]
            a[-3:-1, nd] = [margin + r * step + jitter[0], margin + c * step + jitter[1]]
            tshape = (*spatial[:-2], tile_px, tile_px)
            if np.allclose(a[:nd, :nd], np.eye(nd)) and np.allclose(a[:nd, nd] % 1, 0):
                sl = tuple(
                    slice(int(o), int(o) + s) for o, s in zip(a[:nd, nd], tshape, strict=True)
                )
                tile = planes[(slice(None), *sl)]
            else:
                tile = np.stack([
                    ndimage.affine_transform(p, a[:nd, :nd], offset=a[:nd, nd], output_shape=tshape, order=3)  # noqa: E501
                    for p in planes
                ])  # fmt: skip
            tile = tile.reshape(*truth.shape[:lead], *tshape)
            if ramp is not None:
                tile = tile * ramp
            tiles.append(_quantise(tile, dtype, photons, read_noise, seed + len(tiles)))
            affines.append(a)
    return SyntheticMosaic(
        truth=_quantise(truth, dtype, None, 0.0, 0),
        truth_float=truth,
        tiles=tiles,
        affines=np.stack(affines),
        vignetting=ramp,
    )


def _quantise(
    img: np.ndarray, dtype: str, photons: float | None, read_noise: float, seed: int
) -> np.ndarray:
    d = np.dtype(dtype)
    if d.kind == "f":
        out = img.astype(d)
        if read_noise:
            out = out + np.random.default_rng(seed).normal(0, read_noise, img.shape).astype(d)
        return out
    if photons is None and not read_noise:
        return np.rint(np.clip(img, 0, 1) * np.iinfo(d).max).astype(d)
    return acquire(img, photons=photons, read_noise=read_noise, dtype=d.type, seed=seed)


def write_mosaic(
    folder: str | Path, mosaic: SyntheticMosaic, *, affine: bool = False, name: str = "tiles.csv"
) -> Path:
    """Write the tiles as TIFFs and a tile table (``path,x,y[,z]``, plus ``affine`` when
    ``affine`` or when a tile is rotated). Returns the table's path."""
    import tifffile

    from ..io import Tile, TileTable

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    refs = []
    for i, tile in enumerate(mosaic.tiles):
        path = folder / f"tile_{i:04d}.tif"
        tifffile.imwrite(path, tile, photometric="minisblack")
        refs.append(str(path))
    nd = mosaic.affines.shape[1] - 1
    table = TileTable(tuple(Tile(r, a) for r, a in zip(refs, mosaic.affines, strict=True)), ndim=nd)
    table.to_csv(folder / name)
    if not affine and all(t.is_translation for t in table):
        _drop_affine_column(folder / name)
    return folder / name


def _drop_affine_column(path: Path) -> None:
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    col = rows[0].index("affine")
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([r[:col] + r[col + 1 :] for r in rows])
