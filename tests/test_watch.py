"""``scopefx watch`` / :class:`scopefx.watch.FolderWatch` on folders written while they run.

A writer thread (or the test itself) writes sections slowly, in pieces with pauses, into
subfolders; one file stays truncated, one is written under a temporary name and renamed, one is
not an image. The watch is stopped or killed part-way and restarted on the same CSV. Every
image must end up in the CSV exactly once, and exactly the planted out-of-focus sections must
be flagged.
"""

from __future__ import annotations

import collections
import csv
import io
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from scopefx.errors import ConfigError
from scopefx.watch import WATCH_COLUMNS, FolderWatch, read_watch_csv

SIZE = 256
#: Sections planted out of focus (after the run baseline's 5 warm-up sections).
PLANTED_OOF = {6, 11}
N_SECTIONS = 14
CORRUPT = 9


def _section(i: int) -> bytes:
    """TIFF bytes of section ``i``: a shifted crop of a bundled histology image, sharp or, for
    the planted ones, defocused by 5 px, with detector noise."""
    import tifffile

    from scopefx.samples import acquire, bundled_image, defocus

    base = bundled_image("immunohistochemistry", size=SIZE + 32)
    crop = base[i % 32 : i % 32 + SIZE, (3 * i) % 32 : (3 * i) % 32 + SIZE]
    pixels = acquire(defocus(crop, 5.0 if i in PLANTED_OOF else 0.0), seed=i)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels)
    data = buffer.getvalue()
    return data[: len(data) // 3] if i == CORRUPT else data


def _name(folder: Path, i: int) -> Path:
    return folder / f"grid{i % 2}" / f"section_{i:04d}.tif"


def _write_slowly(path: Path, data: bytes, *, pieces: int = 3, pause: float = 0.08) -> None:
    """Write ``data`` in ``pieces`` with pauses, as an instrument streaming a frame does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    step = -(-len(data) // pieces)
    with path.open("wb") as handle:
        for k in range(0, len(data), step):
            handle.write(data[k : k + step])
            handle.flush()
            time.sleep(pause)


def _writer(
    folder: Path, sections: range, *, gap: float = 0.15, hold: threading.Event | None = None
) -> None:
    for i in sections:
        if hold is not None and i == 7:  # the test restarts its watch part-way, then lets go
            hold.wait(60)
        data = _section(i)
        target = _name(folder, i)
        if i == 4:  # written under a temporary name, then renamed into place
            _write_slowly(target.with_name(target.name + ".part"), data)
            os.replace(target.with_name(target.name + ".part"), target)
        elif i == 8:  # a long pause mid-write, longer than `settle`: tried, held, finished
            _write_slowly(target, data, pieces=2, pause=0.7)
        else:
            _write_slowly(target, data)
        time.sleep(gap)


def _csv_paths(path: Path) -> list[str]:
    return [row["path"] for row in read_watch_csv(path)]


def _expected(folder: Path) -> set[str]:
    return {str(_name(folder, i).absolute()) for i in range(N_SECTIONS)}


def _planted(folder: Path) -> set[str]:
    return {str(_name(folder, i).absolute()) for i in PLANTED_OOF}


@pytest.mark.slow
def test_watch_finds_every_file_once_across_a_restart(tmp_path: Path) -> None:
    acq = tmp_path / "acq"
    acq.mkdir()
    (acq / "notes.txt").write_text("not an image")
    table = tmp_path / "focus.csv"
    hold = threading.Event()
    writer = threading.Thread(target=_writer, args=(acq, range(N_SECTIONS)), kwargs={"hold": hold})
    writer.start()
    try:
        with FolderWatch(acq, csv=table, settle=0.25, grace=2.0) as first:
            seen_first = [s for s in first.follow(max_files=6, idle_exit=20)]
        assert writer.is_alive(), "the restart must happen part-way through the acquisition"
        hold.set()
        with FolderWatch(acq, csv=table, settle=0.25, grace=2.0) as second:
            assert {r.path for r in second.previous} == {s.record.path for s in seen_first}
            seen_second = list(second.follow(idle_exit=5.0))  # the writer may stall a while
    finally:
        hold.set()
        writer.join()

    paths = _csv_paths(table)
    counts = collections.Counter(paths)
    assert set(counts) == _expected(acq), "every image once, nothing else (no .part, no .txt)"
    assert max(counts.values()) == 1
    live = [s for s in [*seen_first, *seen_second] if not s.late]
    assert sorted(s.record.path for s in live) == sorted(paths)

    rows = {row["path"]: row for row in read_watch_csv(table)}
    statuses = {p: row["status"] for p, row in rows.items()}
    corrupt = str(_name(acq, CORRUPT).absolute())
    assert statuses.pop(corrupt) == "corrupt"
    assert set(statuses.values()) == {"ok"}, "a file caught mid-write is retried, not reported"
    flagged = {p for p, row in rows.items() if row["verdict"] in ("out_of_focus", "partial")}
    assert flagged == _planted(acq)
    live_flagged = {s.record.path for s in [*seen_first, *seen_second] if s.flagged}
    assert live_flagged == _planted(acq), "flagged when scored, not only in the CSV"
    # the warm-up sections were settled against the baseline and rewritten in place
    assert all(row["verdict"] == "in_focus" for p, row in rows.items()
               if row["status"] == "ok" and p not in _planted(acq))  # fmt: skip
    for row in rows.values():
        if row["status"] == "ok" and row["latency_seconds"]:
            assert float(row["latency_seconds"]) >= 0
    # the summary covers both sessions
    assert len(second.all_records()) == N_SECTIONS


def test_torn_last_line_is_dropped_and_foreign_csv_refused(tmp_path: Path) -> None:
    acq = tmp_path / "acq"
    acq.mkdir()
    for i in range(2):
        _name(acq, i).parent.mkdir(parents=True, exist_ok=True)
        _name(acq, i).write_bytes(_section(i))
    table = tmp_path / "focus.csv"
    with FolderWatch(acq, csv=table, settle=0) as watch:
        assert len(watch.poll()) == 2
    torn = str(_name(acq, 1).absolute())
    text = table.read_text()
    # a kill while the second row was being written leaves a torn line
    table.write_text(text[: text.index(torn)] + torn + ",,o")
    with FolderWatch(acq, csv=table, settle=0) as watch:
        assert [r.path for r in watch.previous] == [str(_name(acq, 0).absolute())]
        again = watch.poll()
    assert [s.record.path for s in again] == [torn]
    assert _csv_paths(table) == [str(_name(acq, 0).absolute()), torn]
    with table.open() as handle:
        assert next(csv.reader(handle)) == list(WATCH_COLUMNS)

    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2")  # someone else's file, last line without a newline
    with pytest.raises(ConfigError, match="not a scopefx focus CSV"):
        FolderWatch(acq, csv=other)
    assert other.read_text() == "x,y\n1,2", "a refused file is left as it was"
    with pytest.raises(ConfigError, match="not a directory"):
        FolderWatch(tmp_path / "nope")
    with pytest.raises(ConfigError, match="settle"):
        FolderWatch(acq, settle=-1)


def test_new_only_and_files_removed_before_reading(tmp_path: Path) -> None:
    acq = tmp_path / "acq"
    (acq / "grid0").mkdir(parents=True)
    _name(acq, 0).write_bytes(_section(0))
    with FolderWatch(acq, settle=0, include_existing=False) as watch:
        assert watch.poll() == []
        _name(acq, 2).write_bytes(_section(2))
        gone = acq / "grid0" / "vanishes.tif"
        gone.write_bytes(_section(3))
        assert watch.ready() == [str(_name(acq, 2).absolute()), str(gone.absolute())]
        gone.unlink()  # removed after it was seen complete, before it was read
        scored = list(watch.score([str(_name(acq, 2).absolute()), str(gone.absolute())]))
    assert [s.record.path for s in scored] == [str(_name(acq, 2).absolute())]


def _watch_cmd(acq: Path, table: Path, log: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "scopefx", "watch", str(acq), "--csv", str(table),
        "--grace", "2", "--on-oof", f"echo {{}} >> {log}", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_killed_and_restarted(tmp_path: Path) -> None:
    """The real command: SIGKILL part-way, a torn line, a restart ended by Ctrl-C."""
    acq, table, log = tmp_path / "acq", tmp_path / "focus.csv", tmp_path / "oof.log"
    acq.mkdir()
    env = dict(os.environ, NO_COLOR="1", MPLBACKEND="Agg")
    first = subprocess.Popen(
        _watch_cmd(acq, table, log), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        _writer(acq, range(8))
        deadline = time.monotonic() + 60
        while len(_csv_paths(table) if table.exists() else []) < 7:
            assert time.monotonic() < deadline, "the watch scored nothing"
            time.sleep(0.1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    n_first = len(_csv_paths(table))
    with table.open("a") as handle:  # as if killed while writing a row
        handle.write(str(_name(acq, 99).absolute()) + ",,ok,,12")

    second = subprocess.Popen(
        _watch_cmd(acq, table, log), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        text=True,
    )  # fmt: skip
    try:
        _writer(acq, range(8, N_SECTIONS))
        deadline = time.monotonic() + 60
        while not _expected(acq) <= set(_csv_paths(table)):  # every image, not a row count
            assert time.monotonic() < deadline, "the restarted watch did not finish"
            assert second.poll() is None, second.communicate()[0]
            time.sleep(0.1)
        second.send_signal(signal.SIGINT)  # Ctrl-C: stop cleanly and write the summary
        output, _ = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
    assert second.returncode == 0, output

    counts = collections.Counter(_csv_paths(table))
    assert set(counts) == _expected(acq) and max(counts.values()) == 1
    assert "section(s), flagged ones labelled" in output
    assert table.with_suffix(".png").stat().st_size > 0
    assert f"{n_first} file(s) already in" in output  # the torn row was dropped
    flagged_lines = [line for line in output.splitlines() if line.endswith("<- re-acquire")]
    assert [line.split()[-3] for line in flagged_lines] == ["grid1/section_0011.tif"]
    # --on-oof ran once per planted section, across both processes
    assert sorted(log.read_text().split()) == sorted(_planted(acq))


def test_watch_on_an_endpoint_engine(tmp_path: Path) -> None:
    """Scoring on a real GlobusComputeEngine whose data root holds the folder under another
    path: references go out as ``--remote-dir`` paths, the CSV keeps the local ones."""
    from scopefx import Client
    from scopefx.remote import EngineExecutor

    root = tmp_path / "root"
    acq = root / "instrument" / "run7"
    acq.mkdir(parents=True)
    for i in (0, 1, CORRUPT):
        _name(acq, i).parent.mkdir(parents=True, exist_ok=True)
        _name(acq, i).write_bytes(_section(i))
    ex = EngineExecutor(1, env={"SCOPEFX_DATA_ROOTS": str(root)})
    try:
        with (
            Client(ex, progress=False) as client,
            FolderWatch(
                acq, client=client, csv=tmp_path / "f.csv", remote_dir="instrument/run7",
                settle=0, grace=0,
            ) as watch,
        ):  # fmt: skip
            scored = watch.poll()
    finally:
        ex.shutdown()
    by_path = {s.record.path: s.record for s in scored}
    assert set(by_path) == {str(_name(acq, i).absolute()) for i in (0, 1, CORRUPT)}
    assert by_path[str(_name(acq, CORRUPT).absolute())].status == "corrupt"
    assert all(by_path[str(_name(acq, i).absolute())].features > 0 for i in (0, 1))
    local = {r.path: r.features for r in scored_locally(acq)}
    assert {p: r.features for p, r in by_path.items() if r.ok} == local


def scored_locally(acq: Path) -> list:
    from scopefx import score_files

    return [r for r in score_files(sorted(str(p.absolute()) for p in acq.rglob("*.tif"))) if r.ok]


def test_a_file_that_grows_while_it_is_read_is_held_however_long_the_read_took(
    tmp_path: Path,
) -> None:
    """The writer finished the file while its half was being scored, and the score came back
    after the grace period (a loaded machine, a slow endpoint): the half was reported corrupt
    and the whole scored again, two rows for one section. A file that changed during its read
    is held, whatever the clock says."""
    from scopefx import Client

    acq = tmp_path / "acq"
    acq.mkdir()
    data = _section(1)
    target = acq / "section_0001.tif"
    target.write_bytes(data[: len(data) // 2])

    class WriterFinishesDuringTheRead(Client):
        def iter_focus(self, refs, **kwargs):  # type: ignore[no-untyped-def]
            records = list(super().iter_focus(refs, **kwargs))  # read the half
            if target.stat().st_size < len(data):
                target.write_bytes(data)  # ... while the writer went on (once)
            return iter(records)

    client = WriterFinishesDuringTheRead(progress=False)
    with client, FolderWatch(acq, client=client, settle=0, grace=0) as watch:
        first = watch.poll()
        time.sleep(0.6)  # past the retry interval
        second = watch.poll()
    assert first == []  # held: it changed while it was read
    assert [s.record.status for s in second] == ["ok"]
    assert [r.status for r in watch.records] == ["ok"]


def test_latency_is_reported_for_live_files_only(tmp_path: Path) -> None:
    acq = tmp_path / "acq"
    (acq / "grid0").mkdir(parents=True)
    old = _name(acq, 0)
    old.write_bytes(_section(0))
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    with FolderWatch(acq, settle=0) as watch:
        backlog = watch.poll()
        _name(acq, 2).write_bytes(_section(2))
        live = watch.poll()
    assert np.isnan(backlog[0].latency)
    assert live[0].latency >= 0 and watch.latencies == [live[0].latency]


def test_a_section_is_reported_before_it_is_settled_and_only_when_its_verdict_changed(
    tmp_path: Path,
) -> None:
    """A backlog of 7 sections, warm-up 5. The run judges a file's record before the watch
    knows the file is complete, so the 5th section's "settled" line came before its own row,
    and the 4th, already shown in focus, was reported a second time (review 42, F8)."""
    acq = tmp_path / "acq"
    for i in range(7):
        path = acq / f"section_{i:04d}.tif"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_section(0 if i in PLANTED_OOF else i))
    shown: dict[str, str] = {}
    late = []
    with FolderWatch(acq, settle=0) as watch:
        for s in watch.score(watch.ready()):  # each line as the CLI prints it, when it does
            name = Path(s.record.path).name
            if s.late:
                late.append(name)
                assert name in shown, f"{name} settled before its own row"
                assert shown[name] != s.record.verdict, f"{name} reported again, unchanged"
            else:
                assert name not in shown, f"{name} has two rows of its own"
            shown[name] = s.record.verdict
    assert len(shown) == 7 and set(shown.values()) == {"in_focus"}
    assert late and len(late) == len(set(late)) < 5  # the warm-up sections shown as warmup


def test_cli_exits_3_when_nothing_it_found_could_be_scored(tmp_path: Path, capsys) -> None:
    from scopefx.cli import main

    acq = tmp_path / "acq"
    (acq / "grid0").mkdir(parents=True)
    (acq / "grid0" / "broken.tif").write_bytes(b"II*\x00garbage")
    argv = ["watch", str(acq), "--settle", "0", "--grace", "0", "--idle-exit", "0", "-q"]
    with pytest.raises(SystemExit) as info:
        main(argv, out=io.StringIO())
    assert info.value.code == 3
    assert "none of the 1 image(s) this session found could be scored" in capsys.readouterr().err
    (acq / "grid0" / "broken.tif").unlink()  # an empty folder is a watch that saw nothing yet
    assert main(argv, out=io.StringIO()) == 0


def test_cli_never_scores_its_own_outputs(tmp_path: Path, caplog) -> None:
    """`watch DIR --csv DIR/log.csv` wrote its summary plot DIR/log.png into the watched folder,
    and the next session scored it as a section; so was an explicit --plot in the folder."""
    import logging

    from scopefx.cli import main

    caplog.set_level(logging.INFO, logger="scopefx.cli")
    acq = tmp_path / "acq"
    for i in range(3):
        _name(acq, 2 * i).parent.mkdir(parents=True, exist_ok=True)
        _name(acq, 2 * i).write_bytes(_section(2 * i))
    table = acq / "log.csv"
    argv = ["watch", str(acq), "--settle", "0", "--idle-exit", "0", "-q"]
    for _ in range(2):  # a restart on the same CSV
        assert main([*argv, "--csv", str(table)], out=io.StringIO()) == 0
    assert (acq / "log.png").stat().st_size > 0
    assert sorted(_csv_paths(table)) == sorted(str(_name(acq, 2 * i)) for i in range(3))
    plot = acq / "grid0" / "summary.tif"  # a format the watch follows, in a subfolder
    (acq / "log.png").unlink()
    for _ in range(2):  # no CSV: each session scores the folder again
        out = io.StringIO()
        assert main([*argv, "--plot", str(plot)], out=out) == 0
        assert "scored 3 image(s)" in out.getvalue()
    assert plot.stat().st_size > 0
    assert f"never scoring {acq / 'log.png'}: this command writes it" in caplog.text
    assert f"never scoring {plot}: this command writes it (--plot)" in caplog.text


def test_a_file_removed_before_it_is_read_is_scored_when_written_again(tmp_path):
    """An instrument that deletes a bad frame and writes it again under the same name: the
    removed file went on the done list, and the frame written again was never scored."""
    (tmp_path / "s0.tif").write_bytes(_section(0))
    (tmp_path / "s1.tif").write_bytes(_section(1))
    with FolderWatch(tmp_path, settle=0) as watch:
        ready = watch.ready()
        assert len(ready) == 2
        os.remove(tmp_path / "s1.tif")  # gone between the scan and the read
        statuses = sorted(s.record.status for s in watch.score(ready))
        assert statuses == ["missing", "ok"] or statuses == ["ok"]
        (tmp_path / "s1.tif").write_bytes(_section(1))
        later = []
        for _ in range(20):
            later += [s for s in watch.poll() if s.record.ok]
            if later:
                break
            time.sleep(0.05)
        assert [Path(s.record.path).name for s in later] == ["s1.tif"]


def test_a_csv_scored_with_another_modality_is_refused(tmp_path):
    """A restart without --modality fluorescence on a fluorescence run's CSV mixed densities of
    two presets: new in-focus sections came out unverifiable, old ones were rewritten out of
    focus. The CSV records each section's modality."""
    from scopefx.focus import FocusParams

    folder = tmp_path / "acq"
    folder.mkdir()
    (folder / "s0.tif").write_bytes(_section(0))
    table = tmp_path / "run.csv"
    with FolderWatch(folder, params=FocusParams(modality="fluorescence"), csv=table,
                     settle=0) as watch:  # fmt: skip
        assert [s.record.ok for s in watch.poll()] == [True]
    with pytest.raises(ConfigError, match=r"modality fluorescence.*not comparable"):
        FolderWatch(folder, csv=table)
    with FolderWatch(folder, params=FocusParams(modality="fluorescence"), csv=table) as again:
        assert len(again.previous) == 1


def _stack(sections: range) -> np.ndarray:
    import tifffile

    return np.stack([tifffile.imread(io.BytesIO(_section(i))) for i in sections])


def _poll_until(watch: FolderWatch, want: int, tries: int = 100) -> list:
    """Records scored by ``watch`` (not warm-up sections judged again) until ``want`` came."""
    got: list = []
    for _ in range(tries):
        got += [s for s in watch.poll() if not s.late]
        if len(got) >= want:
            break
        time.sleep(0.05)
    return got


def test_a_stack_that_grows_after_it_was_scored_gets_its_new_pages(tmp_path):
    """A stack written page by page with pauses longer than `settle` was scored on its first
    pages and never again: the pages written later were never scored."""
    import tifffile

    stack = tmp_path / "acq" / "z.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, _stack(range(2)), photometric="minisblack")
    table = tmp_path / "run.csv"
    with FolderWatch(stack.parent, csv=table, settle=0) as watch:
        assert [s.record.page for s in watch.poll() if not s.late] == [0, 1]
        assert watch.poll() == []  # unchanged: not scored again
        tifffile.imwrite(stack, _stack(range(4)), photometric="minisblack")  # two more pages
        assert [s.record.page for s in _poll_until(watch, 2)] == [2, 3]
        assert watch.poll() == []
    pages = [row["page"] for row in read_watch_csv(table)]
    assert pages == ["0", "1", "2", "3"]


def test_a_section_acquired_again_under_its_name_is_scored_again(tmp_path):
    """An operator re-acquires a flagged section under the same file name: the new image was
    never scored (the path was on the done list), so the re-acquisition could not be checked."""
    import tifffile

    from scopefx.samples import defocus

    folder = tmp_path / "acq"
    folder.mkdir()
    section = folder / "s0.tif"
    sharp = tifffile.imread(io.BytesIO(_section(0)))
    tifffile.imwrite(section, defocus(sharp, 5.0).astype(sharp.dtype))  # out of focus first
    table = tmp_path / "run.csv"
    with FolderWatch(folder, csv=table, settle=0) as watch:
        first = watch.poll()
        time.sleep(0.02)  # another modification time, even on coarse clocks
        tifffile.imwrite(section, sharp)  # acquired again, in focus
        again = _poll_until(watch, 1)
    assert len(first) == 1 and len(again) == 1
    assert again[0].record.features > 2 * first[0].record.features
    rows = read_watch_csv(table)
    assert [row["path"] for row in rows] == [str(section.absolute())] * 2
    # restarted: both rows are history; the file, unchanged since, is not scored a third time
    with FolderWatch(folder, csv=table, settle=0) as later:
        assert len(later.previous) == 2 and later.poll() == []


def test_a_restart_scores_the_pages_a_kill_left_out(tmp_path):
    """A watch killed while it was writing a stack's rows had the file on its done list: on
    restart the pages after the kill were never scored."""
    import tifffile

    stack = tmp_path / "acq" / "z.tif"
    stack.parent.mkdir()
    tifffile.imwrite(stack, _stack(range(4)), photometric="minisblack")
    table = tmp_path / "run.csv"
    with FolderWatch(stack.parent, csv=table, settle=0) as watch:
        assert len(watch.poll()) == 4
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:3]))  # header and pages 0, 1: killed after page 1's row
    with FolderWatch(stack.parent, csv=table, settle=0) as again:
        assert [s.record.page for s in again.poll() if not s.late] == [2, 3]
    assert [row["page"] for row in read_watch_csv(table)] == ["0", "1", "2", "3"]


def test_new_only_scores_a_file_that_was_being_written_at_the_start(tmp_path):
    """--new-only put a file half-written at the start on the done list: never scored."""
    folder = tmp_path / "acq"
    folder.mkdir()
    (folder / "old.tif").write_bytes(_section(0))
    data = _section(1)
    live = folder / "live.tif"
    with live.open("wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        with FolderWatch(folder, settle=0.1, include_existing=False) as watch:
            assert watch.poll() == []
            handle.write(data[len(data) // 2 :])
            handle.flush()
            time.sleep(0.02)
            got = _poll_until(watch, 1)
    assert [Path(s.record.path).name for s in got] == ["live.tif"]
    assert got[0].record.ok


def test_a_stop_or_max_files_ends_the_watch_within_the_backlog(tmp_path):
    """Ctrl-C (the stop event) waited for a whole backlog to be scored, and --max-files N
    scored every file of the scan that reached N: 12 files with --max-files 2 gave 12 rows."""
    folder = tmp_path / "acq"
    folder.mkdir()
    for i in range(12):  # (section CORRUPT is a truncated file: 12 in its place)
        (folder / f"s{i:02d}.tif").write_bytes(_section(12 if i == CORRUPT else i))
    table = tmp_path / "run.csv"
    with FolderWatch(folder, csv=table, settle=0, batch_size=8) as watch:
        assert len([s for s in watch.follow(max_files=2, idle_exit=5) if not s.late]) == 2
    assert len(read_watch_csv(table)) == 2
    stop = threading.Event()
    with FolderWatch(folder, csv=table, settle=0, batch_size=8) as watch:
        got = []
        for scored in watch.follow(stop=stop, idle_exit=5):
            got.append(scored)
            stop.set()  # as the first Ctrl-C does
    assert len(got) == 1
    with FolderWatch(folder, csv=table, settle=0) as last:  # the rest are still to score
        rest = [s for s in last.poll() if not s.late]
    assert len(rest) == 9
    assert sorted(row["path"] for row in read_watch_csv(table)) == sorted(
        str((folder / f"s{i:02d}.tif").absolute()) for i in range(12)
    )


def test_an_on_oof_command_still_running_at_exit_is_stopped_with_its_children(tmp_path):
    """--on-oof commands still running 10 s after the watch ended were killed, but only the
    shell: what they had started (a `sleep`, a mail client) went on running."""
    import io as _io

    from scopefx.cli.watch import _Alarm
    from scopefx.focus import FocusRecord

    marker = tmp_path / "child.pid"
    alarm = _Alarm(f"sleep 60 & echo $! > {marker}; : {{}}; wait", _io.StringIO())
    alarm.fire(FocusRecord(path=str(tmp_path / "s.tif"), verdict="out_of_focus", features=3))
    deadline = time.monotonic() + 30  # a loaded machine may take seconds to start the shell
    while not (marker.exists() and marker.read_text().strip()):
        assert time.monotonic() < deadline, "the --on-oof command never started"
        time.sleep(0.02)
    child = int(marker.read_text())
    alarm.reap(wait=0.2)
    assert "killed" in alarm.out.getvalue()
    deadline = time.monotonic() + 30  # the kill is asynchronous: gone (or a zombie) soon
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{child}/stat").read_text().split()[2]
        except FileNotFoundError:
            break
        if state == "Z":
            break
        time.sleep(0.02)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the --on-oof command's child outlived the kill")


def test_a_doubt_is_said_when_it_appears_not_only_at_the_end(tmp_path):
    """A calibration that does not fit the run (its in-focus range 1000x above every section)
    was said only in the summary when the watch stopped, hours after the first sections; now
    once, as soon as it shows (the fifth section judged)."""
    import math

    from scopefx import Calibration
    from scopefx.cli import main

    acq = tmp_path / "acq"
    for i in range(7):
        target = _name(acq, i if i not in PLANTED_OOF else i + 20)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_section(i if i not in PLANTED_OOF else 0))
    cal = Calibration(intercept=math.log(5e6), slope=1.0, r=-1.0, n=3, max_defocus=1.0)
    cal.save(tmp_path / "cal.json")
    out = io.StringIO()
    argv = ["watch", str(acq), "--calibration", str(tmp_path / "cal.json"), "--settle", "0",
            "--grace", "0", "--idle-exit", "0"]  # fmt: skip
    assert main(argv, out=out) == 0
    lines = out.getvalue().splitlines()
    notes = [k for k, line in enumerate(lines) if line.startswith("note: the calibration may")]
    assert len(notes) == 1, lines
    rows = [k for k, line in enumerate(lines) if "section_" in line and "out_of_focus" in line]
    # as soon as the run has judged its fifth section (in the batch it came in), not at the end
    assert len(rows) == 7 and notes[0] < rows[-1], lines
    assert "not one section came within a factor 2" in lines[notes[0]]
    summary = next(k for k, line in enumerate(lines) if line.startswith("scored 7 image"))
    assert any("the calibration may not fit" in line for line in lines[summary:])


def _blurred_warmup(folder: Path) -> None:
    """A run that starts out of focus: its 5 warm-up sections, every one blurred."""
    import tifffile

    from scopefx.samples import defocus

    folder.mkdir()
    for i in range(5):
        sharp = tifffile.imread(io.BytesIO(_section(i)))
        tifffile.imwrite(folder / f"s{i:02d}.tif", defocus(sharp, 5.0).astype(sharp.dtype))


def _then_in_focus(folder: Path) -> None:
    """The 7 sections after the warm-up: focus is reached."""
    for i in range(5, 12):
        (folder / f"s{i:02d}.tif").write_bytes(_section(i if i not in PLANTED_OOF else 0))


def test_sections_of_an_earlier_session_found_out_of_focus_later_are_reported(tmp_path):
    """A run that started out of focus, stopped after its warm-up and restarted: the sections
    of the first session are judged again when the density rises in the second, and those
    found out of focus are printed then (settled, flagged), as within one session."""
    folder = tmp_path / "acq"
    table = tmp_path / "run.csv"
    _blurred_warmup(folder)
    with FolderWatch(folder, csv=table, settle=0) as first:
        assert len([s for s in first.poll() if not s.late]) == 5
    _then_in_focus(folder)
    with FolderWatch(folder, csv=table, settle=0) as second:
        seen = second.poll()
    late = {Path(s.record.path).name for s in seen if s.late and s.flagged}
    assert late == {f"s{i:02d}.tif" for i in range(5)}, late
    rows = {Path(r["path"]).name: r["verdict"] for r in read_watch_csv(table)}
    assert all(rows[f"s{i:02d}.tif"] == "out_of_focus" for i in range(5)), rows


class _Killed(Exception):
    """Stands for a SIGKILL at the moment the alarm starts."""


def test_the_alarm_starts_before_the_row_is_written_so_a_kill_never_loses_it(tmp_path):
    """``on_flagged`` runs before the section's CSV row: a watch killed in between scores the
    section again on restart and raises the alarm again. Raised after the row (as the CLI did),
    a kill between the two left the section in the CSV, skipped on restart, and never alarmed
    (CI: --on-oof's log lacked grid0/section_0006)."""
    acq = tmp_path / "acq"
    table = tmp_path / "focus.csv"
    for i in range(8):
        _name(acq, i).parent.mkdir(parents=True, exist_ok=True)
        _name(acq, i).write_bytes(_section(i))
    planted = str(_name(acq, 6).absolute())
    calls: list[tuple[str, bool]] = []

    def kill_at_the_alarm(record):
        calls.append((record.path, record.path in _csv_paths(table)))
        raise _Killed

    first = FolderWatch(acq, csv=table, settle=0, on_flagged=kill_at_the_alarm)
    with pytest.raises(_Killed), first:
        first.poll()
    assert calls == [(planted, False)]
    assert planted not in _csv_paths(table)

    def record_alarm(record):
        calls.append((record.path, record.path in _csv_paths(table)))

    with FolderWatch(acq, csv=table, settle=0, on_flagged=record_alarm) as second:
        again = second.poll()
    assert calls == [(planted, False), (planted, False)]
    assert [s.record.path for s in again if s.flagged] == [planted]
    assert collections.Counter(_csv_paths(table))[planted] == 1


def test_a_settled_section_alarms_before_its_row_is_rewritten(tmp_path):
    """A warm-up section found out of focus once the density rises: ``on_flagged`` sees its row
    still with its earlier verdict, so a kill before the rewrite leaves a row that the restart
    judges again, not an out-of-focus row nobody was told about."""
    folder = tmp_path / "acq"
    table = tmp_path / "run.csv"
    _blurred_warmup(folder)
    _then_in_focus(folder)
    seen: dict[str, str] = {}

    def record_alarm(record):
        rows = {r["path"]: r["verdict"] for r in read_watch_csv(table)}
        seen[Path(record.path).name] = rows.get(record.path, "no row")

    with FolderWatch(folder, csv=table, settle=0, on_flagged=record_alarm) as watch:
        flagged = {Path(s.record.path).name for s in watch.poll() if s.flagged}
    assert set(seen) == flagged == {f"s{i:02d}.tif" for i in range(5)}, (seen, flagged)
    assert "out_of_focus" not in seen.values(), seen
    rows = {Path(r["path"]).name: r["verdict"] for r in read_watch_csv(table)}
    assert all(rows[f"s{i:02d}.tif"] == "out_of_focus" for i in range(5)), rows


def test_a_file_that_changed_between_its_scan_and_its_read_is_scored_once(tmp_path):
    """A writer that pauses longer than ``settle`` mid-file: found settled, then the rest
    written before the read (a loaded machine: the read came late). The record was kept with
    the size and time of the half file, so the next look saw a change and scored the section
    again: two rows of one section (the CLI test, under load). Now held, left out of the run,
    and scored once it settles."""
    acq = tmp_path / "acq"
    acq.mkdir()
    table = tmp_path / "focus.csv"
    data = _section(0)
    path = acq / "section_0000.tif"
    path.write_bytes(data[: len(data) // 2])
    with FolderWatch(acq, csv=table, settle=0, grace=5) as watch:
        found = watch.ready()
        assert found == [str(path.absolute())]
        path.write_bytes(data)  # the rest lands before the read
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse clock's tick
        assert list(watch.score(found)) == []  # held: what was read is not known
        assert watch.run._judged == 0  # and the run never saw it
        again = watch.poll()
        while not again:  # settle is 0, retries come every half second
            time.sleep(0.1)
            again = watch.poll()
        assert [s.record.path for s in again] == [str(path.absolute())] and again[0].record.ok
        time.sleep(1.1)  # past the recheck of scored files
        assert watch.poll() == []
    assert _csv_paths(table) == [str(path.absolute())]


HOSTILE_NAMES = ["/run/s5$(touch PWNED).tif", "/run/a b'c\"d`touch PWNED`.tif",
                 "/run/$HOME;touch PWNED.tif", "/run/-n\\\\x.tif"]  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        "printf %s {} > out",
        'printf %s "{}" > out',
        'printf %s "$(printf %s {})" > out',
        "printf %s > out",  # no {}: the path appended
        # another shell's text names the variables itself (sh -c inherits SCOPEFX_PATH; a
        # shell elsewhere, as ssh host '...' reaches, parses SCOPEFX_PATH_Q as one word)
        """sh -c 'printf %s "$SCOPEFX_PATH" > out'""",
        """sh -c 'printf %s '"$SCOPEFX_PATH_Q"' > out'""",
    ],
)
def test_on_oof_hands_the_path_to_every_shell_as_a_name_never_as_code(tmp_path, command):
    """With the documented ways of reaching another shell, a file named
    's5$(touch PWNED).tif' (and the like) is a name there too, never code."""
    from scopefx.cli.watch import on_oof_command

    for name in HOSTILE_NAMES:
        env = dict(os.environ, SCOPEFX_PATH=name, SCOPEFX_PATH_Q=shlex.quote(name))
        subprocess.run(on_oof_command(command), shell=True, env=env, cwd=tmp_path, check=True)
        assert (tmp_path / "out").read_text() == name
        assert not list(tmp_path.glob("PWNED*")), (command, name)


def test_a_command_that_names_the_path_itself_is_not_given_it_again():
    """Appended to ssh host 'notify '"$SCOPEFX_PATH_Q", the path reached the remote shell
    unquoted."""
    from scopefx.cli.watch import on_oof_command

    command = "ssh pc 'notify '\"$SCOPEFX_PATH_Q\""
    assert on_oof_command(command) == command
    assert on_oof_command("notify") == 'notify "$SCOPEFX_PATH"'


@pytest.mark.parametrize(
    "command", ["sh -c 'logger {}'", "ssh pc 'notify {}'", "echo '{}'", "sh -c 'echo \"{}\"'"]
)
def test_on_oof_refuses_a_path_inside_single_quotes(tmp_path, command, capsys):
    """{} in '...' became '"$SCOPEFX_PATH"': where that text is another shell's (sh -c, ssh)
    the outer shell pasted the name into it, and a file named 's5$(touch PWNED).tif' ran
    touch. Refused at the start, saying what to write instead."""
    from scopefx.cli import main

    with pytest.raises(SystemExit) as info:
        main(["watch", str(tmp_path), "--idle-exit", "0", "--on-oof", command])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "{} inside '...' is refused" in err, err
    assert "$SCOPEFX_PATH_Q" in err


def test_a_file_name_that_is_not_utf8_is_scored_recorded_and_skipped_on_restart(tmp_path):
    """A name with a Latin-1 byte (b'\\xff') crashed the watch (and focus --csv, and
    Client().score_focus) with UnicodeEncodeError, losing the whole batch; the restart
    crashed again on the same file, stopping live QC for good."""
    from scopefx.cli import main

    acq = tmp_path / "acq"
    acq.mkdir()
    names = [b"a.tif", b"b\xffname.tif", b"c.tif"]
    for k, name in enumerate(names):
        with open(os.path.join(os.fsencode(acq), name), "wb") as fh:
            fh.write(_section(k))
    table = tmp_path / "focus.csv"
    argv = ["watch", str(acq), "--csv", str(table), "--idle-exit", "0", "--grace", "0.5",
            "--settle", "0.1", "-q"]  # fmt: skip
    assert main(argv, out=io.StringIO()) == 0
    want = {os.fsdecode(os.path.join(os.fsencode(acq.absolute()), n)) for n in names}
    assert set(_csv_paths(table)) == want  # the odd name read back as the same str
    assert [r["status"] for r in read_watch_csv(table)] == ["ok"] * 3
    out = io.StringIO()
    assert main(argv, out=out) == 0  # the restart skips all three: nothing scored again
    assert len(read_watch_csv(table)) == 3, out.getvalue()


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda row: row.replace(",,", ",x,", 1), "page"),  # the empty page cell
        (lambda row: row.split(",")[0], "short"),
        (lambda row: _cells(row, features="inf"), "inf"),
    ],
)
def test_a_hand_damaged_csv_is_refused_naming_its_row_on_restart(tmp_path, edit, what):
    """A restart on a CSV edited by hand ended in raw tracebacks (int('x'), int(None),
    int(float('inf'))): it is a ConfigError naming the file and the row."""
    acq = tmp_path / "acq"
    acq.mkdir()
    (acq / "a.tif").write_bytes(_section(0))
    table = tmp_path / "focus.csv"
    with FolderWatch(acq, csv=table, grace=0.5, settle=0.0) as watch:
        list(watch.score(watch.ready() or _until_ready(watch)))
    header, row = table.read_text().splitlines()[:2]
    table.write_text(f"{header}\n{edit(row)}\n")
    with pytest.raises(ConfigError, match=r"focus\.csv, row 1 after the header: not a row"):
        FolderWatch(acq, csv=table)


def _cells(row: str, **values: str) -> str:
    header = WATCH_COLUMNS
    cells = next(csv.reader([row]))
    for name, value in values.items():
        cells[list(header).index(name)] = value
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue().strip()


def _until_ready(watch: FolderWatch) -> list[str]:
    deadline = time.monotonic() + 30
    while not (ready := watch.ready()):
        assert time.monotonic() < deadline, "the file never settled"
        time.sleep(0.05)
    return ready


def test_a_file_server_clock_behind_does_not_make_a_growing_file_look_settled(tmp_path):
    """A file written in pieces with its mtime 60 s in the past (a file server's clock
    behind this machine's): its grace was counted from that mtime, so each piece read was
    reported corrupt at once: three 'corrupt' rows, then 'ok'. Now: one 'ok' row."""
    acq = tmp_path / "acq"
    acq.mkdir()
    data = _section(0)
    path = acq / "skew.tif"
    table = tmp_path / "focus.csv"
    with FolderWatch(acq, csv=table, grace=5.0, settle=0.2, interval=0.05) as watch:
        rows = []
        with open(path, "wb") as fh:
            for k in range(4):
                fh.write(data[k * len(data) // 4 : (k + 1) * len(data) // 4])
                fh.flush()
                past = time.time() - 60
                os.utime(path, (past, past))
                deadline = time.monotonic() + 0.8
                while time.monotonic() < deadline:  # the watch looks while the writer pauses
                    rows += [s.record.status for s in watch.score(watch.ready())]
                    time.sleep(0.05)
        deadline = time.monotonic() + 30
        while not rows and time.monotonic() < deadline:
            rows += [s.record.status for s in watch.score(watch.ready())]
            time.sleep(0.05)
    assert rows == ["ok"], rows
    assert [r["status"] for r in read_watch_csv(table)] == ["ok"]


_LATE_READABLE = """
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
from test_watch import _section
from scopefx.watch import FolderWatch
acq = sys.argv[1]
path = os.path.join(acq, "late.tif")
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o000)  # as acquisition software may make it
os.write(fd, _section(0))
os.close(fd)
statuses, opened = [], None
with FolderWatch(acq, grace=8.0, settle=0.1, interval=0.05) as watch:
    start = time.monotonic()
    while not statuses and time.monotonic() - start < 30:
        if opened is None and time.monotonic() - start > 1.5:
            os.chmod(path, 0o644)  # opened up once written
            opened = time.monotonic() - start
        statuses += [s.record.status for s in watch.score(watch.ready())]
        time.sleep(0.05)
print(json.dumps(statuses))
"""


def test_a_file_made_readable_after_it_is_written_is_scored_not_reported_once(tmp_path):
    """A file created unreadable (mode 000) and opened up once written, as acquisition
    software may do: reported 'error' (PermissionError) at once and never scored, not even
    after a restart. Now it is tried again within --grace, as a file still being written."""
    import shutil

    acq = tmp_path / "acq"
    acq.mkdir()
    cmd = [sys.executable, "-c", _LATE_READABLE, str(acq), str(Path(__file__).parent)]
    if os.geteuid() == 0:  # root reads anything: drop the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: file permissions cannot bind")
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *cmd]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MPLBACKEND="Agg"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == '["ok"]', done.stdout + done.stderr


_LOCKED_SUBFOLDER = """
import logging, os, sys
from scopefx.watch import FolderWatch
acq = sys.argv[1]
logging.basicConfig(level=logging.WARNING)
with FolderWatch(acq, grace=1.0, settle=0.1) as watch:
    for _ in range(3):  # said once, however many scans
        watch.ready()
"""


def test_a_subfolder_the_watch_cannot_list_is_said_once(tmp_path):
    """A subfolder it could not list (mode 000 while the instrument sets it up) was skipped
    on every scan without a word, even with -v: its sections were never seen."""
    import shutil

    acq = tmp_path / "acq"
    (acq / "locked").mkdir(parents=True)
    (acq / "locked").chmod(0)
    cmd = [sys.executable, "-c", _LOCKED_SUBFOLDER, str(acq)]
    if os.geteuid() == 0:  # root lists anything: drop the capability that lets it
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv: file permissions cannot bind")
        drop = "-dac_override,-dac_read_search"
        cmd = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", *cmd]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    finally:
        (acq / "locked").chmod(0o755)
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "cannot list folder" in line]
    assert len(said) == 1 and "locked" in said[0] and "Permission denied" in said[0], done.stderr
