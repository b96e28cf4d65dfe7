"""Mosaic fusion on a CUDA GPU (CuPy) against the CPU of the same machine, same tiles, same run.

Run it where CuPy sees a GPU; without one it says so and exits 0.

Cases (tiles made by ``scopefx.samples.make_mosaic`` from the bundled ``retina`` image, uint16,
written as TIFF files with their tile table; nothing is downloaded):

* ``translated``: ``--grid`` x ``--grid`` tiles of ``--tile`` px, 10 % overlap, +-4 px sub-pixel
  jitter: every tile is resampled (linear interpolation, ``order=1``).
* ``rotated``: the same with every tile turned by 1.5 degrees: a general affine per tile.

Each case is fused to OME-Zarr (``scopefx.fuse``, 1024 px chunks, feathered ``linear`` blend,
a pyramid), on the CPU and on the GPU, with the dask threaded scheduler on ``--workers``
threads (all cores by default); the time is ``FusionResult.seconds`` (headers, plan, fusion,
writing), after a warm-up fusion of a small mosaic on each device. Then the fused level 0
of both is compared (largest difference in grey levels).
``in memory`` is ``fuse_lazy(...).compute()``: the fusion alone, nothing written.

Run: ``python bench/fusion_gpu.py [--grid 6] [--tile 1024]``. Exit code 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from _common import Report, environment_lines, fmt, progress, table
from scopefx.fusion import FusionParams, fuse, fuse_lazy
from scopefx.samples import make_mosaic, write_mosaic


def _has_gpu() -> bool:
    from scopefx._backend import list_gpus

    return bool(list_gpus())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--grid", type=int, default=6)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="also write the report here")
    parser.add_argument("--cpu-only", action="store_true", help=argparse.SUPPRESS)  # dry run
    args = parser.parse_args(argv)
    report = Report()
    report.add("Mosaic fusion on a GPU against the CPU, same tiles, same run")
    report.add(*environment_lines())
    devices = ("cpu", "cpu") if args.cpu_only else ("cpu", "gpu")
    if not args.cpu_only and not _has_gpu():
        report.add("", "no CUDA device that CuPy sees: nothing measured")
        report.emit(args.out)
        return 0
    params = FusionParams(chunk_px=1024, blend="linear", order=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        progress("warm-up: a 2 x 2 mosaic on each device (imports, kernels, FFT plans)")
        small = write_mosaic(
            Path(tmp) / "warm",
            make_mosaic("retina", grid=(2, 2), tile_px=256, rotation_deg=1.0),
            affine=True,
        )
        for i, device in enumerate(devices):
            fuse(small, Path(tmp) / f"warm-{i}.ome.zarr", params=params, device=device)
        for case, rotation in (("translated", 0.0), ("rotated", 1.5)):
            progress(f"{case}: making {args.grid}x{args.grid} tiles of {args.tile} px")
            mosaic = make_mosaic("retina", grid=(args.grid, args.grid), tile_px=args.tile,
                                 overlap=0.1, jitter_px=4.0, subpixel=True,
                                 rotation_deg=rotation, smooth_sigma_px=1.0, seed=1)  # fmt: skip
            table_path = write_mosaic(Path(tmp) / case, mosaic, affine=rotation != 0)
            seconds, lazy_seconds, level0 = {}, {}, {}
            for name, device in zip(("CPU", "GPU"), devices, strict=True):
                progress(f"{case}: fusing on the {name}")
                out = Path(tmp) / f"{case}-{name}.ome.zarr"
                result = fuse(table_path, out, params=params, device=device, workers=args.workers)
                seconds[name] = result.seconds
                level0[name] = np.asarray(zarr.open_group(str(out), mode="r")["0"][:])
                lazy = fuse_lazy(table_path, params=params, device=device)
                start = time.perf_counter()
                lazy.compute(scheduler="threads", num_workers=args.workers)
                lazy_seconds[name] = time.perf_counter() - start
            diff = np.abs(level0["CPU"].astype(np.int64) - level0["GPU"].astype(np.int64))
            shape = level0["CPU"].shape
            rows.append([
                case, f"{shape[-1]} x {shape[-2]}",
                fmt(seconds["CPU"], 2), fmt(seconds["GPU"], 2),
                f"{seconds['CPU'] / seconds['GPU']:.2f}x",
                fmt(lazy_seconds["CPU"], 2), fmt(lazy_seconds["GPU"], 2),
                f"{lazy_seconds['CPU'] / lazy_seconds['GPU']:.2f}x", str(int(diff.max())),
            ])  # fmt: skip
    report.add(
        "",
        f"{args.grid} x {args.grid} tiles of {args.tile} px, uint16, linear blend, order 1, "
        f"{args.workers} dask threads:",
        "",
    )
    report.add(*table(
        ["case", "mosaic px", "CPU s", "GPU s", "CPU / GPU", "in memory CPU s",
         "in memory GPU s", "CPU / GPU", "max diff"],
        rows,
    ))  # fmt: skip
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
