"""Tiles inside instrument files, placed by their recorded stage positions (issue 16)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scopefx.errors import (
    ConfigError,
    CorruptImageError,
    ResourceLimitError,
    UnsupportedFormatError,
)
from scopefx.io import read_image, read_metadata, read_tile_table

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tiles_real"


def _write_ome(path: Path, positions_um, *, pixel_um=0.5, channels=("DAPI", "GFP"), plane=True):
    rng = np.random.default_rng(0)
    tiles = []
    with tifffile.TiffWriter(path, ome=True) as w:
        for x, y in positions_um:
            tile = rng.integers(0, 4000, (len(channels), 32, 48), dtype=np.uint16)
            tiles.append(tile)
            meta = {"axes": "CYX", "PhysicalSizeX": pixel_um, "PhysicalSizeY": pixel_um,
                    "Channel": {"Name": list(channels)}}  # fmt: skip
            if plane:
                n = len(channels)
                um = ["µm"] * n
                meta["Plane"] = {"PositionX": [x] * n, "PositionY": [y] * n,
                                 "PositionXUnit": um, "PositionYUnit": um}  # fmt: skip
            w.write(tile, metadata=meta)
    return tiles


def test_ome_tiff_tiles_and_stage_positions(tmp_path):
    path = tmp_path / "scan.ome.tif"
    tiles = _write_ome(path, [(1000.0, 500.0), (1020.0, 500.0), (1000.0, 514.0)])
    table = read_tile_table(path)
    assert len(table) == 3 and table.pixel_size_um == 0.5
    assert table.extra["channel_names"] == ["DAPI", "GFP"] and table.extra["vendor"] == "ome"
    np.testing.assert_allclose([t.offset for t in table], [(0, 0), (0, 40), (28, 0)])  # (y, x)
    assert table[1].ref == f"{path}::tile/1"
    np.testing.assert_array_equal(read_image(table[1].ref), tiles[1])
    meta = read_metadata(table[2].ref)
    assert (meta.shape, meta.dtype, meta.pixel_size_um) == ((2, 32, 48), "uint16", 0.5)
    assert meta.raw["channel_names"] == ["DAPI", "GFP"]


def test_ome_tiff_without_positions_or_bad_tile_reference(tmp_path):
    path = tmp_path / "flat.ome.tif"
    _write_ome(path, [(0, 0), (5, 0)], plane=False)
    with pytest.raises(UnsupportedFormatError, match=r"record no stage position"):
        read_tile_table(path)
    _write_ome(path, [(0, 0), (5, 0)])
    with pytest.raises(UnsupportedFormatError, match=r"'file::tile/N'"):
        read_image(f"{path}::series/1")
    with pytest.raises(ConfigError, match=r"tile 7 of 2"):
        read_image(f"{path}::tile/7")


def test_ome_tiff_fuses_with_its_pixel_size(tmp_path):
    from scopefx.fusion import fuse

    path = tmp_path / "scan.ome.tif"
    _write_ome(path, [(0.0, 0.0), (20.0, 0.0)], channels=("DAPI",))
    result = fuse(read_tile_table(path), tmp_path / "m.ome.zarr")
    assert result.shape == (32, 88) and result.pixel_size_um == 0.5


def test_fiji_multiseries_tile_configuration_fuses_the_tiles_of_an_ome_tiff(tmp_path):
    """'scan.ome.tif; N; (x, y)' (Fiji's multi-series form) is tile N of the file; the run
    summary names where the pixel size came from as the tile's reference, not as '0'."""
    import zarr

    from scopefx.fusion import fuse

    path = tmp_path / "scan.ome.tif"
    tiles = _write_ome(path, [(0.0, 0.0), (20.0, 0.0)], channels=("DAPI",))
    config = tmp_path / "TileConfiguration.txt"
    config.write_text(
        "dim = 2\nmultiseries = true\nscan.ome.tif; 0; (0, 0)\nscan.ome.tif; 1; (40, 0)\n"
    )
    result = fuse(config, tmp_path / "m.ome.zarr")
    assert result.shape == (32, 88) and result.pixel_size_um == 0.5
    assert result.extra["pixel_size_from"].endswith("of scan.ome.tif::tile/0")
    fused = zarr.open_group(tmp_path / "m.ome.zarr", mode="r")["0"][...]
    np.testing.assert_array_equal(fused[:, 48:], tiles[1][0, :, 8:])  # tile 1 alone there


def test_czi_mosaic_tiles_and_positions():
    path = _czi()
    table = read_tile_table(path)
    assert len(table) == 2 and table.extra["vendor"] == "czi"
    assert table.pixel_size_um == pytest.approx(1.0833, abs=1e-4)
    assert table.extra["channel_names"] == ["EGFP"]
    # the subblock positions, as exported to stage.csv beside the file
    stage = read_tile_table(path.parent / "stage.csv")
    np.testing.assert_allclose([t.offset for t in table], [t.offset for t in stage])
    tile = read_image(table[1].ref)
    exported = read_image(stage[1].ref)
    assert tile.shape == exported.shape == (624, 924)
    np.testing.assert_array_equal(tile, exported)
    assert read_metadata(table[0].ref).shape == (624, 924)


def _czi() -> Path:
    if importlib.util.find_spec("bioio_czi") is None:
        pytest.skip('bioio-czi is not installed (pip install "scopefx[vendor]")')
    path = REAL / "zeiss_czi2" / "mosaic_test.czi"
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared/data/tiles_real/zeiss_czi2)")
    return path


def test_a_czi_tile_over_the_pixel_budget_is_refused_before_decoding(monkeypatch):
    import bioio_czi

    decoded = []
    monkeypatch.setattr(bioio_czi.Reader, "get_image_data", lambda *a, **k: decoded.append(a))
    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_PX", "100000")  # a tile is 624 x 924
    ref = f"{_czi().resolve()}::tile/1"
    with pytest.raises(ResourceLimitError, match=r"::tile/1' declares a 624x924 uint16.*"
                       r"SCOPEFX_MAX_IMAGE_PX"):  # fmt: skip
        read_image(ref)
    assert decoded == []


def test_a_czi_is_read_from_the_file_that_was_checked(tmp_path, monkeypatch):
    """bioio-czi opens the file again on every read; it is handed the checked descriptor
    (/proc/self/fd/N), so a file put in its place later is never what it reads."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data))
    path = data / "mosaic.czi"
    path.write_bytes(_czi().read_bytes())
    before = read_image(f"{path}::tile/1")
    stat = path.stat()
    swapped = data / "swapped"
    swapped.write_bytes(b"not the file that was checked" * 1000)
    os.utime(swapped, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(swapped, path)  # same name, same time: bioio by name would read this
    np.testing.assert_array_equal(read_image(f"{path}::tile/1"), before)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_channel_names_reach_the_ome_zarr(tmp_path, ngff):
    import zarr

    from scopefx.fusion import FuseOptions, fuse

    path = tmp_path / "scan.ome.tif"
    _write_ome(path, [(0.0, 0.0), (20.0, 0.0)], channels=("DAPI", "GFP"))
    out = tmp_path / "m.ome.zarr"
    fuse(read_tile_table(path), out, options=FuseOptions(ngff=ngff))
    attrs = dict(zarr.open_group(out, mode="r").attrs)
    omero = attrs["omero"] if ngff == "0.4" else attrs["ome"]["omero"]
    assert [c["label"] for c in omero["channels"]] == ["DAPI", "GFP"]
    if ngff == "0.4":
        from ome_zarr_models.v04.image import Image
    else:
        from ome_zarr_models.v05.image import Image
    Image.from_zarr(zarr.open_group(out, mode="r"))  # still valid NGFF


def test_a_table_of_tiles_inside_an_instrument_file_keeps_its_channel_names(tmp_path):
    """The registered table that --qc writes names 'scan.ome.tif::tile/N': fused again, the
    channel names were lost (only a table read from the file itself carried them)."""
    import zarr

    from scopefx.fusion import fuse

    path = tmp_path / "scan.ome.tif"
    _write_ome(path, [(0.0, 0.0), (20.0, 0.0)], channels=("DAPI", "GFP"))
    table = tmp_path / "again.csv"
    read_tile_table(path).to_csv(table)
    out = tmp_path / "m.ome.zarr"
    fuse(table, out)
    labels = [c["label"] for c in zarr.open_group(out, mode="r").attrs["omero"]["channels"]]
    assert labels == ["DAPI", "GFP"]


def test_an_rgb_ome_tiff_fuses_in_colour_with_red_green_blue_named(tmp_path):
    """An RGB OME-TIFF (a slide scanner's: one Channel of 3 samples per image) fused, but its
    one channel name did not fit the 3 channels: a warning, and the OME-Zarr had no names or
    colours. The colour tiles' red, green and blue name them."""
    import zarr

    from scopefx.fusion import fuse

    path = tmp_path / "scan.ome.tif"
    rng = np.random.default_rng(0)
    tiles = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(2)]
    with tifffile.TiffWriter(path, ome=True) as w:
        for x, tile in zip((0.0, 20.0), tiles, strict=True):
            w.write(tile, photometric="rgb", metadata={
                "axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                "Plane": {"PositionX": [x], "PositionY": [0.0]}})  # fmt: skip
    out = tmp_path / "m.ome.zarr"
    result = fuse(read_tile_table(path), out)
    assert result.shape == (3, 32, 88)
    np.testing.assert_array_equal(
        zarr.open_array(str(out / "0"), mode="r")[:, :, :8], np.moveaxis(tiles[0][:, :8], -1, 0)
    )
    channels = zarr.open_group(str(out), mode="r").attrs["omero"]["channels"]
    assert [(c["label"], c["color"]) for c in channels] == [
        ("red", "FF0000"),
        ("green", "00FF00"),
        ("blue", "0000FF"),
    ]


def test_an_ome_tiff_naming_an_outside_file_is_not_followed(tmp_path):
    """A tile inside an OME-TIFF is read with multi-file OME off: an OME-XML that names
    another file for a plane never makes the reader open it (issue 14's attack, through the
    vendor-tile path ``file::tile/N`` rather than a plain image reference)."""
    from _ome_helpers import plant_ome_reference

    tifffile.imwrite(tmp_path / "secret.ome.tif", np.full((16, 16), 4242, np.uint16), ome=True)
    path = tmp_path / "planted.ome.tif"
    plant_ome_reference(path, "secret.ome.tif")
    with tifffile.TiffFile(path) as tif:  # tifffile on its own follows the reference
        assert (tif.series[0].asarray() == 4242).any()
    data = read_image(f"{path}::tile/0")
    assert not (np.asarray(data) == 4242).any()  # never the other file's pixels


@pytest.mark.parametrize(("suffix", "module"), [(".nd2", "bioio_nd2")])
def test_the_nd2_plugin_is_handed_the_checked_descriptor(tmp_path, monkeypatch, suffix, module):
    """As for CZI, the plugin (chosen by the real name) gets /proc/self/fd/N of the checked
    descriptor, so a file swapped in under the same name later is never what it reads. A
    stand-in plugin records what it is given: bioio-nd2 is not installed here, whether it
    reads such a path is untested. (LIF, with the real plugin: tests/io/test_vendor_lif.py.)"""
    import sys
    import types

    from scopefx.io import _vendor

    class Reader:
        def __init__(self, image):
            self.image = image

    plugin = types.ModuleType("stand-in")
    plugin.Reader = Reader
    monkeypatch.setitem(sys.modules, module, plugin)
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data))
    path = data / f"scan{suffix}"
    path.write_bytes(b"the file that was checked")
    reader = _vendor._reader(path)
    assert reader.image.startswith("/proc/self/fd/")
    (data / "swapped").write_bytes(b"another file")
    os.replace(data / "swapped", path)
    with open(reader.image, "rb") as fh:
        assert fh.read() == b"the file that was checked"


class _Nd2StandIn:
    """A stand-in for bioio-nd2's Reader of a multipoint ND2, as bioio-nd2 2.6 presents one:
    each XY position a scene (no ``M`` axis), its stage position (um) in
    ``stage_position_x``/``_y`` of the current scene. It reads the path it is given (an
    ``.npz`` of the tiles, positions and pixel size stands in for the file's content)."""

    def __init__(self, image):
        from bioio_base.dimensions import Dimensions
        from bioio_base.types import PhysicalPixelSizes

        with open(image, "rb") as fh:
            z = np.load(fh)
            self._tiles, self._stage = z["tiles"], z["stage_um"]
            pixel = float(z["pixel_um"])
        self.scenes = tuple(f"XY{k + 1:02d}" for k in range(len(self._tiles)))
        self.current_scene_index = 0
        self.dims = Dimensions("TCZYX", (1, 1, 1, *self._tiles.shape[1:]))
        self.dtype = self._tiles.dtype
        self.physical_pixel_sizes = PhysicalPixelSizes(None, pixel, pixel)
        self.channel_names = ["DAPI"]

    @property
    def current_scene(self):
        return self.scenes[self.current_scene_index]

    def set_scene(self, k):
        self.current_scene_index = int(k)

    @property
    def stage_position_x(self):
        return float(self._stage[self.current_scene_index, 0])

    @property
    def stage_position_y(self):
        return float(self._stage[self.current_scene_index, 1])

    def get_image_data(self, order, **index):
        assert order == "YX" and index == {}, (order, index)
        return self._tiles[self.current_scene_index].copy()


def test_an_nd2_multipoint_scan_is_tiled_by_its_xy_positions(tmp_path, monkeypatch):
    """bioio-nd2 reports no mosaic positions: an ND2's XY positions are its scenes, each with
    its stage position. Those scenes are the tiles. Tested against a stand-in of bioio-nd2's
    interface (no ND2 file can be written here)."""
    import sys
    import types

    plugin = types.ModuleType("stand-in")
    plugin.Reader = _Nd2StandIn
    monkeypatch.setitem(sys.modules, "bioio_nd2", plugin)
    rng = np.random.default_rng(2)
    tiles = rng.integers(0, 4000, (4, 30, 40), dtype=np.uint16)
    stage = np.array([(-1200.0, 350.0), (-1182.0, 350.5), (-1200.5, 363.5), (-1182.0, 363.0)])
    path = tmp_path / "multipoint.nd2"
    with open(path, "wb") as fh:
        np.savez(fh, tiles=tiles, stage_um=stage, pixel_um=0.5)
    table = read_tile_table(path)
    assert len(table) == 4 and table.extra["vendor"] == "nd2" and table.pixel_size_um == 0.5
    expect = (stage - stage.min(axis=0)) / 0.5
    np.testing.assert_allclose(np.array([t.offset for t in table])[:, ::-1], expect)
    # bioio records each field's centre: the first tile's corner is half a field before it
    assert table.extra["stage_origin_um"] == [-1200.5 - 10.0, 350.0 - 7.5]
    for k in (3, 1, 2):  # any order: each read sets the shared reader to its own position
        np.testing.assert_array_equal(read_image(table[k].ref), tiles[k])
    assert read_metadata(table[2].ref).shape == (30, 40)
    with pytest.raises(ConfigError, match=r"tile 4 of 4"):
        read_image(f"{path}::tile/4")
    with pytest.raises(ConfigError, match=r"XY positions are its tiles"):
        read_tile_table(path, scene=1)
    # an older bioio-nd2 has no stage position on its reader: said, not "none recorded"
    monkeypatch.delattr(_Nd2StandIn, "stage_position_x")
    older = tmp_path / "older.nd2"
    older.write_bytes(path.read_bytes())
    with pytest.raises(UnsupportedFormatError, match=r"older\.nd2'.*bioio-nd2 2\.6 or later"):
        read_tile_table(older)


def test_a_damaged_ome_tiff_is_said_not_a_traceback(tmp_path):
    """Truncated OME-TIFFs and malformed OME-XML raised tifffile's, struct's and
    ElementTree's own exceptions out of ``scopefx fuse`` (a traceback, exit 1)."""
    whole = tmp_path / "scan.ome.tif"
    _write_ome(whole, [(0.0, 0.0), (20.0, 0.0)])
    data = whole.read_bytes()
    for size in (0, 4, 100):  # empty, a header cut short, the first IFD cut
        cut = tmp_path / f"cut{size}.ome.tif"
        cut.write_bytes(data[:size])
        with pytest.raises(CorruptImageError, match=rf"cannot decode OME-TIFF .*cut{size}"):
            read_tile_table(cut)
    # the pixels cut: the positions read, the last tile's pixels do not
    cut = tmp_path / "pixels.ome.tif"
    cut.write_bytes(data[: len(data) * 3 // 4])
    try:
        table = read_tile_table(cut)
    except CorruptImageError:
        pass  # this cut also took the file's last IFD
    else:
        with pytest.raises(CorruptImageError, match=r"pixels\.ome\.tif::tile/1"):
            read_image(table[1].ref)
    # an unescaped '&' in the OME-XML
    with tifffile.TiffFile(whole) as tif:
        xml = tif.ome_metadata
    bad = tmp_path / "amp.ome.tif"
    text = xml.replace('Name="DAPI"', 'Name="A & B"', 1).encode()
    with tifffile.TiffWriter(bad) as w:
        w.write(np.zeros((32, 48), np.uint16), description=text)
    with pytest.raises(CorruptImageError, match=r"cannot decode OME-TIFF .*amp\.ome\.tif"):
        read_tile_table(bad)


def test_a_truncated_czi_is_said_not_a_traceback(tmp_path):
    """bioio-czi's RuntimeError ('Not enough data read') reached the user as a traceback."""
    data = _czi().read_bytes()
    for name, size in (("header", 2500), ("pixels", len(data) - 100_000)):
        cut = tmp_path / f"{name}.czi"
        cut.write_bytes(data[:size])
        with pytest.raises(CorruptImageError, match=rf"cannot decode CZI .*{name}\.czi"):
            table = read_tile_table(cut)
            for tile in table:
                read_image(tile.ref)


@pytest.mark.parametrize("pixel_um", [500.0, 5e-7, -0.5])
def test_an_ome_tiff_pixel_size_no_microscope_has_is_refused(tmp_path, pixel_um):
    """A PhysicalSizeX of 0.5 mm stacked every tile at one spot and wrote a 500 um scale,
    unwarned (0.5 pm and -0.5 um were refused with misleading reasons); a given size
    stands instead."""
    path = tmp_path / "odd.ome.tif"
    _write_ome(path, [(0.0, 0.0), (20.0, 0.0)], pixel_um=pixel_um)
    with pytest.raises(
        ConfigError, match=rf"PhysicalSizeX \(OME .*\) of {pixel_um:g} um, which no"
    ):
        read_tile_table(path)
    table = read_tile_table(path, pixel_size_um=0.5)
    assert table.pixel_size_um == 0.5
    np.testing.assert_allclose([t.offset for t in table], [(0, 0), (0, 40)])


def test_a_czi_whose_header_asks_for_millions_of_planes_is_refused_at_once(tmp_path):
    """One byte changed (975, 0x00 -> 0x84) gives the CZI 8,650,753 channels: bioio-czi, asked
    for the pixel size, built a task graph of that many planes, growing past 1.9 GB in 2
    minutes without end. The subblock directory says so first, and it is refused."""
    data = bytearray(_czi().read_bytes())
    data[974] = 0x84
    bad = tmp_path / "damaged.czi"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptImageError, match=r"damaged\.czi': its dimensions .* ask for 17,3"):
        read_tile_table(bad)
