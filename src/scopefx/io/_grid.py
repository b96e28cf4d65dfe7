"""A tile table from a folder of tiles named by their place in a grid (:func:`grid_tile_table`):
what MIST and Fiji's Grid/Collection stitching take, a file-name pattern, the nominal overlap
and, for numbered tiles, the grid's shape and the order the stage ran in.

Placeholders, in the file name only (the folder is literal):

* ``{row}``, ``{col}``: the tile's row and column, digits of any width; ``{rrr}``, ``{ccc}``
  (MIST's form): exactly as many digits as letters.
* ``{index}``, or ``{iii}`` / ``{ppp}`` (Fiji's and MIST's fixed-width forms): the tile's number
  in acquisition order; its place follows from ``grid`` (rows x columns), ``order`` and
  ``start``.

Numbering may start anywhere (0 or 1 alike): rows and columns count from the smallest found,
a tile number from ``first_index`` (default: the smallest found). Missing tiles (fields the
scan skipped) leave their place empty. Positions are whole pixels, ``col * round(W (1 - ox))``
and ``row * round(H (1 - oy))`` for tiles of ``H x W`` px; registration (``scopefx fuse
--register``) then finds the true layout."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageNotFoundError
from ._tiles import TileTable

__all__ = ["GRID_ORDERS", "GRID_STARTS", "grid_tile_table"]

#: How a numbered grid was acquired: row by row (each row left to right), row by row turning
#: at each end (a snake), and the same by columns.
GRID_ORDERS = ("rows", "snake-rows", "columns", "snake-columns")
#: The corner the first tile sits in.
GRID_STARTS = ("top-left", "top-right", "bottom-left", "bottom-right")

_FIELD = re.compile(r"\{([A-Za-z]+)\}")
_NAMED = {"row": "row", "col": "col", "index": "index"}
_LETTERS = {"r": "row", "c": "col", "i": "index", "p": "index"}


def _pattern_regex(name: str, pattern: str) -> tuple[re.Pattern[str], set[str]]:
    """The file-name regex of ``name`` (the pattern's last part) and the fields it holds."""
    parts, fields, at = [], set(), 0
    for m in _FIELD.finditer(name):
        token = m.group(1)
        if token in _NAMED:
            field, digits = _NAMED[token], r"\d+"
        elif len(set(token)) == 1 and token[0] in _LETTERS:
            field, digits = _LETTERS[token[0]], rf"\d{{{len(token)}}}"
        else:
            raise ConfigError(
                f"grid pattern {pattern!r}: unknown placeholder {m.group(0)}; use {{row}} and "
                "{col} (or {rrr} and {ccc}), or {index} (or {iii})"
            )
        if field in fields:
            raise ConfigError(f"grid pattern {pattern!r}: {field} appears twice")
        fields.add(field)
        parts += [re.escape(name[at : m.start()]), f"(?P<{field}>{digits})"]
        at = m.end()
    parts.append(re.escape(name[at:]))
    if fields not in ({"row", "col"}, {"index"}):
        raise ConfigError(
            f"grid pattern {pattern!r} must name either the row and the column ({{row}} and "
            "{col}) or the tile's number ({index}) in the file name"
        )
    return re.compile("".join(parts)), fields


def _place(k: int, grid: tuple[int, int], order: str, start: str, name: str) -> tuple[int, int]:
    """Row and column of the ``k``-th tile (from 0) of a numbered grid."""
    rows, cols = grid
    if not 0 <= k < rows * cols:
        raise ConfigError(
            f"{name}: tile number {k} (counting from the first) lies outside the {rows} x "
            f"{cols} grid; check the grid's shape and first_index (--first-index)"
        )
    if order in ("rows", "snake-rows"):
        r, c = divmod(k, cols)
        if order == "snake-rows" and r % 2:
            c = cols - 1 - c
    else:
        c, r = divmod(k, rows)
        if order == "snake-columns" and c % 2:
            r = rows - 1 - r
    if start.endswith("right"):
        c = cols - 1 - c
    if start.startswith("bottom"):
        r = rows - 1 - r
    return r, c


def _overlaps(overlap_pct: float | Sequence[float]) -> tuple[float, float]:
    values: list[Any] = (
        [overlap_pct] if np.isscalar(overlap_pct) else list(overlap_pct)  # type: ignore[arg-type]
    )
    try:
        pct = [float(v) for v in values]
    except (TypeError, ValueError):
        pct = []
    if len(pct) not in (1, 2) or not all(0 <= v < 100 for v in pct):
        raise ConfigError(
            f"overlap_pct must be a percentage in [0, 100), or one for x and one for y, got "
            f"{overlap_pct!r}"
        )
    return (pct[0], pct[-1])


def grid_tile_table(
    pattern: str | os.PathLike[str],
    overlap_pct: float | Sequence[float],
    *,
    grid: tuple[int, int] | None = None,
    order: str = "rows",
    start: str = "top-left",
    first_index: int | None = None,
    pixel_size_um: float | None = None,
) -> TileTable:
    """Place the tiles a file-name pattern names on their nominal grid.

    Parameters
    ----------
    pattern : str or path-like
        The tiles' path with placeholders in the file name (see the module docs):
        ``"scan/img_r{row}_c{col}.tif"``, ``"scan/img_r{rrr}_c{ccc}.tif"`` or
        ``"scan/tile_{iii}.tif"``. Relative paths are taken from the working directory.
    overlap_pct : float or (float, float)
        The nominal overlap of neighbouring tiles, percent of a tile: one for both axes, or
        ``(x, y)``.
    grid : (rows, columns), optional
        The grid's shape; needed for numbered tiles (``{index}``), checked against
        ``{row}``/``{col}`` where given.
    order : {"rows", "snake-rows", "columns", "snake-columns"}
        For numbered tiles: how the stage ran (:data:`GRID_ORDERS`).
    start : {"top-left", "top-right", "bottom-left", "bottom-right"}
        For numbered tiles: the corner of the first tile (:data:`GRID_STARTS`).
    first_index : int, optional
        For numbered tiles: the number of the first tile (default: the smallest found).
    pixel_size_um : float, optional
        Stored with the table for the output's metadata.

    Returns
    -------
    TileTable
        One tile per matching file, sorted by row then column; ``source`` is the pattern.

    Raises
    ------
    ImageNotFoundError
        The folder does not exist, or no file in it matches.
    ConfigError
        A malformed pattern, overlap or grid; two files at one place; a numbered tile outside
        the grid; tiles of different sizes.
    """
    from ._metadata import read_metadata

    text = os.fspath(pattern)
    folder, name = os.path.split(text)
    if _FIELD.search(folder):
        raise ConfigError(
            f"grid pattern {text!r}: placeholders belong in the file name, not in the folder"
        )
    regex, fields = _pattern_regex(name, text)
    ox, oy = _overlaps(overlap_pct)
    if order not in GRID_ORDERS:
        raise ConfigError(f"order must be one of {GRID_ORDERS}, got {order!r}")
    if start not in GRID_STARTS:
        raise ConfigError(f"start must be one of {GRID_STARTS}, got {start!r}")
    if grid is not None:
        ok = len(grid) == 2 and all(isinstance(v, (int, np.integer)) and v >= 1 for v in grid)
        if not ok:
            raise ConfigError(f"grid must be (rows, columns), two integers >= 1, got {grid!r}")
        grid = (int(grid[0]), int(grid[1]))
    elif "index" in fields:
        raise ConfigError(
            f"grid pattern {text!r} numbers its tiles ({{index}}): give the grid's shape "
            "(grid=(rows, columns), --grid ROWSxCOLS) to place them"
        )
    base = Path(folder or ".")
    if not base.is_dir():
        raise ImageNotFoundError(
            f"grid pattern {text!r}: folder {os.fspath(base)!r} does not exist"
        )
    found = []
    for entry in sorted(os.listdir(base)):
        m = regex.fullmatch(entry)
        if m and (base / entry).is_file():
            found.append((entry, {k: int(v) for k, v in m.groupdict().items()}))
    if not found:
        raise ImageNotFoundError(f"grid pattern {text!r}: no file in {os.fspath(base)!r} matches")
    if "index" in fields:
        assert grid is not None
        low = min(f["index"] for _, f in found) if first_index is None else int(first_index)
        places = [_place(f["index"] - low, grid, order, start, entry) for entry, f in found]
    else:
        r0, c0 = min(f["row"] for _, f in found), min(f["col"] for _, f in found)
        places = [(f["row"] - r0, f["col"] - c0) for _, f in found]
        if grid is not None:
            for (entry, _), (r, c) in zip(found, places, strict=True):
                if r >= grid[0] or c >= grid[1]:
                    raise ConfigError(
                        f"{entry}: row {r}, column {c} (counting from the first) lies outside "
                        f"the {grid[0]} x {grid[1]} grid"
                    )
    seen: dict[tuple[int, int], str] = {}
    for (entry, _), place in zip(found, places, strict=True):
        if place in seen:
            raise ConfigError(
                f"{seen[place]} and {entry} both sit at row {place[0]}, column {place[1]} of "
                f"grid pattern {text!r}"
            )
        seen[place] = entry
    paths = [os.fspath((base / entry).resolve()) for entry, _ in found]
    shapes = []
    for path in paths:
        meta = read_metadata(path)
        spatial = meta.shape[:-1] if meta.samples is not None else meta.shape
        shapes.append(tuple(int(v) for v in spatial[-2:]))
    for path, shape in zip(paths, shapes, strict=True):
        if shape != shapes[0]:
            raise ConfigError(
                f"{path}: {shape[0]} x {shape[1]} px, but {paths[0]} is {shapes[0][0]} x "
                f"{shapes[0][1]} px; a grid's tiles share one size"
            )
    h, w = shapes[0]
    step_x, step_y = round(w * (1 - ox / 100)), round(h * (1 - oy / 100))
    order_ = sorted(range(len(paths)), key=lambda k: places[k])
    refs = [paths[k] for k in order_]
    positions = [(places[k][1] * step_x, places[k][0] * step_y) for k in order_]
    table = TileTable.from_positions(refs, positions, pixel_size_um=pixel_size_um)
    return table.replace(source=text)
