"""What the command modules share: errors and exit codes, colours, option groups, output lines.

Imports only the public API (and, until the verdict policy has a public home, the verdict
names of :mod:`scopefx.focus`), never a command module.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TextIO

from ..errors import (
    CorruptImageError,
    EmptyFileError,
    ImageNotFoundError,
    InvalidImageError,
    RegistrationError,
    ResourceLimitError,
    UnsupportedFormatError,
)
from ..focus import FLAGGED

__all__ = [
    "DATA_ERROR",
    "DATA_ERRORS",
    "OK",
    "USAGE_ERROR",
    "DataError",
    "UsageError",
    "add_baseline_options",
    "add_endpoint_options",
    "add_focus_options",
    "add_params_options",
    "check_scored",
    "colour",
    "describe_mosaic",
    "find",
    "focus_params",
    "make_client",
    "params_from_args",
    "record_line",
    "run_from_args",
    "runs_remotely",
    "summary",
]

#: Exit codes (documented in :mod:`scopefx.cli` and docs/cli.md).
OK = 0
USAGE_ERROR = 2
DATA_ERROR = 3

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


def check_outputs(
    *, plots: Sequence[tuple[str, str | None]] = (), files: Sequence[tuple[str, str | None]] = ()
) -> None:
    """Before any data is read: refuse an output option that could not be written after the
    work (a folder, a plot with no image format in its name), and make the missing folders of
    the others. ``plots`` and ``files`` are ``(option, path or None)`` pairs."""
    for option, path in [*plots, *files]:
        if path is None:
            continue
        target = Path(path)
        if target.is_dir():
            raise UsageError(f"{option} {path!r} is a folder; give a file name")
        if (option, path) in plots and target.suffix.lower() not in PLOT_SUFFIXES:
            raise UsageError(
                f"{option} {path!r}: a plot's name must end in an image format "
                f"({', '.join(PLOT_SUFFIXES)}), got {target.suffix or 'no extension'!r}"
            )
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{option} {path!r}: cannot make its folder ({exc})") from None


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


def _doc_entries(cls: type) -> dict[str, str]:
    """The numpydoc ``Parameters`` entries of ``cls``'s docstring: name -> description
    (an entry naming several fields, ``a, b : float``, gives each the same text)."""
    doc = cls.__doc__ or ""
    match = re.search(
        r"^\s*Parameters\n\s*-+\n(.*?)(?:\n\s*\n\s*\w[\w ]*\n\s*-+\n|\Z)", doc, re.S | re.M
    )
    if not match:
        return {}
    entries: dict[str, str] = {}
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
                entries[name] = ""
        else:
            for name in names:
                entries[name] = (entries[name] + " " + line.strip()).strip()
    return entries


def _first_sentence(text: str) -> str:
    text = text.replace("``", "`")
    match = re.match(r"(.+?\.)(\s+[A-Z`(\"]|\s*$)", text, re.S)
    return (match.group(1) if match else text).strip()


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
    first sentence of the field's entry in ``cls``'s numpydoc docstring. A field added to
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
        text = _first_sentence(docs.get(f.name, "")).replace("%", "%%")
        if kind is not bool:  # BooleanOptionalAction adds the default itself
            preset = default is None and hasattr(cls, f"resolved_{f.name}")
            shown = "from --modality" if preset else "%(default)s"
            text = f"{text} (default: {shown})".strip()
        options: dict[str, Any] = {"dest": f.name, "default": default, "help": text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=kind, choices=choices, metavar=metavar)
        group.add_argument(flag, **options)


def params_from_args(args: argparse.Namespace, cls: type) -> Any:
    """``cls`` built from the options :func:`add_params_options` added."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init})


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
        help="verdicts from a calibration (default: relative to the run's baseline)",
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


def run_from_args(args: argparse.Namespace, params: Any) -> Any:
    """The run's verdict policy (:class:`scopefx.FocusRun`): ``--calibration`` if given
    (checked against ``params``), and the run baseline of ``--ratio``, ``--window``,
    ``--warmup``."""
    from ..focus import BASELINE_RATIO, Calibration, FocusRun, RunBaseline

    calibration = Calibration.load(args.calibration) if args.calibration else None
    ratio = args.ratio if args.ratio is not None else BASELINE_RATIO.get(params.modality, 0.5)
    baseline = RunBaseline(window=args.window, ratio=ratio, warmup=min(args.warmup, args.window))
    return FocusRun(calibration=calibration, baseline=baseline, params=params)


# --------------------------------------------------------------------------------------------
# where it runs


def add_endpoint_options(parser: argparse.ArgumentParser) -> None:
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
    g.add_argument("--batch-size", type=int, default=None, metavar="N", help="references per task")


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


def find(paths: Sequence[str], recursive: bool) -> list[str]:
    """Images in ``paths`` (files, folders, globs); :class:`DataError` when there are none."""
    from ..io import find_images

    found = find_images(paths, recursive=recursive)
    if not found:
        raise DataError(f"no images found in {' '.join(paths)} (use --recursive for subfolders?)")
    return found


def record_line(record: Any, in_colour: bool) -> str:
    """One line for a focus record: features, verdict, estimate or ratio, path."""
    name = record.path + ("" if record.page is None else f"[{record.page}]")
    if not record.ok:
        text = f"{'ERROR':>9}  {record.status:<14} {name}: {record.error}"
        return f"{YELLOW}{text}{RESET}" if in_colour else text
    extra = (
        f"|df|~{record.defocus_estimate:.2g}"
        if not math.isnan(record.defocus_estimate)
        else (f"x{record.ratio:.2f}" if not math.isnan(record.ratio) else "")
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
}


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
        print(f"  the run baseline is doubtful: {_DOUBTS.get(doubt, doubt)}", file=out)
    if unverifiable:
        print(
            f"  {len(unverifiable)} section(s) unverifiable: not called in focus without a "
            "trustworthy baseline; check the run or score with --calibration",
            file=out,
        )
    if noisy:
        print(f"  {len(noisy)} section(s) noise-limited (try --modality)", file=out)
    for r in flagged:
        print(f"  {r.verdict.replace('_', ' '):>13}: {r.path}", file=out)
    for r in failed:
        print(f"  {r.status:>13}: {r.path}", file=out)


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
    shape = "x".join(str(v) for v in summary["shape"])
    return (
        f"{shape} {summary['dtype']}, {summary['levels']} levels, {summary['n_tiles']} tiles, "
        f"{summary['chunks_written']} chunks written, {summary['chunks_resumed']} already done, "
        f"{summary['seconds']:.1f} s"
    )
