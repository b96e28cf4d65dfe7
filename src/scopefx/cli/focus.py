"""``scopefx focus`` (score images, flag the out-of-focus ones) and ``scopefx calibrate``."""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO

from .._backend import default_device
from ..errors import CalibrationError
from ._common import (
    DataError,
    Outputs,
    UsageError,
    add_baseline_options,
    add_endpoint_options,
    add_focus_options,
    check_scored,
    colour,
    find,
    focus_params,
    make_client,
    positive_int,
    printable,
    record_line,
    run_from_args,
    runs_remotely,
    save_plot,
    summary,
)

__all__ = ["add_parsers", "cmd_calibrate", "cmd_focus"]

_MAX_MAPS = 12  # focus maps drawn by --maps, flagged sections first

_DEVICE_HELP = (
    "where images are scored: auto (a GPU where CuPy sees one, else the CPU), cpu, gpu or "
    "cuda:N (default: the SCOPEFX_DEVICE environment variable, else auto); the scores agree "
    "across devices. An endpoint scores where its own SCOPEFX_DEVICE says"
)


def add_parsers(sub: Any) -> None:
    focus = sub.add_parser(
        "focus",
        help="score images for focus and flag out-of-focus ones",
        description="Score images (files, folders, globs) for focus by MHFD. Images are "
        "scored, and the run baseline built, in the order of PATHS: files in the order given, "
        "the images of a folder or of a glob in natural order (s2 before s10); files named in "
        "plain sorted order (s1 s10 s2: an unquoted glob the shell expanded) are put in "
        "natural order too. The files this command writes (--csv, --json, "
        "--plot, --maps) are never scored, and never overwrite an image: an output that names "
        "an input image is refused, unless it is a plot, CSV or JSON scopefx wrote there "
        "before (a rerun), which is then left out of the inputs.",
    )
    focus.add_argument(
        "paths",
        nargs="+",
        metavar="PATHS",
        help="image files (scored in the order given; in natural order when given in plain "
        "sorted order, as a shell expands a glob), folders or globs (their images in natural "
        "order)",
    )
    focus.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders")
    focus.add_argument("--csv", metavar="OUT", help="write one row per image")
    focus.add_argument("--json", metavar="OUT", help="write records (with focus maps) as JSON")
    focus.add_argument("--plot", metavar="OUT.png", help="plot features per section")
    focus.add_argument("--maps", metavar="OUT.png", help="plot focus maps, flagged sections first")
    focus.add_argument(
        "--workers", type=positive_int, default=1, help="images scored at once (default: 1)"
    )
    focus.add_argument(
        "-q", "--quiet", action="store_true", help="no per-image lines or progress bar"
    )
    focus.add_argument("--device", metavar="DEVICE", help=_DEVICE_HELP)
    add_baseline_options(focus)
    add_focus_options(focus)
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
    src.add_argument(
        "--defocus",
        metavar="CSV",
        help="table with columns path,defocus (and page, for each page of a z-stack file)",
    )
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
    cal.add_argument(
        "--workers", type=positive_int, default=1, help="images scored at once (default: 1)"
    )
    cal.add_argument("--device", metavar="DEVICE", help=_DEVICE_HELP)
    add_focus_options(cal)
    cal.set_defaults(func=cmd_calibrate)


# --------------------------------------------------------------------------------------------
# scopefx focus


def _run_scoring(
    args: argparse.Namespace, paths: list[str], params: Any, run: Any, out: TextIO
) -> list[Any]:
    from tqdm.auto import tqdm

    from ..focus.csv import FocusCsvWriter

    lines_in_colour = colour(out)
    sink = FocusCsvWriter(args.csv) if args.csv else None
    records = []
    bar = tqdm(total=len(paths), unit="img", disable=args.quiet or None, file=sys.stderr)
    try:
        for record in _score(args, paths, params, run):
            records.append(record)
            if sink is not None:
                sink.write(record)
            if record.page is None or record.page == 0:
                bar.update(1)
            if not args.quiet:
                bar.write(record_line(record, lines_in_colour), file=out)
        # settle the warm-up sections' verdicts (the run is over: a run shorter than its
        # warm-up ends unverifiable) and write them again, atomically: a kill now leaves the
        # streamed rows in place
        if run.settle(final=True) and sink is not None:
            sink.rewrite_verdicts(records)
    finally:
        bar.close()
        if sink is not None:
            sink.close()
    return records


def _score(args: argparse.Namespace, paths: list[str], params: Any, run: Any) -> Any:
    if not args.remote:
        from ..focus import score_files

        yield from score_files(
            paths, params=params, workers=args.workers, run=run, device=args.device
        )
        return
    with make_client(args, quiet=True) as client:
        yield from client.iter_focus(paths, params=params, run=run)


def _write_outputs(
    args: argparse.Namespace, records: list[Any], out: TextIO, *, plots: bool = True
) -> None:
    """Each output the options name; one that cannot be written (a full disk, a folder made
    read-only meanwhile) costs the others nothing, and then a :class:`DataError` names it."""
    failed: list[str] = []
    for option, write in (("--json", _write_json), ("--plot", _write_plot),
                          ("--maps", _write_maps)):  # fmt: skip
        path = getattr(args, option[2:])
        if not path or (option != "--json" and not plots):
            continue
        try:
            write(args, records, out)
        except OSError as exc:
            failed.append(f"{option} {printable(path)}: {exc.strerror or exc}")
    if args.csv:
        print(f"wrote {printable(args.csv)}", file=out)
    if failed:
        raise DataError(
            f"could not write {'; '.join(failed)}"
            + (f" (the rows are in {printable(args.csv)})" if args.csv else "")
        )


def _write_json(args: argparse.Namespace, records: list[Any], out: TextIO) -> None:
    if args.json:
        # allow_nan=False: a value to_dict left non-finite raises rather than writing the
        # NaN or Infinity token, which is no JSON
        text = json.dumps([r.to_dict() for r in records], indent=1, allow_nan=False)
        Path(args.json).write_text(text + "\n")
        print(f"wrote {printable(args.json)}", file=out)


def _write_plot(args: argparse.Namespace, records: list[Any], out: TextIO) -> None:
    from ..focus.plot import plot_focus_series

    save_plot(plot_focus_series(records), args.plot)
    print(f"wrote {printable(args.plot)}", file=out)


def _write_maps(args: argparse.Namespace, records: list[Any], out: TextIO) -> None:
    if args.maps:
        from ..focus.plot import plot_focus_maps

        save_plot(plot_focus_maps(records, max_maps=_MAX_MAPS), args.maps)
        from ..focus import FLAGGED

        usable = [r for r in records if r.ok and r.focus_map is not None]
        flagged = sum(r.verdict in FLAGGED for r in usable)
        note = ""
        if len(usable) > _MAX_MAPS:  # 14 flagged, 12 drawn, and nothing said which
            note = (f" ({_MAX_MAPS} of {len(usable)} maps: the flagged sections first"
                    + (f"; {flagged - _MAX_MAPS} flagged ones not drawn" if flagged > _MAX_MAPS
                       else "") + ")")  # fmt: skip
        print(f"wrote {printable(args.maps)}{note}", file=out)


def cmd_focus(args: argparse.Namespace, out: TextIO) -> int:
    params = focus_params(args)  # options first: a usage error before any data is looked at
    outputs = Outputs(
        [
            ("--csv", args.csv, "csv"),
            ("--json", args.json, "json"),
            ("--plot", args.plot, "plot"),
            ("--maps", args.maps, "plot"),
        ],
        inputs=[("--calibration", args.calibration), ("--config", args.config)],
    )
    params, run = run_from_args(args, params)
    args.remote = runs_remotely(args, "focus")
    if args.remote and args.device is not None:
        raise UsageError(
            "--device chooses where images are scored on this machine; an endpoint scores "
            "where its own SCOPEFX_DEVICE says ('scopefx endpoints' shows its device)"
        )
    if not args.remote:
        default_device(args.device)  # a misspelt device: a usage error before any data
    # on an endpoint, what is neither a folder nor a glob here is a reference there
    paths = find(args.paths, args.recursive, outputs=outputs, remote=args.remote)
    outputs.make_folders()
    records = _run_scoring(args, paths, params, run, out)
    summary(records, out, run)
    scored = any(r.ok for r in records)
    _write_outputs(args, records, out, plots=scored)  # the CSV and JSON say why, item by item
    check_scored(records)  # nothing scored: a data error
    return 0


# --------------------------------------------------------------------------------------------
# scopefx calibrate


def cmd_calibrate(args: argparse.Namespace, out: TextIO) -> int:
    from ..focus import Calibration, score_files
    from ..focus.csv import defocus_files, defocus_key, read_defocus_table
    from ..focus.plot import plot_calibration

    params = focus_params(args)
    default_device(args.device)  # a misspelt device: a usage error before any data
    if args.max_defocus is not None and not (
        math.isfinite(args.max_defocus) and args.max_defocus >= 0
    ):
        raise UsageError(f"--max-defocus must be a number >= 0, got {args.max_defocus!r}")
    outputs = Outputs(
        [("--output", args.output, "json"), ("--plot", args.plot, "plot")],
        inputs=[("--defocus", args.defocus)],
    )
    table = read_defocus_table(args.defocus) if args.defocus else {}
    if args.paths:
        paths = find(args.paths, args.recursive, outputs=outputs)
    else:  # the table names each image
        paths = [p for p in defocus_files(table) if outputs.admits(p, named=True)]
    if not paths:
        raise UsageError("give images to calibrate on, or a --defocus table listing them")
    outputs.make_folders()
    defocus, density = [], []
    records = []
    skipped: collections.Counter[str] = collections.Counter()  # why, for the error if all are
    for record in score_files(paths, params=params, workers=args.workers, device=args.device):
        records.append(record)
        if not record.ok:
            print(printable(f"skipped {record.path}: {record.error}"), file=out)
            skipped[f"not scored ({record.status})"] += 1
            continue
        name = printable(record.path if record.page is None else f"{record.path}[{record.page}]")
        if record.page is not None and (
            args.from_metadata or defocus_key(record.path, None) in table
        ):  # one value for a whole stack would give its planes one defocus
            print(f"skipped {name}: a page of a stack, whose pages need a defocus each "
                  "(a --defocus table with a 'page' column)", file=out)  # fmt: skip
            skipped["a page of a stack without a defocus of its own"] += 1
            continue
        if args.from_metadata:
            value = (
                record.working_distance_mm
                if args.from_metadata == "working_distance"
                else record.focus
            )
        else:
            value = table.get(defocus_key(record.path, record.page))
        if value is None:
            where = (f"no {args.from_metadata.replace('_', ' ')} value in its metadata"
                     if args.from_metadata else f"not in {printable(args.defocus)}")  # fmt: skip
            print(f"skipped {name}: {where}", file=out)
            skipped["no defocus value"] += 1
            continue
        if not math.isfinite(float(value)):
            print(f"skipped {name}: its defocus {value!r} is not a finite number", file=out)
            skipped["a defocus that is not a finite number"] += 1
            continue
        if not record.density_per_mpx > 0:  # a log-linear fit cannot place it
            print(f"skipped {name}: no features (density 0), which a fit of log(density) "
                  "cannot use", file=out)  # fmt: skip
            skipped["no features"] += 1
            continue
        defocus.append(float(value))
        density.append(record.density_per_mpx)
    check_scored(records)
    if not defocus:
        why = ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())
        source = "its metadata" if args.from_metadata else printable(args.defocus)
        raise DataError(
            f"none of the {len(records)} image(s) can enter the fit ({why}; defocus values "
            f"from {source}); see the lines above"
        )
    try:
        calibration = Calibration.fit(
            defocus,
            density,
            params=params,
            fit_center=args.fit_center or bool(args.from_metadata),
            max_defocus=args.max_defocus,
            unit=args.unit,
        )
    except CalibrationError as exc:  # the series gives no fit: a data error
        raise DataError(str(exc)) from None
    calibration.save(args.output)
    c = calibration.center
    about = "|defocus|" if c == 0 else f"|defocus {'-' if c > 0 else '+'} {abs(c):g}|"
    print(
        f"calibrated on {calibration.n} images: log(density/Mpx) = {calibration.intercept:.3f} "
        f"- {calibration.slope:.4f} {about} ({calibration.unit}), r = {calibration.r:.4f}",
        file=out,
    )
    print(
        f"in focus down to a density of {calibration.min_density:.0f} per Mpx "
        f"(|defocus| <= {calibration.max_defocus:g} {calibration.unit})",
        file=out,
    )
    print(f"wrote {printable(args.output)}", file=out)
    if args.plot:
        save_plot(plot_calibration(calibration, defocus, density), args.plot)
        print(f"wrote {printable(args.plot)}", file=out)
    return 0
