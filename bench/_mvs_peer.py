"""Fuse a tile mosaic with multiview-stitcher, streaming the result to OME-Zarr (the peer side).

Run with the interpreter of the isolated environment made by ``bench/setup_peer.sh``; this
script must not import scopefx::

    bench/.venv-mvs/bin/python bench/_mvs_peer.py TILES.csv OUT.ome.zarr [--chunk 512] [--threads N]

``TILES.csv`` has the header ``path,x,y``: ``path`` is a 2D single-channel TIFF (relative to the
CSV's folder), ``x`` (column axis) and ``y`` (row axis) are the mosaic pixel coordinates where the
tile's pixel (0, 0) lands. Every tile becomes a multiview-stitcher image with unit spacing, zero
origin and a translation-only affine ``(y, x)`` under its own transform key; no registration is
run. The tiles are opened lazily with ``multiview_stitcher.io.read_tiff_into_spatial_xarray``
(``--tile-backend dask``, one dask task per TIFF page, the default because it was the faster one
here; or ``zarr``, the package's TIFF-backed virtual Zarr store), so pixels are only read by the
chunk fusions that need them.

Fusion is ``multiview_stitcher.fusion.fuse`` with its defaults (weighted average fusion with
smooth blending weights, linear interpolation, ``interpolation_order=1``) and the streaming path
the package documents for large data: ``output_zarr_url=OUT`` with
``zarr_options={"ome_zarr": True}``, which fuses every output chunk independently, writes it to
``OUT/0`` and then writes the multiscale pyramid (``OUT/1``, ...) and the NGFF metadata.
``--threads`` > 1 runs the chunk fusions in parallel with
``misc_utils.process_batch_using_joblib`` (the package's documented batch function) on joblib's
threading backend, so all the memory stays in this process.

The output grid is the mosaic's integer pixel grid (spacing 1): its origin is the floor of the
smallest tile position along each axis and it covers every tile pixel, so output index
``(i, j)`` is mosaic pixel ``(origin_y + i, origin_x + j)`` even when positions are fractional.

Pixels of the output grid whose centres lie outside every tile (at most one row or column on
each side, and only with fractional positions) are 0.

The last line on stdout is one JSON object with ``wall_s`` (building the lazy inputs, fusion and
the OME-Zarr write including its pyramid), ``fuse_s`` (up to the end of level 0), ``pyramid_s``,
``peak_rss_mb`` (this process's peak RSS, from ``VmHWM`` on Linux, plus the largest finished
child), ``peak_tree_rss_mb`` (sampled sum over this process and its children, the figure to use
with ``--joblib-backend loky``), ``ru_maxrss_mb`` (raw, see ``peak_rss_mb()``),
``rss_before_mb`` (RSS after the imports, when the timer starts), ``zarr`` (the
level-0 array's directory, for ``zarr.open_array``), ``axes`` (``["t", "c", "y", "x"]``),
``shape`` (of that array), ``origin_yx``, ``levels`` and ``mvs_version``. Everything
multiview-stitcher prints goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

from _peer_io import proc_status_mb, read_tiles

TRANSFORM_KEY = "stage_positions"


def _ru_maxrss_mb(who: int) -> float:
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(who).ru_maxrss * scale / 1e6


def _vm_hwm_mb() -> float | None:
    return proc_status_mb("VmHWM")


def _vm_rss_mb() -> float | None:
    return proc_status_mb("VmRSS")


def peak_rss_mb() -> tuple[float, float]:
    """``(peak RSS of this process + largest finished child, raw ru_maxrss of self)`` in MB.

    On Linux ``ru_maxrss`` of a process started by ``subprocess`` also counts the RSS its
    *parent* had when it forked (the high-water mark survives ``exec``), so a benchmark driver
    holding a large mosaic would inflate it. ``VmHWM`` belongs to the new process image only and
    is used instead where available.
    """
    raw = _ru_maxrss_mb(resource.RUSAGE_SELF)
    hwm = _vm_hwm_mb()
    own = raw if hwm is None else hwm
    return own + _ru_maxrss_mb(resource.RUSAGE_CHILDREN), raw


class TreeRssSampler:
    """Samples the summed RSS of this process and all its descendants (for process pools)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import threading

        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        self.peak_mb = max(self.peak_mb, total / 1e6)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> TreeRssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def output_grid(
    tiles: list[tuple[Path, float, float]], tile_shape: tuple[int, int]
) -> tuple[dict[str, float], dict[str, int]]:
    """Integer-aligned origin and shape of the union of all tiles (pixel-centre convention)."""
    ys = [y for _, _, y in tiles]
    xs = [x for _, x, _ in tiles]
    origin = {"y": float(math.floor(min(ys))), "x": float(math.floor(min(xs)))}
    last = {
        "y": math.ceil(max(ys) + tile_shape[0] - 1 - 1e-9),
        "x": math.ceil(max(xs) + tile_shape[1] - 1 - 1e-9),
    }
    shape = {dim: int(last[dim] - origin[dim]) + 1 for dim in ("y", "x")}
    return origin, shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tiles", type=Path, help="CSV tile table with the header path,x,y")
    parser.add_argument("out", type=Path, help="output OME-Zarr directory (replaced if present)")
    parser.add_argument("--chunk", type=int, default=512, help="output chunk edge in px (512)")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="parallel chunk fusions (default: all CPUs; 1 = sequential, the package default)",
    )
    parser.add_argument(
        "--n-batch",
        type=int,
        default=None,
        help="chunk fusions submitted per batch when --threads > 1 (default: 4 x threads)",
    )
    parser.add_argument(
        "--tile-backend",
        choices=("dask", "zarr"),
        default="dask",
        help="lazy TIFF reader of multiview_stitcher.io.read_tiff_into_spatial_xarray: one dask "
        "task per page (default, the faster one here) or the TIFF-backed virtual Zarr store",
    )
    parser.add_argument(
        "--joblib-backend",
        choices=("threading", "loky"),
        default="threading",
        help="joblib backend of the parallel chunk fusions (threading: one process, exact peak "
        "RSS; loky: worker processes, the joblib default; use peak_tree_rss_mb then)",
    )
    args = parser.parse_args(argv)
    tiles = read_tiles(args.tiles)
    threads = max(1, args.threads)

    import dask
    import tifffile
    from multiview_stitcher import __version__ as mvs_version
    from multiview_stitcher import fusion, io, misc_utils, ngff_utils, param_utils

    with tifffile.TiffFile(tiles[0][0]) as tif:
        tile_shape = tuple(int(n) for n in tif.pages[0].shape)
    if len(tile_shape) != 2:
        raise SystemExit(f"{tiles[0][0]}: expected a 2D single-channel tile, got {tile_shape}")
    origin, shape = output_grid(tiles, tile_shape)  # type: ignore[arg-type]

    batch_options: dict = {}
    if threads > 1:
        batch_options = {
            "batch_func": misc_utils.process_batch_using_joblib,
            "n_batch": args.n_batch or 4 * threads,
            "batch_func_kwargs": {"n_jobs": threads, "backend": args.joblib_backend},
        }

    # Time the pyramid part of the OME-Zarr write separately: fuse() calls this after level 0.
    timings: dict[str, float] = {}
    write_pyramid = ngff_utils.write_sim_to_ome_zarr

    def timed_write_pyramid(*a, **kw):
        t = time.perf_counter()
        timings["level0_done"] = t
        try:
            return write_pyramid(*a, **kw)
        finally:
            timings["pyramid_s"] = time.perf_counter() - t

    ngff_utils.write_sim_to_ome_zarr = timed_write_pyramid

    out = str(args.out)
    rss_before = _vm_rss_mb()
    t0 = time.perf_counter()
    with (
        TreeRssSampler() as sampler,
        contextlib.redirect_stdout(sys.stderr),
        dask.config.set(num_workers=threads),
    ):
        images = [
            io.read_tiff_into_spatial_xarray(
                path,
                dims=["y", "x"],
                scale={"y": 1.0, "x": 1.0},
                translation={"y": 0.0, "x": 0.0},
                affine_transform=param_utils.affine_from_translation([y, x]),
                transform_key=TRANSFORM_KEY,
                array_backend=args.tile_backend,
            )
            for path, x, y in tiles
        ]
        fusion.fuse(
            images=images,
            transform_key=TRANSFORM_KEY,
            output_stack_properties={
                "spacing": {"y": 1.0, "x": 1.0},
                "origin": origin,
                "shape": shape,
            },
            output_chunksize=args.chunk,
            interpolation_order=1,
            output_zarr_url=out,
            zarr_options={"ome_zarr": True},
            batch_options=batch_options,
        )
        wall = time.perf_counter() - t0
        if threads > 1 and args.joblib_backend == "loky":
            # reap the reusable worker processes so that RUSAGE_CHILDREN sees them
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)
    ngff_utils.write_sim_to_ome_zarr = write_pyramid
    peak, raw_maxrss = peak_rss_mb()

    import zarr

    level0 = zarr.open_array(os.path.join(out, "0"), mode="r")
    group = zarr.open_group(out, mode="r")
    multiscales = group.attrs.get("multiscales") or group.attrs["ome"]["multiscales"]
    ms = multiscales[0]
    axes = [ax["name"] for ax in ms["axes"]]
    ngff_origin = {"y": 0.0, "x": 0.0}
    for tf in ms["datasets"][0]["coordinateTransformations"]:
        if tf["type"] == "translation":
            ngff_origin = dict(zip(axes, tf["translation"], strict=True))
    # the written metadata must agree with the grid requested above
    for dim in ("y", "x"):
        if abs(float(ngff_origin[dim]) - origin[dim]) > 1e-6:
            raise SystemExit(f"OME-Zarr origin {ngff_origin} differs from requested {origin}")

    level0_done = timings.get("level0_done", t0 + wall)
    result = {
        "wall_s": round(wall, 4),
        "fuse_s": round(level0_done - t0, 4),
        "pyramid_s": round(timings.get("pyramid_s", 0.0), 4),
        "peak_rss_mb": round(peak, 1),
        "peak_tree_rss_mb": round(sampler.peak_mb, 1),
        "ru_maxrss_mb": round(raw_maxrss, 1),
        "rss_before_mb": None if rss_before is None else round(rss_before, 1),
        "zarr": os.path.join(out, "0"),
        "axes": axes,
        "shape": [int(n) for n in level0.shape],
        "origin_yx": [origin["y"], origin["x"]],
        "levels": len(ms["datasets"]),
        "chunk": args.chunk,
        "threads": threads,
        "tile_backend": args.tile_backend,
        "joblib_backend": args.joblib_backend if threads > 1 else None,
        "n_tiles": len(tiles),
        "mvs_version": mvs_version,
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
