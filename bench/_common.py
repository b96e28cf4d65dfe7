"""Helpers shared by the focus benchmarks: reports, tables, progress, environment.

This module imports nothing heavy at load time (NumPy and friends are imported inside the
functions that need them), so a benchmark can pin its thread pools before NumPy is loaded.
"""

from __future__ import annotations

import functools
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "THREAD_VARS",
    "Report",
    "Stopwatch",
    "environment_lines",
    "fmt",
    "pass_fail",
    "pin_single_thread",
    "progress",
    "table",
    "thread_pool_lines",
]

#: Environment variables that size the BLAS / OpenMP thread pools of NumPy and SciPy.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Report:
    """Lines of a benchmark summary: printed to stdout and optionally written to a file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def emit(self, out: str | Path | None = None) -> None:
        text = "\n".join(self.lines) + "\n"
        sys.stdout.write(text)
        sys.stdout.flush()
        if out is not None:
            path = Path(out)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


class Stopwatch:
    """Elapsed wall time since creation, and a remaining-time estimate from progress."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def eta(self, done: int, total: int) -> float:
        """Seconds left if the remaining ``total - done`` units take as long as the done ones."""
        return self.elapsed / done * (total - done) if done else math.nan


def progress(message: str) -> None:
    """One progress line on stderr (the summary goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


def fmt(value: float, digits: int = 3) -> str:
    """A float with ``digits`` decimals, ``nan`` spelled out."""
    return "nan" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], *, indent: int = 2
) -> list[str]:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return " " * indent + "  ".join(parts).rstrip()

    rule = " " * indent + "  ".join("-" * w for w in widths)
    return [line(cells[0]), rule, *(line(row) for row in cells[1:])]


@functools.cache
def source_revision() -> str:
    """The git commit of the checkout and how many files under ``src/`` differ from it, as
    they were when the benchmark started (read once, when this module is imported: a long run
    must not report commits made while it ran)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = [line for line in git("status", "--porcelain", "--", "src").splitlines() if line]
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"git {commit}" + (f", {len(changed)} file(s) under src/ changed" if changed else "")


def environment_lines() -> list[str]:
    """Versions and machine, for the header of a result file."""
    import numpy
    import scipy
    import skimage

    import scopefx

    return [
        f"source: {source_revision()}",
        f"scopefx {scopefx.__version__}, numpy {numpy.__version__}, scipy {scipy.__version__}, "
        f"scikit-image {skimage.__version__}, Python {platform.python_version()}",
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.system()} {platform.release()}",
    ]


def pin_single_thread() -> None:
    """Set :data:`THREAD_VARS` to 1. Call it before NumPy is imported: the pools are sized
    when their libraries load, so it raises if NumPy is already there."""
    if "numpy" in sys.modules:
        raise RuntimeError("NumPy was imported before pin_single_thread(): too late to pin")
    for name in THREAD_VARS:
        os.environ[name] = "1"


def thread_pool_lines() -> tuple[list[str], bool]:
    """Describe the thread pools NumPy/SciPy will use; ``ok`` is False if one has > 1 thread.

    Uses threadpoolctl when installed (BLAS / OpenMP pools actually loaded) and always checks
    the SciPy FFT worker count, which scopefx's CPU kernel uses.
    """
    import scipy.fft

    lines = ["env: " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in THREAD_VARS)]
    ok = True
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines.append("threadpoolctl not installed: BLAS/OpenMP pool check skipped")
    else:
        pools = threadpool_info()
        for pool in pools:
            lines.append(
                f"threadpoolctl: {pool.get('internal_api')} ({pool.get('prefix')}): "
                f"{pool.get('num_threads')} thread(s)"
            )
            ok &= pool.get("num_threads") == 1
        if not pools:
            lines.append("threadpoolctl: no BLAS/OpenMP pool loaded")
    workers = scipy.fft.get_workers()
    lines.append(f"scipy.fft workers: {workers}")
    ok &= workers == 1
    return lines, ok


source_revision()  # the checkout as the run starts
