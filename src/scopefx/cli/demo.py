"""``scopefx demo``: a sample run made from bundled images, calibrated, scored and reported."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TextIO

from ..focus import FLAGGED
from ._common import colour, describe_mosaic, record_line, summary

__all__ = ["add_parser", "cmd_demo", "run_demo"]


def add_parser(sub: Any) -> None:
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


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    run_demo(Path(args.out), size=args.size, sections=args.sections, out=out)
    return 0


def run_demo(folder: Path, *, size: int = 512, sections: int = 24, out: TextIO) -> None:
    """Generate the sample run, then calibrate, score and fuse it through :class:`Client`'s
    local default (the same calls an edge or HPC endpoint answers), and report."""
    from .. import Calibration, Client, FocusParams, FocusRun, FuseOptions, FusionParams
    from ..focus.csv import FocusCsvWriter, read_defocus_table
    from ..focus.plot import plot_calibration, plot_focus_maps, plot_focus_series
    from ..samples import make_demo_mosaic, make_demo_run

    print(f"scopefx demo: writing a sample run under {folder}/ ...", file=out)
    made = make_demo_run(folder, size=size, sections=sections)
    tiles = make_demo_mosaic(folder / "mosaic_tiles")
    in_colour = colour(out)
    params = FocusParams(cell_px=128)
    with Client(progress=False) as client:  # the local default: no account, no network
        info = client.info()
        print(
            f"running through scopefx.Client's local default (scopefx {info['scopefx']}, "
            f"{info['backend']}, host {info['host']}); with an endpoint configured the same "
            "calls go to it",
            file=out,
        )
        print("\n== 1. calibrate on the through-focus series (defocus -6..6) ==", file=out)
        table = read_defocus_table(made["through_focus"])  # resolved path -> defocus
        series = [r for r in client.score_focus(list(table), params=params) if r.ok]
        defocus = [table[r.path] for r in series]
        density = [r.density_per_mpx for r in series]
        calibration = Calibration.fit(
            defocus, density, params=params, max_defocus=1.5, unit="px-blur"
        )
        calibration.save(folder / "calibration.json")
        plot_calibration(calibration, defocus, density).savefig(folder / "calibration.png", dpi=120)
        print(
            f"calibrated on {calibration.n} images: r = {calibration.r:.4f}; in focus down to "
            f"{calibration.min_density:.0f} features/Mpx (|defocus| <= 1.5 px of blur)",
            file=out,
        )

        print("\n== 2. score the run: verdicts from the calibration ==", file=out)
        run = sorted(str(p) for p in made["run"].glob("*.tif"))
        records = []
        with FocusCsvWriter(folder / "focus.csv") as sink:
            for record in client.iter_focus(run, params=params, calibration=calibration):
                records.append(record)
                sink.write(record)
                print(record_line(record, in_colour), file=out)
        summary(records, out)
        plot_focus_series(records).savefig(folder / "focus.png", dpi=120)
        plot_focus_maps(records).savefig(folder / "focus_maps.png", dpi=120)

        print(
            "\n== 3. the same run without calibration: verdicts from the run's own baseline ==",
            file=out,
        )
        relative = client.score_focus(run, run=FocusRun(params=params), params=params)
        with FocusCsvWriter(folder / "focus_baseline.csv") as sink:
            for record in relative:
                sink.write(record)
        flagged = [Path(r.path).name for r in relative if r.ok and r.verdict in FLAGGED]
        print(f"flagged against the run's baseline: {', '.join(flagged) or 'none'}", file=out)

        print("\n== 4. fuse a 4x4 tile mosaic to OME-Zarr (tile 5 is out of focus) ==", file=out)
        mosaic = folder / "mosaic.ome.zarr"
        options = FuseOptions(overwrite=True, pixel_size_um=0.5, preview=str(folder / "mosaic.png"))
        result = client.fuse(tiles, mosaic, params=FusionParams(blend="focus"), options=options)
        print(f"{mosaic}: {describe_mosaic(result.to_dict())}", file=out)
        print("blend 'focus': the sharper tile wins where tiles overlap", file=out)
    print(f"\nplanted truth: {made['planted']} ({_planted(made['planted'])})", file=out)
    print(f"mosaic: {mosaic} (open with: napari --plugin napari-ome-zarr {mosaic})", file=out)
    print(
        f"report: {folder / 'focus.csv'}; plots: {folder / 'focus.png'}, "
        f"{folder / 'focus_maps.png'}, {folder / 'calibration.png'}, {folder / 'mosaic.png'}",
        file=out,
    )
    print(
        f"next: follow a live acquisition with `scopefx watch DIR --calibration "
        f"{folder / 'calibration.json'} --csv focus.csv`",
        file=out,
    )


def _planted(table: Path) -> str:
    """What the demo run's planted-truth CSV holds besides sections in focus, in words:
    ``sections 7, 15, 19 out of focus; 11 half out of focus; 22 truncated`` for 24 sections
    (a shorter run holds fewer of them)."""
    import csv
    import re

    words = {"out_of_focus": "out of focus", "partial": "half out of focus",
             "corrupt": "truncated"}  # fmt: skip
    found: dict[str, list[str]] = {kind: [] for kind in words}
    with open(table, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["planted"] in found:
                number = re.search(r"(\d+)", row["path"])
                found[row["planted"]].append(str(int(number[1])) if number else row["path"])
    parts = [f"{', '.join(found[kind])} {text}" for kind, text in words.items() if found[kind]]
    return ("sections " + "; ".join(parts)) if parts else "every section in focus"
