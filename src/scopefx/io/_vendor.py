"""Tiles inside instrument files that record their stage positions: OME-TIFF, CZI, ND2, LIF.

:func:`vendor_positions` reads, and :func:`scopefx.io.read_tile_table` turns, such a file into a
:class:`~scopefx.io.TileTable` whose tiles are references of the form
``/abs/experiment.czi::tile/3`` (the fourth tile as listed), which :func:`scopefx.io.read_image`
and :func:`scopefx.io.read_metadata` read through :func:`read_vendor_tile` and
:func:`vendor_metadata`. Positions are the recorded stage positions divided by the recorded
pixel size (mosaic pixels, the first tile's corner where it lies); ``table.pixel_size_um`` and
``table.extra["channel_names"]`` carry what the file says.

OME-TIFF is read with tifffile (each OME ``Image`` is a tile, placed by its first ``Plane``'s
``PositionX/PositionY``, else its ``StageLabel``). CZI, ND2 and LIF are read with bioio and its
plugins (``pip install "scopefx[vendor]"``): a CZI's mosaic tiles (its ``M`` axis) are placed by
the subblock positions; ND2 and LIF scenes by the scene positions bioio reports.
"""

from __future__ import annotations

import contextlib
import functools
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

__all__ = ["is_vendor_file", "read_vendor_tile", "vendor_metadata", "vendor_positions"]

#: Suffixes of files read here (``.ome.tif``/``.ome.tiff`` by their full ending).
VENDOR_SUFFIXES = (".czi", ".nd2", ".lif")
_OME_ENDINGS = (".ome.tif", ".ome.tiff")
_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6, "cm": 1e4}
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


def _tile_index(part: str | None, ref: str) -> int:
    head, _, number = (part or "").partition("/")
    if head != "tile" or not number.isdigit():
        raise UnsupportedFormatError(
            f"{ref!r}: a tile inside an instrument file is referenced as 'file::tile/N' "
            f"(N = 0, 1, ...), got {part!r}"
        )
    return int(number)


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
    factor = _TO_UM.get((unit or "µm").strip().lower().replace("μ", "µ"))
    return None if factor is None or not math.isfinite(v) else v * factor


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


def _ome_images(path: Path) -> list[dict[str, Any]]:
    with _ome_tiff(path) as tif:
        xml = tif.ome_metadata
        n_series = len(tif.series)
    if not xml:
        raise CorruptImageError(f"'{path}' has no OME-XML: it is a plain TIFF, not an OME-TIFF")
    root = ET.fromstring(xml)
    images = []
    for k, image in enumerate(root.findall("{*}Image")):
        pixels = image.find("{*}Pixels")
        if pixels is None:
            continue
        plane = pixels.find("{*}Plane")
        x = y = None
        if plane is not None:
            x = _um(plane.get("PositionX"), plane.get("PositionXUnit"))
            y = _um(plane.get("PositionY"), plane.get("PositionYUnit"))
        stage = image.find("{*}StageLabel")
        if (x is None or y is None) and stage is not None:
            x, y = _um(stage.get("X"), stage.get("XUnit")), _um(stage.get("Y"), stage.get("YUnit"))
        images.append(
            {
                "series": k,
                "position_um": None if x is None or y is None else (x, y),
                "pixel_size_um": _um(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit")),
                "channels": _channel_names(pixels),
                "shape": (int(pixels.get("SizeY", 0)), int(pixels.get("SizeX", 0))),
            }
        )
    if len(images) > n_series:
        images = images[:n_series]
    return images


# -- bioio (CZI, ND2, LIF) -----------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _bioio_reader(path: str, mtime: float) -> Any:
    """A bioio reader of ``path``, which is first opened and checked by the confined opener.

    bioio readers open the file themselves, again on every read. A CZI reader is given
    ``/proc/self/fd/N`` of the checked descriptor, which reaches the file that was checked
    whatever is at ``path`` by then; the descriptor lives as long as the reader (in this
    cache). bioio picks the ND2 and LIF plugins by the file's name, so those are given the
    name: a swap between the check and bioio's own opens is not caught for them.
    """
    from ._confine import open_read

    fd = open_read(path)
    if not path.lower().endswith(".czi"):
        os.close(fd)  # checked; bioio opens the name itself
        try:
            from bioio import BioImage

            return BioImage(path).reader
        except ImportError as exc:
            raise _needs_bioio(path, exc) from None
    try:
        import bioio_czi

        pinned = f"/proc/self/fd/{fd}"
        # aicspylibczi: mosaic tiles on the M axis
        reader = bioio_czi.Reader(pinned if os.path.exists(pinned) else path)
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


def _bioio_plane(r: Any, tile: int, ref: str) -> np.ndarray:
    """Tile ``tile``, refused from the reader's dimensions (file metadata) when it is over
    the endpoint's image budget, before any of its pixels is decoded."""
    from ._limits import EndpointLimits

    dims = r.dims
    if getattr(dims, "Z", 1) > 1:
        raise UnsupportedFormatError("tiles with several z planes in a CZI/ND2/LIF file")
    order = "CYX" if getattr(dims, "C", 1) > 1 else "YX"
    EndpointLimits.from_env().check_image([getattr(dims, d) for d in order], r.dtype, ref)
    index = {"M": tile} if "M" in dims.order else {}
    return np.asarray(r.get_image_data(order, **index))


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
    positions : (N, 2) ndarray
        Where each tile's pixel (0, 0) lands, in pixels, (x, y), the smallest at 0.
    pixel_size_um : float or None
        As recorded (or given).
    extra : dict
        ``channel_names`` and ``vendor`` (``"ome"``, ``"czi"``, ...).

    Raises
    ------
    UnsupportedFormatError
        Not a supported file, bioio or its plugin is missing, or no positions are recorded.
    ConfigError
        Positions in micrometres without any pixel size.
    """
    p = Path(path).resolve()
    kind = _kind(p)
    if kind == "ome":
        images = _ome_images(p)
        if not images:
            raise CorruptImageError(f"'{p}': the OME-XML describes no image")
        missing = [im["series"] for im in images if im["position_um"] is None]
        if missing:
            raise UnsupportedFormatError(
                f"'{p}': OME images {missing[:5]} record no stage position (Plane PositionX/Y "
                "or StageLabel); give a tile table instead"
            )
        size = pixel_size_um or images[0]["pixel_size_um"]
        if not size:
            raise ConfigError(
                f"'{p}': stage positions are in micrometres but no pixel size is recorded; "
                "give it (--pixel-size / pixel_size_um=)"
            )
        um = np.array([im["position_um"] for im in images], dtype=float)
        positions = (um - um.min(axis=0)) / size
        channels = images[0]["channels"]
    else:
        xy, recorded, channels, _ = _bioio_tiles(p)
        size = pixel_size_um or recorded
        positions = np.array(xy, dtype=float)
        positions -= positions.min(axis=0)
    refs = [f"{p}::tile/{k}" for k in range(len(positions))]
    return refs, positions, size, {"channel_names": list(channels), "vendor": kind}


def read_vendor_tile(path: Path, part: str | None, ref: str, page: int | None = None) -> np.ndarray:
    """The pixels of ``path::tile/N``: ``(Y, X)``, or ``(C, Y, X)`` with several channels."""
    tile = _tile_index(part, ref)
    kind = _kind(path)
    if kind == "ome":
        from ._limits import EndpointLimits

        with _ome_tiff(path) as tif:
            if tile >= len(tif.series):
                raise ConfigError(f"{ref!r}: tile {tile} of {len(tif.series)}")
            series = tif.series[tile]
            EndpointLimits.from_env().check_image(series.shape, series.dtype, ref)
            data = series.asarray()
    else:
        r = _reader(path)
        with _lock(path):
            n = r.dims.M if "M" in r.dims.order else 1
            if tile >= n:
                raise ConfigError(f"{ref!r}: tile {tile} of {n}")
            data = _bioio_plane(r, tile, ref)
    return data if page is None else data[page]


def vendor_metadata(path: Path, part: str | None, ref: str) -> dict[str, Any]:
    """Shape, dtype, pixel size and channel names of ``path::tile/N`` without reading pixels
    (OME-TIFF) or from the reader's dimensions (bioio)."""
    tile = _tile_index(part, ref)
    kind = _kind(path)
    if kind == "ome":
        with _ome_tiff(path) as tif:
            if tile >= len(tif.series):
                raise ConfigError(f"{ref!r}: tile {tile} of {len(tif.series)}")
            series = tif.series[tile]
            shape, dtype = tuple(series.shape), str(series.dtype)
        image = _ome_images(path)[tile]
        px, channels = image["pixel_size_um"], image["channels"]
    else:
        r = _reader(path)
        with _lock(path):
            d = r.dims
            channels = [str(c) for c in (r.channel_names or [])]
            shape = ((d.C,) if getattr(d, "C", 1) > 1 else ()) + (d.Y, d.X)
            dtype = str(r.dtype)
            px = getattr(r.physical_pixel_sizes, "X", None)
    return {"shape": shape, "dtype": dtype, "pixel_size_um": px, "channel_names": channels,
            "vendor": kind}  # fmt: skip
