"""A tile table from a folder of tiles named by their place in a grid (:func:`grid_tile_table`):
what MIST and Fiji's Grid/Collection stitching take, a file-name pattern, the nominal overlap
and, for numbered tiles, the grid's shape and the order the stage ran in.

Placeholders, in the file name only (the folder is literal); ``{{`` and ``}}`` are literal
braces:

* ``{row}``, ``{col}``: the tile's row and column, digits of any width; ``{rrr}``, ``{ccc}``
  (MIST's form) or ``{yyy}``, ``{xxx}`` (Fiji's "filename defined position"): exactly as many
  digits as letters.
* ``{index}``, or ``{iii}`` / ``{ppp}`` (Fiji's and MIST's fixed-width forms): the tile's number
  in acquisition order; its place follows from ``grid`` (rows x columns), ``order`` and
  ``start``.

Numbering may start anywhere (0 or 1 alike): rows and columns count from the smallest found,
a tile number from ``first_index`` (default: the smallest found). Missing tiles (fields the
scan skipped) leave their place empty. Positions are whole pixels, ``col * round(W (1 - ox))``
and ``row * round(H (1 - oy))`` for tiles of ``H x W`` px; registration (``scopefx fuse
--register``) then finds the true layout."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageNotFoundError
from ._tiles import TileTable

logger = logging.getLogger("scopefx.io._tiles")  # the tile tables' messages, one logger

__all__ = ["GRID_ORDERS", "GRID_STARTS", "grid_tile_table"]

#: How a numbered grid was acquired: row by row (each row left to right), row by row turning
#: at each end (a snake), and the same by columns.
GRID_ORDERS = ("rows", "snake-rows", "columns", "snake-columns")
#: The corner the first tile sits in.
GRID_STARTS = ("top-left", "top-right", "bottom-left", "bottom-right")

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z]+)\}")
_NAMED = {"row": "row", "col": "col", "index": "index"}
#: Repeated letters: MIST's {rrr}, {ccc}, {ppp}; Fiji's {iii} and, for "filename defined
#: position", {xxx} (the column) and {yyy} (the row).
_LETTERS = {"r": "row", "c": "col", "i": "index", "p": "index", "x": "col", "y": "row"}
#: A grid whose names span more places than this many times its tiles is taken for a mistake
#: (a stray file far away) unless ``grid`` gives its shape.
_SPARSE = 4


def _field(token: str) -> tuple[str, str] | None:
    """The field a placeholder's name stands for and the digits it matches (None: not one)."""
    if token in _NAMED:
        return _NAMED[token], r"\d+"
    if len(set(token)) == 1 and token[0] in _LETTERS:
        return _LETTERS[token[0]], rf"\d{{{len(token)}}}"
    return None


def _pattern_regex(name: str, pattern: str) -> tuple[re.Pattern[str], set[str]]:
    """The file-name regex of ``name`` (the pattern's last part) and the fields it holds;
    ``{{`` and ``}}`` stand for literal braces."""
    parts, fields, at = [], set(), 0
    for m in _TOKEN.finditer(name):
        parts.append(re.escape(name[at : m.start()]))
        at = m.end()
        if m.group(1) is None:  # an escaped brace
            parts.append(re.escape(m.group(0)[0]))
            continue
        found = _field(m.group(1))
        if found is None:
            raise ConfigError(
                f"grid pattern {pattern!r}: unknown placeholder {m.group(0)}; use {{row}} and "
                "{col} (or {rrr} and {ccc}), or {index} (or {iii}); {{ and }} for a literal "
                "brace"
            )
        field, digits = found
        if field in fields:
            raise ConfigError(f"grid pattern {pattern!r}: {field} appears twice")
        fields.add(field)
        parts.append(f"(?P<{field}>{digits})")
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
    if any(0 < v < 1 for v in pct):  # 0.1 for 10 %: the tiles then abut, and registration
        logger.warning(  # searches far from their true places
            "an overlap of %s %% of a tile; the overlap is a percentage (10 for 10 %%), not a "
            "fraction: if %s %% was meant, give %s", " x ".join(f"{v:g}" for v in pct),
            " x ".join(f"{100 * v:g}" for v in pct), ",".join(f"{100 * v:g}" for v in pct),
        )  # fmt: skip
    return (pct[0], pct[-1])


def _footprint(path: str) -> tuple[int, ...]:
    """A tile's spatial shape, ``(Y, X)`` or ``(Z, Y, X)``, from its header: colour samples,
    last or first (planar), are not pixels."""
    from ._metadata import read_metadata
    from ._read import SAMPLES_LAST

    try:
        meta = read_metadata(path)
    except OSError as exc:  # unreadable (permissions, a vanished file): name it
        raise ImageNotFoundError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    shape = tuple(int(v) for v in meta.shape)
    if len(shape) == 3 and shape[-1] in SAMPLES_LAST and meta.pages == 1:
        return shape[:-1]  # (H, W, samples)
    if len(shape) == 3 and meta.samples is not None and meta.pages == 1:
        return shape[1:]  # planar colour, (samples, H, W)
    return shape[-3:]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _matching(base: Path, regex: re.Pattern[str], text: str) -> list[tuple[str, dict[str, int]]]:
    """The files of ``base`` whose names match, sorted, with their numbers; a matching link
    that leads nowhere is a missing tile, refused."""
    if not base.is_dir():
        raise ImageNotFoundError(
            f"grid pattern {text!r}: folder {os.fspath(base)!r} does not exist"
        )
    found = []
    for entry in sorted(os.listdir(base)):
        hit = regex.fullmatch(entry)
        if hit is None or (base / entry).is_dir():
            continue
        if not (base / entry).exists():
            raise ImageNotFoundError(f"{os.path.abspath(base / entry)}: a link to nothing")
        found.append((entry, {k: int(v) for k, v in hit.groupdict().items()}))
    if not found:
        raise ImageNotFoundError(f"grid pattern {text!r}: no file in {os.fspath(base)!r} matches")
    return found


def _numbered_places(
    found: list[tuple[str, dict[str, int]]], grid: tuple[int, int] | None, order: str,
    start: str, first_index: int | None, text: str,
) -> list[tuple[int, int]]:  # fmt: skip
    """Row and column of each numbered tile (``{index}``), counted from ``first_index`` (else
    the smallest number found, with a warning when that is above 1)."""
    assert grid is not None
    low = min(f["index"] for _, f in found) if first_index is None else int(first_index)
    if first_index is None and low > 1:
        logger.warning(
            "grid pattern %r: the smallest tile number found, %d, is taken for the first "
            "tile; if tiles before it are missing, give the first tile's number "
            "(first_index, --first-index)", text, low,
        )  # fmt: skip
    return [_place(f["index"] - low, grid, order, start, entry) for entry, f in found]


def _named_places(
    found: list[tuple[str, dict[str, int]]], grid: tuple[int, int] | None, text: str
) -> list[tuple[int, int]]:
    """Row and column of each tile named by them, counted from the smallest found; checked
    against ``grid``, or, without it, refused when the names span more than ``_SPARSE``
    places per tile (a stray file)."""
    r0, c0 = min(f["row"] for _, f in found), min(f["col"] for _, f in found)
    places = [(f["row"] - r0, f["col"] - c0) for _, f in found]
    if grid is not None:
        for (entry, _), (r, c) in zip(found, places, strict=True):
            if r >= grid[0] or c >= grid[1]:
                raise ConfigError(
                    f"{entry}: row {r}, column {c} (counting from the first) lies outside "
                    f"the {grid[0]} x {grid[1]} grid"
                )
        return places
    span = (max(p[0] for p in places) + 1, max(p[1] for p in places) + 1)
    if span[0] * span[1] > _SPARSE * len(found):
        far = max(zip(found, places, strict=True), key=lambda fp: fp[1][0] + fp[1][1])
        raise ConfigError(
            f"grid pattern {text!r}: the {len(found)} tiles' names span {span[0]} rows x "
            f"{span[1]} columns (the farthest, {far[0][0]}, at row {far[1][0]}, column "
            f"{far[1][1]}): a stray file? Give the grid's shape (grid=, --grid "
            "ROWSxCOLS) if the scan is that sparse"
        )
    return places


def _one_shape(paths: list[str]) -> tuple[int, ...]:
    """The tiles' one spatial shape; two names of one file, or tiles of different sizes,
    are refused."""
    same: dict[tuple[int, int], str] = {}
    for path in paths:
        key = _identity(path)
        if key is not None and key in same:
            raise ConfigError(f"{same[key]} and {path} are one file: a tile is listed once")
        if key is not None:
            same[key] = path
    shapes = [_footprint(path) for path in paths]
    for path, shape in zip(paths, shapes, strict=True):
        if shape != shapes[0]:
            raise ConfigError(
                f"{path}: {' x '.join(map(str, shape))} px, but {paths[0]} is "
                f"{' x '.join(map(str, shapes[0]))} px; a grid's tiles share one size"
            )
    return shapes[0]


def grid_tile_table(
    pattern: str | os.PathLike[str],
    overlap_pct: float | Sequence[float],
    *,
    grid: tuple[int, int] | None = None,
    order: str | None = None,
    start: str | None = None,
    first_index: int | None = None,
    pixel_size_um: float | None = None,
) -> TileTable:
    """Place the tiles a file-name pattern names on their nominal grid.

    Parameters
    ----------
    pattern : str or path-like
        The tiles' path with placeholders in the file name (see the module docs):
        ``"scan/img_r{row}_c{col}.tif"``, ``"scan/img_r{rrr}_c{ccc}.tif"`` or
        ``"scan/tile_{iii}.tif"``; ``~`` is the home folder, relative paths are taken from the
        working directory.
    overlap_pct : float or (float, float)
        The nominal overlap of neighbouring tiles, percent of a tile: one for both axes, or
        ``(x, y)``.
    grid : (rows, columns), optional
        The grid's shape, rows first (Fiji's and MIST's grid width is ``columns``); needed
        for numbered tiles (``{index}``); with ``{row}``/``{col}``, tiles outside it are
        refused (without it, names spanning more than 4 places per tile are refused as a
        likely stray file).
    order : {"rows", "snake-rows", "columns", "snake-columns"}, optional
        Numbered tiles only: how the stage ran (:data:`GRID_ORDERS`; default ``"rows"``).
    start : {"top-left", "top-right", "bottom-left", "bottom-right"}, optional
        Numbered tiles only: the corner of the first tile (:data:`GRID_STARTS`; default
        ``"top-left"``).
    first_index : int, optional
        Numbered tiles only: the number of the first tile (default: the smallest found, with
        a warning when that is above 1: tiles before it would be missing).
    pixel_size_um : float, optional
        Stored with the table for the output's metadata.

    Returns
    -------
    TileTable
        One tile per matching file (as named: links are not followed), sorted by row then
        column; 3D (``z = 0``) when the tiles are z-stacks; ``source`` is the pattern.

    Raises
    ------
    ImageNotFoundError
        The folder does not exist, no file in it matches, a matching link leads nowhere, or
        a tile cannot be read.
    ConfigError
        A malformed pattern, overlap or grid; options that only numbered tiles take; two
        names at one place or for one file; a tile outside the grid; tiles of different
        sizes; an overlap that leaves no step between tiles.
    """
    text = os.path.expanduser(os.fspath(pattern))
    folder, name = os.path.split(text)
    for m in _TOKEN.finditer(folder):
        if m.group(1) is not None and _field(m.group(1)) is not None:
            raise ConfigError(
                f"grid pattern {text!r}: placeholders belong in the file name, not in the "
                f"folder ({m.group(0)})"
            )
    regex, fields = _pattern_regex(name, text)
    ox, oy = _overlaps(overlap_pct)
    numbered = "index" in fields
    if not numbered:
        given = [k for k, v in (("order", order), ("start", start),
                                ("first_index", first_index)) if v is not None]  # fmt: skip
        if given:
            raise ConfigError(
                f"grid pattern {text!r} names rows and columns; {', '.join(given)} only "
                "place numbered tiles ({index})"
            )
    order = "rows" if order is None else order
    start = "top-left" if start is None else start
    if order not in GRID_ORDERS:
        raise ConfigError(f"order must be one of {GRID_ORDERS}, got {order!r}")
    if start not in GRID_STARTS:
        raise ConfigError(f"start must be one of {GRID_STARTS}, got {start!r}")
    if grid is not None:
        ok = len(grid) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in grid
        )
        if not ok:
            raise ConfigError(f"grid must be (rows, columns), two integers >= 1, got {grid!r}")
        grid = (int(grid[0]), int(grid[1]))
    elif numbered:
        raise ConfigError(
            f"grid pattern {text!r} numbers its tiles ({{index}}): give the grid's shape "
            "(grid=(rows, columns), --grid ROWSxCOLS) to place them"
        )
    base = Path(folder or ".")
    found = _matching(base, regex, text)
    places = (_numbered_places(found, grid, order, start, first_index, text) if numbered
              else _named_places(found, grid, text))  # fmt: skip
    seen: dict[tuple[int, int], str] = {}
    for (entry, _), place in zip(found, places, strict=True):
        if place in seen:
            raise ConfigError(
                f"{seen[place]} and {entry} both sit at row {place[0]}, column {place[1]} of "
                f"grid pattern {text!r}"
            )
        seen[place] = entry
    paths = [os.path.abspath(base / entry) for entry, _ in found]  # as named: links kept
    shape = _one_shape(paths)
    h, w = shape[-2:]
    step_x, step_y = round(w * (1 - ox / 100)), round(h * (1 - oy / 100))
    if step_x < 1 or step_y < 1:
        raise ConfigError(
            f"an overlap of {ox:g} % x {oy:g} % leaves tiles of {h} x {w} px no step between "
            "neighbours (under a pixel): the overlap is a percentage of a tile, e.g. 10"
        )
    order_ = sorted(range(len(paths)), key=lambda k: places[k])
    refs = [paths[k] for k in order_]
    positions = [(places[k][1] * step_x, places[k][0] * step_y) + ((0,) * (len(shape) - 2))
                 for k in order_]  # fmt: skip
    table = TileTable.from_positions(refs, positions, pixel_size_um=pixel_size_um)
    return table.replace(source=text)
