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
import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageNotFoundError, UnsupportedFormatError
from ._refsyntax import ZARR_SEP
from ._texttable import parse_text_table, read_table_text

__all__ = ["Tile", "TileTable", "flatten_z", "read_tile_table"]

logger = logging.getLogger(__name__)

_TC_LINE = re.compile(r"^(?P<name>[^;]+);(?P<series>[^;]*);\s*\((?P<coords>[^)]*)\)\s*$")


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
            if abs(np.linalg.det(a[: self.ndim, : self.ndim])) < 1e-6:
                raise ConfigError(
                    f"tile {i} ({t.ref}): singular affine (determinant "
                    f"{np.linalg.det(a[: self.ndim, : self.ndim]):.3g}); a tile must map to an "
                    "area, check the affine column"
                )
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise ConfigError(f"pixel_size_um must be > 0, got {self.pixel_size_um!r}")
        if self.pixel_size_z_um is not None and not (self.ndim == 3 and self.pixel_size_z_um > 0):
            raise ConfigError(
                f"pixel_size_z_um must be None or > 0 in a 3D table, got "
                f"{self.pixel_size_z_um!r} ({self.ndim}D)"
            )

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

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write ``path,x,y[,z],affine[,focus]``; relative paths where the tiles allow.

        ``x,y[,z]`` is the affine's translation, written so that it reads back exactly (as
        :func:`repr` writes a float): tools that take only ``x,y`` get the positions whole.
        """
        path = Path(path)
        base = path.resolve().parent
        axes = ["x", "y", "z"][: self.ndim]
        has_focus = any(t.focus is not None for t in self.tiles)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", *axes, "affine"] + (["focus"] if has_focus else []))
            for t in self.tiles:
                xyz = index_to_xyz(np.asarray(t.affine, dtype=float))
                ref = _relative_ref(t.ref, base)
                # full precision: 6 significant digits moved positions from 100,000 px by
                # up to 0.5 px (and wrote 1e6 px as 1e+06); + 0.0 writes -0.0 as 0.0
                row = [ref, *(repr(float(v) + 0.0) for v in xyz[: self.ndim, self.ndim])]
                row.append(json.dumps([[round(float(v), 9) for v in r] for r in xyz[:-1]]))
                if has_focus:
                    row.append("" if t.focus is None else f"{t.focus:.6g}")
                w.writerow(row)


def _relative_ref(ref: str, base: Path) -> str:
    store, sep, array = ref.partition(ZARR_SEP)
    try:
        rel = Path(store).resolve().relative_to(base)
    except ValueError:
        return ref
    return f"{rel.as_posix()}{sep}{array}"


#: An absolute Windows path: a drive (``C:\\``, ``C:/``) or a share (``\\\\server``).
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


@functools.lru_cache(maxsize=1)
def _windows_note(base: str) -> None:
    """Say once per table folder that its Windows paths are read by name."""
    logger.warning("tiles named by Windows paths (C:\\...) are read by their file names from "
                   "the table's folder %s", base)  # fmt: skip


def _resolve(name: str, base: Path) -> str:
    store, sep, array = name.strip().partition(ZARR_SEP)
    if os.sep == "/" and _WINDOWS_ABSOLUTE.match(store):
        # a table written on Windows with absolute paths ('C:\\scan\\a.tif'), read here: the
        # tiles are looked for by name beside the table, where they were copied with it
        tail = re.split(r"[\\/]", store)[-1]
        _windows_note(str(base))
        store = tail
    if "\\" in store and "/" not in store:  # a table written on Windows: 'tiles\a.tif'
        store = store.replace("\\", "/")
    p = Path(store)
    if not p.is_absolute():
        p = base / p
    return f"{p}{sep}{array}"


def _rotation_xy(
    rotation_deg: float, ndim: int, flip: tuple[bool, bool] = (False, False)
) -> np.ndarray:
    """Homogeneous ``R^T F`` in (x, y[, z]) order: stage vectors into the camera frame, the
    stage's x and y negated first where ``flip`` says they run against the image's."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    # exact at right angles: cos(90 deg) is 6e-17, and offsets of 1e-13 px sent whole-pixel
    # tiles down the resampling path and added a row of fill (a 1420 px mosaic became 1421)
    c, s = (float(round(v)) if abs(v - round(v)) < 1e-12 else v for v in (c, s))
    r = np.eye(ndim + 1)
    r[:2, :2] = np.array([[c, s], [-s, c]]) @ np.diag([-1.0 if f else 1.0 for f in flip])
    return r


def _parse_affine(text: str, ndim: int, where: str) -> np.ndarray:
    try:
        m = np.asarray(json.loads(text), dtype=float)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: affine {text!r} is not a JSON matrix: {exc}") from None
    if m.shape != (ndim, ndim + 1):
        raise ConfigError(
            f"{where}: affine of shape {m.shape}, expected {(ndim, ndim + 1)} "
            f"({'[[a, b, tx], [c, d, ty]]' if ndim == 2 else '3x4'}) for a {ndim}D table"
        )
    return np.vstack([m, np.eye(ndim + 1)[-1]])


def _refuse_duplicates(tiles: list[Tile], lines: list[int], path: Path) -> None:
    first: dict[str, int] = {}
    for t, line in zip(tiles, lines, strict=True):
        if t.ref in first:
            raise ConfigError(
                f"{path}, line {line}: tile {t.ref!r} is listed twice (first on line "
                f"{first[t.ref]}); each tile may appear once"
            )
        first[t.ref] = line


def _read_csv(
    path: Path, pixel_size_um: float | None, rotation_deg: float, flip: tuple[bool, bool]
) -> tuple[list[Tile], int, float | None, float | None]:
    """The tiles, the dimension, the pixel size and the z step (um) of a CSV table."""
    table = parse_text_table(read_table_text(path))
    if not table.columns:
        raise ConfigError(f"{path}: the table is empty; expected a header such as 'path,x,y'")
    cols = list(table.columns)
    while cols and not cols[-1]:  # a trailing comma on the header (spreadsheet export)
        cols.pop()
    if "" in cols:
        raise ConfigError(
            f"{path}, line 1: column {cols.index('') + 1} has no name; columns {cols}"
        )
    rows, lines = [], []
    for line, values in table.records:
        extra = [v for v in values[len(cols) :] if v.strip()]
        if extra:
            raise ConfigError(
                f"{path}, line {line}: {len(values)} values for {len(cols)} columns {cols}; "
                f"extra values {extra}"
            )
        values = values[: len(cols)] + [""] * (len(cols) - len(values))
        rows.append({k: v.strip() for k, v in zip(cols, values, strict=True)})
        lines.append(line)
    if "path" not in cols:
        raise ConfigError(f"{path}: no 'path' column; columns are {cols}")
    if {"x", "y"} <= set(cols):
        axes, unit = ["x", "y", "z"] if "z" in cols else ["x", "y"], "px"
    elif {"x_um", "y_um"} <= set(cols):
        axes = ["x_um", "y_um", "z_um"] if "z_um" in cols else ["x_um", "y_um"]
        unit = "um"
    elif "affine" in cols:
        axes, unit = [], "px"
    else:
        raise ConfigError(
            f"{path}: no position columns; expected 'x,y[,z]' (pixels), 'x_um,y_um[,z_um]' "
            f"(with a pixel size) or 'affine', got {cols}"
        )
    if not rows:
        raise ConfigError(f"{path}: the table holds no tiles")
    z_step_um = None
    if unit == "um" and (pixel_size_um is None or len(axes) == 3):
        recorded, z_step_um = _recorded_sizes(
            rows[0].get("path", ""), path, xy=pixel_size_um is None, z=len(axes) == 3
        )
        if pixel_size_um is None:
            pixel_size_um = recorded
            if pixel_size_um is None:
                raise ConfigError(
                    f"{path}: positions are in micrometres ({', '.join(axes)}) and the first "
                    "tile records no pixel size; give it (--pixel-size / pixel_size_um=)"
                )
    ndim = len(axes) if axes else 0
    if not axes:  # affine only: its shape says the dimension
        try:
            rows_in_first = len(json.loads(rows[0]["affine"]))
        except (ValueError, TypeError):
            rows_in_first = 2  # _parse_affine explains
        ndim = rows_in_first if rows_in_first in (2, 3) else 2
    rot = _rotation_xy(rotation_deg, ndim, flip)
    base = path.resolve().parent
    tiles = []
    z_assumed: list[int] = []  # lines whose z_um was divided by the xy pixel size
    for line, row in zip(lines, rows, strict=True):
        where = f"{path}, line {line}"
        if not row.get("path"):
            raise ConfigError(f"{where}: empty path")
        affine_text = row.get("affine", "")
        if affine_text:
            m = _parse_affine(affine_text, ndim, where)
            if unit == "px" and axes and all(row.get(a) for a in axes):
                _check_translation(m, _position(row, axes, table.number, where), where)
        else:
            pos = _position(row, axes, table.number, where)
            if unit == "um":
                xy = float(pixel_size_um)  # type: ignore[arg-type]
                if ndim == 3 and z_step_um is None and pos[2] != 0:
                    z_assumed.append(line)
                pos = pos / np.array([xy, xy, z_step_um or xy][:ndim])
            m = np.eye(ndim + 1)
            m[:ndim, ndim] = rot[:ndim, :ndim] @ pos  # positions turn; the tiles do not
        focus = row.get("focus", "")
        try:
            score = table.number(focus) if focus else None
        except ValueError:
            raise ConfigError(f"{where}: focus {focus!r} is not numeric") from None
        tiles.append(Tile(_resolve(row["path"], base), xyz_to_index(m), score))
    _refuse_duplicates(tiles, lines, path)
    if z_assumed:
        # the z step that placed them is the mosaic's z scale (FusionPlan.voxel_um)
        z_step_um = float(pixel_size_um)  # type: ignore[arg-type]
        logger.warning(
            "%s: z_um divided by the xy pixel size, %g um (lines %s): the first tile records no "
            "z step (ImageJ spacing, OME PhysicalSizeZ), so z is assumed to have the xy pixel "
            "size; if the tiles' planes are further apart, give positions in planes (path,x,y,z)",
            path, z_step_um, ", ".join(str(n) for n in z_assumed[:5]),
        )  # fmt: skip
    return tiles, ndim, pixel_size_um, z_step_um


def _position(row: dict[str, str], axes: list[str], number: Any, where: str) -> np.ndarray:
    """The row's position along ``axes`` (as written, unit unchanged); refuses a value that
    is not a finite number, naming the line."""
    try:
        pos = np.array([number(row[a]) for a in axes], dtype=float)
    except (ValueError, KeyError):
        given = {a: row.get(a) for a in axes}
        raise ConfigError(f"{where}: position {given} is not numeric") from None
    if not np.isfinite(pos).all():  # float() reads 'nan' and 'inf'
        given = {a: row.get(a) for a in axes}
        raise ConfigError(f"{where}: position {given} is not a finite number")
    return pos


#: Pixels within which a row's x,y[,z] are its affine's translation.
_SAME_POSITION_PX = 1e-3


def _check_translation(m: np.ndarray, pos: np.ndarray, where: str) -> None:
    """Refuses a row whose ``x,y[,z]`` (pixels) are not the translation of its affine ``m``
    ((x, y[, z]) order), which places the tile: an edit of x,y would be silently ignored."""
    ndim = len(pos)
    t = m[:ndim, ndim]
    if np.abs(pos - t).max() <= _SAME_POSITION_PX:
        return
    # to_csv once wrote x,y with 6 significant digits (123456.7 px as 123457): such rows of an
    # older *.registered.csv still read, their affine holding the position at full precision
    if all(float(f"{v:.6g}") == p for v, p in zip(t, pos, strict=True)):
        return
    axes = ",".join("xyz"[:ndim])
    given = ", ".join(f"{v:g}" for v in pos)
    placed = ", ".join(f"{v:.6g}" for v in t)
    raise ConfigError(
        f"{where}: {axes} ({given}) disagree with the affine's translation ({placed}) by "
        f"{np.abs(pos - t).max():.3g} px; the affine places the tile, so {axes} would be "
        f"ignored: edit one to match the other, or delete the affine column to place the tiles "
        f"by {axes}"
    )


def _recorded_sizes(
    name: str, table: Path, *, xy: bool, z: bool
) -> tuple[float | None, float | None]:
    """The pixel size (``xy``) and the z step (``z``), in micrometres, that the tile ``name``
    of ``table`` records in its metadata (pixel size: OME, ImageJ, a TIFF resolution in
    centimetres, a vendor file...; inch-based default resolutions do not count; z step: OME
    ``PhysicalSizeZ``, ImageJ ``spacing``), each ``None`` when it is not asked for, not
    recorded, or the tile cannot be read."""
    if not name:
        return None, None
    from ._metadata import read_metadata

    ref = _resolve(name, table.resolve().parent)
    try:
        meta = read_metadata(ref)
    except Exception:  # unreadable here (missing, refused): the caller asks for --pixel-size
        logger.debug("no pixel size from %s", ref, exc_info=True)
        return None, None

    def positive(v: float | None) -> float | None:
        return float(v) if v is not None and math.isfinite(v) and v > 0 else None

    size = positive(meta.pixel_size_um) if xy else None
    z_step = positive(meta.pixel_size_z_um) if z else None
    if size is not None:
        logger.info("%s: micrometre positions divided by %s's pixel size, %g um (%s)",
                    table, ref, size, meta.pixel_size_from)  # fmt: skip
    if z_step is not None:
        logger.info("%s: z_um divided by %s's z step, %g um", table, ref, z_step)
    return size, z_step


def _read_tile_configuration(
    path: Path, rotation_deg: float, flip: tuple[bool, bool]
) -> tuple[list[Tile], int]:
    ndim = None
    base = path.resolve().parent
    tiles, lines = [], []
    for line, raw in enumerate(read_table_text(path).splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        key, eq, value = text.partition("=")
        if eq and key.strip().lower() == "dim":
            try:
                ndim = int(value)
            except ValueError:
                raise ConfigError(
                    f"{path}, line {line}: cannot parse {text!r}; expected 'dim = 2' or 'dim = 3'"
                ) from None
            continue
        if eq and key.strip().lower() in ("multiseries",):
            continue
        match = _TC_LINE.match(text)
        if match is None:
            raise ConfigError(
                f"{path}, line {line}: cannot parse {text!r}; expected 'name; ; (x, y)'"
            )
        try:
            coords = [float(v) for v in match["coords"].split(",") if v.strip()]
        except ValueError:
            raise ConfigError(
                f"{path}, line {line}: position ({match['coords']}) is not numeric"
            ) from None
        if not np.isfinite(coords).all():  # float() reads 'NaN' and 'Infinity'
            raise ConfigError(
                f"{path}, line {line}: position ({match['coords']}) is not a finite number"
            )
        ndim = ndim or len(coords)
        if len(coords) != ndim:
            raise ConfigError(
                f"{path}, line {line}: {len(coords)} coordinates, expected {ndim} (dim = {ndim})"
            )
        m = np.eye(ndim + 1)
        m[:ndim, ndim] = _rotation_xy(rotation_deg, ndim, flip)[:ndim, :ndim] @ coords
        name, series = match["name"].strip(), match["series"].strip()
        if series:  # Fiji's multi-series form, 'scan.czi; 3; (x, y)': tile 3 of that file
            if not (series.isascii() and series.isdigit()):
                raise ConfigError(
                    f"{path}, line {line}: series {series!r} is not a tile number; expected "
                    "'name; ; (x, y)' or 'name; N; (x, y)'"
                )
            name = f"{name}{ZARR_SEP}tile/{int(series)}"
        tiles.append(Tile(_resolve(name, base), xyz_to_index(m)))
        lines.append(line)
    _refuse_duplicates(tiles, lines, path)
    if ndim not in (2, 3):
        raise ConfigError(f"{path}: dim = {ndim!r}; only 2D and 3D tile configurations exist")
    return tiles, ndim


def read_tile_table(
    path: str | os.PathLike[str],
    *,
    pixel_size_um: float | None = None,
    rotation_deg: float = 0.0,
    flip_x: bool = False,
    flip_y: bool = False,
) -> TileTable:
    """Read a tile table: a CSV, or a Fiji/BigStitcher ``TileConfiguration.txt``.

    Parameters
    ----------
    path : str or path-like
        ``*.csv`` (see the module docs for the columns), ``*.txt`` (TileConfiguration), or an
        instrument file that records stage positions: ``*.ome.tif[f]`` (or BigTIFF
        ``*.ome.btf``), ``*.czi``, ``*.nd2``, ``*.lif``
        (:func:`scopefx.io._vendor.vendor_positions`; CZI/ND2/LIF need ``scopefx[vendor]``).
    pixel_size_um : float, optional
        Pixel size (xy), needed for ``x_um,y_um`` positions unless the first tile records one;
        stored for the output's metadata. ``z_um`` is divided by the z step the first tile
        records (``pixel_size_z_um`` of the table), else by the pixel size, with a warning.
    rotation_deg : float
        Camera rotation relative to the stage; positions are rotated into the camera frame.
        Ignored for rows with an ``affine`` (authoritative).
    flip_x, flip_y : bool
        The stage's x (y) axis runs against the image's columns (rows): its x grows to the
        image's left, its y upwards. Those positions are negated (before any rotation), for
        tables and instrument files alike; rows with an ``affine`` are taken as they are.

    Returns
    -------
    TileTable

    Raises
    ------
    ImageNotFoundError
        The table does not exist.
    UnsupportedFormatError
        A folder (not a table), or a file of a kind that holds no tile positions.
    ConfigError
        A column is missing, a value is not numeric, an affine is malformed or singular, or a
        row's ``x,y[,z]`` are not its affine's translation.
    """
    p = Path(path)
    if p.is_dir():
        raise UnsupportedFormatError(
            f"tile table {os.fspath(path)!r} is a folder: give a table that places its tiles "
            "(a CSV with path,x,y, a Fiji TileConfiguration.txt) or an instrument file"
        )
    if not p.is_file():
        raise ImageNotFoundError(f"tile table {os.fspath(path)!r} does not exist")
    from ._vendor import is_vendor_file, vendor_positions

    if is_vendor_file(p):
        if rotation_deg:
            raise ConfigError("rotation_deg is not supported for tiles inside instrument files")
        refs, positions, size, extra = vendor_positions(p, pixel_size_um=pixel_size_um)
        positions = np.array(positions, dtype=float)  # (x, y[, z]) per tile
        for axis, flipped in enumerate((flip_x, flip_y)):
            if flipped:
                positions[:, axis] = positions[:, axis].max() - positions[:, axis]
                # the image's axis runs against the stage's: no translation places it
                extra.pop("stage_origin_um", None)
        z_step = extra.pop("pixel_size_z_um", None)
        placed = TileTable.from_positions(refs, positions, pixel_size_um=size)
        return placed.replace(source=os.fspath(p.resolve()), extra=extra, pixel_size_z_um=z_step)
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            tiles, ndim, px, z_step = _read_csv(p, pixel_size_um, rotation_deg, (flip_x, flip_y))
        elif suffix == ".txt":
            tiles, ndim = _read_tile_configuration(p, rotation_deg, (flip_x, flip_y))
            px, z_step = pixel_size_um, None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"tile table {os.fspath(path)!r} is not UTF-8 text ({exc.reason} at byte "
            f"{exc.start}); save it as a UTF-8 CSV or TileConfiguration.txt"
        ) from None
    if suffix not in (".csv", ".tsv", ".txt"):
        raise UnsupportedFormatError(
            f"tile table {os.fspath(path)!r}: expected a .csv table (or .tsv), a Fiji "
            "TileConfiguration .txt, or an instrument file that records stage positions "
            "(.ome.tif, .ome.tiff, .ome.btf, .czi, .nd2, .lif)"
        )
    return TileTable(
        tuple(tiles), ndim=ndim, pixel_size_um=px, source=os.fspath(path), pixel_size_z_um=z_step
    )


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
