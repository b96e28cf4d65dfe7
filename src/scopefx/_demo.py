"""``scopefx demo``: a sample run made from bundled images, calibrated, scored and reported."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TextIO

import numpy as np

from .focus._verdict import FLAGGED

__all__ = ["make_demo_run", "run_demo"]

#: Sections of the demo run that are planted out of focus (|defocus| in blur px), and partial.
_PLANTED_OOF = {7: 4.0, 15: 3.0, 19: 5.0}
_PLANTED_PARTIAL = 11
_PLANTED_CORRUPT = 22


def make_demo_run(
    folder: Path, *, size: int = 512, sections: int = 24, seed: int = 0
) -> dict[str, Path]:
    """Write a through-focus series and an acquisition run of 8-bit TIFFs.

    The run is ``sections`` serial sections of scikit-image's bundled immunohistochemistry
    image (a histology section), each shifted a little and acquired with shot and read noise,
    mostly in focus (|defocus| <= 0.5), with sections 7, 15 and 19 out of focus, section 11 half
    out of focus (as a wrinkle or tilt would do) and section 22 a truncated file.
    """
    import tifffile

    from .samples import acquire, bundled_image, defocus, partial_defocus, write_defocus_series

    folder.mkdir(parents=True, exist_ok=True)
    through = folder / "through-focus"
    table = write_defocus_series(through, np.arange(-6, 6.5, 1.0), size=size, seed=seed)
    run = folder / "run"
    run.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    base = bundled_image("immunohistochemistry", size=size + 64)
    truth = []
    for i in range(sections):
        dy, dx = rng.integers(0, 64, size=2)
        section = base[dy : dy + size, dx : dx + size]
        amount = _PLANTED_OOF.get(i, float(rng.uniform(-0.5, 0.5)))
        if i == _PLANTED_PARTIAL:
            blurred, kind = partial_defocus(section, 5.0, fraction=0.5), "partial"
        else:
            blurred, kind = (
                defocus(section, amount),
                "out_of_focus" if i in _PLANTED_OOF else "in_focus",
            )
        path = run / f"section_{i:04d}.tif"
        tifffile.imwrite(path, acquire(blurred, photons=200, read_noise=2, seed=seed + 100 + i))
        if i == _PLANTED_CORRUPT:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
            kind = "corrupt"
        truth.append((path.name, kind))
    with (folder / "planted.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "planted"), *truth])
    return {"through_focus": table, "run": run, "planted": folder / "planted.csv"}


def make_demo_mosaic(folder: Path, *, tile_px: int = 384) -> Path:
    """A 4x4 mosaic cut from a bundled image at jittered sub-pixel positions, with detector
    noise; tile 5 is blurred (out of focus). Returns the tile table."""
    from scipy import ndimage

    from .samples import make_mosaic, write_mosaic

    m = make_mosaic(
        "immunohistochemistry", grid=(4, 4), tile_px=tile_px, overlap=0.15, jitter_px=3.0,
        subpixel=True, photons=400.0, read_noise=200.0, seed=7,
    )  # fmt: skip
    blurred = ndimage.gaussian_filter(m.tiles[5].astype(np.float32), 3.0)
    m.tiles[5] = np.rint(blurred).astype(m.tiles[5].dtype)
    return write_mosaic(folder, m)


def run_demo(folder: Path, *, size: int = 512, sections: int = 24, out: TextIO) -> None:
    """Generate the sample run, then calibrate, score and fuse it through :class:`Client`'s
    local default (the same calls an edge or HPC endpoint answers), and report."""
    import os

    from . import Calibration, Client, FocusParams, FusionParams, RunBaseline
    from ._cli_fuse import describe_mosaic
    from .cli import _CsvSink, _line, _read_defocus_csv, _summary
    from .focus._batch import rejudge_warmup
    from .focus.plot import plot_calibration, plot_focus_maps, plot_focus_series

    print(f"scopefx demo: writing a sample run under {folder}/ ...", file=out)
    made = make_demo_run(folder, size=size, sections=sections)
    tiles = make_demo_mosaic(folder / "mosaic_tiles")
    colour = out.isatty() and not os.environ.get("NO_COLOR")
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
        table = _read_defocus_csv(str(made["through_focus"]))  # resolved path -> defocus
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
        sink = _CsvSink(str(folder / "focus.csv"))
        records = []
        try:
            for record in client.iter_focus(run, params=params, calibration=calibration):
                records.append(record)
                sink.write(record)
                print(_line(record, colour), file=out)
        finally:
            sink.close()
        _summary(records, out)
        plot_focus_series(records).savefig(folder / "focus.png", dpi=120)
        plot_focus_maps(records).savefig(folder / "focus_maps.png", dpi=120)

        print(
            "\n== 3. the same run without calibration: verdicts from the run's own baseline ==",
            file=out,
        )
        baseline = RunBaseline()
        relative = list(client.iter_focus(run, params=params, baseline=baseline))
        rejudge_warmup(relative, baseline)
        sink = _CsvSink(str(folder / "focus_baseline.csv"))
        for record in relative:
            sink.write(record)
        sink.close()
        flagged = [Path(r.path).name for r in relative if r.ok and r.verdict in FLAGGED]
        print(f"flagged against the run's baseline: {', '.join(flagged) or 'none'}", file=out)

        print("\n== 4. fuse a 4x4 tile mosaic to OME-Zarr (tile 5 is out of focus) ==", file=out)
        mosaic = folder / "mosaic.ome.zarr"
        result = client.fuse(
            tiles, mosaic, params=FusionParams(blend="focus"), overwrite=True,
            pixel_size_um=0.5, preview=str(folder / "mosaic.png"),
        )  # fmt: skip
        print(f"{mosaic}: {describe_mosaic(result)}", file=out)
        print("blend 'focus': the sharper tile wins where tiles overlap", file=out)
    print(
        f"\nplanted truth: {made['planted']} (sections 7, 15, 19 out of focus; 11 half out of "
        "focus; 22 truncated)",
        file=out,
    )
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
