"""Leica LIF tile scans placed by the stage positions their ``TileScanInfo`` records (issue 16).

The files are written by ``_lif_helpers.write_lif`` (Leica's LIF layout, version 2) and read
through the real bioio-lif plugin and liffile: tiles cut from a bundled image at 10 % overlap
with their true positions recorded in metres, from a stage origin far from zero."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from _lif_helpers import write_lif  # the test extra installs bioio-lif: no skip without it
from scopefx.errors import ConfigError, UnsupportedFormatError
from scopefx.io import read_image, read_metadata, read_tile_table

PIXEL_M = 0.65e-6
ORIGIN_M = (0.031285, -0.004217)  # where the scan starts on the stage


def _scan(rows: int = 2, cols: int = 3, size: int = 96, seed: int = 0):
    """Tiles of a bundled image (uint16), their true positions (x, y) in pixels, the image."""
    from scopefx.samples import bundled_image

    rng = np.random.default_rng(seed)
    step = round(size * 0.9)
    image = (bundled_image("camera", size=(rows * step + size + 8, cols * step + size + 8))
             * 4000).astype(np.uint16)  # fmt: skip
    truth, tiles = [], []
    for r in range(rows):
        for c in range(cols):
            x, y = c * step + int(rng.integers(0, 5)), r * step + int(rng.integers(0, 5))
            truth.append((x, y))
            tiles.append(image[y : y + size, x : x + size].copy())
    return tiles, np.array(truth, dtype=float), image


def _recorded(truth_px: np.ndarray, *, flip_x=False, flip_y=False, swap_xy=False):
    """The PosX/PosY (metres) an instrument whose stage axes differ from the image's so
    records: the image's (x, y), each flipped axis negated, then swapped."""
    x = ORIGIN_M[0] + truth_px[:, 0] * PIXEL_M
    y = ORIGIN_M[1] + truth_px[:, 1] * PIXEL_M
    x, y = (-x if flip_x else x), (-y if flip_y else y)
    return list(zip(y, x, strict=True)) if swap_xy else list(zip(x, y, strict=True))


def test_a_lif_tile_scan_is_placed_by_its_recorded_stage_positions(tmp_path):
    """The tiles overlap by 10 %; bioio-lif's own mosaic positions (grid fields a tile less one
    pixel apart) would abut them. An overview image ahead of the scan in the project is
    skipped: the first image that is a tile scan is read."""
    tiles, truth, _ = _scan()
    fields = [(c, r) for r in range(2) for c in range(3)]
    overview = np.zeros((40, 50), np.uint16)
    path = write_lif(tmp_path / "project.lif", tiles, _recorded(truth), pixel_m=PIXEL_M,
                     fields=fields, before=[overview])  # fmt: skip
    table = read_tile_table(path)
    assert len(table) == 6 and table.extra["vendor"] == "lif"
    assert table.pixel_size_um == pytest.approx(0.65)
    offsets = np.array([t.offset for t in table])  # (y, x)
    np.testing.assert_allclose(offsets[:, ::-1], truth - truth.min(axis=0), atol=1e-6)
    np.testing.assert_allclose(table.extra["stage_origin_um"],
                               np.array(ORIGIN_M) * 1e6 + truth.min(axis=0) * 0.65)  # fmt: skip
    for k in (0, 4):
        np.testing.assert_array_equal(read_image(table[k].ref), tiles[k])
    meta = read_metadata(table[5].ref)
    assert (meta.shape, meta.dtype) == ((96, 96), "uint16")
    assert meta.pixel_size_um == pytest.approx(0.65)
    with pytest.raises(ConfigError, match=r"tile 6 of 6"):
        read_image(f"{path}::tile/6")


@pytest.mark.parametrize(
    ("flip_x", "flip_y", "swap_xy"),
    [(True, False, False), (False, True, False), (True, True, False), (False, False, True),
     (True, False, True)],
)  # fmt: skip
def test_a_lif_stage_whose_axes_run_against_the_image_is_turned_by_its_flags(
    tmp_path, flip_x, flip_y, swap_xy
):
    tiles, truth, _ = _scan()
    stage = _recorded(truth, flip_x=flip_x, flip_y=flip_y, swap_xy=swap_xy)
    path = write_lif(tmp_path / "scan.lif", tiles, stage, pixel_m=PIXEL_M, flip_x=flip_x,
                     flip_y=flip_y, swap_xy=swap_xy)  # fmt: skip
    offsets = np.array([t.offset for t in read_tile_table(path)])
    np.testing.assert_allclose(offsets[:, ::-1], truth - truth.min(axis=0), atol=1e-6)


def test_a_given_pixel_size_overrides_the_recorded_one_for_the_positions(tmp_path):
    tiles, truth, _ = _scan()
    path = write_lif(tmp_path / "scan.lif", tiles, _recorded(truth), pixel_m=PIXEL_M)
    table = read_tile_table(path, pixel_size_um=1.3)  # the recorded 0.65 was wrong
    assert table.pixel_size_um == 1.3
    offsets = np.array([t.offset for t in table])
    np.testing.assert_allclose(offsets[:, ::-1], (truth - truth.min(axis=0)) / 2, atol=1e-6)


def test_a_lif_without_a_tile_scan_or_a_pixel_size_is_refused_by_name(tmp_path):
    path = write_lif(tmp_path / "single.lif", [np.ones((30, 40), np.uint16)], [(0.0, 0.0)])
    with pytest.raises(UnsupportedFormatError, match=r"single\.lif'.*TileScanInfo"):
        read_tile_table(path)
    tiles, truth, _ = _scan()
    path = write_lif(tmp_path / "nosize.lif", tiles, _recorded(truth), pixel_m=0.0)
    with pytest.raises(ConfigError, match=r"nosize\.lif'.*no pixel size.*--pixel-size"):
        read_tile_table(path)


def test_a_lif_tile_scan_fuses_into_the_image_it_was_cut_from(tmp_path, capsys):
    """``scopefx fuse project.lif`` end to end, registered: the mosaic is the image."""
    import zarr

    from scopefx.cli import main

    tiles, truth, image = _scan(seed=3)
    path = write_lif(tmp_path / "project.lif", tiles, _recorded(truth), pixel_m=PIXEL_M)
    out = tmp_path / "m.ome.zarr"
    assert main(["fuse", str(path), "-o", str(out), "--register"]) == 0
    fused = zarr.open_group(out, mode="r")["0"][...]
    lo = truth.min(axis=0).astype(int)
    expect = image[lo[1] : lo[1] + fused.shape[-2], lo[0] : lo[0] + fused.shape[-1]]
    assert fused.shape[-2:] == (96 + int(truth[:, 1].max() - lo[1]),
                                96 + int(truth[:, 0].max() - lo[0]))  # fmt: skip
    covered = np.zeros(fused.shape[-2:], bool)
    for x, y in (truth - lo).astype(int):
        covered[y : y + 96, x : x + 96] = True
    assert covered.mean() > 0.95
    np.testing.assert_allclose(np.squeeze(fused)[covered].astype(float), expect[covered], atol=1)
    assert "pixel size: LIF file metadata" in capsys.readouterr().out


def test_a_lif_is_read_from_the_file_that_was_checked(tmp_path, monkeypatch):
    """bioio-lif and liffile open the file again by the name they are given; they are given
    the checked descriptor (/proc/self/fd/N), so a file swapped in under the same name later
    is never what is read."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data))
    tiles, truth, _ = _scan()
    path = write_lif(data / "scan.lif", tiles, _recorded(truth), pixel_m=PIXEL_M)
    before = read_image(f"{path}::tile/1")
    stat = path.stat()
    other = write_lif(data / "swapped", [t + 1000 for t in tiles], _recorded(truth))
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)  # same name, same time: a reader by name would read this
    np.testing.assert_array_equal(read_image(f"{path}::tile/1"), before)
    assert Path(path).is_file()


def test_a_lif_tile_over_the_pixel_budget_is_refused_before_decoding(tmp_path, monkeypatch):
    import bioio_lif

    from scopefx.errors import ResourceLimitError

    tiles, truth, _ = _scan()
    path = write_lif(tmp_path / "scan.lif", tiles, _recorded(truth), pixel_m=PIXEL_M)
    decoded = []
    monkeypatch.setattr(bioio_lif.Reader, "get_image_data", lambda *a, **k: decoded.append(a))
    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_PX", "5000")  # a tile is 96 x 96
    with pytest.raises(ResourceLimitError, match=r"::tile/2' declares a 96x96 uint16"):
        read_image(f"{path}::tile/2")
    assert decoded == []


def test_a_lif_project_s_other_tile_scans_are_named_and_chosen_by_scene(tmp_path, caplog):
    """A LAS X project holds several tile scans: the first is read by default, with a warning
    that names the others; ``scene`` (index or name) reads another, its tiles referenced as
    ``file::scene/S/tile/N``."""
    tiles, truth, _ = _scan()
    second, truth2, _ = _scan(rows=1, cols=2, size=80, seed=5)
    second = [t // 2 + 7 for t in second]
    path = write_lif(tmp_path / "project.lif", tiles, _recorded(truth), pixel_m=PIXEL_M,
                     before=[np.zeros((40, 50), np.uint16)],
                     more=[(second, _recorded(truth2))])  # fmt: skip
    with caplog.at_level("WARNING", logger="scopefx.io._vendor"):
        first = read_tile_table(path)
    assert len(first) == 6 and first[0].ref.endswith("project.lif::tile/0")
    assert "holds 2 mosaics; read: scene 1 ('TileScan 1'); not read: 'TileScan 2'" in caplog.text
    for scene in ("TileScan 2", 2, "2"):
        table = read_tile_table(path, scene=scene)
        assert len(table) == 2 and table[1].ref == f"{path}::scene/2/tile/1"
        np.testing.assert_allclose(np.array([t.offset for t in table])[:, ::-1],
                                   truth2 - truth2.min(axis=0), atol=1e-6)  # fmt: skip
        np.testing.assert_array_equal(read_image(table[1].ref), second[1])
    # the first scan's tiles still read as they did, whichever scene was read last
    np.testing.assert_array_equal(read_image(first[4].ref), tiles[4])
    np.testing.assert_array_equal(read_image(f"{path}::scene/1/tile/4"), tiles[4])
    with pytest.raises(UnsupportedFormatError, match=r"image 'Overview 1' is no tile scan"):
        read_tile_table(path, scene=0)
    with pytest.raises(
        ConfigError,
        match=r"no scene 'TileScan 9': its scenes are 0: "
        r"'Overview 1', 1: 'TileScan 1', 2: 'TileScan 2'",
    ):
        read_tile_table(path, scene="TileScan 9")
    with pytest.raises(ConfigError, match=r"no scene 3"):
        read_image(f"{path}::scene/3/tile/0")
    with pytest.raises(UnsupportedFormatError, match=r"'file::scene/S/tile/N'"):
        read_image(f"{path}::scene/x/tile/0")


def test_scene_is_refused_for_a_table_and_checked_as_an_option(tmp_path):
    from scopefx.fusion import FuseOptions

    table = tmp_path / "tiles.csv"
    table.write_text("path,x,y\na.tif,0,0\n")
    with pytest.raises(ConfigError, match=r"scene 1 is given but .*tiles\.csv' is a tile table"):
        read_tile_table(table, scene=1)
    for bad in (True, -1, "", 1.5, "a\0b", 10**5000):
        with pytest.raises(ConfigError, match=r"scene must be None, a scene index"):
            FuseOptions(scene=bad)
    assert FuseOptions.from_dict(FuseOptions(scene="TileScan 2").to_dict()).scene == "TileScan 2"


def test_scopefx_fuse_reads_the_scene_it_is_given(tmp_path, capsys):
    import zarr

    from scopefx.cli import main

    tiles, truth, _ = _scan()
    second, truth2, _ = _scan(rows=1, cols=2, size=80, seed=5)
    path = write_lif(tmp_path / "project.lif", tiles, _recorded(truth), pixel_m=PIXEL_M,
                     more=[(second, _recorded(truth2))])  # fmt: skip
    out = tmp_path / "m.ome.zarr"
    assert main(["fuse", str(path), "-o", str(out), "--scene", "TileScan 2"]) == 0
    fused = zarr.open_group(out, mode="r")["0"]
    span = truth2.max(axis=0) - truth2.min(axis=0)
    assert fused.shape[-2:] == (80 + int(span[1]), 80 + int(span[0]))


def test_two_threads_reading_two_scans_of_one_file_by_two_names_get_their_own_tiles(tmp_path):
    """The cached reader is shared by every spelling of the file's path and a read sets its
    scene: the lock that guards it is the resolved file's, not the spelling's (a link to the
    project read beside it returned the other scan's tiles, found by a review)."""
    import threading

    first = [np.full((64, 64), 100 + k, np.uint16) for k in range(4)]
    second = [np.full((64, 64), 200 + k, np.uint16) for k in range(4)]
    stage = [(k * 1e-4, 0.0) for k in range(4)]
    path = write_lif(tmp_path / "p.lif", first, stage, more=[(second, stage)])
    link = tmp_path / "link.lif"
    link.symlink_to(path)
    wrong: list[tuple[int, int, int]] = []

    def run(name, scene, base):
        for i in range(120):
            value = int(read_image(f"{name}::scene/{scene}/tile/{i % 4}")[0, 0])
            if value != base + i % 4:
                wrong.append((scene, i % 4, value))

    threads = [threading.Thread(target=run, args=(path, 0, 100)),
               threading.Thread(target=run, args=(link, 1, 200))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


def test_a_lif_that_is_no_lif_or_has_non_square_pixels_is_refused_by_name(tmp_path):
    junk = tmp_path / "junk.lif"
    junk.write_bytes(b"\x70\x00\x00\x00 this is not a Leica file" * 10)
    with pytest.raises(UnsupportedFormatError, match=r"junk\.lif' cannot be read as a LIF") as e:
        read_tile_table(junk)
    assert "/proc/self/fd" not in str(e.value)
    tiles, truth, _ = _scan()
    path = write_lif(tmp_path / "ns.lif", tiles, _recorded(truth), pixel_m=PIXEL_M,
                     pixel_y_m=2 * PIXEL_M)  # fmt: skip
    with pytest.raises(UnsupportedFormatError, match=r"ns\.lif': its pixels are not square"):
        read_tile_table(path)


def test_an_absurd_scene_is_refused_clearly(tmp_path):
    from scopefx.fusion import FuseOptions, fuse

    tiles, truth, _ = _scan()
    path = write_lif(tmp_path / "scan.lif", tiles, _recorded(truth), pixel_m=PIXEL_M)
    for scene in ("9" * 5000, 10**30, 10**5000):
        with pytest.raises(ConfigError, match=r"scan\.lif' has no scene"):
            read_tile_table(path, scene=scene)
    with pytest.raises(UnsupportedFormatError, match=r"'file::scene/S/tile/N'"):
        read_image(f"{path}::scene/{'9' * 40}/tile/0")
    with pytest.raises(ConfigError, match=r"scene 1 is given with a TileTable"):
        fuse(read_tile_table(path), tmp_path / "m.ome.zarr", options=FuseOptions(scene=1))
