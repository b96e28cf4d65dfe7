"""Speed and memory of the MHFD focus score, next to blob_dog and variance of Laplacian.

What it measures
----------------
Median wall time per call, single thread, on 8-bit images of ``--size`` x ``--size`` px
(1024 by default), for

* ``focus_score exact``: ``scopefx.focus_score(image, mode="exact")``, default scales
  (``FocusParams()``: 16 DoG bands, sigma 1 to 30 px), on the uint8 image;
* ``focus_score fast``: the same with ``mode="fast"``;
* ``blob_dog``: ``skimage.feature.blob_dog(image_float, min_sigma=1, max_sigma=30,
  threshold=0.1)``, the scikit-image detector over the same scale range;
* ``var(laplace)``: ``scipy.ndimage.laplace(image_float).var()``, the classic cheap focus
  measure;
* ``focus_score signal``: ``focus_score(image, modality="fluorescence")``: exact mode with the
  signal-dependent noise model (noise level function, one threshold per feature) and the
  preset's scale weight (the count is printed);
* ``baseline exact`` (with ``--baseline-rev REV``): ``focus_score(image, mode="exact")`` of the
  scopefx source at git revision ``REV`` (``git archive``, imported as ``scopefx_baseline``),
  timed interleaved with the others, so ``exact / baseline exact`` compares today's code
  with that revision in the same run (target: within 15 %).

``image_float`` is ``skimage.util.img_as_float(image)`` (float64 in [0, 1]), made once outside
the timing. Each method runs once per image as a warm-up (FFT plans and scopefx's band plan
are built then), then ``--repeats`` times, methods interleaved so drift hits all of them
alike; the figure is the median over all images and repeats. ``blob_dog / method`` is the
ratio of median times (targets: exact >= 20x, fast >= 40x).

Peak memory per call is the peak of memory traced by ``tracemalloc`` during one warm call,
above what was allocated before it: NumPy arrays are traced, so this is every array a call
creates (C-level scratch buffers inside pocketfft or ndimage are not). It is also given in
units of one float32 plane of the image (4 bytes per pixel): a stack of all scale planes
would be 17 of them for 16 bands. The count column is what each method returns for the first
image (features for the MHFD modes, blobs for blob_dog, the variance for var(laplace)), as a
sanity check that all of them saw a real image.

Unless ``--quick``, one 4096 x 4096 image is also scored (exact and fast, a warm-up and two
repeats), with its peak memory, to show memory stays bounded when the image grows.

Single thread: ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` are set
to 1 before NumPy is imported; threadpoolctl, when installed, confirms the pools, and
``scipy.fft``'s worker count (which scopefx uses) is checked.

How the images are made (``scopefx.samples``, nothing is downloaded)
--------------------------------------------------------------------
``bundled_image(name, size=...)`` (an image shipped inside scikit-image, grey, mirror-tiled to
the size), then ``acquire(photons=1000, read_noise=1, dtype=uint8, seed=i)``: in focus, high
SNR, 8 bits, deterministic.

Run
---
``python bench/focus_speed.py`` (4 images, 5 repeats, plus 4096 px: about 1 minute);
``--quick`` (2 images, 3 repeats, no 4096 px: about 15 s). The exit code is 0 whatever the
figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    Report,
    Stopwatch,
    environment_lines,
    pass_fail,
    pin_single_thread,
    progress,
    table,
    thread_pool_lines,
)

pin_single_thread()  # before NumPy is imported: its BLAS / OpenMP pools are sized at load

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.feature import blob_dog  # noqa: E402
from skimage.util import img_as_float  # noqa: E402

import scopefx  # noqa: E402
from scopefx import samples  # noqa: E402

IMAGES = ("immunohistochemistry", "camera", "coins", "retina")
QUICK_IMAGES = IMAGES[:2]
PHOTONS, READ_NOISE = 1000.0, 1.0
BIG_SIZE, BIG_REPEATS = 4096, 2
#: Minimum blob_dog time / our time.
TARGETS = {"focus_score exact": 20.0, "focus_score fast": 40.0}
MIB = 2.0**20


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[np.ndarray, np.ndarray], float]  # (uint8 image, float image) -> count/score


def _exact(pixels: np.ndarray, _: np.ndarray) -> float:
    return scopefx.focus_score(pixels, mode="exact").features


def _fast(pixels: np.ndarray, _: np.ndarray) -> float:
    return scopefx.focus_score(pixels, mode="fast").features


def _signal(pixels: np.ndarray, _: np.ndarray) -> float:
    return scopefx.focus_score(pixels, modality="fluorescence").features


def load_baseline(rev: str) -> Any:
    """The scopefx package of git revision ``rev``, imported as ``scopefx_baseline``."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", rev, "src/scopefx"], cwd=root, capture_output=True, check=True
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="scopefx-baseline-"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    init = folder / "src" / "scopefx" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "scopefx_baseline", init, submodule_search_locations=[str(init.parent)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scopefx_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _blob_dog(_: np.ndarray, image_float: np.ndarray) -> float:
    return len(blob_dog(image_float, min_sigma=1, max_sigma=30, threshold=0.1))


def _var_laplace(_: np.ndarray, image_float: np.ndarray) -> float:
    return float(ndimage.laplace(image_float).var())


METHODS = (
    Method("focus_score exact", _exact),
    Method("focus_score fast", _fast),
    Method("blob_dog", _blob_dog),
    Method("var(laplace)", _var_laplace),
    Method("focus_score signal", _signal),
)
REFERENCE = "blob_dog"
BASELINE = "baseline exact"
#: Largest allowed time of a method / the baseline's exact mode (same run).
BASELINE_TARGETS = {"focus_score exact": 1.15, "focus_score signal": 1.15}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Single-thread time and peak memory of scopefx.focus_score (exact, fast) "
        "next to skimage blob_dog and variance of Laplacian, on bundled scikit-image images.",
    )
    parser.add_argument("--size", type=int, default=1024, help="image side in px (default 1024)")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per image and method (default 5; --quick: 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 images, 3 repeats, no 4096 px run (about 15 s)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the summary to FILE")
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="also time focus_score exact of the source at this git revision (same run)",
    )
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1 or args.size < 64:
        parser.error("--repeats must be >= 1 and --size >= 64")
    return args


def make_image(name: str, size: int, seed: int) -> np.ndarray:
    sharp = samples.bundled_image(name, size=size)
    return samples.acquire(sharp, photons=PHOTONS, read_noise=READ_NOISE, dtype=np.uint8, seed=seed)


def peak_traced_bytes(call: Callable[..., object], *args: Any, **kwargs: Any) -> int:
    """Peak of tracemalloc-traced memory during ``call(*args, **kwargs)``, above the level
    before it."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        result = call(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak - before


def timed(call: Callable[..., object], *args: Any, **kwargs: Any) -> float:
    """Wall time of ``call(*args, **kwargs)`` in seconds."""
    start = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - start


@dataclass
class Measurements:
    """Per method name: all timings (s), per-image medians (s), count per image, peak bytes."""

    times: dict[str, list[float]] = field(default_factory=lambda: {m.name: [] for m in METHODS})
    per_image: dict[str, dict[str, float]] = field(
        default_factory=lambda: {m.name: {} for m in METHODS}
    )
    counts: dict[str, dict[str, float]] = field(
        default_factory=lambda: {m.name: {} for m in METHODS}
    )
    peaks: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # process CPU time per call


def measure(args: argparse.Namespace, names: Sequence[str]) -> Measurements:
    found = Measurements()
    clock = Stopwatch()
    for i, name in enumerate(names):
        pixels = make_image(name, args.size, seed=i)
        image_float = img_as_float(pixels)
        for method in METHODS:  # warm-up, and the sanity count
            found.counts[method.name][name] = method.run(pixels, image_float)
        image_times: dict[str, list[float]] = {m.name: [] for m in METHODS}
        for _ in range(args.repeats):
            for method in METHODS:
                cpu = time.process_time()
                image_times[method.name].append(timed(method.run, pixels, image_float))
                found.cpu.setdefault(method.name, []).append(time.process_time() - cpu)
        for method in METHODS:
            found.times[method.name] += image_times[method.name]
            found.per_image[method.name][name] = statistics.median(image_times[method.name])
        if i == 0:
            for method in METHODS:
                found.peaks[method.name] = peak_traced_bytes(method.run, pixels, image_float)
        progress(
            f"[{i + 1}/{len(names)}] {name}: elapsed {clock.elapsed:.0f} s, "
            f"about {clock.eta(i + 1, len(names)):.0f} s left"
        )
    return found


def big_image_lines() -> list[str]:
    """Time and peak memory of focus_score at 4096 x 4096 (one image)."""
    progress(f"{BIG_SIZE} px image: exact and fast, warm-up + {BIG_REPEATS} repeats")
    pixels = make_image(IMAGES[0], BIG_SIZE, seed=0)
    plane = 4.0 * pixels.size
    rows = []
    for mode in ("exact", "fast"):
        result = scopefx.focus_score(pixels, mode=mode)  # warm-up
        seconds = [timed(scopefx.focus_score, pixels, mode=mode) for _ in range(BIG_REPEATS)]
        peak = peak_traced_bytes(scopefx.focus_score, pixels, mode=mode)
        rows.append(
            [
                f"focus_score {mode}",
                f"{1000 * statistics.median(seconds):.0f}",
                f"{peak / MIB:.0f}",
                f"{peak / plane:.1f}",
                result.features,
            ]
        )
    n_planes = scopefx.FocusParams().n_scales + 1
    return [
        f"{BIG_SIZE} x {BIG_SIZE} px, 8-bit ({IMAGES[0]} mirror-tiled), median of "
        f"{BIG_REPEATS} after a warm-up; a stack of the {n_planes} float32 scale planes alone "
        f"would take {n_planes * plane / MIB:.0f} MiB",
        *table(["method", "median ms", "peak MiB", "peak / f32 plane", "count"], rows),
    ]


def format_count(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def baseline_lines(
    args: argparse.Namespace, medians: dict[str, float], times: dict[str, list[float]]
) -> list[str]:
    """Time of our methods over the baseline's exact mode: median and fastest call.

    On a machine shared with other work the wall-time median carries their load; the median
    process CPU time of the same calls (single thread) does not, so both are shown.
    """
    if BASELINE not in medians:
        return []
    cpu = {name: statistics.median(values) for name, values in times.items()}
    rows = [
        [
            name,
            f"<= {goal:.2f}",
            f"{medians[name] / medians[BASELINE]:.3f}",
            f"{cpu[name] / cpu[BASELINE]:.3f}",
            pass_fail(cpu[name] / cpu[BASELINE] <= goal),
        ]
        for name, goal in BASELINE_TARGETS.items()
    ]
    return [
        "",
        f"Against {BASELINE} (scopefx at {args.baseline_rev}, same run): time / baseline",
        *table(["method", "target", "wall-time ratio", "CPU-time ratio", "result"], rows),
        "  (result judged on CPU time: the cost of a call, whatever else runs on the machine)",
    ]


def summarise(args: argparse.Namespace, names: Sequence[str], found: Measurements) -> Report:
    times, per_image, counts, peaks = found.times, found.per_image, found.counts, found.peaks
    plane = 4.0 * args.size * args.size
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = medians[REFERENCE]
    rows = [
        [
            m.name,
            f"{1000 * medians[m.name]:.1f}",
            f"{1000 * min(times[m.name]):.1f}",
            f"{1000 * max(times[m.name]):.1f}",
            f"{reference / medians[m.name]:.1f}x",
            f"{peaks[m.name] / MIB:.1f}",
            f"{peaks[m.name] / plane:.1f}",
            format_count(counts[m.name][names[0]]),
        ]
        for m in METHODS
    ]
    pool_lines, single = thread_pool_lines()
    report = Report()
    report.add(
        f"Focus speed: ms per {args.size} x {args.size} 8-bit image, single thread",
        *environment_lines(),
        *pool_lines,
        "threads: " + ("single (checked)" if single else "WARNING: a pool has more than 1 thread"),
        f"images ({len(names)}): {' '.join(names)}; photons={PHOTONS:g}, "
        f"read_noise={READ_NOISE:g}; {args.repeats} timed calls per image and method after "
        "one warm-up, methods interleaved; median over all",
        "focus_score: default FocusParams (16 bands, sigma 1..30 px) on the uint8 image; "
        "blob_dog(min_sigma=1, max_sigma=30, threshold=0.1) and var(laplace) on img_as_float",
        "peak: tracemalloc peak of one warm call on the first image (NumPy arrays traced), "
        "also in float32 planes of the image",
        "",
        *table(
            [
                "method",
                "median ms",
                "min ms",
                "max ms",
                f"{REFERENCE} / method",
                "peak MiB",
                "peak / f32 plane",
                f"count/score ({names[0]})",
            ],
            rows,
        ),
        "",
        f"Targets ({REFERENCE} median time / ours)",
        *table(
            ["method", "target", "value", "result"],
            [
                [
                    name,
                    f">= {goal:g}x",
                    f"{reference / medians[name]:.1f}x",
                    pass_fail(reference / medians[name] >= goal),
                ]
                for name, goal in TARGETS.items()
            ],
        ),
        *baseline_lines(args, medians, found.cpu),
        "",
        "Per image: median ms (count/score)",
        *table(
            ["image", *(m.name for m in METHODS)],
            [
                [
                    name,
                    *(
                        f"{1000 * per_image[m.name][name]:.1f} "
                        f"({format_count(counts[m.name][name])})"
                        for m in METHODS
                    ),
                ]
                for name in names
            ],
        ),
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Stopwatch()
    names = QUICK_IMAGES if args.quick else IMAGES
    progress(
        f"focus_speed: {len(names)} images of {args.size} px, {args.repeats} repeats"
        + ("" if args.quick else f", then one {BIG_SIZE} px image")
    )
    global METHODS
    if args.baseline_rev:
        baseline = load_baseline(args.baseline_rev)

        def _baseline(pixels: np.ndarray, _: np.ndarray) -> float:
            return baseline.focus_score(pixels, mode="exact").features

        METHODS = (*METHODS, Method(BASELINE, _baseline))
        progress(f"baseline: scopefx at {args.baseline_rev}")
    report = summarise(args, names, measure(args, names))
    if not args.quick:
        report.add("", *big_image_lines())
    report.add("", f"run time {clock.elapsed:.0f} s")
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
