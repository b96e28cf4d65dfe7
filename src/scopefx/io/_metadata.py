"""Image metadata without reading pixels: geometry, pixel size, and Zeiss ATLAS/Fibics fields.

Zeiss ATLAS 5 and other Fibics software write their acquisition record into the private TIFF
tag 51023 (tifffile names it ``FibicsXML``) as an XML document rooted at ``<Fibics>``::

    <Fibics version="1.2" format="Image">
      <Application><Version>ZEISS Atlas 5 ...</Version></Application>
      <Image><Width>3290</Width><Height>3346</Height>
             <BoundingBox.Left>0</BoundingBox.Left> ... <Machine>...</Machine></Image>
      <Scan><Dwell units="ns">1000</Dwell><FOV_X units="um">65.8</FOV_X><FOV_Y .../>
            <ScanRot units="deg">0</ScanRot><Ux>0.02</Ux><Uy>0</Uy><Vx>0</Vx><Vy>-0.02</Vy>
            <Focus>0.0118</Focus><StigX>-16.4</StigX><StigY>9.6</StigY></Scan>
      <Stage><X units="um">...</X><Y units="um">...</Y><Z units="um">...</Z>...</Stage>
      <BeamInfo><item name="BeamI">...</item>...</BeamInfo>
      <DetectorInfo><item name="Collector">=500.0 V</item>...</DetectorInfo>
      <MosaicInfo>...</MosaicInfo>
    </Fibics>

``U = (Ux, Uy)`` and ``V = (Vx, Vy)`` are the scan step vectors of one pixel along x and y, in
micrometres: the pixel size is ``|U|`` (``Uy`` is 0 unless the scan is rotated, and ``Vy`` is
negative because the scan runs upwards).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._confine import open_binary
from ._read import (
    decoding,
    image_series,
    n_planes,
    open_tiff,
    open_zarr_array,
    pillow_pixel_limit,
    pillow_read_mode,
    png_colour16,
    tiff_damage,
)
from ._refs import ZARR_SEP, ResolvedRef, resolve_ref
from ._samples import tiff_samples
from ._units import (
    PLAUSIBLE_PIXEL_UM,
    length_um,
    plausible_pixel_size,
    same_pixel_size,
    value_um,
)

__all__ = ["FIBICS_TAG", "ImageMetadata", "read_metadata"]

logger = logging.getLogger(__name__)

#: Private TIFF tag holding the Fibics/ATLAS XML record.
FIBICS_TAG = 51023

_TO_US = {"ns": 1e-3, "us": 1.0, "µs": 1.0, "μs": 1.0, "ms": 1e3, "s": 1e6}
_WD_NAMES = ("wd", "workingdistance", "working distance", "working_distance")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class ImageMetadata:
    """What a file says about its image, read without decoding the pixels.

    Attributes
    ----------
    path : str
        Absolute file path, or ``/abs/store.zarr::array`` for an array in a Zarr store.
    shape : tuple of int
        Shape :func:`scopefx.io.read_image` returns for the whole file.
    dtype : str
        NumPy dtype name of the pixels (``"uint16"``...).
    pages : int
        Number of pages (TIFF pages, GIF frames, axis 0 of a 3D+ array); 1 for a single image.
    pixel_size_um : float or None
        Pixel size along x, in micrometres: from the Fibics scan vector ``|U|`` (or
        ``FOV_X / Width``), else OME ``PhysicalSizeX``, else ImageJ, else the TIFF
        ``XResolution`` with ``ResolutionUnit`` inch or centimetre.
    working_distance_mm : float or None
        Working distance in millimetres, where the instrument records one explicitly (an
        element or item named ``WD``/``WorkingDistance``, or a ``Focus`` with a length unit).
    focus : float or None
        The focus value as the instrument records it (Fibics ``<Scan><Focus>``), unconverted.
    stigmation : tuple of float or None
        ``(StigX, StigY)`` as recorded.
    tile_box : dict or None
        Where the tile sits: ``left``, ``top``, ``right``, ``bottom`` (pixels, from Fibics
        ``<Image><BoundingBox.*>``) and the leaf fields of ``<MosaicInfo>``/``<TileInfo>``
        (``row``, ``col``, ...) with lower-case names, as recorded.
    stage_xy_um : tuple of float or None
        Stage position ``(X, Y)`` in micrometres.
    scan_rotation_deg : float or None
        Scan rotation in degrees.
    dwell_time_us : float or None
        Pixel dwell time in microseconds.
    pixel_size_from : str or None
        Where ``pixel_size_um`` came from, in words (``"OME PhysicalSizeX"``, ``"TIFF
        resolution tags (20000 px/cm)"``, ...); None when it is unknown. A TIFF resolution in
        dots per inch that image software writes by default (72, 96, 150, 300, 600 dpi) and any
        size outside :data:`PLAUSIBLE_PIXEL_UM` are not taken as a pixel size (the reason is in
        ``raw["pixel_size_ignored"]``): give the pixel size explicitly (``--pixel-size``).
    samples : str or None
        What the last axis of an image with its samples last holds, as the file says:
        ``"rgb"``, ``"rgba"`` (the 4th is alpha), ``"grey+alpha"``, ``"channels"`` (samples the
        file marks as neither colour nor alpha, e.g. a 2-channel chunky TIFF), or a colour
        model other than RGB: ``"cmyk"``, ``"ycbcr"``, ``"lab"``, ``"other"``. ``None`` for one
        sample a pixel, and where the format does not say (``.npy``, Zarr, instrument files
        read with bioio; an OME-TIFF's samples are read as a TIFF's).
    source : str
        Where the metadata came from: ``"fibics"``, ``"ome"``, ``"imagej"``, ``"tiff"``
        (resolution tags), ``"zarr"`` (array attributes) or ``"none"``.
    raw : dict
        The parsed instrument metadata, JSON-able: the Fibics XML as nested dicts (attributes
        under ``"@name"``, element text under ``"#text"`` when it has attributes, ``<item
        name=...>`` lists as dicts), or the ImageJ/OME/Zarr fields used.
    pixel_size_z_um : float or None
        The z step (distance between planes) of a TIFF, in micrometres: OME ``PhysicalSizeZ``,
        else ImageJ ``spacing`` (in ImageJ's ``zunit``, else its ``unit``); None where neither
        is recorded in a unit of length. It is the z size of a voxel of 3D tiles.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    pages: int = 1
    pixel_size_um: float | None = None
    working_distance_mm: float | None = None
    focus: float | None = None
    stigmation: tuple[float, float] | None = None
    tile_box: dict[str, Any] | None = None
    stage_xy_um: tuple[float, float] | None = None
    scan_rotation_deg: float | None = None
    dwell_time_us: float | None = None
    pixel_size_from: str | None = None
    samples: str | None = None
    source: str = "none"
    raw: dict[str, Any] = field(default_factory=dict)
    pixel_size_z_um: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of all fields (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


def _float(text: Any) -> float | None:
    """The first number in ``text`` (``"=500.0 V"`` -> 500.0); None if absent or not finite."""
    if text is None:
        return None
    match = _NUMBER.search(str(text))
    if match is None:
        return None
    value = float(match.group())
    return value if math.isfinite(value) else None


def _child_value(parent: ET.Element | None, tag: str) -> float | None:
    if parent is None:
        return None
    elem = parent.find(tag)
    return None if elem is None else _float(elem.text)


def _scaled(
    elem: ET.Element | None, per_unit: Callable[[str], float | None], default_unit: str
) -> float | None:
    """Element value converted with its ``units`` attribute (``default_unit`` if none), by
    ``per_unit`` (``length_um`` for lengths in micrometres)."""
    if elem is None:
        return None
    value = _float(elem.text)
    unit = (elem.get("units") or elem.get("unit") or default_unit).strip().lower()
    factor = per_unit(unit)
    if value is None or factor is None:
        if value is not None:
            logger.debug("unknown unit %r on <%s>", unit, elem.tag)
        return None
    return value * factor


def _to_json(elem: ET.Element) -> Any:
    """An XML element as JSON-able data (see :attr:`ImageMetadata.raw`)."""
    children = list(elem)
    text = (elem.text or "").strip()
    attrs = {f"@{k}": v for k, v in elem.attrib.items()}
    if not children:
        return {**attrs, "#text": text} if attrs else text
    if all(c.tag == "item" and "name" in c.attrib for c in children):
        return {**attrs, **{c.attrib["name"]: (c.text or "").strip() for c in children}}
    out: dict[str, Any] = dict(attrs)
    for child in children:
        value = _to_json(child)
        if child.tag not in out:
            out[child.tag] = value
        elif isinstance(out[child.tag], list):
            out[child.tag].append(value)
        else:
            out[child.tag] = [out[child.tag], value]
    return out


def parse_fibics_xml(value: str | bytes) -> ET.Element | None:
    """The root of a Fibics XML record, or None when it is not one or cannot be parsed."""
    data = value.rstrip(b"\x00 \r\n\t") if isinstance(value, bytes) else value.rstrip("\x00 \r\n\t")
    try:
        root = ET.fromstring(data)
    except (ET.ParseError, ValueError, UnicodeError):
        # some writers leave bytes after the document; cut after the closing root tag
        text = data.decode("latin-1") if isinstance(data, bytes) else data
        end = text.rfind("</Fibics")
        close = text.find(">", end)
        if end < 0 or close < 0:
            logger.debug("tag %d is not parseable XML", FIBICS_TAG)
            return None
        try:
            root = ET.fromstring(text[: close + 1].encode("latin-1", "replace"))
        except (ET.ParseError, ValueError, UnicodeError):
            logger.debug("tag %d is not parseable XML", FIBICS_TAG)
            return None
    if "fibics" not in root.tag.lower():
        logger.debug("tag %d holds <%s>, not a Fibics record", FIBICS_TAG, root.tag)
        return None
    return root


def _working_distance_mm(root: ET.Element) -> float | None:
    for elem in root.iter():
        name = elem.get("name", "") if elem.tag == "item" else elem.tag
        if name.strip().lower() not in _WD_NAMES:
            continue
        value = _float(elem.text)
        unit = elem.get("units") or elem.get("unit")
        if unit is None and elem.text:  # items carry their unit in the text: "=5.1 mm"
            match = re.search(r"([a-zA-Zµμ]+)\s*$", elem.text.strip())
            unit = match.group(1) if match else None
        factor = length_um(unit or "mm")
        if value is not None and factor is not None:
            return value * factor / 1e3
    focus = root.find("Scan/Focus")
    if focus is not None and (focus.get("units") or focus.get("unit")):
        um = _scaled(focus, length_um, "")
        return None if um is None else um / 1e3
    return None


def fibics_fields(root: ET.Element, *, width: int | None = None) -> dict[str, Any]:
    """The :class:`ImageMetadata` fields a Fibics record gives (absent ones left out)."""
    scan, image, stage = root.find("Scan"), root.find("Image"), root.find("Stage")
    out: dict[str, Any] = {}
    ux, uy = _child_value(scan, "Ux"), _child_value(scan, "Uy")
    if ux is not None:
        size = math.hypot(ux, uy or 0.0)
        if size > 0:
            out["pixel_size_um"] = size
    xml_width = _child_value(image, "Width")
    if "pixel_size_um" not in out and scan is not None and xml_width:
        fov_um = _scaled(scan.find("FOV_X"), length_um, "um")
        if fov_um:
            out["pixel_size_um"] = fov_um / xml_width
    if width is not None and xml_width and int(xml_width) != width:
        logger.warning(
            "Fibics record describes a %d px wide image but the file is %d px wide (resized or "
            "cropped copy?); its pixel size is that of the original scan",
            int(xml_width),
            width,
        )
    wd = _working_distance_mm(root)
    if wd is not None:
        out["working_distance_mm"] = wd
    focus = _child_value(scan, "Focus")
    if focus is not None:
        out["focus"] = focus
    stig = (_child_value(scan, "StigX"), _child_value(scan, "StigY"))
    if stig[0] is not None and stig[1] is not None:
        out["stigmation"] = (stig[0], stig[1])
    if scan is not None:
        rotation = _scaled(scan.find("ScanRot"), {"deg": 1.0, "rad": 180 / math.pi}.get, "deg")
        if rotation is not None:
            out["scan_rotation_deg"] = rotation
        dwell = _scaled(scan.find("Dwell"), _TO_US.get, "ns")
        if dwell is not None:
            out["dwell_time_us"] = dwell
    if stage is not None:
        xy = (_scaled(stage.find("X"), length_um, "um"), _scaled(stage.find("Y"), length_um, "um"))
        if xy[0] is not None and xy[1] is not None:
            out["stage_xy_um"] = (xy[0], xy[1])
    box: dict[str, Any] = {}
    for side in ("Left", "Top", "Right", "Bottom"):
        value = _child_value(image, f"BoundingBox.{side}")
        if value is not None:
            box[side.lower()] = int(value)
    for section in ("MosaicInfo", "TileInfo"):
        elem = root.find(section)
        for leaf in [] if elem is None else elem.iter():
            if leaf is not elem and len(leaf) == 0:
                text = (leaf.text or "").strip()
                number = _float(text)
                exact = number is not None and _NUMBER.fullmatch(text) is not None
                box[leaf.tag.lower()] = number if exact else text
    if box:
        out["tile_box"] = box
    return out


#: Dots per inch that image software writes by default, not a measured pixel size.
DEFAULT_DPI = (72, 96, 150, 300, 600)
_INCH_UM = 25400.0


def _default_dpi(per_unit: float, num: float, den: float) -> bool:
    """Whether a resolution of ``num / den`` pixels per unit (``per_unit`` um) is one of the
    ``DEFAULT_DPI`` that image software writes in inches: no measured pixel size."""
    return per_unit == _INCH_UM and any(abs(num / den - d) < 1e-6 for d in DEFAULT_DPI)


def _resolution_um(page: Any) -> tuple[float | None, dict[str, Any]]:
    """Pixel size from XResolution/ResolutionUnit (inch or centimetre only); default dpi
    values are refused (``raw["pixel_size_ignored"]`` says so)."""
    xres = page.tags.get(282)
    unit = page.tags.get(296)
    if xres is None or unit is None:
        return None, {}
    num, den = (xres.value if isinstance(xres.value, tuple) else (xres.value, 1))[:2]
    per_unit = {2: _INCH_UM, 3: 10000.0}.get(int(unit.value))
    if per_unit is None or not num or not den:
        return None, {}
    raw = {"XResolution": [num, den], "ResolutionUnit": int(unit.value)}
    if _default_dpi(per_unit, num, den):
        raw["pixel_size_ignored"] = (
            f"{num / den:g} dpi is a default of image software, not a pixel size"
        )
        return None, raw
    return _square(per_unit * den / num, _y_resolution_um(page, per_unit), "TIFF", raw)


def _y_resolution_um(page: Any, per_unit: float) -> float | None:
    """The pixel height the YResolution tag gives (None where it gives none)."""
    yres = page.tags.get(283)
    if yres is None:
        return None
    num, den = (yres.value if isinstance(yres.value, tuple) else (yres.value, 1))[:2]
    return per_unit * den / num if num and den else None


def _square(x_um: float, y_um: float | None, what: str, raw: dict[str, Any]) -> tuple[
    float | None, dict[str, Any]
]:  # fmt: skip
    """``x_um`` as the pixel size, unless the pixel's height ``y_um`` differs from it by over
    1 %: tiles are placed on square pixels, and a width taken for the height would put every
    position in micrometres wrongly along y (the pixel size is then unknown, and said why)."""
    if y_um is None or same_pixel_size(y_um, x_um):
        return x_um, raw
    raw["pixel_size_ignored"] = (
        f"{what} gives non-square pixels, {x_um:g} um wide and {y_um:g} um high; scopefx "
        "places tiles on square pixels"
    )
    return None, raw


_FROM = {
    "fibics": "Fibics scan record",
    "ome": "OME PhysicalSizeX",
    "imagej": "ImageJ calibration",
    "tiff": "TIFF resolution tags",
}


def _plausible(size: float, source: str, raw: dict[str, Any]) -> bool:
    if plausible_pixel_size(size):
        return True
    lo, hi = PLAUSIBLE_PIXEL_UM
    raw["pixel_size_ignored"] = (
        f"{_FROM[source]} gives {size:g} um, outside the plausible {lo:g}-{hi:g} um"
    )
    return False


def _ome_um(ome_xml: str) -> tuple[float | None, dict[str, Any]]:
    try:
        pixels = ET.fromstring(ome_xml).find(".//{*}Pixels")
    except (ET.ParseError, ValueError):
        return None, {}
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None, {}
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    size, factor = _float(pixels.get("PhysicalSizeX")), length_um(unit)
    if size is None or factor is None or size <= 0:
        return None, {}
    raw = {"PhysicalSizeX": size, "PhysicalSizeXUnit": unit}
    height = value_um(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit", "µm"))
    return _square(size * factor, height if height and height > 0 else None, "OME", raw)


def _z_step_um(ome_xml: str | None, ij: dict[str, Any] | None) -> float | None:
    """The z step a TIFF records, in micrometres: OME ``PhysicalSizeZ`` (in its
    ``PhysicalSizeZUnit``), else ImageJ ``spacing`` (in ``zunit``, else ``unit``; not in
    inches); None where neither is a positive length."""
    steps: list[float | None] = []
    if ome_xml:
        try:
            pixels = ET.fromstring(ome_xml).find(".//{*}Pixels")
        except (ET.ParseError, ValueError):
            pixels = None
        if pixels is not None:
            ome_unit = pixels.get("PhysicalSizeZUnit") or "µm"
            steps.append(value_um(pixels.get("PhysicalSizeZ"), ome_unit))
    ij = ij or {}
    ij_unit = str(ij.get("zunit") or ij.get("unit") or "")
    # no unit: ImageJ's uncalibrated pixels; inches: the dpi of an image ImageJ opened (see
    # _imagej_um), no microscope's z step
    if ij.get("spacing") is not None and ij_unit and length_um(ij_unit) != _INCH_UM:
        steps.append(value_um(str(ij["spacing"]), ij_unit))
    return next((s for s in steps if s is not None and s > 0), None)


def _imagej_um(ij: dict[str, Any], page: Any) -> tuple[float | None, dict[str, Any]]:
    """Pixel size from an ImageJ calibration (its ``unit`` and the XResolution tag). One in
    inches at a default of image software (``DEFAULT_DPI``; ImageJ keeps the 72 dpi of an
    image it opened as an inch calibration) is refused as the TIFF tags' is."""
    raw = {k: v for k, v in ij.items() if isinstance(v, (str, int, float, bool))}
    factor = length_um(str(ij.get("unit", "")))
    xres = page.tags.get(282)
    if factor is None or xres is None or not isinstance(xres.value, tuple):
        return None, raw
    num, den = xres.value[:2]
    if not num or not den:
        return None, raw
    if _default_dpi(factor, num, den):
        raw["pixel_size_ignored"] = (
            f"{num / den:g} dpi (an ImageJ calibration in inches) is a default of image "
            "software, not a pixel size"
        )
        return None, raw
    return _square(factor * den / num, _y_resolution_um(page, factor), "the ImageJ calibration",
                   raw)  # fmt: skip


def _tiff_metadata(r: ResolvedRef, path: str) -> ImageMetadata:

    with tiff_damage(r.ref), decoding(r.ref, r.kind), open_tiff(r) as tif:
        series = image_series(tif, r.ref)[1]
        page = series.keyframe
        n = len(series)
        shape = (n, *page.shape) if n > 1 else tuple(series.shape)
        tag = page.tags.get(FIBICS_TAG)
        value = None if tag is None else tag.value
        root = parse_fibics_xml(value) if isinstance(value, (str, bytes)) and value else None
        ome = tif.ome_metadata if tif.is_ome else None
        imagej = tif.imagej_metadata
        fields: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        source = "none"
        if root is not None:
            fields = fibics_fields(root, width=int(page.imagewidth))
            raw = {root.tag: _to_json(root)}
            source = "fibics"
        size = fields.pop("pixel_size_um", None)
        if size is not None and _plausible(size, "fibics", raw):
            fields["pixel_size_um"], fields["pixel_size_from"] = size, _FROM["fibics"]
        if fields.get("pixel_size_um") is None:
            for name, (size, extra) in (
                ("ome", _ome_um(ome) if ome else (None, {})),
                ("imagej", _imagej_um(imagej, page) if imagej else (None, {})),
                ("tiff", _resolution_um(page)),
            ):
                if "pixel_size_ignored" in extra:
                    raw["pixel_size_ignored"] = extra.pop("pixel_size_ignored")
                if size is not None and _plausible(size, name, raw):
                    fields["pixel_size_um"] = size
                    fields["pixel_size_from"] = _FROM[name] + (
                        f" ({extra['XResolution'][0] / extra['XResolution'][1]:g} px/"
                        f"{'inch' if extra['ResolutionUnit'] == 2 else 'cm'})"
                        if name == "tiff" else ""
                    )  # fmt: skip
                    raw.setdefault(name, extra)
                    source = source if source != "none" else name
                    break
        if "pixel_size_ignored" in raw:
            logger.info("%s: pixel size unknown: %s", r.ref, raw["pixel_size_ignored"])
        return ImageMetadata(
            path=path,
            shape=shape,
            dtype=str(series.dtype),
            pages=n,
            samples=tiff_samples(page),
            source=source,
            raw=raw,
            pixel_size_z_um=_z_step_um(ome, imagej),
            **fields,
        )


#: Pillow modes of more than one sample a pixel (ImageMetadata.samples); a colour palette
#: ("P", "PA") is decoded to RGB(A).
_PILLOW_SAMPLES = {"RGB": "rgb", "P": "rgb", "RGBA": "rgba", "RGBa": "rgba", "PA": "rgba",
                   "LA": "grey+alpha", "La": "grey+alpha", "CMYK": "cmyk", "YCbCr": "ycbcr",
                   "LAB": "lab"}  # fmt: skip


def _pillow_samples(fh: Any) -> tuple[str | None, str | None]:
    """The mode a PNG/JPEG/BMP/GIF is read in (see :func:`~scopefx.io._read.pillow_read_mode`)
    and its :attr:`ImageMetadata.samples`, from its Pillow mode; the handle is rewound."""
    from PIL import Image

    try:
        with Image.open(fh) as im:
            read_mode, mode, bands = pillow_read_mode(im), str(im.mode), len(im.getbands())
    finally:
        fh.seek(0)
    if read_mode == "L":
        return read_mode, None
    return read_mode, _PILLOW_SAMPLES.get(read_mode or mode, "other" if bands > 1 else None)


def _pillow_metadata(r: ResolvedRef, path: str) -> ImageMetadata:
    import imageio.v3 as iio

    from ._limits import EndpointLimits

    # Pillow's own bomb limit lifted to the budget, as for the pixels (a 100 Mpx PNG printed
    # Pillow's warning, one of 200 Mpx failed here while its pixels read)
    limit = pillow_pixel_limit(EndpointLimits.from_env().max_image_px)
    with decoding(r.ref, r.kind), open_binary(r.path, ref=r.ref) as fh, limit:
        wide = png_colour16(fh)
        if wide is not None:  # read with its 16 bits (see scopefx.io._read.png_colour16)
            kind = {3: "rgb", 4: "rgba", 2: "grey+alpha"}[wide[-1]]
            return ImageMetadata(path=path, shape=wide, dtype="uint16", samples=kind)
        read_mode, samples = _pillow_samples(fh)
        props = iio.improps(fh, plugin="pillow", extension=r.path.suffix.lower())
    shape, pages = tuple(props.shape), 1
    if read_mode and shape[-1:] == (3,):  # as grey, or with alpha (see pillow_read_mode)
        shape = shape[:-1] if read_mode == "L" else (*shape[:-1], 4)
    if props.is_batch:  # GIF frames
        pages = shape[0]
        shape = shape[1:] if pages == 1 else shape
    return ImageMetadata(
        path=path, shape=shape, dtype=str(props.dtype), pages=pages, samples=samples
    )


def _npy_metadata(r: ResolvedRef, path: str) -> ImageMetadata:
    with decoding(r.ref, r.kind), open_binary(r.path, ref=r.ref) as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return ImageMetadata(path=path, shape=tuple(shape), dtype=str(dtype), pages=n_planes(shape))


def _zarr_metadata(r: ResolvedRef, path: str) -> ImageMetadata:
    array = open_zarr_array(r)
    attrs = dict(array.attrs)
    shape = tuple(int(s) for s in array.shape)
    return ImageMetadata(
        path=path,
        shape=shape,
        dtype=str(array.dtype),
        pages=n_planes(shape),
        source="zarr" if attrs else "none",
        raw={"attributes": attrs} if attrs else {},
    )


def _vendor_metadata(r: ResolvedRef, path: str) -> ImageMetadata:
    from ._vendor import format_name, vendor_metadata

    with decoding(r.ref, format_name(r.path)):  # a damaged file: said, not a traceback
        info = vendor_metadata(r.path, r.array, r.ref)
    px = info["pixel_size_um"]
    ok = plausible_pixel_size(px)
    return ImageMetadata(
        path=path,
        shape=tuple(info["shape"]),
        dtype=info["dtype"],
        pages=n_planes(tuple(info["shape"])),
        pixel_size_um=px if ok else None,
        pixel_size_from=f"{info['vendor'].upper()} file metadata" if ok else None,
        samples=info.get("samples"),
        source=info["vendor"],
        raw={"channel_names": info["channel_names"]},
    )


_READERS = {
    "vendor": _vendor_metadata,
    "tiff": _tiff_metadata,
    "pillow": _pillow_metadata,
    "npy": _npy_metadata,
    "zarr": _zarr_metadata,
}


def read_metadata(ref: str | os.PathLike[str]) -> ImageMetadata:
    """Read what a file says about its image, without decoding its pixels.

    Parameters
    ----------
    ref : str or path-like
        Any reference :func:`scopefx.io.read_image` accepts.

    Returns
    -------
    ImageMetadata
        Shape, dtype and page count, plus the instrument fields the file records (``None``
        where it does not). Zeiss ATLAS / Fibics TIFFs give pixel size, focus, stigmation,
        stage position, tile box and the full XML record (``source="fibics"``).

    Raises
    ------
    ImageNotFoundError, EmptyFileError, CorruptImageError, UnsupportedFormatError
        As :func:`scopefx.io.read_image`. Only headers are checked: a file whose pixel data
        is cut off but whose header is intact reads without error here (a TIFF stack that
        lost the headers of its later pages does raise CorruptImageError).

    Notes
    -----
    Fibics/ATLAS fields come from the XML in private TIFF tag 51023: ``pixel_size_um`` is the
    length of the scan step vector ``(Ux, Uy)`` (falling back to ``FOV_X / Width``),
    ``focus`` is ``<Scan><Focus>``, ``stigmation`` is ``(<StigX>, <StigY>)``, ``tile_box``
    holds ``<Image><BoundingBox.*>`` and ``<MosaicInfo>`` fields, ``stage_xy_um`` is
    ``<Stage><X>, <Y>``. A record that is missing, malformed, or not rooted at ``<Fibics...>``
    is ignored: the fields are ``None`` and the other sources are tried.

    Examples
    --------
    >>> meta = read_metadata("run/Tile_r1-c1_S_170_1.tif")  # doctest: +SKIP
    >>> meta.pixel_size_um, meta.focus, meta.source  # doctest: +SKIP
    (0.004, 5.1234, 'fibics')
    """
    r = resolve_ref(ref)
    if r.array is not None:
        path = f"{os.path.abspath(r.path)}{ZARR_SEP}{r.array}"
    else:
        path = os.path.abspath(r.path)
    meta = _READERS[r.kind](r, path)
    logger.debug("metadata of %s: source %s", r.ref, meta.source)
    return meta
