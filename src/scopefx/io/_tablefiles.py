"""Reading tile tables (:func:`read_tile_table`): an instrument file's stage positions, a
CSV/TSV of ``path`` and positions (pixels or micrometres, an optional ``affine`` and ``focus``)
and Fiji's ``TileConfiguration.txt``. The table formats themselves are described in
:mod:`scopefx.io._tiles`."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageNotFoundError, UnsupportedFormatError
from ._refsyntax import ZARR_SEP, local_text
from ._texttable import parse_text_table, plain_number, read_table_text
from ._tiles import Tile, TileTable, xyz_to_index

__all__ = ["read_csv", "read_tile_configuration", "read_tile_table"]

logger = logging.getLogger("scopefx.io._tiles")  # the tile tables' messages, one logger

_TC_LINE = re.compile(r"^(?P<name>[^;]+);(?P<series>[^;]*);\s*\((?P<coords>[^)]*)\)\s*$")


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
    """A tile listed twice, also under another spelling of its path (``./a/../a/t.tif``): it
    would be fused twice, at two places."""
    first: dict[str, tuple[int, str]] = {}
    for t, line in zip(tiles, lines, strict=True):
        key = _same_file_key(t.ref)
        if key in first:
            before, ref = first[key]
            spelled = "" if ref == t.ref else f", as {ref!r}"
            raise ConfigError(
                f"{path}, line {line}: tile {t.ref!r} is listed twice (first on line "
                f"{before}{spelled}); each tile may appear once"
            )
        first[key] = (line, t.ref)


def _same_file_key(ref: str) -> str:
    """``ref`` with its file's path normalised (``.`` and ``..`` taken out), the part inside
    kept. By the text alone: a table names paths a caller chose, and none is looked up here
    (on an endpoint the roots are checked after the table is read)."""
    store, sep, inner = ref.partition(ZARR_SEP)
    return os.path.normcase(os.path.normpath(store)) + sep + inner


#: The columns a tile table's rows are read from (any other column is left alone).
_READ_COLUMNS = frozenset({"path", "x", "y", "z", "x_um", "y_um", "z_um", "affine", "focus"})


def read_csv(
    path: Path,
    pixel_size_um: float | None,
    rotation_deg: float,
    flip: tuple[bool, bool],
    pixel_size_z_um: float | None = None,
) -> tuple[list[Tile], int, float | None, float | None]:
    """The tiles, the dimension, the pixel size and the z step (um) of a CSV table (the z
    step given, else the one the first tile records)."""
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
    twice = sorted({c for c in cols if cols.count(c) > 1 and c in _READ_COLUMNS})
    if twice:  # a dict of the row would keep the last silently (others are not read)
        raise ConfigError(f"{path}, line 1: column(s) {twice} named more than once; columns {cols}")
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
        shown = [c if len(c) <= 40 else c[:37] + "..." for c in cols[:8]]
        more = f" and {len(cols) - 8} more" if len(cols) > 8 else ""
        raise ConfigError(f"{path}: no 'path' column; columns are {shown}{more}")
    if {"x", "y"} <= set(cols):
        axes, unit = ["x", "y", "z"] if "z" in cols else ["x", "y"], "px"
        if {"x_um", "y_um"} <= set(cols):  # two placements: which one counts, said
            logger.warning("%s: both x,y (pixels) and x_um,y_um (micrometres) are given; the "
                           "tiles are placed by x,y, and x_um,y_um are not read", path)  # fmt: skip
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
    z_step_um = pixel_size_z_um
    asks_z = len(axes) == 3 and z_step_um is None
    if unit == "um" and (pixel_size_um is None or asks_z):
        recorded, recorded_z, why = _recorded_sizes(
            rows[0].get("path", ""), path, xy=pixel_size_um is None, z=asks_z
        )
        z_step_um = z_step_um if z_step_um is not None else recorded_z
        if pixel_size_um is None:
            pixel_size_um = recorded
            if pixel_size_um is None:
                none = f"no pixel size ({why})" if why else "no pixel size"
                raise ConfigError(
                    f"{path}: positions are in micrometres ({', '.join(axes)}) and the first "
                    f"tile records {none}; give it (--pixel-size / pixel_size_um=)"
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
            "size; if the tiles' planes are further apart, give the z step (--pixel-size-z / "
            "pixel_size_z_um=) or positions in planes (path,x,y,z)",
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
) -> tuple[float | None, float | None, str | None]:
    """The pixel size (``xy``) and the z step (``z``), in micrometres, that the tile ``name``
    of ``table`` records in its metadata (pixel size: OME, ImageJ, a TIFF resolution in
    centimetres, a vendor file...; inch-based default resolutions do not count; z step: OME
    ``PhysicalSizeZ``, ImageJ ``spacing``), each ``None`` when it is not asked for, not
    recorded, or the tile cannot be read; and why a recorded pixel size was not taken (non-square
    pixels, a default dpi, an implausible size), else None."""
    if not name:
        return None, None, None
    from ._metadata import read_metadata

    ref = _resolve(name, table.resolve().parent)
    try:
        meta = read_metadata(ref)
    except Exception:  # unreadable here (missing, refused): the caller asks for --pixel-size
        logger.debug("no pixel size from %s", ref, exc_info=True)
        return None, None, None

    def positive(v: float | None) -> float | None:
        return float(v) if v is not None and math.isfinite(v) and v > 0 else None

    size = positive(meta.pixel_size_um) if xy else None
    z_step = positive(meta.pixel_size_z_um) if z else None
    if size is not None:
        logger.info("%s: micrometre positions divided by %s's pixel size, %g um (%s)",
                    table, ref, size, meta.pixel_size_from)  # fmt: skip
    if z_step is not None:
        logger.info("%s: z_um divided by %s's z step, %g um", table, ref, z_step)
    why = meta.raw.get("pixel_size_ignored") if xy and size is None else None
    return size, z_step, None if why is None else str(why)


def read_tile_configuration(
    path: Path, rotation_deg: float, flip: tuple[bool, bool]
) -> tuple[list[Tile], int]:
    ndim = None
    base = path.resolve().parent
    tiles: list[Tile] = []
    lines: list[int] = []
    for line, raw in enumerate(read_table_text(path).splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        key, eq, value = text.partition("=")
        if eq and key.strip().lower() == "dim":
            try:
                given = int(value)
            except ValueError:
                raise ConfigError(
                    f"{path}, line {line}: cannot parse {text!r}; expected 'dim = 2' or 'dim = 3'"
                ) from None
            if tiles and given != ndim:  # the tiles before it are of another dimension
                raise ConfigError(
                    f"{path}, line {line}: dim = {given} after {len(tiles)} tile(s) of "
                    f"dim = {ndim}; one configuration holds tiles of one dimension"
                )
            ndim = given
            continue
        if eq and key.strip().lower() in ("multiseries",):
            continue
        match = _TC_LINE.match(text)
        if match is None:
            raise ConfigError(
                f"{path}, line {line}: cannot parse {text!r}; expected 'name; ; (x, y)'"
                + (
                    "; a table with a 'path' column is read as CSV when named .csv or .tsv"
                    if "path" in text.lower() and any(d in text for d in ",;\t")
                    else ""
                )
            )
        try:
            coords = [plain_number(v) for v in match["coords"].split(",") if v.strip()]
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
    if not tiles:
        raise ConfigError(f"{path}: the tile configuration places no tiles")
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
    pixel_size_z_um: float | None = None,
    scene: int | str | None = None,
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
    pixel_size_z_um : float, optional
        Z step of z-stack tiles (um), over what the tiles or the instrument file record: it
        divides ``z_um`` and is the table's ``pixel_size_z_um``. Ignored for 2D tables.
    rotation_deg : float
        Camera rotation relative to the stage; positions are rotated into the camera frame.
        Ignored for rows with an ``affine`` (authoritative).
    flip_x, flip_y : bool
        The stage's x (y) axis runs against the image's columns (rows): its x grows to the
        image's left, its y upwards. Those positions are negated (before any rotation), for
        tables and instrument files alike; rows with an ``affine`` are taken as they are.
    scene : int or str, optional
        For an instrument file that holds several mosaics (CZI scenes, the tile scans of a
        LIF project): the one to read, by index from 0 or by name (default: the first, with
        a warning that names the others). Refused for tables.

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
    path = local_text(os.fsdecode(os.fspath(path)))  # file:// URLs read, other URLs refused
    p = Path(path)
    if p.is_dir():
        raise UnsupportedFormatError(
            f"tile table {os.fspath(path)!r} is a folder: give a table that places its tiles "
            "(a CSV with path,x,y, a Fiji TileConfiguration.txt) or an instrument file"
        )
    if not p.is_file():
        raise ImageNotFoundError(f"tile table {os.fspath(path)!r} does not exist")
    from ._read import decoding
    from ._vendor import format_name, is_vendor_file, vendor_positions

    # how the positions were turned as read, for a registration's refusal to name
    turns = [name for name, on in (("flip_x", flip_x), ("flip_y", flip_y)) if on]
    if rotation_deg:
        turns.append(f"rotation_deg={rotation_deg:g}")
    if is_vendor_file(p):
        if rotation_deg:
            raise ConfigError("rotation_deg is not supported for tiles inside instrument files")
        with decoding(os.fspath(path), format_name(p)):  # damaged: said, not a traceback
            refs, positions, size, extra = vendor_positions(
                p, pixel_size_um=pixel_size_um, pixel_size_z_um=pixel_size_z_um, scene=scene
            )
        positions = np.array(positions, dtype=float)  # (x, y[, z]) per tile
        for axis, flipped in enumerate((flip_x, flip_y)):
            if flipped:
                positions[:, axis] = positions[:, axis].max() - positions[:, axis]
                # the image's axis runs against the stage's: no translation places it
                extra.pop("stage_origin_um", None)
        z_step = extra.pop("pixel_size_z_um", None)
        if turns:
            extra["stage_turns"] = turns
        placed = TileTable.from_positions(refs, positions, pixel_size_um=size)
        return placed.replace(source=os.fspath(p.resolve()), extra=extra, pixel_size_z_um=z_step)
    if scene is not None:
        raise ConfigError(
            f"scene {scene!r} is given but {os.fspath(path)!r} is a tile table, not an "
            "instrument file with several mosaics (CZI, LIF)"
        )
    suffix = p.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            tiles, ndim, px, z_step = read_csv(
                p, pixel_size_um, rotation_deg, (flip_x, flip_y), pixel_size_z_um
            )
        elif suffix == ".txt":
            tiles, ndim = read_tile_configuration(p, rotation_deg, (flip_x, flip_y))
            px, z_step = pixel_size_um, pixel_size_z_um
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
        tuple(tiles), ndim=ndim, pixel_size_um=px, source=os.fspath(path),
        pixel_size_z_um=z_step if ndim == 3 else None,
        extra={"stage_turns": turns} if turns else {},
    )  # fmt: skip
