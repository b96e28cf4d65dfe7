"""The output's ``origin_px`` is stored in the documented (x, y) order (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from scopefx.fusion import FuseOptions, fuse
from scopefx.io import TileTable


def test_origin_px_reads_back_as_x_then_y(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], rng.integers(0, 255, (40, 60), dtype=np.uint8))
    table = TileTable.from_positions(paths, [(10, 30), (60, 30)])  # x from 10, y from 30
    out = tmp_path / "m.ome.zarr"
    result = fuse(table, out, options=FuseOptions(pyramid=False))
    assert result.origin_px == (30, 10)  # the attribute: index order (y, x)
    attrs = json.loads((out / ".zattrs").read_text())["scopefx"]
    assert attrs["origin_px"] == [10, 30] and attrs["axes_px"] == "xy"
    assert result.to_dict()["origin_px"] == [10, 30]


def test_default_dpi_tiles_give_no_physical_scale(tmp_path):
    """72 dpi tiles fused to a 352.8 um pixel size before; now the size is unknown."""
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], np.full((40, 60), k + 1, np.uint8), resolution=(72, 72),
                         resolutionunit="INCH")  # fmt: skip
    result = fuse(TileTable.from_positions(paths, [(0, 0), (50, 0)]), tmp_path / "m.ome.zarr")
    assert result.pixel_size_um is None


def test_layout_that_does_not_overlap_is_warned(tmp_path, caplog):
    """Positions 100x too large fused to a huge mosaic of lone tiles without a word."""
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], np.full((40, 60), k + 1, np.uint8))
    table = TileTable.from_positions(paths, [(0, 0), (500, 0)])
    with caplog.at_level("WARNING", logger="scopefx.fusion._write"):
        result = fuse(table, tmp_path / "m.ome.zarr", options=FuseOptions(pyramid=False))
    assert "no two of the 2 tiles overlap" in caplog.text
    assert any("times the tiles' summed area" in p for p in result.extra["layout_problems"])


def test_the_summary_says_where_the_pixel_size_came_from(tmp_path):
    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], np.full((40, 60), k + 1, np.uint8), resolution=(2e4, 2e4),
                         resolutionunit="CENTIMETER")  # fmt: skip
    table = TileTable.from_positions(paths, [(0, 0), (50, 0)])
    result = fuse(table, tmp_path / "a.ome.zarr", options=FuseOptions(pyramid=False))
    assert result.pixel_size_um == 0.5
    assert result.extra["pixel_size_from"] == "TIFF resolution tags (20000 px/cm) of t0.tif"
    result = fuse(
        table, tmp_path / "b.ome.zarr", options=FuseOptions(pyramid=False, pixel_size_um=0.25)
    )
    assert result.extra["pixel_size_from"] == "given (--pixel-size)"


def test_an_unfinished_store_names_its_own_axes(tmp_path):
    """A prepared, not yet written 2D store said ``axes_px: "xyz"`` beside a 2D origin."""
    from scopefx import prepare

    paths = []
    for k in range(2):
        paths.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], np.full((40, 60), k + 1, np.uint8))
    out = tmp_path / "m.ome.zarr"
    prepare(TileTable.from_positions(paths, [(10, 30), (60, 30)]), out, workers=1)
    attrs = json.loads((out / ".zattrs").read_text())["scopefx"]
    assert attrs["origin_px"] == [10, 30] and attrs["axes_px"] == "xy"
