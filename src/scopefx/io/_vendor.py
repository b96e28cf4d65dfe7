"""Tiles inside instrument files that record their stage positions: OME-TIFF, CZI, ND2, LIF.

:func:`vendor_positions` reads, and :func:`scopefx.io.read_tile_table` turns, such a file into a
:class:`~scopefx.io.TileTable` whose tiles are references of the form
``/abs/experiment.czi::tile/3`` (the fourth tile as listed), which :func:`scopefx.io.read_image`
and :func:`scopefx.io.read_metadata` read through :func:`read_vendor_tile` and
:func:`vendor_metadata`. Positions are the recorded stage positions divided by the recorded
pixel size (mosaic pixels, the first tile's corner where it lies); ``table.pixel_size_um`` and
``table.extra["channel_names"]`` carry what the file says.

OME-TIFF is read with tifffile (each OME ``Image`` is a tile, placed by its first ``Plane``'s
``PositionX/PositionY``, else its ``StageLabel``), from the file given alone: an OME-XML that
describes images in other files (a multi-file set) is refused, as are images that are not
tiles of one mosaic of square pixels (time series, non-square pixels, pixel sizes that differ:
see :func:`vendor_positions`). CZI, ND2 and LIF are read with bioio and its
plugins (``pip install "scopefx[vendor]"``): a CZI's mosaic tiles (its ``M`` axis) are placed by
the subblock positions; ND2 and LIF scenes by the scene positions bioio reports.

Tiles with several z planes are ``(C,) Z, Y, X`` stacks: the table is 3D, each tile placed at
its recorded z (OME ``Plane PositionZ`` of its first plane, a CZI subblock's
``FocusPosition``; else 0) divided by the z step (``PhysicalSizeZ``), which the table carries
as ``pixel_size_z_um``. ``file::tile/N/z/K`` is plane ``K`` of tile ``N`` and
``file::tile/N/z/max`` its maximum-intensity projection, both ``(C,) Y, X``;
:func:`scopefx.io.flatten_z` turns a 3D table into a 2D one of such references.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import itertools
import logging
import math
import os
import threading
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptImageError, UnsupportedFormatError
from ._units import LENGTH_UNITS, length_um

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
_OME_ENDINGS = (".ome.tif", ".ome.tiff")
#: Pixel sizes that differ by more than this fraction are not the same pixel size.
_SAME_SIZE = 0.01
#: The bioio plugin that reads each suffix.
_PLUGINS = {".czi": "bioio_czi", ".nd2": "bioio_nd2", ".lif": "bioio_lif"}
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def is_vendor_file(path: str | os.PathLike[str]) -> bool:
    """True for a ``.czi``/``.nd2``/``.lif`` file or an OME-TIFF (``.ome.tif[f]``)."""
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


ZSel = int | str | None
"""A plane of a z-stack tile: ``None`` (the whole stack), a plane index, or ``"max"``."""


def _tile_ref(part: str | None, ref: str) -> tuple[int, ZSel]:
    """``tile/N`` -> ``(N, None)``, ``tile/N/z/K`` -> ``(N, K)``, ``tile/N/z/max`` ->
    ``(N, "max")``."""
    head, _, rest = (part or "").partition("/")
    number, _, zpart = rest.partition("/")
    zhead, _, zvalue = zpart.partition("/")
    ok = head == "tile" and _index(number)
    if zpart:
        ok = ok and zhead == "z" and (_index(zvalue) or zvalue == "max")
    if not ok:
        raise UnsupportedFormatError(
            f"{ref!r}: a tile inside an instrument file is referenced as 'file::tile/N' "
            f"(N = 0, 1, ...), or one of its z planes as 'file::tile/N/z/K' or "
            f"'file::tile/N/z/max', got {part!r}"
        )
    if not zpart:
        return int(number), None
    return int(number), (int(zvalue) if _index(zvalue) else "max")


def _index(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``'²'``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _plane(zsel: ZSel, size_z: int, ref: str) -> int | None:
    """The plane index ``zsel`` names (``None`` for the whole stack or its projection),
    refused when the tile has no such plane."""
    if isinstance(zsel, int) and not 0 <= zsel < size_z:
        raise ConfigError(
            f"{ref!r}: z plane {zsel} does not exist; the tile has {size_z} plane(s), "
            f"0 to {size_z - 1}"
        )
    return zsel if isinstance(zsel, int) else None


def _stack_shape(c: int, z: int, y: int, x: int, zsel: ZSel) -> tuple[int, ...]:
    """Shape of what a reference returns: ``(C,) (Z,) Y, X``, C and Z only when over 1, Z
    gone for one plane or the projection."""
    return ((c,) if c > 1 else ()) + ((z,) if z > 1 and zsel is None else ()) + (y, x)


def _lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(os.fspath(path), threading.Lock())


# -- OME-TIFF -----------------------------------------------------------------------------------


def _um(value: str | None, unit: str | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    factor = length_um(unit or "µm")
    return None if factor is None or not math.isfinite(v) else v * factor


#: Unit attributes a length read from the OME-XML found no conversion for: ``(attribute,
#: unit, role)``, role ``"xy"`` (stage x, y), ``"z"`` (stage z, z step) or ``"px"`` (pixel size).
Unknown = list[tuple[str, str, str]]


def _length(
    elem: ET.Element, name: str, unit_name: str, role: str, unknown: Unknown
) -> float | None:
    """Attribute ``name`` of ``elem`` in micrometres, by its unit attribute ``unit_name``
    (µm where absent); a unit that is not a known length is noted in ``unknown``."""
    value, unit = elem.get(name), elem.get(unit_name)
    if value is not None and unit is not None and length_um(unit) is None:
        unknown.append((unit_name, unit, role))
    return _um(value, unit)


@contextlib.contextmanager
def _ome_tiff(path: Path) -> Iterator[Any]:
    """The OME-TIFF opened through the confined opener (a regular file inside the roots), with
    tifffile's multi-file OME reading off: an OME-XML that names other files (``/abs/x.tif``,
    ``../y.tif``) never makes it open them."""
    import tifffile

    from ._confine import open_binary

    with open_binary(path) as fh, tifffile.TiffFile(fh, name=path.name, _multifile=False) as tif:
        yield tif


def _channel_names(pixels: ET.Element) -> list[str]:
    return [c.get("Name") or f"C{i}" for i, c in enumerate(pixels.findall("{*}Channel"))]


def _first_planes(pixels: ET.Element) -> tuple[ET.Element | None, ET.Element | None]:
    """The ``Plane`` elements of z 0 and z 1 (channel 0, time 0) where recorded."""
    found: dict[int, ET.Element] = {}
    for plane in pixels.findall("{*}Plane"):
        z = plane.get("TheZ", "0")
        if plane.get("TheC", "0") == "0" and plane.get("TheT", "0") == "0" and _index(z):
            found.setdefault(int(z), plane)
    return found.get(0), found.get(1)


def _ome_z(pixels: ET.Element, unknown: Unknown) -> dict[str, Any]:
    """Planes, z position of the first plane (um), direction of the stack along the stage z
    (+1/-1) and the z step (um): ``PhysicalSizeZ``, else the distance of the first two
    planes' ``PositionZ``."""
    z0, z1 = _first_planes(pixels)

    def position(plane: ET.Element | None) -> float | None:
        return None if plane is None else _length(plane, "PositionZ", "PositionZUnit", "z", unknown)

    at0, at1 = position(z0), position(z1)
    step = _length(pixels, "PhysicalSizeZ", "PhysicalSizeZUnit", "z", unknown)
    moved = None if at0 is None or at1 is None or at0 == at1 else at1 - at0
    if not (step and step > 0):
        step = abs(moved) if moved else None
    return {
        "size_z": int(pixels.get("SizeZ", 1) or 1),
        "z_um": at0,
        "z_dir": -1.0 if moved is not None and moved < 0 else 1.0,
        "z_step_um": step,
    }


def _ome_images(path: Path) -> list[dict[str, Any]]:
    """The OME ``Image`` elements of an OME-TIFF that hold pixels, image ``k`` being the file's
    image series ``k`` (which tifffile lists one per such Image, in order): what places each
    one, and that series' axes and shape.

    Refused where that pairing would not hold: the OME-XML of a multi-file set (Images, or
    some of their planes, in other files, which are not read), or a file whose series are
    not one per Image (tifffile read it as a generic TIFF, or skipped an Image without data).
    """
    with _ome_tiff(path) as tif:
        xml = tif.ome_metadata
        series = [(str(s.kind), str(s.axes), tuple(int(n) for n in s.shape)) for s in tif.series]
    if not xml:
        raise CorruptImageError(f"'{path}' has no OME-XML: it is a plain TIFF, not an OME-TIFF")
    root = ET.fromstring(xml)
    found = [
        (im, px) for im in root.findall("{*}Image") if (px := im.find("{*}Pixels")) is not None
    ]
    if not found:
        return []
    _ome_one_file(path, root, [px for _, px in found], series)
    images = []
    for k, ((image, pixels), (_, axes, shape)) in enumerate(zip(found, series, strict=True)):
        unknown: Unknown = []
        plane = pixels.find("{*}Plane")
        x = y = None
        if plane is not None:
            x = _length(plane, "PositionX", "PositionXUnit", "xy", unknown)
            y = _length(plane, "PositionY", "PositionYUnit", "xy", unknown)
        stage = image.find("{*}StageLabel")
        if (x is None or y is None) and stage is not None:
            x = _length(stage, "X", "XUnit", "xy", unknown)
            y = _length(stage, "Y", "YUnit", "xy", unknown)
        name = image.get("Name")
        images.append(
            {
                "series": k,
                "name": f"image {k}" + (f" ({name!r})" if name else ""),
                "position_um": None if x is None or y is None else (x, y),
                "pixel_size_um": _length(
                    pixels, "PhysicalSizeX", "PhysicalSizeXUnit", "px", unknown
                ),
                "pixel_size_y_um": _length(
                    pixels, "PhysicalSizeY", "PhysicalSizeYUnit", "px", unknown
                ),
                "channels": _channel_names(pixels),
                "shape": (int(pixels.get("SizeY", 0)), int(pixels.get("SizeX", 0))),
                "axes": axes,
                "series_shape": shape,
                "unknown_units": unknown,
                **_ome_z(pixels, unknown),
            }
        )
    return images


def _ome_one_file(
    path: Path, root: ET.Element, pixels: list[ET.Element], series: list[Any]
) -> None:
    """Refuses an OME-XML whose Images are not all in this file, or not one series each.

    A ``TiffData`` whose ``UUID`` is not the file's own (the root's ``UUID``; without one, a
    ``FileName`` other than this file's name) places planes in another file: tifffile's rule.
    """
    own = (root.get("UUID") or "").strip()
    elsewhere: dict[int, str] = {}
    for k, px in enumerate(pixels):
        for data in px.findall("{*}TiffData"):
            uuid = data.find("{*}UUID")
            if uuid is None:
                continue
            text, name = (uuid.text or "").strip(), uuid.get("FileName", "")
            if (text != own) if own else (name.lower() != path.name.lower()):
                elsewhere.setdefault(k, name or text)
    n = len(pixels)
    if elsewhere:
        k, other = next(iter(elsewhere.items()))
        raise UnsupportedFormatError(
            f"'{path}': its OME-XML describes {n} image(s), of which {len(elsewhere)} "
            f"{'is' if len(elsewhere) == 1 else 'are'} (wholly or in part) in other files "
            f"(image {k} in {other!r}); multi-file OME-TIFF sets (one file per position, as "
            "Micro-Manager writes them, or one set split over several files) are not read, only "
            "the file given is. Save the set as one OME-TIFF (e.g. Fiji: open it with "
            "Bio-Formats, save it with the Bio-Formats Exporter), or list the files and their "
            "stage positions in a tile table (path,x_um,y_um)"
        )
    kinds = sorted({kind for kind, _, _ in series})
    if len(series) != n or kinds != ["ome"]:
        raise UnsupportedFormatError(
            f"'{path}': its OME-XML describes {n} image(s) but the file holds {len(series)} "
            f"image series ({'/'.join(kinds) or 'none'}), so which series is which image cannot "
            "be told (an Image whose TiffData names no plane of this file?); save the file "
            "again as an OME-TIFF (e.g. with bfconvert or Fiji's Bio-Formats Exporter), or give "
            "a tile table"
        )


def _ome_layout(series: Any, ref: str) -> tuple[str, tuple[int, ...]]:
    """The series' axes and shape (:func:`_ome_axes`)."""
    axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
    _ome_axes(axes, shape, ref)
    return axes, shape


def _ome_axes(axes: str, shape: tuple[int, ...], ref: str) -> None:
    """Refuses an OME image with more than C, Z, Y, X (or C, Y, X and samples): a time
    series (``T``), or a z-stack of colour samples."""
    grey = axes[:-1] if axes.endswith("S") and "Z" not in axes else axes
    if set(grey) <= set("CZYX") and grey.endswith("YX"):
        return
    time = (
        "; its T axis is a time series, not tiles of a mosaic: save one time point per file "
        "(e.g. Fiji: Image > Duplicate, one frame) and fuse each"
        if "T" in axes else ""
    )  # fmt: skip
    raise UnsupportedFormatError(
        f"{ref!r}: an OME image with axes {axes} {list(shape)}; tiles are read with the axes "
        f"C, Z, Y, X only (one time point; z-stacks of grey samples){time}"
    )


def _ome_shape(series: Any, zsel: ZSel, ref: str) -> tuple[int, ...]:
    axes, shape = _ome_layout(series, ref)
    if "Z" not in axes:
        _plane(zsel, 1, ref)
        return shape
    size = dict(zip(axes, shape, strict=True))
    _plane(zsel, size["Z"], ref)
    return _stack_shape(size.get("C", 1), size["Z"], size["Y"], size["X"], zsel)


def _ome_tile(tif: Any, tile: int, ref: str) -> int:
    """``tile``, refused when the file has fewer series."""
    if tile >= len(tif.series):
        raise ConfigError(f"{ref!r}: tile {tile} of {len(tif.series)}")
    return tile


def _ome_read(tif: Any, tile: int, zsel: ZSel, ref: str) -> np.ndarray:
    """Tile ``tile`` as ``(C,) (Z,) Y, X``, one plane or the projection as ``(C,) Y, X``;
    refused over the image budget (what is decoded: the stack, or one plane's pages) before
    any pixel is decoded."""
    from ._limits import EndpointLimits

    series = tif.series[tile]
    axes, shape = _ome_layout(series, ref)
    limits = EndpointLimits.from_env()
    k = _plane(zsel, dict(zip(axes, shape, strict=True)).get("Z", 1), ref)
    if "Z" in axes and k is not None:  # only the pages of plane k
        lead = shape[:-2]
        grid = [[k] if a == "Z" else range(n) for a, n in zip(axes[:-2], lead, strict=True)]
        pages = [int(np.ravel_multi_index(i, lead)) for i in itertools.product(*grid)]
        out_shape = _ome_shape(series, zsel, ref)
        limits.check_image(out_shape, series.dtype, ref)
        return np.asarray(tif.asarray(series=tile, key=pages)).reshape(out_shape)
    limits.check_image(shape, series.dtype, ref)
    data = series.asarray()
    if "Z" not in axes:
        return np.asarray(data)
    data = np.transpose(data, sorted(range(len(axes)), key=lambda i: "CZYX".index(axes[i])))
    return data.max(axis=data.ndim - 3) if zsel == "max" else data


def _ome_positions(
    p: Path, pixel_size_um: float | None
) -> tuple[np.ndarray, float | None, list[str], np.ndarray | None, float | None]:
    """Positions (x, y) in pixels, pixel size, channel names, and for z-stack tiles the z
    position of each tile's first plane and the z step (um), of an OME-TIFF's images;
    refused where they are not tiles of one mosaic that can be placed."""
    images = _ome_images(p)
    if not images:
        raise CorruptImageError(f"'{p}': the OME-XML describes no image")
    for im in images:  # a time series, before its time points would be read as channels
        _ome_axes(im["axes"], im["series_shape"], f"{p}::tile/{im['series']}")
    _ome_units(p, images, pixel_size_given=bool(pixel_size_um))
    missing = [im["series"] for im in images if im["position_um"] is None]
    if missing:
        raise UnsupportedFormatError(
            f"'{p}': OME images {missing[:5]} record no stage position (Plane PositionX/Y "
            "or StageLabel); give a tile table instead"
        )
    _ome_pixel_sizes(p, images)
    size = pixel_size_um or images[0]["pixel_size_um"]
    if not size:
        raise ConfigError(
            f"'{p}': stage positions are in micrometres but no pixel size is recorded; "
            "give it (--pixel-size / pixel_size_um=)"
        )
    um = np.array([im["position_um"] for im in images], dtype=float)
    positions = (um - um.min(axis=0)) / size
    planes = sorted({im["size_z"] for im in images})
    if len(planes) > 1:
        raise UnsupportedFormatError(
            f"'{p}': its OME images have different numbers of z planes {planes}; tiles of "
            "one mosaic are all single planes or all z-stacks"
        )
    if planes[0] == 1:
        return positions, size, images[0]["channels"], None, None
    recorded = [im["z_um"] for im in images]  # all, or none: each at z 0
    known = all(v is not None for v in recorded)
    z_um = np.array([im["z_dir"] * im["z_um"] if known else 0.0 for im in images])
    return positions, size, images[0]["channels"], z_um, images[0]["z_step_um"]


def _ome_units(p: Path, images: list[dict[str, Any]], *, pixel_size_given: bool) -> None:
    """Refuses a length whose unit is not known where it is needed: the position of an image
    placed by nothing else, the z of z-stack tiles, the pixel size unless one is given."""
    for im in images:
        for attr, unit, role in im["unknown_units"]:
            needed = {
                "xy": im["position_um"] is None,
                "z": im["size_z"] > 1,
                "px": not pixel_size_given,
            }[role]
            if not needed:
                continue
            fix = (
                "give the pixel size (--pixel-size / pixel_size_um=)"
                if role == "px"
                else "give a tile table with the positions in micrometres (x_um, y_um) or "
                "pixels instead"
            )
            raise UnsupportedFormatError(
                f"'{p}': OME {im['name']} records {attr}={unit!r}, not a unit of length "
                f"scopefx converts to micrometres ({', '.join(LENGTH_UNITS)}); {fix}"
            )


def _ome_pixel_sizes(p: Path, images: list[dict[str, Any]]) -> None:
    """Refuses non-square pixels, and images whose pixel size is not the first image's (within
    1 %): the mosaic has one pixel size, and reduced-resolution copies of an image or a
    slide's label and overview images are no tiles of it."""

    def same(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a is b  # both unrecorded
        return abs(a - b) <= _SAME_SIZE * b

    def um(v: float | None) -> str:
        return "none recorded" if v is None else f"{v:g} µm"

    for im in images:
        x, y = im["pixel_size_um"], im["pixel_size_y_um"]
        if x is not None and y is not None and not same(y, x):
            raise UnsupportedFormatError(
                f"'{p}': OME {im['name']} has non-square pixels, PhysicalSizeX {um(x)} by "
                f"PhysicalSizeY {um(y)}; non-square pixels are not supported (a mosaic has one "
                "pixel size): resample the tiles to square pixels first (e.g. Fiji: Image > "
                "Scale), then fuse them from a tile table"
            )
    first = images[0]
    odd = [im for im in images[1:] if not same(im["pixel_size_um"], first["pixel_size_um"])]
    if odd:
        named = ", ".join(f"{im['name']} {um(im['pixel_size_um'])}" for im in odd[:5])
        more = f" and {len(odd) - 5} more" if len(odd) > 5 else ""
        raise UnsupportedFormatError(
            f"'{p}': its OME images differ in pixel size (PhysicalSizeX): {named}{more}, "
            f"where {first['name']} has {um(first['pixel_size_um'])}; the tiles of one mosaic "
            "share one pixel size (within 1 %). Reduced-resolution copies (a flattened "
            "multi-resolution file) and a slide's label or overview images are not tiles: "
            "save the full-resolution tiles alone, or give a tile table naming them"
        )


# -- bioio (CZI, ND2, LIF) -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _bioio_reader(path: str, mtime: float) -> Any:
    """A bioio reader of ``path``, which is first opened and checked by the confined opener.

    bioio readers open the file themselves, again on every read. The reader is given
    ``/proc/self/fd/N`` of the checked descriptor, which reaches the file that was checked
    whatever is at ``path`` by then; the descriptor lives as long as the reader (in this
    cache). The plugin is chosen here by the real name's suffix (bioio would choose it by the
    name it is given): ``bioio_czi`` (tested), ``bioio_nd2`` and ``bioio_lif``, which
    recognise a file by its content, not its name (not installed here: untested).
    """
    from ._confine import open_read

    fd = open_read(path)
    try:
        plugin = importlib.import_module(_PLUGINS[Path(path).suffix.lower()])
        pinned = f"/proc/self/fd/{fd}"
        # bioio_czi reads with aicspylibczi by default: mosaic tiles on the M axis
        reader = plugin.Reader(pinned if os.path.exists(pinned) else path)
    except BaseException as exc:
        os.close(fd)
        if isinstance(exc, ImportError):
            raise _needs_bioio(path, exc) from None
        raise
    weakref.finalize(reader, os.close, fd)
    return reader


def _needs_bioio(path: str, exc: ImportError) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"reading '{path}' needs bioio and its plugin for this format ({exc.name} is not "
        'installed): pip install "scopefx[vendor]"'
    )


def _reader(path: Path) -> Any:
    return _bioio_reader(os.fspath(path.resolve()), path.stat().st_mtime)


def _bioio_tiles(path: Path) -> tuple[list[tuple[float, float]], float | None, list[str], Any]:
    """Positions (x, y) in pixels, pixel size, channel names, and the reader."""
    r = _reader(path)
    px = getattr(r.physical_pixel_sizes, "X", None)
    channels = [str(c) for c in (r.channel_names or [])]
    if hasattr(r, "get_mosaic_tile_positions"):
        try:
            yx = r.get_mosaic_tile_positions()
        except Exception:  # a reader without mosaic support for this file
            yx = None
        if yx:
            return [(float(x), float(y)) for y, x in yx], px, channels, r
    raise UnsupportedFormatError(
        f"'{path}': no mosaic tile positions found (scenes {list(r.scenes)}); export the tiles "
        "with a tile table instead"
    )


def _focus_um(r: Any, **where: int) -> float | None:
    """The ``FocusPosition`` a CZI records for the subblock(s) at ``where`` (um), if any."""
    try:
        node = r.get_subblock_metadata(**where).find(".//FocusPosition")
        return None if node is None else _um(node.text, "um")
    except Exception:  # a reader or a file without subblock metadata
        return None


def _bioio_z(r: Any, n: int) -> tuple[np.ndarray, float | None]:
    """Z position of each tile's first plane along the stack (um; zeros where the file records
    none) and the z step (um), for a reader whose tiles have several planes. A CZI records
    the focus drive's position per subblock (``FocusPosition``)."""
    step = getattr(r.physical_pixel_sizes, "Z", None)
    step = float(step) if step and step > 0 else None
    if not hasattr(r, "get_subblock_metadata"):
        return np.zeros(n), step
    first = [_focus_um(r, M=m, Z=0) for m in range(n)]
    if any(v is None for v in first):
        return np.zeros(n), step
    starts = np.asarray(first, dtype=float)
    second = _focus_um(r, M=0, Z=1)
    moved = None if second is None or second == starts[0] else second - float(starts[0])
    step = step or (abs(moved) if moved else None)
    sign = -1.0 if moved is not None and moved < 0 else 1.0
    return sign * starts, step


def _bioio_shape(r: Any, zsel: ZSel, ref: str) -> tuple[int, ...]:
    d = r.dims
    z = getattr(d, "Z", 1)
    _plane(zsel, z, ref)
    return _stack_shape(getattr(d, "C", 1), z, d.Y, d.X, zsel)


def _bioio_plane(r: Any, tile: int, zsel: ZSel, ref: str) -> np.ndarray:
    """Tile ``tile`` (``(C,) (Z,) Y, X``; one plane or the projection ``(C,) Y, X``), refused
    from the reader's dimensions (file metadata) when what is decoded is over the endpoint's
    image budget, before any of its pixels is decoded."""
    from ._limits import EndpointLimits

    dims = r.dims
    z = getattr(dims, "Z", 1)
    k = _plane(zsel, z, ref)
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
    path: str | os.PathLike[str], *, pixel_size_um: float | None = None
) -> tuple[list[str], np.ndarray, float | None, dict[str, Any]]:
    """The tiles of an instrument file and their recorded stage positions (the tile table is
    built from them by :func:`scopefx.io.read_tile_table`).

    Parameters
    ----------
    path : str or path-like
        ``*.ome.tif[f]``, ``*.czi``, ``*.nd2`` or ``*.lif``.
    pixel_size_um : float, optional
        Overrides the recorded pixel size (needed when the file records none).

    Returns
    -------
    refs : list of str
        Tile references ``/abs/file::tile/N``.
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
        Positions in micrometres without any pixel size.
    """
    p = Path(path).resolve()
    kind = _kind(p)
    z_um: np.ndarray | None = None
    z_step = None
    if kind == "ome":
        positions, size, channels, z_um, z_step = _ome_positions(p, pixel_size_um)
    else:
        xy, recorded_px, channels, r = _bioio_tiles(p)
        size = pixel_size_um or recorded_px
        positions = np.array(xy, dtype=float)
        positions -= positions.min(axis=0)
        if getattr(r.dims, "Z", 1) > 1:
            z_um, z_step = _bioio_z(r, len(positions))
    extra: dict[str, Any] = {"channel_names": list(channels), "vendor": kind}
    if z_um is not None:
        if z_step is None:
            log.warning(
                "%s: the tiles are z-stacks but no z step (PhysicalSizeZ) is recorded; the "
                "mosaic's z scale is the xy pixel size", p,
            )  # fmt: skip
        z_px = (z_um - z_um.min()) / (z_step or size or 1.0)
        positions = np.column_stack([positions, z_px])
        extra["pixel_size_z_um"] = z_step
    refs = [f"{p}::tile/{k}" for k in range(len(positions))]
    return refs, positions, size, extra


def plane_ref(ref: str, plane: int | str) -> str:
    """The reference of plane ``plane`` (an index, or ``"max"`` for the maximum-intensity
    projection) of the whole-tile reference ``ref`` (``file::tile/N``)."""
    return f"{ref}/z/{plane}"


def read_vendor_tile(path: Path, part: str | None, ref: str, page: int | None = None) -> np.ndarray:
    """The pixels of ``path::tile/N``: ``(Y, X)``, ``(C, Y, X)`` with several channels,
    ``(C,) Z, Y, X`` for z-stack tiles; ``path::tile/N/z/K`` (plane K) and
    ``path::tile/N/z/max`` (the projection) are ``(C,) Y, X``."""
    tile, zsel = _tile_ref(part, ref)
    kind = _kind(path)
    if kind == "ome":
        with _ome_tiff(path) as tif:
            data = _ome_read(tif, _ome_tile(tif, tile, ref), zsel, ref)
    else:
        r = _reader(path)
        with _lock(path):
            n = r.dims.M if "M" in r.dims.order else 1
            if tile >= n:
                raise ConfigError(f"{ref!r}: tile {tile} of {n}")
            data = _bioio_plane(r, tile, zsel, ref)
    return data if page is None else data[page]


def vendor_metadata(path: Path, part: str | None, ref: str) -> dict[str, Any]:
    """Shape, dtype, pixel size and channel names of ``path::tile/N[/z/K]`` without reading
    pixels (OME-TIFF) or from the reader's dimensions (bioio)."""
    tile, zsel = _tile_ref(part, ref)
    kind = _kind(path)
    samples = None
    if kind == "ome":
        from ._samples import tiff_samples

        with _ome_tiff(path) as tif:
            series = tif.series[_ome_tile(tif, tile, ref)]
            shape, dtype = _ome_shape(series, zsel, ref), str(series.dtype)
            if series.axes.endswith("S"):  # what its samples are, as for a plain TIFF
                samples = tiff_samples(series.keyframe)
        image = _ome_images(path)[tile]
        px, channels = image["pixel_size_um"], image["channels"]
    else:
        r = _reader(path)
        with _lock(path):
            channels = [str(c) for c in (r.channel_names or [])]
            shape = _bioio_shape(r, zsel, ref)
            dtype = str(r.dtype)
            px = getattr(r.physical_pixel_sizes, "X", None)
    return {"shape": shape, "dtype": dtype, "pixel_size_um": px, "channel_names": channels,
            "vendor": kind, "samples": samples}  # fmt: skip
