"""``scopefx fuse`` end to end on real files."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from scopefx.cli import main
from scopefx.fusion import report_summary as summary_of
from scopefx.samples import make_mosaic, write_mosaic

SMALL = {"grid": (3, 3), "tile_px": 128, "name": "retina", "jitter_px": 3}


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def test_fuse_writes_mosaic_preview_and_summary(tmp_path):
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    out = tmp_path / "m.ome.zarr"
    code, text = _run(
        "fuse", str(table), "-o", str(out), "--chunk", "128", "--preview",
        str(tmp_path / "p.png"), "--json", str(tmp_path / "r.json"), "--pixel-size", "0.2", "-q",
    )  # fmt: skip
    assert code == 0, text
    assert "9 tiles" in text and "preview:" in text
    assert (tmp_path / "p.png").stat().st_size > 10_000
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["n_tiles"] == 9 and summary["pixel_size_um"] == 0.2
    assert zarr.open_array(out / "0", mode="r").shape == tuple(summary["shape"])
    # the size x first, as origin_px gives positions (the array's shape is y, x)
    height, width = summary["shape"]
    assert f"{width} x {height} px (x, y)" in text
    code, text = _run("fuse", str(table), "-o", str(out), "--chunk", "128", "--resume", "-q",
                      "--pixel-size", "0.2")  # fmt: skip
    assert code == 0 and "0 chunks written" in text


def test_fuse_to_a_tiff_writes_the_preview_it_reports(tmp_path):
    """With -o mosaic.tif the CLI printed 'preview: p.png' and wrote no preview."""
    from PIL import Image

    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    code, text = _run(
        "fuse", str(table), "-o", str(tmp_path / "m.tif"), "--preview", str(tmp_path / "p.png"),
        "-q",
    )  # fmt: skip
    assert code == 0 and "preview:" in text, text
    assert "one TIFF, 9 tiles" in text and "chunks" not in text  # it has none (was "1 chunks")
    assert tifffile.imread(tmp_path / "m.tif").ndim == 2
    with Image.open(tmp_path / "p.png") as im:
        assert im.size[0] > 200 and im.text.get("scopefx") == "preview of m.tif"
    from scopefx.fusion.plot import write_preview

    write_preview(tmp_path / "small.png", tmp_path / "m.tif", max_px=100)  # 2x means to fit
    assert (tmp_path / "small.png").stat().st_size > 1000


def test_fuse_to_a_tiff_with_register_names_the_sidecars_it_wrote(tmp_path):
    """The summary named 'm.tif.registered.csv' while 'm.registered.csv' was written."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    code, text = _run(
        "fuse", str(table), "-o", str(tmp_path / "m.tif"), "--register", "-q",
        "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    assert code == 0, text
    registration = json.loads((tmp_path / "r.json").read_text())["registration"]
    assert registration["table"] == str(tmp_path / "m.registered.csv")
    for key in ("table", "pairs_csv", "qc", "qc_png"):
        assert Path(registration[key]).is_file(), key


def test_fuse_json_summary_in_a_folder_not_made_yet(tmp_path):
    """--json into a new folder: a FileNotFoundError traceback after the mosaic was written."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    out = tmp_path / "new" / "r.json"
    code, text = _run(
        "fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q", "--json", str(out)
    )
    assert code == 0 and json.loads(out.read_text())["n_tiles"] == 9, text


def test_fuse_usage_errors_exit_2_data_errors_exit_3(tmp_path, capsys):
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    with pytest.raises(SystemExit) as info:
        main(["fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q", "--chunk", "0"])
    assert info.value.code == 2
    assert "--chunk must be between 16 and 16384, got 0" in capsys.readouterr().err
    (tmp_path / "tiles" / "tile_0003.tif").unlink()
    with pytest.raises(SystemExit) as info:  # a missing tile: nothing fused
        main(["fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q"])
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "1 of 9 tiles are missing" in err and "tile_0003.tif" in err
    code, text = _run("fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q",
                      "--skip-missing")  # fmt: skip
    assert code == 0 and "skipped 1 missing tiles" in text and "tile_0003.tif" in text


def test_fuse_register_refines_wrong_stage_positions(tmp_path):
    """Stage positions off by up to 5 px: --register puts the tiles back (within 0.5 px of
    the truth, up to one shift shared by all tiles) and writes the refined table and pairs."""
    mosaic = make_mosaic(**{**SMALL, "grid": (3, 3), "tile_px": 160}, overlap=0.2)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    rng = np.random.default_rng(3)
    rows = _rows(table)
    error = rng.uniform(-5, 5, (len(rows), 2))
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "x", "y"])
        for row, (dx, dy) in zip(rows, error, strict=True):
            w.writerow([row["path"], float(row["x"]) + dx, float(row["y"]) + dy])
    out = tmp_path / "m.ome.zarr"
    code, text = _run("fuse", str(table), "-o", str(out), "--register", "-q")
    assert code == 0 and "registration:" in text
    refined = _rows(tmp_path / "m.registered.csv")
    pos = np.array([[float(r["x"]), float(r["y"])] for r in refined])
    true = mosaic.positions_xy
    residual = (pos - true) - (pos - true).mean(axis=0)
    assert np.abs(residual).max() < 0.5
    before = (true + error) - true
    assert np.abs(before - before.mean(axis=0)).max() > 2  # there was something to fix
    pairs = _rows(tmp_path / "m.pairs.csv")
    assert len(pairs) >= 12 and {"quality", "residual_px", "used"} <= set(pairs[0])


def test_fuse_flatfield_estimate_removes_vignetting(tmp_path):
    mosaic = make_mosaic(name="immunohistochemistry", grid=(4, 4), tile_px=128, overlap=0.1,
                         vignetting=0.5, dtype="float32")  # fmt: skip
    table = write_mosaic(tmp_path / "tiles", mosaic)
    errs = {}
    for name, extra in (("raw", []), ("flat", ["--flatfield", "estimate"])):
        out = tmp_path / f"{name}.ome.zarr"
        assert _run("fuse", str(table), "-o", str(out), "-q", *extra)[0] == 0
        fused = zarr.open_array(out / "0", mode="r")[...]
        x0, y0 = json.loads((out / ".zattrs").read_text())["scopefx"]["origin_px"]
        truth = mosaic.truth[y0 : y0 + fused.shape[0], x0 : x0 + fused.shape[1]]
        ratio = fused / np.maximum(truth, 1e-3)
        errs[name] = float(np.std(ratio[truth > 0.1] / np.median(ratio[truth > 0.1])))
    assert errs["flat"] < 0.5 * errs["raw"], errs


def test_fuse_flatfield_from_images(tmp_path):
    mosaic = make_mosaic(**SMALL, vignetting=0.4, dtype="float32")
    table = write_mosaic(tmp_path / "tiles", mosaic)
    tifffile.imwrite(tmp_path / "flat.tif", mosaic.vignetting)
    out = tmp_path / "m.ome.zarr"
    assert _run("fuse", str(table), "-o", str(out), "-q", "--flatfield",
                str(tmp_path / "flat.tif"))[0] == 0  # fmt: skip
    fused = zarr.open_array(out / "0", mode="r")[...]
    assert fused.shape[0] > 300


REAL_TILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiles_real"


def test_qc_registers_and_reports_without_fusing(tmp_path):
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    out = tmp_path / "run" / "m.ome.zarr"
    code, text = _run("fuse", str(table), "-o", str(out), "--qc", "--max-shift", "12",
                      "--json", str(tmp_path / "qc.json"))  # fmt: skip
    assert code == 0, text
    assert not out.exists()  # nothing fused
    assert "registration: " in text and "side pairs used" in text and "stitching QC: " in text
    report = json.loads((tmp_path / "run" / "m.qc.json").read_text())
    assert report["params"]["max_shift_px"] == 12.0  # the flag reached RegistrationParams
    assert (tmp_path / "run" / "m.qc.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "qc.json").read_text())
    assert summary["pairs_used"] == 12  # the 12 side pairs of a 3x3 grid (corners dropped)
    # 'pairs' counted the 8 corner pairs too, beside a line that says "of 12 side pairs"
    assert (summary["pairs"], summary["pairs_side"], summary["pairs_corner"]) == (20, 12, 8)
    assert "12 of 12 side pairs used" in text
    # 9 tiles, no --flatfield: correlated through a flat field estimated from them, and said so
    assert report["summary"]["flatfield"] == "estimated"
    assert "flat field estimated from them" in text
    assert report["params"]["remove_banding"] == "auto"
    assert report["summary"]["banding"] == "none"  # these tiles share no banding
    code, text = _run("fuse", str(table), "-o", str(out), "--qc", "--no-registration-flatfield",
                      "--registration-banding", "off", "--overwrite")  # fmt: skip
    assert code == 0, text
    report = json.loads((tmp_path / "run" / "m.qc.json").read_text())
    assert report["params"]["estimate_flatfield"] is False
    assert report["params"]["remove_banding"] == "off"
    assert report["summary"]["banding"] == "none"
    assert report["summary"]["flatfield"] == "none" and "flat field" not in text


def test_flip_y_fuses_a_table_whose_stage_counts_y_upwards(tmp_path, capsys):
    """The same tiles, their y recorded upwards: read as they are, the rows come out in reverse
    and registration refuses the layout, naming the flips; with --flip-y the mosaic is the
    one of the right table."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**{**SMALL, "grid": (3, 2)}))
    rows = _rows(table)
    upward = tmp_path / "tiles" / "upward.csv"
    with open(upward, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "x", "y"])
        writer.writerows([r["path"], r["x"], -float(r["y"])] for r in rows)
    right, flipped = tmp_path / "right.tif", tmp_path / "flipped.tif"
    assert _run("fuse", str(table), "-o", str(right), "-q")[0] == 0
    code, text = _run("fuse", str(upward), "-o", str(flipped), "--flip-y", "-q")
    assert code == 0, text
    np.testing.assert_array_equal(tifffile.imread(flipped), tifffile.imread(right))
    with pytest.raises(SystemExit) as info:  # 3 rows: all 4 vertical pairs of 7 fail
        _run("fuse", str(upward), "-o", str(tmp_path / "q.ome.zarr"), "--qc", "-q")
    err = capsys.readouterr().err
    assert info.value.code == 3 and "--flip-x / --flip-y" in err and "read with" not in err
    # the right table flipped by mistake: the refusal says which flip this run applied
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "-o", str(tmp_path / "r.ome.zarr"), "--qc", "--flip-y", "-q")
    err = capsys.readouterr().err
    assert info.value.code == 3 and "these positions were read with flip_y" in err, err


def test_a_z_column_of_zeros_for_2d_tiles_is_a_2d_table(tmp_path, capsys):
    """Several exporters write z = 0 for 2D tiles: the table was refused as 3D ('fewer axes
    than the 3D table'); z elsewhere than 0 still is."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    rows = _rows(table)
    with_z = tmp_path / "tiles" / "z.csv"
    with open(with_z, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "x", "y", "z"])
        writer.writerows([r["path"], r["x"], r["y"], 0] for r in rows)
    plain, zeroed = tmp_path / "plain.tif", tmp_path / "zeroed.tif"
    assert _run("fuse", str(table), "-o", str(plain), "-q")[0] == 0
    code, text = _run("fuse", str(with_z), "-o", str(zeroed), "-q")
    assert code == 0, text
    np.testing.assert_array_equal(tifffile.imread(zeroed), tifffile.imread(plain))
    with open(with_z, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "x", "y", "z"])
        writer.writerows([r["path"], r["x"], r["y"], k] for k, r in enumerate(rows))
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(with_z), "-o", str(tmp_path / "z3.tif"), "-q")
    assert info.value.code == 2 and "fewer axes than the 3D table" in capsys.readouterr().err


def test_bad_workers_and_an_existing_preview_are_refused_before_fusing(tmp_path, capsys):
    """--workers -1 ended in a traceback after the store was created; an existing --preview
    was refused only after the whole mosaic was fused."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    out = tmp_path / "m.ome.zarr"
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "-o", str(out), "--workers", "-1", "-q")
    assert info.value.code == 2 and not out.exists()
    (tmp_path / "notes.png").write_text("mine")
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "-o", str(out), "--preview", str(tmp_path / "notes.png"), "-q")
    assert info.value.code == 2 and not out.exists()
    assert "--preview" in capsys.readouterr().err
    assert (tmp_path / "notes.png").read_text() == "mine"


def test_the_summary_says_which_flat_field_corrected_the_tiles(tmp_path):
    """--flatfield estimate left no trace in the summary or the JSON: a user could not tell
    whether, or how much, the tiles had been corrected."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL, vignetting=0.4))
    code, text = _run("fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "--flatfield",
                      "estimate", "--json", str(tmp_path / "r.json"), "-q")  # fmt: skip
    assert code == 0, text
    line = next(x for x in text.splitlines() if x.startswith("flat field: "))
    assert "estimated from the 9 tiles" in line and "% rms shading" in line
    rms = float(line.split("corrects ")[1].split(" %")[0])
    assert 3 < rms < 30, line  # a 40 % fall-off at the corners is corrected, not ignored
    assert json.loads((tmp_path / "r.json").read_text())["flatfield"] == line[len("flat field: ") :]
    code, text = _run("fuse", str(table), "-o", str(tmp_path / "n.ome.zarr"), "-q")
    assert code == 0 and "flat field" not in text


def test_an_output_named_like_a_picture_is_refused_before_fusing(tmp_path, capsys):
    """``-o mosaic.png`` fused the mosaic into an OME-Zarr folder called mosaic.png."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    for name in ("mosaic.png", "mosaic.JPG"):
        with pytest.raises(SystemExit) as info:
            _run("fuse", str(table), "-o", str(tmp_path / name), "-q")
        assert info.value.code == 2 and not (tmp_path / name).exists()
        err = capsys.readouterr().err
        assert "--preview" in err and "OUT.ome.zarr" in err
    code, text = _run("fuse", str(table), "-o", str(tmp_path / "mosaic"), "-q")
    assert code == 0, text  # no suffix: a folder of that name, as before
    assert (tmp_path / "mosaic" / "0").is_dir()


def test_register_without_usable_pairs_says_why_and_exits_3(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(4):  # 2x2 tiles of independent noise: the overlaps share nothing
        tifffile.imwrite(tmp_path / f"t{k}.tif", rng.integers(0, 255, (96, 96), dtype=np.uint8))
        rows.append(f"t{k}.tif,{(k % 2) * 80},{(k // 2) * 80}")
    (tmp_path / "tiles.csv").write_text("path,x,y\n" + "\n".join(rows) + "\n")
    args = ["fuse", str(tmp_path / "tiles.csv"), "-o", str(tmp_path / "m.ome.zarr"), "--register"]
    with pytest.raises(SystemExit) as info:
        _run(*args, "-q")
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "usable" in err and "m.qc.json" in err and "the next run" in err
    # the refusal leaves the evidence: every pair as measured, and no mosaic or refined table
    report = json.loads((tmp_path / "m.qc.json").read_text())
    assert report["refused"].startswith("only 0 of 4 neighbouring tile pairs")
    assert report["summary"]["pairs_used"] == 0
    assert {p["status"] for p in report["pairs"]} <= {"low_quality", "ambiguous", "corner"}
    assert "refused" in summary_of(report)
    assert (tmp_path / "m.qc.png").is_file() and (tmp_path / "m.pairs.csv").is_file()
    assert not (tmp_path / "m.ome.zarr").exists() and not (tmp_path / "m.registered.csv").exists()
    with pytest.raises(SystemExit) as info:  # refused again: its evidence replaces the first's
        _run(*args, "--max-shift", "20", "-q")
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "only 0 of 4" in err and "QC report was not written" not in err
    assert json.loads((tmp_path / "m.qc.json").read_text())["params"]["max_shift_px"] == 20
    # the retry the refusal suggests works without --overwrite, and leaves no stray file
    code, text = _run(*args, "--allow-partial-registration", "-q")
    assert code == 0 and "registration: " in text
    assert json.loads((tmp_path / "m.qc.json").read_text())["refused"] is None
    # a refused run never replaces the report of a run that registered (its mosaic is beside
    # it), not even with --overwrite; nothing is written, and the refusal says why
    before = {n: (tmp_path / n).read_bytes() for n in ("m.qc.json", "m.pairs.csv",
                                                      "m.registered.csv", "m.qc.png")}  # fmt: skip
    with pytest.raises(SystemExit) as info:
        _run(*args, "--overwrite", "-q")
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "QC report was not written" in err and "a run that registered" in err
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_side_files_scopefx_did_not_write_are_never_replaced(tmp_path, capsys):
    """A file at a side file's name that scopefx did not write (a user's notes.json saved as
    m.qc.json) is kept even with --overwrite, and the run writes none of its side files (no
    stray refined table beside a report it could not write)."""
    m = make_mosaic("retina", grid=(2, 2), tile_px=128, overlap=0.2, jitter_px=2.0, seed=2)
    table = write_mosaic(tmp_path / "tiles", m)
    (tmp_path / "m.qc.json").write_text('{"mine": true}')
    args = ["fuse", str(table), "--qc", "-o", str(tmp_path / "m.ome.zarr"), "-q"]
    for extra in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as info:
            _run(*args, *extra)
        assert info.value.code == 2
        assert "not a file scopefx wrote" in capsys.readouterr().err
        assert (tmp_path / "m.qc.json").read_text() == '{"mine": true}'
        assert not (tmp_path / "m.registered.csv").exists()
        assert not (tmp_path / "m.pairs.csv").exists()
    (tmp_path / "m.qc.json").write_text("[" * 100000)  # past the JSON parser's depth
    with pytest.raises(SystemExit) as info:
        _run(*args, "--overwrite")
    assert info.value.code == 2 and "not a file scopefx wrote" in capsys.readouterr().err
    (tmp_path / "m.qc.json").unlink()
    assert _run(*args)[0] == 0
    with pytest.raises(SystemExit) as info:  # its own report: replaced only with --overwrite
        _run(*args)
    assert info.value.code == 2
    assert _run(*args, "--overwrite")[0] == 0
    # the refined table is never written over the table the run reads
    own = tmp_path / "m.registered.csv"
    before = own.read_bytes()
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(own), "--qc", "--overwrite", "-o", str(tmp_path / "m.ome.zarr"), "-q")
    assert info.value.code == 2 and "the tile table this run reads" in capsys.readouterr().err
    assert own.read_bytes() == before


def test_register_checks_the_mosaic_path_before_writing_side_files(tmp_path, capsys):
    """An existing mosaic without --resume or --overwrite is refused before registration
    writes its side files beside it (they would not describe it); after a --qc run (no
    mosaic), a refused run may replace that report with --overwrite."""
    m = make_mosaic("retina", grid=(2, 2), tile_px=128, overlap=0.2, jitter_px=2.0, seed=2)
    table = write_mosaic(tmp_path / "tiles", m)
    out = str(tmp_path / "m.ome.zarr")
    assert _run("fuse", str(table), "-o", out, "-q")[0] == 0  # unregistered mosaic
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "--register", "-o", out, "-q")
    assert info.value.code == 2 and "exists" in capsys.readouterr().err
    assert not (tmp_path / "m.qc.json").exists() and not (tmp_path / "m.registered.csv").exists()
    # nor --qc, even with --overwrite: a report of a registration not fused beside a mosaic
    # (it replaced a fused mosaic's own report, which then described other positions)
    for extra in ((), ("--overwrite",)):
        with pytest.raises(SystemExit) as info:
            _run("fuse", str(table), "--qc", *extra, "-o", out, "-q")
        assert info.value.code == 2 and "its side files describe it" in capsys.readouterr().err
        assert not (tmp_path / "m.qc.json").exists()
    # a preview with --qc, which does not fuse, was ignored without a word
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "--qc", "--preview", str(tmp_path / "p.png"), "-o",
             str(tmp_path / "p.ome.zarr"), "-q")  # fmt: skip
    assert info.value.code == 2 and "--qc does not fuse" in capsys.readouterr().err
    assert not (tmp_path / "p.qc.json").exists()
    # --qc (no mosaic), then a refused --qc run with --overwrite: the refusal's report wins
    qc_out = str(tmp_path / "q.ome.zarr")
    assert _run("fuse", str(table), "--qc", "-o", qc_out, "-q")[0] == 0
    rng = np.random.default_rng(0)
    rows = []
    for k in range(4):
        tifffile.imwrite(tmp_path / f"n{k}.tif", rng.integers(0, 255, (96, 96), dtype=np.uint8))
        rows.append(f"n{k}.tif,{(k % 2) * 80},{(k // 2) * 80}")
    (tmp_path / "noise.csv").write_text("path,x,y\n" + "\n".join(rows) + "\n")
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(tmp_path / "noise.csv"), "--qc", "--overwrite", "-o", qc_out, "-q")
    assert info.value.code == 3 and "not written" not in capsys.readouterr().err
    assert json.loads((tmp_path / "q.qc.json").read_text())["refused"]


def test_a_fusion_refused_after_registering_leaves_no_side_files(tmp_path, capsys):
    """Side files are written once the output is known to be writable: --overwrite of a
    folder scopefx did not write, --resume of a mosaic fused from other positions (unregistered)
    and --overwrite of a TIFF scopefx did not write are refused after registering, and left
    the registered table, pairs and QC report beside an output they do not describe."""
    m = make_mosaic("retina", grid=(2, 2), tile_px=128, overlap=0.2, jitter_px=2.0, seed=2)
    written = write_mosaic(tmp_path / "tiles", m)
    rows = written.read_text().splitlines()  # the last tile 4 px off: registration moves it
    path, x, y = rows[-1].split(",")
    rows[-1] = f"{path},{float(x) + 4},{y}"
    table = tmp_path / "tiles" / "stage.csv"
    table.write_text("\n".join(rows) + "\n")
    table = str(table)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    unregistered = str(tmp_path / "plain.ome.zarr")
    assert _run("fuse", table, "-o", unregistered, "-q")[0] == 0
    picture = tmp_path / "picture.tif"
    tifffile.imwrite(picture, np.zeros((8, 8), np.uint8))
    cases = ((foreign, "--overwrite", "not a scopefx mosaic"),
             (unregistered, "--resume", "tile positions"),
             (picture, "--overwrite", "not a TIFF mosaic scopefx wrote"))  # fmt: skip
    for out, flag, said in cases:
        with pytest.raises(SystemExit) as info:
            _run("fuse", table, "--register", flag, "-o", str(out), "-q")
        assert info.value.code == 2 and said in capsys.readouterr().err, out
        stem = Path(out).name.split(".")[0]
        left = [f"{stem}{s}" for s in (".qc.json", ".qc.png", ".registered.csv", ".pairs.csv")
                if (tmp_path / f"{stem}{s}").exists()]  # fmt: skip
        assert not left, left
    assert (foreign / "notes.txt").read_text() == "mine" and picture.stat().st_size > 0
    done = str(tmp_path / "done.tif")  # and a run that fuses writes them
    assert _run("fuse", table, "--register", "-o", done, "-q")[0] == 0
    assert (tmp_path / "done.qc.json").is_file() and (tmp_path / "done.registered.csv").is_file()


def test_json_never_replaces_the_table_a_tile_or_the_mosaic(tmp_path, capsys):
    """--json was written with a bare write_text after the fusion: over the tile table, a
    tile, the finished TIFF mosaic or the store's .zattrs (exit 0), and into a folder the run
    had just made (IsADirectoryError after fusing). Now it is checked before any tile is read,
    as --preview is, and replaces only a previous run's JSON (with --overwrite or --resume)."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    tile = next((tmp_path / "tiles").glob("*.tif"))
    before = {p: p.read_bytes() for p in (table, tile)}
    out = str(tmp_path / "m.ome.zarr")
    for json_path, said in ((table, "the file given to TILES"),
                            (tile, "not a JSON summary"),
                            (out, "inside it"), (f"{out}/.zattrs", "inside it"),
                            (f"{out}/0", "inside it")):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            _run("fuse", str(table), "-o", out, "--overwrite", "--json", str(json_path), "-q")
        assert info.value.code == 2 and said in capsys.readouterr().err, json_path
    assert all(p.read_bytes() == b for p, b in before.items()) and not os.path.exists(out)
    js = str(tmp_path / "r.json")
    assert _run("fuse", str(table), "-o", out, "--json", js, "-q")[0] == 0
    with pytest.raises(SystemExit) as info:  # a second run: the JSON exists
        _run("fuse", str(table), "-o", str(tmp_path / "m2.ome.zarr"), "--json", js, "-q")
    assert info.value.code == 2 and "r.json' exists" in capsys.readouterr().err
    Path(js).write_text("{}")  # a previous run's, replaced by --resume (or --overwrite)
    assert _run("fuse", str(table), "-o", out, "--resume", "--json", js, "-q")[0] == 0
    assert json.loads(Path(js).read_text())["shape"]
    for side in ("q.qc.json", "q.registered.csv"):  # the QC report was replaced by the summary
        with pytest.raises(SystemExit) as info:
            _run("fuse", str(table), "-o", str(tmp_path / "q.ome.zarr"), "--register", "--json",
                 str(tmp_path / side), "-q")  # fmt: skip
        assert info.value.code == 2 and "a side file the registration writes" in (
            capsys.readouterr().err
        )


def test_register_on_one_tile_says_there_is_nothing_to_register(tmp_path):
    """It said '0 of 0 side pairs used, rms residual n/a px'."""
    m = make_mosaic("retina", grid=(1, 1), tile_px=96, overlap=0.2, seed=1)
    table = write_mosaic(tmp_path / "tiles", m)
    code, text = _run("fuse", str(table), "--register", "-o", str(tmp_path / "m.ome.zarr"), "-q")
    assert code == 0 and "registration: one tile, nothing to register" in text, text


def test_json_to_a_stream_or_an_empty_file_and_previews_that_are_no_files(tmp_path, capfd):
    """--json /dev/stdout (or a pipe) is written as it is, and an empty file made for it
    (mktemp) is replaced; --preview naming a FIFO or a link, with --overwrite, is refused
    before fusing (a FIFO hung the check that opened it)."""
    table = str(write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL)))
    assert _run("fuse", table, "-o", str(tmp_path / "a.ome.zarr"), "--json", "/dev/stdout",
                "-q")[0] == 0  # fmt: skip
    assert '"path":' in capfd.readouterr().out
    empty = tmp_path / "made.json"
    empty.touch()
    assert _run("fuse", table, "-o", str(tmp_path / "b.ome.zarr"), "--json", str(empty),
                "-q")[0] == 0  # fmt: skip
    assert json.loads(empty.read_text())["shape"]
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    link = tmp_path / "l.png"
    assert _run("fuse", table, "-o", str(tmp_path / "c.ome.zarr"), "--preview",
                str(tmp_path / "p.png"), "-q")[0] == 0  # fmt: skip
    link.symlink_to(tmp_path / "p.png")
    for preview in (fifo, link):
        with pytest.raises(SystemExit) as info:
            _run("fuse", table, "-o", str(tmp_path / "c.ome.zarr"), "--overwrite", "--preview",
                 str(preview), "-q")  # fmt: skip
        assert info.value.code == 2 and "not a preview scopefx wrote" in capfd.readouterr().err


def test_a_remote_runs_preview_is_left_to_the_endpoint(tmp_path, monkeypatch):
    """On an endpoint, --preview (like TILES and -o) names the endpoint's file system: it was
    checked, and its folder made, on this machine. --json is written here and still checked."""
    import argparse

    from scopefx.cli import fuse as cli_fuse

    monkeypatch.setattr(cli_fuse, "runs_remotely", lambda args, what: True)
    args = argparse.Namespace(
        tiles="/data/tiles.csv", output="/out/m.ome.zarr", json=str(tmp_path / "r" / "s.json"),
        preview=str(tmp_path / "remote" / "p.png"), overwrite=False, resume=False,
        register=True, qc=False,
    )  # fmt: skip
    cli_fuse._check_side_outputs(args)
    assert not (tmp_path / "remote").exists() and (tmp_path / "r").is_dir()


def test_regions_and_a_qc_output_named_as_json_are_usage_errors(tmp_path, capsys):
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "--regions", "0")
    assert info.value.code == 2 and "--regions: must be an integer >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # it wrote n.qc.json.qc.json
        _run("fuse", str(table), "-o", str(tmp_path / "n.qc.json"), "--qc", "-q")
    assert info.value.code == 2 and "not as a .json file" in capsys.readouterr().err
    assert not list(tmp_path.glob("n.*"))


@pytest.mark.skipif(not REAL_TILES.is_dir(), reason=f"real tile sets not found at {REAL_TILES}")
def test_qc_on_the_real_leica_scan_with_default_settings(tmp_path):
    code, text = _run("fuse", str(REAL_TILES / "leica_tma4x3" / "stage.csv"), "-o",
                      str(tmp_path / "leica.ome.zarr"), "--qc")  # fmt: skip
    assert code == 0, text
    report = json.loads((tmp_path / "leica.qc.json").read_text())
    assert report["summary"]["overlap_agreement"] > report["summary"]["overlap_agreement_stage"]


@pytest.mark.parametrize(("alpha", "register"), [(True, False), (False, False), (False, True)])
def test_the_summary_says_what_colour_tiles_are_and_whether_they_were_registered(
    tmp_path, alpha, register
):
    """The summary said 'RGB' of RGBA tiles, and 'registered on their sum' of every colour
    mosaic, registered or not (review 36, F8)."""
    mosaic = make_mosaic(**{**SMALL, "dtype": "uint8"})  # type: ignore[arg-type]
    table = write_mosaic(tmp_path, mosaic)
    for k, tile in enumerate(mosaic.tiles):
        chans = [tile, tile // 2 + 100, tile // 4 * 3 + 30] + [np.full_like(tile, 255)] * alpha
        tifffile.imwrite(tmp_path / f"tile_{k:04d}.tif", np.stack(chans, axis=-1),
                         photometric="rgb", planarconfig="contig")  # fmt: skip
    code, text = _run("fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q",
                      *["--register"] * register)  # fmt: skip
    assert code == 0, text
    line = next(s for s in text.splitlines() if s.startswith("tiles: "))
    model = "RGBA" if alpha else "RGB"
    assert line.startswith(f"tiles: colour tiles ({model}, samples last): fused as 3 channels")
    assert ("transparent pixels are no data" in line) == alpha
    assert line.endswith(", registered on their sum") == register


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_grid_writes_csv_or_tab_separated_tsv_only(tmp_path, capsys):
    """-o tiles.txt got CSV under a TileConfiguration's name (the 'next: scopefx fuse' it
    printed then failed), -o tiles.png too; a .tsv was comma-separated."""
    m = make_mosaic("retina", grid=(1, 2), tile_px=96, overlap=0.2, seed=1)
    for k, tile in enumerate(m.tiles):
        tifffile.imwrite(tmp_path / f"t_{k}.tif", tile)
    argv = ["grid", str(tmp_path / "t_{index}.tif"), "--overlap", "20", "--grid", "1x2", "-o"]
    for name in ("tiles.txt", "tiles.png"):
        with pytest.raises(SystemExit) as info:
            _run(*argv, str(tmp_path / name))
        assert info.value.code == 2 and "name it .csv" in capsys.readouterr().err
        assert not (tmp_path / name).exists()
    assert _run(*argv, str(tmp_path / "tiles.tsv"))[0] == 0
    header = (tmp_path / "tiles.tsv").read_text().splitlines()[0]
    assert header == "path\tx\ty", header  # as documented: no affine to disagree with an edit
    from scopefx.io import read_tile_table

    assert len(read_tile_table(tmp_path / "tiles.tsv")) == 2
    # the summary names the grid given and its empty places (it said '1 x 2' for 1 x 3)
    code, text = _run(*argv[:-3], "--grid", "1x3", "-o", str(tmp_path / "three.csv"))
    assert code == 0 and "2 tiles on a 1 x 3 grid (rows x columns), 1 of its places empty" in text


def test_grid_writes_the_table_of_numbered_tiles_and_fuse_registers_it(tmp_path):
    """``scopefx grid``: tiles numbered from 1 in a snake by rows (Fiji's ``tile_{iii}``, a 3 x
    3 scan at 15 % overlap, each up to 5 px off its nominal place) placed on their nominal
    grid; ``scopefx fuse --register`` on that table finds the true layout (within 0.2 px). The
    table is not written over without --overwrite."""
    m = make_mosaic("retina", grid=(3, 3), tile_px=160, overlap=0.15, jitter_px=5.0,
                    subpixel=True, seed=4)  # fmt: skip
    scan = tmp_path / "scan"
    scan.mkdir()
    name_of = {}
    for k, tile in enumerate(m.tiles):
        r, c = divmod(k, 3)
        number = r * 3 + (c if r % 2 == 0 else 2 - c) + 1
        name_of[k] = f"tile_{number:03d}.tif"
        tifffile.imwrite(scan / name_of[k], tile)
    table = tmp_path / "tiles.csv"
    argv = ["grid", str(scan / "tile_{iii}.tif"), "--overlap", "15", "--grid", "3x3",
            "--order", "snake-rows", "-o", str(table)]  # fmt: skip
    code, text = _run(*argv)
    assert code == 0 and "9 tiles on a 3 x 3 grid" in text, text
    step = round(160 * 0.85)
    nominal = {Path(r["path"]).name: (float(r["x"]), float(r["y"])) for r in _rows(table)}
    assert nominal == {name_of[k]: ((k % 3) * step, (k // 3) * step) for k in range(9)}
    # path,x,y as documented: with an affine column, an x edited by hand was refused
    assert table.read_text().splitlines()[0] == "path,x,y"
    from scopefx.io import read_tile_table

    edited = tmp_path / "edited.csv"
    edited.write_text(table.read_text().replace(f",{float(step)!r},0.0", ",140.0,0.0", 1))
    assert read_tile_table(edited).affines[1, 1, 2] == 140.0
    before = table.read_bytes()
    with pytest.raises(SystemExit) as info:  # exists: not replaced
        _run(*argv)
    assert info.value.code == 2 and table.read_bytes() == before
    assert table.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes it
    tile = scan / name_of[0]
    with pytest.raises(SystemExit) as info:  # a tile is never the table, even with --overwrite
        _run(*argv[:-1], str(tile), "--overwrite")
    assert info.value.code == 2 and tifffile.imread(tile).shape == (160, 160)
    code, text = _run("fuse", str(table), "--register", "-o", str(tmp_path / "m.ome.zarr"), "-q")
    assert code == 0, text
    placed = {Path(r["path"]).name: (float(r["y"]), float(r["x"]))
              for r in _rows(tmp_path / "m.registered.csv")}  # fmt: skip
    got = np.array([placed[name_of[k]] for k in range(9)])
    true = m.affines[:, :2, 2]
    err = (got - got.mean(0)) - (true - true.mean(0))
    assert np.abs(err).max() < 0.2, err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "abc"])
@pytest.mark.parametrize("option", ["--pixel-size", "--pixel-size-z"])
def test_a_bad_pixel_size_is_named_by_its_option(tmp_path, capsys, option, value):
    """``--pixel-size -1`` said 'pixel_size_um must be ...', the API's name, not the option's."""
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(tmp_path / "t.csv"), option, value, "-o", str(tmp_path / "m.ome.zarr"))
    assert info.value.code == 2
    assert f"argument {option}: must be" in capsys.readouterr().err


def test_mosaic_line_gives_the_size_x_first_and_channels_apart():
    """The line printed ``1874x1420`` (the array's y, x) beside positions given x, y."""
    from scopefx.cli._common import describe_mosaic

    base = {"dtype": "uint16", "levels": 1, "n_tiles": 4, "chunks_written": 2,
            "chunks_resumed": 0, "seconds": 1.0, "path": "m.ome.zarr"}  # fmt: skip
    assert describe_mosaic({**base, "shape": [12, 300, 500], "origin_px": [0, 0, 0]}).startswith(
        "500 x 300 x 12 px (x, y, z) uint16"
    )
    line = describe_mosaic({**base, "shape": [3, 300, 500], "origin_px": [5, 7]})
    assert line.startswith("500 x 300 px (x, y), 3 channels uint16"), line


def test_complex_tiles_are_refused_not_fused_as_their_real_part(tmp_path, capsys):
    """Complex tiles fused to a complex64 mosaic of their real parts (a ComplexWarning the
    only sign): they are refused, naming the dtype and a tile, and nothing is written."""
    rng = np.random.default_rng(0)
    rows = ["path,x,y"]
    for k in range(2):
        tile = rng.random((64, 64)) + 1j * rng.random((64, 64))
        tifffile.imwrite(tmp_path / f"t{k}.tif", tile.astype(np.complex64))
        rows.append(f"t{k}.tif,{50 * k},0")
    (tmp_path / "tiles.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(tmp_path / "tiles.csv"), "-o", str(tmp_path / "m.ome.zarr"), "-q")
    err = capsys.readouterr().err
    assert info.value.code == 3 and "tiles are complex64" in err and "t0.tif" in err, err
    assert not (tmp_path / "m.ome.zarr").exists()


def test_a_run_stopped_by_a_bad_tile_says_what_it_left_and_how_to_go_on(tmp_path, capsys):
    """A tile that cannot be decoded ended the run with its error alone; the next run (the
    table fixed) was told the output 'was started by another job ... once that job has
    ended', with no other job anywhere. The error now says the output is left unfinished and
    what finishes or replaces it; the next run's refusal names --overwrite, which works."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    rows = _rows(table)
    bad = tmp_path / "tiles" / "bad.tif"
    bad.write_bytes((tmp_path / "tiles" / rows[4]["path"]).read_bytes()[:3000])  # truncated
    broken = tmp_path / "tiles" / "broken.csv"
    with open(broken, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "x", "y"])
        writer.writerows([r["path"] if k != 4 else "bad.tif", r["x"], r["y"]]
                         for k, r in enumerate(rows))  # fmt: skip
    out = tmp_path / "m.ome.zarr"
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(broken), "-o", str(out), "--chunk", "128", "-q")
    err = capsys.readouterr().err
    assert info.value.code == 3 and "bad.tif" in err
    assert f"{out} is left unfinished" in err and "--overwrite starts over" in err, err
    with pytest.raises(SystemExit) as info:  # the table fixed: another plan
        _run("fuse", str(table), "-o", str(out), "--chunk", "128", "-q")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "unfinished mosaic of other tiles" in err, err
    assert "an earlier run stopped" in err and "--overwrite" in err
    assert "left unfinished" not in err  # the note is for the run that left it
    code, text = _run("fuse", str(table), "-o", str(out), "--chunk", "128", "--overwrite", "-q")
    assert code == 0 and "9 tiles" in text, text


def test_a_store_stopped_before_its_plan_can_be_overwritten(tmp_path, capsys):
    """A run killed between making the output's state folder and writing its plan left a
    store that neither --resume nor --overwrite would touch ('not a scopefx mosaic')."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    out = tmp_path / "m.ome.zarr"
    (out / ".scopefx" / "done").mkdir(parents=True)
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "-o", str(out), "-q")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "stopped before it recorded its plan" in err, err
    assert _run("fuse", str(table), "-o", str(out), "--overwrite", "-q")[0] == 0
    # a folder that holds anything else is still not scopefx's to replace
    other = tmp_path / "o.ome.zarr"
    (other / ".scopefx").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as info:
        _run("fuse", str(table), "-o", str(other), "--overwrite", "-q")
    assert info.value.code == 2 and "not a scopefx mosaic" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"


def test_a_partial_registration_of_no_usable_pair_says_there_is_no_residual(tmp_path):
    """Noise tiles with --allow-partial-registration: 'rms residual n/a px' in the line (and
    'rms residual None px' over the QC picture)."""
    rng = np.random.default_rng(5)
    rows = ["path,x,y"]
    for k in range(4):
        tifffile.imwrite(tmp_path / f"n{k}.tif", rng.integers(0, 255, (96, 96), dtype=np.uint8))
        rows.append(f"n{k}.tif,{(k % 2) * 80},{(k // 2) * 80}")
    (tmp_path / "tiles.csv").write_text("\n".join(rows) + "\n")
    code, text = _run("fuse", str(tmp_path / "tiles.csv"), "-o", str(tmp_path / "m.ome.zarr"),
                      "--qc", "--allow-partial-registration", "-q")  # fmt: skip
    assert code == 0, text
    assert "0 of 4 side pairs used" in text and "no residual (no pair used)" in text, text
    assert "n/a" not in text and "None" not in text


def test_unfinished_tells_a_started_store_from_a_finished_one(tmp_path):
    from scopefx.fusion import fuse, unfinished

    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    out = tmp_path / "m.ome.zarr"
    assert not unfinished(out)
    fuse(table, out)
    assert not unfinished(out)  # finished: its state folder is gone
    (out / ".scopefx").mkdir()
    (out / ".scopefx" / "plan.json").write_text("{}")
    assert unfinished(out)
