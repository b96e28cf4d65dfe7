"""File names and error texts reach the operator's terminal with their control characters
escaped: a name chosen by another user of a shared acquisition folder can neither erase the
flagged line of ``scopefx watch`` nor forge another line (review 37, finding 4)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import tifffile

from scopefx.cli import main
from scopefx.cli._common import record_line, summary
from scopefx.cli.watch import _Alarm, _row
from scopefx.focus import FocusRecord

#: Erase this line, go up one, erase the flagged line there, and print an in-focus line in its
#: place; conceal whatever follows.
FORGE = "\x1b[2K\x1b[1A\x1b[2K\r25:15:07       1268  in_focus      backlog  section_0004.tif\x1b[8m"
#: Clear the screen, set the window title, ring the bell, start a new line, reorder the rest.
NOISE = "a\x1b[2J\x1b]0;pwned\x07\nb\u202ec\x9b\x7f"
#: How the lines show it.
SHOWN = r"a\x1b[2J\x1b]0;pwned\x07\nb\u202ec\x9b\x7f"
#: What no line may hold: control characters other than the newline ending it, the line and
#: paragraph separators, bidirectional controls.
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _sections(folder: Path, names: list[str], blur: list[float]) -> None:
    """Sections under ``names`` (their file names, without the suffix), ``blur`` px out of
    focus, written one second apart (the order in which a watch scores them)."""
    from scopefx.samples import acquire, bundled_image, defocus

    sharp = bundled_image("immunohistochemistry", size=256)
    for i, (name, amount) in enumerate(zip(names, blur, strict=True)):
        path = folder / f"{name}.tif"
        tifffile.imwrite(path, acquire(defocus(sharp, amount), seed=i))
        os.utime(path, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (FORGE[:8] + "x", r"\x1b[2K\x1b[1Ax"),
        (NOISE, SHOWN),
        ("line\r\ttab", r"line\r\ttab"),
        ("café 切片 Ångström – 🔬.tif", "café 切片 Ångström – 🔬.tif"),
        ("bad\udcff.tif", r"bad\udcff.tif"),  # a name's byte that is not UTF-8
    ],
)
def test_printable_escapes_control_characters_and_keeps_the_rest(text, shown):
    from scopefx.cli._common import printable

    assert printable(text) == shown


def test_a_file_name_cannot_erase_the_flagged_line_of_watch(tmp_path):
    """Before: the name's ESC[1A ESC[2K erased the red "re-acquire" line of section_0004 on
    screen and CR + text printed an in_focus line for it in its place."""
    acq = tmp_path / "acq"
    acq.mkdir()
    names = [f"section_{i:04d}" for i in range(5)] + [FORGE]
    _sections(acq, names, [0, 0, 0, 0, 8, 0])
    out = io.StringIO()
    argv = ["watch", str(acq), "--warmup", "3", "--settle", "0", "--grace", "0",
            "--idle-exit", "0"]  # fmt: skip
    assert main(argv, out=out) == 0
    text = out.getvalue()
    assert not _RAW.search(text), repr(text)
    lines = text.splitlines()
    assert any(re.search(r"out_of_focus .* section_0004\.tif  <- re-acquire$", ln) for ln in lines)
    assert not any(line.startswith("25:15:07") for line in lines), lines  # nothing forged
    (hostile,) = [line for line in lines if "25:15:07" in line]
    assert hostile.endswith(r"  \x1b[2K\x1b[1A\x1b[2K\r25:15:07       1268  in_focus      "
                            r"backlog  section_0004.tif\x1b[8m.tif")  # fmt: skip


def test_focus_and_calibrate_lines_escape_names_and_errors(tmp_path):
    """``scopefx focus``'s per-image lines and summary, and ``calibrate``'s "skipped" lines, name
    images and quote errors (which quote paths). Before: ESC, BEL and newlines written raw."""
    run = tmp_path / "run"
    run.mkdir()
    _sections(run, [f"s{i}" for i in range(3)] + [f"sharp {NOISE}"], [0, 0, 0, 0])
    (run / f"broken {NOISE}.tif").write_bytes(b"II*\x00garbage")  # corrupt: its error quotes it
    out, out_csv, out_json = io.StringIO(), tmp_path / "f.csv", tmp_path / "f.json"
    argv = ["focus", str(run), "--warmup", "2", "--csv", str(out_csv), "--json", str(out_json)]
    assert main(argv, out=out) == 0
    text = out.getvalue()
    assert not _RAW.search(text), repr(text)
    shown = SHOWN
    assert f"sharp {shown}.tif" in text and f"broken {shown}.tif" in text
    assert re.search(rf"corrupt: .*broken {re.escape(shown)}\.tif", text)  # the summary's line
    named = {f"{run}/sharp {NOISE}.tif", f"{run}/broken {NOISE}.tif"}  # files keep the names
    with out_csv.open(newline="") as handle:
        assert named <= {row["path"] for row in csv.DictReader(handle)}
    assert named <= {record["path"] for record in json.loads(out_json.read_text())}
    out = io.StringIO()
    with pytest.raises(SystemExit):  # no image holds a focus value: nothing to calibrate on
        main(["calibrate", str(run), "--from-metadata", "focus", "-o", str(tmp_path / "c.json")],
             out=out)  # fmt: skip
    text = out.getvalue()
    assert not _RAW.search(text), repr(text)
    assert f"skipped {run}/sharp {shown}.tif: no focus value" in text
    assert f"skipped {run}/broken {shown}.tif: " in text


def test_watch_rows_alarms_and_summaries_escape_names_and_errors(tmp_path):
    """Each line builder of the CLI, given a record whose path and error hold control
    characters. Before: written raw, one line split into several."""
    path = f"/acq/{NOISE}.tif"
    bad = FocusRecord(path=path, status="corrupt", error=f"cannot read {path}: {NOISE}")
    flagged = FocusRecord(path=path, features=3, verdict="out_of_focus")
    lines = [
        _row(SimpleNamespace(record=bad, section=f"{NOISE}.tif", late=False, latency=0.5,
                             flagged=False), False),
        _row(SimpleNamespace(record=flagged, section=f"{NOISE}.tif", late=False,
                             latency=float("nan"), flagged=True), True),
        record_line(bad, True),
        record_line(flagged, False),
    ]  # fmt: skip
    out = io.StringIO()
    summary([bad, flagged], out)
    alarm = _Alarm("exit 3", out)
    alarm.fire(flagged)
    alarm.reap(wait=30)
    lines += out.getvalue().splitlines()
    for line in lines:
        plain = re.sub(r"\x1b\[[0-9;]*m|\a$", "", line)  # the lines' own colour and bell
        assert not _RAW.search(plain), repr(line)
    text = "\n".join(lines)
    assert text.count(f"/acq/{SHOWN}.tif") == 7, text  # 2 of them in errors
    assert f"--on-oof for /acq/{SHOWN}.tif exited with status 3" in text


def test_fuse_names_a_missing_tile_escaped(tmp_path):
    """A tile table (which anyone who can write the run's folder may edit) naming a tile that
    does not exist. Before: ``--skip-missing`` listed its name raw."""
    from scopefx.samples import make_mosaic, write_mosaic

    table = write_mosaic(
        tmp_path / "tiles", make_mosaic(grid=(3, 3), tile_px=128, name="retina", jitter_px=3)
    )
    text = table.read_text()
    table.write_text(text.replace("tile_0003.tif", f'"{NOISE}.tif"'))
    out = io.StringIO()
    argv = ["fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q", "--skip-missing"]
    assert main(argv, out=out) == 0
    assert not _RAW.search(out.getvalue()), repr(out.getvalue())
    assert f"  {tmp_path}/tiles/{SHOWN}.tif" in out.getvalue().splitlines()


def test_error_and_log_lines_escape_names(tmp_path, capsys):
    """The command's final error line and its log warnings quote file names too. Before: the
    missing tile's name (without ``--skip-missing``: an error) and the unreadable image's
    name (a warning of the reader) reached stderr raw."""
    import logging

    from scopefx.samples import make_mosaic, write_mosaic

    table = write_mosaic(tmp_path / "tiles", make_mosaic(grid=(2, 2), tile_px=64, name="retina"))
    table.write_text(table.read_text().replace("tile_0003.tif", f'"{NOISE}.tif"'))
    with pytest.raises(SystemExit):
        main(["fuse", str(table), "-o", str(tmp_path / "m.ome.zarr"), "-q"], out=io.StringIO())
    err = capsys.readouterr().err  # the error's own lines kept, the name's controls escaped
    assert r"a\x1b[2J\x1b]0;pwned\x07" in err and not _RAW.search(err), repr(err)

    root = logging.getLogger()
    kept = root.handlers[:]
    try:
        root.handlers.clear()  # main configures logging afresh, as a new process does
        (tmp_path / "run").mkdir()
        tifffile.imwrite(
            tmp_path / "run" / "ok.tif", tifffile.imread(tmp_path / "tiles" / "tile_0000.tif")
        )
        main(["-v", "focus", str(tmp_path / "run"), "-q"], out=io.StringIO())
        for handler in root.handlers:
            handler.stream = io.StringIO()
        logging.getLogger("scopefx.test").warning("cannot read %s", f"/run/{NOISE}.tif")
        logged = "".join(h.stream.getvalue() for h in root.handlers)
        assert SHOWN in logged and not _RAW.search(logged.rstrip("\n")), repr(logged)
    finally:
        root.handlers[:] = kept
