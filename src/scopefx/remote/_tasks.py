"""What the registered functions do, on the endpoint (see :mod:`scopefx.remote.functions`).

Everything here takes and returns JSON-able values. References are resolved inside the
endpoint's data roots (:class:`scopefx.io.DataRoots`, from ``SCOPEFX_DATA_ROOTS``). Focus
scoring never raises for one bad reference: the item carries ``status`` and ``error``.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import time
from typing import Any

from .._version import __version__
from ..errors import ConfigError, ResourceLimitError, ScopefxError
from ..io import DataRoots, EndpointLimits, TaskClock

__all__ = [
    "endpoint_info",
    "finish_mosaic",
    "fuse_mosaic",
    "fuse_region",
    "plan_mosaic",
    "score_focus",
]

log = logging.getLogger(__name__)

#: Keys a mosaic job may hold (see :func:`fuse_mosaic`): what to fuse, how, and where it runs.
JOB_KEYS = frozenset({"tiles", "output", "params", "options", "workers", "cluster"})


def _error_item(ref: Any, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ScopefxError):
        status, message = exc.status, str(exc)
    else:
        status, message = "error", f"{type(exc).__name__}: {exc}"
    return {"ref": ref, "path": None, "status": status, "error": message, "features": None}


class _TaskClock(TaskClock):
    """The task clock (:class:`~scopefx.io.TaskClock`), checked between items, the pages of a
    stack and, through :meth:`on_chunk`, the chunks of a fusion."""

    def on_chunk(self, status: int, total: int) -> None:
        """``on_chunk`` hook of a fusion: called after each chunk is written and recorded."""
        if self.over():
            raise self.error(
                "the chunks written so far are recorded and kept: send the task again (a "
                "resume) to continue, or ask the endpoint's operator for a longer limit"
            )


# --------------------------------------------------------------------------------------------
# focus


def score_focus(refs: list[str], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score a batch of image references; one dict per reference, in order.

    Each dict holds ``ref`` (as sent), ``path`` (as resolved on the endpoint), ``status``
    (``"ok"`` or an error kind: ``missing``, ``corrupt``, ``denied``...), ``error``,
    ``features``, ``density_per_mpx``, the focus-map summary and map, and timings
    (``read_seconds``, ``score_seconds``, ``seconds``). A multi-page stack gives ``pages``,
    one such dict per page. Scores only: the caller's :class:`~scopefx.focus.FocusRun` gives
    the verdicts, so they are the same wherever the scores were computed.

    The endpoint's limits bound the task: its time (``SCOPEFX_TASK_TIMEOUT_S``), checked
    between references and between the pages of a stack, and the pages scored of one stack
    (``SCOPEFX_MAX_PAGES``). A reference not reached has ``status="limit"``; a stack stopped
    part way has ``status="limit"``, its pages scored, and one more page record (the first
    not scored, ``status="limit"``) whose ``error`` says which pages were not scored and why.

    Raises
    ------
    ConfigError
        ``refs`` is not a list, or ``params`` are invalid: the whole batch is wrong, not one
        item.
    """
    from .._backend import checked_device
    from ..focus import FocusParams

    if isinstance(refs, (str, bytes)) or not isinstance(refs, (list, tuple)):
        raise ConfigError(f"refs must be a list of image references, got {type(refs).__name__}")
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"params must be a FocusParams dict, got {type(params).__name__}")
    focus_params = FocusParams.from_dict(params or {})
    # the endpoint's choice (SCOPEFX_DEVICE), never the caller's; a GPU named there and
    # missing fails the batch, not each item
    device = checked_device()
    roots = DataRoots.from_env()
    max_pages = EndpointLimits.from_env().max_pages
    clock = _TaskClock("score_focus")
    items: list[dict[str, Any]] = []
    for n, ref in enumerate(refs):
        if n and clock.over():  # the first reference always runs: every task makes progress
            exc = clock.error(
                f"{len(refs) - n} of {len(refs)} references were not scored: send them again, "
                "or in smaller batches"
            )
            items.extend(_error_item(rest, exc) for rest in refs[n:])
            break
        start = time.perf_counter()
        if not isinstance(ref, str):
            exc = ConfigError(f"a reference must be a string, got {type(ref).__name__}: {ref!r}")
            items.append(_error_item(ref, exc))
            continue
        try:
            resolved = roots.resolve(ref)
        except Exception as exc:
            items.append(_error_item(ref, exc))
            continue
        item = _scored_item(ref, resolved, focus_params, clock, max_pages, device)
        item["seconds"] = round(time.perf_counter() - start, 6)
        items.append(item)
    return items


def _scored_item(
    ref: str, path: str, params: Any, clock: _TaskClock, max_pages: int, device: str
) -> dict[str, Any]:
    """The item of one resolved reference: an image's record, or a stack's pages, scored until
    the task clock or ``max_pages`` stops it between pages."""
    from ..focus import score_one

    stopped: list[BaseException] = []

    def before_page(page: int, n: int) -> BaseException | None:
        stop = _stack_stop(ref, page, n, clock, max_pages)
        if stop is not None:
            stopped.append(stop)
        return stop

    pages = [
        {"ref": ref, **record.to_dict()}
        for record in score_one(path, params, device=device, before_page=before_page)
    ]
    if len(pages) == 1 and not stopped:
        return pages[0]
    failed = [p for p in pages if p["status"] != "ok"]
    if stopped:
        status, error = "limit", str(stopped[0])
    elif failed:
        status, error = failed[0]["status"], f"{len(failed)} of {len(pages)} pages failed"
    else:
        status, error = "ok", ""
    return {
        "ref": ref, "path": pages[0]["path"], "status": status, "error": error,
        "features": None, "pages": pages,
    }  # fmt: skip


def _stack_stop(
    ref: str, page: int, n: int, clock: _TaskClock, max_pages: int
) -> ResourceLimitError | None:
    """Why ``page`` (and the pages after it) of the ``n`` of stack ``ref`` are not scored:
    ``SCOPEFX_MAX_PAGES`` or the task clock; ``None`` to score it. The first page of a
    stack always runs, as the first reference of a task does."""
    rest = f"pages {page} to {n - 1} of the {n} in {ref!r} were not scored"
    if page >= max_pages:
        return ResourceLimitError(
            f"{rest}: a stack is scored up to this endpoint's limit of {max_pages} pages per "
            f"reference (SCOPEFX_MAX_PAGES). A reference cannot select pages: split "
            f"the stack into files of at most {max_pages} pages, or ask the endpoint's "
            "operator to raise the limit"
        )
    if page and clock.over():
        return clock.error(
            f"{rest} (pages 0 to {page - 1} were): split the stack into smaller files, or ask "
            "the endpoint's operator for a longer limit"
        )
    return None


# --------------------------------------------------------------------------------------------
# mosaics


def _checked_job(job: Any) -> dict[str, Any]:
    """The job's keys checked: references are non-empty strings, the rest plain data."""
    if not isinstance(job, dict):
        raise ConfigError(f"a mosaic job is a dict, got {type(job).__name__}")
    unknown = sorted(set(job) - JOB_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown mosaic job key(s) {unknown}; expected some of {sorted(JOB_KEYS)}"
        )
    for key in ("tiles", "output"):
        if not isinstance(job.get(key), str) or not job[key]:
            raise ConfigError(f"mosaic job needs {key!r}: a reference string, got {job.get(key)!r}")
    return {**job, "workers": _workers(job.get("workers"))}


def _workers(value: Any) -> int | None:
    """Threads a task may use: an integer >= 1 (or None: the default), at most this host's
    CPUs, so a remote caller cannot ask one task for thousands of threads."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"workers must be an integer >= 1 or absent, got {value!r}")
    return min(value, os.cpu_count() or 1)


def _load(job: dict[str, Any], roots: DataRoots) -> tuple[Any, Any, Any, Any]:
    """The job's parameters and options, with every reference resolved inside the roots.

    Returns ``(tiles, output, params, options)``: the tile table (read, its tiles checked),
    the output path, :class:`~scopefx.FusionParams` and :class:`~scopefx.fusion.FuseOptions`
    whose references (flat field, preview) are resolved paths.
    """
    from ..fusion import FuseOptions, FusionParams
    from ..io import read_tile_table

    params = FusionParams.from_dict(job.get("params") or {})
    options = FuseOptions.from_dict(job.get("options") or {})
    if options.force:
        raise ConfigError(
            "'force' is not accepted from a remote caller: the size limits are this endpoint's "
            "settings; split the mosaic or ask the endpoint's administrator"
        )
    tiles = roots.resolve(job["tiles"])
    output = roots.resolve_output(job["output"])  # under the output roots, never a data root
    table = read_tile_table(
        tiles, pixel_size_um=options.pixel_size_um, rotation_deg=options.rotation_deg,
        flip_x=options.flip_x, flip_y=options.flip_y, scene=options.scene,
    )  # fmt: skip
    roots.check_all(table.refs)  # a table inside the roots may still name tiles outside
    resolved: dict[str, Any] = {}
    if options.flatfield not in (None, "estimate"):
        if "," in options.flatfield:
            raise ConfigError(
                "on an endpoint, flatfield is 'estimate' or one saved .npz reference, got "
                f"{options.flatfield!r}"
            )
        resolved["flatfield"] = os.fspath(roots.resolve(options.flatfield))
    if options.preview is not None:
        resolved["preview"] = os.fspath(roots.resolve_output(options.preview))
    return table, output, params, options.replace(**resolved)


#: Smallest mosaic (level-0 chunks) sent to the endpoint's cluster when ``cluster`` is unset.
CLUSTER_MIN_CHUNKS = 64


def _cluster_for(job: dict[str, Any], n_chunks: int) -> Any:
    """The endpoint's cluster spec (``SCOPEFX_CLUSTER``) if this job should use it."""
    from ..cluster import CLUSTER_ENV, cluster_from_env

    wanted = job.get("cluster")
    if wanted not in (None, True, False):
        raise ConfigError(f"job key 'cluster' is true, false or absent, got {wanted!r}")
    if wanted is False:
        return None
    spec = cluster_from_env()
    if spec is None:
        if wanted:
            raise ConfigError(
                f"the job asks for a cluster but this endpoint sets no {CLUSTER_ENV}; set it in "
                "the endpoint's worker_init, or send the job without 'cluster'"
            )
        return None
    minimum = int(os.environ.get("SCOPEFX_CLUSTER_MIN_CHUNKS", CLUSTER_MIN_CHUNKS))
    return spec if wanted or n_chunks >= minimum else None


def _prepared(job: Any) -> tuple[Any, dict[str, Any]]:
    """Check the job and :func:`scopefx.fusion.prepare` it: the first half of every mosaic
    task. Returns the job (a FusionJob, or a TiffJob for a ``.tif`` output) and the checked
    job dict."""
    from ..fusion import prepare

    checked = _checked_job(job)
    table, output, params, options = _load(checked, DataRoots.from_env())
    prepared = prepare(
        table, output, params=params, options=options, workers=checked.get("workers")
    )
    return prepared, checked


def fuse_mosaic(job: dict[str, Any]) -> dict[str, Any]:
    """Fuse a mosaic on the endpoint: tile table reference in, output reference out.

    ``job`` is plain JSON data: ``tiles`` and ``output`` (references), optionally ``params``
    (:meth:`scopefx.FusionParams.to_dict`), ``options``
    (:meth:`scopefx.fusion.FuseOptions.to_dict`; its ``flatfield`` and ``preview`` are
    references too), ``workers`` and ``cluster``.

    Where the chunks run: on the dask cluster the endpoint's configuration names
    (``SCOPEFX_CLUSTER``, e.g. SLURM jobs inside the allocation) when the mosaic has at least
    64 level-0 chunks (``SCOPEFX_CLUSTER_MIN_CHUNKS``) or ``cluster`` is true; otherwise in
    this worker's threads. ``cluster: false`` keeps it in-process.

    Returns the :class:`~scopefx.FusionResult` summary with ``output`` (the reference as sent),
    ``cluster`` (its kind, or ``None``) and ``timings``.
    """
    from ..cluster import open_cluster
    from ..fusion import FusionJob

    start = time.perf_counter()
    clock = _TaskClock("fuse_mosaic")  # the task's time: planning (registration) counts too
    prepared, checked = _prepared(job)
    planned = time.perf_counter()
    spec = _cluster_for(checked, prepared.plan.n_chunks)
    if not isinstance(prepared, FusionJob):
        result = prepared.finish(workers=checked.get("workers"))
        spec = None
    elif spec is None:
        result = prepared.finish(workers=checked.get("workers"), on_chunk=clock.on_chunk)
    else:
        with open_cluster(spec) as client:
            result = prepared.finish(
                scheduler=client, workers=checked.get("workers"), on_chunk=clock.on_chunk
            )
    summary = result.to_dict()
    summary.update(
        output=checked["output"],
        cluster=None if spec is None else spec.kind,
        timings={
            "plan_s": round(planned - start, 4),
            "fuse_s": round(time.perf_counter() - planned, 4),
        },
    )
    return summary


def plan_mosaic(job: dict[str, Any], regions: int = 16) -> dict[str, Any]:
    """Plan a mosaic and create its output store, without fusing, for fan-out.

    Takes the same ``job`` as :func:`fuse_mosaic` (an OME-Zarr output) and how many pieces to
    split the level-0 chunks into. Returns ``plan`` (the output reference, which
    :func:`fuse_region` and :func:`finish_mosaic` take), ``fingerprint`` (of this plan: pass
    it to them too, so they refuse a store that is no longer this plan), ``regions``,
    ``chunks``, ``shape`` and ``state``.
    """
    from ..fusion import FusionJob

    start = time.perf_counter()
    if isinstance(regions, bool) or not isinstance(regions, int) or regions < 1:
        raise ConfigError(f"regions must be an integer >= 1, got {regions!r}")
    prepared, checked = _prepared(job)
    if not isinstance(prepared, FusionJob):
        raise ConfigError(
            f"plan_mosaic needs an OME-Zarr output to fan out over, got {checked['output']!r}; "
            "use fuse_mosaic for a TIFF"
        )
    plan = prepared.plan
    return {
        "plan": checked["output"],
        "fingerprint": prepared.progress.fingerprint,
        "state": prepared.state,
        "regions": [] if prepared.state == "complete" else prepared.regions(regions),
        "chunks": plan.n_chunks,
        "shape": list(plan.full_shape),
        "n_tiles": len(plan.refs),
        "missing": list(prepared.missing),
        "seconds": round(time.perf_counter() - start, 4),
    }


def _open_job(plan_ref: str, roots: DataRoots, fingerprint: str | None) -> Any:
    """The planned job stored at ``plan_ref``; refused when ``fingerprint`` (what
    :func:`plan_mosaic` returned) is not the plan stored there now: another job replaced the
    store (``overwrite``) between planning and this task, and writing this region into it
    would mix two mosaics."""
    from ..fusion import FusionJob

    if not isinstance(plan_ref, str) or not plan_ref:
        raise ConfigError(
            f"plan_ref must be the output reference plan_mosaic returned, got {plan_ref!r}"
        )
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise ConfigError(
            f"fingerprint must be the string plan_mosaic returned, got {fingerprint!r}"
        )
    job = FusionJob.open(roots.resolve_output(plan_ref))
    stored = job.progress.fingerprint
    if fingerprint is not None and stored != fingerprint:
        raise ConfigError(
            f"{plan_ref!r} is no longer the mosaic that was planned: its store holds plan "
            f"{stored[:16]}..., this task was given plan {fingerprint[:16]}... (another job "
            "replaced it since). Nothing was written; plan the mosaic again"
        )
    return job


def fuse_region(
    plan_ref: str,
    region: dict[str, int],
    workers: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Fuse one region (a run of level-0 chunks) of a mosaic prepared by :func:`plan_mosaic`.

    Idempotent: chunks already recorded as done are skipped, so a retried or duplicated
    region costs time, never correctness. With ``fingerprint`` (from :func:`plan_mosaic`),
    a store at ``plan_ref`` that is no longer that plan is refused (:class:`ConfigError`).
    """
    start = time.perf_counter()
    if not isinstance(region, dict):  # None fused the whole mosaic, then failed on dict(None)
        raise ConfigError(
            f'a region is {{"start": a, "stop": b}}, one of those plan_mosaic returned, got '
            f"{region!r}; finish_mosaic writes whatever is left"
        )
    roots = DataRoots.from_env()
    workers = _workers(workers)
    job = _open_job(plan_ref, roots, fingerprint)
    job.region_chunks(region)  # its keys and bounds, before anything is written
    roots.check_all(job.plan.refs)
    clock = _TaskClock(f"fuse_region {region!r}")
    written, skipped = job.write(region, workers=workers, on_chunk=clock.on_chunk)
    return {
        "plan": plan_ref,
        "region": dict(region),
        "written": written,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 4),
    }


def finish_mosaic(
    plan_ref: str,
    preview: str | None = None,
    workers: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Write what :func:`fuse_region` calls left undone, the pyramid, and mark the mosaic
    complete. Returns the same summary as :func:`fuse_mosaic`. ``fingerprint`` as for
    :func:`fuse_region`."""
    start = time.perf_counter()
    roots = DataRoots.from_env()
    workers = _workers(workers)
    job = _open_job(plan_ref, roots, fingerprint)
    roots.check_all(job.plan.refs)
    out_preview = None if preview is None else roots.resolve_output(preview)
    clock = _TaskClock("finish_mosaic")
    result = job.finish(workers=workers, preview=out_preview, on_chunk=clock.on_chunk)
    summary = result.to_dict()
    summary.update(output=plan_ref, timings={"finish_s": round(time.perf_counter() - start, 4)})
    return summary


# --------------------------------------------------------------------------------------------
# the endpoint


def endpoint_info() -> dict[str, Any]:
    """What runs here: scopefx version, backend, GPUs, data roots, host."""
    from importlib import metadata

    from .._backend import backend_name, checked_device, default_device, list_gpus
    from ..errors import DeviceUnavailableError
    from ._names import FUNCTION_NAMES

    versions: dict[str, str | None] = {}
    for dist in ("globus-compute-endpoint", "globus-compute-sdk", "numpy", "dask", "zarr"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    gpus = list_gpus()
    device: str | None
    try:  # where score_focus scores: SCOPEFX_DEVICE, else a GPU if any
        device, device_error = checked_device(), None
    except DeviceUnavailableError as exc:  # named there and missing: each batch will say so
        device, device_error = default_device(), str(exc)
    except ConfigError as exc:  # SCOPEFX_DEVICE names no device: said here, not a failure
        device, device_error = None, str(exc)
    return {
        "scopefx": __version__,
        "backend": backend_name(device or ("gpu" if gpus else "cpu")),
        "device": device,
        "device_error": device_error,
        "gpus": gpus,
        "data_roots": DataRoots.from_env().describe(),
        "output_roots": DataRoots.from_env().describe_outputs(),
        "functions": list(FUNCTION_NAMES),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "packages": versions,
        "accelerator": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
