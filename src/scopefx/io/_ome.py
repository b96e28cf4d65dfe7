"""Tiles of an OME-TIFF placed by their recorded stage positions, read with tifffile: the
OME-TIFF part of :mod:`scopefx.io._vendor`, which calls :func:`ome_positions`,
:func:`read_ome_tile` and :func:`ome_metadata`.

Each OME ``Image`` is a tile, placed by its first ``Plane``'s ``PositionX/PositionY``, else its
``StageLabel``, from the file given alone: an OME-XML that describes images in other files (a
multi-file set) is refused, as are images that are not tiles of one mosaic of square pixels
(time series, non-square pixels, pixel sizes that differ: see
:func:`scopefx.io._vendor.vendor_positions`). A z-stack tile is placed at its first plane's
``PositionZ``, in steps of ``PhysicalSizeZ`` (else of the distance of its first two planes).
"""

from __future__ import annotations

import contextlib
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptImageError, UnsupportedFormatError
from ._planes import ZSel, is_index, plane_index, stack_shape
from ._units import (
    LENGTH_UNITS,
    implausible_note,
    length_um,
    plausible_pixel_size,
    same_pixel_size,
    value_um,
)

__all__ = ["ome_metadata", "ome_positions", "read_ome_tile"]

#: Pixel sizes that differ by more than this fraction are not the same pixel size.


def read_ome_tile(path: Path, tile: int, zsel: ZSel, ref: str) -> np.ndarray:
    """The pixels of tile ``tile`` of the OME-TIFF ``path`` (``ref`` names it in messages):
    ``(C,) (Z,) Y, X``, one plane or the projection ``(C,) Y, X`` (:func:`_ome_read`)."""
    with _ome_tiff(path) as tif:
        return _ome_read(tif, _ome_tile(tif, tile, ref), zsel, ref)


def ome_metadata(
    path: Path, tile: int, zsel: ZSel, ref: str
) -> tuple[tuple[int, ...], str, float | None, list[str], str | None]:
    """Shape, dtype, pixel size (um), channel names and samples
    (:attr:`~scopefx.io.ImageMetadata.samples`) of tile ``tile`` of the OME-TIFF ``path``,
    without reading pixels."""
    from ._samples import tiff_samples

    samples = None
    with _ome_tiff(path) as tif:
        series = tif.series[_ome_tile(tif, tile, ref)]
        shape, dtype = _ome_shape(series, zsel, ref), str(series.dtype)
        if series.axes.endswith("S"):  # what its samples are, as for a plain TIFF
            samples = tiff_samples(series.keyframe)
    image = _ome_images(path)[tile]
    return shape, dtype, image["pixel_size_um"], image["channels"], samples


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
    return value_um(value, unit)


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
        if plane.get("TheC", "0") == "0" and plane.get("TheT", "0") == "0" and is_index(z):
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
        plane_index(zsel, 1, ref)
        return shape
    size = dict(zip(axes, shape, strict=True))
    plane_index(zsel, size["Z"], ref)
    return stack_shape(size.get("C", 1), size["Z"], size["Y"], size["X"], zsel)


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
    k = plane_index(zsel, dict(zip(axes, shape, strict=True)).get("Z", 1), ref)
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


def ome_positions(
    p: Path, pixel_size_um: float | None
) -> tuple[np.ndarray, float | None, list[str], np.ndarray | None, float | None, np.ndarray]:
    """Positions (x, y) in pixels from the first tile's, pixel size, channel names, for
    z-stack tiles the z position of each tile's first plane and the z step (um), and the
    stage position (x, y, um) that pixel position 0 stands for, of an OME-TIFF's images;
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
    _ome_pixel_sizes(p, images, given=bool(pixel_size_um))
    size = pixel_size_um or images[0]["pixel_size_um"]
    if not size:
        raise ConfigError(
            f"'{p}': stage positions are in micrometres but no pixel size is recorded; "
            "give it (--pixel-size / pixel_size_um=)"
        )
    um = np.array([im["position_um"] for im in images], dtype=float)
    origin = um.min(axis=0)
    positions = (um - origin) / size
    planes = sorted({im["size_z"] for im in images})
    if len(planes) > 1:
        raise UnsupportedFormatError(
            f"'{p}': its OME images have different numbers of z planes {planes}; tiles of "
            "one mosaic are all single planes or all z-stacks"
        )
    if planes[0] == 1:
        return positions, size, images[0]["channels"], None, None, origin
    recorded = [im["z_um"] for im in images]  # all, or none: each at z 0
    known = all(v is not None for v in recorded)
    z_um = np.array([im["z_dir"] * im["z_um"] if known else 0.0 for im in images])
    return positions, size, images[0]["channels"], z_um, images[0]["z_step_um"], origin


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


def _ome_pixel_sizes(p: Path, images: list[dict[str, Any]], *, given: bool = False) -> None:
    """Refuses a recorded pixel size no microscope has (0.5 mm, a negative one) unless one is
    ``given``, non-square pixels, and images whose pixel size is not the first image's (within
    1 %): the mosaic has one pixel size, and reduced-resolution copies of an image or a
    slide's label and overview images are no tiles of it."""

    def same(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a is b  # both unrecorded
        return same_pixel_size(a, b)

    def um(v: float | None) -> str:
        return "none recorded" if v is None else f"{v:g} µm"

    for im in images:
        x, y = im["pixel_size_um"], im["pixel_size_y_um"]
        for v, axis in ((x, "X"), (y, "Y")):
            if v and not given and not plausible_pixel_size(v):  # 0: none recorded
                what = f"a PhysicalSize{axis} (OME {im['name']})"
                raise ConfigError(implausible_note(p, v, what))
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
