"""The focus CSV: one row per image (one page of a stack), written so that a kill loses nothing.

One module for every program that writes or reads it (``scopefx focus``, ``scopefx watch``,
``scopefx demo``, :class:`scopefx.watch.FolderWatch`):

- :class:`FocusCsvWriter` appends a row per record and flushes and fsyncs it before the next
  one, so a killed run keeps every finished row; it can resume a CSV a killed run left (a torn
  last row is dropped) and rewrite verdicts in place, atomically (warm-up sections settled
  once the run's baseline exists).
- :func:`read_focus_csv` reads the complete rows, skipping a torn last row.
- :func:`read_defocus_table` reads the ``path,defocus`` table of a through-focus series.

The columns are :data:`scopefx.focus.CSV_COLUMNS` (extra columns, such as the watch's latency,
follow them).

Examples
--------
>>> from scopefx.focus.csv import FocusCsvWriter, read_focus_csv
>>> with FocusCsvWriter("focus.csv") as sink:          # doctest: +SKIP
...     for record in scopefx.score_files(paths):
...         sink.write(record)
>>> [row["verdict"] for row in read_focus_csv("focus.csv")]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..errors import ConfigError
from ._batch import CSV_COLUMNS, FocusRecord

__all__ = [
    "VERDICT_COLUMNS",
    "FocusCsvWriter",
    "defocus_files",
    "defocus_key",
    "read_defocus_table",
    "read_focus_csv",
]

#: The columns a verdict sets (:meth:`FocusRecord.apply`), rewritten by
#: :meth:`FocusCsvWriter.rewrite_verdicts`.
VERDICT_COLUMNS = ("verdict", "ratio", "defocus_estimate", "bad_cells")


def _cell(value: Any) -> str:
    """A CSV cell: empty for None and NaN, 6 significant digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, ".6g") if isinstance(value, float) else str(value)


#: A file name that is not UTF-8 (copied from an old Latin-1 system or a Windows share) is a
#: str with surrogates in Python: written as its own bytes and read back as the same str (a
#: strict codec stopped the whole batch at it); a stray byte of a hand edit reads too.
_NAMES = "surrogateescape"


def _complete(data: bytes) -> bytes:
    """``data`` up to the end of its last complete row: a kill mid-row leaves a torn one.

    A row ends at a newline outside quotes: a quoted cell (a path, an error quoting it) may
    hold newlines of its own, and a row torn after one of them must be cut from its start, not
    at that newline (its open quote would swallow every row appended after it). As the csv
    module writes cells (a quote only around a cell and doubled inside it), a newline is
    outside quotes where an even number of ``"`` precedes it."""
    quotes = data.count(b'"')  # before the newline at ``end``, as the scan goes back
    end = len(data)
    while (newline := data.rfind(b"\n", 0, end)) >= 0:
        quotes -= data.count(b'"', newline, end)
        if quotes % 2 == 0:
            return data[: newline + 1]
        end = newline
    return b""


def _parse(data: bytes) -> tuple[list[str], list[dict[str, str]]]:
    text = _complete(data).decode("utf-8", errors=_NAMES)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    return header, list(reader)


def read_focus_csv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The complete rows of a focus CSV (``scopefx focus --csv``, ``scopefx watch --csv``).

    A torn last row (one a killed run was writing) is skipped. Cells are strings as written
    (empty for a missing value); :meth:`scopefx.focus.FocusRecord.from_row` makes a record of one.
    """
    return _parse(Path(path).read_bytes())[1]


def _key(path: str, page: Any) -> tuple[str, str]:
    return path, _cell(page)


class FocusCsvWriter:
    """Writes a focus CSV row by row, each flushed and fsync'd before the next.

    Parameters
    ----------
    path : path-like
        The CSV. Its folder is created.
    columns : sequence of str
        The columns of a new file: :data:`CSV_COLUMNS` and any extra ones (values for those are
        given to :meth:`write`).
    resume : bool
        ``False`` (default): start a new file (an existing one is replaced). ``True``: keep an
        existing file's rows (:attr:`rows`) and columns and append to it; a torn last row is
        removed first, and columns of ``columns`` the file lacks (a file written by an older
        scopefx) are added to it, empty in its rows (the file is replaced atomically).

    Raises
    ------
    ConfigError
        With ``resume``, when the file is not a focus CSV (its header does not start with
        ``path`` or has no ``features``); the file is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: Sequence[str] = CSV_COLUMNS,
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict[str, str]] = []
        """Every complete row of the file, those read back and those written, in order."""
        header: list[str] = []
        if resume and self.path.exists():
            data = self.path.read_bytes()
            header, rows = _parse(data)
            line = ",".join(self.columns).encode()
            if data and not header and not line.startswith(data.rstrip(b"\r\n")):
                # no complete line (one-line notes, minified JSON): not a header torn by a
                # kill, which is the start of ours; it was overwritten
                raise ConfigError(
                    f"{self.path} is not a scopefx focus CSV (it holds {len(data)} bytes and no "
                    "header); give another CSV or move it away"
                )
            if header and (header[0] != "path" or "features" not in header):
                raise ConfigError(
                    f"{self.path} is not a scopefx focus CSV (header {header[:4]}...); "
                    "give another CSV or move it away"
                )
            torn = len(data) - len(_complete(data))
            if torn:  # drop the torn last row (only once the file is known to be ours)
                with self.path.open("rb+") as handle:
                    handle.truncate(len(data) - torn)
            if header:
                missing = [c for c in self.columns if c not in header]
                self.columns, self.rows = header + missing, rows
                if missing:  # an older scopefx's file: its header gains the new columns
                    self._replace()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: TextIO = self.path.open(
            "a" if header else "w", newline="", encoding="utf-8", errors=_NAMES
        )
        self._writer = self._dict_writer(self._handle)
        if not header:
            self._writer.writeheader()
            self._sync()

    def _dict_writer(self, handle: TextIO) -> csv.DictWriter[str]:
        return csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore")

    def _sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write(self, record: FocusRecord, **extra: Any) -> dict[str, str]:
        """Append ``record``'s row (``extra`` fills extra columns) and make it durable."""
        row = {k: _cell(v) for k, v in record.row().items()}
        row.update({k: _cell(v) for k, v in extra.items()})
        row = {k: row.get(k, "") for k in self.columns}  # what the file holds
        self._writer.writerow(row)
        self._sync()
        self.rows.append(row)
        return row

    def rewrite_verdicts(self, records: Iterable[FocusRecord]) -> None:
        """Write the verdicts of ``records`` (:data:`VERDICT_COLUMNS`) into their rows, matched
        by path and page (the last such row: a section scored again keeps its first verdicts
        above), atomically: the file is replaced by a complete new one, so a kill
        leaves either the old rows or the new ones."""
        updates = {_key(r.path, r.page): r for r in records}
        for row in reversed(self.rows):  # a section acquired again: its latest row only
            record = updates.pop((row["path"], row.get("page", "")), None)
            if record is not None:
                row.update({k: _cell(getattr(record, k)) for k in VERDICT_COLUMNS})
        self._handle.close()
        self._replace()
        self._handle = self.path.open("a", newline="", encoding="utf-8", errors=_NAMES)
        self._writer = self._dict_writer(self._handle)

    def _replace(self) -> None:
        """Replace the file by :attr:`columns` and :attr:`rows`, atomically (a kill leaves
        either the old file or the new one)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8", errors=_NAMES) as handle:
            writer = self._dict_writer(handle)
            writer.writeheader()
            writer.writerows(self.rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> FocusCsvWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_defocus_table(path: str | os.PathLike[str]) -> dict[str, float]:
    """The ``path,defocus`` table of a through-focus series: resolved image path -> defocus.

    Paths in the table are relative to the table's folder (or absolute). A through-focus
    series in one multi-page file (a z stack) gives each page its defocus with a ``page``
    column (from 0): such rows are keyed ``"/abs/stack.tif[3]"`` (:func:`defocus_key`, the
    notation of the focus output's lines), other rows by the path alone. The table is read by
    :func:`scopefx.io.parse_text_table` (column names in any case; ``,``, ``;`` or tab
    separated, a decimal comma with ``;`` or tabs), as UTF-8 (with or without a byte-order
    mark) or, failing that, Latin-1.

    Raises
    ------
    ConfigError
        The table cannot be read, lacks the ``path`` or ``defocus`` column, or holds a defocus
        that is not a finite number, an empty path, a page that is not a number, or an image
        listed twice (the message names the line).
    """
    from ..io import parse_text_table, read_table_text

    table = Path(path)
    try:
        text = read_table_text(table)
    except OSError as exc:
        raise ConfigError(f"cannot read defocus table {os.fspath(path)!r}: {exc}") from None
    parsed = parse_text_table(text)
    cols = parsed.columns  # 'Path, Defocus' as well
    if not {"path", "defocus"} <= set(cols):
        raise ConfigError(
            f"defocus table {os.fspath(path)!r} needs the columns 'path' and 'defocus', got {cols}"
        )
    out: dict[str, float] = {}
    first_line: dict[str, int] = {}
    for i, values in parsed.records:
        row = dict(zip(cols, (v.strip() for v in values), strict=False))
        try:
            value = parsed.number(row.get("defocus", ""))
        except ValueError:
            raise ConfigError(
                f"{os.fspath(path)!r} line {i}: defocus {row.get('defocus')!r} is not a number"
            ) from None
        if not row.get("path"):
            raise ConfigError(f"{os.fspath(path)!r} line {i}: empty path")
        key = str((table.parent / row["path"]).resolve())
        page = row.get("page", "")
        if page:
            if not (page.isascii() and page.isdigit()):
                raise ConfigError(
                    f"{os.fspath(path)!r} line {i}: page {page!r} is not a page number (from 0)"
                )
            key = f"{key}[{int(page)}]"
        if not math.isfinite(value):  # dropped from the fit without a word, before
            raise ConfigError(
                f"{os.fspath(path)!r} line {i}: defocus {row.get('defocus')!r} is not a finite "
                "number; leave the image out of the table instead"
            )
        if key in first_line:  # the last value won silently, and the fit used it
            raise ConfigError(
                f"{os.fspath(path)!r} line {i}: {row['path']!r}"
                + (f" page {page}" if page else "")
                + f" is listed again (first on line {first_line[key]}); give each image once"
            )
        first_line[key] = i
        out[key] = value
    return out


def defocus_key(path: str, page: int | None) -> str:
    """The key of an image (``page`` of a multi-page file, or the file) in
    :func:`read_defocus_table`'s result."""
    key = str(Path(path).resolve())
    return key if page is None else f"{key}[{page}]"


def defocus_files(table: dict[str, float]) -> list[str]:
    """The files a defocus table names, each once, sorted (a page's key without its page)."""
    return sorted({re.sub(r"\[\d+\]$", "", key) for key in table})
