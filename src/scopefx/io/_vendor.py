"""Tiles inside instrument files that record their stage positions: OME-TIFF, CZI, ND2, LIF.

:func:`vendor_positions` reads, and :func:`scopefx.io.read_tile_table` turns, such a file into a
:class:`~scopefx.io.TileTable` whose tiles are references of the form
``/abs/experiment.czi::tile/3`` (the fourth tile as listed), which :func:`scopefx.io.read_image`
and :func:`scopefx.io.read_metadata` read through :func:`read_vendor_tile` and
:func:`vendor_metadata`. Positions are the recorded stage positions divided by the recorded
pixel size (mosaic pixels, the first tile's corner where it lies); ``table.pixel_size_um`` and
``table.extra["channel_names"]`` carry what the file says.

OME-TIFF is read with tifffile, in :mod:`scopefx.io._ome` (each OME ``Image`` is a tile, placed
by its first ``Plane``'s ``PositionX/PositionY``, else its ``StageLabel``), from the file given
alone: an OME-XML that describes images in other files (a multi-file set) is refused, as are
images that are not tiles of one mosaic of square pixels (time series, non-square pixels,
pixel sizes that differ: see :func:`vendor_positions`). CZI, ND2 and LIF are read here, with
bioio and its plugins (``pip install "scopefx[vendor]"``): a CZI's mosaic tiles (its ``M``
axis) are placed by the subblock positions; a LIF's by the stage positions of its first tile
scan's ``TileScanInfo`` (metres, turned by its ``FlipX``/``FlipY``/``SwapXY`` flags as
Leica's own reader does; bioio-lif's mosaic positions assume abutting fields); an ND2
multipoint scan's by its XY positions, each a scene in bioio-nd2 with its stage position
(:func:`_scene_positions`; tested against a stand-in of bioio-nd2's interface only: no ND2
file can be written here).

Tiles with several z planes are ``(C,) Z, Y, X`` stacks: the table is 3D, each tile placed at
its recorded z (OME ``Plane PositionZ`` of its first plane, a CZI subblock's
``FocusPosition``; else 0) divided by the z step (``PhysicalSizeZ``), which the table carries
as ``pixel_size_z_um``. ``file::tile/N/z/K`` is plane ``K`` of tile ``N`` and
``file::tile/N/z/max`` its maximum-intensity projection, both ``(C,) Y, X``;
:func:`scopefx.io.flatten_z` turns a 3D table into a 2D one of such references.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import shown
from ..errors import ConfigError, CorruptImageError, UnsupportedFormatError
from ._ome import ome_metadata, ome_positions, read_ome_tile
from ._planes import ZSel, is_index, plane_index, stack_shape
from ._units import implausible_note, plausible_pixel_size, same_pixel_size, value_um

__all__ = [
    "is_vendor_file",
    "plane_ref",
    "read_vendor_tile",
    "vendor_metadata",
    "vendor_positions",
]

log = logging.getLogger(__name__)

#: Suffixes of files read here (``.ome.tif``/``.ome.tiff`` by their full ending).
VENDOR_SUFFIXES = (".czi", ".nd2", ".lif")
_OME_ENDINGS = (".ome.tif", ".ome.tiff", ".ome.btf", ".ome.tf2", ".ome.tf8")
#: The bioio plugin that reads each suffix.
_PLUGINS = {".czi": "bioio_czi", ".nd2": "bioio_nd2", ".lif": "bioio_lif"}
_LOCKS: dict[str, threading.Lock] = {}
#: Each LIF reader's tile scans (scene index -> liffile's ``LifTileScanInfo``), read from the
#: checked file.
_LIF_SCANS: weakref.WeakKeyDictionary[Any, dict[int, Any]] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def is_vendor_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``.czi``/``.nd2``/``.lif`` file or an OME-TIFF (``.ome.tif[f]``; BigTIFF
    ``.ome.btf``/``.tf2``/``.tf8``)."""
    name = Path(path).name.lower()
    return name.endswith(VENDOR_SUFFIXES) or name.endswith(_OME_ENDINGS)


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(_OME_ENDINGS):
        return "ome"
    for suffix in VENDOR_SUFFIXES:
        if name.endswith(suffix):
            return suffix[1:]
    raise UnsupportedFormatError(f"'{path}' is not an OME-TIFF, CZI, ND2 or LIF file")


#: What each kind of instrument file is called in messages.
_FORMAT_NAMES = {"ome": "OME-TIFF", "czi": "CZI", "nd2": "ND2", "lif": "LIF"}


def format_name(path: Path) -> str:
    """``"OME-TIFF"``, ``"CZI"``, ``"ND2"`` or ``"LIF"``: what ``path`` is, for messages."""
    kind = _kind(path)
    return _FORMAT_NAMES.get(kind, kind.upper())


def _tile_ref(part: str | None, ref: str) -> tuple[int | None, int, ZSel]:
    """``tile/N`` -> ``(None, N, None)``, ``tile/N/z/K`` -> ``(None, N, K)``,
    ``tile/N/z/max`` -> ``(None, N, "max")``; each after ``scene/S/`` -> ``(S, ...)``: tile
    ``N`` of scene ``S`` (the file's default scene without it)."""
    text = part or ""
    scene: int | None = None
    if text.startswith("scene/"):
        value, _, text = text[len("scene/") :].partition("/")
        scene = int(value) if is_index(value) and len(value) <= 18 else -1
    head, _, rest = text.partition("/")
    number, _, zpart = rest.partition("/")
    zhead, _, zvalue = zpart.partition("/")
    ok = head == "tile" and is_index(number) and scene != -1
    if zpart:
        ok = ok and zhead == "z" and (is_index(zvalue) or zvalue == "max")
    if not ok:
        raise UnsupportedFormatError(
            f"{ref!r}: a tile inside an instrument file is referenced as 'file::tile/N' "
            f"(N = 0, 1, ...; 'file::scene/S/tile/N' in scene S), or one of its z planes as "
            f"'file::tile/N/z/K' or 'file::tile/N/z/max', got {part!r}"
        )
    if not zpart:
        return scene, int(number), None
    return scene, int(number), (int(zvalue) if is_index(zvalue) else "max")


def _lock(path: Path) -> threading.Lock:
    """The lock of the file at ``path``, keyed as its reader is cached (by the resolved path):
    one file reached by two spellings (a link, ``a/../b``, a table's relative reference)
    shares one reader, whose scene a read sets."""
    key = os.fspath(Path(path).resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


# -- bioio (CZI, ND2, LIF) -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _bioio_reader(path: str, mtime: float) -> Any:
    """A bioio reader of ``path``, which is first opened and checked by the confined opener.

    bioio readers open the file themselves, again on every read. The reader is given
    ``/proc/self/fd/N`` of the checked descriptor, which reaches the file that was checked
    whatever is at ``path`` by then; the descriptor lives as long as the reader (in this
    cache). The plugin is chosen here by the real name's suffix (bioio would choose it by the
    name it is given): ``bioio_czi`` and ``bioio_lif`` (tested), ``bioio_nd2`` (untested),
    which recognise a file by its content, not its name. A LIF reader keeps the project's tile
    scans (:func:`_lif_scans`): the first is its default scene, their ``TileScanInfo`` gives
    the positions.
    """
    from ._confine import open_read

    fd = open_read(path)
    try:
        suffix = Path(path).suffix.lower()
        plugin = importlib.import_module(_PLUGINS[suffix])
        pinned = f"/proc/self/fd/{fd}"
        source = pinned if os.path.exists(pinned) else path
        # bioio_czi reads with aicspylibczi by default: mosaic tiles on the M axis
        try:
            reader = plugin.Reader(source)
        except Exception as exc:  # the plugin names /proc/self/fd/N: name the file instead
            raise UnsupportedFormatError(
                f"'{path}' cannot be read as a {suffix[1:].upper()} file: "
                f"{type(exc).__name__}: {str(exc).replace(source, path)[:500]}"
            ) from None
        if suffix == ".czi":
            _check_czi_dims(source, path)
        if suffix == ".lif":  # the project's tile scans; the first is the default scene
            try:
                scans = _lif_scans(source)
            except Exception as exc:  # a tile scan's metadata that liffile cannot read
                raise UnsupportedFormatError(
                    f"'{path}': its tile scan's metadata cannot be read ({exc})"
                ) from None
            _LIF_SCANS[reader] = scans
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, ImportError):
            raise _needs_bioio(path, exc) from None
        raise
    weakref.finalize(reader, os.close, fd)
    return reader


#: Bytes a CZI spends on each of its subblocks at least (a directory entry and the segment
#: header), so that a file of B bytes holds at most B / _CZI_SUBBLOCK_BYTES planes.
_CZI_SUBBLOCK_BYTES = 64


def _check_czi_dims(source: str, path: str) -> None:
    """Refuse a CZI whose dimensions ask for more planes (subblocks) than its size can hold:
    a damaged header (one byte changed gave ``C`` 8,650,753) made bioio-czi build a task
    graph of that many planes, without end and with gigabytes of memory, when it was asked
    for the pixel size. Read from the subblock directory by aicspylibczi, without pixels."""
    try:
        import aicspylibczi
    except ImportError:  # bioio-czi's other reader: nothing to check with here
        return
    with open(source, "rb") as fh:  # given the path, aicspylibczi leaves its file open
        dims = aicspylibczi.CziFile(fh).get_dims_shape()
    planes = 0
    for scene in dims:
        planes += math.prod(hi - lo for axis, (lo, hi) in scene.items() if axis not in "YXA")
    size = os.stat(source).st_size
    if planes * _CZI_SUBBLOCK_BYTES > size:
        raise CorruptImageError(
            f"'{path}': its dimensions ({_dims_text(dims[0])}) ask for {planes:,} planes, more "
            f"than its {size:,} bytes can hold; the file is damaged: copy or export it again"
        )


def _dims_text(scene: dict[str, tuple[int, int]]) -> str:
    return ", ".join(f"{axis} {hi - lo}" for axis, (lo, hi) in scene.items())


def _needs_bioio(path: str, exc: ImportError) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"reading '{path}' needs bioio and its plugin for this format ({exc.name} is not "
        'installed): pip install "scopefx[vendor]"'
    )


def _reader(path: Path) -> Any:
    return _bioio_reader(os.fspath(path.resolve()), path.stat().st_mtime)


def _scene(path: Path, r: Any, scene: int | str | None) -> int:
    """The index of scene ``scene`` (an index, or a scene's name) of the reader of ``path``;
    the reader's default scene for None (a LIF's first tile scan, else scene 0)."""
    names = [str(n) for n in r.scenes]
    if scene is None:
        return min(_LIF_SCANS.get(r) or [0])  # a LIF's first tile scan, else scene 0
    if isinstance(scene, str) and scene in names:
        return names.index(scene)
    index = scene
    if isinstance(scene, str):  # digits of bounded length: int() of thousands of them raises
        index = int(scene) if is_index(scene) and len(scene) <= 18 else -1
    if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(names):
        return index
    raise ConfigError(
        f"'{path}' has no scene {shown(scene)}: its scenes are {_names(names)} (by index from 0, "
        "or by name)"
    )


def _names(names: Any, show: int = 8) -> str:
    """Scene names as a message gives them: the first ``show``, the rest counted."""
    names = [str(n) for n in names]
    listed = ", ".join(f"{k}: {n!r}" for k, n in enumerate(names[:show]))
    return listed + (f" and {len(names) - show} more" if len(names) > show else "")


def _positions_are_scenes(path: Path, r: Any) -> bool:
    """An ND2 multipoint acquisition: each XY position is a scene of its own (bioio-nd2),
    with no mosaic (``M``) axis: the tiles are the scenes."""
    return path.suffix.lower() == ".nd2" and "M" not in r.dims.order and len(r.scenes) > 1


def _tile_scene(path: Path, r: Any, scene: int | None, tile: int, ref: str) -> int:
    """Set the reader to the scene that holds ``tile`` (``ref``'s): the scene asked for (else
    the default), or for an ND2 whose positions are scenes, the tile's own scene. Returns the
    index of ``tile`` along the scene's ``M`` axis (0 without one). Under the file's lock."""
    if _positions_are_scenes(path, r):  # any scene tells: none has a mosaic axis
        if scene is not None:
            raise ConfigError(f"{ref!r}: an ND2's XY positions are its tiles; it has no scenes")
        if tile >= len(r.scenes):
            raise ConfigError(f"{ref!r}: tile {tile} of {len(r.scenes)}")
        _at_scene(r, tile)
        return 0
    _at_scene(r, _scene(path, r, scene))
    n = r.dims.M if "M" in r.dims.order else 1
    if tile >= n:
        raise ConfigError(f"{ref!r}: tile {tile} of {n}")
    return tile


def _scene_positions(
    path: Path, r: Any, pixel_um: float | None
) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Positions (x, y) in pixels of an ND2 whose XY positions are scenes, from each scene's
    recorded stage position (bioio-nd2's ``stage_position_x``/``_y``, um: each field's
    centre), and the stage position (um) of position 0 (the corner of the field there).
    Leaves the reader at scene 0. Under the file's lock. (bioio-nd2 opens the file again for
    each position's x and y: a scan of many positions takes a while to list.)"""
    if not hasattr(r, "stage_position_x"):
        raise UnsupportedFormatError(
            f"'{path}': an ND2 multipoint scan's stage positions need bioio-nd2 2.6 or later "
            '(pip install -U "scopefx[vendor]")'
        )
    um = []
    for k, name in enumerate(r.scenes):
        _at_scene(r, k)
        x, y = r.stage_position_x, r.stage_position_y
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            raise UnsupportedFormatError(
                f"'{path}': XY position {k} ({str(name)!r}) records no stage position; export "
                "the tiles with a tile table instead"
            )
        um.append((float(x), float(y)))
    _at_scene(r, 0)
    if not pixel_um:
        raise ConfigError(
            f"'{path}' records its stage positions in micrometres but no pixel size: give it "
            "(--pixel-size / pixel_size_um=)"
        )
    xy = np.array(um)
    low = xy.min(axis=0)
    # bioio records the centre of each field: the first tile's corner lies half a field before
    half = np.array([r.dims.X, r.dims.Y], dtype=float) * float(pixel_um) / 2
    return [(float(x), float(y)) for x, y in (xy - low) / float(pixel_um)], low - half


def _at_scene(r: Any, k: int) -> None:
    """Set the (shared, cached) reader to scene ``k``; under the file's lock."""
    if r.current_scene_index != k:
        r.set_scene(k)


def _bioio_tiles(
    path: Path, pixel_um: float | None, scene: int | str | None
) -> tuple[list[tuple[float, float]], float | None, list[str], Any, np.ndarray | None, int]:
    """Positions (x, y) in pixels, the recorded pixel size, channel names, the reader, the
    stage position (um) of position 0 where the file records it in a length unit (LIF;
    ``pixel_um`` given overrides the recorded pixel size there), and the scene's index
    (``scene``; None: the file's default). Called under the file's lock."""
    r = _reader(path)
    k = _scene(path, r, scene)
    _at_scene(r, k)
    px = getattr(r.physical_pixel_sizes, "X", None) or None  # 0: none recorded
    if px is not None and not plausible_pixel_size(px):
        if not pixel_um:  # a placeholder would place every tile wrongly (0.5 mm: all at one spot)
            raise ConfigError(implausible_note(path, px))
        px = None  # the given size stands
    channels = [str(c) for c in (r.channel_names or [])]
    if path.suffix.lower() == ".lif":
        xy, origin = _lif_positions(path, r, pixel_um or px)
        return xy, px, channels, r, origin, k
    if _positions_are_scenes(path, r):
        if scene is not None:
            raise ConfigError(f"'{path}': an ND2's XY positions are its tiles; it has no "
                              "scenes to choose")  # fmt: skip
        xy, origin = _scene_positions(path, r, pixel_um or px)
        return xy, px, channels, r, origin, 0
    yx = None
    if hasattr(r, "get_mosaic_tile_positions"):
        try:
            yx = r.get_mosaic_tile_positions()
        except Exception:  # a reader without mosaic support for this file
            yx = None
    if yx:
        return [(float(x), float(y)) for y, x in yx], px, channels, r, None, k
    raise UnsupportedFormatError(
        f"'{path}': no mosaic tile positions found in scene {k} (the file's scenes: "
        f"{_names(r.scenes)}); choose another (--scene / scene=) or export the tiles with "
        "a tile table"
    )


def _other_mosaics(path: Path, r: Any, k: int) -> list[str]:
    """Names of the scenes of ``path`` other than ``k`` that are mosaics too (a LIF's other
    tile scans; a CZI's other scenes)."""
    if path.suffix.lower() == ".lif":
        return [str(r.scenes[j]) for j in sorted(_LIF_SCANS.get(r, {})) if j != k]
    if path.suffix.lower() == ".czi":
        return [str(n) for j, n in enumerate(r.scenes) if j != k]
    return []


def _lif_scans(source: str) -> dict[int, Any]:
    """Scene index -> ``TileScanInfo`` (liffile's :class:`LifTileScanInfo`) of each image of a
    LIF file that is a tile scan (its ``M`` axis over one tile, a ``TileScanInfo`` entry per
    tile). ``source``: a path that reaches the checked file (``/proc/self/fd/N``)."""
    from liffile import LifFile

    found = {}
    with LifFile(source) as lif:
        for k, image in enumerate(lif.images):
            scan = image.tilescan
            if scan is not None and image.sizes.get("M", 1) > 1 and len(scan) == image.sizes["M"]:
                found[k] = scan
    return found


def _lif_positions(
    path: Path, r: Any, pixel_um: float | None
) -> tuple[list[tuple[float, float]], np.ndarray | None]:
    """Tile positions (x, y) in pixels of a LIF tile scan, and the stage position (um) of
    position 0 (None where the flags turn the image's axes against the stage's): the stage
    positions the current scene's ``TileScanInfo`` records (``PosX``/``PosY``,
    metres), turned to the image's axes as its flags say (``SwapXY`` first, then
    ``FlipX``/``FlipY``: that axis runs against the image's), over the pixel size.
    (bioio-lif's own mosaic positions assume a one-pixel overlap between grid fields, which
    an overlapping tile scan does not have.)"""
    scan = _LIF_SCANS.get(r, {}).get(r.current_scene_index)
    if scan is None:
        raise UnsupportedFormatError(
            f"'{path}': image {r.current_scene!r} is no tile scan with stage positions "
            f"(TileScanInfo; the file's images: {_names(r.scenes)}); choose a tile scan "
            "(--scene / scene=) or export the tiles with a tile table"
        )
    if not pixel_um:
        raise ConfigError(
            f"'{path}' records its stage positions in metres but no pixel size: give it "
            "(--pixel-size / pixel_size_um=)"
        )
    px, py = (getattr(r.physical_pixel_sizes, a, None) for a in ("X", "Y"))
    if px and py and not same_pixel_size(float(py), float(px)):  # as recorded
        raise UnsupportedFormatError(
            f"'{path}': its pixels are not square ({float(px):g} um across, {float(py):g} um "
            "down); export the tiles with a tile table instead"
        )
    x_m = np.asarray(scan.tiles["pos_x"], dtype=float)
    y_m = np.asarray(scan.tiles["pos_y"], dtype=float)
    if scan.swap_xy:
        x_m, y_m = y_m, x_m
    um = np.column_stack([-x_m if scan.flip_x else x_m, -y_m if scan.flip_y else y_m]) * 1e6
    if not np.all(np.isfinite(um)):
        raise UnsupportedFormatError(f"'{path}': a tile's stage position is not a number")
    origin = um.min(axis=0)
    xy = [(float(x), float(y)) for x, y in (um - origin) / float(pixel_um)]
    # an image whose axes run against the stage's: no translation places it on the stage
    turned = scan.swap_xy or scan.flip_x or scan.flip_y
    return xy, None if turned else origin


def _focus_um(r: Any, **where: int) -> float | None:
    """The ``FocusPosition`` a CZI records for the subblock(s) at ``where`` (um), if any."""
    try:
        node = r.get_subblock_metadata(**where).find(".//FocusPosition")
        return None if node is None else value_um(node.text, "um")
    except Exception:  # a reader or a file without subblock metadata
        return None


def _bioio_z(r: Any, n: int) -> tuple[np.ndarray, float | None, bool]:
    """Z position of each tile's first plane along the stack (um; zeros where the file records
    none), the z step (um), and whether the positions are recorded, for a reader whose tiles
    have several planes. A CZI records the focus drive's position per subblock
    (``FocusPosition``)."""
    step = getattr(r.physical_pixel_sizes, "Z", None)
    step = float(step) if step and step > 0 else None
    if not hasattr(r, "get_subblock_metadata"):
        return np.zeros(n), step, False
    first = [_focus_um(r, M=m, Z=0) for m in range(n)]
    if any(v is None for v in first):
        return np.zeros(n), step, False
    starts = np.asarray(first, dtype=float)
    second = _focus_um(r, M=0, Z=1)
    moved = None if second is None or second == starts[0] else second - float(starts[0])
    step = step or (abs(moved) if moved else None)
    sign = -1.0 if moved is not None and moved < 0 else 1.0
    return sign * starts, step, True


def _bioio_shape(r: Any, zsel: ZSel, ref: str) -> tuple[int, ...]:
    d = r.dims
    z = getattr(d, "Z", 1)
    plane_index(zsel, z, ref)
    return stack_shape(getattr(d, "C", 1), z, d.Y, d.X, zsel)


def _bioio_plane(r: Any, tile: int, zsel: ZSel, ref: str) -> np.ndarray:
    """Tile ``tile`` (``(C,) (Z,) Y, X``; one plane or the projection ``(C,) Y, X``), refused
    from the reader's dimensions (file metadata) when what is decoded is over the endpoint's
    image budget, before any of its pixels is decoded."""
    from ._limits import EndpointLimits

    dims = r.dims
    z = getattr(dims, "Z", 1)
    k = plane_index(zsel, z, ref)
    order = ("C" if getattr(dims, "C", 1) > 1 else "") + ("Z" if z > 1 and k is None else "")
    order += "YX"
    EndpointLimits.from_env().check_image([getattr(dims, d) for d in order], r.dtype, ref)
    index = {"M": tile} if "M" in dims.order else {}
    if k is not None and z > 1:
        index["Z"] = k
    data = np.asarray(r.get_image_data(order, **index))
    return data.max(axis=data.ndim - 3) if zsel == "max" and "Z" in order else data


# -- public -------------------------------------------------------------------------------------


def vendor_positions(
    path: str | os.PathLike[str],
    *,
    pixel_size_um: float | None = None,
    pixel_size_z_um: float | None = None,
    scene: int | str | None = None,
) -> tuple[list[str], np.ndarray, float | None, dict[str, Any]]:
    """The tiles of an instrument file and their recorded stage positions (the tile table is
    built from them by :func:`scopefx.io.read_tile_table`).

    Parameters
    ----------
    path : str or path-like
        ``*.ome.tif[f]`` (``.ome.btf``), ``*.czi``, ``*.nd2`` or ``*.lif``.
    pixel_size_um : float, optional
        Overrides the recorded pixel size (needed when the file records none).
    pixel_size_z_um : float, optional
        Overrides the recorded z step of z-stack tiles (z positions are in planes of it).
    scene : int or str, optional
        The mosaic to read from a file that holds several (CZI scenes, the images of a LIF
        project): its index from 0 or its name. Default: the first (a LIF's first tile scan),
        with a warning that names the others. An OME-TIFF has none.

    Returns
    -------
    refs : list of str
        Tile references ``/abs/file::tile/N`` (``/abs/file::scene/S/tile/N`` for a scene
        given).
    positions : (N, 2) or (N, 3) ndarray
        Where each tile's pixel (0, 0[, 0]) lands, in pixels, (x, y[, z]), the smallest at 0;
        (x, y, z) when the tiles have several z planes (z in planes of the z step).
    pixel_size_um : float or None
        As recorded (or given).
    extra : dict
        ``channel_names``, ``vendor`` (``"ome"``, ``"czi"``, ...) and, for z-stack tiles,
        ``pixel_size_z_um`` (the z step; ``None`` when the file records none).

    Raises
    ------
    UnsupportedFormatError
        Not a supported file, bioio or its plugin is missing, or no positions are recorded.
        For an OME-TIFF also: its OME-XML describes images in other files (a multi-file set)
        or not one per image series of the file; an image is a time series (``T``); a position
        or pixel size is in a unit that is not a known length (``"reference frame"``); pixels
        are not square (``PhysicalSizeX`` and ``PhysicalSizeY`` differ by over 1 %); the
        images' pixel sizes differ by over 1 % (reduced-resolution copies, label or overview
        images); or they differ in their number of z planes.
    ConfigError
        Positions in micrometres (metres) without any pixel size; a scene the file lacks.
    """
    p = Path(path).resolve()
    kind = _kind(p)
    z_um: np.ndarray | None = None
    z_step = None
    origin_um = None  # the stage position of the first tile's corner, where it is recorded
    prefix = ""
    z_recorded = True  # OME: a plane's PositionZ, else 0 as OME defaults it
    if kind == "ome":
        if scene is not None:
            raise ConfigError(f"'{p}': an OME-TIFF's images are the tiles of one mosaic; it has "
                              "no scenes to choose")  # fmt: skip
        positions, size, channels, z_um, z_step, origin_um = ome_positions(p, pixel_size_um)
    else:
        with _lock(p):
            xy, recorded_px, channels, r, origin_um, k = _bioio_tiles(p, pixel_size_um, scene)
            others = _other_mosaics(p, r, k)
            if getattr(r.dims, "Z", 1) > 1:
                z_um, z_step, z_recorded = _bioio_z(r, len(xy))
            current = str(r.scenes[k])
        if scene is None and others:
            log.warning(
                "%s holds %d mosaics; read: scene %d (%r); not read: %s (--scene / scene= "
                "chooses one)", p, len(others) + 1, k, current, ", ".join(map(repr, others[:8]))
                + (f" and {len(others) - 8} more" if len(others) > 8 else ""),
            )  # fmt: skip
        if scene is not None:
            prefix = f"scene/{k}/"
        size = pixel_size_um or recorded_px
        positions = np.array(xy, dtype=float)
        positions -= positions.min(axis=0)
    extra: dict[str, Any] = {"channel_names": list(channels), "vendor": kind}
    if z_um is not None:
        z_step = pixel_size_z_um or z_step  # given: over the file's own
        if z_step is None:
            log.warning(
                "%s: the tiles are z-stacks but no z step (PhysicalSizeZ) is recorded; the "
                "mosaic's z scale is the xy pixel size (--pixel-size-z / pixel_size_z_um= gives "
                "it)", p,
            )  # fmt: skip
        z_px = (z_um - z_um.min()) / (z_step or size or 1.0)
        positions = np.column_stack([positions, z_px])
        extra["pixel_size_z_um"] = z_step
        if origin_um is not None:
            # no stage z the file never recorded: x, y only (a 2D mosaic of one plane per
            # tile is placed on the stage, the 3D mosaic is not)
            origin_um = np.append(origin_um, z_um.min()) if z_recorded else origin_um
    if origin_um is not None:
        extra["stage_origin_um"] = [float(v) for v in origin_um]
    refs = [f"{p}::{prefix}tile/{k}" for k in range(len(positions))]
    return refs, positions, size, extra


def _no_scene(scene: int | None, ref: str) -> None:
    if scene is not None:
        raise UnsupportedFormatError(
            f"{ref!r}: an OME-TIFF's images are the tiles of one mosaic; it has no scenes"
        )


def plane_ref(ref: str, plane: int | str) -> str:
    """The reference of plane ``plane`` (an index, or ``"max"`` for the maximum-intensity
    projection) of the whole-tile reference ``ref`` (``file::tile/N``)."""
    return f"{ref}/z/{plane}"


def read_vendor_tile(path: Path, part: str | None, ref: str, page: int | None = None) -> np.ndarray:
    """The pixels of ``path::tile/N``: ``(Y, X)``, ``(C, Y, X)`` with several channels,
    ``(C,) Z, Y, X`` for z-stack tiles; ``path::tile/N/z/K`` (plane K) and
    ``path::tile/N/z/max`` (the projection) are ``(C,) Y, X``."""
    scene, tile, zsel = _tile_ref(part, ref)
    kind = _kind(path)
    if kind == "ome":
        _no_scene(scene, ref)
        data = read_ome_tile(path, tile, zsel, ref)
    else:
        r = _reader(path)
        with _lock(path):
            data = _bioio_plane(r, _tile_scene(path, r, scene, tile, ref), zsel, ref)
    return data if page is None else data[page]


def vendor_metadata(path: Path, part: str | None, ref: str) -> dict[str, Any]:
    """Shape, dtype, pixel size and channel names of ``path::tile/N[/z/K]`` without reading
    pixels (OME-TIFF) or from the reader's dimensions (bioio)."""
    scene, tile, zsel = _tile_ref(part, ref)
    kind = _kind(path)
    samples = None
    if kind == "ome":
        _no_scene(scene, ref)
        shape, dtype, px, channels, samples = ome_metadata(path, tile, zsel, ref)
    else:
        r = _reader(path)
        with _lock(path):
            _tile_scene(path, r, scene, tile, ref)
            channels = [str(c) for c in (r.channel_names or [])]
            shape = _bioio_shape(r, zsel, ref)
            dtype = str(r.dtype)
            px = getattr(r.physical_pixel_sizes, "X", None)
    return {"shape": shape, "dtype": dtype, "pixel_size_um": px, "channel_names": channels,
            "vendor": kind, "samples": samples}  # fmt: skip
