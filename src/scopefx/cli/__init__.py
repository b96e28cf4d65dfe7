"""``scopefx`` command line: a thin layer over the public API.

Exit codes: 0 when the command ran, even if some images could not be scored (each is reported
on its own line and in the CSV); 2 for usage errors (bad options or option values, an
unreadable calibration, defocus table or endpoint configuration, a tile table that places no
tile or whose columns or values are wrong, a watch folder that is not a directory, an output
that names an input or another output); 3 for data errors: the data named gave nothing (no
images found, not one image could be scored, a through-focus series that gives no
calibration, a tile table or tile missing, or a tile that cannot be decoded, so nothing fused; for
``watch``, images were found and not one could be scored); 130 when interrupted; 141 when the
reader of the output went away (``scopefx focus ... | head``: quietly, as a program that
SIGPIPE ended). A task that failed on an endpoint engine with a scopefx error is answered as that
error raised here: its code and its message, "on the endpoint, Name: ...".
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from .._version import __version__
from ..errors import RemoteTaskError, ScopefxError
from . import demo, focus, fuse, remote, watch
from ._common import (
    BROKEN_PIPE,
    DATA_ERROR,
    DATA_ERRORS,
    USAGE_ERROR,
    DataError,
    UsageError,
    printable,
)

__all__ = [
    "BROKEN_PIPE",
    "DATA_ERROR",
    "USAGE_ERROR",
    "DataError",
    "UsageError",
    "build_parser",
    "main",
]


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``scopefx`` command, one subcommand per command module's parser."""
    parser = argparse.ArgumentParser(
        prog="scopefx",
        description="Focus QC (MHFD) and mosaic fusion for microscopy runs. "
        "`scopefx demo` shows focus QC on sample data.",
    )
    parser.add_argument("--version", action="version", version=f"scopefx {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    focus.add_parsers(sub)
    demo.add_parser(sub)
    fuse.add_parser(sub)
    fuse.add_grid_parser(sub)
    watch.add_parser(sub)
    remote.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of the ``scopefx`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    handler = logging.StreamHandler()
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, handlers=[handler])
    try:
        try:
            code = int(args.func(args, out))
        finally:
            out.flush()  # a reader gone shows here, not in the interpreter's flush at exit
    except BrokenPipeError:  # `scopefx focus ... | head`: the reader has what it wanted
        _discard_stdout(out)
        return BROKEN_PIPE
    except RemoteTaskError as exc:  # on an endpoint engine: answered as the error it ends in
        cause = exc.cause()
        if cause is None:
            parser.exit(USAGE_ERROR, f"scopefx {args.command}: error: {_error_text(exc)}\n")
        cls, message = cause
        code = DATA_ERROR if issubclass(cls, DATA_ERRORS) else USAGE_ERROR
        text = _error_text(f"on the endpoint, {cls.__name__}: {message}")
        parser.exit(code, f"scopefx {args.command}: error: {text}\n")
    except (DataError, *DATA_ERRORS) as exc:  # nothing found, scored or fused
        parser.exit(DATA_ERROR, f"scopefx {args.command}: error: {_error_text(exc)}\n")
    except (UsageError, ScopefxError) as exc:  # bad options, calibration files, ...
        parser.exit(USAGE_ERROR, f"scopefx {args.command}: error: {_error_text(exc)}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


def _error_text(exc: BaseException | str) -> str:
    """An error's message for the terminal: each of its lines :func:`printable` (a message
    that lists tiles keeps its lines; the names in them cannot move the cursor), then its
    notes (``add_note``: what the command adds, such as the state an output is left in)."""
    text = "\n".join([str(exc), *getattr(exc, "__notes__", ())])
    return "\n".join(printable(line) for line in text.split("\n"))


class _PrintableFormatter(logging.Formatter):
    """Log lines as :func:`~scopefx.cli._common.printable` text: a warning quotes file names,
    which whoever writes into a shared folder chooses (a traceback, with ``-v``, is kept as
    it is)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


def _discard_stdout(out: TextIO) -> None:
    """Point stdout at the null device, so that what is still buffered for a reader that went
    away is dropped at exit rather than raising BrokenPipeError again (the way the Python
    documentation's note on SIGPIPE does it)."""
    if out is not sys.stdout:
        return
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (replaced, captured)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
