"""Z-stack tiles inside instrument files: a 3D mosaic placed by the recorded x, y, z with the
file's z step as its scale, or a 2D mosaic of one plane per tile (``z_plane``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from scopefx.errors import ConfigError, ResourceLimitError
from scopefx.fusion import FuseOptions, fuse
from scopefx.io import flatten_z, read_image, read_metadata, read_tile_table

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tiles_real"
PIXEL_UM, STEP_UM = 0.5, 2.0
TILE = (5, 24, 40)  # z, y, x of every tile
#: Where each tile's voxel (0, 0, 0) lies in the ground truth, (x, y, z) voxels.
LAYOUT = [(0, 0, 0), (30, 0, 2), (0, 16, 5), (30, 16, 1)]


def _truth(channels: int, seed: int = 0) -> np.ndarray:
    """The specimen, (C, Z, Y, X): every tile is a box cut from it."""
    rng = np.random.default_rng(seed)
    return rng.integers(1, 4000, (channels, 10, 40, 70), dtype=np.uint16)


def _box(x: int, y: int, z: int, tile_zyx=TILE) -> tuple[slice, slice, slice]:
    nz, ny, nx = tile_zyx
    return slice(z, z + nz), slice(y, y + ny), slice(x, x + nx)


def _write_ome(
    path: Path, truth: np.ndarray, layout=LAYOUT, *, step="PhysicalSizeZ", tile_zyx=TILE,
    stage_error_px=None,
) -> None:  # fmt: skip
    """One OME image per tile, its planes at their stage PositionX/Y/Z (um); the z step as
    PhysicalSizeZ, or (``step="positions"``) only through the planes' PositionZ. The stage
    records tile ``i`` off by ``stage_error_px[i]`` (x, y) pixels."""
    channels = truth.shape[0]
    errors = stage_error_px or {}
    with tifffile.TiffWriter(path, ome=True) as w:
        for i, (x, y, z) in enumerate(layout):
            tile = truth[(slice(None), *_box(x, y, z, tile_zyx))]
            dx, dy = errors.get(i, (0, 0))
            axes = "CZYX" if channels > 1 else "ZYX"
            meta = {"axes": axes, "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM}
            if step == "PhysicalSizeZ":
                meta["PhysicalSizeZ"] = STEP_UM
            # tifffile lists the planes with z fastest, channel after: one entry per plane
            planes = [(c, k) for c in range(channels) for k in range(tile_zyx[0])]
            meta["Plane"] = {
                "PositionX": [1000 + (x + dx) * PIXEL_UM] * len(planes),
                "PositionY": [-300 + (y + dy) * PIXEL_UM] * len(planes),
                "PositionZ": [42 + (z + k) * STEP_UM for _, k in planes],
            }
            w.write(tile if channels > 1 else tile[0], metadata=meta)


def _covered(layout=LAYOUT) -> np.ndarray:
    mask = np.zeros((10, 40, 70), dtype=bool)
    for x, y, z in layout:
        mask[_box(x, y, z)] = True
    return mask


def _level0(out: Path) -> tuple[np.ndarray, dict]:
    group = zarr.open_group(out, mode="r")
    multiscales = group.attrs["multiscales"][0]
    return np.asarray(group["0"]), multiscales


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("step", ["PhysicalSizeZ", "positions"])
def test_a_z_stack_ome_tiff_fuses_to_the_volume_it_was_cut_from(tmp_path, channels, step):
    truth = _truth(channels)
    path = tmp_path / "scan.ome.tif"
    _write_ome(path, truth, step=step)
    table = read_tile_table(path)
    assert table.ndim == 3 and table.pixel_size_z_um == pytest.approx(STEP_UM)
    np.testing.assert_allclose([t.offset for t in table], [(z, y, x) for x, y, z in LAYOUT])
    lead = (channels,) if channels > 1 else ()
    assert read_metadata(table[1].ref).shape == (*lead, *TILE)
    tile = read_image(table[1].ref)
    np.testing.assert_array_equal(tile, truth[(slice(None), *_box(*LAYOUT[1]))].reshape(tile.shape))

    result = fuse(table, tmp_path / "m.ome.zarr")
    fused, multiscales = _level0(tmp_path / "m.ome.zarr")
    assert result.shape == fused.shape == (*lead, 10, 40, 70)
    covered = _covered()
    expected = truth.reshape(fused.shape)
    np.testing.assert_array_equal(fused[..., covered], expected[..., covered])
    assert (fused[..., ~covered] == 0).all()
    scale = multiscales["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [*([1.0] * len(lead)), STEP_UM, PIXEL_UM, PIXEL_UM]
    assert [a["name"] for a in multiscales["axes"]][-3:] == ["z", "y", "x"]
    assert result.to_dict()["pixel_size_z_um"] == pytest.approx(STEP_UM)


def test_a_stack_recorded_top_down_is_placed_along_its_own_direction(tmp_path):
    """Planes whose PositionZ falls as the plane index rises: the tile recorded higher on the
    stage starts lower in the volume's index order."""
    truth = _truth(1)
    path = tmp_path / "scan.ome.tif"
    layout = [(0, 0, 0), (30, 0, 3)]
    with tifffile.TiffWriter(path, ome=True) as w:
        for x, y, z in layout:
            plane = {"PositionX": [x * PIXEL_UM] * 5, "PositionY": [y * PIXEL_UM] * 5,
                     "PositionZ": [100 - (z + k) * STEP_UM for k in range(5)]}  # fmt: skip
            meta = {"axes": "ZYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM,
                    "Plane": plane}  # fmt: skip
            w.write(truth[0][_box(x, y, z)], metadata=meta)
    table = read_tile_table(path)
    assert table.pixel_size_z_um == pytest.approx(STEP_UM)  # from the planes' positions
    np.testing.assert_allclose([t.offset[0] for t in table], [0, 3])


def test_a_z_stack_mosaic_goes_to_an_ome_tiff_with_its_z_size(tmp_path):
    path = tmp_path / "scan.ome.tif"
    _write_ome(path, _truth(1))
    fuse(read_tile_table(path), tmp_path / "m.tif")
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.series[0].shape == (10, 40, 70)
        assert f'PhysicalSizeZ="{STEP_UM}"' in tif.ome_metadata


def test_registration_corrects_a_stage_error_of_a_z_stack_tile(tmp_path):
    """--register on z-stack tiles registers in 3D; the refined table keeps the z step."""
    from scopefx.fusion import register

    truth = np.random.default_rng(5).integers(1, 4000, (1, 20, 80, 140), dtype=np.uint16)
    layout = [(0, 0, 0), (60, 0, 3), (0, 30, 1), (60, 30, 2)]
    path = tmp_path / "scan.ome.tif"
    _write_ome(path, truth, layout=layout, tile_zyx=(8, 48, 80), stage_error_px={1: (3, -2)})
    table = read_tile_table(path)
    assert table[1].offset.tolist() == [3, 0, 63]  # (z, y, x); the stage's y -2 is the least
    registered = register(table).table
    offsets = np.array([t.offset for t in registered])
    truth_zyx = np.array([(z, y, x) for x, y, z in layout], dtype=float)
    np.testing.assert_allclose(offsets - offsets[0], truth_zyx - truth_zyx[0], atol=0.3)
    assert registered.pixel_size_z_um == pytest.approx(STEP_UM)
    result = fuse(path, tmp_path / "m.ome.zarr", options=FuseOptions(register=True))
    assert result.extra["registration"]["pairs_used"] >= 4
    scale = _level0(tmp_path / "m.ome.zarr")[1]["datasets"][0]["coordinateTransformations"][0]
    assert scale["scale"] == [STEP_UM, PIXEL_UM, PIXEL_UM]


# -- one plane per tile: z_plane -------------------------------------------------------------


def _sharp_stacks(path: Path, sharpest: list[int], *, czi: bool = False) -> np.ndarray:
    """A 2D specimen cut into tiles (all at z 0) whose planes are blurred copies except the
    plane ``sharpest[i]`` of tile ``i``. Returns the specimen."""
    from skimage import data

    specimen = data.camera()[100:260, 60:300].astype(np.uint16) * 10
    layout = [(0, 0), (100, 0), (0, 60), (100, 60)]
    tiles = []
    for (x, y), best in zip(layout, sharpest, strict=True):
        crop = specimen[y : y + 100, x : x + 140]
        blurred = [ndimage.gaussian_filter(crop, 1.5 + abs(k - best)) for k in range(5)]
        blurred[best] = crop
        tiles.append(((x, y), np.stack(blurred)))
    if czi:
        _write_czi(path, [((x, y, 0), t[None]) for (x, y), t in tiles])
    else:
        with tifffile.TiffWriter(path, ome=True) as w:
            for (x, y), stack in tiles:
                meta = {"axes": "ZYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM,
                        "PhysicalSizeZ": STEP_UM,
                        "Plane": {"PositionX": [x * PIXEL_UM] * 5,
                                  "PositionY": [y * PIXEL_UM] * 5}}  # fmt: skip
                w.write(stack, metadata=meta)
    return specimen


@pytest.mark.parametrize("kind", ["ome", "czi"])
def test_best_takes_each_tiles_sharpest_plane(tmp_path, kind):
    if kind == "czi":
        _need_czi_writer()
    path = tmp_path / ("scan.czi" if kind == "czi" else "scan.ome.tif")
    sharpest = [1, 3, 0, 4]
    specimen = _sharp_stacks(path, sharpest, czi=kind == "czi")
    result = fuse(path, tmp_path / "m.ome.zarr", options=FuseOptions(z_plane="best"))
    assert result.extra["z_planes"] == sharpest
    fused, multiscales = _level0(tmp_path / "m.ome.zarr")
    assert fused.shape == specimen.shape == (160, 240)  # a 2D mosaic
    np.testing.assert_array_equal(fused, specimen)  # only sharp planes, in every overlap
    assert [a["name"] for a in multiscales["axes"]] == ["y", "x"]


@pytest.mark.parametrize("z_plane", [0, 3, "max"])
def test_one_plane_or_the_projection_of_every_tile(tmp_path, z_plane):
    truth = _truth(2)
    layout = [(x, y, 0) for x, y, _ in LAYOUT]  # the same planes in every tile
    path = tmp_path / "scan.ome.tif"
    _write_ome(path, truth, layout=layout)
    result = fuse(path, tmp_path / "m.ome.zarr", options=FuseOptions(z_plane=z_plane))
    fused, _ = _level0(tmp_path / "m.ome.zarr")
    plane = truth[:, :5].max(axis=1) if z_plane == "max" else truth[:, z_plane]
    covered = _covered(layout)[0]
    assert fused.shape == (2, 40, 70) and result.extra["z_planes"] == [z_plane] * 4
    np.testing.assert_array_equal(fused[:, covered], plane[:, covered])


def test_z_plane_is_validated_and_travels_as_json(tmp_path):
    for bad in (-1, "min", True, 1.5, "3"):
        with pytest.raises(ConfigError, match=r"z_plane must be None, a plane index >= 0"):
            FuseOptions(z_plane=bad)
    options = FuseOptions(z_plane="best")
    assert FuseOptions.from_dict(options.to_dict()) == options
    path = tmp_path / "scan.ome.tif"
    _write_ome(path, _truth(1))
    with pytest.raises(ConfigError, match=r"z plane 5 does not exist; the tile has 5 plane"):
        fuse(path, tmp_path / "m.ome.zarr", options=FuseOptions(z_plane=5))
    csv = tmp_path / "tiles.csv"
    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), np.uint16))
    csv.write_text("path,x,y,z\na.npy,0,0,0\n")
    with pytest.raises(ConfigError, match=r"z-stack tiles of instrument files"):
        flatten_z(read_tile_table(csv), "max")


def test_the_cli_fuses_one_plane_per_tile(tmp_path, capsys):
    from scopefx.cli import main

    path = tmp_path / "scan.ome.tif"
    _write_ome(path, _truth(1))
    out = tmp_path / "m.ome.zarr"
    assert main(["fuse", str(path), "-o", str(out), "--z-plane", "max", "-q"]) == 0
    assert zarr.open_array(out / "0", mode="r").ndim == 2
    assert "z planes: max (4 tiles)" in capsys.readouterr().out
    assert main(["fuse", str(path), "-o", str(tmp_path / "v.ome.zarr"), "-q"]) == 0
    assert zarr.open_array(tmp_path / "v.ome.zarr" / "0", mode="r").ndim == 3
    assert f"z step: {STEP_UM:g} um" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["fuse", str(path), "-o", str(tmp_path / "n.ome.zarr"), "--z-plane", "top"])
    assert info.value.code == 2
    assert "--z-plane must be a plane index >= 0" in capsys.readouterr().err


def test_the_z_plane_travels_to_an_endpoint_as_json(tmp_path, monkeypatch):
    """The remote job's options are FuseOptions.to_dict(): the endpoint rebuilds z_plane and
    reads the planes inside its data roots."""
    from scopefx.remote import functions

    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(tmp_path))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(tmp_path))
    sharpest = [2, 0, 4, 1]
    specimen = _sharp_stacks(tmp_path / "scan.ome.tif", sharpest)
    job = {"tiles": "scan.ome.tif", "output": "m.ome.zarr",
           "options": FuseOptions(z_plane="best").to_dict()}  # fmt: skip
    summary = functions.fuse_mosaic(job)
    assert summary["z_planes"] == sharpest and summary["shape"] == list(specimen.shape)
    np.testing.assert_array_equal(_level0(tmp_path / "m.ome.zarr")[0], specimen)


# -- the image budget covers the stack -------------------------------------------------------


def test_a_stack_over_the_budget_is_refused_while_one_plane_fits(tmp_path, monkeypatch):
    path = tmp_path / "scan.ome.tif"
    _write_ome(path, _truth(1))
    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_PX", str(24 * 40 * 2))  # two planes' worth
    ref = f"{path}::tile/1"
    with pytest.raises(ResourceLimitError, match=r"5x24x40 uint16.*SCOPEFX_MAX_IMAGE_PX"):
        read_image(ref)
    with pytest.raises(ResourceLimitError, match=r"5x24x40"):  # the projection reads it all
        read_image(f"{ref}/z/max")
    assert read_image(f"{ref}/z/2").shape == (24, 40)
    with pytest.raises(ResourceLimitError, match=r"SCOPEFX_MAX_IMAGE_PX"):
        fuse(path, tmp_path / "m.ome.zarr")


# -- CZI, written with pylibCZIrw and read back through bioio-czi -------------------------------


def _need_czi_writer() -> None:
    for module in ("bioio_czi", "pylibCZIrw"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f'{module} is not installed (pip install "scopefx[vendor]")')


def _write_czi(path: Path, tiles: list[tuple[tuple[int, int, int], np.ndarray]]) -> None:
    """A mosaic CZI: tile ``(C, Z, Y, X)`` at stage pixel ``(x, y)`` (its z is not recorded:
    pylibCZIrw writes no subblock focus position)."""
    from pylibCZIrw import czi as pyczi

    channels = tiles[0][1].shape[0]
    with pyczi.create_czi(str(path)) as w:
        for (x, y, _), tile in tiles:
            for z in range(tile.shape[1]):
                for c in range(channels):
                    w.write(tile[c, z][..., None], location=(500 + x, 200 + y),
                            plane={"Z": z, "C": c})  # fmt: skip
        names = {c: f"ch{c}" for c in range(channels)}
        w.write_metadata(document_name="zstack", channel_names=names, scale_x=PIXEL_UM * 1e-6,
                         scale_y=PIXEL_UM * 1e-6, scale_z=STEP_UM * 1e-6)  # fmt: skip


def test_a_z_stack_czi_fuses_to_the_volume_it_was_cut_from(tmp_path):
    _need_czi_writer()
    truth = _truth(2, seed=3)
    layout = [(x, y, 0) for x, y, _ in LAYOUT]  # no z recorded: every tile starts at z 0
    path = tmp_path / "scan.czi"
    _write_czi(path, [(p, truth[(slice(None), *_box(*p))]) for p in layout])
    table = read_tile_table(path)
    assert table.ndim == 3 and table.extra["vendor"] == "czi"
    assert table.pixel_size_um == pytest.approx(PIXEL_UM)
    assert table.pixel_size_z_um == pytest.approx(STEP_UM)
    np.testing.assert_allclose([t.offset for t in table], [(0, y, x) for x, y, _ in layout])
    assert read_metadata(table[2].ref).shape == (2, *TILE)
    np.testing.assert_array_equal(read_image(f"{table[2].ref}/z/4"), truth[:, 4, 16:40, 0:40])

    result = fuse(table, tmp_path / "m.ome.zarr")
    fused, multiscales = _level0(tmp_path / "m.ome.zarr")
    assert result.shape == fused.shape == (2, 5, 40, 70)
    covered = _covered(layout)[:5]
    np.testing.assert_array_equal(fused[:, covered], truth[:, :5][:, covered])
    scale = multiscales["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, STEP_UM, PIXEL_UM, PIXEL_UM]


def test_a_czi_stack_over_the_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    _need_czi_writer()
    import bioio_czi

    truth = _truth(1)
    path = tmp_path / "scan.czi"
    _write_czi(path, [((0, 0, 0), truth[:, :5, :24, :40])])
    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_PX", str(24 * 40 * 2))
    assert read_image(f"{path}::tile/0/z/3").shape == (24, 40)
    decoded = []
    monkeypatch.setattr(bioio_czi.Reader, "get_image_data", lambda *a, **k: decoded.append(a))
    with pytest.raises(ResourceLimitError, match=r"::tile/0' declares a 5x24x40 uint16"):
        read_image(f"{path}::tile/0")
    assert decoded == []


@pytest.mark.parametrize("direction", [1, -1])
def test_czi_tiles_are_placed_at_their_recorded_focus_positions(tmp_path, monkeypatch, direction):
    """A CZI records the focus drive per subblock (FocusPosition, um; a real Zeiss file's
    value is checked below). pylibCZIrw writes none, so the reader's subblock metadata stands
    in for what a microscope writes: each tile's first plane at its own z, the stack running
    up (direction 1) or down the focus axis."""
    _need_czi_writer()
    import xml.etree.ElementTree as ET

    import bioio_czi

    truth = _truth(1, seed=7)
    path = tmp_path / "scan.czi"
    _write_czi(path, [(p, truth[(slice(None), *_box(*p))]) for p in LAYOUT])

    def focus(self, **where):
        m, z = where["M"], where["Z"]
        at = 5000.0 + direction * (LAYOUT[m][2] + z) * STEP_UM
        tags = f"<Tags><FocusPosition>{at:+017.4f}</FocusPosition></Tags>"
        return ET.fromstring(
            f"<Subblocks><Subblock><METADATA>{tags}</METADATA></Subblock></Subblocks>"
        )

    monkeypatch.setattr(bioio_czi.Reader, "get_subblock_metadata", focus)
    table = read_tile_table(path)
    np.testing.assert_allclose([t.offset for t in table], [(z, y, x) for x, y, z in LAYOUT])
    result = fuse(table, tmp_path / "m.ome.zarr")
    fused, _ = _level0(tmp_path / "m.ome.zarr")
    covered = _covered()
    assert result.shape == (10, 40, 70)
    np.testing.assert_array_equal(fused[covered], truth[0][covered])


def test_a_real_czi_records_its_focus_position():
    from scopefx.io._vendor import _focus_um, _reader

    path = REAL / "zeiss_czi2" / "mosaic_test.czi"
    if importlib.util.find_spec("bioio_czi") is None or not path.is_file():
        pytest.skip("bioio-czi or shared/data/tiles_real/zeiss_czi2 is absent")
    assert _focus_um(_reader(path), M=1, Z=0) == pytest.approx(7858.658)


@pytest.mark.parametrize("part", ["tile/\u00b2", "tile/0/z/\u00b2", "tile/\u0663"])
def test_a_tile_reference_with_non_ascii_digits_is_a_clear_error(part):
    from scopefx.errors import UnsupportedFormatError
    from scopefx.io._vendor import _tile_ref

    with pytest.raises(UnsupportedFormatError, match="file::tile/N"):
        _tile_ref(part, f"x.czi::{part}")
