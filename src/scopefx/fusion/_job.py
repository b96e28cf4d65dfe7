"""A fusion written in stages, so that its level-0 chunks can be spread over many tasks.

:func:`prepare_fusion` plans the mosaic, creates the OME-Zarr store and saves the plan inside
it (``.scopefx/plan.npz`` and ``job.json``: arrays without pickle, and plain JSON). Any process
that sees the store can then :meth:`FusionJob.open` it and write any subset of the level-0
chunks (:meth:`FusionJob.write`); :meth:`FusionJob.finish` writes what is left, the pyramid,
and records completion. :func:`scopefx.fuse` is the three stages in one call.

Every chunk is written, made durable, and only then recorded as done (:mod:`._resume`), so
regions may overlap, be retried or be lost: the finished store equals a one-process run.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._checks import json_safe, shown
from ..errors import ConfigError, ScopefxError
from ..io import (
    OmeZarrSpec,
    chunk_file,
    create_ome_zarr,
    created,
    fsync_file,
    read_bytes,
    split_ref,
)
from ._blend import Reader, TileCache, fuse_chunk
from ._params import FusionParams
from ._plan import FusionPlan, check_plan_limits
from ._resume import STATE_DIR, Progress, _atomic_write

__all__ = ["FusionJob", "FusionResult", "prepare_fusion"]

log = logging.getLogger(__name__)

_PLAN_ARRAYS = (
    "affines", "tile_shapes", "origin", "boxes", "chunk_ptr", "chunk_tiles", "weights", "focus"
)  # fmt: skip


def flatfield_digest(flatfield: Any) -> str:
    if flatfield is None:
        return ""
    h = hashlib.sha256(np.ascontiguousarray(flatfield.flat, dtype=np.float32).tobytes())
    if getattr(flatfield, "dark", None) is not None:
        h.update(np.ascontiguousarray(flatfield.dark, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# per-chunk work


def _open_level(path: str, level: int) -> Any:
    """Level ``level`` of the store at ``path``, opened once per process while its metadata
    file is the same one: a store planned again (``overwrite`` by another worker, another
    shape) has new metadata, and a worker that kept the old array wrote plan A's chunks into
    plan B's store (79 % of every level zeros)."""
    folder = os.path.join(path, str(level))
    stamp: tuple[int, int] | None = None
    for name in ("zarr.json", ".zarray"):
        try:
            st = os.stat(os.path.join(folder, name))
        except OSError:
            continue
        stamp = (st.st_ino, st.st_mtime_ns)
        break
    return _open_level_as(path, level, stamp)


@functools.lru_cache(maxsize=32)
def _open_level_as(path: str, level: int, stamp: tuple[int, int] | None) -> Any:
    import zarr

    from ..io import EndpointLimits
    from ..io.confined import open_store

    folder = os.path.join(path, str(level))
    array = zarr.open_array(store=open_store(folder, mode="r+"), mode="r+")
    # its metadata lies in the caller's output folder: chunks edited to be huge would be
    # read and written whole for every chunk of the plan
    EndpointLimits.from_env().check_chunk(array.chunks, array.dtype, folder)
    return array


def _store_chunk(
    out: Path, level: int, zarr_format: int, lead: int, index: tuple[int, ...], data: np.ndarray,
    chunk: tuple[int, ...],
) -> None:  # fmt: skip
    """Write one chunk and make it durable (fsync every channel-chunk file it made)."""
    arr = _open_level(os.fspath(out), level)
    sl = tuple(
        slice(i * c, i * c + s) for i, c, s in zip(index, chunk, data.shape[lead:], strict=True)
    )
    arr[(*(slice(None),) * lead, *sl)] = data
    for lead_index in np.ndindex(
        *[math.ceil(s / c) for s, c in zip(arr.shape[:lead], arr.chunks[:lead], strict=True)]
    ):
        fsync_file(chunk_file(out, level, zarr_format, (*lead_index, *index)))


def _do_chunk(
    compute: Callable[[tuple[int, ...]], np.ndarray],
    out: Path,
    level: int,
    zarr_format: int,
    lead: int,
    chunk: tuple[int, ...],
    progress: Progress,
    on_chunk: Callable[..., None] | None,
    index: tuple[int, ...],
) -> int:
    """One output chunk of one level: skip it if recorded done, else compute, write, make
    durable, record. Returns 1 (written) or 2 (already done)."""
    if progress.is_done(level, index):
        status = 2
    else:
        _store_chunk(out, level, zarr_format, lead, index, compute(index), chunk)
        progress.mark(level, index)
        status = 1
    if on_chunk is not None:
        on_chunk(status)
    return status


def _block_task(task: Callable[[tuple[int, ...]], int], block_info: Any = None) -> np.ndarray:
    index = tuple(block_info[None]["chunk-location"])
    return np.full((1,) * len(index), task(index), dtype=np.int8)


def _fused(
    plan: FusionPlan,
    read: Reader | None,
    flatfield: Any,
    device: str | None,
    cache: TileCache,
    index: tuple[int, ...],
) -> np.ndarray:
    return fuse_chunk(plan, index, read=read, flatfield=flatfield, device=device, cache=cache)


def _downsample(block: np.ndarray, lead: int, dtype: str) -> np.ndarray:
    """Mean of 2^ndim blocks; an odd edge averages the pixels it has."""
    from ._blend import _to_dtype

    x: Any = block.astype(np.float32 if np.dtype(dtype).itemsize <= 2 else np.float64)
    for axis in range(lead, x.ndim):
        n = x.shape[axis]
        even = [slice(None)] * x.ndim
        odd = [slice(None)] * x.ndim
        even[axis], odd[axis] = slice(0, n - n % 2, 2), slice(1, n, 2)
        pairs = (x[tuple(even)] + x[tuple(odd)]) * 0.5
        if n % 2:
            last = [slice(None)] * x.ndim
            last[axis] = slice(n - 1, n)
            pairs = np.concatenate([pairs, x[tuple(last)]], axis=axis)
        x = pairs
    return _to_dtype(x, dtype, np)


def _halved(
    out: Path, level: int, lead: int, chunk: tuple[int, ...], dtype: str, index: tuple[int, ...]
) -> np.ndarray:
    """A chunk of pyramid ``level``, from the 2x larger region of ``level - 1``."""
    target = _open_level(os.fspath(out), level)
    source = _open_level(os.fspath(out), level - 1)
    lo = [i * c for i, c in zip(index, chunk, strict=True)]
    hi = [min(a + c, s) for a, c, s in zip(lo, chunk, target.shape[lead:], strict=True)]
    src = tuple(
        slice(2 * a, min(2 * b, s)) for a, b, s in zip(lo, hi, source.shape[lead:], strict=True)
    )
    return _downsample(np.asarray(source[(*(slice(None),) * lead, *src)]), lead, dtype)


def _run(
    task: Callable[[tuple[int, ...]], int],
    grid: Sequence[int],
    only: Sequence[tuple[int, ...]] | None,
    scheduler: Any,
    workers: int | None,
) -> np.ndarray:
    """Run ``task`` on every chunk of ``grid`` (one ``map_blocks`` task each), or on the
    chunks ``only`` lists; returns the statuses."""
    import dask
    import dask.array as da

    options = {"num_workers": workers} if workers and scheduler is None else {}
    # the task (it holds the plan: 2 MiB for 10,000 tiles) is one node of the graph that every
    # chunk depends on, so a distributed scheduler ships it to each worker once, not per chunk
    shared = dask.delayed(task, name=f"scopefx-plan-{uuid.uuid4().hex}")
    if only is None:
        blocks = da.map_blocks(
            _block_task, shared, chunks=tuple((1,) * g for g in grid), dtype=np.int8
        )
        return np.asarray(blocks.compute(scheduler=scheduler, **options))
    tasks = [dask.delayed(_call, pure=False)(shared, tuple(index)) for index in only]
    return np.asarray(dask.compute(*tasks, scheduler=scheduler, **options), dtype=np.int8)


def _call(task: Callable[[tuple[int, ...]], int], index: tuple[int, ...]) -> int:
    return task(index)


# --------------------------------------------------------------------------------------------
# the job and its result


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

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionResult:
        """Rebuild from :meth:`to_dict` output (e.g. what an endpoint returned); keys that are
        not fields go to ``extra``."""
        if not isinstance(data, dict):
            raise ConfigError(f"a fusion result is a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "plan"}
        fields = {k: v for k, v in data.items() if k in names}
        for key in ("shape", "chunks", "origin_px", "missing"):
            if key in fields:
                fields[key] = tuple(fields[key])
        if "origin_px" in fields:  # written x, y[, z]; kept in index order
            fields["origin_px"] = fields["origin_px"][::-1]
        data = {k: v for k, v in data.items() if k != "axes_px"}
        try:
            return cls(**fields, extra={k: v for k, v in data.items() if k not in names})
        except TypeError as exc:
            raise ConfigError(f"incomplete fusion result {sorted(data)}: {exc}") from None


@dataclass
class FusionJob:
    """A planned mosaic and its output store, written in stages (see the module docs).

    Create one with :func:`prepare_fusion`, or re-open a prepared store with
    :meth:`FusionJob.open` (from any process that sees the store).
    """

    out: Path
    plan: FusionPlan
    spec: OmeZarrSpec
    progress: Progress
    state: str
    """``"new"``, ``"resume"`` or ``"complete"``."""
    flatfield: Any = None
    device: str | None = None
    read: Reader | None = None
    missing: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    preview: str | os.PathLike[str] | None = None
    """Where :meth:`finish` writes the PNG preview by default (``FuseOptions.preview``)."""
    written: int = 0
    resumed: int = 0
    started: float = field(default_factory=time.perf_counter)
    _cache: TileCache = field(default_factory=TileCache, repr=False)

    @property
    def lead(self) -> int:
        return len(self.plan.channel_shape)

    def level_grids(self) -> list[tuple[int, ...]]:
        """Chunk grid of every pyramid level."""
        return [
            tuple(
                math.ceil(s / c) for s, c in zip(shape[self.lead :], self.plan.chunk, strict=True)
            )
            for shape in self.spec.level_shapes()
        ]

    @property
    def total_chunks(self) -> int:
        return sum(math.prod(g) for g in self.level_grids())

    # -- persistence --------------------------------------------------------------------------

    def save(self) -> None:
        """Save the plan in the store's state folder, for :meth:`open` elsewhere."""
        state = self.out / STATE_DIR
        plan = self.plan
        arrays = {name: np.asarray(getattr(plan, name)) for name in _PLAN_ARRAYS}
        if self.flatfield is not None:
            arrays["flatfield_flat"] = np.asarray(self.flatfield.flat)
            if self.flatfield.dark is not None:
                arrays["flatfield_dark"] = np.asarray(self.flatfield.dark)
        with created(state / "plan.npz", replace=True) as fh:  # no link followed
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        meta = {
            "fingerprint": self.progress.fingerprint,
            "refs": list(plan.refs),
            "channel_shape": list(plan.channel_shape),
            "dtype": plan.dtype,
            "shape": list(plan.shape),
            "chunk": list(plan.chunk),
            "feather_px": plan.feather_px,
            "params": plan.params.to_dict(),
            "pixel_size_um": plan.pixel_size_um,
            "pixel_size_z_um": plan.pixel_size_z_um,
            "samples_last": plan.samples_last,
            "spec": dataclasses.asdict(self.spec),
            "device": self.device,
            "custom_reader": self.read is not None,
            "missing": list(self.missing),
            "extra": self.extra,
        }
        _atomic_write(state / "job.json", json.dumps(meta))

    @classmethod
    def open(
        cls, out: str | os.PathLike[str], *, read: Reader | None = None, device: str | None = None
    ) -> FusionJob:
        """Re-open a store prepared by :func:`prepare_fusion` and not yet finished.

        Raises
        ------
        ConfigError
            ``out`` is not a prepared, unfinished scopefx store, it was prepared with a
            custom reader and none is given, or its saved arrays do not fit its ``job.json``.
        ResourceLimitError
            The saved plan is over this process's limits (checked from ``job.json`` and the
            arrays' headers before any array is decoded).
        """
        from ._flatfield import FlatField

        out = Path(out)
        state = out / STATE_DIR
        try:
            meta = json.loads(read_bytes(state / "job.json", limit=64 * 2**20))
            skeleton = FusionPlan(
                refs=tuple(meta["refs"]),
                channel_shape=tuple(meta["channel_shape"]),
                dtype=meta["dtype"],
                shape=tuple(meta["shape"]),
                chunk=tuple(meta["chunk"]),
                feather_px=meta["feather_px"],
                params=FusionParams(**meta["params"]),
                pixel_size_um=meta["pixel_size_um"],
                pixel_size_z_um=meta.get("pixel_size_z_um"),
                samples_last=int(meta.get("samples_last", 0)),
                **dict.fromkeys(_PLAN_ARRAYS, np.empty(0)),
            )
            check_plan_limits(skeleton)  # before anything is read or allocated for it
            arrays = _read_plan_arrays(state / "plan.npz", skeleton)
        except FileNotFoundError:
            done = Progress(out, "")._finished() if out.is_dir() else None
            what = "is already finished" if done else "was not prepared by scopefx (no saved plan)"
            raise ConfigError(
                f"cannot open fusion job {os.fspath(out)!r}: it {what}; prepare it with "
                "scopefx.fusion.prepare_fusion() (remote: plan_mosaic)"
            ) from None
        if meta["custom_reader"] and read is None:
            raise ConfigError(
                f"fusion job {os.fspath(out)!r} was prepared with a custom tile reader; pass "
                "the same read= to FusionJob.open"
            )
        flatfield = None
        if "flatfield_flat" in arrays:
            flatfield = FlatField(arrays.pop("flatfield_flat"), arrays.pop("flatfield_dark", None))
        saved: dict[str, Any] = {name: arrays[name] for name in _PLAN_ARRAYS}
        plan = dataclasses.replace(skeleton, **saved)
        spec_fields = meta["spec"]
        for key in ("shape", "chunks", "pixel_size", "origin"):
            spec_fields[key] = tuple(spec_fields[key])
        for key in ("channel_names", "channel_colors"):
            if spec_fields.get(key) is not None:
                spec_fields[key] = tuple(spec_fields[key])
        spec = OmeZarrSpec(**spec_fields)
        return cls(
            out=out,
            plan=plan,
            spec=spec,
            progress=Progress(out, meta["fingerprint"], _fingerprint_parts(plan, flatfield, spec)),
            state="resume",
            flatfield=flatfield,
            device=device if device is not None else meta["device"],
            read=read,
            missing=tuple(meta["missing"]),
            extra=meta["extra"],
        )

    # -- regions ------------------------------------------------------------------------------

    def regions(self, n: int) -> list[dict[str, int]]:
        """Split the level-0 chunks into ``n`` (or fewer) contiguous runs, as JSON-able
        ``{"start": a, "stop": b}`` ranges of chunk numbers (C order over the grid)."""
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"number of regions must be an integer >= 1, got {n!r}")
        total = self.plan.n_chunks
        bounds = np.linspace(0, total, min(n, total) + 1).round().astype(int)
        return [{"start": int(a), "stop": int(b)} for a, b in itertools.pairwise(bounds)]

    def region_chunks(self, region: dict[str, int] | None) -> list[tuple[int, ...]] | None:
        """Grid indices of a region from :meth:`regions` (``None``: all chunks)."""
        if region is None:
            return None
        total = self.plan.n_chunks
        try:
            start, stop = int(region["start"]), int(region["stop"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise ConfigError(
                f'a region is {{"start": a, "stop": b}} (chunk numbers), got {shown(region)}'
            ) from None
        if not 0 <= start <= stop <= total:
            raise ConfigError(
                f"region {shown(region)} is outside the {total} level-0 chunks of {self.out}"
            )
        return [
            tuple(int(i) for i in np.unravel_index(c, self.plan.grid)) for c in range(start, stop)
        ]

    # -- writing ------------------------------------------------------------------------------

    def _task(self, level: int, on_chunk: Callable[..., None] | None) -> Callable[..., int]:
        plan = self.plan
        if level == 0:
            compute: Callable[..., np.ndarray] = functools.partial(
                _fused, plan, self.read, self.flatfield, self.device, self._cache
            )
        else:
            compute = functools.partial(_halved, self.out, level, self.lead, plan.chunk, plan.dtype)
        notify = functools.partial(on_chunk, total=self.total_chunks) if on_chunk else None
        return functools.partial(
            _do_chunk, compute, self.out, level, self.spec.zarr_format, self.lead, plan.chunk,
            self.progress, notify,
        )  # fmt: skip

    def write(
        self,
        region: dict[str, int] | None = None,
        *,
        scheduler: Any = None,
        workers: int | None = None,
        on_chunk: Callable[..., None] | None = None,
    ) -> tuple[int, int]:
        """Write the level-0 chunks of ``region`` (default: all) that are not done yet.

        Returns ``(written, already_done)`` chunk counts.
        """
        if self.state == "complete":
            return 0, 0
        only = self.region_chunks(region)
        with self.progress.hold():  # a job writing: no other job may remove the store
            self.progress.check_owner()
            statuses = _run(self._task(0, on_chunk), self.plan.grid, only, scheduler, workers)
        counts = int((statuses == 1).sum()), int((statuses == 2).sum())
        self.written += counts[0]
        self.resumed += counts[1]
        return counts

    def finish(
        self,
        *,
        scheduler: Any = None,
        workers: int | None = None,
        on_chunk: Callable[..., None] | None = None,
        preview: str | os.PathLike[str] | None = None,
    ) -> FusionResult:
        """Write the level-0 chunks still missing, the pyramid, and record completion; then
        the preview (``preview``, default the job's).

        Returns
        -------
        FusionResult
        """
        grids = self.level_grids()
        if self.state == "complete":
            self.resumed = self.total_chunks
        else:
            self.write(scheduler=scheduler, workers=workers, on_chunk=on_chunk)
            with self.progress.hold():
                self.progress.check_owner()
                for level in range(1, len(grids)):
                    task = self._task(level, on_chunk)
                    statuses = _run(task, grids[level], None, scheduler, workers)
                    self.written += int((statuses == 1).sum())
                    self.resumed += int((statuses == 2).sum())
        plan = self.plan
        result = FusionResult(
            path=os.fspath(self.out),
            shape=plan.full_shape,
            dtype=plan.dtype,
            chunks=self.spec.chunks,
            levels=len(grids),
            origin_px=tuple(int(v) for v in plan.origin),
            pixel_size_um=plan.pixel_size_um,
            n_tiles=len(plan.refs),
            missing=self.missing,
            chunks_written=self.written,
            chunks_resumed=self.resumed,
            seconds=time.perf_counter() - self.started,
            extra={
                "blend": plan.params.blend,
                "ngff": self.spec.ngff,
                "feather_px": plan.feather_px,
                **self.extra,
            },
            plan=plan,
        )
        if self.state != "complete":
            self.progress.finish(result.to_dict())
            self.state = "complete"
        preview = preview if preview is not None else self.preview
        if preview is not None:
            from ._publish import publish_preview

            publish_preview(preview, self.out, plan)
        return result


def _read_plan_arrays(path: Path, skeleton: FusionPlan) -> dict[str, np.ndarray]:
    """The arrays of a saved plan (``plan.npz``), each checked from its header against the
    counts of the plan's ``job.json`` (``skeleton``, already held to the limits) before it is
    decoded, then the chunk index checked whole: the file lies in the caller's output folder,
    where they can edit it (a 0.59 MB member declaring 384 MiB was inflated whole, and a
    ``weights`` of the wrong length used as it was)."""
    from ..io import EndpointLimits
    from ..io.confined import LIMIT_ENV, read_npz

    limits = EndpointLimits.from_env()
    n, nd, chunks = len(skeleton.refs), skeleton.ndim, skeleton.n_chunks
    expected = {
        "affines": (n, nd + 1, nd + 1), "tile_shapes": (n, nd), "origin": (nd,),
        "boxes": (n, 2, nd), "chunk_ptr": (chunks + 1,), "weights": (n,), "focus": (n,),
    }  # fmt: skip
    integral = ("tile_shapes", "origin", "boxes", "chunk_ptr", "chunk_tiles")
    pairs = min(n * chunks, 4 * limits.max_chunks)  # (tile, chunk) pairs planning allows

    def refuse(problem: str) -> ConfigError:
        return ConfigError(
            f"the fusion plan '{path}' does not fit its job.json ({n} tiles, {chunks} chunks): "
            f"{problem}; it was not used (edited?): plan the mosaic again"
        )

    def check(name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        if name in expected and shape != expected[name]:
            raise refuse(f"{name!r} has shape {shape}, expected {expected[name]}")
        if name == "chunk_tiles" and (len(shape) != 1 or shape[0] > pairs):
            raise refuse(f"'chunk_tiles' has shape {shape}, expected at most ({pairs},)")
        if name in integral and dtype.kind not in "iu":
            raise refuse(f"{name!r} holds {dtype} values, expected integers")
        if name.startswith("flatfield_"):
            limits.check_image(shape, dtype, f"{path}::{name}")

    arrays = read_npz(
        path, max_bytes=limits.max_image_bytes, setting=LIMIT_ENV["max_image_bytes"],
        what="fusion plan", names=(*_PLAN_ARRAYS, "flatfield_flat", "flatfield_dark"),
        required=_PLAN_ARRAYS, check=check,
    )  # fmt: skip
    ptr, tiles = arrays["chunk_ptr"], arrays["chunk_tiles"]
    if ptr[0] != 0 or ptr[-1] != len(tiles) or (np.diff(ptr) < 0).any():
        raise refuse(f"'chunk_ptr' is not an index into the {len(tiles)} entries of 'chunk_tiles'")
    if len(tiles) and not (tiles.min() >= 0 and tiles.max() < n):
        raise refuse(f"'chunk_tiles' names tiles outside 0..{n - 1}")
    return arrays


def _tile_stamps(refs: Sequence[str]) -> str:
    """A digest of each tile file's size and modification time (of the file, or the Zarr
    store, a reference names): a resume refuses tiles written again since the run began (the
    same paths, shapes and positions, new pixels, were mixed into the finished chunks)."""
    h = hashlib.sha256()
    for ref in refs:
        try:
            path = split_ref(ref)[0]
            st = os.stat(path)
        except (OSError, ValueError, ScopefxError):
            h.update(b"-|")
            continue
        h.update(f"{st.st_size}:{st.st_mtime_ns}|".encode())
    return h.hexdigest()[:16]


def _channel_names(names: Sequence[str] | None, channel_shape: tuple[int, ...]) -> Any:
    """The channel names when they fit the tiles' channels (else dropped, with a log line)."""
    if not names:
        return None
    count = channel_shape[0] if channel_shape else 1
    if len(names) != count:
        log.warning("%d channel names %s for %d channel(s): not written", len(names),
                    list(names), count)  # fmt: skip
        return None
    return tuple(str(n) for n in names)


def _fingerprint_parts(plan: FusionPlan, flatfield: Any, spec: Any) -> dict[str, Any]:
    """What the output's fingerprint is made of, by name, for a refused resume to say what
    differs: digests of the tile list, of the tiles' files, of their positions and of the
    output's format, the flat field's digest, and the blending parameters themselves (the
    feather width the plan settled on follows from the positions and those)."""

    def digest(*what: Any) -> str:
        h = hashlib.sha256()
        for w in what:
            h.update(w.tobytes() if isinstance(w, np.ndarray) else repr(w).encode())
        return h.hexdigest()[:16]

    return {
        "the tile list": digest(plan.refs),
        "the tiles' files (size or modification time)": digest(_tile_stamps(plan.refs)),
        "the tile positions (stage, transforms or registration)": digest(
            np.ascontiguousarray(plan.affines, dtype=np.float64),
            np.ascontiguousarray(plan.origin, dtype=np.float64),
        ),
        "the flat field": str(flatfield_digest(flatfield)),
        "the output format (shape, chunks, dtype, pyramid, pixel size, channels)": digest(
            spec,
            plan.chunk,
            plan.channel_shape,
            plan.samples_last,
            np.ascontiguousarray(plan.weights, dtype=np.float64),
        ),
        "blending": json_safe(plan.params.to_dict()),  # fill NaN as "NaN": strict JSON
    }


def prepare_fusion(
    plan: FusionPlan,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    overwrite: bool = False,
    ngff: str = "0.4",
    pyramid: bool = True,
    flatfield: Any = None,
    read: Reader | None = None,
    device: str | None = None,
    missing: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    started: float | None = None,
    preview: str | os.PathLike[str] | None = None,
    channel_names: Sequence[str] | None = None,
    channel_colors: Sequence[str] | None = None,
) -> FusionJob:
    """Create (or re-open, with ``resume``) the OME-Zarr store for ``plan`` and save the plan
    in it; nothing is fused yet. See :func:`scopefx.fuse` for the parameters.

    Returns
    -------
    FusionJob
        ``job.state`` is ``"new"``, ``"resume"`` or ``"complete"``.
    """
    out = Path(out)
    lead = len(plan.channel_shape)
    if lead > 1:
        raise ConfigError(
            f"tiles with {lead} leading non-spatial axes {plan.channel_shape}; OME-Zarr holds "
            "one channel axis"
        )
    voxel = plan.voxel_um or (1.0,) * plan.ndim
    origin = [float(o) * v for o, v in zip(plan.origin, voxel, strict=True)]
    stage = (extra or {}).get("stage_origin_um")  # x, y[, z] of the tables' position 0
    if stage is not None and plan.voxel_um and len(stage) >= plan.ndim:  # (2D of z-stacks: x, y)
        origin = [o + float(s) for o, s in zip(origin, stage[: plan.ndim][::-1], strict=True)]
    spec = OmeZarrSpec(
        shape=plan.full_shape,
        chunks=(*plan.channel_shape, *plan.chunk),
        dtype=plan.dtype,
        pixel_size=voxel,
        origin=tuple(origin),
        unit="micrometer" if plan.voxel_um else None,
        channels=plan.channel_shape[0] if lead else None,
        channel_names=(names := _channel_names(channel_names, plan.channel_shape)),
        channel_colors=tuple(channel_colors) if names and channel_colors else None,
        ngff=ngff,
        fill_value=plan.params.fill,
        max_levels=10 if pyramid else 1,
    )
    fingerprint = hashlib.sha256(
        f"{plan.fingerprint()}|{flatfield_digest(flatfield)}|{spec}|{_tile_stamps(plan.refs)}".encode()
    ).hexdigest()[:32]
    progress = Progress(out, fingerprint, _fingerprint_parts(plan, flatfield, spec))
    state = progress.begin(resume=resume, overwrite=overwrite, protect=plan.refs)
    job = FusionJob(
        out=out, plan=plan, spec=spec, progress=progress, state=state, flatfield=flatfield,
        device=device, read=read, missing=tuple(missing), extra=dict(extra or {}),
        preview=preview, started=time.perf_counter() if started is None else started,
    )  # fmt: skip
    if state != "complete":
        where = {"origin_px": plan.origin[::-1].tolist(), "axes_px": "xyz"[: len(plan.origin)]}
        create_ome_zarr(out, spec, extra_attrs={"scopefx": where})
        _open_level_as.cache_clear()
        job.save()
    return job
