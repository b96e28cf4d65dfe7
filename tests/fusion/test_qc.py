"""The stitching QC report (issue 16): contents, files, summary line, report without fusing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_register import _grid, _memory_reader, _table

from scopefx.fusion._qc import overlap_agreement, qc_only, registration_report, report_summary
from scopefx.fusion._register import register

SHAPES = [(160, 160)] * 9


@pytest.fixture(scope="module")
def mosaic():
    tiles, true, stage = _grid(3, 3, 160, (120, 120), seed=30, stage_error=4)
    tiles[4] = np.full_like(tiles[4], 0.4)  # the centre tile is blank: its pairs are modelled
    return tiles, true, stage


def _tiff_tiles(tiles: list[np.ndarray], folder: Path) -> list[str]:
    """The tiles written as 8-bit TIFFs ``t0.tif``, ``t1.tif``, ... in ``folder``."""
    import tifffile

    paths = []
    for k, tile in enumerate(tiles):
        paths.append(str(folder / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], (tile * 200).astype(np.uint8))
    return paths


def test_report_contents(mosaic) -> None:
    tiles, _, stage = mosaic
    read = _memory_reader(tiles)
    reg = register(_table(stage), read=read, shapes=SHAPES)
    report = registration_report(reg, read=read, shapes=SHAPES)
    json.dumps(report, allow_nan=False)  # plain JSON
    s = report["summary"]
    assert (s["tiles"], s["pairs"], s["pairs_corner"], s["pairs_blank"]) == (9, 20, 8, 4)
    assert s["pairs_used"] == 8 and s["pairs_modelled"] == 4
    assert s["overlap_agreement"] > s["overlap_agreement_stage"]
    assert s["overlap_agreement"] > 0.9
    by = {(p["i"], p["j"]): p for p in report["pairs"]}
    side = by[(0, 1)]
    assert side["status"] == "used" and side["used"] and side["residual_px"] < 0.2
    assert side["overlap_px"][0] < side["overlap_px"][1]  # x, y: the pair steps along x
    assert by[(1, 4)]["status"] == "blank" and by[(1, 4)]["modelled"] is not None
    tile = report["tiles"][0]
    np.testing.assert_allclose(tile["stage"], stage[0][::-1], atol=1e-4)
    np.testing.assert_allclose(
        np.subtract(tile["position"], tile["stage"]), tile["shift"], atol=1e-3
    )
    assert tile["size"] == [160, 160]
    assert report["params"] == reg.params.to_dict()
    line = report_summary(report)
    assert line.startswith("registration: 8 of 12 side pairs used (4 blank; 4 set by the stage")
    assert "8 corner pairs not measured" in line and "overlap agreement" in line


def test_overlap_agreement_falls_when_tiles_are_misplaced(mosaic) -> None:
    tiles, true, _ = mosaic
    read = _memory_reader(tiles)
    good, pairs = overlap_agreement(_table(true), read=read, shapes=SHAPES)
    off = true.copy()
    off[0] += (3, -2)
    bad, _ = overlap_agreement(_table(off), read=read, shapes=SHAPES)
    assert good > 0.95 and bad < good - 0.05
    assert len(pairs) == 20 and all(n > 0 for _, _, _, n in pairs)
    assert all(math.isnan(c) for i, j, c, _ in pairs if 4 in (i, j))  # blank: nothing to compare


def test_overlap_agreement_does_not_depend_on_where_the_whole_layout_sits(mosaic) -> None:
    """A shift common to every tile changes no overlap. Resampling both tiles of a pair at
    half a pixel smoothed their noise and raised the score (Leica 4x3 scan: 0.394 on whole
    pixels, 0.456 half a pixel off), so a layout was rewarded for blurring the mosaic."""
    tiles, true, _ = mosaic
    rng = np.random.default_rng(5)
    noisy = [t + rng.normal(0, 0.05, t.shape).astype(np.float32) for t in tiles]
    read = _memory_reader(noisy)
    whole = np.round(true)
    scores = [overlap_agreement(_table(whole + d), read=read, shapes=SHAPES)[0]
              for d in (0.0, 0.25, 0.5, np.array([0.5, -0.3]))]  # fmt: skip
    np.testing.assert_allclose(scores, scores[0], atol=2e-3)  # the boxes differ by a row
    # relative sub-pixel differences still count: one tile half a pixel off scores lower
    off = whole.copy()
    off[0] += (0.5, 0.5)
    assert overlap_agreement(_table(off), read=read, shapes=SHAPES)[0] < scores[0] - 1e-3


def test_qc_without_fusing_writes_the_report_beside_the_output(mosaic, tmp_path: Path) -> None:
    tiles, _, stage = mosaic
    out = tmp_path / "run" / "mosaic.ome.zarr"
    reg, report, (js, png) = qc_only(_table(stage), out, read=_memory_reader(tiles), shapes=SHAPES)
    assert (js.name, png.name) == ("mosaic.qc.json", "mosaic.qc.png")
    assert json.loads(js.read_text()) == report
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not out.exists()  # nothing fused
    with open(tmp_path / "run" / "mosaic.registered.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 9
    assert (tmp_path / "run" / "mosaic.pairs.csv").is_file()
    assert reg.table.refs == _table(stage).refs


def test_the_report_checks_the_task_time_of_its_registration(
    mosaic, tmp_path: Path, monkeypatch
) -> None:
    """The QC report reads every tile again: it checks the endpoint's task time
    (SCOPEFX_TASK_TIMEOUT_S) before each read, counted from the start of the registration, and
    writes nothing when stopped. The clock is made to jump 120 s once the tiles are registered,
    against a 60 s limit."""
    import types

    from scopefx.errors import ResourceLimitError
    from scopefx.fusion import _qc
    from scopefx.io import _limits

    tiles, _, stage = mosaic
    real_register, real_monotonic, skipped = _qc.register_from, _limits.time.monotonic, [0.0]

    def slow_register(*args, **kwargs):
        reg = real_register(*args, **kwargs)
        skipped[0] = 120.0
        return reg

    monkeypatch.setattr(_qc, "register_from", slow_register)
    clock = types.SimpleNamespace(monotonic=lambda: real_monotonic() + skipped[0])
    monkeypatch.setattr(_limits, "time", clock)  # the task clock's time only
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "60")
    out = tmp_path / "mosaic.ome.zarr"
    match = r"overlap agreement of the QC report stopped after 12\d.* 0 of 9 tiles were compared"
    with pytest.raises(ResourceLimitError, match=match):
        qc_only(_table(stage), out, read=_memory_reader(tiles), shapes=SHAPES)
    assert list(tmp_path.iterdir()) == []


def test_fuse_registers_flat_field_corrected_tiles_and_writes_the_report(
    mosaic, tmp_path: Path, monkeypatch
) -> None:
    """fuse(register=True, flatfield="estimate") estimates the flat field first and registers
    corrected tiles (it used to register raw tiles), then writes the QC report beside out."""

    from scopefx.fusion import FuseOptions, fuse
    from scopefx.fusion import _qc as qc_module

    tiles, _, stage = mosaic
    paths = _tiff_tiles(tiles, tmp_path)
    seen = []
    real = qc_module.register_from  # registration for fuse() goes through the QC path

    def spy(*args, **kwargs):
        seen.append(kwargs.get("flatfield"))
        return real(*args, **kwargs)

    monkeypatch.setattr(qc_module, "register_from", spy)
    table = _table(stage, paths)
    out = tmp_path / "m.ome.zarr"
    result = fuse(table, out, options=FuseOptions(register=True, flatfield="estimate"))
    assert len(seen) == 1 and seen[0] is not None  # the estimated flat field
    summary = result.extra["registration"]
    assert Path(summary["qc"]).name == "m.qc.json" and Path(summary["qc_png"]).is_file()
    assert summary["summary_line"].startswith("registration: ")
    # the blank centre tile is named in the summary a script reads, not only in the QC file
    assert (summary["tiles_unmatched"], summary["unmatched_tiles"]) == (1, [paths[4]])
    qc = json.loads(Path(summary["qc"]).read_text())["summary"]
    assert summary["overlap_agreement"] == qc["overlap_agreement"] > 0.5


def test_a_plan_refused_after_registration_leaves_the_report(mosaic, tmp_path: Path) -> None:
    """Planning the registered layout can still refuse it (over the size limit, say, when a
    tile was placed far off); the QC report that shows where each tile went was not written,
    as it is only once the output is made."""

    from scopefx.errors import ConfigError
    from scopefx.fusion import FuseOptions, FusionParams, fuse

    tiles, _, stage = mosaic
    paths = _tiff_tiles(tiles, tmp_path)
    out = tmp_path / "m.ome.zarr"
    with pytest.raises(ConfigError, match="over the limit") as caught:
        fuse(_table(stage, paths), out, params=FusionParams(max_output_gib=1e-6),
             options=FuseOptions(register=True))  # fmt: skip
    qc = tmp_path / "m.qc.json"
    assert f"QC report, which shows where each tile was placed and why: {qc}" in str(caught.value)
    written = json.loads(qc.read_text())
    assert written["summary"]["tiles"] == 9 and "over the limit" in written["plan_refused"]
    assert not out.exists()
    # the retry the error suggests replaces that report (no mosaic was made from it)
    result = fuse(_table(stage, paths), out, params=FusionParams(max_output_gib=1e-6),
                  options=FuseOptions(register=True, force=True))  # fmt: skip
    assert out.exists() and json.loads(qc.read_text())["plan_refused"] is None
    assert result.extra["registration"]["pairs_unchecked_weak"] == 0


def test_a_layout_over_the_endpoints_hard_limit_leaves_the_report(
    mosaic, tmp_path: Path, monkeypatch
) -> None:
    """The endpoint's own size limit (which --force does not lift) refuses the layout too."""

    from scopefx.errors import ResourceLimitError
    from scopefx.fusion import FuseOptions, fuse

    tiles, _, stage = mosaic
    paths = _tiff_tiles(tiles, tmp_path)
    monkeypatch.setenv("SCOPEFX_MAX_OUTPUT_GIB", "1e-6")
    with pytest.raises(ResourceLimitError, match="hard limit") as caught:
        fuse(_table(stage, paths), tmp_path / "m.ome.zarr",
             options=FuseOptions(register=True, force=True))  # fmt: skip
    assert "QC report, which shows where each tile was placed" in str(caught.value)
    assert "hard limit" in json.loads((tmp_path / "m.qc.json").read_text())["plan_refused"]


def test_a_report_that_cannot_be_written_does_not_hide_the_refused_plan(
    mosaic, tmp_path: Path, monkeypatch
) -> None:

    from scopefx.errors import ConfigError, DiskFullError
    from scopefx.fusion import FuseOptions, FusionParams, fuse
    from scopefx.fusion import _qc as qc_module

    tiles, _, stage = mosaic
    paths = _tiff_tiles(tiles, tmp_path)

    def full(*args, **kwargs):
        raise DiskFullError("no space left on the device")

    monkeypatch.setattr(qc_module, "write_report", full)
    with pytest.raises(ConfigError, match="over the limit") as caught:
        fuse(_table(stage, paths), tmp_path / "m.ome.zarr",
             params=FusionParams(max_output_gib=1e-6),
             options=FuseOptions(register=True))  # fmt: skip
    assert "QC report was not written: no space left" in str(caught.value)


def test_only_a_refused_layout_writes_the_report(mosaic, tmp_path: Path) -> None:
    """Planning errors that are not about where the tiles lie (a focus score that is no
    score, for blend="focus") say nothing of the registration and leave no side file."""

    from scopefx.errors import ConfigError
    from scopefx.fusion import FuseOptions, FusionParams, fuse

    tiles, _, stage = mosaic
    paths = _tiff_tiles(tiles, tmp_path)
    table = _table(stage, paths)
    scored = table.with_focus([1.0] * 8 + [-3.0])
    with pytest.raises(ConfigError, match="not a finite score") as caught:
        fuse(scored, tmp_path / "m.ome.zarr", params=FusionParams(blend="focus"),
             options=FuseOptions(register=True))  # fmt: skip
    assert "QC report" not in str(caught.value)
    assert not (tmp_path / "m.qc.json").exists()


def test_a_tile_no_used_pair_placed_is_named_in_the_report(mosaic, tmp_path: Path) -> None:
    """The blank centre tile: each of its pairs failed and the stage model placed it. The
    report counted pairs only, so its entry read like any registered tile's and the summary
    line did not name it (review 36, F4); the QC picture now marks it too."""
    from PIL import Image

    from scopefx.fusion._qc import _plot_graph

    tiles, _, stage = mosaic
    read = _memory_reader(tiles)
    report = registration_report(register(_table(stage), read=read, shapes=SHAPES), read=read,
                                 shapes=SHAPES)  # fmt: skip
    assert report["summary"]["tiles_unmatched"] == 1
    centre = report["tiles"][4]
    assert (centre["pairs_used"], centre["placed_by"], centre["unmatched"]) == (0, "stage model",
                                                                                True)  # fmt: skip
    others = [t for t in report["tiles"] if t["index"] != 4]
    assert all(t["placed_by"] == "registration" and not t["unmatched"] for t in others)
    assert sorted(t["pairs_used"] for t in others) == [2, 2, 2, 2, 2, 2, 2, 2]
    assert "; 1 tile placed by the stage model alone: tile_04" in report_summary(report)

    def red_pixels(rep: dict) -> int:
        _plot_graph(rep, tmp_path / "g.png")
        rgb = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"), dtype=int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum())

    unmarked = {**report, "tiles": [{**t, "unmatched": False} for t in report["tiles"]]}
    assert red_pixels(report) > red_pixels(unmarked) + 500


def test_a_weak_used_pair_no_loop_checks_is_named(mosaic, tmp_path: Path) -> None:
    """A used pair that is the only link between two groups of tiles has residual 0 whatever
    its error: the report drew it in the colour of the best fit. It now says no loop checks
    it, the summary line names it when its match is weak, and the picture marks it."""
    import dataclasses

    from PIL import Image

    from scopefx.fusion._qc import _plot_graph

    tiles, _, stage = mosaic
    read = _memory_reader(tiles)
    reg = register(_table(stage), read=read, shapes=SHAPES)
    # the ring of 8 used pairs around the blank centre, opened at (0, 1): a chain, and one
    # of its links weak
    pairs = [dataclasses.replace(p, used=False, status="outlier") if (p.i, p.j) == (0, 1)
             else dataclasses.replace(p, quality=0.4) if (p.i, p.j) == (2, 5) else p
             for p in reg.pairs]  # fmt: skip
    opened = dataclasses.replace(reg, pairs=tuple(pairs))
    report = registration_report(opened, read=read, shapes=SHAPES)
    s = report["summary"]
    assert (s["pairs_unchecked"], s["pairs_unchecked_weak"]) == (7, 1)
    by = {(p["i"], p["j"]): p for p in report["pairs"]}
    assert not by[(2, 5)]["loop_checked"] and not by[(0, 1)]["loop_checked"]
    assert "1 used pair rests on a weak match (NCC under 0.8) that no loop checks" in (
        report_summary(report)
    )
    assert "tile_02-tile_05" in report_summary(report)
    closed = registration_report(reg, read=read, shapes=SHAPES)
    assert closed["summary"]["pairs_unchecked"] == 0
    assert all(p["loop_checked"] == p["used"] for p in closed["pairs"])
    assert "no loop checks" not in report_summary(closed)

    def pink_pixels(rep: dict) -> int:
        _plot_graph(rep, tmp_path / "g.png")
        rgb = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"), dtype=int)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        return int(((r > 220) & (g < 90) & (b > 100) & (b < 200)).sum())

    assert pink_pixels(report) > pink_pixels(closed) + 300


def test_the_picture_leaves_the_callers_pyplot_alone(mosaic, tmp_path: Path) -> None:
    """A notebook's pyplot backend stays as it was: the picture was drawn through pyplot after
    ``matplotlib.use("Agg")``, which switched a Jupyter kernel's inline backend to Agg on every
    ``fuse(register=True)``, so that the user's later ``plt`` figures were no longer shown.
    Run in a fresh interpreter whose pyplot already uses another backend (``pdf`` stands in for
    the inline one: any backend but Agg)."""
    import subprocess
    import sys

    tiles, _, stage = mosaic
    read = _memory_reader(tiles)
    report = registration_report(register(_table(stage), read=read, shapes=SHAPES), read=read,
                                 shapes=SHAPES)  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(report))
    script = (
        "import json, sys, matplotlib\n"
        "matplotlib.use('pdf')\n"
        "import matplotlib.pyplot as plt\n"
        "plt.figure()\n"
        "from scopefx.fusion._qc import _plot_graph\n"
        "_plot_graph(json.load(open(sys.argv[1])), sys.argv[2])\n"
        "print(matplotlib.get_backend(), plt.get_fignums())\n"
    )
    args = [sys.executable, "-c", script, str(tmp_path / "r.json"), str(tmp_path / "g.png")]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["pdf", "[1]"]  # the caller's backend and its open figure
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"


def test_a_side_file_that_cannot_be_written_names_its_folder(tmp_path, monkeypatch) -> None:
    """A side file that cannot be written (no permission in its folder, a name too long) is
    a ConfigError naming it (the command line: exit 2, not a traceback), not the hidden
    staging folder it would have been written in."""
    import errno
    import os

    from scopefx.fusion._publish import publish

    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).endswith(".staging"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    from scopefx.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot write .*m\.qc\.json: Permission denied") as info:
        publish(tmp_path / "m.qc.json", lambda p: p.write_text("{}"), replace=False)
    assert ".staging" not in str(info.value)
    assert not (tmp_path / "m.qc.json").exists()
