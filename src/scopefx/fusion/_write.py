"""The front door of fusion: :func:`prepare` (read the table and the tile headers, register,
estimate the flat field, plan, create the output) returns a job, and ``job.finish()`` writes it.
:func:`fuse` is the two in one call.

An OME-Zarr output is written chunk by chunk, resumably (:class:`~scopefx.fusion.FusionJob`);
a ``.tif`` output is one (Big)TIFF computed in memory (:class:`TiffJob`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ScopefxError
from ..io import TileTable, layout_problems, open_binary, split_ref
from ._blend import Reader, tile_reader
from ._fuse import (
    RGB_CHANNELS,
    colour_samples,
    fused_shape,
    load_tiles,
    plan_loaded,
    tile_layout,
)
from ._job import FusionJob, FusionResult, prepare_fusion
from ._params import FuseOptions, FusionParams
from ._plan import FusionPlan, is_refused_layout
from ._publish import publish

__all__ = ["TiffJob", "fuse", "prepare", "qc"]

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")


def prepare(
    tiles: TileTable | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    params: FusionParams | None = None,
    options: FuseOptions | None = None,
    flatfield: Any = None,
    read: Reader | None = None,
    device: str | None = None,
    workers: int | None = None,
) -> FusionJob | TiffJob:
    """Everything a fusion does before writing pixels; returns the job that writes them.

    The steps, in order: read the tile table and every tile's header (no pixels); register
    the positions from the overlaps (``options.register``; sidecar files beside ``out``);
    estimate or load the flat field (``options.flatfield``); plan (pure geometry; tiles are
    scored for focus only for ``blend="focus"``); create the output store and save the plan
    in it, so that any process can write its chunks (:meth:`FusionJob.open`).

    Parameters
    ----------
    tiles, out, params, read, device, workers
        As for :func:`fuse`.
    options : FuseOptions, optional
        What to read and how to write (default ``FuseOptions()``).
    flatfield : FlatField, optional
        A flat field in memory; takes precedence over ``options.flatfield``.

    Returns
    -------
    FusionJob or TiffJob
        ``job.finish(...)`` writes the mosaic and returns the :class:`FusionResult`.
    """
    started = time.perf_counter()
    options = FuseOptions.resolve(options)
    out = Path(out)
    _check_output_kind(out)
    n_workers = workers or 4
    if options.preview is not None:  # written last, after hours of fusing: checked now
        from ._publish import check_preview

        check_preview(options.preview)
    if options.register and os.path.lexists(out) and not (options.overwrite or options.resume):
        # now, before registration writes its side files beside a mosaic not made from them
        raise ConfigError(
            f"{out} exists; pass --resume to finish it or --overwrite to replace it, or choose "
            "another output"
        )
    table, metas, missing, extra, flatfield, sidecars = _read_and_register(
        tiles, out, options, flatfield, read, n_workers
    )
    try:
        plan = plan_loaded(
            table, metas, params=params, read=read, workers=n_workers, force=options.force
        )
    except ScopefxError as exc:
        if is_refused_layout(exc):
            _report_refused_plan(exc, out, sidecars, extra)
        raise
    # the registration's side files are written once the output is known to be writable (a
    # refused --overwrite or --resume leaves no report beside a mosaic it does not describe)
    job: FusionJob | TiffJob
    if out.suffix.lower() in TIFF_SUFFIXES:
        _check_tiff(plan, out, overwrite=options.overwrite)
        job = TiffJob(out, plan, options, flatfield, read, device, tuple(missing), extra, started)
    else:
        job = prepare_fusion(
            plan, out, resume=options.resume, overwrite=options.overwrite, ngff=options.ngff,
            pyramid=options.pyramid, flatfield=flatfield, read=read, device=device,
            missing=missing, extra=extra, started=started, preview=options.preview,
            channel_names=_names(table, extra, metas), channel_colors=_rgb_colors(extra),
        )  # fmt: skip
    if sidecars is not None:
        sidecars()
    return job


def _report_refused_plan(
    exc: ScopefxError, out: Path, sidecars: Callable[..., Any] | None, extra: dict[str, Any]
) -> None:
    """Planning refused the registered layout (a mosaic over the size limit: a tile placed
    far off): write the registration's QC report beside ``out``, which shows where each tile
    went and why, and name it in the error (or say why it could not be written; never in
    place of the refusal). The report says the plan was refused, so that the next run to the
    same output replaces it (the retry the error suggests just works). Not where ``out``
    exists (``--resume``, ``--overwrite``): its report is the previous run's, describing the
    mosaic there."""
    if sidecars is None or os.path.lexists(out):
        return
    try:
        sidecars(plan_refused=str(exc))
    except (ScopefxError, OSError) as err:  # exists, disk full, ...
        note = f"the registration's QC report was not written: {err}"
    else:
        note = (f"the registration's QC report, which shows where each tile was placed and "
                f"why: {extra['registration']['qc']} (the next run to the same output "
                "replaces it)")  # fmt: skip
    if len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}",)


_PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".pdf", ".svg", ".eps",
                     ".jp2", ".czi", ".nd2", ".lif", ".npy", ".npz", ".h5", ".hdf5", ".csv",
                     ".json", ".txt")  # fmt: skip


def _check_output_kind(out: Path) -> None:
    """Refuse an output named like a file of another kind (``mosaic.png``), or below a file
    (``table.csv/m.ome.zarr``), before any tile is read: it would have become an OME-Zarr
    folder of that name, or failed after the tiles were read and registered."""
    if out.suffix.lower() in _PICTURE_SUFFIXES:
        raise ConfigError(
            f"output {str(out)!r}: the mosaic is written as an OME-Zarr folder (OUT.ome.zarr) "
            f"or as one TIFF (OUT.tif), not as a {out.suffix} file; for a small picture of "
            "the mosaic add a preview (preview= / --preview OUT.png)"
        )
    for parent in Path(os.path.abspath(out)).parents:  # said now, not after the tiles' reading
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ConfigError(f"output {str(out)!r}: {str(parent)!r} is a file, not a folder")
            break


#: What the run summary says of colour tiles, by the samples fused; ``{model}``: RGB, RGBA or
#: both, as the files say; ``{alpha}``: what their alpha does, when they have one.
_COLOUR_NOTE = {
    3: "colour tiles ({model}, samples last): fused as 3 channels red, green, blue{alpha}",
    1: "grey + alpha tiles: the grey plane fused, transparent pixels are no data",
}


def _colour_note(samples: int, metas: Sequence[Any], *, registered: bool) -> str:
    """The summary's note on colour tiles (``samples`` fused, :data:`_COLOUR_NOTE`): RGBA
    said only of tiles with alpha, and that registration correlates the channel sum only
    when it runs (both were said of every RGB(A) mosaic)."""
    if samples != 3:
        return _COLOUR_NOTE[samples]
    kinds = {m.samples for m in metas}
    model = "RGB and RGBA" if len(kinds) > 1 else "RGBA" if "rgba" in kinds else "RGB"
    alpha = " (transparent pixels are no data)" if "rgba" in kinds else ""
    note = _COLOUR_NOTE[3].format(model=model, alpha=alpha)
    return note + (", registered on their sum" if registered else "")


def _names(table: TileTable, extra: dict[str, Any], metas: Sequence[Any] = ()) -> Any:
    """The channel names the instrument file gives, unless the tiles are RGB(A) and it does
    not give one per sample (an RGB OME-TIFF has one Channel of 3 samples): red, green, blue.
    A table that names tiles inside an instrument file (``scan.czi::tile/3``: the
    ``*.registered.csv`` that ``--qc`` writes) takes them from its first tile's header."""
    names = table.extra.get("channel_names")
    if not names and metas and metas[0] is not None:
        names = metas[0].raw.get("channel_names") or None
    if _is_rgb(extra) and (not names or len(names) != len(RGB_CHANNELS)):
        return tuple(n for n, _ in RGB_CHANNELS)
    return names


def _rgb_colors(extra: dict[str, Any]) -> tuple[str, ...] | None:
    return tuple(c for _, c in RGB_CHANNELS) if _is_rgb(extra) else None


def _is_rgb(extra: dict[str, Any]) -> bool:
    """The tiles are RGB(A) images, as their files say (not 3 unnamed samples of a .npy or a
    grey chunky TIFF): their mosaic is named and written as colour."""
    return extra.get("colour_model") == "rgb"


def _read_and_register(
    tiles: TileTable | str | os.PathLike[str],
    out: Path,
    options: FuseOptions,
    flatfield: Any,
    read: Reader | None,
    workers: int,
) -> tuple[TileTable, list[Any], list[str], dict[str, Any], Any, Callable[..., Any] | None]:
    """The first steps of :func:`prepare` and :func:`qc`: the table and the tile headers, the
    layout checks, the flat field (before registration, which correlates corrected tiles),
    and the registration when ``options.register``, whose side files (checked) are written by
    the call returned last (None without registration)."""
    table, metas, missing = load_tiles(tiles, options, workers=workers, read=read)
    extra: dict[str, Any] = {
        "pixel_size_from": _pixel_size_from(table, metas, options.pixel_size_um)
    }
    if table.extra.get("stage_origin_um") is not None:  # an instrument file's stage positions
        extra["stage_origin_um"] = table.extra["stage_origin_um"]
    samples = colour_samples(metas, table.ndim)
    if samples:  # registration and the flat field take the tiles channels first, as fusion
        read = tile_reader(read, samples)
        rgb = samples == 3 and all(m.samples in ("rgb", "rgba") for m in metas)
        if rgb:
            extra["colour_model"] = "rgb"
        extra["colour"] = (
            _colour_note(samples, metas, registered=options.register)
            if rgb or samples == 1
            else f"tiles with {samples} samples last, not marked as colour: fused as {samples} "
            "channels"
        )
        log.info("%s: %s", table.source or "tiles", extra["colour"])
    if table.pixel_size_z_um is not None:
        extra["pixel_size_z_um"] = table.pixel_size_z_um
    if "z_planes" in table.extra:  # what each tile contributes to a 2D mosaic of z-stacks
        extra["z_planes"] = table.extra["z_planes"]
    shapes = tile_layout(table, metas)[0]
    problems = layout_problems(table, shapes)
    for problem in problems:  # a unit mix-up fused to a huge mosaic of lone tiles, unwarned
        log.warning("%s: %s", table.source or "tile layout", problem)
    if problems:
        extra["layout_problems"] = problems
    if flatfield is None and options.flatfield is not None:
        flatfield = _flatfield(options.flatfield, table.refs, read, workers)
        source = options.flatfield
        extra["flatfield"] = (f"estimated from the {len(table)} tiles" if source == "estimate"
                              else f"from {source}") + _shading(flatfield)  # fmt: skip
    elif flatfield is not None:
        extra["flatfield"] = "given" + _shading(flatfield)
    if flatfield is not None:  # every tile fits it, checked before any output is made
        for ref, meta in zip(table.refs, metas, strict=True):
            flatfield.check_shape(fused_shape(meta.shape, samples), ref=ref)
    sidecars = None
    if options.register:
        replace = options.overwrite or options.resume  # a previous run's sidecars
        table, extra["registration"], sidecars = _register(
            table, shapes, out, read, workers, flatfield,
            params=options.registration, replace=replace,
        )  # fmt: skip
    return table, metas, missing, extra, flatfield, sidecars


def qc(
    tiles: TileTable | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    options: FuseOptions | None = None,
    flatfield: Any = None,
    read: Reader | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Register the tiles and write the stitching QC report beside ``out``, without fusing
    (``scopefx fuse --qc``): ``<name>.qc.json``, ``<name>.qc.png`` (the tile graph coloured
    by residual), ``<name>.registered.csv`` and ``<name>.pairs.csv``.

    Returns
    -------
    dict
        The registration summary (``pairs``, ``pairs_used``, ``rms_residual_px``,
        ``overlap_agreement``, ``tiles_unmatched`` and their references ``unmatched_tiles``,
        ``pairs_unchecked_weak``, the paths, ``summary_line``), with ``pixel_size_from`` and
        any ``layout_problems``; :func:`fuse` puts the same summary in
        ``result.extra["registration"]``.

    Raises
    ------
    RegistrationError
        Too few neighbouring tiles give a usable match (unless
        ``options.registration.allow_partial``).
    ConfigError
        ``out`` exists: its side files describe the mosaic there.
    """
    options = FuseOptions.resolve(options).replace(register=True)
    _check_output_kind(Path(out))  # the report is named after the mosaic it would describe
    if os.path.lexists(out):  # its side files describe it: a new registration's would not
        raise ConfigError(
            f"{out} exists and its side files describe it; the QC report of a new "
            "registration, not fused, would replace them. Name another output (the report is "
            "named after it)"
        )
    *_, extra, _, sidecars = _read_and_register(
        tiles, Path(out), options, flatfield, read, workers or 4
    )
    if sidecars is not None:
        sidecars()
    registration = extra.pop("registration")
    return {**registration, **extra}


def fuse(
    tiles: TileTable | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    params: FusionParams | None = None,
    options: FuseOptions | None = None,
    flatfield: Any = None,
    read: Reader | None = None,
    device: str | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    on_chunk: Callable[..., None] | None = None,
) -> FusionResult:
    """Fuse tiles into an OME-Zarr mosaic on disk, chunk by chunk, resumably.

    ``fuse(...)`` is ``prepare(...).finish(...)``.

    Parameters
    ----------
    tiles : TileTable or path of a tile table (CSV or TileConfiguration.txt)
    out : path
        The ``.ome.zarr`` folder to write; a ``.tif``/``.tiff`` path writes one (Big)TIFF
        instead, for mosaics up to 4 GiB (computed in memory; no resume, no pyramid).
    params : FusionParams, optional
        Blending, interpolation order, chunk size, fill value.
    options : FuseOptions, optional
        What to read and how to write: pixel size, rotation, missing tiles, registration,
        flat field, NGFF version, pyramid, resume, overwrite, preview.
    flatfield : FlatField, optional
        A flat field in memory (instead of ``options.flatfield``).
    read : callable, optional
        ``read(ref) -> array``; default :func:`scopefx.io.read_image`.
    device : {None, "cpu", "gpu", "cuda:N"}
        Where the chunks are computed (``None``: the CPU). A GPU gives the same mosaic, but
        on an H200 it was slower than the CPU's cores (``docs/fusion.md``, "Not done yet").
    scheduler : optional
        dask scheduler for ``compute`` (default: the threaded one, or the active
        ``distributed.Client``).
    workers : int, optional
        Threads of the default scheduler (and for reading tile headers).
    on_chunk : callable, optional
        ``on_chunk(status, total)`` after each chunk, from worker threads: status 1 written,
        2 already done; ``total`` chunks over all pyramid levels.

    Returns
    -------
    FusionResult

    Raises
    ------
    ImageNotFoundError
        Missing tiles (listed), unless ``options.skip_missing``.
    ConfigError
        Mixed tiles, singular affines, a mosaic over the size limit, or an output path that
        holds something else (without ``overwrite``).

    Examples
    --------
    >>> import scopefx                                                    # doctest: +SKIP
    >>> from scopefx.fusion import FuseOptions, FusionParams
    >>> scopefx.fuse("tiles.csv", "mosaic.ome.zarr", params=FusionParams(blend="linear"),
    ...              options=FuseOptions(register=True, preview="mosaic.png"))
    """
    job = prepare(
        tiles, out, params=params, options=options, flatfield=flatfield, read=read,
        device=device, workers=workers,
    )  # fmt: skip
    return job.finish(scheduler=scheduler, workers=workers, on_chunk=on_chunk)


def _shading(flatfield: Any) -> str:
    """What a flat field corrects, in words: its spread about the mean and its range."""
    flat = np.asarray(flatfield.flat, dtype=np.float64)
    mean = float(flat.mean())
    dark = "" if getattr(flatfield, "dark", None) is None else ", with a dark"
    return (f" (corrects {100 * float(flat.std()) / mean:.1f} % rms shading, gains "
            f"{mean / float(flat.max()):.2f}-{mean / float(flat.min()):.2f}{dark})")  # fmt: skip


def _flatfield(spec: str, refs: Sequence[str], read: Reader | None, workers: int = 1) -> Any:
    """The flat field ``FuseOptions.flatfield`` names: estimated from the tiles ``refs``, a
    saved ``.npz``, or ``FLAT[,DARK]`` images."""
    from ._flatfield import estimate_flatfield, load_flatfield

    if spec == "estimate":
        return estimate_flatfield(refs, read=read, workers=workers)
    flat, _, dark = spec.partition(",")
    return load_flatfield(flat, dark or None)


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
        store, inner = split_ref(first.path)  # 'scan.czi::tile/0' is not a file named '0'
        return f"{first.pixel_size_from} of {store.name}" + (f"::{inner}" if inner else "")
    return "tile table"


def _register(
    table: TileTable, shapes: np.ndarray, out: Path, read: Reader | None, workers: int,
    flatfield: Any = None, *, params: Any = None, replace: bool = False,
) -> tuple[TileTable, dict[str, Any], Callable[..., Any]]:  # fmt: skip
    """Register and check the sidecars and the QC report beside ``out``; the refined table,
    the run's registration summary, and the call that writes those files."""
    from ._qc import registered_report, report_summary, sidecar

    reg, report, write = registered_report(
        table, out, params=params, read=read, shapes=shapes, flatfield=flatfield,
        workers=workers, replace=replace,
    )  # fmt: skip
    qc_json, qc_png = sidecar(out, ".qc.json"), sidecar(out, ".qc.png")
    used = sum(p.used for p in reg.pairs)
    log.info("registration: %d of %d pairs used, rms %.3f px", used, len(reg.pairs),
             reg.rms_residual_px)  # fmt: skip
    unmatched = [reg.table.refs[k] for k in reg.unmatched_tiles()]
    summary = {
        "pairs": len(reg.pairs),  # corner pairs included: pairs_side is what the line counts
        "pairs_side": len(reg.pairs) - report["summary"]["pairs_corner"],
        "pairs_corner": report["summary"]["pairs_corner"],
        "pairs_used": used,
        "rms_residual_px": reg.rms_residual_px,
        "overlap_agreement": report["summary"]["overlap_agreement"],
        "tiles_unmatched": len(unmatched),  # as in the QC report's summary
        "unmatched_tiles": unmatched,  # their references: placed without a used pair
        # used pairs of NCC under 0.8 that no loop checks: the likeliest wrong placements
        "pairs_unchecked_weak": report["summary"]["pairs_unchecked_weak"],
        "table": str(sidecar(out, ".registered.csv")),
        "pairs_csv": str(sidecar(out, ".pairs.csv")),
        "qc": str(qc_json),
        "qc_png": str(qc_png),
        "summary_line": report_summary(report),
    }
    return reg.table, summary, write


TIFF_LIMIT_GIB = 4.0
#: The TIFF ``Software`` tag of a mosaic scopefx wrote; ``overwrite`` replaces only such a TIFF.
TIFF_SOFTWARE = "scopefx fuse"


def _check_tiff(plan: FusionPlan, out: Path, *, overwrite: bool) -> None:
    """A TIFF mosaic fits the TIFF limit, and its path is free (or, with ``overwrite``, a
    TIFF mosaic scopefx wrote)."""
    nbytes = math.prod(plan.full_shape) * np.dtype(plan.dtype).itemsize
    if nbytes > TIFF_LIMIT_GIB * 2**30:
        raise ConfigError(
            f"a {nbytes / 2**30:.1f} GiB mosaic is too large for a TIFF (limit "
            f"{TIFF_LIMIT_GIB:g} GiB, computed in memory); write OME-Zarr (OUT.ome.zarr)"
        )
    if os.path.lexists(out):
        if not overwrite:
            raise ConfigError(f"output {out} exists; pass --overwrite to replace it")
        _check_tiff_overwrite(out, plan)


def _check_tiff_overwrite(out: Path, plan: FusionPlan) -> None:
    """``overwrite`` of a TIFF output: only a regular file scopefx wrote, never a tile."""
    real = os.path.realpath(out)
    if any(os.path.realpath(ref.partition("::")[0]) == real for ref in plan.refs):
        raise ConfigError(f"--overwrite refused: {out} is one of the tiles; choose another output")
    software = None
    if not out.is_symlink() and out.is_file():
        import tifffile

        try:
            with (
                open_binary(out) as fh,
                tifffile.TiffFile(fh, name=out.name, _multifile=False) as tif,
            ):
                tag = tif.pages.first.tags.get(305)  # Software
                software = None if tag is None else tag.value
        except (OSError, ValueError, tifffile.TiffFileError):
            software = None
    if software != TIFF_SOFTWARE:
        raise ConfigError(
            f"--overwrite refused: {out} is not a TIFF mosaic scopefx wrote; overwrite replaces "
            "only those. Choose another output path"
        )


@dataclass
class TiffJob:
    """A planned mosaic written as one TIFF (:func:`prepare` with a ``.tif`` output)."""

    out: Path
    plan: FusionPlan
    options: FuseOptions
    flatfield: Any = None
    read: Reader | None = None
    device: str | None = None
    missing: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    state: str = "new"

    def finish(
        self,
        *,
        scheduler: Any = None,
        workers: int | None = None,
        on_chunk: Callable[..., None] | None = None,
        preview: str | os.PathLike[str] | None = None,
    ) -> FusionResult:
        """Compute the mosaic in memory and write it to a temporary name, renamed when
        complete, then the preview (``preview``, default ``options.preview``); ``on_chunk`` is
        not used for TIFF output."""
        result = _fuse_tiff(
            self.plan, self.out, list(self.missing), self.extra, self.started,
            overwrite=self.options.overwrite, flatfield=self.flatfield, read=self.read,
            device=self.device, scheduler=scheduler, workers=workers,
        )  # fmt: skip
        preview = preview if preview is not None else self.options.preview
        if preview is not None:
            from ._publish import publish_preview

            publish_preview(preview, self.out, self.plan)
        return result


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

    _check_tiff(plan, out, overwrite=overwrite)  # again: the path may have changed since
    nbytes = math.prod(plan.full_shape) * np.dtype(plan.dtype).itemsize
    scheduler, workers = lazy.pop("scheduler"), lazy.pop("workers")
    options = {"num_workers": workers} if workers and scheduler is None else {}
    data = fuse_lazy(plan, **lazy).compute(scheduler=scheduler, **options)
    axes = ("C" if plan.channel_shape else "") + "ZYX"[-plan.ndim :]
    photometric = None
    if _is_rgb(extra) and plan.ndim == 2:  # RGB tiles make an RGB TIFF, samples last
        data, axes, photometric = np.moveaxis(data, 0, -1), "YXS", "rgb"
    meta: dict[str, Any] = {"axes": axes}
    resolution = None
    if plan.pixel_size_um:
        meta.update(PhysicalSizeX=plan.pixel_size_um, PhysicalSizeY=plan.pixel_size_um)
        resolution = (1e4 / plan.pixel_size_um, 1e4 / plan.pixel_size_um)
        if plan.ndim == 3:
            meta["PhysicalSizeZ"] = plan.pixel_size_z_um or plan.pixel_size_um

    def write(tmp: Path) -> None:
        tifffile.imwrite(tmp, data, ome=True, metadata=meta, bigtiff=nbytes > 2**31,
                         tile=(256, 256) if min(plan.shape[-2:]) >= 256 else None,
                         resolution=resolution,
                         resolutionunit="CENTIMETER" if resolution else None,
                         photometric=photometric,
                         compression="zlib", software=TIFF_SOFTWARE)  # fmt: skip

    publish(out, write, replace=overwrite)
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
