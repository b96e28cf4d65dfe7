"""OME-TIFFs whose images are not tiles of one mosaic of square pixels, all in the file given:
each was fused to a wrong mosaic without a word, and is now refused saying why, or read right.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import tifffile

from _ome_helpers import ome_image, write_ome_xml
from scopefx.errors import UnsupportedFormatError
from scopefx.io import read_image, read_metadata, read_tile_table

SHAPE = (32, 48)
#: Stage positions (um) of a row of three tiles, 40 px apart at 0.5 um.
ROW_UM = [(100.0, 50.0), (120.0, 50.0), (140.0, 50.0)]


def _write_row(path, pixels: str) -> None:
    """A row of three images at ROW_UM whose ``Pixels`` carry the attributes ``pixels``."""
    images = [ome_image(k, SHAPE, positions_um=[p], pixels=pixels) for k, p in enumerate(ROW_UM)]
    write_ome_xml(path, _pages(3), images)


def _pages(n: int, shape=SHAPE) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 4000, shape, dtype=np.uint16) for _ in range(n)]


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


# -- pixel sizes ---------------------------------------------------------------------------


def test_non_square_pixels_are_refused(tmp_path):
    """PhysicalSizeY was never read: y positions were divided by the x size and the mosaic
    carried the x size on both axes (0.5 x 0.6 um tiles: rows 20 % too far apart)."""
    path = tmp_path / "aniso.ome.tif"
    pixels = 'PhysicalSizeX="0.5" PhysicalSizeY="0.6"'
    _write_row(path, pixels)
    with pytest.raises(
        UnsupportedFormatError,
        match=r"aniso\.ome\.tif': OME image 0 has non-square pixels, PhysicalSizeX 0\.5 µm by "
        r"PhysicalSizeY 0\.6 µm; non-square pixels are not supported .*resample",
    ):
        read_tile_table(path)


def test_pixels_square_within_one_percent_are_read(tmp_path):
    path = tmp_path / "square.ome.tif"
    pixels = 'PhysicalSizeX="0.5" PhysicalSizeY="0.503"'
    _write_row(path, pixels)
    table = read_tile_table(path)
    assert table.pixel_size_um == 0.5
    np.testing.assert_allclose([t.offset for t in table], [(0, 0), (0, 40), (0, 80)])


def _pyramid(path):
    """A flattened multi-resolution file: full, 1/2 and 1/4 resolution, one stage position."""
    full = _pages(1, (64, 64))[0]
    levels = [full, full[::2, ::2].copy(), full[::4, ::4].copy()]
    images = [
        ome_image(k, a.shape, positions_um=[(100.0, 200.0)],
                  pixels=f'PhysicalSizeX="{px}" PhysicalSizeY="{px}"')
        for k, (a, px) in enumerate(zip(levels, (0.5, 1, 2), strict=True))
    ]  # fmt: skip
    write_ome_xml(path, levels, images)
    return r"image 1 1 µm, image 2 2 µm, where image 0 has 0\.5 µm"


def _binned(path):
    """Two tiles, the second binned 2x2 (1 um): it was placed as if of 0.5 um pixels."""
    t0, t1 = _pages(2, (32, 32))
    images = [
        ome_image(0, t0.shape, positions_um=[(0.0, 0.0)]),
        ome_image(1, (16, 16), positions_um=[(10.0, 0.0)],
                  pixels='PhysicalSizeX="1.0" PhysicalSizeY="1.0"'),
    ]  # fmt: skip
    write_ome_xml(path, [t0, t1[::2, ::2].copy()], images)
    return r"image 1 1 µm, where image 0 has 0\.5 µm"


def _slide(path):
    """A slide scan with its label and macro images, recorded at the slide's position."""
    with tifffile.TiffWriter(path, ome=True) as w:
        for name, shape, px in (("slide", (64, 64), 0.25), ("label", (20, 30), 40.0),
                                ("macro", (30, 40), 20.0)):  # fmt: skip
            w.write(np.full(shape, 7, np.uint8), metadata={
                "axes": "YX", "Name": name, "PhysicalSizeX": px, "PhysicalSizeY": px,
                "Plane": {"PositionX": [5000.0], "PositionY": [2000.0]}})  # fmt: skip
    return r"image 1 \('label'\) 40 µm, image 2 \('macro'\) 20 µm, where image 0 \('slide'\) has"


@pytest.mark.parametrize("write", [_pyramid, _binned, _slide])
def test_images_of_another_pixel_size_are_refused(tmp_path, write):
    """They were fused silently with the first image's pixel size: reduced-resolution copies
    blended into the corner of the full image, a slide's label and macro over the slide, a
    binned tile placed at twice its size."""
    path = tmp_path / "scan.ome.tif"
    named = write(path)
    with pytest.raises(UnsupportedFormatError, match=rf"differ in pixel size .*: {named}"):
        read_tile_table(path)
    with pytest.raises(UnsupportedFormatError, match=r"not tiles"):  # given size or not
        read_tile_table(path, pixel_size_um=0.5)


# -- time series ---------------------------------------------------------------------------


def test_a_multi_position_time_lapse_is_refused_not_fused_as_channels(tmp_path):
    """SizeT 3, one z: the time points were fused as three channels."""
    path = tmp_path / "timelapse.ome.tif"
    images = [
        ome_image(k, SHAPE, positions_um=[p] * 3, ifds=[3 * k, 3 * k + 1, 3 * k + 2])
        for k, p in enumerate(ROW_UM[:2])
    ]
    write_ome_xml(path, _pages(6), images)
    message = (
        r"timelapse\.ome\.tif::tile/0': an OME image with axes TYX \[3, 32, 48\]; tiles are "
        r"read with the axes C, Z, Y, X only .*time series"
    )
    with pytest.raises(UnsupportedFormatError, match=message):
        read_tile_table(path)
    with pytest.raises(UnsupportedFormatError, match=message):  # the tile read alone
        read_image(f"{path}::tile/0")


# -- multi-file sets ---------------------------------------------------------------------------


def test_one_file_per_position_is_refused(tmp_path):
    """Micro-Manager writes one file per position, each with the OME-XML of all of them: the
    first file was fused as a one-tile mosaic."""
    names = [f"s_MMStack_Pos{k}.ome.tif" for k in range(3)]
    urns = [_urn() for _ in names]
    images = [
        ome_image(k, SHAPE, positions_um=[p], ifds=[0], files=(names[k], urns[k]))
        for k, p in enumerate(ROW_UM)
    ]
    for k, page in enumerate(_pages(3)):
        write_ome_xml(tmp_path / names[k], [page], images, own=urns[k])
    with pytest.raises(
        UnsupportedFormatError,
        match=r"Pos0\.ome\.tif': its OME-XML describes 3 image\(s\), of which 2 are \(wholly or "
        r"in part\) in other files \(image 1 in 's_MMStack_Pos1\.ome\.tif'\); multi-file "
        r"OME-TIFF sets .* are not read",
    ):
        read_tile_table(tmp_path / names[0])


def test_a_set_split_over_two_files_is_refused(tmp_path):
    """Image 0 in a.ome.tif, images 1 and 2 in b.ome.tif: b was fused as one tile of two
    channels (tifffile reads it as a plain TIFF, and series 0 was paired with image 0)."""
    urn_a, urn_b = _urn(), _urn()
    images = [
        ome_image(0, SHAPE, positions_um=[ROW_UM[0]], ifds=[0], files=("a.ome.tif", urn_a)),
        ome_image(1, SHAPE, positions_um=[ROW_UM[1]], ifds=[0], files=("b.ome.tif", urn_b)),
        ome_image(2, SHAPE, positions_um=[ROW_UM[2]], ifds=[1], files=("b.ome.tif", urn_b)),
    ]
    pages = _pages(3)
    write_ome_xml(tmp_path / "a.ome.tif", pages[:1], images, own=urn_a)
    write_ome_xml(tmp_path / "b.ome.tif", pages[1:], images, own=urn_b)
    with pytest.raises(UnsupportedFormatError, match=r"describes 3 image\(s\), of which 1 is .*"
                       r"\(image 0 in 'a\.ome\.tif'\)"):  # fmt: skip
        read_tile_table(tmp_path / "b.ome.tif")
    with pytest.raises(UnsupportedFormatError, match=r"of which 2 are"):
        read_metadata(f"{tmp_path / 'a.ome.tif'}::tile/0")  # its pixel size is image 0's


def test_more_images_than_the_file_holds_are_refused(tmp_path):
    """An Image whose planes are not in the file: tifffile skips it, and image k was paired
    with series k by index regardless."""
    path = tmp_path / "short.ome.tif"
    images = [ome_image(k, SHAPE, positions_um=[p], ifds=[k]) for k, p in enumerate(ROW_UM)]
    write_ome_xml(path, _pages(2), images)
    with pytest.raises(UnsupportedFormatError, match=r"3 image\(s\) but the file holds 2 image"):
        read_tile_table(path)


@pytest.mark.parametrize("name", ["set.ome.tif", "renamed.ome.tif"])
def test_a_one_file_set_that_names_itself_is_read(tmp_path, name):
    """TiffData naming the file itself (by its UUID, whatever the file is called now) is no
    other file: the images pair with the file's series."""
    urn = _urn()
    images = [
        ome_image(k, SHAPE, positions_um=[p], ifds=[k], files=("set.ome.tif", urn))
        for k, p in enumerate(ROW_UM)
    ]
    pages = _pages(3)
    write_ome_xml(tmp_path / name, pages, images, own=urn)
    table = read_tile_table(tmp_path / name)
    np.testing.assert_allclose([t.offset for t in table], [(0, 0), (0, 40), (0, 80)])
    np.testing.assert_array_equal(read_image(table[2].ref), pages[2])


# -- units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "size"), [("Å", 5000), ("\u212b", 5000), ("pm", 500000), ("nm", 500), ("mm", 5e-4)]
)
def test_pixel_sizes_in_any_length_unit_read_alike(tmp_path, unit, size):
    """Å and pm were 'no pixel size is recorded' for the tile table while read_metadata of the
    same file understood Å: the two read one table of units now."""
    path = tmp_path / "em.ome.tif"
    pixels = (f'PhysicalSizeX="{size}" PhysicalSizeY="{size}" PhysicalSizeXUnit="{unit}" '
              f'PhysicalSizeYUnit="{unit}"')  # fmt: skip
    _write_row(path, pixels)
    table = read_tile_table(path)
    assert table.pixel_size_um == pytest.approx(0.5)
    assert read_metadata(path).pixel_size_um == pytest.approx(0.5)  # the plain TIFF reader
    assert read_metadata(table[1].ref).pixel_size_um == pytest.approx(0.5)
    np.testing.assert_allclose([t.offset for t in table], [(0, 0), (0, 40), (0, 80)])


def test_a_position_unit_that_is_no_length_is_named(tmp_path):
    """'reference frame' (the OME schema's default unit of Plane positions) was reported as
    'record no stage position'."""
    path = tmp_path / "frame.ome.tif"
    images = [
        ome_image(k, SHAPE, positions_um=[p], unit="reference frame") for k, p in enumerate(ROW_UM)
    ]
    write_ome_xml(path, _pages(3), images)
    message = (
        r"frame\.ome\.tif': OME image 0 records PositionXUnit='reference frame', not a unit of "
        r"length .*\(pm, Å, nm, µm, .*tile table"
    )
    with pytest.raises(UnsupportedFormatError, match=message):
        read_tile_table(path)


def test_a_pixel_size_unit_that_is_no_length_is_named_unless_a_size_is_given(tmp_path):
    path = tmp_path / "px.ome.tif"
    pixels = 'PhysicalSizeX="1" PhysicalSizeY="1" PhysicalSizeXUnit="pixel"'
    _write_row(path, pixels)
    with pytest.raises(UnsupportedFormatError,
                       match=r"records PhysicalSizeXUnit='pixel', .*--pixel-size"):  # fmt: skip
        read_tile_table(path)
    assert read_tile_table(path, pixel_size_um=0.5).pixel_size_um == 0.5


# -- images at one position ------------------------------------------------------------------


def test_images_at_one_position_are_warned_about(tmp_path, caplog):
    """A label image of the tiles' pixel size, at the first tile's position: not refused (it
    may be a tile), but named in the layout problems and the log."""
    from scopefx.fusion import FuseOptions, fuse

    path = tmp_path / "scan.ome.tif"
    images = [ome_image(k, SHAPE, positions_um=[p]) for k, p in enumerate(ROW_UM[:2])]
    images.append(ome_image(2, (16, 16), positions_um=[ROW_UM[0]], name="label"))
    write_ome_xml(path, [*_pages(2), _pages(1, (16, 16))[0]], images)
    with caplog.at_level("WARNING", logger="scopefx.fusion._write"):
        result = fuse(read_tile_table(path), tmp_path / "m.ome.zarr",
                      options=FuseOptions(pyramid=False))  # fmt: skip
    problem = (
        "2 tiles share a position with another tile (within 0.5 px): scan.ome.tif::tile/0, "
        "scan.ome.tif::tile/2 at x 0, y 0"
    )
    assert problem in caplog.text
    assert any(p.startswith(problem) for p in result.extra["layout_problems"])


def test_an_ome_bigtiff_named_btf_is_an_instrument_file(tmp_path):
    """bfconvert and QuPath name OME-BigTIFF '.ome.btf': it was no table, and the message
    listed only .csv/.tsv/.txt."""
    path = tmp_path / "scan.ome.btf"
    _write_row(path, 'PhysicalSizeX="0.5" PhysicalSizeY="0.5"')
    table = read_tile_table(path)
    np.testing.assert_allclose([t.offset for t in table], [(0, 0), (0, 40), (0, 80)])
    assert read_image(table.refs[1]).shape == SHAPE
    other = tmp_path / "scan.xml"
    other.write_text("<x/>")
    with pytest.raises(UnsupportedFormatError, match=r"\.ome\.btf, \.czi"):
        read_tile_table(other)


# -- where the mosaic lies on the stage ------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
def test_the_mosaic_keeps_the_stage_position_its_file_records(tmp_path, flip):
    """The OME-Zarr's translation was the mosaic's offset from its first tile, whatever the
    stage position the OME-TIFF records: two scans of one slide opened side by side in napari
    lay on top of each other. It is now the stage position (um) of the mosaic's first pixel;
    with a stage axis that runs against the image's (flip_y) no translation can say it, and
    the offset is kept."""
    import zarr

    from scopefx.fusion import FuseOptions, fuse

    path = tmp_path / "row.ome.tif"
    _write_row(path, 'PhysicalSizeX="0.5" PhysicalSizeY="0.5"')  # at x 100-140, y 50 um
    out = tmp_path / "m.ome.zarr"
    result = fuse(path, out, options=FuseOptions(flip_y=flip))
    ms = zarr.open_group(out, mode="r").attrs["multiscales"][0]
    scale, shift = ms["datasets"][0]["coordinateTransformations"]
    assert scale["scale"] == [0.5, 0.5]
    offset = np.array(result.origin_px) * 0.5  # (y, x) of the first pixel from the first tile
    stage = np.zeros(2) if flip else np.array([50.0, 100.0])
    np.testing.assert_allclose(shift["translation"], stage + offset)
    assert ("stage_origin_um" in result.extra) is not flip
