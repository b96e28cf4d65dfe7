"""Scoring many files: one record per image, errors kept per item, verdicts in run order."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._backend import (
    checked_device,
    default_device,
    get_backend,
    is_device_out_of_memory,
    release_device_memory,
)
from .._checks import json_safe
from ..errors import ConfigError, InvalidImageError, ScopefxError
from ..io import SAMPLES_LAST
from ._params import FocusParams
from ._run import FocusRun
from ._scalespace import drop_device_caches
from ._score import FocusResult, as_read, focus_score
from ._verdict import Calibration, RunBaseline, Verdict

__all__ = ["CSV_COLUMNS", "FocusRecord", "score_files", "score_one"]

logger = logging.getLogger(__name__)

#: Columns of the CSV written by ``scopefx focus --csv``, in order.
CSV_COLUMNS = (
    "path",
    "page",
    "status",
    "error",
    "features",
    "density_per_mpx",
    "verdict",
    "ratio",
    "defocus_estimate",
    "bad_cells",
    "threshold",
    "noise_sigma",
    "map_min",
    "map_median",
    "map_max",
    "height",
    "width",
    "downsample",
    "read_seconds",
    "score_seconds",
    "working_distance_mm",
    "focus",
    "modality",
    "noise_limited",
    "colour",
    "block_coded",
    "band_ratio",
    "device",
)


@dataclass
class FocusRecord:
    """The outcome for one image (one page of a stack): a score, or a status and message.

    ``status`` is ``"ok"`` or an error kind (``missing``, ``empty``, ``corrupt``,
    ``unsupported``, ``ndim``, ``too_small``, ``invalid_values``, ``dtype``,
    ``error``); ``error`` holds the message. Everything is plain Python / NumPy.
    ``noise_limited``, ``colour``, ``block_coded``, ``modality`` and ``band_ratio`` are
    those of the :class:`FocusResult` (``None`` / empty / NaN when the image was not scored;
    ``band_ratio`` is NaN, an empty CSV cell, where the preset does not compute it).
    ``device`` is where it was scored (``"cpu"``, ``"gpu"``, ``"cuda:N"``; ``"cpu"`` after the
    GPU ran out of memory for it; empty when it was not scored).
    """

    path: str
    page: int | None = None
    status: str = "ok"
    error: str = ""
    features: int | None = None
    density_per_mpx: float = math.nan
    verdict: str = ""
    ratio: float = math.nan
    defocus_estimate: float = math.nan
    bad_cells: int = 0
    threshold: float = math.nan
    noise_sigma: float = math.nan
    map_min: float = math.nan
    map_median: float = math.nan
    map_max: float = math.nan
    height: int | None = None
    width: int | None = None
    downsample: int = 1
    read_seconds: float = math.nan
    score_seconds: float = math.nan
    working_distance_mm: float | None = None
    focus: float | None = None
    noise_limited: bool | None = None
    colour: str = ""
    block_coded: bool | None = None
    modality: str = ""
    band_ratio: float = math.nan
    device: str = ""
    focus_map: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def apply(self, verdict: Verdict) -> None:
        self.verdict = verdict.status
        self.ratio = verdict.ratio
        self.defocus_estimate = verdict.defocus
        self.bad_cells = verdict.bad_cells

    def row(self) -> dict[str, Any]:
        """The CSV row (:data:`CSV_COLUMNS`)."""
        return {name: getattr(self, name) for name in CSV_COLUMNS}

    @classmethod
    def from_row(cls, row: dict[str, str]) -> FocusRecord:
        """A record from a CSV row as :meth:`row` wrote it (no focus map; unknown columns and
        empty cells ignored), e.g. to plot or re-judge a run from its CSV."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = row.get(f.name)
            if f.name == "focus_map" or text is None or text == "":
                continue
            kind = str(f.type)
            try:
                if "bool" in kind:
                    kwargs[f.name] = text.strip().lower() in ("true", "1")
                elif "int" in kind and "float" not in kind:
                    kwargs[f.name] = int(float(text))
                elif "float" in kind:
                    kwargs[f.name] = float(text)
                else:
                    kwargs[f.name] = text
            except (ValueError, OverflowError):  # OverflowError: int('inf')
                raise ConfigError(
                    f"CSV row of {row.get('path')!r}: {f.name} {text!r} is not a number"
                ) from None
        if "path" not in kwargs:
            raise ConfigError(f"CSV row without a path: {row}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, focus map included as nested lists; every value that is not a finite
        number (NaN: not measured; inf: a ratio to a run baseline of 0) is ``None``, so that
        ``json.dumps(..., allow_nan=False)`` writes it (as ``null``)."""
        out = self.row()
        fmap = self.focus_map  # NaN: a cell with no opaque pixel
        out["focus_map"] = None if fmap is None else fmap.round(1).tolist()
        return json_safe(out, null=True)


def _result_fields(result: FocusResult) -> dict[str, Any]:
    summary = result.summary()
    return {
        "features": result.features,
        "density_per_mpx": result.density_per_mpx,
        "threshold": result.threshold,
        "noise_sigma": result.noise_sigma,
        "map_min": summary["map_min"],
        "map_median": summary["map_median"],
        "map_max": summary["map_max"],
        "height": result.shape[0],
        "width": result.shape[1],
        "downsample": result.downsample,
        "score_seconds": result.seconds,
        "noise_limited": result.noise_limited,
        "colour": result.colour,
        "block_coded": result.block_coded,
        "modality": result.params.modality,
        "band_ratio": result.band_ratio,
        "focus_map": result.focus_map,
    }


def _failed(path: str, exc: BaseException, page: int | None = None) -> FocusRecord:
    status = exc.status if isinstance(exc, ScopefxError) else "error"
    if status == "error" and isinstance(exc, PermissionError):  # file permissions, often
        status = "unreadable"  # fixed once the writer is done (a watch tries it again)
    message = str(exc) if isinstance(exc, ScopefxError) else f"{type(exc).__name__}: {exc}"
    return FocusRecord(path=path, page=page, status=status, error=message)


def _ambiguous_axes(shape: tuple[int, ...], min_side: int) -> InvalidImageError:
    """Why a 3-D array whose last axis is too short for a page's width is not scored."""
    return InvalidImageError(
        f"array of shape {shape} has ambiguous axes: as a stack (pages, H, W) its pages would "
        f"be {shape[-1]} px wide, under the {min_side} px a side needs, and a last axis of "
        f"{shape[-1]} is not grey (1), grey + alpha (2), RGB (3) or RGBA (4) samples; save one "
        "plane (H, W), a stack (pages, H, W), or the one channel to score as (H, W)",
        status="ndim",
    )


def score_one(
    path: str,
    params: FocusParams,
    *,
    device: str | None = None,
    before_page: Callable[[int, int], BaseException | None] | None = None,
) -> list[FocusRecord]:
    """Read and score one file; a stack gives one record per page. Never raises for bad input.

    A 3-D array is a stack (pages, H, W) unless its last axis holds samples: (H, W, 1) is one
    grey plane, (H, W, 2|3|4) one grey + alpha or colour image. One whose last axis is too
    short for a page's side (``params.min_image_px``) gives one record, status ``"ndim"``:
    its axes are ambiguous (channels last?), and none of its pages could be scored.

    ``device`` is where the pixels are scored (:func:`~scopefx._backend.default_device`:
    ``None`` takes ``SCOPEFX_DEVICE``, else the GPU where there is one). An image the GPU has
    no memory for is scored on the CPU (logged; its record's ``device`` says ``"cpu"``).

    ``before_page(page, n_pages)``, called before each page of a stack is scored, may return
    why that page and the rest are not scored (an exception): the page then gets a record with
    its status and message, and scoring stops (an endpoint's task clock, its page limit).
    """
    from ..io import read_image, read_metadata, split_ref

    device = default_device(device)

    start = time.perf_counter()
    try:
        store, inner = split_ref(path)
        path = str(store.absolute()) + ("" if inner is None else f"::{inner}")
        pixels = np.asarray(read_image(path))
    except Exception as exc:
        logger.debug("cannot read %s", path, exc_info=True)
        return [_failed(path, exc)]
    read_seconds = time.perf_counter() - start
    extra: dict[str, Any] = {}
    try:
        meta = read_metadata(path)
        extra = {"working_distance_mm": meta.working_distance_mm, "focus": meta.focus}
        # one page with its samples first is a planar colour TIFF, not a stack of 3 pages
        pixels, params = as_read(pixels, meta.pages, meta.samples, params)
    except Exception:  # metadata is optional: the pixels were read
        logger.debug("no metadata for %s", path, exc_info=True)
    if pixels.ndim == 3 and pixels.shape[-1] == 1:  # (H, W, 1): one grey plane, not H pages
        pixels = pixels[..., 0]
    is_stack = pixels.ndim == 3 and pixels.shape[-1] not in SAMPLES_LAST
    if is_stack and pixels.shape[-1] < params.min_image_px:
        # no page of a (pages, H, W) stack this narrow can be scored: H records of too_small
        # came from what is more likely one image with its channels last
        return [_failed(path, _ambiguous_axes(pixels.shape, params.min_image_px))]
    planes = [(i, pixels[i]) for i in range(pixels.shape[0])] if is_stack else [(None, pixels)]
    records = []
    for page, plane in planes:
        stop = before_page(page, len(planes)) if before_page and page is not None else None
        if stop is not None:
            records.append(_failed(path, stop, page))
            break
        try:
            result, used = _score_plane(
                plane, params, device, path if page is None else f"{path} page {page}"
            )
        except Exception as exc:
            if not isinstance(exc, ScopefxError):
                logger.warning("unexpected error scoring %s", path, exc_info=True)
            records.append(_failed(path, exc, page))
            continue
        records.append(
            FocusRecord(
                path=path,
                page=page,
                read_seconds=read_seconds,
                device=used,
                **extra,
                **_result_fields(result),
            )
        )
    return records


#: One lock per GPU: files are read on all the workers' threads, but scored on a GPU one at a
#: time. Its kernels are short and launched from Python, so threads launching at once mostly
#: fight over the interpreter: on an H200, 1024^2 images went at 65 per second from one
#: thread and 37 from four (bench/focus_gpu.py).
_gpu_locks: dict[str, threading.Lock] = {}
_gpu_locks_guard = threading.Lock()


def _device_lock(device: str) -> contextlib.AbstractContextManager[Any]:
    if device == "cpu":
        return contextlib.nullcontext()
    key = get_backend(device=device).device_id  # "gpu": this thread's current device
    with _gpu_locks_guard:
        return _gpu_locks.setdefault(str(key), threading.Lock())


def _score_plane(
    plane: np.ndarray, params: FocusParams, device: str, name: str
) -> tuple[FocusResult, str]:
    """``focus_score`` on ``device``, and that device; on the CPU instead when the GPU runs
    out of memory."""
    try:
        with _device_lock(device):
            return focus_score(plane, params=params, device=device), device
    except Exception as exc:
        if device == "cpu" or not is_device_out_of_memory(exc):
            raise
    drop_device_caches()  # the band plans and matrices kept on the GPU go first,
    release_device_memory()  # then what the failed call left in CuPy's pools
    logger.warning(
        "%s: out of GPU memory (%d x %d px); scored on the CPU",
        name,
        plane.shape[1],
        plane.shape[0],
    )
    return focus_score(plane, params=params, device="cpu"), "cpu"


def score_files(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    params: FocusParams | None = None,
    workers: int = 1,
    run: FocusRun | None = None,
    calibration: Calibration | None = None,
    baseline: RunBaseline | None = None,
    executor: Executor | None = None,
    on_record: Callable[[FocusRecord], None] | None = None,
    device: str | None = None,
    **overrides: Any,
) -> Iterator[FocusRecord]:
    """Score files and yield one :class:`FocusRecord` per image, in input order, judged.

    A file that cannot be read or scored yields a record with its ``status`` and ``error``; the
    rest of the batch goes on. Files are read and scored concurrently on ``workers`` threads
    (NumPy and the FFTs release the GIL) or on a given ``executor``; records still come out in
    input order, as soon as each one and all before it are done.

    Parameters
    ----------
    paths : list of path-like, or a folder or glob
        Image references (files, ``store.zarr::array``). A single folder or glob is expanded
        (:func:`scopefx.io.as_image_refs`); a single file must be a one-item list.
    params : FocusParams, optional
        Focus parameters; ``**overrides`` are applied on top. Default: the calibration's own
        (``calibration``, or ``run``'s), else ``FocusParams()``.
    workers : int
        Threads used when no ``executor`` is given. On a GPU, files are read on all of them
        and scored one at a time (the GPU is one queue).
    run : FocusRun, optional
        The run's verdict policy (carry one across calls to judge a run that arrives in
        pieces). Default: ``FocusRun(calibration=..., baseline=..., params=...)``.
    calibration, baseline : optional
        Shorthands for a new ``run`` (ignored when ``run`` is given).
    on_record : callable, optional
        Called with each record as it is yielded (e.g. to advance a progress bar).
    device : {None, "auto", "cpu", "gpu", "cuda:N"}, optional
        Where the images are scored. ``None`` takes the environment variable
        ``SCOPEFX_DEVICE``, else ``"auto"``: the GPU where CuPy sees one, else the CPU. The
        scores agree across devices (``docs/performance.md`` gives the measured differences).

    Yields
    ------
    FocusRecord
        Warm-up records (run baseline without history yet) say ``"warmup"`` when yielded.
        Without ``run``, the run is over when the last record has been yielded: the warm-up
        records are then judged in place (:meth:`FocusRun.settle` with ``final=True``), so a
        list of the records holds final verdicts. With ``run``, call ``run.settle()`` when
        the run is over.
    """
    from ..io import as_image_refs

    cal = calibration if calibration is not None else getattr(run, "calibration", None)
    params = FocusParams.resolve(params, calibration=cal, **overrides)
    final = run is None  # our own run: over with the last record (a given one goes on)
    run = FocusRun.resolve(run, params=params, calibration=calibration, baseline=baseline)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    device = checked_device(device)  # a GPU named and not there stops the batch, not each item
    refs = as_image_refs(paths, what="paths")
    own = executor is None
    pool = ThreadPoolExecutor(max_workers=workers) if executor is None else executor

    def judged(records: list[FocusRecord]) -> Iterator[FocusRecord]:
        for record in records:
            run.judge(record)
            if on_record is not None:
                on_record(record)
            yield record

    try:
        # submit lazily, keeping at most a few tasks per worker in flight (bounded memory)
        pending: list[Any] = []
        ahead = max(2, 2 * workers)
        for path in refs:
            pending.append(pool.submit(score_one, path, params, device=device))
            if len(pending) < ahead:
                continue
            yield from judged(pending.pop(0).result())
        for future in pending:
            yield from judged(future.result())
        if final:  # the caller never sees this run: its warm-up records are judged here
            run.settle(final=True)
    finally:
        if own:
            pool.shutdown(wait=True, cancel_futures=True)
