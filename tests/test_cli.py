import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from scopefx import samples
from scopefx.cli import main


def _run(*argv):
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def series(tmp_path):
    csv_path = samples.write_defocus_series(tmp_path / "series", np.arange(-4, 4.5, 1.0), size=256)
    return csv_path


def test_focus_writes_csv_json_and_plots(series, tmp_path):
    folder = series.parent
    (folder / "broken.tif").write_bytes(b"II*\x00garbage")
    out_csv, out_json = tmp_path / "focus.csv", tmp_path / "focus.json"
    code, text = _run(
        "focus",
        str(folder),
        "--csv",
        str(out_csv),
        "--json",
        str(out_json),
        "--plot",
        str(tmp_path / "f.png"),
        "--maps",
        str(tmp_path / "m.png"),
    )
    assert code == 0
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10
    assert {"path", "features", "status", "error", "verdict", "score_seconds"} <= set(rows[0])
    broken = [r for r in rows if r["path"].endswith("broken.tif")]
    assert broken[0]["status"] == "corrupt" and "broken.tif" in broken[0]["error"]
    assert all(r["path"].startswith("/") for r in rows)
    assert len(json.loads(out_json.read_text())) == 10
    for png in ("f.png", "m.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    assert "not scored" in text


def test_focus_json_is_strict_json_when_the_run_baseline_is_zero(tmp_path, monkeypatch):
    """Blank sections (a lamp off, an empty grid square): the run baseline is 0, each ratio to
    it infinite. Before: the JSON held the token Infinity (no parser of strict JSON reads it)
    and the lines said "unverifiable xinf"; now null, and no ratio on the line, as for NaN."""
    from scopefx.focus import FocusRecord

    run = tmp_path / "run"
    run.mkdir()
    for i in range(6):
        tifffile.imwrite(run / f"s{i}.tif", np.full((128, 128), 100, np.uint16))
    out_json = tmp_path / "f.json"
    code, text = _run("focus", str(run), "--json", str(out_json))
    assert code == 0, text

    def strict(token):
        raise ValueError(f"{token} is not JSON")

    records = json.loads(out_json.read_text(), parse_constant=strict)
    assert [r["ratio"] for r in records] == [None] * 6
    assert records[-1]["verdict"] == "unverifiable" and "xinf" not in text
    # a value to_dict ever leaves non-finite again raises, rather than writing no JSON
    monkeypatch.setattr(FocusRecord, "to_dict", lambda self: {"ratio": float("inf")})
    with pytest.raises(ValueError, match="not JSON compliant"):
        _run("focus", str(run), "-q", "--json", str(tmp_path / "g.json"))


def test_calibrate_then_score_with_the_calibration(series, tmp_path):
    cal = tmp_path / "cal.json"
    code, text = _run(
        "calibrate",
        "--defocus",
        str(series),
        "-o",
        str(cal),
        "--max-defocus",
        "1",
        "--plot",
        str(tmp_path / "cal.png"),
    )
    assert code == 0 and "r = -0.9" in text
    data = json.loads(cal.read_text())
    assert data["slope"] > 0 and data["r"] < -0.95
    out_csv = tmp_path / "f.csv"
    code, _ = _run(
        "focus", str(series.parent / "*.tif"), "--calibration", str(cal), "--csv", str(out_csv)
    )
    with out_csv.open() as handle:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(handle)}
    assert rows["section_0004.tif"]["verdict"] == "in_focus"  # defocus 0
    assert rows["section_0000.tif"]["verdict"] == "out_of_focus"  # defocus -4


def test_a_calibration_supplies_its_focus_parameters(series, tmp_path):
    """A calibration made with --modality brightfield had to be given the modality again: with
    no focus option, scoring stopped on 'made with other focus parameters'."""
    cal = tmp_path / "cal.json"
    assert _run("calibrate", "--defocus", str(series), "-o", str(cal), "--max-defocus", "1",
                "--modality", "brightfield")[0] == 0  # fmt: skip
    out_csv = tmp_path / "f.csv"
    code, _ = _run("focus", str(series.parent), "--calibration", str(cal), "--csv", str(out_csv))
    assert code == 0
    with out_csv.open() as handle:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(handle)}
    assert {r["modality"] for r in rows.values()} == {"brightfield"}
    assert rows["section_0004.tif"]["verdict"] == "in_focus"
    with pytest.raises(SystemExit) as info:  # an option given that differs: refused, named
        _run("focus", str(series.parent), "--calibration", str(cal), "--modality", "fluorescence")
    assert info.value.code == 2


def test_a_focus_option_typed_with_a_calibration_is_checked_even_at_its_default(
    series, tmp_path, capsys
):
    """--modality em with a bright-field calibration was taken as 'no option given' (em is the
    default) and silently scored as bright field; --mode fast alone was refused naming
    modality, threshold and noise model, which the user never typed."""
    cal = tmp_path / "cal.json"
    assert _run("calibrate", "--defocus", str(series), "-o", str(cal), "--max-defocus", "1",
                "--modality", "brightfield")[0] == 0  # fmt: skip
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        _run("focus", str(series.parent), "--calibration", str(cal), "--modality", "em")
    assert info.value.code == 2
    assert "modality: calibrated 'brightfield', now 'em'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        _run("focus", str(series.parent), "--calibration", str(cal), "--mode", "fast")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "mode: calibrated 'exact', now 'fast'" in err
    assert "modality" not in err and "threshold" not in err, err
    code, _ = _run("focus", str(series.parent), "--calibration", str(cal), "--modality",
                   "brightfield")  # fmt: skip
    assert code == 0  # typed as calibrated: fine


def test_the_api_scores_with_a_calibration_s_own_parameters(series, tmp_path):
    """Client().score_focus(refs, calibration=cal) refused a fluorescence calibration ('made
    with other focus parameters'): the API took FocusParams() where the CLI took the
    calibration's parameters."""
    from scopefx import Client, score_files
    from scopefx.focus import Calibration

    cal = tmp_path / "cal.json"
    assert _run("calibrate", "--defocus", str(series), "-o", str(cal), "--max-defocus", "1",
                "--modality", "brightfield")[0] == 0  # fmt: skip
    calibration = Calibration.load(cal)
    refs = sorted(str(p) for p in series.parent.glob("*.tif"))
    with Client(progress=False) as client:
        records = client.score_focus(refs, calibration=calibration)
    assert {r.modality for r in records} == {"brightfield"} and all(r.ok for r in records)
    again = list(score_files(refs, calibration=calibration))
    assert [r.features for r in again] == [r.features for r in records]


def test_calibrate_on_a_z_stack_gives_each_page_its_defocus(series, tmp_path):
    """A through-focus series in one multi-page file: every page took the file's one defocus
    (all alike: 'nothing to fit'), and a 'page' column was ignored."""
    rows = list(csv.DictReader(io.StringIO(series.read_text())))
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([tifffile.imread(series.parent / r["path"]) for r in rows]))
    table = tmp_path / "stack.csv"
    table.write_text(
        "path,page,defocus\n"
        + "".join(f"stack.tif,{i},{r['defocus']}\n" for i, r in enumerate(rows))
    )
    code, text = _run("calibrate", "--defocus", str(table), "-o", str(tmp_path / "s.json"))
    assert code == 0, text
    code, text = _run("calibrate", "--defocus", str(series), "-o", str(tmp_path / "f.json"))
    assert code == 0, text
    from_stack, from_files = (json.loads((tmp_path / n).read_text()) for n in ("s.json", "f.json"))
    assert from_stack["n"] == from_files["n"] == len(rows)
    assert from_stack["slope"] == pytest.approx(from_files["slope"])
    table.write_text("path,defocus\nstack.tif,0\n")  # one value for the whole stack
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "--defocus", str(table), "-o", str(tmp_path / "x.json")])
    assert info.value.code == 3


def test_outputs_are_checked_before_the_work_and_their_folders_made(series, tmp_path, capsys):
    """--json, --output in a folder not made yet gave a FileNotFoundError traceback, and a
    --plot named without an image format a matplotlib ValueError, after every image was
    scored."""
    code, text = _run(
        "focus", str(series.parent), "-q", "--json", str(tmp_path / "new" / "f.json"),
        "--maps", str(tmp_path / "new2" / "m.png"),
    )  # fmt: skip
    assert code == 0, text
    assert (tmp_path / "new" / "f.json").is_file() and (tmp_path / "new2" / "m.png").is_file()
    code, text = _run("calibrate", "--defocus", str(series), "-o", str(tmp_path / "c" / "c.json"))
    assert code == 0 and (tmp_path / "c" / "c.json").is_file(), text
    for argv in (
        ["focus", str(series.parent), "--plot", str(tmp_path / "f.plot")],
        ["focus", str(series.parent), "--csv", str(tmp_path)],
        ["calibrate", "--defocus", str(series), "-o", "c.json", "--plot", str(tmp_path / "p")],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--plot '" in err and "got '.plot'" in err and "is a folder; give a file name" in err
    assert "got 'no extension'" in err


def test_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["focus", str(tmp_path), "--n-scales", "0"])  # a bad option before missing data
    assert info.value.code == 2
    assert "--n-scales must be between 1 and 256, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["calibrate", "--defocus", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "c")])
    assert info.value.code == 2
    assert "cannot read defocus table" in capsys.readouterr().err
    (tmp_path / "a.tif").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main(["focus", str(tmp_path), "--calibration", str(tmp_path / "missing.json")])
    assert info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_data_errors_exit_3(tmp_path, capsys, monkeypatch):
    """Nothing found, nothing scored, nothing fused: exit 3, with a message that says so."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["focus", str(tmp_path), str(tmp_path / "*.tif")])  # an empty folder, a glob
    assert info.value.code == 3
    assert "no images found" in capsys.readouterr().err
    out = io.StringIO()
    with pytest.raises(SystemExit) as info:  # a folder that does not exist
        main(["focus", "nope/", "--csv", "f.csv", "--json", "f.json"], out=out)
    assert info.value.code == 3
    err = capsys.readouterr().err
    assert "scopefx focus: error: none of the 1 image(s) could be scored (missing)" in err
    assert "missing" in out.getvalue() and "nope" in out.getvalue()
    with open("f.csv", newline="") as handle:  # the report still says why, item by item
        assert [r["status"] for r in csv.DictReader(handle)] == ["missing"]
    assert json.loads((tmp_path / "f.json").read_text())[0]["status"] == "missing"
    (tmp_path / "empty.tif").write_bytes(b"")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(SystemExit) as info:  # a batch where every image failed
        main(["focus", str(tmp_path)], out=io.StringIO())
    assert info.value.code == 3
    assert "none of the 2 image(s) could be scored (corrupt, empty)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["calibrate", str(tmp_path), "--from-metadata", "focus", "-o", "c.json"],
             out=io.StringIO())  # fmt: skip
    assert info.value.code == 3
    assert "could be scored" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["fuse", "nope.csv", "-o", "m.ome.zarr"], out=io.StringIO())
    assert info.value.code == 3
    assert "tile table 'nope.csv' does not exist" in capsys.readouterr().err


def test_exit_codes_are_documented():
    import scopefx.cli

    doc = scopefx.cli.__doc__ or ""
    assert (scopefx.cli.USAGE_ERROR, scopefx.cli.DATA_ERROR) == (2, 3)
    for text in ("0 when the command ran", "2 for usage errors", "3 for data errors"):
        assert text in doc


def test_a_run_shorter_than_its_warmup_ends_unverifiable(tmp_path):
    """Fewer images than --warmup: every verdict stayed 'warmup', in the lines and the CSV."""
    for i in range(2):
        image = samples.bundled_image("moon", size=160)[i : i + 128, i : i + 128]
        tifffile.imwrite(tmp_path / f"s{i}.tif", samples.acquire(image, seed=i))
    out_csv = tmp_path / "f.csv"
    code, text = _run("focus", str(tmp_path / "s0.tif"), str(tmp_path / "s1.tif"),
                      "--csv", str(out_csv))  # fmt: skip
    assert code == 0, text
    with out_csv.open() as handle:
        assert [r["verdict"] for r in csv.DictReader(handle)] == ["unverifiable"] * 2
    assert "2 section(s) unverifiable" in text
    assert "the run ended before its warm-up (--warmup sections) was complete" in text


def test_bad_files_do_not_change_the_exit_code(tmp_path):
    (tmp_path / "empty.tif").write_bytes(b"")
    tifffile.imwrite(tmp_path / "ok.tif", samples.acquire(samples.bundled_image("moon", size=128)))
    code, text = _run("focus", str(tmp_path))
    assert code == 0 and "empty" in text


@pytest.mark.slow
def test_demo_runs_from_the_installed_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scopefx", "demo", "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    with (tmp_path / "d" / "focus.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    verdicts = {r["path"].rsplit("/", 1)[-1]: (r["status"], r["verdict"]) for r in rows}
    assert verdicts["section_0007.tif"] == ("ok", "out_of_focus")
    assert verdicts["section_0011.tif"] == ("ok", "partial")
    assert verdicts["section_0022.tif"][0] == "corrupt"
    assert sum(v == ("ok", "in_focus") for v in verdicts.values()) == 19
    assert "out of focus" in result.stdout
    # every planted out-of-focus or partial section is flagged, and nothing else
    out = tmp_path / "d"
    with (out / "planted.csv").open() as handle:
        planted = {
            r["path"] for r in csv.DictReader(handle) if r["planted"] in ("out_of_focus", "partial")
        }
    flagged = {
        name for name, (_, verdict) in verdicts.items() if verdict in ("out_of_focus", "partial")
    }
    assert flagged == planted
    with (out / "focus_baseline.csv").open() as handle:
        baseline = {r["path"].rsplit("/", 1)[-1] for r in csv.DictReader(handle)
                    if r["verdict"] in ("out_of_focus", "partial")}  # fmt: skip
    assert baseline == planted
    assert "through scopefx.Client's local default" in result.stdout
    for name in (
        "focus.png",
        "focus_maps.png",
        "calibration.png",
        "mosaic.png",
        "calibration.json",
    ):
        assert (out / name).stat().st_size > 0, name
    import zarr

    mosaic = zarr.open_group(str(out / "mosaic.ome.zarr"), mode="r")
    # 1366: the pixels whose centres some tile covers (1367 had an uncovered row and column)
    assert mosaic["0"].shape[-2:] == (1366, 1366) and int(mosaic["0"][:].max()) > 0


def test_maps_say_how_many_they_leave_out(series, tmp_path, monkeypatch):
    """--maps drew at most 12 maps and said nothing of the flagged sections left out."""
    import scopefx.cli.focus as cli_focus

    monkeypatch.setattr(cli_focus, "_MAX_MAPS", 3)
    code, text = _run("focus", str(series.parent), "--maps", str(tmp_path / "m.png"), "-q")
    assert code == 0
    line = next(x for x in text.splitlines() if x.startswith("wrote ") and "m.png" in x)
    assert "(3 of 9 maps: the flagged sections first" in line, line


def test_calibrate_names_what_it_leaves_out(series, tmp_path):
    """An image without a value in its metadata was 'skipped: no defocus value for it' under
    --from-metadata (no table involved); the fit's centre printed as '|defocus - -0.12|'."""
    out = io.StringIO()
    with pytest.raises(SystemExit):  # none has one: nothing to fit
        main(["calibrate", str(series.parent / "*.tif"), "--from-metadata", "focus", "-o",
              str(tmp_path / "c.json")], out=out)  # fmt: skip
    assert "no focus value in its metadata" in out.getvalue()
    code, text = _run("calibrate", "--defocus", str(series), "-o", str(tmp_path / "d.json"),
                      "--fit-center")  # fmt: skip
    assert code == 0 and "- -" not in text and "+ -" not in text, text


def test_ratio_with_a_calibration_is_said_to_be_unused(series, tmp_path, caplog):
    """--ratio with --calibration changed nothing and said nothing."""
    cal = tmp_path / "cal.json"
    assert _run("calibrate", "--defocus", str(series), "-o", str(cal), "--max-defocus", "1")[0] == 0
    with caplog.at_level("WARNING", logger="scopefx.cli"):
        code, _ = _run("focus", str(series.parent), "--calibration", str(cal), "--ratio", "0.1",
                       "-q")  # fmt: skip
    assert code == 0 and "--ratio 0.1 is not used" in caplog.text


def test_an_endpoint_engines_error_is_answered_as_the_error_it_ends_in(capsys, monkeypatch):
    """An endpoint engine sends a failed task's traceback as text (RemoteTaskError): the
    command line answers as it would the scopefx error the text ends in (a refused
    registration: exit 3 and its message, not exit 2 and the whole traceback); a failure that
    is no scopefx error (a lost worker) stays a usage-level error with its text."""
    from scopefx.cli import fuse as fuse_cli
    from scopefx.errors import RegistrationError, RemoteTaskError

    traceback = (
        "Traceback from attempt: 1\nTraceback (most recent call last):\n"
        '  File "/x/_settle.py", line 9, in _settle\n'
        "scopefx.errors.RegistrationError: only 0 of 4 neighbouring tile pairs gave a usable "
        "match (4 low quality)\n  second line of the message\n"
    )
    cause = RemoteTaskError(traceback).cause()
    assert cause is not None and cause[0] is RegistrationError
    assert cause[1] == ("only 0 of 4 neighbouring tile pairs gave a usable match (4 low "
                        "quality)\n  second line of the message")  # fmt: skip
    assert RemoteTaskError("WorkerLost: worker 3 died").cause() is None
    assert RemoteTaskError("scopefx.errors.NotAnError: x").cause() is None
    # an error raised while handling a scopefx one ended the task: not that scopefx error
    chained = (traceback + "\nDuring handling of the above exception, another exception "
               "occurred:\n\nTraceback (most recent call last):\n  File \"/x.py\", line 2\n"
               "KeyError: 'k'\n")  # fmt: skip
    assert RemoteTaskError(chained).cause() is None
    # the message's own lines cannot pose as the error: a tile named with a newline
    posing = (
        'Traceback (most recent call last):\n  File "/x.py", line 1\n'
        "scopefx.errors.ImageNotFoundError: a.tif\nscopefx.errors.ConfigError: b\n"
    )
    cls, message = RemoteTaskError(posing).cause()
    assert (
        cls.__name__ == "ImageNotFoundError" and message == "a.tif\nscopefx.errors.ConfigError: b"
    )

    for text, code in ((traceback, 3), ("WorkerLost: worker 3 died", 2)):

        def fail(args, out, text=text):
            raise RemoteTaskError(text)

        monkeypatch.setattr(fuse_cli, "cmd_fuse", fail)
        from scopefx.cli import main

        with pytest.raises(SystemExit) as info:
            main(["fuse", "t.csv", "-o", "m.ome.zarr"])
        assert info.value.code == code
        err = capsys.readouterr().err
        if code == 3:
            assert "on the endpoint, RegistrationError: only 0 of 4" in err
            assert "Traceback" not in err
        else:
            assert "WorkerLost" in err


def test_the_demo_states_the_truth_planted_in_its_own_run(tmp_path):
    """`scopefx demo --sections 3` printed 'sections 7, 15, 19 out of focus; 11 ...; 22
    truncated', none of which its run held: the line is read from the run's planted truth."""
    from scopefx.cli.demo import _planted
    from scopefx.samples import make_demo_run

    full = make_demo_run(tmp_path / "a", size=96)["planted"]
    assert _planted(full) == "sections 7, 15, 19 out of focus; 11 half out of focus; 22 truncated"
    assert _planted(make_demo_run(tmp_path / "b", size=96, sections=3)["planted"]) == (
        "every section in focus"
    )
    assert _planted(make_demo_run(tmp_path / "c", size=96, sections=12)["planted"]) == (
        "sections 7 out of focus; 11 half out of focus"
    )
