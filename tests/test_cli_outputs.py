"""What ``scopefx focus``, ``calibrate`` and ``watch`` write and in which order they read: an
output never overwrites an input and is never scored on the next run, files are scored in the
order given, the summary names pages, exit codes for data errors and a reader that went away,
and the docs that list what the CSV says."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from scopefx import samples
from scopefx.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: object) -> tuple[int, str]:
    out = io.StringIO()
    code = main([str(a) for a in argv], out=out)
    return code, out.getvalue()


def _exit_code(*argv: object) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv], out=io.StringIO())
    return int(info.value.code or 0)


def _section(i: int, *, blur: float = 0.0, size: int = 128) -> np.ndarray:
    base = samples.bundled_image("immunohistochemistry", size=size + 32)
    crop = base[i % 32 : i % 32 + size, (3 * i) % 32 : (3 * i) % 32 + size]
    return samples.acquire(samples.defocus(crop, blur), seed=i)


def _csv_names(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return [Path(r["path"]).name for r in csv.DictReader(handle)]


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """Six sections: four TIFFs and two PNGs (a camera's own PNGs are inputs too)."""
    folder = tmp_path / "run"
    folder.mkdir()
    for i in range(4):
        tifffile.imwrite(folder / f"s{i}.tif", _section(i))
    for i in (4, 5):
        Image.fromarray(_section(i)).save(folder / f"s{i}.png")
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------------------------
# outputs never overwrite inputs


def test_an_output_naming_an_input_is_refused_before_anything_is_written(
    run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`focus dir --csv dir/s0.tif --plot dir/s4.png` truncated the TIFF (before it was read,
    so it was then reported corrupt) and replaced the PNG with the plot."""
    before = _contents(run_folder)
    link = tmp_path / "link.tif"
    link.symlink_to(run_folder / "s1.tif")
    hard = tmp_path / "hard.tif"
    os.link(run_folder / "s2.tif", hard)
    table = tmp_path / "defocus.csv"
    table.write_text("path,defocus\n" + "".join(f"run/s{i}.tif,{i}\n" for i in range(4)))
    table_before = table.read_bytes()
    cal = tmp_path / "cal.json"
    cal.write_text("{}")  # refused before it is read
    cases = [
        ["focus", run_folder, "--csv", run_folder / "s0.tif"],
        ["focus", run_folder, "--plot", run_folder / "s4.png"],
        ["focus", run_folder, "--maps", link],  # a link to an input
        ["focus", run_folder, "--json", hard],  # a hard link to an input
        ["focus", run_folder / "s0.tif", "--csv", run_folder / "s0.tif"],  # named as input
        ["focus", f"{run_folder}/*.png", "--plot", run_folder / "s5.png"],  # a glob's match
        ["focus", run_folder, "--calibration", cal, "--json", cal],
        ["calibrate", "--defocus", table, "-o", table],
        ["calibrate", "--defocus", table, "-o", run_folder / "s3.tif"],
        ["calibrate", "--defocus", table, "-o", tmp_path / "c.json", "--plot", link],
        ["watch", run_folder, "--plot", run_folder / "s4.png", "--idle-exit", "0"],
        ["watch", run_folder, "--csv", run_folder / "s0.tif", "--idle-exit", "0"],
    ]
    for argv in cases:
        assert _exit_code(*argv) == 2, argv
        err = capsys.readouterr().err
        assert "it would be overwritten; give another path" in err, (argv, err)
    assert _contents(run_folder) == before
    assert table.read_bytes() == table_before and cal.read_text() == "{}"
    assert not (tmp_path / "c.json").exists()


def test_two_outputs_naming_one_file_are_refused(
    run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--csv same.csv --json same.csv` wrote both, the JSON silently replacing the CSV."""
    out = tmp_path / "out"
    cases = [
        ["focus", run_folder, "--csv", out / "same.csv", "--json", out / "same.csv"],
        ["focus", run_folder, "--plot", out / "p.png", "--maps", out / "sub" / ".." / "p.png"],
        ["calibrate", "--from-metadata", "focus", run_folder, "-o", out / "c.png",
         "--plot", out / "c.png"],
        ["watch", run_folder, "--csv", out / "log.png", "--idle-exit", "0"],  # default plot
    ]  # fmt: skip
    for argv in cases:
        assert _exit_code(*argv) == 2, argv
        assert "name the same file; give each output its own file" in capsys.readouterr().err
    assert not out.exists()  # refused before any folder was made


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_a_rerun_does_not_score_its_own_plots(
    run_folder: Path, tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`focus run/ --plot run/focus.png --maps run/maps.png`, run twice, scored the first
    run's plots as sections (and they moved the run baseline)."""
    caplog.set_level(logging.INFO, logger="scopefx.cli")
    plot, maps = run_folder / f"focus{suffix}", run_folder / f"maps{suffix}"
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    for table in (first, second):
        code, text = _run("focus", run_folder, "--plot", plot, "--maps", maps, "--csv", table)
        assert code == 0, text
    assert plot.stat().st_size > 0 and maps.stat().st_size > 0
    sections = [f"s{i}.tif" for i in range(4)] + ["s4.png", "s5.png"]
    assert _csv_names(second) == _csv_names(first) == sections
    skipped = [
        (r.levelno, r.getMessage()) for r in caplog.records if "not scoring" in r.getMessage()
    ]
    assert sorted(skipped) == [
        (logging.INFO, f"not scoring {plot}: this command writes it (--plot)"),
        (logging.INFO, f"not scoring {maps}: this command writes it (--maps)"),
    ]


def test_a_folder_of_nothing_but_its_own_outputs_is_a_data_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    tifffile.imwrite(folder / "s0.tif", _section(0))
    assert _run("focus", folder, "--plot", folder / "focus.png", "--warmup", "1")[0] == 0
    (folder / "s0.tif").unlink()
    assert _exit_code("focus", folder, "--plot", folder / "focus.png", "--warmup", "1") == 3
    assert "but this command's own outputs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# order, summary, exit codes


def test_files_named_are_scored_in_the_order_given_folders_in_natural_order(
    tmp_path: Path,
) -> None:
    """The run order drives the run baseline: `focus c.tif a.tif b.tif` scored a, b, c."""
    for name in ("a", "b", "c"):
        tifffile.imwrite(tmp_path / f"{name}.tif", _section(ord(name)))
    folder = tmp_path / "run"
    folder.mkdir()
    for i in (10, 2, 1):
        tifffile.imwrite(folder / f"s{i}.tif", _section(i))
    table = tmp_path / "f.csv"
    named = [tmp_path / n for n in ("c.tif", "a.tif", "b.tif")]
    assert _run("focus", *named, "--csv", table, "-q")[0] == 0
    assert _csv_names(table) == ["c.tif", "a.tif", "b.tif"]
    assert _run("focus", folder, "--csv", table, "-q")[0] == 0
    assert _csv_names(table) == ["s1.tif", "s2.tif", "s10.tif"]
    assert _run("focus", folder / "s10.tif", f"{folder}/*.tif", "--csv", table, "-q")[0] == 0
    assert _csv_names(table) == ["s10.tif", "s1.tif", "s2.tif"]  # each once, where first named
    # an unquoted glob, as the shell expands it (plain sorted order): natural order
    shell = [folder / n for n in ("s1.tif", "s10.tif", "s2.tif")]
    assert _run("focus", *shell, "--csv", table, "-q")[0] == 0
    assert _csv_names(table) == ["s1.tif", "s2.tif", "s10.tif"]


def test_the_summary_names_the_page_of_a_stack(tmp_path: Path) -> None:
    """The summary listed a flagged or failed page as the stack file alone, twice for two."""
    pages = [_section(i, blur=6.0 if i == 6 else 0.0).astype(np.float32) for i in range(7)]
    pages.append(pages[0].copy())
    pages[-1][5, 5] = np.inf
    tifffile.imwrite(tmp_path / "stack.tif", np.stack(pages))
    code, text = _run("focus", tmp_path / "stack.tif")
    assert code == 0, text
    summary = text.split("\nscored ", 1)[1]
    assert f"out of focus: {tmp_path / 'stack.tif'}[6]" in summary
    assert f"invalid_values: {tmp_path / 'stack.tif'}[7]" in summary


def test_calibration_data_errors_exit_3_and_a_bad_max_defocus_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A series that gives no fit exited 2, the code of a usage error."""
    table = samples.write_defocus_series(
        tmp_path / "series", np.arange(-4, 4.5, 2.0), image="moon", size=128
    )
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    two = tmp_path / "two.csv"
    two.write_text("path,defocus\n" + "".join(f"series/{r['path']},{r['defocus']}\n"
                                              for r in rows[:2]))  # fmt: skip
    backwards = tmp_path / "backwards.csv"  # the sharpest image given the largest |defocus|
    backwards.write_text("path,defocus\n" + "".join(
        f"series/{r['path']},{4 - abs(float(r['defocus']))}\n" for r in rows))  # fmt: skip
    out = tmp_path / "cal.json"
    assert _exit_code("calibrate", "--defocus", two, "-o", out) == 3
    assert "need at least 3 images" in capsys.readouterr().err
    assert _exit_code("calibrate", "--defocus", backwards, "-o", out) == 3
    assert "counts do not fall with |defocus|" in capsys.readouterr().err
    assert _exit_code("calibrate", "--defocus", table, "-o", out, "--max-defocus", "-1") == 2
    assert "--max-defocus must be a number >= 0, got -1.0" in capsys.readouterr().err
    # images without features, with defocus values: the error said none had a defocus value
    flat = tmp_path / "flat.csv"
    for k in range(2):
        np.save(tmp_path / f"flat{k}.npy", np.full((64, 64), 100, np.uint16))
    flat.write_text("path,defocus\nflat0.npy,0\nflat1.npy,1\n")
    assert _exit_code("calibrate", "--defocus", flat, "-o", out) == 3
    err = capsys.readouterr().err
    assert "none of the 2 image(s) can enter the fit (2 no features" in err, err
    assert "has a defocus value" not in err
    assert not out.exists()


@pytest.mark.parametrize("command", ["focus", "watch"])
def test_batch_size_must_be_at_least_1(
    run_folder: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--idle-exit", "0"] if command == "watch" else []
    assert _exit_code(command, run_folder, "--batch-size", "0", *extra) == 2
    assert "--batch-size: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_a_reader_that_goes_away_ends_the_command_quietly(run_folder: Path) -> None:
    """`scopefx focus ... | head` ended with a BrokenPipeError traceback (or, with the lines
    still buffered, 'Exception ignored ... BrokenPipeError' and exit code 120)."""
    with subprocess.Popen(
        [sys.executable, "-m", "scopefx", "focus", str(run_folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first line
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code == 141, err
    assert "BrokenPipeError" not in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------
# the docs of what the CSV says


def _output_columns() -> str:
    text = (ROOT / "docs" / "focus.md").read_text()
    return text.split("## Output columns", 1)[1].split("\n## ", 1)[0]


def test_every_status_a_bad_image_gets_is_in_the_output_columns(tmp_path: Path) -> None:
    """docs/focus.md listed neither `transparent` nor `config`; each status an image can get
    is in its table, found here by scoring such images."""
    bad = tmp_path / "bad"
    bad.mkdir()
    grey = _section(0)
    tifffile.imwrite(bad / "ok.tif", grey)
    (bad / "empty.tif").write_bytes(b"")
    (bad / "corrupt.tif").write_bytes(b"II*\x00garbage")
    np.save(bad / "ndim.npy", np.zeros((2, 2, 64, 64), np.uint8))
    np.save(bad / "dtype.npy", np.zeros((64, 64), bool))
    np.save(bad / "too_small.npy", np.zeros((4, 64), np.uint8))
    values = grey.astype(np.float32)
    values[3, 3] = np.inf
    np.save(bad / "invalid_values.npy", values)
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(bad / "transparent.png")
    (bad / "unsupported.npy").write_bytes(b"PK\x03\x04 an npz behind an npy name")
    table = tmp_path / "bad.csv"
    _run("focus", bad, bad / "missing.tif", "--csv", table, "-q")
    # a channel an image does not have (a grey image has channel 0 only: this run alone)
    channel = tmp_path / "channel"
    channel.mkdir()
    Image.fromarray(np.stack([grey, grey], axis=-1), "LA").save(channel / "config.png")
    assert _exit_code("focus", channel, "--channel", "2", "--csv", tmp_path / "channel.csv",
                      "-q") == 3  # nothing scored  # fmt: skip
    statuses = {}
    for name in ("bad.csv", "channel.csv"):
        with (tmp_path / name).open(newline="") as handle:
            statuses |= {Path(r["path"]).stem: r["status"] for r in csv.DictReader(handle)}
    assert statuses == {name: name for name in statuses}, statuses  # each got its own status
    assert len(statuses) == 11
    documented = set(re.findall(r"^\| `(\w+)` \|", _output_columns(), re.MULTILINE))
    remote = {"limit", "denied", "device", "failed", "error"}  # limits, endpoints, the unforeseen
    assert {"ok", *statuses, *remote} <= documented, documented


def test_limits_no_longer_lists_colour_images_as_refused() -> None:
    """docs/limits.md refused (H, W, 3|4) colour images, which are scored on their luma."""
    row = next(
        line
        for line in (ROOT / "docs" / "limits.md").read_text().splitlines()
        if line.startswith("| dimensions |")
    )
    accepted, refused = row.split(" | ")[1:3]
    assert "(H, W, 3\\|4)" in accepted and "luma" in accepted
    assert "3\\|4" not in refused and "rgb" not in refused


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_an_output_that_cannot_be_written_costs_the_others_nothing(
    run_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json on a full disk came as an OSError traceback after every image was scored; the
    plot asked for beside it was never written. Now the plot is written, and a data error
    names the output that failed."""
    plot = tmp_path / "p.png"
    assert _exit_code("focus", run_folder, "--json", "/dev/full", "--plot", plot, "-q") == 3
    assert "could not write --json /dev/full: No space left on device" in capsys.readouterr().err
    assert plot.read_bytes()[:4] == b"\x89PNG"


def _without_root_override(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """``scopefx argv`` as a user whom file permissions bind (root, here, drops the
    capability that overrides them, as the endpoint's users do not have it)."""
    cmd = [sys.executable, "-m", "scopefx", *argv]
    if os.geteuid() == 0:
        import shutil

        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: file permissions cannot bind")
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("option", ["--json", "--csv", "--plot"])
def test_an_output_in_a_folder_one_cannot_write_is_refused_before_scoring(
    run_folder: Path, tmp_path: Path, option: str
) -> None:
    """Such an output came as a PermissionError traceback (--json, --plot: after every image
    was scored, the results lost)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    name = {"--json": "o.json", "--csv": "o.csv", "--plot": "o.png"}[option]
    locked.chmod(0o555)
    try:
        done = _without_root_override(["focus", str(run_folder), option, str(locked / name)])
    finally:
        locked.chmod(0o755)
    assert done.returncode == 2, done.stderr
    assert f"{option} '{locked / name}': the folder '{locked}' is not writable" in done.stderr
    assert "scored" not in done.stdout  # refused before any image was read


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--idle-exit", "nan", "must be a finite number of seconds >= 0, got 'nan'"),  # never ended
        ("--idle-exit", "-5", "got '-5'"),  # ended at once
        ("--max-files", "-1", "must be an integer >= 1, got -1"),  # scored nothing, exit 0
    ],
)
def test_watch_refuses_stop_conditions_that_mean_nothing(
    run_folder: Path, option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _exit_code("watch", run_folder, option, value) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["focus", "{run}", "--target-px", "15"], "--target-px must be an integer >= 16, got 15"),
        (["focus", "{run}", "--n-scales", "0"], "--n-scales must be between 1 and 256, got 0"),
        (["focus", "{run}", "--saturation", "90"], "--saturation must be in [0, 50)"),
        (["focus", "{run}", "--window", "0"], "--window must be an integer >= 1, got 0"),
        (["fuse", "{table}", "-o", "{out}", "--chunk", "3"], "--chunk must be between 16 and"),
        (["fuse", "{table}", "-o", "{out}", "--preview", "p.jpg"], "--preview must be a path "),
    ],
)
def test_a_bad_option_value_is_named_by_its_option(
    run_folder: Path, tmp_path: Path, argv: list[str], message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The messages named the Python field ('target_px must be None or an integer >= 16',
    'saturation_pct must be ...') where the user typed --target-px or --saturation."""
    table = samples.write_mosaic(tmp_path / "tiles", samples.make_mosaic(grid=(1, 2), tile_px=64))
    where = {"{run}": str(run_folder), "{table}": str(table), "{out}": str(tmp_path / "m.zarr")}
    assert _exit_code(*[where.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "_px" not in err.split(message)[0] and "None" not in err
