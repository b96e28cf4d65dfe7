"""Peak memory of ``scopefx.focus_score`` on the CPU, by image size (the figures of docs/limits.md).

Each (size, mode) is measured in a fresh Python process, on one thread, on an in-focus 8-bit
image made as ``bench/focus_speed.py`` makes its first one (``immunohistochemistry`` from
scikit-image, mirror-tiled to the size, ``acquire(photons=1000, read_noise=1, dtype=uint8)``).
Before the measured calls the process scores a 64 x 64 image once, so the lazy imports of the
first call are not counted. Then:

* ``traced``: the tracemalloc peak of one warm call, above the level before it: every NumPy
  array the call creates (``bench/focus_speed.py``'s method; C-level scratch buffers inside
  pocketfft are not traced). ``traced cold``: the same for the first call at this size, after
  clearing the band-plan cache, so the plan (the transfer blocks, see ``plan``) is built
  inside the call.
* ``RSS cold`` / ``RSS warm``: the rise of the process's resident set (VmHWM after the call
  minus VmRSS before it, with the high-water mark reset through /proc/self/clear_refs) for the
  first call at this size and for the next one: what the operating system sees, pocketfft's
  scratch included. Before each, glibc's free heap is given back (``malloc_trim``), so the
  call's allocations show instead of reusing pages freed earlier. Linux only.
* ``plan``: the band plan's transfer blocks, which ``focus_score`` keeps cached per image shape
  (up to 8 shapes, each at most 256 MiB) after the first call.

It also prints the size of what the remote ``score_focus`` returns for each image (the item of
one reference, with its focus map), as JSON and as Globus Compute serializes a result.

Every figure is also given in float32 planes of the image (4 bytes per pixel). The input image
(1 byte per pixel here) is not included: the caller holds it.

Run: ``python tools/measure_memory.py`` (512, 1024, 2048, 4096 px, exact mode: about 20 s);
``python tools/measure_memory.py --sizes 1024 2048 --modes exact fast``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MIB = 2.0**20
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
IMAGE, PHOTONS, READ_NOISE, SEED = "immunohistochemistry", 1000.0, 1.0, 0
REF = "/data/instrument/run1/section_0001.tif"


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def _malloc_trim() -> None:
    """Give the C heap's free memory back to the system (glibc), so that what a call allocates
    shows as a rise of the resident set instead of reusing pages freed before it."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name).malloc_trim(0)


def _rss_rise(call: Any) -> int | None:
    """Peak resident set during ``call()`` above the resident set before it, in bytes."""
    import gc

    gc.collect()
    _malloc_trim()
    before = _status_kib("VmRSS")
    if before is None or not _reset_peak():
        call()
        return None
    call()
    peak = _status_kib("VmHWM")
    return None if peak is None else (peak - before) * 1024


def _traced_peak(call: Any) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def child(size: int, mode: str, n_scales: int = 16) -> dict[str, Any]:
    """Measure one (size, mode) in this process; returns the figures in bytes."""
    import numpy as np

    import scopefx
    from scopefx import samples
    from scopefx.focus import _scalespace

    params = scopefx.FocusParams(mode=mode, n_scales=n_scales)
    scopefx.focus_score(
        np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8), params=params
    )
    image = samples.acquire(
        samples.bundled_image(IMAGE, size=size),
        photons=PHOTONS,
        read_noise=READ_NOISE,
        dtype=np.uint8,
        seed=SEED,
    )
    result: dict[str, Any] = {}

    def call() -> None:
        result["features"] = scopefx.focus_score(image, params=params).features

    out: dict[str, Any] = {"size": size, "mode": mode, "n_scales": n_scales}
    out["rss_cold"] = _rss_rise(call)
    out["rss_warm"] = _rss_rise(call)
    out["traced"] = _traced_peak(call)
    _scalespace._cached_plan.cache_clear()
    out["traced_cold"] = _traced_peak(call)
    sizes = _scalespace._band_sizes((size, size), params.sigmas_px, mode)
    out["plan"] = 4 * sum(ry * rx for _, ry, rx in sizes)
    out["plan_cached"] = out["plan"] <= _scalespace._CACHE_BYTES
    out["features"] = result["features"]
    out.update(_record_sizes(image, params))
    return out


def _record_sizes(image: Any, params: Any) -> dict[str, Any]:
    """Size of the item the remote ``score_focus`` returns for this image: as JSON, and as
    Globus Compute serializes a result (its default data serializer, when the SDK is here)."""
    import tempfile

    import tifffile

    from scopefx.remote._tasks import score_focus

    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "section.tif")
        tifffile.imwrite(path, image)
        item = score_focus([path], params=params.to_dict())[0]
    item["ref"] = item["path"] = REF  # a typical reference, the same on every machine
    sizes: dict[str, Any] = {
        "record_json": len(json.dumps(item)),
        "map_cells": len(item["focus_map"]) * len(item["focus_map"][0]),
    }
    try:
        from globus_compute_sdk.serialize import ComputeSerializer
    except ImportError:
        sizes["record_serialized"] = None
    else:
        sizes["record_serialized"] = len(ComputeSerializer().serialize(item))
    return sizes


def _fmt(nbytes: int | None, plane: float) -> str:
    if nbytes is None:
        return "n/a"
    return f"{nbytes / MIB:.0f} ({nbytes / plane:.1f})" if nbytes >= MIB else f"{nbytes / MIB:.1f}"


def report(rows: Sequence[dict[str, Any]]) -> str:
    import numpy as np
    import scipy

    import scopefx

    header = (
        "size", "mode", "f32 plane MiB", "traced", "traced cold", "RSS cold", "RSS warm",
        "plan (cached)", "features",
    )  # fmt: skip
    lines = [
        "Peak memory of scopefx.focus_score on the CPU, one thread, 8-bit in-focus image "
        f"({IMAGE}, photons={PHOTONS:g}, read_noise={READ_NOISE:g}, seed {SEED}), "
        f"n_scales={rows[0]['n_scales']}",
        f"scopefx {scopefx.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"Python {platform.python_version()}",
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}",
        "MiB (float32 planes of the image in brackets); the 8-bit input is not included",
        "",
    ]
    table = []
    for row in rows:
        plane = 4.0 * row["size"] ** 2
        table.append(
            (
                f"{row['size']}^2",
                row["mode"],
                f"{plane / MIB:g}",
                _fmt(row["traced"], plane),
                _fmt(row["traced_cold"], plane),
                _fmt(row["rss_cold"], plane),
                _fmt(row["rss_warm"], plane),
                _fmt(row["plan"], plane) + (" yes" if row["plan_cached"] else " no"),
                str(row["features"]),
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for r in table:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    lines += [
        "",
        "What the remote score_focus returns per image (default cell_px 256), in bytes: as JSON, "
        "and as Globus Compute serializes a result (the endpoint refuses results over 10 MiB)",
        "",
    ]
    rec_header = ("size", "mode", "focus-map cells", "JSON", "serialized")
    rec = [
        (
            f"{r['size']}^2",
            r["mode"],
            str(r["map_cells"]),
            str(r["record_json"]),
            "n/a" if r["record_serialized"] is None else str(r["record_serialized"]),
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in rec)) for i, h in enumerate(rec_header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(rec_header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for r in rec:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Peak memory of scopefx.focus_score on the CPU by image size, each size in "
        "a fresh process (tracemalloc and resident set)."
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096], metavar="PX"
    )
    parser.add_argument(
        "--modes", nargs="+", choices=("exact", "fast"), default=["exact"], metavar="MODE"
    )
    parser.add_argument(
        "--n-scales", type=int, default=16, metavar="N", help="DoG bands (default: %(default)s)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    parser.add_argument("--child", nargs=3, metavar=("PX", "MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(s < 64 for s in args.sizes):
        parser.error(f"--sizes must be >= 64 px, got {args.sizes}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], int(args.child[2]))))
        return 0
    env = dict(os.environ, **dict.fromkeys(THREAD_VARS, "1"))
    rows = []
    for mode in args.modes:
        for size in args.sizes:
            run = subprocess.run(
                [sys.executable, __file__, "--child", str(size), mode, str(args.n_scales)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"measured {size}^2 {mode}", file=sys.stderr)
    text = report(rows)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
