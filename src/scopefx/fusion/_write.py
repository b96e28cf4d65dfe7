"""Write a fused mosaic to OME-Zarr chunk by chunk, resumably, then its pyramid levels.

Level 0 is one dask task per output chunk; each task fuses its chunk, writes it, makes it
durable and only then records it as done (:mod:`._resume`). Pyramid levels follow, chunk by
chunk, each from the level below.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..io._tiles import TileTable, layout_problems
from ._blend import Reader
from ._fuse import load_tiles, plan_loaded, tile_layout
from ._job import prepare_fusion
from ._params import FusionParams
from ._plan import FusionPlan

__all__ = ["FusionResult", "fuse"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FusionResult:
    """What :func:`fuse` wrote (JSON-able with :meth:`to_dict`)."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    levels: int
    origin_px: tuple[int, ...]
    """Mosaic pixel of output index 0, index order; :meth:`to_dict` writes it ``x, y[, z]``."""
    pixel_size_um: float | None
    n_tiles: int
    missing: tuple[str, ...] = ()
    chunks_written: int = 0
    chunks_resumed: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    plan: FusionPlan | None = field(default=None, repr=False, compare=False)
    """The plan that was executed (not part of :meth:`to_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "levels": self.levels,
            "origin_px": list(self.origin_px[::-1]),  # x, y[, z], as docs/fusion.md says
            "axes_px": "xyz"[: len(self.origin_px)],
            "pixel_size_um": self.pixel_size_um,
            "n_tiles": self.n_tiles,
            "missing": list(self.missing),
            "chunks_written": self.chunks_written,
            "chunks_resumed": self.chunks_resumed,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }


# --------------------------------------------------------------------------------------------
# writing


def fuse(
    tiles: TileTable | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    params: FusionParams | None = None,
    resume: bool = False,
    overwrite: bool = False,
    ngff: str = "0.4",
    pyramid: bool = True,
    flatfield: Any = None,
    read: Reader | None = None,
    device: str | None = None,
    register: bool = False,
    preview: str | os.PathLike[str] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    on_chunk: Callable[..., None] | None = None,
    **plan_options: Any,
) -> FusionResult:
    """Fuse tiles into an OME-Zarr mosaic on disk, chunk by chunk, resumably.

    Parameters
    ----------
    tiles : TileTable or path of a tile table (CSV or TileConfiguration.txt)
    out : path
        The ``.ome.zarr`` folder to write; a ``.tif``/``.tiff`` path writes one (Big)TIFF
        instead, for mosaics up to 4 GiB (computed in memory; no resume, no pyramid).
    params : FusionParams, optional
        Blending, interpolation order, chunk size, fill value.
    resume : bool
        Finish an interrupted write: chunks recorded as done are skipped. The result equals
        an uninterrupted run byte for byte.
    overwrite : bool
        Replace whatever is at ``out``.
    ngff : {"0.4", "0.5"}
        NGFF 0.4 on Zarr v2 (default: the most widely readable) or 0.5 on Zarr v3.
    pyramid : bool
        Write downsampled levels (halving until the image fits one chunk).
    flatfield : FlatField or "estimate", optional
        Vignetting correction applied to each tile before placing it; ``"estimate"`` derives
        it from the tiles themselves (:func:`scopefx.fusion.estimate_flatfield`).
    read : callable, optional
        ``read(ref) -> array``; default :func:`scopefx.io.read_image`.
    device : {None, "cpu", "gpu", "cuda:N"}
    register : bool
        Refine the positions from the tiles' overlaps first (:func:`scopefx.fusion.register`,
        on flat-field-corrected tiles when ``flatfield`` is given); the refined table, the
        per-pair residuals and the QC report are written beside ``out`` as
        ``<name>.registered.csv``, ``<name>.pairs.csv``, ``<name>.qc.json`` and
        ``<name>.qc.png``.
    preview : path, optional
        Also save a downsampled PNG with the tile outlines (:func:`write_preview`).
    scheduler : optional
        dask scheduler for ``compute`` (default: the threaded one, or the active
        ``distributed.Client``).
    workers : int, optional
        Threads of the default scheduler (and for reading tile headers).
    on_chunk : callable, optional
        ``on_chunk(status, total)`` after each chunk, from worker threads: status 1 written,
        2 already done; ``total`` chunks over all pyramid levels.
    **plan_options
        ``pixel_size_um``, ``rotation_deg``, ``skip_missing``, ``force``.

    Returns
    -------
    FusionResult

    Raises
    ------
    ImageNotFoundError
        Missing tiles (listed), unless ``skip_missing=True``.
    ConfigError
        Mixed tiles, singular affines, a mosaic over the size limit, or an output path that
        holds something else (without ``overwrite``).
    """
    t0 = time.perf_counter()
    out = Path(out)
    plan, flatfield, missing, extra = plan_tiles(
        tiles, out, params=params, flatfield=flatfield, read=read, register=register,
        workers=workers, **plan_options,
    )  # fmt: skip
    if out.suffix.lower() in (".tif", ".tiff"):
        return _fuse_tiff(
            plan, out, missing, extra, t0, overwrite=overwrite, flatfield=flatfield, read=read,
            device=device, scheduler=scheduler, workers=workers,
        )  # fmt: skip
    job = prepare_fusion(
        plan, out, resume=resume, overwrite=overwrite, ngff=ngff, pyramid=pyramid,
        flatfield=flatfield, read=read, device=device, missing=missing, extra=extra, started=t0,
    )  # fmt: skip
    return job.finish(scheduler=scheduler, workers=workers, on_chunk=on_chunk, preview=preview)


def plan_tiles(
    tiles: TileTable | str | os.PathLike[str],
    out: Path,
    *,
    params: FusionParams | None = None,
    flatfield: Any = None,
    read: Reader | None = None,
    register: bool = False,
    workers: int | None = None,
    **plan_options: Any,
) -> tuple[FusionPlan, Any, list[str], dict[str, Any]]:
    """What :func:`fuse` does before writing: read the table and the tile headers, register
    (sidecar files beside ``out``), plan, estimate the flat field. Returns the plan, the flat
    field, the missing tiles and the run's extra summary (registration)."""
    given = plan_options.get("pixel_size_um")
    table, metas, missing = load_tiles(
        tiles,
        pixel_size_um=plan_options.pop("pixel_size_um", None),
        rotation_deg=plan_options.pop("rotation_deg", 0.0),
        skip_missing=plan_options.pop("skip_missing", False),
        workers=workers or 4,
    )
    extra: dict[str, Any] = {"pixel_size_from": _pixel_size_from(table, metas, given)}
    problems = layout_problems(table, tile_layout(table, metas)[0])
    for problem in problems:  # a unit mix-up fused to a huge mosaic of lone tiles, unwarned
        log.warning("%s: %s", table.source or "tile layout", problem)
    if problems:
        extra["layout_problems"] = problems
    if isinstance(flatfield, str):
        if flatfield != "estimate":
            raise ConfigError(f'flatfield must be a FlatField or "estimate", got {flatfield!r}')
        from ._flatfield import estimate_flatfield

        # before registration, which correlates flat-field-corrected tiles
        flatfield = estimate_flatfield(table.refs, read=read)
    if register:
        tile_shapes = tile_layout(table, metas)[0]
        table, extra["registration"] = _register(
            table, tile_shapes, out, read, workers or 4, flatfield
        )
    plan = plan_loaded(table, metas, params=params, read=read, workers=workers or 4, **plan_options)
    return plan, flatfield, missing, extra


def _pixel_size_from(table: TileTable, metas: list[Any], given: float | None) -> str | None:
    """Where the mosaic's pixel size came from, in words (None: unknown, no physical scale)."""
    if table.pixel_size_um is None:
        return None
    if given is not None:
        return "given (--pixel-size)"
    if "vendor" in table.extra:
        return f"{str(table.extra['vendor']).upper()} file metadata"
    first = metas[0] if metas else None
    if first is not None and first.pixel_size_um == table.pixel_size_um and first.pixel_size_from:
        return f"{first.pixel_size_from} of {Path(first.path).name}"
    return "tile table"


def sidecar(out: Path, suffix: str) -> Path:
    """``mosaic.ome.zarr`` -> ``mosaic<suffix>`` beside it."""
    name = out.name
    for ext in (".ome.zarr", ".zarr"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.with_name(name + suffix)


def _register(
    table: TileTable, shapes: np.ndarray, out: Path, read: Reader | None, workers: int,
    flatfield: Any = None,
) -> tuple[TileTable, dict[str, Any]]:  # fmt: skip
    from ._qc import registration_report, report_summary, write_report
    from ._register import register

    reg = register(table, read=read, shapes=shapes, flatfield=flatfield, workers=workers)
    out.parent.mkdir(parents=True, exist_ok=True)
    refined, pairs = sidecar(out, ".registered.csv"), sidecar(out, ".pairs.csv")
    reg.table.to_csv(refined)
    reg.pairs_to_csv(pairs)
    used = sum(p.used for p in reg.pairs)
    log.info("registration: %d of %d pairs used, rms %.3f px", used, len(reg.pairs),
             reg.rms_residual_px)  # fmt: skip
    report = registration_report(reg, read=read, shapes=shapes, flatfield=flatfield,
                                 workers=workers)  # fmt: skip
    qc_json, qc_png = write_report(report, out)
    summary = {
        "pairs": len(reg.pairs),
        "pairs_used": used,
        "rms_residual_px": reg.rms_residual_px,
        "table": str(refined),
        "pairs_csv": str(pairs),
        "qc": str(qc_json),
        "qc_png": str(qc_png),
        "summary_line": report_summary(report),
    }
    return reg.table, summary


TIFF_LIMIT_GIB = 4.0


def _fuse_tiff(
    plan: FusionPlan,
    out: Path,
    missing: list[str],
    extra: dict[str, Any],
    t0: float,
    *,
    overwrite: bool,
    **lazy: Any,
) -> FusionResult:
    """A small mosaic as one TIFF, written to a temporary name and renamed when complete."""
    import tifffile

    from ._fuse import fuse_lazy

    nbytes = math.prod(plan.full_shape) * np.dtype(plan.dtype).itemsize
    if nbytes > TIFF_LIMIT_GIB * 2**30:
        raise ConfigError(
            f"a {nbytes / 2**30:.1f} GiB mosaic is too large for a TIFF (limit "
            f"{TIFF_LIMIT_GIB:g} GiB, computed in memory); write OME-Zarr (OUT.ome.zarr)"
        )
    if out.exists() and not overwrite:
        raise ConfigError(f"output {out} exists; pass --overwrite to replace it")
    scheduler, workers = lazy.pop("scheduler"), lazy.pop("workers")
    options = {"num_workers": workers} if workers and scheduler is None else {}
    data = fuse_lazy(plan, **lazy).compute(scheduler=scheduler, **options)
    axes = ("C" if plan.channel_shape else "") + "ZYX"[-plan.ndim :]
    meta: dict[str, Any] = {"axes": axes}
    resolution = None
    if plan.pixel_size_um:
        meta.update(PhysicalSizeX=plan.pixel_size_um, PhysicalSizeY=plan.pixel_size_um)
        resolution = (1e4 / plan.pixel_size_um, 1e4 / plan.pixel_size_um)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tifffile.imwrite(tmp, data, ome=True, metadata=meta, bigtiff=nbytes > 2**31,
                     tile=(256, 256) if min(plan.shape[-2:]) >= 256 else None,
                     resolution=resolution, resolutionunit="CENTIMETER" if resolution else None,
                     compression="zlib")  # fmt: skip
    os.replace(tmp, out)
    return FusionResult(
        path=os.fspath(out),
        shape=plan.full_shape,
        dtype=plan.dtype,
        chunks=plan.full_shape,
        levels=1,
        origin_px=tuple(int(v) for v in plan.origin),
        pixel_size_um=plan.pixel_size_um,
        n_tiles=len(plan.refs),
        missing=tuple(missing),
        chunks_written=plan.n_chunks,
        seconds=time.perf_counter() - t0,
        extra={"blend": plan.params.blend, "format": "tiff", **extra},
        plan=plan,
    )
