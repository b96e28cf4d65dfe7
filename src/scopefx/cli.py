"""``scopefx`` command line: a thin layer over the public API.

Exit codes: 0 when the command ran (even if some images could not be scored: they are reported
per item), 2 for usage errors (bad options, nothing to score, unreadable calibration).
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .errors import ScopefxError
from .focus._verdict import FLAGGED

USAGE_ERROR = 2

_BOLD_RED = "\033[1;31m"
_YELLOW = "\033[33m"
_RESET = "\033[0m"


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


# --------------------------------------------------------------------------------------------
# shared options


def _add_focus_options(parser: argparse.ArgumentParser) -> None:
    from .focus import FocusParams

    d = FocusParams()
    g = parser.add_argument_group("focus parameters (see FocusParams)")
    g.add_argument("--mode", choices=("exact", "fast"), default=d.mode, help="default: %(default)s")
    g.add_argument(
        "--n-scales", type=int, default=d.n_scales, help="DoG bands (default: %(default)s)"
    )
    g.add_argument(
        "--min-sigma",
        type=float,
        default=d.min_sigma_px,
        metavar="PX",
        help="smallest Gaussian sigma in px (default: %(default)s)",
    )
    g.add_argument(
        "--max-sigma",
        type=float,
        default=d.max_sigma_px,
        metavar="PX",
        help="largest Gaussian sigma in px (default: %(default)s)",
    )
    g.add_argument(
        "--polarity",
        choices=("dark", "bright", "both"),
        default=d.polarity,
        help="features that count (default: %(default)s, the paper's sign)",
    )
    g.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="fixed response threshold (normalised units); default: automatic from noise",
    )
    g.add_argument(
        "--threshold-k",
        type=float,
        default=d.threshold_k,
        help="automatic threshold in noise-sigmas of the DoG (default: %(default)s)",
    )
    g.add_argument(
        "--saturation",
        type=float,
        default=d.saturation_pct,
        metavar="PCT",
        help="percent saturated at each tail (default: %(default)s)",
    )
    g.add_argument(
        "--target-px",
        type=int,
        default=None,
        help="downsample so the longer side is at most this (default: full size)",
    )
    g.add_argument(
        "--cell-px",
        type=int,
        default=d.cell_px,
        help="focus-map cell side in px (default: %(default)s)",
    )


def _params(args: argparse.Namespace) -> Any:
    from .focus import FocusParams

    return FocusParams(
        n_scales=args.n_scales,
        min_sigma_px=args.min_sigma,
        max_sigma_px=args.max_sigma,
        saturation_pct=args.saturation,
        polarity=args.polarity,
        threshold=args.threshold,
        threshold_k=args.threshold_k,
        mode=args.mode,
        target_px=args.target_px,
        cell_px=args.cell_px,
    )


def _find(paths: Sequence[str], recursive: bool) -> list[str]:
    from .io import find_images

    found = find_images(paths, recursive=recursive)
    if not found:
        raise UsageError(f"no images found in {' '.join(paths)} (use --recursive for subfolders?)")
    return found


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec) if isinstance(value, float) else str(value)


class _CsvSink:
    """Appends one row per record and flushes, so a killed run keeps every finished row."""

    def __init__(self, path: str | None) -> None:
        self.handle: TextIO | None = None
        if path:
            from .focus import CSV_COLUMNS

            self.handle = open(path, "w", newline="")  # noqa: SIM115 - closed in close()
            self.writer = csv.DictWriter(self.handle, fieldnames=CSV_COLUMNS)
            self.writer.writeheader()

    def write(self, record: Any) -> None:
        if self.handle is not None:
            self.writer.writerow({k: _fmt(v, ".6g") for k, v in record.row().items()})
            self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _line(record: Any, colour: bool) -> str:
    name = record.path + ("" if record.page is None else f"[{record.page}]")
    if not record.ok:
        text = f"{'ERROR':>9}  {record.status:<14} {name}: {record.error}"
        return f"{_YELLOW}{text}{_RESET}" if colour else text
    extra = (
        f"|df|~{record.defocus_estimate:.2g}"
        if not math.isnan(record.defocus_estimate)
        else (f"x{record.ratio:.2f}" if not math.isnan(record.ratio) else "")
    )
    text = f"{record.features:>9d}  {record.verdict:<14} {extra:<11} {name}"
    if record.verdict in FLAGGED:
        return f"{_BOLD_RED}{text}{_RESET}\a" if colour else text
    return text


# --------------------------------------------------------------------------------------------
# scopefx focus


def _run_scoring(args: argparse.Namespace, paths: list[str], out: TextIO) -> list[Any]:
    from tqdm.auto import tqdm

    from .focus import Calibration, RunBaseline
    from .focus._batch import rejudge_warmup

    params = _params(args)
    calibration = None
    if getattr(args, "calibration", None):
        calibration = Calibration.load(args.calibration)
        calibration.check_params(params)
    baseline = RunBaseline(
        window=args.window, ratio=args.ratio, warmup=min(args.warmup, args.window)
    )
    colour = out.isatty() and not os.environ.get("NO_COLOR")
    sink = _CsvSink(args.csv)
    records = []
    bar = tqdm(total=len(paths), unit="img", disable=args.quiet or None, file=sys.stderr)
    try:
        for record in _score(args, paths, params, calibration, baseline):
            records.append(record)
            sink.write(record)
            if record.page is None or record.page == 0:
                bar.update(1)
            if not args.quiet:
                bar.write(_line(record, colour), file=out)
    finally:
        bar.close()
        sink.close()
    if calibration is None:  # settle the warm-up sections' verdicts and write the rows again
        rejudge_warmup(records, baseline)
        if args.csv:  # atomically: a kill now leaves the streamed rows in place
            final = _CsvSink(args.csv + ".tmp")
            for record in records:
                final.write(record)
            final.close()
            os.replace(args.csv + ".tmp", args.csv)
    return records


def _score(
    args: argparse.Namespace, paths: list[str], params: Any, calibration: Any, baseline: Any
) -> Any:
    if not args.remote:
        from .focus import score_files

        yield from score_files(
            paths, params=params, workers=args.workers, calibration=calibration, baseline=baseline
        )
        return
    from ._cli_remote import make_client

    with make_client(args, quiet=True) as client:
        yield from client.iter_focus(
            paths, params=params, calibration=calibration, baseline=baseline
        )


def _summary(records: list[Any], out: TextIO) -> None:
    ok = [r for r in records if r.ok]
    flagged = [r for r in ok if r.verdict in FLAGGED]
    failed = [r for r in records if not r.ok]
    print(
        f"\nscored {len(ok)} image(s), {len(flagged)} flagged, {len(failed)} not scored", file=out
    )
    for r in flagged:
        print(f"  {r.verdict.replace('_', ' '):>13}: {r.path}", file=out)
    for r in failed:
        print(f"  {r.status:>13}: {r.path}", file=out)


def _write_outputs(args: argparse.Namespace, records: list[Any], out: TextIO) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in records], indent=1) + "\n")
        print(f"wrote {args.json}", file=out)
    if args.csv:
        print(f"wrote {args.csv}", file=out)
    if args.plot:
        from .focus.plot import plot_focus_series

        plot_focus_series(records).savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}", file=out)
    if args.maps:
        from .focus.plot import plot_focus_maps

        plot_focus_maps(records).savefig(args.maps, dpi=120)
        print(f"wrote {args.maps}", file=out)


def cmd_focus(args: argparse.Namespace, out: TextIO) -> int:
    from ._cli_remote import runs_remotely

    args.remote = runs_remotely(args, "focus")
    if args.remote:  # references on the endpoint: expand only what exists here too
        local = [p for p in args.paths if os.path.isdir(p) or glob.has_magic(p)]
        paths = _find(local, args.recursive) if local else []
        paths += [p for p in args.paths if p not in local]
    else:
        paths = _find(args.paths, args.recursive)
    records = _run_scoring(args, paths, out)
    _summary(records, out)
    _write_outputs(args, records, out)
    return 0


# --------------------------------------------------------------------------------------------
# scopefx calibrate


def _read_defocus_csv(path: str) -> dict[str, float]:
    table = Path(path)
    try:
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise UsageError(f"cannot read defocus table {path!r}: {exc}") from None
    if not rows or not {"path", "defocus"} <= set(rows[0]):
        raise UsageError(f"defocus table {path!r} needs the columns 'path' and 'defocus'")
    out = {}
    for i, row in enumerate(rows, start=2):
        try:
            value = float(row["defocus"])
        except ValueError:
            raise UsageError(
                f"{path!r} line {i}: defocus {row['defocus']!r} is not a number"
            ) from None
        out[str((table.parent / row["path"]).resolve())] = value
    return out


def cmd_calibrate(args: argparse.Namespace, out: TextIO) -> int:
    from .focus import Calibration, score_files
    from .focus.plot import plot_calibration

    params = _params(args)
    table = _read_defocus_csv(args.defocus) if args.defocus else {}
    paths = _find(args.paths, args.recursive) if args.paths else sorted(table)
    if not paths:
        raise UsageError("give images to calibrate on, or a --defocus table listing them")
    defocus, density = [], []
    for record in score_files(paths, params=params, workers=args.workers):
        if not record.ok:
            print(f"skipped {record.path}: {record.error}", file=out)
            continue
        if args.from_metadata:
            value = (
                record.working_distance_mm
                if args.from_metadata == "working_distance"
                else record.focus
            )
        else:
            value = table.get(str(Path(record.path).resolve()))
        if value is None:
            print(f"skipped {record.path}: no defocus value for it", file=out)
            continue
        defocus.append(float(value))
        density.append(record.density_per_mpx)
    calibration = Calibration.fit(
        defocus,
        density,
        params=params,
        fit_center=args.fit_center or bool(args.from_metadata),
        max_defocus=args.max_defocus,
        unit=args.unit,
    )
    calibration.save(args.output)
    print(
        f"calibrated on {calibration.n} images: log(features/Mpx) = {calibration.intercept:.3f} "
        f"- {calibration.slope:.4f} |defocus - {calibration.center:g}| ({calibration.unit}), "
        f"r = {calibration.r:.4f}",
        file=out,
    )
    print(
        f"in focus down to {calibration.min_density:.0f} features/Mpx "
        f"(|defocus| <= {calibration.max_defocus:g} {calibration.unit})",
        file=out,
    )
    print(f"wrote {args.output}", file=out)
    if args.plot:
        plot_calibration(calibration, defocus, density).savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}", file=out)
    return 0


# --------------------------------------------------------------------------------------------
# scopefx demo


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from ._demo import run_demo

    run_demo(Path(args.out), size=args.size, sections=args.sections, out=out)
    return 0


# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scopefx",
        description="Focus QC (MHFD) and mosaic fusion for microscopy runs. "
        "`scopefx demo` shows focus QC on sample data.",
    )
    parser.add_argument("--version", action="version", version=f"scopefx {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    focus = sub.add_parser(
        "focus",
        help="score images for focus and flag out-of-focus ones",
        description="Score images (files, folders, globs) for focus by MHFD.",
    )
    focus.add_argument("paths", nargs="+", metavar="PATHS", help="image files, folders or globs")
    focus.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    focus.add_argument("--csv", metavar="OUT", help="write one row per image")
    focus.add_argument("--json", metavar="OUT", help="write records (with focus maps) as JSON")
    focus.add_argument("--plot", metavar="OUT.png", help="plot features per section")
    focus.add_argument("--maps", metavar="OUT.png", help="plot focus maps, flagged sections first")
    focus.add_argument(
        "--calibration",
        metavar="CAL.json",
        help="verdicts from a calibration (default: relative to the run's baseline)",
    )
    focus.add_argument(
        "--ratio",
        type=float,
        default=0.5,
        help="out of focus below this fraction of the run baseline (default: %(default)s)",
    )
    focus.add_argument(
        "--window",
        type=int,
        default=25,
        help="sections in the running-median baseline (default: %(default)s)",
    )
    focus.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="sections before the baseline gives verdicts (default: %(default)s)",
    )
    focus.add_argument("--workers", type=int, default=1, help="images scored at once (default: 1)")
    focus.add_argument(
        "-q", "--quiet", action="store_true", help="no per-image lines or progress bar"
    )
    _add_focus_options(focus)
    from ._cli_remote import add_endpoint_options, add_remote_parsers

    add_endpoint_options(focus)
    focus.set_defaults(func=cmd_focus)

    cal = sub.add_parser(
        "calibrate",
        help="fit log(count) against |defocus| on a through-focus series",
        description="Fit a calibration profile (JSON) from a through-focus series.",
    )
    cal.add_argument(
        "paths", nargs="*", metavar="PATHS", help="images (default: those in --defocus)"
    )
    cal.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    src = cal.add_mutually_exclusive_group(required=True)
    src.add_argument("--defocus", metavar="CSV", help="table with columns path,defocus")
    src.add_argument(
        "--from-metadata",
        choices=("focus", "working_distance"),
        help="take the focus coordinate from instrument metadata (best focus is fitted)",
    )
    cal.add_argument(
        "-o", "--output", required=True, metavar="CAL.json", help="where to write the calibration"
    )
    cal.add_argument("--plot", metavar="OUT.png", help="plot the series and the fit")
    cal.add_argument(
        "--max-defocus",
        type=float,
        default=None,
        help="in-focus tolerance (default: a quarter of the series' range)",
    )
    cal.add_argument(
        "--unit", default="um", help="unit of the defocus values (default: %(default)s)"
    )
    cal.add_argument("--fit-center", action="store_true", help="fit the position of best focus")
    cal.add_argument("--workers", type=int, default=1, help="images scored at once (default: 1)")
    _add_focus_options(cal)
    cal.set_defaults(func=cmd_calibrate)

    demo = sub.add_parser(
        "demo",
        help="generate a sample run, calibrate, score it, show verdicts",
        description="Generate a sample run from images bundled with scikit-image "
        "and run focus QC on it (no accounts, no network, no GPU).",
    )
    demo.add_argument("--out", default="scopefx-demo", help="output folder (default: %(default)s)")
    demo.add_argument(
        "--size", type=int, default=512, help="section size in px (default: %(default)s)"
    )
    demo.add_argument(
        "--sections", type=int, default=24, help="sections in the run (default: %(default)s)"
    )
    demo.set_defaults(func=cmd_demo)

    from ._cli_fuse import add_fuse_parser

    add_fuse_parser(sub)
    from ._cli_watch import add_watch_parser

    add_watch_parser(sub)
    add_remote_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Entry point of the ``scopefx`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    logging.basicConfig(
        level=logging.WARNING - 10 * args.verbose, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args, out))
    except (UsageError, ScopefxError) as exc:  # bad options, calibration files, ...
        parser.exit(USAGE_ERROR, f"scopefx {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
