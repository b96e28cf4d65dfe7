"""The focus CSV (:mod:`scopefx.focus.csv`): rows durable as written, a torn last line dropped,
verdicts rewritten atomically, the defocus table read with line-level errors."""

from __future__ import annotations

import csv
import math

import pytest

from scopefx.errors import ConfigError
from scopefx.focus import CSV_COLUMNS, FocusRecord
from scopefx.focus.csv import FocusCsvWriter, read_defocus_table, read_focus_csv


def _record(i: int, verdict: str = "in_focus", page: int | None = None) -> FocusRecord:
    return FocusRecord(
        path=f"/run/section_{i:04d}.tif", page=page, features=100 + i, density_per_mpx=1.5 * i,
        verdict=verdict,
    )  # fmt: skip


def test_rows_are_on_disk_as_soon_as_written(tmp_path):
    path = tmp_path / "sub" / "focus.csv"
    sink = FocusCsvWriter(path)
    sink.write(_record(1))
    rows = read_focus_csv(path)  # before close: flushed (and fsync'd)
    assert [r["path"] for r in rows] == ["/run/section_0001.tif"]
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert rows[0]["ratio"] == "" and rows[0]["page"] == "" and rows[0]["features"] == "101"
    sink.close()
    with FocusCsvWriter(path) as again:  # a new run replaces the file
        again.write(_record(2))
    assert [r["path"] for r in read_focus_csv(path)] == ["/run/section_0002.tif"]


def test_resume_drops_a_torn_line_and_keeps_extra_columns(tmp_path):
    path = tmp_path / "watch.csv"
    columns = (*CSV_COLUMNS, "latency_seconds")
    with FocusCsvWriter(path, columns=columns) as sink:
        sink.write(_record(0), latency_seconds=0.25)
    with path.open("a") as handle:
        handle.write("/run/section_0001.tif,,ok,,1")  # killed mid-row
    assert len(read_focus_csv(path)) == 1  # the reader skips it
    with FocusCsvWriter(path, resume=True) as sink:
        assert sink.columns == list(columns)
        assert [r["latency_seconds"] for r in sink.rows] == ["0.25"]
        sink.write(_record(1), latency_seconds=0.5)
    rows = read_focus_csv(path)
    assert [(r["path"], r["latency_seconds"]) for r in rows] == [
        ("/run/section_0000.tif", "0.25"), ("/run/section_0001.tif", "0.5"),
    ]  # fmt: skip
    assert path.read_text().count("\n") == 3


@pytest.mark.parametrize(
    "torn",
    [
        '"/run/nl\nb.tif",,ok,,12,',  # killed after the newline in the quoted path
        '"/run/nl\nb.tif",,corrupt,"cannot read \'/run/nl\nb',  # ... in the error quoting it
        '"/run/nl\n',
    ],
)
def test_resume_cuts_a_torn_row_from_its_start_when_a_quoted_cell_holds_a_newline(tmp_path, torn):
    """A file name may hold a newline (anyone who writes into the acquisition folder chooses
    it); its row quotes it. Before: a row torn after that newline was cut there, and the half
    row's open quote swallowed every row appended after the resume (read back as one row
    whose path was "/run/nl\n/run/section_0001.tif,,ok,...")."""
    path = tmp_path / "watch.csv"
    odd = '/run/new\nline "quoted".tif'  # a complete row holding a newline and quotes
    with FocusCsvWriter(path) as sink:
        sink.write(_record(0))
        sink.write(FocusRecord(path=odd, features=5))
    with path.open("a", newline="") as handle:
        handle.write(torn)
    kept = ["/run/section_0000.tif", odd]
    assert [r["path"] for r in read_focus_csv(path)] == kept  # the reader skips it
    with FocusCsvWriter(path, resume=True) as sink:
        assert [r["path"] for r in sink.rows] == kept
        sink.write(_record(1))
        sink.write(_record(2))
    assert [r["path"] for r in read_focus_csv(path)] == [
        *kept, "/run/section_0001.tif", "/run/section_0002.tif",
    ]  # fmt: skip


def test_resume_refuses_a_foreign_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("x,y\n1,2")
    with pytest.raises(ConfigError, match="not a scopefx focus CSV"):
        FocusCsvWriter(path, resume=True)
    assert path.read_text() == "x,y\n1,2"


@pytest.mark.parametrize("text", ["my notes, no newline", '{"a": 1}'])
def test_resume_refuses_a_one_line_file_that_is_no_torn_header(tmp_path, text):
    """A file without a newline (one-line notes, minified JSON) had no complete row, so no
    header, and was overwritten with a new CSV."""
    path = tmp_path / "notes.txt"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not a scopefx focus CSV"):
        FocusCsvWriter(path, resume=True)
    assert path.read_text() == text
    torn = tmp_path / "torn.csv"  # the start of the header, as a kill may leave it: taken over
    torn.write_text(",".join(CSV_COLUMNS)[:12])
    with FocusCsvWriter(torn, resume=True) as sink:
        sink.write(_record(1))
    assert [r["path"] for r in read_focus_csv(torn)] == ["/run/section_0001.tif"]


def test_rewrite_verdicts_matches_path_and_page(tmp_path):
    path = tmp_path / "focus.csv"
    records = [_record(0, "warmup", page=0), _record(0, "warmup", page=1), _record(1, "warmup")]
    with FocusCsvWriter(path) as sink:
        for record in records:
            sink.write(record)
        records[1].verdict, records[1].ratio = "out_of_focus", 0.25
        records[2].verdict = "in_focus"
        sink.rewrite_verdicts(records[1:])
        sink.write(_record(2))  # still appending after the rewrite
    rows = read_focus_csv(path)
    assert [(r["page"], r["verdict"], r["ratio"]) for r in rows] == [
        ("0", "warmup", ""), ("1", "out_of_focus", "0.25"), ("", "in_focus", ""),
        ("", "in_focus", ""),
    ]  # fmt: skip
    assert not (tmp_path / "focus.csv.tmp").exists()
    back = FocusRecord.from_row(rows[1])
    assert back.verdict == "out_of_focus" and math.isclose(back.ratio, 0.25)


def test_defocus_table(tmp_path):
    table = tmp_path / "series" / "defocus.csv"
    table.parent.mkdir()
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "defocus"), ("a.tif", "-1.5"), ("b.tif", "2")])
    assert read_defocus_table(table) == {
        str((table.parent / "a.tif").resolve()): -1.5,
        str((table.parent / "b.tif").resolve()): 2.0,
    }
    table.write_text("path,defocus\na.tif,near\n")
    with pytest.raises(ConfigError, match="line 2: defocus 'near' is not a number"):
        read_defocus_table(table)
    table.write_text("path,z\na.tif,1\n")
    with pytest.raises(ConfigError, match="needs the columns 'path' and 'defocus'"):
        read_defocus_table(table)
    with pytest.raises(ConfigError, match="cannot read defocus table"):
        read_defocus_table(tmp_path / "nope.csv")


@pytest.mark.parametrize(
    ("rows", "match"),
    [  # the last of two values was fitted silently; NaN and inf were dropped without a word
        ("a.tif,-0.4\nb.tif,1\na.tif,12\n", r"line 4: 'a.tif' is listed again \(first on line 2\)"),
        ("a.tif,nan\n", r"line 2: defocus 'nan' is not a finite number"),
        ("a.tif,-inf\n", r"line 2: defocus '-inf' is not a finite number"),
    ],
)
def test_a_defocus_table_that_cannot_mean_one_value_per_image_is_refused(tmp_path, rows, match):
    table = tmp_path / "defocus.csv"
    table.write_text("path,defocus\n" + rows)
    with pytest.raises(ConfigError, match=match):
        read_defocus_table(table)
    table.write_text("path,page,defocus\ns.tif,0,1\ns.tif,1,2\n")  # pages of one stack: fine
    assert len(read_defocus_table(table)) == 2


@pytest.mark.parametrize(
    "data",
    [
        b"\xef\xbb\xbfpath,defocus\r\na.tif,-1.5\r\n\r\nb.tif,2\r\n",  # spreadsheet 'CSV UTF-8'
        b"Path, Defocus\na.tif, -1.5\nb.tif ,2\n",  # capitals, spaces after the commas
        b"path;defocus\na.tif;-1,5\nb.tif;2\n",  # a decimal-comma locale
        b"path\tdefocus\na.tif\t-1.5\nb.tif\t2\n",
        b"# z series, 2026-11-30\npath,defocus\na.tif,-1.5\nb.tif,2\n",
    ],
)
def test_defocus_table_as_spreadsheets_and_people_write_it(tmp_path, data):
    table = tmp_path / "defocus.csv"
    table.write_bytes(data)
    assert read_defocus_table(table) == {
        str((tmp_path / "a.tif").resolve()): -1.5,
        str((tmp_path / "b.tif").resolve()): 2.0,
    }


def test_defocus_table_row_without_a_defocus_names_its_line(tmp_path):
    """A short row gave a TypeError traceback (float(None))."""
    table = tmp_path / "defocus.csv"
    table.write_text("path,defocus\na.tif,1\nb.tif\n")
    with pytest.raises(ConfigError, match="line 3: defocus None is not a number"):
        read_defocus_table(table)


def test_defocus_table_pages_of_a_stack(tmp_path):
    from scopefx.focus.csv import defocus_files, defocus_key

    table = tmp_path / "defocus.csv"
    table.write_text("path,page,defocus\nstack.tif,0,-1\nstack.tif,1,0\nother.tif,,2\n")
    read = read_defocus_table(table)
    stack = str((tmp_path / "stack.tif").resolve())
    assert read == {f"{stack}[0]": -1.0, f"{stack}[1]": 0.0, str(tmp_path / "other.tif"): 2.0}
    assert read[defocus_key(stack, 1)] == 0.0
    assert defocus_files(read) == sorted([stack, str(tmp_path / "other.tif")])
    table.write_text("path,page,defocus\nstack.tif,first,-1\n")
    with pytest.raises(ConfigError, match=r"line 2: page 'first' is not a page number"):
        read_defocus_table(table)


def test_resuming_an_older_csv_adds_the_new_columns(tmp_path):
    """A watch resumed on a CSV written before `band_ratio` existed: its header gains the
    column (the old rows empty there), and the new rows keep their value. Before, the value
    was dropped from the file without a word, while the writer's own rows still held it."""
    path = tmp_path / "watch.csv"
    old = [c for c in CSV_COLUMNS if c != "band_ratio"]
    with FocusCsvWriter(path, columns=(*old, "latency_seconds")) as sink:
        sink.write(_record(0), latency_seconds=0.25)
    columns = (*CSV_COLUMNS, "latency_seconds")
    with FocusCsvWriter(path, columns=columns, resume=True) as sink:
        assert sink.columns == [*old, "latency_seconds", "band_ratio"]
        row = sink.write(FocusRecord(path="/run/b.tif", features=3, band_ratio=0.731),
                         latency_seconds=0.5)  # fmt: skip
        assert row["band_ratio"] == "0.731" and list(row) == sink.columns
    rows = read_focus_csv(path)
    assert [r["band_ratio"] for r in rows] == ["", "0.731"]
    assert [r["latency_seconds"] for r in rows] == ["0.25", "0.5"]
    assert FocusRecord.from_row(rows[1]).band_ratio == pytest.approx(0.731)
    assert not (tmp_path / "watch.csv.tmp").exists()
