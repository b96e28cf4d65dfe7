"""What the command modules share: errors and exit codes, colours, option groups, the files they
read and write, output lines.

Imports only the public API (and, until the verdict policy has a public home, the verdict
names of :mod:`scopefx.focus`), never a command module.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import logging
import math
import os
import re
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from .._version import __version__
from ..errors import (
    ConfigError,
    CorruptImageError,
    EmptyFileError,
    ImageNotFoundError,
    InvalidImageError,
    RegistrationError,
    ResourceLimitError,
    UnsupportedFormatError,
)
from ..focus import CSV_COLUMNS, FLAGGED

__all__ = [
    "BROKEN_PIPE",
    "DATA_ERROR",
    "DATA_ERRORS",
    "OK",
    "USAGE_ERROR",
    "DataError",
    "Outputs",
    "UsageError",
    "add_baseline_options",
    "add_endpoint_options",
    "add_focus_options",
    "add_params_options",
    "check_scored",
    "colour",
    "describe_mosaic",
    "doubt_line",
    "find",
    "focus_params",
    "make_client",
    "params_from_args",
    "positive_int",
    "printable",
    "record_line",
    "record_name",
    "run_from_args",
    "runs_remotely",
    "save_plot",
    "seconds",
    "summary",
]

log = logging.getLogger(__name__)

#: Exit codes (documented in :mod:`scopefx.cli` and docs/cli.md).
OK = 0
USAGE_ERROR = 2
DATA_ERROR = 3
#: The reader of stdout went away (``scopefx focus ... | head``): 128 + SIGPIPE, the status a
#: shell reports for a program that the signal ended.
BROKEN_PIPE = 141

BOLD_RED = "\033[1;31m"
YELLOW = "\033[33m"
RESET = "\033[0m"


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


class DataError(Exception):
    """The command was called right but its data gave nothing: no image found, none scored,
    nothing fused (exit code 3)."""


#: Errors about the data named (an image or table missing, empty, corrupt, unreadable): exit 3.
#: Every other :class:`~scopefx.errors.ScopefxError` is about options or configuration: exit 2.
DATA_ERRORS = (
    RegistrationError,  # the tiles' overlaps do not give a usable registration
    ResourceLimitError,  # an image, chunk or mosaic over the limits
    ImageNotFoundError,
    EmptyFileError,
    CorruptImageError,
    UnsupportedFormatError,
    InvalidImageError,
)


#: What a plot (``--plot``, ``--maps``) may be saved as: formats matplotlib writes, by name.
PLOT_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".eps")


#: How much of a file's start and of its end is read to tell whether scopefx wrote it.
_SNIFF_BYTES = 1 << 20
#: What scopefx's plots carry: matplotlib's own signature in PNG, PDF, SVG and EPS files, the
#: one :func:`save_plot` adds to JPEG, TIFF and WebP files.
_PLOT_SIGNATURE = b"matplotlib"
#: How a focus CSV (``focus --csv``, ``watch --csv``) starts.
_CSV_HEADER = ",".join(CSV_COLUMNS[:3]).encode()


def save_plot(figure: Any, path: str) -> None:
    """Save a plot of this command, signed in every format so that a later run knows it for its
    own output (:class:`Outputs`) and does not score it: matplotlib signs PNG, PDF, SVG and
    EPS files itself; JPEG, TIFF and WebP files are signed here."""
    sign = f"scopefx {__version__}, Matplotlib"
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><!-- {sign} --></x:xmpmeta>'.encode()
    pil = {
        ".jpg": {"comment": sign.encode()},
        ".jpeg": {"comment": sign.encode()},
        ".tif": {"software": sign},
        ".tiff": {"software": sign},
        ".webp": {"xmp": xmp},
    }.get(Path(path).suffix.lower())
    figure.savefig(path, dpi=120, **({"pil_kwargs": pil} if pil else {}))


def _written_by_scopefx(path: str, kind: str) -> bool:
    """Whether the file at ``path`` is a ``kind`` output scopefx wrote (an earlier run's): a
    plot with matplotlib's signature, a focus CSV by its header, a JSON document."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(len(head), size - _SNIFF_BYTES))
            tail = handle.read()
    except OSError:
        return False
    if kind == "plot":
        return _PLOT_SIGNATURE in head.lower() or _PLOT_SIGNATURE in tail.lower()
    if kind == "csv":
        return head.startswith(_CSV_HEADER)
    if kind == "json":
        return head.lstrip()[:1] in (b"[", b"{")
    return False


def _identity(path: str) -> tuple[Any, ...]:
    """What makes two paths one file: device and inode where it exists (so links and hard links
    to it count), else the absolute path with its links resolved."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return ("path", os.path.realpath(path))
    return ("file", st.st_dev, st.st_ino)


@dataclasses.dataclass(frozen=True)
class _Output:
    option: str
    path: str
    kind: str  # "plot", "csv", "json" or "file": how a file scopefx wrote is recognised
    identity: tuple[Any, ...]


def _check_writable(option: str, target: Path) -> None:
    """A :class:`UsageError` now, before any image is scored, for an output this user cannot
    write: an existing file without write permission, or a folder (the nearest that exists:
    the rest is made) that cannot take a new file. It came as a PermissionError traceback
    after every image was scored, the run's results lost."""
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"{option} {os.fspath(target)!r} exists and is not writable by you")
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(
            f"{option} {os.fspath(target)!r}: the folder {os.fspath(folder)!r} is not writable "
            "by you; give a path you can write"
        )


class Outputs:
    """The files one command writes, checked before any image is read or anything written, and
    kept out of its inputs.

    ``outputs`` are ``(option, path or None, kind)`` triples, kind ``"plot"`` (the name must end
    in an image format), ``"csv"``, ``"json"`` or ``"file"``; ``inputs`` are ``(option, path or
    None)`` pairs of the other files the command reads (``--calibration``, ``--defocus``).
    A :class:`UsageError` refuses an output that is a folder, a plot without an image format
    in its name, two outputs naming one file, and an output naming an input file. The images
    are checked as they are found: :meth:`admits` (``focus``, ``calibrate``), :meth:`inside`
    (``watch``).
    """

    def __init__(
        self,
        outputs: Sequence[tuple[str, str | None, str]],
        *,
        inputs: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        self.items: list[_Output] = []
        for option, path, kind in outputs:
            if path is None:
                continue
            target = Path(path)
            if target.is_dir():
                raise UsageError(f"{option} {path!r} is a folder; give a file name")
            _check_writable(option, target)
            if kind == "plot" and target.suffix.lower() not in PLOT_SUFFIXES:
                raise UsageError(
                    f"{option} {path!r}: a plot's name must end in an image format "
                    f"({', '.join(PLOT_SUFFIXES)}), got {target.suffix or 'no extension'!r}"
                )
            item = _Output(option, path, kind, _identity(path))
            same = self._match(item.identity)
            if same is not None:
                raise UsageError(
                    f"{same.option} {same.path!r} and {option} {path!r} name the same file; "
                    "give each output its own file"
                )
            self.items.append(item)
        for option, path in inputs:
            mine = self._match(_identity(path)) if path is not None else None
            if mine is not None:
                raise UsageError(
                    f"{mine.option} {mine.path!r} is the file given to {option}: it would be "
                    "overwritten; give another path"
                )

    def _match(self, identity: tuple[Any, ...]) -> _Output | None:
        return next((item for item in self.items if item.identity == identity), None)

    def admits(self, ref: str, *, named: bool) -> bool:
        """Whether the image ``ref`` is to be scored: ``False`` for a file this command writes
        that a folder or glob found (an earlier run's output, skipped); a :class:`UsageError`
        when an output would overwrite an image named on the command line (``named``) or one
        that scopefx did not write."""
        mine = self._match(_identity(ref)) if self.items else None
        if mine is None:
            return True
        if named:
            raise UsageError(
                f"{mine.option} {mine.path!r} is also named as an image to score: it would be "
                "overwritten; give another path"
            )
        if not _written_by_scopefx(ref, mine.kind):
            raise UsageError(
                f"{mine.option} {mine.path!r} is an input image ({printable(ref)}) that scopefx "
                "did not write: it would be overwritten; give another path"
            )
        log.info("not scoring %s: this command writes it (%s)", ref, mine.option)
        return False

    def inside(self, folder: str | os.PathLike[str]) -> set[str]:
        """The outputs that lie in the watched ``folder``, as absolute paths the way a scan of
        the folder lists them (to be left out); a :class:`UsageError` for one that is an image
        already there that scopefx did not write (it would be overwritten)."""
        from ..io import IMAGE_SUFFIXES

        root = os.path.realpath(folder)
        found = set()
        for item in self.items:
            real = os.path.realpath(item.path)
            if not real.startswith(root.rstrip(os.sep) + os.sep):
                continue
            if Path(real).suffix.lower() not in IMAGE_SUFFIXES:
                continue  # never followed
            if os.path.isfile(real) and not _written_by_scopefx(real, item.kind):
                raise UsageError(
                    f"{item.option} {item.path!r} is an image in the watched folder that "
                    "scopefx did not write: it would be overwritten; give another path"
                )
            log.info("never scoring %s: this command writes it (%s)", item.path, item.option)
            found.add(os.path.abspath(item.path))
            found.add(os.path.join(os.path.abspath(folder), os.path.relpath(real, root)))
        return found

    def make_folders(self) -> None:
        """Make the missing folders of the outputs."""
        for item in self.items:
            try:
                Path(item.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(
                    f"{item.option} {item.path!r}: cannot make its folder ({exc})"
                ) from None


def positive_float(text: str) -> float:
    """argparse type of a length that must be a finite number > 0 (``--pixel-size``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def seconds(text: str) -> float:
    """argparse type of a duration: a finite number of seconds >= 0 (``--idle-exit``: NaN
    never ended the watch, a negative value ended it at once)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


#: What :func:`printable` escapes: C0 and C1 control characters and DEL (a terminal acts on
#: them: ESC sequences move the cursor and erase lines, CR and newline start another line, BEL
#: rings), the line and paragraph separators, the bidirectional embeddings, overrides and
#: isolates (they reorder what follows on screen) and lone surrogates (a name's bytes that are
#: not UTF-8, which cannot be written to a UTF-8 terminal).
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: object) -> str:
    """``text`` as it may be written to the operator's terminal: every control character
    escaped as Python writes it in a string (``\\x1b``, ``\\n``, ``\\r``, ``\\u202e``),
    everything else, accented letters and CJK included, unchanged.

    Every line that carries a file name, a path or an error message goes through it: a file
    name is chosen by whoever writes into a shared acquisition folder, and one holding
    ``ESC[1A ESC[2K`` or a newline would otherwise erase a flagged line or forge another.
    What is written to files (the CSV, the JSON) keeps the names as they are."""
    return _UNPRINTABLE.sub(_escape, str(text))


def colour(out: TextIO) -> bool:
    """Whether to colour lines written to ``out`` (a terminal, and ``NO_COLOR`` unset)."""
    return out.isatty() and not os.environ.get("NO_COLOR")


# --------------------------------------------------------------------------------------------
# options generated from a parameter dataclass


#: Flag names that differ from the field's name (kept as they were before the options were
#: generated): field -> (flag, metavar).
_FLAG_ALIASES = {
    "min_sigma_px": ("--min-sigma", "PX"),
    "max_sigma_px": ("--max-sigma", "PX"),
    "saturation_pct": ("--saturation", "PCT"),
}


def _doc_entries(cls: type) -> dict[str, tuple[list[str], str]]:
    """The numpydoc ``Parameters`` entries of ``cls``'s docstring: name -> (the names the
    entry gives, its description); an entry naming several fields, ``a, b : float``, gives
    each the same."""
    doc = cls.__doc__ or ""
    match = re.search(
        r"^\s*Parameters\n\s*-+\n(.*?)(?:\n\s*\n\s*\w[\w ]*\n\s*-+\n|\Z)", doc, re.S | re.M
    )
    if not match:
        return {}
    texts: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    names: list[str] = []
    indent = None
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth == indent:
            names = [n.strip() for n in line.split(":", 1)[0].split(",")]
            for name in names:
                texts[name], groups[name] = "", names
        else:
            for name in names:
                texts[name] = (texts[name] + " " + line.strip()).strip()
    return {name: (groups[name], text) for name, text in texts.items()}


def _sentences(text: str) -> list[str]:
    """``text`` in sentences: a full stop, then a capital, a backtick, a bracket or a quote."""
    return [s for s in re.split(r"(?<=\.)\s+(?=[A-Z`(\"])", text.strip()) if s]


def _one_of(sentence: str, name: str, names: list[str]) -> str:
    """The part of ``sentence``, shared by the fields ``names``, about ``name``: "Smallest and
    largest sigma." gives "Smallest sigma." and "Largest sigma."."""
    match = re.match(r"(\w+(?:, \w+)*,? and \w+) (.*)", sentence, re.S)
    words = re.split(r",? and |, ", match.group(1)) if match else []
    if match and len(words) == len(names):
        return f"{words[names.index(name)].capitalize()} {match.group(2)}"
    return f"{sentence} This option sets ``{name}``."


def _option_help(
    name: str, names: list[str], text: str, choices: Sequence[Any] | None, *, says_none: bool
) -> str:
    """An option's help from its field's docstring entry: the first sentence (the field's part
    of it, for an entry naming several fields), then those that say what each choice does
    (where the entry names every choice, as ``"choice"``) and, with ``says_none``, those that
    say what ``None`` does."""
    sentences = _sentences(text)
    if not sentences:
        return ""
    if len(names) > 1:
        sentences[0] = _one_of(sentences[0], name, names)
    quoted = [f'``"{c}"``' for c in choices or ()]
    if not all(q in text for q in quoted):
        quoted = []
    keys = quoted + (["``None``"] if says_none else [])
    kept = sentences[:1] + [s for s in sentences[1:] if any(k in s for k in keys)]
    return " ".join(kept).replace("``", "`")


def _option_type(hint: Any) -> tuple[Any, tuple[Any, ...] | None]:
    """(argparse type, choices) for a field's type: Optional removed, Literal -> choices."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else str
        args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return type(args[0]), tuple(args)
    return (hint if hint in (int, float, str, bool) else str), None


def add_params_options(
    parser: argparse.ArgumentParser, cls: type, *, title: str, aliases: dict[str, Any]
) -> None:
    """One option per field of the dataclass ``cls``: flag ``--field-name`` (or its alias),
    type and choices from the field's type, default from the field's default, help from the
    field's entry in ``cls``'s numpydoc docstring (:func:`_option_help`). A field added to
    ``cls`` gets its option without a change here."""
    hints = typing.get_type_hints(cls)
    docs = _doc_entries(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag, metavar = aliases.get(f.name, ("--" + f.name.replace("_", "-"), None))
        kind, choices = _option_type(hints[f.name])
        default = f.default
        if default is dataclasses.MISSING:
            factory = f.default_factory
            default = None if factory is dataclasses.MISSING else factory()
        preset = default is None and hasattr(cls, f"resolved_{f.name}")
        names, entry = docs.get(f.name, ([f.name], ""))
        says_none = default is None and not preset
        text = _option_help(f.name, names, entry, choices, says_none=says_none)
        text = text.replace("%", "%%")
        if kind is not bool and not (says_none and "`None`" in text):
            # BooleanOptionalAction adds the default itself; a None the help explains is left
            shown = "from --modality" if preset else "%(default)s"
            text = f"{text} (default: {shown})".strip()
        options: dict[str, Any] = {"dest": f.name, "default": default, "help": text}
        if kind is bool:
            options["action"] = _GivenBool
        else:
            options.update(type=kind, choices=choices, metavar=metavar, action=_Given)
        group.add_argument(flag, **options)


def _note_given(namespace: argparse.Namespace, dest: str) -> None:
    given = set(getattr(namespace, "given_options", ()))
    namespace.given_options = given | {dest}


class _Given(argparse.Action):
    """Stores the value and notes that the option was typed (``args.given_options``): a
    value equal to the default is still a choice (``--modality em`` with a bright-field
    calibration must be refused, not read as "not given")."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values)
        _note_given(namespace, self.dest)


class _GivenBool(argparse.BooleanOptionalAction):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        super().__call__(parser, namespace, values, option)
        _note_given(namespace, self.dest)


def given_options(args: argparse.Namespace) -> set[str]:
    """The fields of the options :func:`add_params_options` added that were typed."""
    return set(getattr(args, "given_options", ()))


def params_from_args(args: argparse.Namespace, cls: type) -> Any:
    """``cls`` built from the options :func:`add_params_options` added."""
    with in_option_words(cls):
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


#: The options whose names are not their field's (``--`` + the field with ``-`` for ``_``).
_OPTION_OF = {
    **{name: flag for name, (flag, _) in _FLAG_ALIASES.items()},
    "chunk_px": "--chunk", "feather_px": "--feather", "max_shift_px": "--max-shift",
    "min_overlap_px": "--min-overlap", "pixel_size_um": "--pixel-size",
    "pixel_size_z_um": "--pixel-size-z", "rotation_deg": "--rotation",
    "allow_partial": "--allow-partial-registration", "remove_banding": "--registration-banding",
}  # fmt: skip
_FIELD_FIRST = re.compile(r"^([a-z][a-z0-9_]*)(?= must | =| is |: )")


@contextlib.contextmanager
def in_option_words(*built: type) -> Iterator[None]:
    """A :class:`ConfigError` raised while the classes ``built`` are made from the options
    names the option the user typed, not the Python field (``target_px must be None or an
    integer >= 16`` for ``--target-px 15``): a parameter of theirs that starts the message
    becomes its option."""
    import inspect

    try:
        yield
    except ConfigError as exc:
        text = str(exc)
        match = _FIELD_FIRST.match(text)
        names = {n for cls in built for n in inspect.signature(cls).parameters}
        if match is None or match[1] not in names:
            raise
        name = match[1]
        option = _OPTION_OF.get(name, "--" + name.replace("_", "-"))
        rest = text[match.end(1) :]
        for python, said in ((" be None or ", " be "), (" be None, ", " be "), (", or None", "")):
            rest = rest.replace(python, said)
        raise UsageError(option + rest) from None  # (an option left out is None: not said)


def add_focus_options(parser: argparse.ArgumentParser) -> None:
    """The focus parameters: one option per field of :class:`scopefx.FocusParams`."""
    from ..focus import FocusParams

    add_params_options(
        parser, FocusParams, title="focus parameters (see FocusParams)", aliases=_FLAG_ALIASES
    )


def focus_params(args: argparse.Namespace) -> Any:
    """The :class:`scopefx.FocusParams` of the command line."""
    from ..focus import FocusParams

    return params_from_args(args, FocusParams)


def add_baseline_options(parser: argparse.ArgumentParser) -> None:
    """How verdicts are made: a calibration, or the run's own baseline (``focus``, ``watch``)."""
    g = parser.add_argument_group("verdicts (a calibration, else the run's baseline)")
    g.add_argument(
        "--calibration",
        metavar="CAL.json",
        help="verdicts from a calibration (default: relative to the run's baseline); with no "
        "focus option given, images are scored with the calibration's own focus parameters",
    )
    g.add_argument(
        "--ratio",
        type=float,
        default=None,
        help="out of focus below this fraction of the run baseline (default: by --modality: "
        "em 0.5, fluorescence 0.8, brightfield 0.5)",
    )
    g.add_argument(
        "--window",
        type=int,
        default=25,
        help="sections in the running-median baseline (default: %(default)s)",
    )
    g.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="sections before the baseline gives verdicts (default: %(default)s)",
    )


def run_from_args(args: argparse.Namespace, params: Any) -> tuple[Any, Any]:
    """The focus parameters to score with and the run's verdict policy
    (:class:`scopefx.FocusRun`): ``--calibration`` if given, and the run baseline of
    ``--ratio``, ``--window``, ``--warmup``.

    With a calibration the images are scored with the calibration's own parameters (its
    modality, threshold, ...: what a calibration can only be used with); the focus options
    typed replace them and are checked against it (even one typed at its default value)."""
    from ..focus import BASELINE_RATIO, Calibration, FocusRun, RunBaseline

    calibration = Calibration.load(args.calibration) if args.calibration else None
    if calibration is not None and args.ratio is not None:  # it changed nothing, unsaid
        logging.getLogger("scopefx.cli").warning(
            "--ratio %g is not used: with --calibration a section is judged by its estimated "
            "defocus (max_defocus %g %s in %s), not against the run's baseline",
            args.ratio, calibration.max_defocus, calibration.unit, args.calibration,
        )  # fmt: skip
    own = calibration.focus_params() if calibration is not None else None
    if own is not None:
        params = own.replace(**{k: getattr(params, k) for k in given_options(args)})
    ratio = args.ratio if args.ratio is not None else BASELINE_RATIO.get(params.modality, 0.5)
    with in_option_words(RunBaseline):
        baseline = RunBaseline(
            window=args.window, ratio=ratio, warmup=min(args.warmup, args.window)
        )
    return params, FocusRun(calibration=calibration, baseline=baseline, params=params)


# --------------------------------------------------------------------------------------------
# where it runs


def add_endpoint_options(parser: argparse.ArgumentParser, *, batch_help: str | None = None) -> None:
    """``--endpoint``, ``--config`` and ``--batch-size`` (``batch_help``: a command's own
    help for it, where its default is not the configuration's)."""
    g = parser.add_argument_group("where it runs (see docs/remote.md)")
    g.add_argument(
        "--endpoint",
        metavar="NAME",
        help="run on this endpoint of the endpoint configuration ('local': here); paths are "
        "then references on that endpoint's filesystem (default: as the configuration routes)",
    )
    g.add_argument(
        "--config",
        metavar="ENDPOINTS.toml",
        help="endpoint configuration (default: $SCOPEFX_CONFIG, ~/.config/scopefx/endpoints.toml)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help=batch_help
        or "references per task, at least 1 (default: the endpoint configuration's "
        "batch_size, else automatic: see docs/limits.md)",
    )


def runs_remotely(args: argparse.Namespace, role: str) -> bool:
    """Whether ``role`` goes through the client: ``--endpoint NAME`` (not ``local``), or an
    endpoint that takes ``role`` in the user's endpoint configuration."""
    if args.endpoint is not None:
        return bool(args.endpoint != "local")
    from ..remote import ClientConfig

    return ClientConfig.load(args.config).for_role(role) is not None


def make_client(args: argparse.Namespace, *, quiet: bool = False) -> Any:
    from ..remote import Client

    return Client.from_config(
        args.config, endpoint=args.endpoint, batch_size=args.batch_size, progress=not quiet and None
    )


# --------------------------------------------------------------------------------------------
# inputs and output lines


def find(
    paths: Sequence[str],
    recursive: bool,
    *,
    outputs: Outputs | None = None,
    remote: bool = False,
) -> list[str]:
    """Images in ``paths`` (files, folders, globs) in the order given: a file where it stands,
    a folder's or a glob's images in natural order (``s2`` before ``s10``), each image once.
    Files named in plain sorted order (``s1 s10 s2``: an unquoted glob the shell expanded) are
    put in natural order too; in any other order they keep it.

    ``outputs``' files are left out where a folder or glob finds them (an earlier run's, see
    :meth:`Outputs.admits`). With ``remote``, what is neither a folder nor a glob here is a
    reference on the endpoint, kept as typed, and a relative folder's or glob's images are
    named relative to the current folder (``run1`` -> ``run1/s001.tif``): references there,
    relative to its data roots, as a file given relative is. :class:`DataError` when there
    are no images.
    """
    from ..io import find_images

    found: dict[str, None] = {}  # ordered, each once
    skipped: list[str] = []
    for item in _shell_globs_in_natural_order(paths):
        expands = _expands(item)
        refs = [item] if remote and not expands else find_images([item], recursive=recursive)
        if remote and expands and not os.path.isabs(item):
            refs = [os.path.relpath(ref) if os.path.isabs(ref) else ref for ref in refs]
        for ref in refs:
            if outputs is None or outputs.admits(ref, named=not expands):
                found.setdefault(ref)
            else:
                skipped.append(ref)
    if not found:
        own = f" but this command's own outputs ({', '.join(skipped)})" if skipped else ""
        where = printable(" ".join(paths) + own)
        raise DataError(f"no images found in {where} (use --recursive for subfolders?)")
    return list(found)


def _expands(item: str) -> bool:
    """Whether ``item`` is a folder (not a Zarr store) or a glob, rather than one image."""
    return (os.path.isdir(item) and not item.rstrip("/").lower().endswith(".zarr")) or (
        glob.has_magic(item) and not os.path.exists(item)
    )


def _shell_globs_in_natural_order(paths: Sequence[str]) -> list[str]:
    """``paths`` with each run of two or more files named in plain sorted order, as a shell
    expands an unquoted glob (``s1 s10 s2``), put in natural order (``s1 s2 s10``); files
    named in any other order keep it (the order of the run)."""
    from ..io import natural_key

    out: list[str] = []
    run: list[str] = []
    for item in [*paths, None]:
        if item is not None and not _expands(item):
            run.append(item)
            continue
        if len(run) > 1 and run == sorted(run):
            run.sort(key=natural_key)
        out += run
        run = []
        if item is not None:
            out.append(item)
    return out


def record_name(record: Any) -> str:
    """How lines name a record: its path (:func:`printable`), and ``[page]`` for a page of a
    stack."""
    return printable(record.path) + ("" if record.page is None else f"[{record.page}]")


def record_line(record: Any, in_colour: bool) -> str:
    """One line for a focus record: features, verdict, estimate or ratio, path."""
    name = record_name(record)
    if not record.ok:
        text = f"{'ERROR':>9}  {record.status:<14} {name}: {printable(record.error)}"
        return f"{YELLOW}{text}{RESET}" if in_colour else text
    extra = (
        f"|df|~{record.defocus_estimate:.2g}"
        if not math.isnan(record.defocus_estimate)
        else (f"x{record.ratio:.2f}" if math.isfinite(record.ratio) else "")  # inf: baseline 0
    )
    text = f"{record.features:>9d}  {record.verdict:<14} {extra:<11} {name}"
    if record.noise_limited:
        text += "  (noise-limited: the count is mostly noise)"
    if getattr(record, "block_coded", None):
        text += "  (block-coded, e.g. JPEG: noise measured on block means)"
    if record.verdict in FLAGGED:
        return f"{BOLD_RED}{text}{RESET}\a" if in_colour else text
    if record.verdict == "unverifiable":
        return f"{YELLOW}{text}{RESET}" if in_colour else text
    return text


#: What each doubt about a run baseline means, for the summary.
_DOUBTS = {
    "low_for_modality": "its warm-up sections hold fewer features than this modality gives in "
    "focus (out of focus or blank from the start?)",
    "noise_limited_warmup": "most warm-up sections' counts are mostly noise",
    "rises_after_warmup": "the density later rose well above the warm-up's: the run started "
    "out of focus (the first sections were judged again)",
    "too_few_sections": "the run ended before its warm-up (--warmup sections) was complete: "
    "there was no baseline to judge its sections against (score with --calibration)",
}

#: Why a calibration may not fit the run it judges, for the summary.
_CALIBRATION_DOUBTS = {
    "above_calibration": "most sections hold over 3x the density it predicts at best focus: "
    "it was probably made on another specimen, stain or setting, and may call out-of-focus "
    "sections in focus (calibrate on this kind of sample)",
    "below_calibration": "not one section came within a factor 2 of its in-focus range: the "
    "whole run is out of focus, or it was made on denser content (calibrate on this kind of "
    "sample)",
}


def doubt_line(doubt: str) -> str:
    """What one of :meth:`scopefx.FocusRun.doubts` means, in a line."""
    if doubt in _CALIBRATION_DOUBTS:
        return f"the calibration may not fit: {_CALIBRATION_DOUBTS[doubt]}"
    return f"the run baseline is doubtful: {_DOUBTS.get(doubt, doubt)}"


def summary(records: list[Any], out: TextIO, run: Any = None) -> None:
    """How many were scored, flagged, unverifiable, not scored; then each flagged and failed
    one, and why the run's baseline is doubted (``run``: the :class:`scopefx.FocusRun`)."""
    ok = [r for r in records if r.ok]
    flagged = [r for r in ok if r.verdict in FLAGGED]
    failed = [r for r in records if not r.ok]
    unverifiable = [r for r in ok if r.verdict == "unverifiable"]
    noisy = [r for r in ok if r.noise_limited]
    print(
        f"\nscored {len(ok)} image(s), {len(flagged)} flagged, {len(failed)} not scored", file=out
    )
    for doubt in run.doubts() if run is not None else []:
        print(f"  {doubt_line(doubt)}", file=out)
    if unverifiable:
        print(
            f"  {len(unverifiable)} section(s) unverifiable: not called in focus without a "
            "trustworthy baseline; check the run or score with --calibration",
            file=out,
        )
    if noisy:
        print(f"  {len(noisy)} section(s) noise-limited (try --modality)", file=out)
    for r in flagged:
        print(f"  {r.verdict.replace('_', ' '):>13}: {record_name(r)}", file=out)
    for r in failed:
        print(f"  {r.status:>13}: {record_name(r)}", file=out)


def check_scored(records: list[Any], what: str = "image") -> None:
    """:class:`DataError` when not one of ``records`` could be scored (a batch where some
    failed is fine: each failure is reported on its own)."""
    if not any(r.ok for r in records):
        statuses = sorted({r.status for r in records})
        raise DataError(
            f"none of the {len(records)} {what}(s) could be scored "
            f"({', '.join(statuses) or 'nothing given'}); see the lines above"
        )


def describe_mosaic(summary: dict[str, Any]) -> str:
    """One line for a fusion summary (``FusionResult.to_dict()`` or what an endpoint returns)."""
    full = [int(v) for v in summary["shape"]]
    nd = len(summary.get("origin_px") or full[-2:])  # spatial axes, after any channel axes
    spatial, channels = full[len(full) - nd :][::-1], full[: len(full) - nd]
    # x first, as origin_px and docs/fusion.md give positions (the array's shape is y, x)
    shape = " x ".join(map(str, spatial)) + f" px ({', '.join('xyz'[:nd])})"
    if channels:
        shape += f", {' x '.join(map(str, channels))} channel{'s' * (math.prod(channels) != 1)}"
    tiles, seconds = f"{summary['n_tiles']} tiles", f"{summary['seconds']:.1f} s"
    if str(summary.get("path", "")).lower().endswith((".tif", ".tiff")):  # no chunks, no levels
        return f"{shape} {summary['dtype']}, one TIFF, {tiles}, {seconds}"
    levels = summary["levels"]
    return (
        f"{shape} {summary['dtype']}, {levels} level{'s' * (levels != 1)}, {tiles}, "
        f"{summary['chunks_written']} chunks written, {summary['chunks_resumed']} already done, "
        f"{seconds}"
    )
