"""Tables of text as people and spreadsheets write them: one reader and one parser for the tile
tables and the defocus tables, so both read the same encodings and CSV dialects."""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

__all__ = ["TextTable", "parse_text_table", "plain_number", "read_table_text"]

#: Largest table read (about 500,000 tile rows): a table is held whole in memory.
TABLE_LIMIT_BYTES = 64 * 2**20

#: Separators tried in this order on the header line: spreadsheets in locales with a decimal
#: comma write ';', some tools write tabs.
_DELIMITERS = ",;\t"
#: The first line Excel writes (and reads) to name a CSV's separator: ``sep=;``.
_SEP_LINE = re.compile(r' *"?sep=([,;\t|])"? *', re.IGNORECASE)


@dataclass(frozen=True)
class TextTable:
    """A parsed table: column names (stripped, lower case: ``Path,X,Y`` is ``path,x,y``), the
    data records ``(line number, values)`` without blank lines, and the separator found."""

    columns: list[str]
    records: list[tuple[int, list[str]]]
    delimiter: str

    def number(self, value: str) -> float:
        """``float(value)``, reading a decimal comma in a ``;`` or tab table (``-2,5`` is -2.5).

        Raises ValueError for text that is not a number, as ``float`` does.
        """
        return plain_number(value.replace(",", ".") if self.delimiter != "," else value)


def plain_number(text: str) -> float:
    """``float(text)`` for a number as tables write it: Python's digit grouping (``1_000``,
    which ``float`` reads as 1000, and no table writer writes) is refused.

    Raises ValueError for text that is not a number, as ``float`` does.
    """
    if "_" in text:
        raise ValueError(f"could not convert string to float: {text!r}")
    return float(text)


def parse_text_table(text: str) -> TextTable:
    """Parse CSV ``text`` whose separator is the header's first of ``,``, ``;`` and tab.

    Blank lines, and comment lines above the header (``# exported by ...``), are skipped. Below
    it a ``#`` starts a value (a tile may be named ``#001.tif``), unless the line holds nothing
    else: ``# first row`` (no other field filled) is a comment there too; an empty ``text``
    gives a table with no columns.
    """
    lines = text.splitlines(keepends=True)
    at = next((k for k, ln in enumerate(lines) if ln.strip() and not _comment(ln)), None)
    header = "" if at is None else lines[at]
    sep = _SEP_LINE.fullmatch(header.rstrip("\r\n"))
    if sep and at is not None:  # Excel's 'sep=;' line names the separator; blanked (so
        # line numbers stay)
        delimiter = sep[1]
        lines[at] = "\n"
        text = "".join(lines)
    else:
        delimiter = next((d for d in _DELIMITERS if d in header), ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records = [(reader.line_num, r) for r in reader if any(v.strip() for v in r)]
    while records and _comment(records[0][1][0]):
        records.pop(0)
    if not records:
        return TextTable([], [], delimiter)
    columns = [c.strip().lower() for c in records[0][1]]
    rows = [
        (n, r) for n, r in records[1:] if not (_comment(r[0]) and not any(v.strip() for v in r[1:]))
    ]
    return TextTable(columns, rows, delimiter)


def read_table_text(path: str | os.PathLike[str]) -> str:
    """A table's text, read as a confined regular file of at most :data:`TABLE_LIMIT_BYTES`
    (larger is a ``ResourceLimitError`` before reading): UTF-8 (a byte-order mark dropped) or,
    failing that, Latin-1 (what spreadsheets on Windows write), with a warning naming the first
    line that is not UTF-8."""
    from ._confine import read_bytes  # a regular file inside the roots: no FIFO, no link out

    data = read_bytes(path, limit=TABLE_LIMIT_BYTES)
    if b"\x00" in data and data[:2] not in (b"\xff\xfe", b"\xfe\xff"):  # not UTF-16 either
        from ..errors import ConfigError

        line = data.count(b"\n", 0, data.index(b"\x00")) + 1  # its Latin-1 was shown as columns
        raise ConfigError(
            f"{path}: not a text table (line {line} holds a NUL byte: binary data, an image or an "
            "archive?); give the CSV or TileConfiguration.txt that lists the tiles"
        )
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16 with its mark: Excel's "Unicode text"
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            from ..errors import ConfigError

            raise ConfigError(f"{path}: marked as UTF-16 but not UTF-16 text ({exc.reason} at "
                              f"byte {exc.start}); save it as UTF-8") from None  # fmt: skip
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        logger.warning(
            "%s, line %d: byte 0x%02x is not UTF-8; reading the table as Latin-1 (save it as "
            "UTF-8 to silence this)", path, line, data[exc.start],
        )  # fmt: skip
        return data.decode("latin-1")


def _comment(first: str) -> bool:
    return first.lstrip().startswith("#")
