"""grid_tile_table: tiles named by their place in a grid (MIST's and Fiji's inputs) placed on
their nominal grid."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from scopefx.errors import ConfigError, ImageNotFoundError
from scopefx.io import GRID_ORDERS, grid_tile_table, read_tile_table

LEICA = (
    Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tiles_real" / "leica_tma4x3"
)


def _tile(path: Path, shape: tuple[int, ...] = (40, 50)) -> None:
    tifffile.imwrite(path, np.zeros(shape, np.uint8))


def _placed(table) -> dict[str, tuple[float, float]]:
    """File name -> (x, y)."""
    return {Path(r).name: (float(a[1, 2]), float(a[0, 2]))
            for r, a in zip(table.refs, table.affines, strict=True)}  # fmt: skip


def test_rows_and_columns_from_mists_names_counted_from_the_first_found(tmp_path) -> None:
    """MIST's ``img_r{rrr}_c{ccc}`` numbered from 1: row 1, column 1 is the origin; x steps
    by ``round(50 * 0.9) = 45`` px, y by ``round(40 * 0.8) = 32``; a missing tile (r2 c3) leaves
    its place empty, and a file of another pattern is not a tile."""
    for r in (1, 2):
        for c in (1, 2, 3):
            if (r, c) != (2, 3):
                _tile(tmp_path / f"img_r{r:03d}_c{c:03d}.tif")
    _tile(tmp_path / "img_r1_c1.tif")  # two digits short of {rrr}: not matched
    (tmp_path / "notes.txt").write_text("x")
    table = grid_tile_table(tmp_path / "img_r{rrr}_c{ccc}.tif", (10, 20))
    assert _placed(table) == {
        "img_r001_c001.tif": (0, 0), "img_r001_c002.tif": (45, 0), "img_r001_c003.tif": (90, 0),
        "img_r002_c001.tif": (0, 32), "img_r002_c002.tif": (45, 32),
    }  # fmt: skip
    assert table.ndim == 2 and table.source.endswith("img_r{rrr}_c{ccc}.tif")
    out = tmp_path / "tiles.csv"
    table.to_csv(out)
    assert _placed(read_tile_table(out)) == _placed(table)


#: Where tile k (0..5) of a 2 x 3 grid sits, (row, column), per order and start corner.
PLACES = {
    ("rows", "top-left"): [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)],
    ("snake-rows", "top-left"): [(0, 0), (0, 1), (0, 2), (1, 2), (1, 1), (1, 0)],
    ("columns", "top-left"): [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)],
    ("snake-columns", "top-left"): [(0, 0), (1, 0), (1, 1), (0, 1), (0, 2), (1, 2)],
    ("rows", "top-right"): [(0, 2), (0, 1), (0, 0), (1, 2), (1, 1), (1, 0)],
    ("snake-rows", "bottom-left"): [(1, 0), (1, 1), (1, 2), (0, 2), (0, 1), (0, 0)],
    ("snake-columns", "bottom-right"): [(1, 2), (0, 2), (0, 1), (1, 1), (1, 0), (0, 0)],
}


@pytest.mark.parametrize(("order", "start"), list(PLACES))
def test_numbered_tiles_follow_the_stages_order(tmp_path, order: str, start: str) -> None:
    """Fiji's ``tile_{iii}`` numbered from 1, on a 2 x 3 grid: each order and start corner puts
    tile k where the stage took it."""
    assert order in GRID_ORDERS
    for k in range(6):
        _tile(tmp_path / f"tile_{k + 1:03d}.tif")
    table = grid_tile_table(tmp_path / "tile_{iii}.tif", 0, grid=(2, 3), order=order,
                            start=start)  # fmt: skip
    got = _placed(table)
    for k, (r, c) in enumerate(PLACES[(order, start)]):
        assert got[f"tile_{k + 1:03d}.tif"] == (c * 50, r * 40), (k, got)


def test_first_index_when_the_first_tile_is_missing(tmp_path, caplog) -> None:
    """Tiles 0 and 1 of a 1 x 4 row are missing: by default the smallest found (2) is taken
    for the first, with a warning; ``first_index=0`` puts tile 2 at column 2."""
    for k in (2, 3):
        _tile(tmp_path / f"t{k}.tif")
    with caplog.at_level("WARNING", logger="scopefx"):
        guessed = grid_tile_table(tmp_path / "t{index}.tif", 0, grid=(1, 4))
    assert _placed(guessed)["t2.tif"] == (0, 0)
    assert "smallest tile number found, 2, is taken for the first" in caplog.text
    table = grid_tile_table(tmp_path / "t{index}.tif", 0, grid=(1, 4), first_index=0)
    assert _placed(table) == {"t2.tif": (100, 0), "t3.tif": (150, 0)}


def test_colour_tiles_are_placed_by_their_pixels_not_their_samples(tmp_path) -> None:
    for c in range(2):
        tifffile.imwrite(tmp_path / f"rgb_0_{c}.tif", np.zeros((30, 60, 3), np.uint8),
                         photometric="rgb")  # fmt: skip
    table = grid_tile_table(tmp_path / "rgb_{row}_{col}.tif", 50)
    assert _placed(table) == {"rgb_0_0.tif": (0, 0), "rgb_0_1.tif": (30, 0)}


@pytest.mark.parametrize(
    ("files", "pattern", "kwargs", "error", "match"),
    [
        (["a_1_1.tif", "a_01_1.tif"], "a_{row}_{col}.tif", {}, ConfigError,
         "a_01_1.tif and a_1_1.tif both sit at row 0, column 0"),
        (["a_1.tif"], "a_{q}.tif", {}, ConfigError, "unknown placeholder"),
        (["a_1.tif"], "a_{row}.tif", {}, ConfigError, "either the row and the column"),
        (["a_1_2.tif"], "a_{row}_{row}.tif", {}, ConfigError, "row appears twice"),
        (["a_1.tif"], "a_{index}.tif", {}, ConfigError, "give the grid's shape"),
        (["a_1.tif", "a_9.tif"], "a_{index}.tif", {"grid": (2, 2)}, ConfigError,
         "a_9.tif: tile number 8 .* outside the 2 x 2 grid"),
        (["a_0_0.tif", "a_0_5.tif"], "a_{row}_{col}.tif", {"grid": (1, 3)}, ConfigError,
         "a_0_5.tif: row 0, column 5 .* outside the 1 x 3 grid"),
        (["a_1.tif"], "b_{index}.tif", {"grid": (1, 1)}, ImageNotFoundError, "no file"),
        (["a_1.tif"], "a_{index}.tif", {"grid": (1, 1), "order": "zigzag"}, ConfigError,
         "order must be one of"),
        (["a_1.tif"], "a_{index}.tif", {"grid": (0, 1)}, ConfigError, "grid must be"),
        (["a_1_1.tif"], "a_{row}_{col}.tif", {"order": "snake-rows"}, ConfigError,
         "order only place numbered tiles"),
        (["a_0_0.tif", "a_0_1.tif", "a_0_9999.tif"], "a_{row}_{col}.tif", {}, ConfigError,
         r"span 1 rows x 10000 columns \(the farthest, a_0_9999.tif"),
    ],
)  # fmt: skip
def test_what_cannot_be_a_grid_is_refused_by_name(tmp_path, files, pattern, kwargs, error,
                                                  match) -> None:  # fmt: skip
    for name in files:
        _tile(tmp_path / name)
    with pytest.raises(error, match=match):
        grid_tile_table(tmp_path / pattern, 10, **kwargs)


def test_links_stay_as_named_and_two_names_of_one_file_or_a_dead_link_are_refused(
    tmp_path,
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    _tile(store / "acq_0.tif")
    _tile(store / "acq_1.tif")
    scan = tmp_path / "scan"
    scan.mkdir()
    (scan / "t_0_0.tif").symlink_to(store / "acq_0.tif")
    (scan / "t_0_1.tif").symlink_to(store / "acq_1.tif")
    table = grid_tile_table(scan / "t_{row}_{col}.tif", 0)
    assert [Path(r).parent for r in table.refs] == [scan, scan]
    (scan / "t_0_2.tif").symlink_to(store / "acq_1.tif")
    with pytest.raises(ConfigError, match=r"t_0_1.tif and .*t_0_2.tif are one file"):
        grid_tile_table(scan / "t_{row}_{col}.tif", 0)
    (scan / "t_0_2.tif").unlink()
    (scan / "t_0_2.tif").symlink_to(store / "gone.tif")
    with pytest.raises(ImageNotFoundError, match=r"t_0_2.tif: a link to nothing"):
        grid_tile_table(scan / "t_{row}_{col}.tif", 0)


def test_fijis_position_names_literal_braces_and_the_home_folder(tmp_path, monkeypatch) -> None:
    """Fiji's ``{yyy}``/``{xxx}`` (row, column); ``{{``/``}}`` in the name and braces that are
    no placeholder in the folder are literal; ``~`` is the home folder."""
    run = tmp_path / "run{A}"
    run.mkdir()
    for r, c in ((0, 0), (0, 1), (1, 0)):
        _tile(run / f"s{{x}}_{r:03d}_{c:03d}.tif")
    monkeypatch.setenv("HOME", str(tmp_path))
    table = grid_tile_table("~/run{A}/s{{x}}_{yyy}_{xxx}.tif", 0)
    assert _placed(table) == {"s{x}_000_000.tif": (0, 0), "s{x}_000_001.tif": (50, 0),
                              "s{x}_001_000.tif": (0, 40)}  # fmt: skip
    with pytest.raises(ConfigError, match=r"not in the folder \(\{row\}\)"):
        grid_tile_table(tmp_path / "{row}" / "s_{col}.tif", 10)


def test_planar_colour_and_z_stack_tiles_are_placed_by_their_pixels(tmp_path) -> None:
    """A planar RGB tile (3, H, W) is H x W px, not 3 x H; z-stack tiles (Z, Y, X) make a 3D
    table at z = 0."""
    for c in range(2):
        tifffile.imwrite(tmp_path / f"p_0_{c}.tif", np.zeros((3, 30, 60), np.uint8),
                         photometric="rgb", planarconfig="separate")  # fmt: skip
        tifffile.imwrite(tmp_path / f"z_0_{c}.tif", np.zeros((5, 30, 60), np.uint8))
    assert _placed(grid_tile_table(tmp_path / "p_{row}_{col}.tif", 50)) == {
        "p_0_0.tif": (0, 0), "p_0_1.tif": (30, 0)
    }  # fmt: skip
    stacks = grid_tile_table(tmp_path / "z_{row}_{col}.tif", 50)
    assert stacks.ndim == 3
    np.testing.assert_allclose(stacks.affines[:, :3, 3], [(0, 0, 0), (0, 0, 30)])


def test_odd_sizes_overlaps_and_folders_are_refused(tmp_path) -> None:
    _tile(tmp_path / "s_0_0.tif")
    _tile(tmp_path / "s_0_1.tif", (40, 51))
    with pytest.raises(ConfigError, match=r"s_0_1.tif: 40 x 51 px, but .*s_0_0.tif is 40 x 50"):
        grid_tile_table(tmp_path / "s_{row}_{col}.tif", 10)
    for bad in (100, -1, (10, 20, 30), "ten", float("nan")):
        with pytest.raises(ConfigError, match="overlap_pct"):
            grid_tile_table(tmp_path / "s_{row}_{col}.tif", bad)
    (tmp_path / "s_0_1.tif").unlink()
    with pytest.raises(ConfigError, match="no step between neighbours"):
        grid_tile_table(tmp_path / "s_{row}_{col}.tif", 99.5)
    with pytest.raises(ImageNotFoundError, match="does not exist"):
        grid_tile_table(tmp_path / "absent" / "s_{row}_{col}.tif", 10)


def test_the_real_leica_scan_by_its_names_is_its_stage_table() -> None:
    """The Leica 4 x 3 scan's tiles (``r{row}-c{col}.png``, 512 px, 454 px apart) at its
    nominal 11.33 % overlap: the same positions as the stage table it ships with."""
    if not LEICA.is_dir():
        pytest.skip(f"real tile set {LEICA} is absent")
    table = grid_tile_table(LEICA / "tiles" / "r{row}-c{col}.png", 11.33)
    with open(LEICA / "stage.csv", newline="") as fh:
        stage = {Path(r["path"]).name: (float(r["x"]), float(r["y"])) for r in csv.DictReader(fh)}
    assert _placed(table) == stage


def test_an_overlap_under_one_percent_warns_that_it_is_a_percentage(tmp_path, caplog) -> None:
    """``--overlap 0.1`` (a fraction, as other tools take it) is 0.1 %: the tiles are placed
    almost abutting, with a warning that names the 10 % that may have been meant."""
    for k in (0, 1):
        _tile(tmp_path / f"t{k}.tif")
    with caplog.at_level("WARNING", logger="scopefx"):
        table = grid_tile_table(tmp_path / "t{index}.tif", 0.1, grid=(1, 2))
    assert _placed(table)["t1.tif"] == (50, 0)  # round(50 * 0.999)
    assert "a percentage (10 for 10 %), not a fraction: if 10 % was meant, give 10" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scopefx"):
        grid_tile_table(tmp_path / "t{index}.tif", (10, 0), grid=(1, 2))
    assert "percentage" not in caplog.text
