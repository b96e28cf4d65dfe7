"""Tile tables: where each tile of a mosaic goes.

Two on-disk forms are read:

* **CSV** (or ``.tsv``) with a header (names in any case; ``,``, ``;`` or tab separated).
  ``path`` plus either ``x,y[,z]`` (mosaic pixels, floats allowed, ``x`` is the column axis)
  or ``x_um,y_um[,z_um]`` (micrometres: ``x_um, y_um`` divided by the pixel size, ``z_um`` by
  the z step the first tile records, else by the pixel size, with a warning). The position
  is where the tile's pixel ``(0, 0[, 0])`` lands. An optional ``affine`` column holds a JSON
  matrix ``[[a, b, tx], [c, d, ty]]`` (3x4 in 3D) that maps tile pixel ``(x, y[, z])`` to mosaic
  pixel ``(x, y[, z])``; when present it places the tile, and a row's ``x,y[,z]`` (pixels), where
  also given, must be its translation ``(tx, ty[, tz])`` (as :meth:`TileTable.to_csv` writes
  them): a row where they differ is refused. An optional ``focus`` column carries a
  per-tile focus score (used by ``blend="focus"`` and the preview).
* **Fiji / BigStitcher** ``TileConfiguration.txt`` and ``TileConfiguration.registered.txt``
  (``dim = 2`` or ``3``; lines ``name; ; (x, y[, z])``, or ``name; N; (x, y[, z])`` for tile
  ``N`` of a multi-series instrument file, ``name::tile/N``).

Relative paths are resolved against the table's folder.

Internally every transform is a homogeneous ``(ndim + 1, ndim + 1)`` matrix in **array index
order** (``(y, x)`` or ``(z, y, x)``), as :func:`scipy.ndimage.affine_transform` uses, so tile
index ``i`` maps to mosaic index ``A @ [*i, 1]``. The tables speak ``(x, y[, z])``; the reversal
happens here and nowhere else.

A camera rotated relative to the stage (``rotation_deg``): the mosaic is built in the camera's
frame, so tiles are never resampled for it; stage positions are rotated into that frame,
``p_camera = R(rotation)^T p_stage``, with ``R`` the rotation that carries the stage's x axis onto
the camera's x axis. A stage axis that runs against the image's (``flip_x``, ``flip_y``: the
stage's x grows to the image's left, or its y upwards, as on many stages) is negated first:
``p_camera = R^T F p_stage``, ``F = diag(+-1, +-1)``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ._refsyntax import ZARR_SEP

__all__ = ["Tile", "TileTable", "flatten_z"]

logger = logging.getLogger(__name__)


def _reverse(ndim: int) -> np.ndarray:
    """Homogeneous permutation between (x, y[, z]) and index order (it is its own inverse)."""
    p = np.zeros((ndim + 1, ndim + 1))
    p[np.arange(ndim), np.arange(ndim)[::-1]] = 1
    p[ndim, ndim] = 1
    return p


def xyz_to_index(matrix: np.ndarray) -> np.ndarray:
    """A homogeneous affine in (x, y[, z]) order, re-expressed in array index order."""
    p = _reverse(matrix.shape[0] - 1)
    return p @ matrix @ p


index_to_xyz = xyz_to_index  # the reversal is an involution


def translation(offset_index: Sequence[float] | np.ndarray) -> np.ndarray:
    """Homogeneous translation by ``offset_index`` (index order)."""
    n = len(offset_index)
    m = np.eye(n + 1)
    m[:n, n] = offset_index
    return m


@dataclass(frozen=True, eq=False)
class Tile:
    """One tile: an image reference and the transform that places it.

    Attributes
    ----------
    ref : str
        Path of the tile (absolute, or as given), or ``store.zarr::array``.
    affine : ndarray, shape (ndim + 1, ndim + 1)
        Homogeneous transform, index order, tile index -> mosaic index.
    focus : float or None
        A focus score (e.g. MHFD features) for ``blend="focus"`` and the preview.
    """

    ref: str
    affine: np.ndarray
    focus: float | None = None

    @property
    def ndim(self) -> int:
        return int(self.affine.shape[0] - 1)

    @property
    def offset(self) -> np.ndarray:
        """Mosaic index of the tile's pixel 0 (index order)."""
        return np.asarray(self.affine[: self.ndim, self.ndim], dtype=float)

    @property
    def is_translation(self) -> bool:
        return bool(np.allclose(self.affine[: self.ndim, : self.ndim], np.eye(self.ndim)))


#: A translation this close to a whole pixel is that pixel (float noise of a unit conversion).
_WHOLE_PX = 1e-9
#: The largest position (px, any axis) a tile table holds: beyond it a float64 position is no
#: longer exact to 1/1000 px (its spacing at 2^40 is 2^-12 px), and mosaic sizes computed from
#: such positions overflowed (positions of 1e19 px) or silently lost pixels (1e17 px).
MAX_POSITION_PX = 2.0**40


@dataclass(frozen=True, eq=False)
class TileTable:
    """The tiles of one mosaic, with the number of spatial dimensions and the pixel size.

    Build one with :func:`read_tile_table`, :meth:`from_positions` or the constructor.
    ``pixel_size_z_um`` is the z step of a 3D mosaic whose voxels are not cubes (z-stack
    tiles of an instrument file); ``None``: the same as ``pixel_size_um``.
    """

    tiles: tuple[Tile, ...]
    ndim: int = 2
    pixel_size_um: float | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    pixel_size_z_um: float | None = None

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ConfigError(f"a tile table is 2D or 3D, got ndim={self.ndim!r}")
        if not self.tiles:
            raise ConfigError(f"tile table {self.source or ''!s} holds no tiles".replace("  ", " "))
        for i, t in enumerate(self.tiles):
            a = np.asarray(t.affine, dtype=float)
            if a.shape != (self.ndim + 1, self.ndim + 1):
                raise ConfigError(
                    f"tile {i} ({t.ref}): affine of shape {a.shape}, expected "
                    f"{(self.ndim + 1, self.ndim + 1)} for a {self.ndim}D table"
                )
            if not np.all(np.isfinite(a)):
                raise ConfigError(f"tile {i} ({t.ref}): affine holds NaN or infinity")
            if np.abs(a[: self.ndim, self.ndim]).max() > MAX_POSITION_PX:
                raise ConfigError(
                    f"tile {i} ({t.ref}): position {a[: self.ndim, self.ndim][::-1].tolist()} "
                    f"(x, y[, z]) is beyond +-{MAX_POSITION_PX:.0e} px, where a float no longer "
                    "holds a position to a 1/1000 px (a unit mix-up: nanometres or metres "
                    "read as pixels?); check the positions and their unit"
                )
            if abs(np.linalg.det(a[: self.ndim, : self.ndim])) < 1e-6:
                raise ConfigError(
                    f"tile {i} ({t.ref}): singular affine (determinant "
                    f"{np.linalg.det(a[: self.ndim, : self.ndim]):.3g}); a tile must map to an "
                    "area, check the affine column"
                )
        self._snap_whole_pixels()
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise ConfigError(f"pixel_size_um must be > 0, got {self.pixel_size_um!r}")
        if self.pixel_size_z_um is not None and not (self.ndim == 3 and self.pixel_size_z_um > 0):
            raise ConfigError(
                f"pixel_size_z_um must be None or > 0 in a 3D table, got "
                f"{self.pixel_size_z_um!r} ({self.ndim}D)"
            )

    def _snap_whole_pixels(self) -> None:
        """Translations within :data:`_WHOLE_PX` of a whole pixel become that pixel: positions
        in micrometres over the pixel size carry float noise (295.1 um / 0.65 um is
        453.99999999999983 px), and such a tile was fused as a fractional one, its seams up to
        2 grey levels from the same layout given in pixels."""
        n = self.ndim
        t = np.array([np.asarray(tile.affine, dtype=float)[:n, n] for tile in self.tiles])
        whole = np.round(t)
        near = np.maximum(_WHOLE_PX, 4 * np.spacing(np.abs(t)))  # far out, a float's own step
        snap = (np.abs(t - whole) <= near) & (t != whole)
        if not snap.any():
            return
        tiles = list(self.tiles)
        for k in np.flatnonzero(snap.any(axis=1)).tolist():
            a = np.array(tiles[k].affine, dtype=float)
            a[:n, n] = np.where(snap[k], whole[k], t[k])
            tiles[k] = Tile(tiles[k].ref, a, tiles[k].focus)
        object.__setattr__(self, "tiles", tuple(tiles))

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __getitem__(self, i: int) -> Tile:
        return self.tiles[i]

    @property
    def refs(self) -> list[str]:
        return [t.ref for t in self.tiles]

    @property
    def affines(self) -> np.ndarray:
        """All transforms, shape (n_tiles, ndim + 1, ndim + 1), index order."""
        return np.stack([np.asarray(t.affine, dtype=float) for t in self.tiles])

    @classmethod
    def from_positions(
        cls,
        refs: Sequence[str | os.PathLike[str]],
        positions_xy: Any,
        *,
        pixel_size_um: float | None = None,
        focus: Sequence[float | None] | None = None,
    ) -> TileTable:
        """Tiles placed by translation: ``positions_xy[i]`` is where tile ``i``'s pixel 0 lands.

        Positions are ``(x, y)`` or ``(x, y, z)`` in mosaic pixels, as in the CSV table.
        """
        pos = np.asarray(positions_xy, dtype=float)
        if pos.ndim != 2 or pos.shape[1] not in (2, 3) or len(pos) != len(refs):
            raise ConfigError(
                f"positions_xy must have shape ({len(refs)}, 2 or 3), got {pos.shape}"
            )
        ndim = pos.shape[1]
        scores = list(focus) if focus is not None else [None] * len(refs)
        tiles = tuple(
            Tile(os.fspath(r), translation(p[::-1]), None if s is None else float(s))
            for r, p, s in zip(refs, pos, scores, strict=True)
        )
        return cls(tiles, ndim=ndim, pixel_size_um=pixel_size_um)

    def with_affines(self, affines: np.ndarray, **extra: Any) -> TileTable:
        """The same tiles with new transforms (index order), e.g. after registration."""
        tiles = tuple(
            Tile(t.ref, np.asarray(a, dtype=float), t.focus)
            for t, a in zip(self.tiles, affines, strict=True)
        )
        return self.replace(tiles=tiles, extra={**self.extra, **extra})

    def with_focus(self, scores: Sequence[float | None]) -> TileTable:
        tiles = tuple(
            Tile(t.ref, t.affine, None if s is None else float(s))
            for t, s in zip(self.tiles, scores, strict=True)
        )
        return self.replace(tiles=tiles, extra=dict(self.extra))

    def replace(self, **changes: Any) -> TileTable:
        """A copy with some fields changed (validated); the other fields, the z step
        included, are kept."""
        return dataclasses.replace(self, **changes)

    def to_csv(
        self, path: str | os.PathLike[str], *, tabs: bool | None = None, affine: bool = True
    ) -> None:
        """Write ``path,x,y[,z],affine[,focus]``; relative paths where the tiles allow;
        tab-separated with ``tabs`` (default: for a ``.tsv``).

        ``x,y[,z]`` is the affine's translation, written so that it reads back exactly (as
        :func:`repr` writes a float): tools that take only ``x,y`` get the positions whole.
        ``affine=False`` leaves the ``affine`` column out where every tile is a translation
        (a table meant to be edited by hand: an ``x`` changed there would disagree with it).
        """
        path = Path(path)
        base = path.resolve().parent
        axes = ["x", "y", "z"][: self.ndim]
        has_focus = any(t.focus is not None for t in self.tiles)
        eye = np.eye(self.ndim)
        affine = affine or not all(
            np.allclose(np.asarray(t.affine, dtype=float)[: self.ndim, : self.ndim], eye)
            for t in self.tiles
        )
        with open(path, "w", newline="") as fh:
            tabs = path.suffix.lower() == ".tsv" if tabs is None else tabs
            w = csv.writer(fh, delimiter="\t" if tabs else ",")
            w.writerow(["path", *axes] + ["affine"] * affine + (["focus"] if has_focus else []))
            for t in self.tiles:
                xyz = index_to_xyz(np.asarray(t.affine, dtype=float))
                ref = _relative_ref(t.ref, base)
                # full precision: 6 significant digits moved positions from 100,000 px by
                # up to 0.5 px (and wrote 1e6 px as 1e+06); + 0.0 writes -0.0 as 0.0
                row = [ref, *(repr(float(v) + 0.0) for v in xyz[: self.ndim, self.ndim])]
                if affine:
                    row.append(json.dumps([[round(float(v), 9) for v in r] for r in xyz[:-1]]))
                if has_focus:
                    none = t.focus is None or math.isnan(t.focus)  # NaN reads as no score
                    row.append("" if none else f"{t.focus:.6g}")
                w.writerow(row)


def _relative_ref(ref: str, base: Path) -> str:
    store, sep, array = ref.partition(ZARR_SEP)
    try:
        rel = Path(store).resolve().relative_to(base)
    except ValueError:
        return ref
    return f"{rel.as_posix()}{sep}{array}"


#: An absolute Windows path: a drive (``C:\\``, ``C:/``) or a share (``\\\\server``).


def flatten_z(table: TileTable, planes: int | str | Sequence[int]) -> TileTable:
    """A 2D mosaic of one plane of each z-stack tile of an instrument file.

    Parameters
    ----------
    table : TileTable
        A table read from an instrument file (:func:`read_tile_table` of ``*.ome.tif``,
        ``*.czi``, ...): 3D for z-stack tiles, 2D for single planes.
    planes : int, "max" or sequence of int
        Plane ``K`` of every tile, ``"max"`` (each tile's maximum-intensity projection), or
        one plane index per tile (e.g. each tile's sharpest).

    Returns
    -------
    TileTable
        2D, the tiles referenced as ``file::tile/N/z/K`` (or ``.../z/max``) at their x, y
        positions; ``extra["z_planes"]`` holds what each tile contributes. A 2D table (single
        planes) comes back as it is, for plane 0 or ``"max"``.

    Raises
    ------
    ConfigError
        The table is not from an instrument file, a plane is negative, a sequence does not
        have one plane per tile, or plane ``K > 0`` of single-plane tiles.
    """
    from ._vendor import plane_ref

    if "vendor" not in table.extra:
        raise ConfigError(
            f"z planes are picked from the z-stack tiles of instrument files (OME-TIFF, CZI, "
            f"ND2, LIF); {table.source or 'this table'} lists image files: write the planes "
            "you want as tiles instead"
        )
    n = len(table)
    chosen: list[int | str]
    if isinstance(planes, str):
        if planes != "max":
            raise ConfigError(
                f'planes must be a plane index, "max" or one index per tile, got {planes!r}'
            )
        chosen = ["max"] * n
    elif isinstance(planes, (int, np.integer)):
        chosen = [int(planes)] * n
    else:
        chosen = [int(k) for k in planes]
        if len(chosen) != n:
            raise ConfigError(f"{len(chosen)} planes given for {n} tiles; give one per tile")
    bad = [k for k in chosen if isinstance(k, int) and k < 0]
    if bad:
        raise ConfigError(f"z planes are numbered from 0, got {bad[0]}")
    if table.ndim == 2:
        higher = [k for k in chosen if isinstance(k, int) and k > 0]
        if higher:
            raise ConfigError(
                f"z plane {higher[0]} of {table.source}: its tiles are single planes (plane 0)"
            )
        return table
    tiles = tuple(
        Tile(plane_ref(t.ref, k), np.asarray(t.affine, dtype=float)[1:, 1:], t.focus)
        for t, k in zip(table.tiles, chosen, strict=True)
    )
    extra = {**table.extra, "z_planes": chosen}
    return table.replace(tiles=tiles, ndim=2, extra=extra, pixel_size_z_um=None)
