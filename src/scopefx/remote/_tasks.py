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
from ..errors import ConfigError, ScopefxError
from ..io._roots import DataRoots

__all__ = [
    "endpoint_info",
    "finish_mosaic",
    "fuse_mosaic",
    "fuse_region",
    "plan_mosaic",
    "score_focus",
]

log = logging.getLogger(__name__)

#: Keys a mosaic job may hold (see :func:`fuse_mosaic`).
JOB_KEYS = frozenset(
    {
        "tiles", "output", "params", "resume", "overwrite", "ngff", "pyramid", "register",
        "flatfield", "preview", "pixel_size_um", "rotation_deg", "skip_missing", "force",
        "workers", "device", "regions", "cluster",
    }
)  # fmt: skip


def _error_item(ref: Any, exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, ScopefxError):
        status, message = exc.status, str(exc)
    else:
        status, message = "error", f"{type(exc).__name__}: {exc}"
    return {"ref": ref, "path": None, "status": status, "error": message, "features": None}


# --------------------------------------------------------------------------------------------
# focus


def score_focus(
    refs: list[str], params: dict[str, Any] | None = None, calibration: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Score a batch of image references; one dict per reference, in order.

    Each dict holds ``ref`` (as sent), ``path`` (as resolved on the endpoint), ``status``
    (``"ok"`` or an error kind: ``missing``, ``corrupt``, ``denied``...), ``error``,
    ``features``, ``density_per_mpx``, the focus-map summary and map, timings (``read_seconds``,
    ``score_seconds``, ``seconds``) and, with a ``calibration``, the ``verdict``. A multi-page
    stack gives ``pages``, one such dict per page.

    Raises
    ------
    ConfigError
        ``refs`` is not a list, or ``params`` / ``calibration`` are invalid: the whole batch
        is wrong, not one item.
    """
    from ..focus import Calibration, FocusParams
    from ..focus._batch import score_one

    if isinstance(refs, (str, bytes)) or not isinstance(refs, (list, tuple)):
        raise ConfigError(f"refs must be a list of image references, got {type(refs).__name__}")
    focus_params = FocusParams.from_dict(params or {})
    cal = None
    if calibration is not None:
        cal = Calibration.from_dict(calibration, source="calibration sent with the batch")
        cal.check_params(focus_params)
    roots = DataRoots.from_env()
    items = []
    for ref in refs:
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
        pages = []
        for record in score_one(resolved, focus_params):
            if cal is not None and record.ok:
                record.apply(cal.verdict(record.density_per_mpx))
            pages.append({"ref": ref, **record.to_dict()})
        seconds = time.perf_counter() - start
        if len(pages) == 1:
            item = pages[0]
        else:
            failed = [p for p in pages if p["status"] != "ok"]
            item = {
                "ref": ref,
                "path": pages[0]["path"],
                "status": "ok" if not failed else failed[0]["status"],
                "error": "" if not failed else f"{len(failed)} of {len(pages)} pages failed",
                "features": None,
                "pages": pages,
            }
        item["seconds"] = round(seconds, 6)
        items.append(item)
    return items


# --------------------------------------------------------------------------------------------
# mosaics


def _job_options(job: Any) -> dict[str, Any]:
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
    return dict(job)


def _load(job: dict[str, Any], roots: DataRoots) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Check every reference of a job against the roots and read its tile table.

    Returns the table and the keyword arguments for planning and for writing.
    """
    from ..fusion import FusionParams, load_flatfield
    from ..io import read_tile_table

    tiles = roots.resolve(job["tiles"])
    output = roots.resolve_output(job["output"])  # under the output roots, never a data root
    table = read_tile_table(
        tiles,
        pixel_size_um=job.get("pixel_size_um"),
        rotation_deg=float(job.get("rotation_deg", 0.0)),
    )
    roots.check_all(table.refs)  # a table inside the roots may still name tiles outside
    flatfield = job.get("flatfield")
    if flatfield not in (None, "estimate"):
        flatfield = load_flatfield(roots.resolve(flatfield))
    preview = job.get("preview")
    write = {
        "params": FusionParams(**(job.get("params") or {})),
        "resume": bool(job.get("resume", False)),
        "overwrite": bool(job.get("overwrite", False)),
        "ngff": str(job.get("ngff", "0.4")),
        "pyramid": bool(job.get("pyramid", True)),
        "register": bool(job.get("register", False)),
        "flatfield": flatfield,
        "device": job.get("device"),
        "workers": job.get("workers"),
        "preview": None if preview is None else roots.resolve_output(preview),
        "skip_missing": bool(job.get("skip_missing", False)),
        "force": bool(job.get("force", False)),
    }
    return table, {"output": output}, write


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


def _prepared(job: dict[str, Any]) -> tuple[Any, dict[str, Any], DataRoots]:
    """Check the job, plan it and create its store: the first half of every mosaic task."""
    from pathlib import Path

    from ..fusion._job import prepare_fusion
    from ..fusion._write import plan_tiles

    job = _job_options(job)
    roots = DataRoots.from_env()
    table, refs, write = _load(job, roots)
    out = Path(refs["output"])
    plan, flatfield, missing, extra = plan_tiles(
        table, out, params=write["params"], flatfield=write["flatfield"],
        register=write["register"], workers=write["workers"], skip_missing=write["skip_missing"],
        force=write["force"], replace_sidecars=write["overwrite"] or write["resume"],
    )  # fmt: skip
    fusion = prepare_fusion(
        plan, out, resume=write["resume"], overwrite=write["overwrite"], ngff=write["ngff"],
        pyramid=write["pyramid"], flatfield=flatfield, device=write["device"], missing=missing,
        extra=extra,
    )  # fmt: skip
    return fusion, write, roots


def fuse_mosaic(job: dict[str, Any]) -> dict[str, Any]:
    """Fuse a mosaic on the endpoint: tile table reference in, output reference out.

    ``job`` holds ``tiles`` and ``output`` (references), and optionally ``params`` (a
    :class:`~scopefx.FusionParams` dict), ``resume``, ``overwrite``, ``ngff``, ``pyramid``,
    ``register``, ``flatfield`` (``"estimate"`` or a reference to a saved flat field),
    ``preview`` (a PNG reference), ``pixel_size_um``, ``rotation_deg``, ``skip_missing``,
    ``force``, ``workers``, ``device`` and ``cluster``.

    Where the chunks run: on the dask cluster the endpoint's configuration names
    (``SCOPEFX_CLUSTER``, e.g. SLURM jobs inside the allocation) when the mosaic has at least
    64 level-0 chunks (``SCOPEFX_CLUSTER_MIN_CHUNKS``) or ``cluster`` is true; otherwise in
    this worker's threads. ``cluster: false`` keeps it in-process.

    Returns the :class:`~scopefx.FusionResult` summary with ``output`` (the reference as sent),
    ``cluster`` (its kind, or ``None``) and ``timings``.
    """
    from ..cluster import open_cluster
    from ..fusion import fuse

    start = time.perf_counter()
    checked = _job_options(job)
    if checked["output"].lower().endswith((".tif", ".tiff")):  # small, in memory, one call
        roots = DataRoots.from_env()
        table, refs, write = _load(checked, roots)
        summary = fuse(table, refs["output"], **write).to_dict()
        summary.update(output=job["output"], cluster=None)
        summary["timings"] = {"total_s": round(time.perf_counter() - start, 4)}
        return summary
    fusion, write, _ = _prepared(checked)
    planned = time.perf_counter()
    spec = _cluster_for(checked, fusion.plan.n_chunks)
    options = {"workers": write["workers"], "preview": write["preview"]}
    if spec is None:
        result = fusion.finish(**options)
    else:
        with open_cluster(spec) as client:
            result = fusion.finish(scheduler=client, **options)
    summary = result.to_dict()
    summary.update(
        output=job["output"],
        cluster=None if spec is None else spec.kind,
        timings={
            "plan_s": round(planned - start, 4),
            "fuse_s": round(time.perf_counter() - planned, 4),
        },
    )
    return summary


def plan_mosaic(job: dict[str, Any]) -> dict[str, Any]:
    """Plan a mosaic and create its output store, without fusing, for fan-out.

    Takes the same ``job`` as :func:`fuse_mosaic` plus ``regions`` (how many pieces to split
    the level-0 chunks into, default 16). Returns ``plan`` (the output reference, which
    :func:`fuse_region` and :func:`finish_mosaic` take), ``regions``, ``chunks``, ``shape``
    and ``state``.
    """
    start = time.perf_counter()
    fusion, _, _ = _prepared(job)
    plan = fusion.plan
    missing = fusion.missing
    n = int(job.get("regions", 16))
    return {
        "plan": job["output"],
        "state": fusion.state,
        "regions": [] if fusion.state == "complete" else fusion.regions(n),
        "chunks": plan.n_chunks,
        "shape": list(plan.full_shape),
        "n_tiles": len(plan.refs),
        "missing": list(missing),
        "seconds": round(time.perf_counter() - start, 4),
    }


def _open_job(plan_ref: str, roots: DataRoots) -> Any:
    from ..fusion._job import FusionJob

    if not isinstance(plan_ref, str) or not plan_ref:
        raise ConfigError(
            f"plan_ref must be the output reference plan_mosaic returned, got {plan_ref!r}"
        )
    return FusionJob.open(roots.resolve_output(plan_ref))


def fuse_region(
    plan_ref: str, region: dict[str, int], workers: int | None = None
) -> dict[str, Any]:
    """Fuse one region (a run of level-0 chunks) of a mosaic prepared by :func:`plan_mosaic`.

    Idempotent: chunks already recorded as done are skipped, so a retried or duplicated
    region costs time, never correctness.
    """
    start = time.perf_counter()
    roots = DataRoots.from_env()
    job = _open_job(plan_ref, roots)
    roots.check_all(job.plan.refs)
    written, skipped = job.write(region, workers=workers)
    return {
        "plan": plan_ref,
        "region": dict(region),
        "written": written,
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 4),
    }


def finish_mosaic(
    plan_ref: str, preview: str | None = None, workers: int | None = None
) -> dict[str, Any]:
    """Write what :func:`fuse_region` calls left undone, the pyramid, and mark the mosaic
    complete. Returns the same summary as :func:`fuse_mosaic`."""
    start = time.perf_counter()
    roots = DataRoots.from_env()
    job = _open_job(plan_ref, roots)
    roots.check_all(job.plan.refs)
    out_preview = None if preview is None else roots.resolve_output(preview)
    result = job.finish(workers=workers, preview=out_preview)
    summary = result.to_dict()
    summary.update(output=plan_ref, timings={"finish_s": round(time.perf_counter() - start, 4)})
    return summary


# --------------------------------------------------------------------------------------------
# the endpoint


def endpoint_info() -> dict[str, Any]:
    """What runs here: scopefx version, backend, GPUs, data roots, host."""
    from importlib import metadata

    from .._backend import list_gpus
    from . import FUNCTION_NAMES

    versions: dict[str, str | None] = {}
    for dist in ("globus-compute-endpoint", "globus-compute-sdk", "numpy", "dask", "zarr"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    gpus = list_gpus()
    return {
        "scopefx": __version__,
        "backend": "cupy" if gpus else "numpy",
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
