"""Tests of scopefx.io.read_metadata, on real files written to tmp_path."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from scopefx.errors import CorruptImageError, EmptyFileError, ImageNotFoundError
from scopefx.io import ImageMetadata, read_metadata

FIBICS_TAG = 51023
STEP_UM = 0.005  # 5 nm pixels
ROT_DEG = 0.5

# An ATLAS 5 style record: element names and nesting as the instrument writes them.
FIBICS_XML = f"""<?xml version="1.0" encoding="iso-8859-1"?>
<Fibics version="1.2" format="Image">
  <Application>
    <Version>ZEISS Atlas 5 Client v5.3.3.12</Version>
    <Date>2024-03-07T14:02:11.250+01:00</Date>
    <SupportsTransparency>true</SupportsTransparency>
    <TransparentPixelValue>0</TransparentPixelValue>
  </Application>
  <Image>
    <Width>64</Width>
    <Height>48</Height>
    <OriginalWidth>0</OriginalWidth>
    <OriginalHeight>0</OriginalHeight>
    <Cropped>false</Cropped>
    <BoundingBox.Left>2</BoundingBox.Left>
    <BoundingBox.Right>62</BoundingBox.Right>
    <BoundingBox.Top>1</BoundingBox.Top>
    <BoundingBox.Bottom>47</BoundingBox.Bottom>
    <Machine>GEMINI-01</Machine>
    <Beam>SEM</Beam>
    <Detector>EsB</Detector>
    <Contrast>31.2</Contrast>
    <Brightness>48.5</Brightness>
  </Image>
  <Scan>
    <Dwell units="ns">800</Dwell>
    <LineAvg>1</LineAvg>
    <FOV_X units="um">0.32</FOV_X>
    <FOV_Y units="um">0.24</FOV_Y>
    <ScanRot units="deg">{ROT_DEG}</ScanRot>
    <Ux>{STEP_UM * math.cos(math.radians(ROT_DEG))!r}</Ux>
    <Uy>{STEP_UM * math.sin(math.radians(ROT_DEG))!r}</Uy>
    <Vx>{STEP_UM * math.sin(math.radians(ROT_DEG))!r}</Vx>
    <Vy>{-STEP_UM * math.cos(math.radians(ROT_DEG))!r}</Vy>
    <Focus>0.00512345</Focus>
    <StigX>-1.25</StigX>
    <StigY>0.75</StigY>
  </Scan>
  <Stage>
    <X units="um">-21319.24</X>
    <Y units="um">-27311.81</Y>
    <Z units="um">10.8</Z>
    <Tilt units="deg">0</Tilt>
    <Rot units="deg">46.2</Rot>
    <M units="mm">0</M>
  </Stage>
  <BeamInfo>
    <item name="BeamI">=1.2 nA</item>
    <item name="AccV">=1.50 kV</item>
    <item name="WD">=5.12 mm</item>
  </BeamInfo>
  <DetectorInfo>
    <item name="Collector">=500.0 V</item>
  </DetectorInfo>
  <MosaicInfo>
    <Row>3</Row>
    <Col>7</Col>
  </MosaicInfo>
</Fibics>
"""


def _write_fibics(path: Path, xml: str | bytes, *, dtype: str = "s", shape=(48, 64)) -> Path:
    data = np.zeros(shape, np.uint16)
    tifffile.imwrite(path, data, extratags=[(FIBICS_TAG, dtype, 0, xml, True)])
    return path


def test_fibics_record_round_trip(tmp_path: Path) -> None:
    path = _write_fibics(tmp_path / "Tile_r3-c7_S_012.tif", FIBICS_XML)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].tags[FIBICS_TAG].name == "FibicsXML"
    meta = read_metadata(path)
    assert meta.source == "fibics"
    assert meta.path == str(path)
    assert meta.shape == (48, 64) and meta.dtype == "uint16" and meta.pages == 1
    assert meta.pixel_size_um == pytest.approx(STEP_UM, rel=1e-12)
    assert meta.focus == pytest.approx(0.00512345)
    assert meta.stigmation == (-1.25, 0.75)
    assert meta.working_distance_mm == pytest.approx(5.12)
    assert meta.scan_rotation_deg == pytest.approx(ROT_DEG)
    assert meta.dwell_time_us == pytest.approx(0.8)
    assert meta.stage_xy_um == (-21319.24, -27311.81)
    assert meta.tile_box == {"left": 2, "top": 1, "right": 62, "bottom": 47, "row": 3, "col": 7}
    fibics = meta.raw["Fibics"]
    assert fibics["@version"] == "1.2"
    assert fibics["Scan"]["Focus"] == "0.00512345"
    assert fibics["Scan"]["FOV_X"] == {"@units": "um", "#text": "0.32"}
    assert fibics["BeamInfo"] == {"BeamI": "=1.2 nA", "AccV": "=1.50 kV", "WD": "=5.12 mm"}
    assert fibics["Application"]["Version"].startswith("ZEISS Atlas 5")


def test_fibics_record_as_bytes_with_latin1_text(tmp_path: Path) -> None:
    xml = FIBICS_XML.replace("<Beam>SEM</Beam>", "<Aperture>30 µm</Aperture>").encode("latin-1")
    path = _write_fibics(tmp_path / "bytes.tif", xml, dtype="B")
    meta = read_metadata(path)
    assert meta.source == "fibics"
    assert meta.raw["Fibics"]["Image"]["Aperture"] == "30 µm"
    assert meta.pixel_size_um == pytest.approx(STEP_UM)


def test_fibics_field_of_view_fallback_and_missing_fields(tmp_path: Path) -> None:
    xml = (
        '<?xml version="1.0"?>\r\n<Fibics version="1.0"><Image><Width>64</Width>'
        '<Height>48</Height></Image><Scan><FOV_X units="nm">320</FOV_X></Scan></Fibics>\x00'
    )
    meta = read_metadata(_write_fibics(tmp_path / "fov.tif", xml))
    assert meta.source == "fibics"
    assert meta.pixel_size_um == pytest.approx(0.005)
    assert meta.focus is None and meta.stigmation is None and meta.working_distance_mm is None
    assert meta.tile_box is None and meta.stage_xy_um is None


def test_fibics_focus_with_a_length_unit_gives_working_distance(tmp_path: Path) -> None:
    xml = '<Fibics><Scan><Focus units="m">0.0051</Focus></Scan></Fibics>'
    meta = read_metadata(_write_fibics(tmp_path / "wd.tif", xml))
    assert meta.focus == pytest.approx(0.0051)
    assert meta.working_distance_mm == pytest.approx(5.1)


@pytest.mark.parametrize(
    "xml",
    [
        "<Fibics><Scan><Ux>0.005</Ux></Scan>",  # never closed
        "<SomeOtherVendor><Ux>0.5</Ux></SomeOtherVendor>",
        "not xml at all",
    ],
)
def test_broken_or_foreign_records_are_ignored(tmp_path: Path, xml: str) -> None:
    meta = read_metadata(_write_fibics(tmp_path / "odd.tif", xml))
    assert meta.source == "none"
    assert meta.pixel_size_um is None and meta.focus is None
    assert meta.shape == (48, 64)


def test_fibics_bad_numbers_become_none(tmp_path: Path) -> None:
    xml = "<Fibics><Scan><Ux>not-a-number</Ux><Focus>NaN</Focus><StigX>1</StigX></Scan></Fibics>"
    meta = read_metadata(_write_fibics(tmp_path / "bad.tif", xml))
    assert meta.source == "fibics"
    assert meta.pixel_size_um is None and meta.focus is None and meta.stigmation is None


def test_plain_tiff_has_no_instrument_fields(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((40, 50), np.float32))
    meta = read_metadata(tmp_path / "plain.tif")
    assert meta.source != "fibics"
    assert meta.source == "none"
    assert (meta.shape, meta.dtype, meta.pages) == ((40, 50), "float32", 1)
    for name in ("pixel_size_um", "working_distance_mm", "focus", "stigmation", "tile_box"):
        assert getattr(meta, name) is None
    assert meta.raw == {}


@pytest.mark.parametrize(
    ("resolution", "unit", "expected_um"),
    [((20000.0, 20000.0), "CENTIMETER", 0.5), ((25400.0, 25400.0), "INCH", 1.0)],
)
def test_tiff_resolution_tags(
    tmp_path: Path, resolution: tuple[float, float], unit: str, expected_um: float
) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=resolution, resolutionunit=unit)
    meta = read_metadata(path)
    assert meta.source == "tiff"
    assert meta.pixel_size_um == pytest.approx(expected_um)
    assert meta.pixel_size_from is not None and meta.pixel_size_from.startswith("TIFF resolution")


@pytest.mark.parametrize("dpi", [72, 96, 300])
def test_default_dpi_is_not_a_pixel_size(tmp_path: Path, dpi: int) -> None:
    """A TIFF's 72 dpi became a 352.8 um pixel size in the output's physical scale."""
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(dpi, dpi), resolutionunit="INCH")
    meta = read_metadata(path)
    assert meta.pixel_size_um is None and meta.pixel_size_from is None
    assert f"{dpi} dpi is a default" in meta.raw["pixel_size_ignored"]


@pytest.mark.parametrize("dpi", [72, 600])
def test_imagej_inch_calibration_at_a_default_dpi_is_not_a_pixel_size(
    tmp_path: Path, dpi: int
) -> None:
    """ImageJ keeps an opened image's 72 dpi as a calibration in inches: at 600 dpi that was
    taken as a 42.3 um pixel size, at 72 dpi refused only as implausible."""
    path = tmp_path / "ij_inch.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), imagej=True, resolution=(dpi, dpi),
                     metadata={"unit": "inch"})  # fmt: skip
    meta = read_metadata(path)
    assert meta.pixel_size_um is None and meta.pixel_size_from is None
    assert (
        f"{dpi} dpi (an ImageJ calibration in inches) is a default"
        in meta.raw["pixel_size_ignored"]
    )


def test_imagej_spacing_in_inches_is_no_z_step(tmp_path: Path) -> None:
    """ImageJ writes its z spacing in the calibration's unit: inches for an image it opened
    at 72 dpi, which gave a z step of 12,700 um."""
    path = tmp_path / "ij_inch_stack.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(72, 72),
                     metadata={"unit": "inch", "spacing": 0.5, "axes": "ZYX"})  # fmt: skip
    assert read_metadata(path).pixel_size_z_um is None
    um = tmp_path / "ij_um_stack.tif"
    tifffile.imwrite(um, np.zeros((3, 8, 8), np.uint8), imagej=True, resolution=(4, 4),
                     metadata={"unit": "um", "spacing": 0.5, "axes": "ZYX"})  # fmt: skip
    assert read_metadata(um).pixel_size_z_um == pytest.approx(0.5)


def test_imagej_inch_calibration_off_the_defaults_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ij_inch.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), imagej=True, resolution=(25400, 25400),
                     metadata={"unit": "inch"})  # fmt: skip
    meta = read_metadata(path)
    assert (meta.source, meta.pixel_size_um) == ("imagej", pytest.approx(1.0))


def test_implausible_pixel_size_is_unknown(tmp_path: Path) -> None:
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), ome=True,
                     metadata={"PhysicalSizeX": 2.0, "PhysicalSizeXUnit": "mm"})  # fmt: skip
    meta = read_metadata(path)
    assert meta.pixel_size_um is None
    assert "2000 um, outside the plausible" in meta.raw["pixel_size_ignored"]


def test_imagej_and_ome_pixel_size(tmp_path: Path) -> None:
    tifffile.imwrite(
        tmp_path / "ij.tif",
        np.zeros((8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.25),
        metadata={"unit": "um"},
    )
    meta = read_metadata(tmp_path / "ij.tif")
    assert (meta.source, meta.pixel_size_um) == ("imagej", pytest.approx(0.25))
    tifffile.imwrite(
        tmp_path / "ome.tif",
        np.zeros((8, 8), np.uint8),
        ome=True,
        metadata={"PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm"},
    )
    meta = read_metadata(tmp_path / "ome.tif")
    assert (meta.source, meta.pixel_size_um) == ("ome", pytest.approx(0.004))
    assert meta.pixel_size_from == "OME PhysicalSizeX"


def test_fibics_wins_over_resolution_tags(tmp_path: Path) -> None:
    path = tmp_path / "both.tif"
    tifffile.imwrite(
        path,
        np.zeros((48, 64), np.uint8),
        resolution=(72, 72),
        resolutionunit="INCH",
        extratags=[(FIBICS_TAG, "s", 0, FIBICS_XML, True)],
    )
    meta = read_metadata(path)
    assert meta.source == "fibics"
    assert meta.pixel_size_um == pytest.approx(STEP_UM)


def test_stack_metadata_matches_read_image_shape(tmp_path: Path) -> None:
    data = np.zeros((3, 16, 20), np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", data, photometric="minisblack", bigtiff=True)
    meta = read_metadata(tmp_path / "s.tif")
    assert (meta.shape, meta.pages) == ((3, 16, 20), 3)


def test_metadata_does_not_read_pixels(tmp_path: Path) -> None:
    # pixel data cut off, header intact: read_image fails, read_metadata does not need them
    tifffile.imwrite(tmp_path / "full.tif", np.ones((256, 256), np.uint16))
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    assert read_metadata(tmp_path / "cut.tif").shape == (256, 256)


def test_other_formats(tmp_path: Path) -> None:
    iio.imwrite(tmp_path / "a.png", np.zeros((10, 12), np.uint16))
    assert read_metadata(tmp_path / "a.png").shape == (10, 12)
    assert read_metadata(tmp_path / "a.png").dtype == "uint16"
    frames = np.zeros((2, 10, 12), np.uint8)
    frames[1] = 255  # identical frames would be merged by the GIF writer
    iio.imwrite(tmp_path / "a.gif", frames)
    gif = read_metadata(tmp_path / "a.gif")
    assert gif.pages == 2 and gif.shape[:3] == (2, 10, 12)
    np.save(tmp_path / "a.npy", np.zeros((4, 10, 12), np.float32))
    npy = read_metadata(tmp_path / "a.npy")
    assert (npy.shape, npy.dtype, npy.pages, npy.source) == ((4, 10, 12), "float32", 4, "none")
    root = zarr.open_group(tmp_path / "run.zarr", mode="w", zarr_format=3)
    arr = root.create_array("raw/0", shape=(10, 12), dtype="uint8")
    arr.attrs["pixel_size_um"] = 0.004
    meta = read_metadata(f"{tmp_path / 'run.zarr'}::raw/0")
    assert meta.path == f"{tmp_path / 'run.zarr'}::raw/0"
    assert (meta.shape, meta.dtype, meta.source) == ((10, 12), "uint8", "zarr")
    assert meta.raw == {"attributes": {"pixel_size_um": 0.004}}


def test_to_dict_is_json_able(tmp_path: Path) -> None:
    meta = read_metadata(_write_fibics(tmp_path / "t.tif", FIBICS_XML))
    out = meta.to_dict()
    assert set(out) == {f.name for f in dataclasses.fields(ImageMetadata)}
    assert out["stigmation"] == [-1.25, 0.75] and out["shape"] == [48, 64]
    assert json.loads(json.dumps(out)) == out
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.focus = 1.0  # type: ignore[misc]


def _pillow(mode: str, suffix: str):
    def write(path: Path) -> Path:
        from PIL import Image

        path = path.with_suffix(suffix)
        rgb = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
        Image.fromarray(rgb).convert(mode).save(path)
        return path

    return write


def _tiff(samples: int, **kw: object):
    def write(path: Path) -> Path:
        path = path.with_suffix(".tif")
        tifffile.imwrite(path, np.zeros((8, 8, samples), np.uint8), **kw)
        return path

    return write


@pytest.mark.parametrize(
    ("write", "samples"),
    [
        (_pillow("RGB", ".png"), "rgb"),
        (_pillow("RGBA", ".png"), "rgba"),
        (_pillow("LA", ".png"), "grey+alpha"),
        (_pillow("L", ".png"), None),
        (_pillow("CMYK", ".jpg"), "cmyk"),
        (_tiff(3, photometric="rgb"), "rgb"),
        (_tiff(4, photometric="rgb"), "rgba"),
        (_tiff(4, photometric="rgb", extrasamples=[0]), "channels"),
        (_tiff(2, photometric="minisblack", extrasamples=[2]), "grey+alpha"),
        (_tiff(2, photometric="minisblack", planarconfig="contig"), "channels"),
        (_tiff(4, photometric="separated"), "cmyk"),
    ],
)
def test_samples_say_what_the_last_axis_holds(tmp_path, write, samples):
    """A 4th sample is alpha only where the file says so; CMYK is not RGBA."""
    assert read_metadata(write(tmp_path / "image")).samples == samples


def test_metadata_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match=r"gone\.tif"):
        read_metadata(tmp_path / "gone.tif")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(EmptyFileError, match=r"empty\.tif"):
        read_metadata(tmp_path / "empty.tif")
    (tmp_path / "bad.tif").write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptImageError, match=r"bad\.tif"):
        read_metadata(tmp_path / "bad.tif")


def test_fibics_tag_of_the_wrong_type_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "int_tag.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), extratags=[(FIBICS_TAG, "I", 1, 7, True)])
    meta = read_metadata(path)
    assert meta.source == "none" and meta.shape == (8, 8)


def test_truncated_stack_headers_are_reported(tmp_path: Path) -> None:
    data = np.arange(3 * 32 * 40, dtype=np.uint16).reshape(3, 32, 40)
    tifffile.imwrite(tmp_path / "full.tif", data, compression="zlib", photometric="minisblack")
    raw = (tmp_path / "full.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(CorruptImageError, match=r"cut\.tif.*truncated"):
        read_metadata(tmp_path / "cut.tif")
