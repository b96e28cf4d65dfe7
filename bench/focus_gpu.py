"""The focus score on a CUDA GPU (CuPy): agreement with the CPU, speed, device memory.

Run it where CuPy sees a GPU; without one it says so and exits 0 (the CPU figures are in
``focus_speed.py``). Every figure is measured in this run, against the CPU of the same machine.

What it measures
----------------
1. **Agreement.** Each image is scored on the CPU (NumPy / SciPy) and on the GPU (CuPy) with
   the same parameters: the four bundled images of ``focus_speed.py`` (1024 x 1024 8-bit,
   ``samples.bundled_image`` then ``samples.acquire(photons=1000, read_noise=1)``) as ``em``
   in ``exact`` and ``fast`` modes, and every image of ``--real`` (the through-focus series of
   ``../shared/data/focus_real``, its ``manifest.csv``) with its modality's preset. Per set:
   images whose count is identical, the largest relative difference of the count and of the
   score, and Spearman's rho of the score against |defocus| on each device (real series).
2. **Speed.** Median wall time of one call on a 1024 x 1024 8-bit image given as a NumPy array
   (so the copy to the GPU and the results back are inside the time, as an endpoint scores a
   file), per preset, GPU against one CPU thread of the same machine; the band inverses by
   matrix products (the GPU's default up to ``MATRIX_MAX_SIDE`` px) against CuPy's inverse
   DCTs, per image size; and images per second
   through :func:`scopefx.score_files` over ``--files`` TIFF files written to a temporary
   folder (read, score, judge: the endpoint's whole job), GPU with ``--gpu-workers`` threads
   against the CPU with one thread per core. The published GPU code of the MHFD paper reached
   50 Hz on one A100 at 1024 x 1024; that is a figure from elsewhere, printed for scale.
3. **Device memory.** The peak of device memory held by arrays during one warm call (a CuPy
   memory hook counts every allocation and free from the pool), per image size and mode, in
   float32 planes of the image (4 bytes per pixel). ``docs/limits.md`` had estimated about
   10.5 planes from the code.
4. **Out of GPU memory.** With the CuPy pool capped below what a 4096 x 4096 image needs,
   :func:`scopefx.focus.score_one` must score it on the CPU instead, with the CPU's count.

Run
---
``python bench/focus_gpu.py [--real DIR] [--quick]``. The exit code is 0 whatever the figures,
except 1 when a check of section 4 fails.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy.stats import spearmanr

import scopefx
from _common import Report, environment_lines, fmt, pass_fail, progress, table
from scopefx import samples

DEFAULT_REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "focus_real"
MODALITY = {"lsfm": "fluorescence", "brightfield": "brightfield", "sem": "em", "em": "em"}
BUNDLED = ("immunohistochemistry", "camera", "coins", "retina")
PUBLISHED_HZ = 50.0  # the MHFD paper's GPU code, one A100, 1024 x 1024 (not measured here)


def _cupy() -> Any:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def _bundled(size: int) -> list[tuple[str, np.ndarray]]:
    return [
        (name, samples.acquire(samples.bundled_image(name, size=size), photons=1000,
                               read_noise=1, dtype=np.uint8, seed=i))
        for i, name in enumerate(BUNDLED)
    ]  # fmt: skip


def _real(data: Path) -> list[dict[str, Any]]:
    with open(data / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "series": row["series"],
            "modality": MODALITY.get(row["modality"].lower(), "em"),
            "defocus": abs(float(row["defocus_um"])),
            "pixels": tifffile.imread(data / row["file"]),
        }
        for row in rows
    ]


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def agreement(report: Report, size: int, real: list[dict[str, Any]]) -> None:
    """Section 1: CPU and GPU scores of the same images."""
    sets: dict[str, list[tuple[np.ndarray, dict[str, Any], float]]] = {}
    for mode in ("exact", "fast"):
        sets[f"bundled {size} px, em {mode}"] = [
            (img, {"modality": "em", "mode": mode}, math.nan) for _, img in _bundled(size)
        ]
    for row in real:
        sets.setdefault(f"{row['series']} ({row['modality']})", []).append(
            (row["pixels"], {"modality": row["modality"]}, row["defocus"])
        )
    rows = []
    for name, items in sets.items():
        progress(f"agreement: {name} ({len(items)} images)")
        same, worst_count, worst_score, cpu_s, gpu_s, dz = 0, 0.0, 0.0, [], [], []
        for pixels, options, defocus in items:
            cpu = scopefx.focus_score(pixels, device="cpu", **options)
            gpu = scopefx.focus_score(pixels, device="gpu", **options)
            same += cpu.features == gpu.features
            worst_count = max(worst_count, _rel(cpu.features, gpu.features))
            worst_score = max(worst_score, _rel(cpu.score, gpu.score))
            cpu_s.append(cpu.score)
            gpu_s.append(gpu.score)
            dz.append(defocus)
        rho = ("-", "-")
        if not any(math.isnan(d) for d in dz) and len(set(dz)) > 2:
            rho = (fmt(spearmanr(dz, cpu_s)[0]), fmt(spearmanr(dz, gpu_s)[0]))
        rows.append(
            [name, f"{same} / {len(items)}", f"{100 * worst_count:.3f} %",
             f"{100 * worst_score:.3f} %", *rho]
        )  # fmt: skip
    report.add("", "1. Agreement: the same images scored on the CPU and on the GPU", "")
    report.add(*table(
        ["images", "same count", "max count diff", "max score diff", "rho CPU", "rho GPU"],
        rows,
    ))  # fmt: skip
    report.add("(rho: Spearman's rho of the score against |defocus| over the series)")


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: FFT plans, the band plan, CuPy's kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def speed(report: Report, size: int, repeats: int, n_files: int, gpu_workers: int) -> None:
    """Section 2: one call, and a batch of files through score_files."""
    import scipy.fft

    image = _bundled(size)[0][1]
    presets = (
        ("em exact", {"modality": "em", "mode": "exact"}),
        ("em fast", {"modality": "em", "mode": "fast"}),
        ("fluorescence", {"modality": "fluorescence"}),
        ("brightfield", {"modality": "brightfield"}),
    )
    rows = []
    for name, options in presets:
        progress(f"speed: one call, {name}")

        def on_gpu(options: dict[str, Any] = options) -> Any:
            return scopefx.focus_score(image, device="gpu", **options)

        def on_cpu(options: dict[str, Any] = options) -> Any:
            with scipy.fft.set_workers(1):
                return scopefx.focus_score(image, device="cpu", **options)

        gpu_ms = _median_ms(on_gpu, repeats)
        cpu_ms = _median_ms(on_cpu, max(3, repeats // 4))
        rows.append(
            [name, fmt(gpu_ms), fmt(1000 / gpu_ms, 1), fmt(cpu_ms), f"{cpu_ms / gpu_ms:.1f}x"]
        )
    report.add("", f"2. Speed at {size} x {size} px, 8-bit", "")
    report.add("One call, NumPy image in, result out (median of the repeats after a warm-up):", "")
    report.add(*table(["preset", "GPU ms", "GPU Hz", "CPU 1 thread ms", "CPU / GPU"], rows))

    _inverse_paths(report, repeats)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        bundled = _bundled(size)
        for i in range(n_files):
            path = Path(tmp) / f"s{i:04d}.tif"
            tifffile.imwrite(path, bundled[i % len(bundled)][1])
            paths.append(str(path))
        rows = []
        for device, workers in (("gpu", 1), ("gpu", gpu_workers), ("cpu", cores)):
            progress(f"speed: score_files, {device}, {workers} worker(s)")
            list(scopefx.score_files(paths[: workers * 2], device=device, workers=workers))
            start = time.perf_counter()
            records = list(scopefx.score_files(paths, device=device, workers=workers))
            seconds = time.perf_counter() - start
            assert all(r.ok for r in records), [r.error for r in records if not r.ok][:3]
            rows.append([device.upper(), str(workers), fmt(seconds, 2), fmt(n_files / seconds, 1)])
    gpu_hz = max(float(r[3]) for r in rows if r[0] == "GPU")
    cpu_hz = float(rows[-1][3])
    report.add("", f"score_files over {n_files} TIFF files (read, score, judge), em exact:", "")
    report.add(*table(["device", "workers", "seconds", "images / s"], rows))
    report.add(
        "",
        f"GPU / CPU ({cores} cores), images per second: {gpu_hz / cpu_hz:.1f}x",
        f"GPU against the paper's 50 Hz on an A100 (not measured here): "
        f"{gpu_hz / PUBLISHED_HZ:.2f}x",
    )


def _inverse_paths(report: Report, repeats: int) -> None:
    """The band inverses by matrix products (the GPU's default up to MATRIX_MAX_SIDE) against
    CuPy's inverse DCTs, per image size: the figures behind that limit."""
    from scopefx.focus import _scalespace

    default = _scalespace.MATRIX_MAX_SIDE
    rows = []
    for size in (512, 1024, 2048, 4096):
        image = _bundled(size)[0][1]
        cells = []
        for limit in (10**9, 0):  # every band by matrix products, then every band by DCTs
            _scalespace.MATRIX_MAX_SIDE = limit
            try:
                progress(f"speed: inverse paths, {size} px, limit {limit}")
                cells.append(_median_ms(
                    lambda image=image: scopefx.focus_score(image, device="gpu", mode="exact"),
                    max(3, repeats // (size // 512)),
                ))  # fmt: skip
            finally:
                _scalespace.MATRIX_MAX_SIDE = default
        chosen = "matrix" if size <= default else "DCT"
        rows.append([f"{size} x {size}", fmt(cells[0]), fmt(cells[1]),
                     f"{cells[1] / cells[0]:.2f}x", chosen])  # fmt: skip
    report.add("", "Band inverses, em exact, one call (GPU ms):", "")
    report.add(
        *table(["image", "matrix products", "inverse DCTs", "DCT / matrix", "default"], rows)
    )


class _Peak:
    """A CuPy memory hook: bytes held by arrays now, and the most held since reset()."""

    def __init__(self, cupy: Any) -> None:
        hook_base = cupy.cuda.memory_hook.MemoryHook
        peak = self

        class Hook(hook_base):  # type: ignore[misc, valid-type]
            name = "scopefx-peak"

            def malloc_postprocess(self, *args: Any, **kwargs: Any) -> None:
                size = kwargs["mem_size"] if "mem_size" in kwargs else args[2]
                with peak.lock:
                    peak.now += size
                    peak.peak = max(peak.peak, peak.now)

            def free_postprocess(self, *args: Any, **kwargs: Any) -> None:
                size = kwargs["mem_size"] if "mem_size" in kwargs else args[1]
                with peak.lock:
                    peak.now -= size

        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.hook = Hook()

    def reset(self) -> None:
        self.peak = self.now


def memory(report: Report, cupy: Any, sizes: Sequence[int]) -> None:
    """Section 3: peak device memory held by arrays during one warm call."""
    peak = _Peak(cupy)
    rows = []
    for size in sizes:
        image = _bundled(size)[0][1]
        cells = []
        for mode in ("exact", "fast"):
            progress(f"memory: {size} px, {mode}")
            scopefx.focus_score(image, device="gpu", mode=mode)  # warm: plans cached
            with peak.hook:
                peak.reset()
                before = peak.now
                scopefx.focus_score(image, device="gpu", mode=mode)
                held = peak.peak - before
            cells += [fmt(held / 2**20, 1), fmt(held / (4 * size * size), 1)]
        rows.append([f"{size} x {size}", *cells])
    report.add("", "3. Device memory: peak held by arrays in one warm call (band plan cached)", "")
    report.add(*table(
        ["image", "exact MiB", "exact planes", "fast MiB", "fast planes"], rows
    ))  # fmt: skip
    pool = cupy.get_default_memory_pool()
    report.add(
        f"(pool after the runs: {pool.used_bytes() / 2**20:.0f} MiB used, "
        f"{pool.total_bytes() / 2**20:.0f} MiB kept; cuFFT work areas come from the same pool)"
    )


def fallback(report: Report, cupy: Any) -> bool:
    """Section 4: an image the GPU has no memory for is scored on the CPU, same count."""
    from scopefx.focus import FocusParams, score_one

    image = _bundled(4096)[0][1]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "big.tif")
        tifffile.imwrite(path, image)
        cpu = score_one(path, FocusParams(), device="cpu")[0]
        pool = cupy.get_default_memory_pool()
        pool.free_all_blocks()
        pool.set_limit(size=64 * 2**20)  # 4096^2 float32 is 64 MiB a plane: not enough
        try:
            gpu = score_one(path, FocusParams(), device="gpu")[0]
        finally:
            pool.set_limit(size=0)
    ok = gpu.ok and gpu.features == cpu.features
    report.add("", "4. Out of GPU memory (pool capped at 64 MiB, a 4096 x 4096 image)", "")
    report.add(
        f"scored: {gpu.status}, {gpu.features} features on the fallback; CPU: {cpu.features}: "
        f"{pass_fail(ok)}"
    )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", type=Path, default=DEFAULT_REAL, help="focus_real folder")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--files", type=int, default=400, help="files for score_files")
    parser.add_argument("--gpu-workers", type=int, default=4, help="threads on the GPU")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and files")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.files = 5, 48
    report = Report()
    report.add("Focus score on a GPU: agreement with the CPU, speed, device memory")
    report.add(*environment_lines())
    cupy = _cupy()
    if cupy is None:
        report.add("", "no CUDA device that CuPy sees: nothing measured (see focus_speed.py)")
        report.emit(args.out)
        return 0
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    report.add(
        f"GPU: {name}, {props['totalGlobalMem'] / 2**30:.0f} GiB; CuPy {cupy.__version__}, "
        f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, "
        f"driver {cupy.cuda.runtime.driverGetVersion()}"
    )
    real = _real(args.real) if (args.real / "manifest.csv").is_file() else []
    if not real:
        report.add(f"(no real series at {args.real}: section 1 has the bundled images only)")
    agreement(report, args.size, real)
    speed(report, args.size, args.repeats, args.files, args.gpu_workers)
    memory(report, cupy, (512, 1024, 2048) if args.quick else (512, 1024, 2048, 4096, 8192))
    ok = fallback(report, cupy)
    report.emit(args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
