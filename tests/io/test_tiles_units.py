"""Tile tables and the tiles' recorded sizes: z positions in micrometres divided by the z step
the tiles record (the mosaic's z scale), tiles of different pixel sizes refused, and scopefx's
own ``*.registered.csv`` (x,y beside the affine, written at full precision)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from scopefx.errors import ConfigError
from scopefx.fusion import FuseOptions, fuse, plan_fusion
from scopefx.io import TileTable, read_tile_table

PIXEL_UM, STEP_UM = 0.5, 2.0
TILE = (5, 24, 40)  # z, y, x of every tile
#: Where each tile's voxel (0, 0, 0) lies in the ground truth, (x, y, z) voxels.
LAYOUT = [(0, 0, 0), (30, 0, 2), (0, 16, 5)]


def _truth() -> np.ndarray:
    return np.random.default_rng(0).integers(1, 4000, (10, 40, 70), dtype=np.uint16)


def _write_stack(path: Path, stack: np.ndarray, how: str, *, step: float | None = STEP_UM) -> None:
    """A (Z, Y, X) tile of PIXEL_UM pixels with its z step as ImageJ ``spacing`` or OME
    ``PhysicalSizeZ`` (``step=None``: none recorded)."""
    if how == "imagej":
        meta: dict = {"unit": "um", "axes": "ZYX"}
        if step is not None:
            meta["spacing"] = step
        res = (1 / PIXEL_UM, 1 / PIXEL_UM)
        tifffile.imwrite(path, stack, imagej=True, resolution=res, metadata=meta)
    else:
        meta = {"axes": "ZYX", "PhysicalSizeX": PIXEL_UM, "PhysicalSizeY": PIXEL_UM}
        if step is not None:
            meta["PhysicalSizeZ"] = step
        tifffile.imwrite(path, stack, ome=True, metadata=meta)


def _stack_table(folder: Path, truth: np.ndarray, how: str, unit: str, **kw) -> Path:
    """Tiles cut from ``truth`` at LAYOUT and a CSV placing them, in micrometres
    (``x_um,y_um,z_um``, z at the z step) or in pixels and planes (``x,y,z``)."""
    rows = []
    for i, (x, y, z) in enumerate(LAYOUT):
        nz, ny, nx = TILE
        _write_stack(folder / f"t{i}.tif", truth[z : z + nz, y : y + ny, x : x + nx], how, **kw)
        if unit == "um":
            rows.append(f"t{i}.tif,{x * PIXEL_UM},{y * PIXEL_UM},{z * STEP_UM}")
        else:
            rows.append(f"t{i}.tif,{x},{y},{z}")
    header = "path,x_um,y_um,z_um" if unit == "um" else "path,x,y,z"
    path = folder / "t.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize("unit", ["um", "px"])
@pytest.mark.parametrize("how", ["imagej", "ome"])
def test_z_stack_tiles_of_a_table_are_placed_and_scaled_by_their_recorded_z_step(
    tmp_path, how, unit
):
    """z_um was divided by the xy pixel size (tile 1 at z 4 um went 8 planes down, not 2), and
    the OME-Zarr's z scale was the xy pixel size, in micrometre and pixel tables alike."""
    truth = _truth()
    table = _stack_table(tmp_path, truth, how, unit)
    result = fuse(table, tmp_path / "m.ome.zarr")
    group = zarr.open_group(tmp_path / "m.ome.zarr", mode="r")
    fused = np.asarray(group["0"])
    assert result.shape == fused.shape == truth.shape
    covered = np.zeros(truth.shape, dtype=bool)
    for x, y, z in LAYOUT:
        covered[z : z + TILE[0], y : y + TILE[1], x : x + TILE[2]] = True
    np.testing.assert_array_equal(fused[covered], truth[covered])
    transforms = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == [STEP_UM, PIXEL_UM, PIXEL_UM]


def test_a_given_pixel_size_is_the_xy_size_only(tmp_path):
    """--pixel-size divided z_um too: it is the xy size, z_um is in steps of the tiles' z."""
    path = _stack_table(tmp_path, _truth(), "imagej", "um")
    table = read_tile_table(path, pixel_size_um=0.25)
    np.testing.assert_allclose([t.offset for t in table], [(z, y * 2, x * 2) for x, y, z in LAYOUT])
    assert (table.pixel_size_um, table.pixel_size_z_um) == (0.25, STEP_UM)


def test_a_z_step_no_tile_records_is_assumed_to_be_the_pixel_size_with_a_warning(tmp_path, caplog):
    """Without a recorded z step, z_um is still divided by the xy pixel size (and that is the
    mosaic's z scale), but it was done without a word."""
    path = _stack_table(tmp_path, _truth(), "imagej", "um", step=None)
    with caplog.at_level(logging.WARNING, logger="scopefx"):
        table = read_tile_table(path)
    np.testing.assert_allclose(
        [t.offset for t in table], [(z * STEP_UM / PIXEL_UM, y, x) for x, y, z in LAYOUT]
    )
    assert table.pixel_size_z_um == PIXEL_UM
    assert "z is assumed to have the xy pixel size" in caplog.text
    assert "lines 3, 4" in caplog.text  # the rows whose z it placed

    caplog.clear()
    pixels = _stack_table(tmp_path, _truth(), "imagej", "px", step=None)
    with caplog.at_level(logging.WARNING, logger="scopefx"):
        plan, _ = plan_fusion(pixels)
    assert plan.voxel_um == (PIXEL_UM, PIXEL_UM, PIXEL_UM)
    assert "records no z step" in caplog.text and "t0.tif" in caplog.text


def _write_plane(path: Path, image: np.ndarray, pixel_um: float) -> None:
    res = (1 / pixel_um, 1 / pixel_um)
    tifffile.imwrite(path, image, imagej=True, resolution=res, metadata={"unit": "um"})


def _mixed_sizes(folder: Path, kind: str) -> Path:
    """a.tif at 0.5 um, b.tif the next field binned 2x (1.0 um), c.tif at 0.502 um (0.4 %
    off: the same pixel size), in a CSV (pixels or micrometres) or a TileConfiguration."""
    rng = np.random.default_rng(1)
    sizes = {"a.tif": 0.5, "b.tif": 1.0, "c.tif": 0.502}
    for name, um in sizes.items():
        _write_plane(folder / name, rng.integers(1, 4000, (30, 40), dtype=np.uint16), um)
    xs = {"a.tif": 0, "b.tif": 35, "c.tif": 70}  # pixels of the first tile
    if kind == "txt":
        lines = ["dim = 2", *(f"{n}; ; ({x}.0, 0.0)" for n, x in xs.items())]
        path = folder / "TileConfiguration.txt"
    elif kind == "um":
        lines = ["path,x_um,y_um", *(f"{n},{x * 0.5},0" for n, x in xs.items())]
        path = folder / "t.csv"
    else:
        lines = ["path,x,y", *(f"{n},{x},0" for n, x in xs.items())]
        path = folder / "t.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", ["px", "um", "txt"])
def test_tiles_of_different_pixel_sizes_are_refused_naming_them(tmp_path, kind):
    """The binned tile was pasted at half its size, silently, at the first tile's scale."""
    path = _mixed_sizes(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        plan_fusion(path)
    text = str(info.value)
    assert text.startswith("1 of 3 tiles record a pixel size more than 1 % from the mosaic's")
    assert f"0.5 µm as {tmp_path / 'a.tif'} records" in text
    assert f"{tmp_path / 'b.tif'} 1 µm" in text and "c.tif" not in text
    assert "--pixel-size" in text


def test_with_a_given_pixel_size_tiles_that_record_another_are_named_in_a_warning(tmp_path, caplog):
    path = _mixed_sizes(tmp_path, "px")
    with caplog.at_level(logging.WARNING, logger="scopefx"):
        plan, _ = plan_fusion(path, options=FuseOptions(pixel_size_um=0.5))
    assert plan.pixel_size_um == 0.5
    assert "1 of 3 tiles record a pixel size more than 1 % from the mosaic's 0.5 µm" in caplog.text
    assert f"{tmp_path / 'b.tif'} 1 µm" in caplog.text and "c.tif" not in caplog.text


@pytest.mark.parametrize("ndim", [2, 3])
def test_an_edited_position_beside_an_affine_is_refused_naming_the_line(tmp_path, ndim):
    """x,y edited in a *.registered.csv did nothing: the affine placed the tile, silently.
    Rows an older to_csv wrote (x,y to 6 significant digits) still read."""
    positions = [(0.0, 0.0, 0.0), (123456.7, 10.5, 1.0), (700.125, 20.0, 2.0)]
    table = TileTable.from_positions(["a.tif", "b.tif", "c.tif"], [p[:ndim] for p in positions])
    path = tmp_path / "m.registered.csv"
    table.to_csv(path)
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    rows[2][1] = "123457"  # line 3: an older writer's 6 digits of the affine's 123456.7
    rows[3][ndim] = str(float(rows[3][ndim]) + 50)  # line 4: y (2D) or z (3D) moved by hand
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    axes = "x,y" if ndim == 2 else "x,y,z"
    with pytest.raises(ConfigError, match=rf"line 4: {axes} \(.+\) disagree with the affine's "
                       r"translation \(.+\) by 50 px.*delete the affine column"):  # fmt: skip
        read_tile_table(path)


def test_to_csv_writes_positions_that_read_back_exactly(tmp_path):
    """x,y were written with 6 significant digits: 123456.789 px became 123457, 2345678.25 px
    2.34568e+06."""
    positions = [(123456.789, 0.1 + 0.2), (2345678.25, -1e-7)]
    table = TileTable.from_positions(["a.tif", "b.tif"], positions)
    table.to_csv(tmp_path / "m.registered.csv")
    with (tmp_path / "m.registered.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    written = [(float(r["x"]), float(r["y"])) for r in rows]
    assert written == positions
    back = read_tile_table(tmp_path / "m.registered.csv")
    np.testing.assert_allclose(back.affines, table.affines, rtol=0, atol=1e-9)


def test_a_z_step_no_tile_records_can_be_given(tmp_path, capsys):
    """Tiles that record no z step had no way to be given one: z was the xy pixel size,
    z_um divided by it and the mosaic's z scale with it (review 36). ``--pixel-size-z`` /
    ``pixel_size_z_um=`` gives it, for CSV tables and instrument files alike."""
    from scopefx.cli import main

    truth = _truth()
    path = _stack_table(tmp_path, truth, "imagej", "um", step=None)
    table = read_tile_table(path, pixel_size_z_um=STEP_UM)
    np.testing.assert_allclose([t.offset for t in table], [(z, y, x) for x, y, z in LAYOUT])
    assert table.pixel_size_z_um == STEP_UM
    out = tmp_path / "m.ome.zarr"
    assert main(["fuse", str(path), "-o", str(out), "--pixel-size-z", str(STEP_UM)]) == 0
    assert "z step: 2 um" in capsys.readouterr().out
    group = zarr.open_group(out, mode="r")
    transforms = group.attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert transforms[0]["scale"] == [STEP_UM, PIXEL_UM, PIXEL_UM]
    covered = np.zeros(truth.shape, dtype=bool)
    for x, y, z in LAYOUT:
        covered[z : z + TILE[0], y : y + TILE[1], x : x + TILE[2]] = True
    np.testing.assert_array_equal(np.asarray(group["0"])[covered], truth[covered])
    # a table in pixels and planes: the given step is the mosaic's z scale
    pixels = _stack_table(tmp_path, truth, "imagej", "px", step=None)
    plan, _ = plan_fusion(pixels, options=FuseOptions(pixel_size_z_um=STEP_UM))
    assert plan.voxel_um == (STEP_UM, PIXEL_UM, PIXEL_UM)
    with pytest.raises(ConfigError, match="pixel_size_z_um must be None or a finite number > 0"):
        FuseOptions(pixel_size_z_um=0)
    assert FuseOptions.from_dict(FuseOptions(pixel_size_z_um=2.0).to_dict()).pixel_size_z_um == 2


def test_a_given_z_step_overrides_an_instrument_files_own(tmp_path):
    """An OME-TIFF whose PhysicalSizeZ is wrong: the given step places the planes (z
    positions in micrometres divided by it) and scales the mosaic."""
    from test_vendor_zstack import LAYOUT as STAGE_LAYOUT
    from test_vendor_zstack import STEP_UM as RECORDED
    from test_vendor_zstack import _truth as vendor_truth
    from test_vendor_zstack import _write_ome

    path = tmp_path / "scan.ome.tif"
    _write_ome(path, vendor_truth(1), step="PhysicalSizeZ")
    table = read_tile_table(path, pixel_size_z_um=RECORDED / 2)
    assert table.pixel_size_z_um == RECORDED / 2
    np.testing.assert_allclose([t.offset[0] for t in table], [2 * z for _, _, z in STAGE_LAYOUT])
