"""The functions scopefx registers with Globus Compute, as endpoints run them.

Each is a module-level function whose imports are inside its body, as Globus Compute
documents: the function is serialized on the client, and everything it needs is imported on
the endpoint, where scopefx is installed. Inputs and outputs are JSON-able and small:
references (paths on the endpoint's filesystem, ``store.zarr::array``) go in, summaries come
out; pixels never travel. On an endpoint every reference resolves only inside the data roots
its configuration sets (``SCOPEFX_DATA_ROOTS``).

=================  ========================================================================
``score_focus``    a batch of image references -> one record per reference, in order
``fuse_mosaic``    a tile table reference and an output reference -> the mosaic's summary
``plan_mosaic``    like ``fuse_mosaic``, but only plans and creates the store, for fan-out
``fuse_region``    fuse one region of a planned mosaic (many of these run at once)
``finish_mosaic``  the rest of a planned mosaic: leftover chunks, pyramid, completion
``endpoint_info``  scopefx version, backend, GPUs and data roots of the endpoint
=================  ========================================================================
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "endpoint_info",
    "finish_mosaic",
    "fuse_mosaic",
    "fuse_region",
    "plan_mosaic",
    "score_focus",
]


def score_focus(refs: list[str], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score image references for focus (MHFD); one dict per reference, in order.

    One bad reference never fails the batch: its dict has ``status`` (``missing``,
    ``corrupt``, ``denied``...) and ``error``. ``params`` is a :class:`scopefx.FocusParams`
    dict. Scores only: verdicts are the caller's (:class:`scopefx.focus.FocusRun`).
    """
    from scopefx.remote import _tasks

    return _tasks.score_focus(refs, params)


def fuse_mosaic(job: dict[str, Any]) -> dict[str, Any]:
    """Fuse the mosaic a job describes on this endpoint: JSON data with ``tiles`` and
    ``output`` (references), ``params`` (:class:`scopefx.FusionParams`), ``options``
    (:class:`scopefx.fusion.FuseOptions`), ``workers`` and ``cluster``.

    See :func:`scopefx.remote._tasks.fuse_mosaic` for the job's keys.
    """
    from scopefx.remote import _tasks

    return _tasks.fuse_mosaic(job)


def plan_mosaic(job: dict[str, Any], regions: int = 16) -> dict[str, Any]:
    """Plan a mosaic and create its store, returning ``regions`` regions to fan out."""
    from scopefx.remote import _tasks

    return _tasks.plan_mosaic(job, regions)


def fuse_region(
    plan_ref: str,
    region: dict[str, int],
    workers: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Fuse one region of a mosaic prepared by :func:`plan_mosaic`; idempotent. With the
    plan's ``fingerprint``, a store that is no longer that plan is refused."""
    from scopefx.remote import _tasks

    return _tasks.fuse_region(plan_ref, region, workers, fingerprint)


def finish_mosaic(
    plan_ref: str,
    preview: str | None = None,
    workers: int | None = None,
    fingerprint: str | None = None,
) -> dict[str, Any]:
    """Finish a mosaic prepared by :func:`plan_mosaic` (leftovers, pyramid, completion). With
    the plan's ``fingerprint``, a store that is no longer that plan is refused."""
    from scopefx.remote import _tasks

    return _tasks.finish_mosaic(plan_ref, preview, workers, fingerprint)


def endpoint_info() -> dict[str, Any]:
    """scopefx version, array backend, GPUs and data roots of the endpoint."""
    from scopefx.remote import _tasks

    return _tasks.endpoint_info()
