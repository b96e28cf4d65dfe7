"""Tile tables: CSV (pixels, micrometres, affines), Fiji TileConfiguration, rotation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scopefx.errors import ConfigError, ImageNotFoundError, UnsupportedFormatError
from scopefx.io import Tile, TileTable, read_tile_table
from scopefx.io._layout import layout_problems


def _write(path, text):
    path.write_text(text)
    return path


def test_csv_positions_in_pixels_resolve_paths_and_reverse_axes(tmp_path):
    table = read_tile_table(_write(tmp_path / "t.csv", "path,x,y\na.tif,10.5,20\nsub/b.tif,0,0\n"))
    assert table.ndim == 2 and len(table) == 2
    assert table[0].ref == str(tmp_path / "a.tif")
    assert table[1].ref == str(tmp_path / "sub" / "b.tif")
    np.testing.assert_array_equal(table[0].offset, [20, 10.5])  # index order: row, column
    assert table[0].is_translation


@pytest.mark.parametrize(
    "text",
    [
        "Path,X,Y\na.tif,10.5,20\n",  # headers as other tools capitalise them
        "PATH , x_UM , Y_um\na.tif,5.25,10\n",
        "path;x;y\na.tif;10,5;20\n",  # a spreadsheet in a decimal-comma locale
        "path\tx\ty\na.tif\t10.5\t20\n",
        "# exported by the stage software\n# 1 tile\npath,x,y\na.tif,10.5,20\n",
    ],
)
def test_csv_headers_in_any_case_and_semicolon_or_tab_tables_are_read(tmp_path, text):
    for name in ("t.csv", "t.tsv"):
        table = read_tile_table(_write(tmp_path / name, text), pixel_size_um=0.5)
        assert len(table) == 1 and table[0].ref == str(tmp_path / "a.tif")
        np.testing.assert_array_equal(table[0].offset, [20, 10.5])


def test_csv_micrometres_need_a_pixel_size(tmp_path):
    path = _write(tmp_path / "t.csv", "path,x_um,y_um\na.tif,100,50\n")
    with pytest.raises(ConfigError, match=r"micrometres.*--pixel-size"):
        read_tile_table(path)
    table = read_tile_table(path, pixel_size_um=0.5)
    np.testing.assert_array_equal(table[0].offset, [100, 200])
    assert table.pixel_size_um == 0.5


def test_csv_micrometres_take_the_pixel_size_the_tiles_record(tmp_path):
    import tifffile

    data = np.zeros((8, 8), np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data, resolution=(1e4 / 0.25, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")  # fmt: skip
    path = _write(tmp_path / "t.csv", "path,x_um,y_um\na.tif,100,50\n")
    table = read_tile_table(path)  # 0.25 um recorded by the tile: no --pixel-size needed
    assert table.pixel_size_um == pytest.approx(0.25)
    np.testing.assert_allclose(table[0].offset, [200, 400])
    # a given pixel size wins over the recorded one
    assert read_tile_table(path, pixel_size_um=0.5).pixel_size_um == 0.5
    # a TIFF's default 72 dpi is no pixel size: the table still asks for one
    tifffile.imwrite(tmp_path / "a.tif", data, resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(ConfigError, match=r"records no pixel size.*--pixel-size"):
        read_tile_table(path)


def test_csv_3d_positions(tmp_path):
    table = read_tile_table(_write(tmp_path / "t.csv", "path,x,y,z\na.tif,1,2,3\n"))
    assert table.ndim == 3
    np.testing.assert_array_equal(table[0].offset, [3, 2, 1])


def test_affine_column_is_authoritative_and_in_xy_order(tmp_path):
    affine = [[0.0, -1.0, 30.0], [1.0, 0.0, 40.0]]  # x' = -y + 30, y' = x + 40
    # x,y left blank: where given they must be the affine's translation (a disagreement is refused)
    text = f"path,x,y,affine\na.tif,,,{json.dumps(json.dumps(affine))}\n"
    table = read_tile_table(_write(tmp_path / "t.csv", text.replace('"', '"', 1)))
    a = table[0].affine
    # tile pixel (row 2, col 5) = (x 5, y 2) -> x' = 28, y' = 45 -> index (45, 28)
    np.testing.assert_allclose(a @ [2, 5, 1], [45, 28, 1])
    assert not table[0].is_translation


def test_rotation_turns_stage_positions_into_the_camera_frame(tmp_path):
    theta = 30.0
    c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    cam = np.array([100.0, 0.0])  # the tile lies 100 px along the camera's x axis
    stage = np.array([[c, -s], [s, c]]) @ cam
    text = f"path,x,y\na.tif,{stage[0]},{stage[1]}\n"
    table = read_tile_table(_write(tmp_path / "t.csv", text), rotation_deg=theta)
    np.testing.assert_allclose(table[0].offset, [0, 100], atol=1e-9)
    assert table[0].is_translation  # tiles are not resampled for the rotation


@pytest.mark.parametrize("kind", ["csv", "txt", "ome"])
def test_a_stage_axis_that_runs_against_the_image_is_flipped(tmp_path, kind):
    """Many stages count y upwards (or x leftwards) while image rows run down: read as they
    are, a 2x2 grid comes out mirrored. flip_y (flip_x) negates that axis, for tables and
    instrument files alike, with or without a rotation."""
    from _ome_helpers import ome_image, write_ome_xml

    # stage positions of a 2x2 grid of 100 px tiles stepped 80 px, y counting upwards
    stage = {"a": (0.0, 0.0), "b": (80.0, 0.0), "c": (0.0, -80.0), "d": (80.0, -80.0)}
    if kind == "csv":
        rows = "".join(f"{n}.tif,{x},{y}\n" for n, (x, y) in stage.items())
        path = _write(tmp_path / "t.csv", "path,x,y\n" + rows)
    elif kind == "txt":
        rows = "".join(f"{n}.tif; ; ({x}, {y})\n" for n, (x, y) in stage.items())
        path = _write(tmp_path / "t.txt", "dim = 2\n" + rows)
    else:  # positions in um at 0.5 um per pixel
        path = tmp_path / "t.ome.tif"
        images = [ome_image(k, (100, 100), positions_um=[(x / 2, y / 2)])
                  for k, (x, y) in enumerate(stage.values())]  # fmt: skip
        write_ome_xml(path, [np.zeros((100, 100), np.uint16)] * 4, images)

    def rows_cols(table):
        offsets = np.array([t.offset for t in table])
        return (offsets - offsets.min(axis=0)).tolist()  # (row, column), from the top left

    upright = [[0, 0], [0, 80], [80, 0], [80, 80]]  # a, b above c, d
    assert rows_cols(read_tile_table(path)) == [[80, 0], [80, 80], [0, 0], [0, 80]]  # mirrored
    assert rows_cols(read_tile_table(path, flip_y=True)) == upright
    # the table says how its positions were turned (a registration's refusal names it)
    assert "stage_turns" not in read_tile_table(path).extra
    assert read_tile_table(path, flip_y=True).extra["stage_turns"] == ["flip_y"]
    assert rows_cols(read_tile_table(path, flip_x=True, flip_y=True)) == [
        [0, 80], [0, 0], [80, 80], [80, 0]
    ]  # fmt: skip
    if kind != "ome":  # a rotation applies after the flip, in the camera's frame
        turned = read_tile_table(path, flip_y=True, rotation_deg=90.0)
        # (x, y) -> (y, -x) after the flip: a, b, c, d at (0, 0), (0, -80), (80, 0), (80, -80)
        np.testing.assert_allclose(rows_cols(turned), [[80, 0], [0, 0], [80, 80], [0, 80]],
                                   atol=1e-9)  # fmt: skip
        assert turned.extra["stage_turns"] == ["flip_y", "rotation_deg=90"]


def test_fuse_options_take_the_flips_as_booleans():
    from scopefx.fusion import FuseOptions

    assert FuseOptions(flip_y=True).to_dict()["flip_y"] is True
    with pytest.raises(ConfigError, match="flip_x must be true or false"):
        FuseOptions(flip_x="yes")


@pytest.mark.parametrize("theta", [90.0, 180.0, 270.0, -90.0])
def test_right_angle_rotations_keep_whole_pixel_positions_whole(tmp_path, theta):
    """cos(90 deg) is 6e-17: offsets came out 1e-13 off whole pixels, so tiles were resampled
    and the mosaic gained a row of fill."""
    text = "path,x,y\na.tif,0,0\nb.tif,454,0\nc.tif,0,454\n"
    table = read_tile_table(_write(tmp_path / "t.csv", text), rotation_deg=theta)
    offsets = np.array([t.offset for t in table])
    assert np.array_equal(offsets, np.round(offsets))  # exactly whole
    assert all(t.is_translation for t in table)


@pytest.mark.parametrize("registered", [False, True])
def test_fiji_tile_configuration_2d(tmp_path, registered):
    text = (
        "# Define the number of dimensions we are working on\ndim = 2\n\n"
        "# Define the image coordinates\n"
        "tile_1.tif; ; (0.0, 0.0)\ntile_2.tif; ; (460.25, -3.5)\n"
    )
    name = "TileConfiguration.registered.txt" if registered else "TileConfiguration.txt"
    table = read_tile_table(_write(tmp_path / name, text))
    assert [t.ref for t in table] == [str(tmp_path / "tile_1.tif"), str(tmp_path / "tile_2.tif")]
    np.testing.assert_array_equal(table[1].offset, [-3.5, 460.25])


def test_fiji_tile_configuration_3d(tmp_path):
    text = "dim = 3\na.tif; ; (0.0, 0.0, 0.0)\nb.tif; ; (10.0, 20.0, 30.0)\n"
    table = read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))
    assert table.ndim == 3
    np.testing.assert_array_equal(table[1].offset, [30, 20, 10])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,x,y\na.tif,1,2\n", "no 'path' column"),
        ("path,a,b\na.tif,1,2\n", "no position columns"),
        ("path,x,y\na.tif,one,2\n", r"line 2: position .* not numeric"),
        ("path,x,y\n,1,2\n", "line 2: empty path"),
        ("path,x,y\n", "holds no tiles"),
        ('path,affine\na.tif,"[[1, 0, 0]]"\n', r"affine of shape \(1, 3\), expected \(2, 3\)"),
        ('path,affine\na.tif,"[[0, 0, 0], [0, 0, 0]]"\n', "singular affine"),
        ('path,x,y,affine\na.tif,0,0,"[[1, 0, 0], [0, 1"\n', "not a JSON matrix"),
    ],
)
def test_bad_tables_name_the_problem(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        read_tile_table(_write(tmp_path / "t.csv", text))


def test_missing_or_unknown_table_files(tmp_path):
    with pytest.raises(ImageNotFoundError, match="does not exist"):
        read_tile_table(tmp_path / "nope.csv")
    with pytest.raises(UnsupportedFormatError, match=r"expected a \.csv table"):
        read_tile_table(_write(tmp_path / "t.json", "{}"))
    with pytest.raises(ConfigError, match=r"line 2: cannot parse"):
        read_tile_table(_write(tmp_path / "TileConfiguration.txt", "dim = 2\nnonsense\n"))


def test_a_folder_given_as_the_table_is_named_a_folder(tmp_path):
    """It was reported as a table that 'does not exist'."""
    (tmp_path / "tiles").mkdir()
    with pytest.raises(UnsupportedFormatError, match=r"'.*tiles' is a folder: give a table"):
        read_tile_table(tmp_path / "tiles")


def test_tile_configuration_with_an_unreadable_dim_line_is_a_config_error(tmp_path):
    text = "dim = 2D\na.tif; ; (0.0, 0.0)\n"
    with pytest.raises(ConfigError, match=r"line 1: cannot parse 'dim = 2D'; expected 'dim = 2'"):
        read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))


def test_to_csv_round_trips_affines_and_focus(tmp_path):
    (tmp_path / "a.tif").touch()
    a = np.array([[1.0, 0.01, 5.5], [-0.01, 1.0, 7.25], [0, 0, 1]])
    table = TileTable((Tile(str(tmp_path / "a.tif"), a, focus=123.0),))
    table.to_csv(tmp_path / "out.csv")
    back = read_tile_table(tmp_path / "out.csv")
    np.testing.assert_allclose(back[0].affine, a)
    assert back[0].focus == 123.0 and back[0].ref == str(tmp_path / "a.tif")
    assert "a.tif," in (tmp_path / "out.csv").read_text()  # relative to the table's folder


def test_from_positions_validates_shapes():
    with pytest.raises(ConfigError, match=r"positions_xy must have shape \(2, 2 or 3\)"):
        TileTable.from_positions(["a", "b"], [(0, 0, 0, 0), (1, 1, 1, 1)])
    with pytest.raises(ConfigError, match="holds no tiles"):
        TileTable(())


# --------------------------------------------------------------------------------------------
# What spreadsheets write (issue 16)


def test_trailing_commas_crlf_and_bom_are_read(tmp_path):
    text = "\ufeffpath,x,y,\r\na.tif,0,0,\r\nb.tif,90,0,\r\n\r\n"
    table = read_tile_table(_write(tmp_path / "t.csv", text))
    assert [t.ref for t in table] == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    np.testing.assert_array_equal(table[1].offset, [0, 90])


def test_extra_values_are_refused_with_the_line(tmp_path):
    path = _write(tmp_path / "t.csv", "path,x,y\na.tif,0,0\nb.tif,90,0,7\n")
    with pytest.raises(ConfigError, match=r"line 3: 4 values for 3 columns .*\['7'\]"):
        read_tile_table(path)


def test_latin1_table_is_read_with_a_warning_naming_the_line(tmp_path, caplog):
    path = tmp_path / "t.csv"
    path.write_bytes("path,x,y\na.tif,0,0\nprobe_é.tif,90,0\n".encode("latin-1"))
    with caplog.at_level("WARNING", logger="scopefx.io._tiles"):
        table = read_tile_table(path)
    assert table[1].ref == str(tmp_path / "probe_é.tif")
    assert "line 3" in caplog.text and "Latin-1" in caplog.text


def test_excel_sep_line_and_utf16_unicode_text_are_read(tmp_path):
    """European Excel's 'sep=;' first line (it was taken for the header: '3 values for 1
    columns') and Excel's "Unicode text" export (UTF-16 with its mark, tabs; it was read as
    Latin-1 and its header garbled)."""
    sep = read_tile_table(_write(tmp_path / "s.csv", "sep=;\npath;x;y\na.tif;0;0\nb.tif;90,5;0\n"))
    np.testing.assert_array_equal(sep[1].offset, [0, 90.5])
    for text in ("# sep=; in a comment\n\"sep=;\"\npath;x;y\na.tif;0;0\nb.tif;90,5;0\n",
                 "sep=\t\npath\tx\ty\na.tif\t0\t0\nb.tif\t90.5\t0\n"):  # fmt: skip
        np.testing.assert_array_equal(read_tile_table(_write(tmp_path / "q.csv", text))[1].offset,
                                      [0, 90.5])  # fmt: skip
    with pytest.raises(ConfigError, match=r"n\.csv, line 4"):
        read_tile_table(_write(tmp_path / "n.csv", "sep=;\npath;x;y\na.tif;0;0\nb.tif;x;0\n"))
    path = tmp_path / "u.txt.csv"
    path.write_bytes("path\tx\ty\r\nprobe_é.tif\t0\t0\r\nb.tif\t90\t0\r\n".encode("utf-16"))
    table = read_tile_table(path)
    assert table[0].ref == str(tmp_path / "probe_é.tif")
    np.testing.assert_array_equal(table[1].offset, [0, 90])
    path.write_bytes(b"\xff\xfe" + "path,x,y\n".encode("utf-16-le") + b"\x00\xd8")
    with pytest.raises(ConfigError, match="UTF-16"):
        read_tile_table(path)


def test_a_csv_table_named_txt_is_told_to_be_named_csv(tmp_path):
    """Excel saves "Unicode text" as .txt, which is read as a TileConfiguration."""
    path = tmp_path / "tiles.txt"
    path.write_bytes("path\tx\ty\r\na.tif\t0\t0\r\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"line 1: .*read as CSV when named \.csv or \.tsv"):
        read_tile_table(path)


def test_a_column_named_twice_is_refused(tmp_path):
    """'path,x,y,x' placed every tile by the last 'x' column, silently."""
    path = _write(tmp_path / "t.csv", "path,x,y,X\na.tif,0,0,999\nb.tif,90,0,999\n")
    with pytest.raises(ConfigError, match=r"line 1: column\(s\) \['x'\] named more than once"):
        read_tile_table(path)
    notes = _write(tmp_path / "n.csv", "path,x,y,note,note\na.tif,0,0,a,b\n")  # not read
    assert len(read_tile_table(notes)) == 1


@pytest.mark.parametrize("x", ["1e19", "-1e300", "1e17", "2e12"])
def test_positions_beyond_a_trillion_pixels_are_refused(tmp_path, x):
    """Positions of 1e19 px overflowed the mosaic's size (ValueError), 1e300 divided by zero,
    and 1e17 (every tile) fused 5 px too wide: a float no longer holds such a position."""
    path = _write(tmp_path / "t.csv", f"path,x,y\na.tif,{x},0\nb.tif,90,0\n")
    with pytest.raises(ConfigError, match=r"beyond \+-1e\+12 px.*unit"):
        read_tile_table(path)
    assert len(read_tile_table(_write(tmp_path / "ok.csv", "path,x,y\na.tif,1e11,0\n"))) == 1


def test_tile_configuration_with_bom_and_crlf(tmp_path):
    text = "\ufeff# Define the number of dimensions\r\ndim = 2\r\na.tif; ; (0.0, 0.0)\r\n"
    table = read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))
    assert len(table) == 1 and table.ndim == 2


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("t.csv", "path,x,y\na.tif,0,0\nb.tif,5,0\na.tif,9,9\n", 4),
        ("t.txt", "dim = 2\na.tif; ; (0, 0)\na.tif; ; (5, 0)\n", 3),
        # the same file under another spelling (it was fused twice, unwarned)
        ("u.csv", "path,x,y\nsub/../a.tif,0,0\n./a.tif,5,0\n", 3),
        ("u.txt", "dim = 2\na.tif; ; (0, 0)\nsub/../a.tif; ; (5, 0)\n", 3),
    ],
)
def test_duplicate_tiles_are_refused_by_name(tmp_path, name, text, line):
    with pytest.raises(ConfigError, match=rf"line {line}: tile '.*a\.tif' is listed twice"):
        read_tile_table(_write(tmp_path / name, text))


def test_layout_problems_name_units_and_isolated_tiles():
    shapes = [(100, 100)] * 4
    grid = [(0, 0), (90, 0), (0, 90), (90, 90)]
    assert layout_problems(TileTable.from_positions(list("abcd"), grid), shapes) == []
    far = TileTable.from_positions(list("abcd"), np.array(grid) * 100.0)
    problems = layout_problems(far, shapes)
    assert "no two of the 4 tiles overlap" in problems[0]
    assert "times the tiles' summed area" in problems[1]
    stray = TileTable.from_positions(list("abcd"), [*grid[:3], (5000, 5000)])
    assert any("1 tile(s) overlap no other tile: d" in p for p in layout_problems(stray, shapes))


def test_tiles_at_one_position_are_named(tmp_path):
    """Two rows of a table at one position (a tile under two names, a position not filled in)
    were fused over each other without a word; 0.6 px apart is two positions."""
    text = "path,x,y\na.tif,0,0\nb.tif,90,0\nc.tif,0.4,-0.3\nd.tif,90.6,0\ne.tif,0,0.2\n"
    problems = layout_problems(read_tile_table(_write(tmp_path / "t.csv", text)), [(100, 100)] * 5)
    assert len(problems) == 1
    assert problems[0].startswith(
        "3 tiles share a position with another tile (within 0.5 px): a.tif, c.tif, e.tif at "
        "x 0, y 0; one tile listed under two names"
    )
    three_d = TileTable.from_positions(["p.tif", "q.tif"], [(5, 5, 2), (5, 5, 2.3)])
    assert "p.tif, q.tif at x 5, y 5, z 2;" in layout_problems(three_d, [(4, 100, 100)] * 2)[0]


def test_tiles_at_one_position_are_warned_about_under_registration(caplog):
    """Registration warns about them as about its other layout problems, and registers."""
    from scopefx import samples
    from scopefx.fusion import register

    image = samples.bundled_image("immunohistochemistry", size=300).astype(np.float32)
    tiles = {"a": image[:160, :160], "b": image[:160, 112:272], "c": image[:160, :160]}
    table = TileTable.from_positions(list(tiles), [(0, 0), (112, 0), (0, 0)])
    with caplog.at_level("WARNING", logger="scopefx.fusion._register"):
        reg = register(table, read=tiles.__getitem__, shapes=[(160, 160)] * 3)
    assert "2 tiles share a position with another tile (within 0.5 px): a, c at x 0, y 0" in (
        caplog.text
    )
    np.testing.assert_allclose(reg.table[1].offset - reg.table[0].offset, [0, 112], atol=0.5)


def test_tile_configuration_multiseries_lines_name_the_tile_of_the_file(tmp_path):
    """Fiji writes 'scan.czi; N; (x, y)' for the tiles of one multi-series file; the series was
    dropped and the table refused as listing 'scan.czi' twice."""
    text = "dim = 2\nmultiseries = true\nscan.czi; 0; (0.0, 0.0)\nscan.czi; 1; (832.0, 0.0)\n"
    table = read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))
    assert table.refs == [f"{tmp_path / 'scan.czi'}::tile/0", f"{tmp_path / 'scan.czi'}::tile/1"]
    np.testing.assert_array_equal(table[1].offset, [0, 832])
    bad = text.replace("; 1;", "; one;")
    with pytest.raises(ConfigError, match=r"line 4: series 'one' is not a tile number"):
        read_tile_table(_write(tmp_path / "TileConfiguration.txt", bad))


def test_tables_written_on_windows_use_backslash_folders(tmp_path):
    """'tiles\\a.tif' was taken for a file named so, and every tile reported missing."""
    csv_table = read_tile_table(_write(tmp_path / "t.csv", "path,x,y\ntiles\\a.tif,0,0\n"))
    text = "dim = 2\ntiles\\a.tif; ; (0.0, 0.0)\n"
    fiji = read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))
    assert csv_table.refs == fiji.refs == [str(tmp_path / "tiles" / "a.tif")]


def test_python_digit_grouping_is_not_a_number(tmp_path):
    """float() reads '1_000' as 1000: a typo in a table was taken as a position."""
    with pytest.raises(ConfigError, match=r"line 3: position .*1_000.* is not numeric"):
        read_tile_table(_write(tmp_path / "t.csv", "path,x,y\na.tif,0,0\nb.tif,1_000,5\n"))
    text = "dim = 2\na.tif; ; (0, 0)\nb.tif; ; (1_000, 5)\n"
    with pytest.raises(ConfigError, match=r"line 3: position .*1_000.* is not numeric"):
        read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity"])
def test_positions_that_are_not_finite_name_their_line(tmp_path, value):
    """float() reads 'nan' and 'inf': the table was taken, and the fusion refused 'tile 2'
    for an affine holding NaN, without the line (and with a NumPy warning for inf)."""
    with pytest.raises(ConfigError, match=r"line 3: position .* is not a finite number"):
        read_tile_table(_write(tmp_path / "t.csv", f"path,x,y\na.tif,0,0\nb.tif,{value},5\n"))
    text = f"dim = 2\na.tif; ; (0, 0)\nb.tif; ; ({value}, 5)\n"
    with pytest.raises(ConfigError, match=r"line 3: position .* is not a finite number"):
        read_tile_table(_write(tmp_path / "TileConfiguration.txt", text))


def test_a_tile_named_with_a_hash_is_a_tile_not_a_comment(tmp_path):
    table = read_tile_table(_write(tmp_path / "t.csv", "# stage export\npath,x,y\n#001.tif,0,0\n"))
    assert table.refs == [str(tmp_path / "#001.tif")]


def test_windows_absolute_paths_are_read_by_name_beside_the_table(tmp_path, caplog):
    """'C:\\Users\\me\\scan\\a.tif' was joined to the table's folder as a relative path
    ('.../C:/Users/me/scan/a.tif'); the tiles copied with the table are found by name."""
    text = (
        "path,x,y\nC:\\Users\\me\\scan\\a.tif,0,0\n\\\\server\\share\\b.tif,10,0\nD:/x/c.tif,20,0\n"
    )
    with caplog.at_level("WARNING", logger="scopefx.io._tiles"):
        table = read_tile_table(_write(tmp_path / "t.csv", text))
    assert table.refs == [str(tmp_path / n) for n in ("a.tif", "b.tif", "c.tif")]
    assert sum("Windows paths" in r.message for r in caplog.records) == 1


def test_a_comment_line_below_the_header_is_skipped(tmp_path):
    """'# first row' below the header was read as a tile whose position is not numeric."""
    text = "path,x,y\n# first row\na.tif,0,0\n#  ,\n#002.tif,10,0\n"
    table = read_tile_table(_write(tmp_path / "t.csv", text))
    assert [r.rsplit("/", 1)[-1] for r in table.refs] == ["a.tif", "#002.tif"]


def test_a_table_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from scopefx.errors import ResourceLimitError
    from scopefx.io import _texttable

    path = _write(tmp_path / "t.csv", "path,x,y\n" + "a.tif,0,0\n" * 100)
    monkeypatch.setattr(_texttable, "TABLE_LIMIT_BYTES", 500)
    with pytest.raises(ResourceLimitError, match=r"t\.csv.*over the limit"):
        read_tile_table(path)


@pytest.mark.parametrize("score", ["nan", "inf", "-3"])
def test_a_focus_score_that_is_no_score_is_refused_where_it_would_weigh(tmp_path, score):
    """NaN, infinity and negative focus scores made blend="focus" weigh every tile alike,
    silently. The table is still read (a stage export's 'Focus' may be the focus drive's
    position, unused unless blend="focus"), and blend="focus" refuses it, naming the tile."""
    from scopefx.fusion import FusionParams, make_plan

    path = _write(tmp_path / "t.csv", f"path,x,y,focus\na.tif,0,0,12\nb.tif,90,0,{score}\n")
    table = read_tile_table(path)
    make_plan(table, [(64, 64)] * 2)  # linear blending: the scores are not used
    with pytest.raises(ConfigError, match=r"1 are not a finite score >= 0 \(first: .*b\.tif"):
        make_plan(table, [(64, 64)] * 2, params=FusionParams(blend="focus"))
    out = tmp_path / "back.csv"
    scored = TileTable.from_positions(["a.tif", "b.tif"], [(0, 0), (9, 0)],
                                      focus=[3.0, float("nan")])  # fmt: skip
    scored.to_csv(out)  # NaN is written as no score, and reads back as none
    assert [t.focus for t in read_tile_table(out)] == [3.0, None]


def test_micrometre_positions_land_on_whole_pixels_without_float_noise(tmp_path):
    """4.55 um at 0.65 um/px is 6.999999999999999 px in floating point (an OME-TIFF's 295.1
    um, 453.99999999999983 px): such a tile was fused as a fractional one (seams up to 2 grey
    levels from the same layout in pixels). Translations within 1e-9 px of a whole pixel are
    that pixel; others keep their fraction."""
    path = _write(tmp_path / "t.csv", "path,x_um,y_um\na.tif,0,0\nb.tif,4.55,0\nc.tif,0.1,0\n")
    table = read_tile_table(path, pixel_size_um=0.65)
    assert table[1].offset.tolist() == [0.0, 7.0]
    assert table[2].offset[1] == 0.1 / 0.65


def test_a_table_with_pixel_and_micrometre_columns_says_which_it_reads(tmp_path, caplog):
    """x,y and x_um,y_um that disagreed: x,y were used without a word."""
    path = _write(tmp_path / "both.csv", "path,x,y,x_um,y_um\na.tif,0,0,0,0\nb.tif,100,0,999,0\n")
    with caplog.at_level("WARNING", logger="scopefx.io"):
        table = read_tile_table(path)
    assert table[1].offset.tolist() == [0.0, 100.0]
    assert "tiles are placed by x,y, and x_um,y_um are not read" in caplog.text


def test_an_affine_that_scales_a_tile_a_thousandfold_is_a_layout_problem():
    """A table's affine in micrometres (scale 1000) made a 32 GiB mosaic of two tiles without
    a warning; a scale of 2 (a binned tile) is no problem."""
    table = TileTable.from_positions(["a.tif", "b.tif"], [(0, 0), (90, 0)])
    affines = table.affines
    affines[1, :2, :2] *= 2.0
    assert not any(
        "scaled" in p for p in layout_problems(table.with_affines(affines), [(100, 100)] * 2)
    )
    affines[1, :2, :2] *= 500.0
    problems = layout_problems(table.with_affines(affines), [(100, 100)] * 2)
    assert any("1 tile(s) are scaled by their affine far from 1:1 (b.tif; 1e+03x)" in p
               for p in problems), problems  # fmt: skip


def test_a_tile_configuration_whose_dim_changes_names_the_line(tmp_path):
    """'dim = 3' after a 2D tile gave 'tile 0 ...: affine of shape (3, 3), expected (4, 4)', no
    file or line; a configuration of no tiles said 'dim = None; only 2D and 3D ...'."""
    text = "dim = 2\na.tif; ; (0, 0)\ndim = 3\nb.tif; ; (100, 0, 0)\n"
    with pytest.raises(ConfigError, match=r"t\.txt, line 3: dim = 3 after 1 tile\(s\) of dim = 2"):
        read_tile_table(_write(tmp_path / "t.txt", text))
    with pytest.raises(ConfigError, match=r"e\.txt: the tile configuration places no tiles"):
        read_tile_table(_write(tmp_path / "e.txt", "# nothing yet\n"))


def test_a_url_table_is_refused_as_a_url_and_a_file_url_is_read(tmp_path):
    """'s3://bucket/tiles.csv' was looked for as the local folder 's3:' and reported as not
    existing; a URL is refused as one, and a file:// URL is read as the local path."""
    with pytest.raises(UnsupportedFormatError, match=r"s3:// references are not supported"):
        read_tile_table("s3://bucket/run/tiles.csv")
    path = _write(tmp_path / "t.csv", "path,x,y\na.tif,0,0\nb.tif,90,0\n")
    table = read_tile_table(f"file://{path}")
    assert table.refs == read_tile_table(path).refs and len(table) == 2


def test_binary_data_named_like_a_table_is_refused_as_such(tmp_path):
    """Random bytes named tiles.csv were read as Latin-1, and the error listed some 300
    characters of mojibake as its 'columns'."""
    path = tmp_path / "tiles.csv"
    path.write_bytes(np.random.default_rng(0).bytes(4000) + b"\x00")
    with pytest.raises(ConfigError, match=r"not a text table \(line \d+ holds a NUL byte"):
        read_tile_table(path)
    wide = _write(tmp_path / "wide.csv", ",".join(f"column{k}" * 9 for k in range(12)) + "\n")
    with pytest.raises(ConfigError, match=r"no 'path' column; columns are .*\.\.\..* and 4 more"):
        read_tile_table(wide)
