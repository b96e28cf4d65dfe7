"""The output's ``origin_px`` is stored in the documented (x, y) order (issue 16)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from scopefx.errors import ConfigError
from scopefx.fusion import FuseOptions, fuse
from scopefx.io import TileTable, read_metadata


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


def test_non_square_pixels_are_no_pixel_size(tmp_path):
    """Tiles 0.5 um wide and 1.0 um high: micrometre positions were divided by the width
    alone (tile 1, 100 um below tile 0, went 200 rows down), the OME-Zarr's scale said
    0.5 um; now the pixel size is unknown, and a micrometre table says why."""
    for kind in ("tiff", "ome"):
        paths = []
        for k in range(2):
            paths.append(tmp_path / f"{kind}{k}.tif")
            data = np.full((128, 128), k + 1, np.uint16)
            if kind == "tiff":
                tifffile.imwrite(
                    paths[-1], data, resolution=(2e4, 1e4), resolutionunit="CENTIMETER"
                )
            else:
                tifffile.imwrite(paths[-1], data, ome=True,
                                 metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 1.0})  # fmt: skip
        meta = read_metadata(str(paths[0]))
        assert meta.pixel_size_um is None and "non-square" in meta.raw["pixel_size_ignored"]
        table = tmp_path / f"{kind}.csv"
        table.write_text(f"path,x_um,y_um\n{paths[0].name},0,0\n{paths[1].name},0,100\n")
        with pytest.raises(ConfigError, match=r"no pixel size \(.*non-square pixels, 0\.5 um wide"):
            fuse(str(table), tmp_path / f"{kind}.ome.zarr")
        placed = TileTable.from_positions([str(p) for p in paths], [(0, 0), (0, 100)])
        result = fuse(placed, tmp_path / f"{kind}_px.ome.zarr", options=FuseOptions(pyramid=False))
        assert result.pixel_size_um is None
