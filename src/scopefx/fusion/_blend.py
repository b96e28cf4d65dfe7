"""Execute one output chunk of a plan: read the tiles it names, warp what falls inside, blend.

Memory per call is the chunk's accumulators (a weighted sum and a weight sum, float32) plus
the parts of tiles that touch it; never chunk x tiles. Tiles placed by an integer translation
are sliced; other tiles go through ``ndimage.affine_transform`` on the crop that the chunk
needs. Tile pixel weights come from tile coordinates, which for axis-aligned transforms
(translations, scalings) are separable 1-D profiles, and otherwise full coordinate grids.

The arithmetic uses the backend's ``xp``/``ndimage`` only, so the same code runs on CuPy.
"""

from __future__ import annotations

import collections
import math
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._backend import Backend, get_backend
from ..errors import ConfigError
from ._plan import FusionPlan

__all__ = ["SamplesFirst", "TileCache", "fuse_chunk", "read_opaque", "split_alpha", "tile_reader"]

Reader = Callable[[str], Any]

#: Weight factor of pixels in a tile's outer half pixel (beyond its last sample).
_EDGE_WEIGHT = np.float32(1e-3)

#: Spline prefilters reach this far (px) with a weight above 1e-6 (order 3 pole 0.268).
_SPLINE_MARGIN = 12


class TileCache:
    """Thread-safe LRU of decoded tiles, bounded in bytes, for one fusion run.

    Neighbouring chunks share tiles; a worker keeps the most recent ones instead of decoding
    each tile once per chunk it touches. A cache belongs to one run (``token``): pickled to a
    worker process it becomes that process's cache for the run, so tasks on the same worker
    share it, and a later run never sees tiles that changed on disk since.
    """

    def __init__(self, max_bytes: int = 64 * 2**20, token: str | None = None) -> None:
        self.max_bytes = max_bytes
        self.token = token or uuid.uuid4().hex
        self._items: collections.OrderedDict[tuple[Any, str], np.ndarray] = (
            collections.OrderedDict()
        )
        self._bytes = 0
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return _cache_for, (self.token, self.max_bytes)

    def get(self, ref: str, read: Reader) -> np.ndarray:
        key = (read, ref)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        array = np.asarray(read(ref))
        with self._lock:
            if key not in self._items and array.nbytes <= self.max_bytes:
                self._items[key] = array
                self._bytes += array.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return array


_REGISTRY: collections.OrderedDict[str, TileCache] = collections.OrderedDict()
_REGISTRY_LOCK = threading.Lock()


def _cache_for(token: str, max_bytes: int) -> TileCache:
    """The cache of run ``token`` in this process (made on first use; the last 4 runs kept)."""
    with _REGISTRY_LOCK:
        cache = _REGISTRY.get(token)
        if cache is None:
            cache = _REGISTRY[token] = TileCache(max_bytes, token)
            while len(_REGISTRY) > 4:
                _REGISTRY.popitem(last=False)
        return cache


def _default_read(ref: str) -> Any:
    from ..io import read_image

    return read_image(ref)


@dataclass(frozen=True)
class SamplesFirst:
    """A reader of colour (or grey + alpha) tiles, samples last on disk, that returns their
    first ``keep`` samples channels first, ``(keep, Y, X)`` (``keep`` 1: ``(Y, X)``), as
    fusion, registration and the flat field take them. Picklable and hashable (a cache key).
    With ``alpha``, a tile that has an alpha sample after them (RGBA, grey + alpha) comes with
    it as one more channel, ``(keep + 1, Y, X)``, for fusion to mask (see :func:`split_alpha`).
    """

    read: Reader
    keep: int
    alpha: bool = False

    def __call__(self, ref: str) -> np.ndarray:
        tile = np.asarray(self.read(ref))
        if tile.ndim != 3 or tile.shape[-1] < self.keep:
            raise ConfigError(
                f"tile {ref}: read {tile.dtype}{list(tile.shape)}, planned as a colour image "
                f"with at least {self.keep} samples last; tiles must not change after planning"
            )
        keep = self.keep + 1 if self.alpha and tile.shape[-1] == self.keep + 1 else self.keep
        if keep == 1:
            return tile[..., 0]
        return np.ascontiguousarray(np.moveaxis(tile[..., :keep], -1, 0))


def split_alpha(tile: np.ndarray, keep: int, ndim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A tile from ``SamplesFirst(read, keep, alpha=True)`` split into its channels and where
    it is not transparent (alpha > 0), shaped like one channel of it; ``None`` when it has no
    alpha. Transparent pixels (the padding of a PNG export) are no data, as NaN in a float
    tile: fusion, registration and its QC leave them out."""
    if not keep or tile.shape[: tile.ndim - ndim] != (keep + 1,):
        return tile, None
    mask = tile[-1:] > 0
    channels = tile[:-1] if keep > 1 else tile[0]
    if bool(mask.all()):  # opaque everywhere (most RGBA files): nothing to mask
        return channels, None
    return channels, (mask if keep > 1 else mask[0])


def read_opaque(read: Reader, ref: str, ndim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """``read(ref)`` and, when ``read`` reads colour tiles (a :class:`SamplesFirst`) and the
    tile has an alpha, where it is opaque (see :func:`split_alpha`)."""
    if isinstance(read, SamplesFirst):
        return split_alpha(replace(read, alpha=True)(ref), read.keep, ndim)
    return np.asarray(read(ref)), None


def read_masked(read: Reader, ref: str, ndim: int) -> np.ndarray:
    """``read(ref)`` as float32 with NaN where the tile is transparent (see
    :func:`read_opaque`): for estimates that must leave out what holds no data."""
    data, opaque = read_opaque(read, ref, ndim)
    data = np.asarray(data, dtype=np.float32)
    return data if opaque is None else np.where(opaque, data, np.float32(np.nan))


def tile_reader(read: Reader | None, samples_last: int) -> Reader:
    """The reader that gives tiles as fusion takes them: ``read`` (default
    :func:`scopefx.io.read_image`), wrapped in :class:`SamplesFirst` when the tiles are colour
    images (``samples_last`` > 0, see :attr:`FusionPlan.samples_last`); never wrapped twice."""
    read = read or _default_read
    if samples_last and not isinstance(read, SamplesFirst):
        return SamplesFirst(read, samples_last)
    return read


def _check_tile(plan: FusionPlan, k: int, tile: np.ndarray) -> None:
    expected = (*plan.channel_shape, *(int(v) for v in plan.tile_shapes[k]))
    if tile.shape != expected or str(tile.dtype) != plan.dtype:
        raise ConfigError(
            f"tile {k} ({plan.refs[k]}): read {tile.dtype}{list(tile.shape)}, the plan expects "
            f"{plan.dtype}{list(expected)}; all tiles must share dtype and channels, and not "
            "change after planning"
        )


def _work_dtype(dtype: str) -> Any:
    """float32 for integers up to 16 bits (exact, and rounding absorbs the last bit);
    float64 otherwise, so overlapping identical float tiles come back bit for bit."""
    d = np.dtype(dtype)
    return np.float32 if d.kind in "iub" and d.itemsize <= 2 else np.float64


def _profiles(
    coords: list[Any], shape: np.ndarray, plan: FusionPlan, xp: Any
) -> tuple[Any, Any, Any]:
    """Validity, weight and centre distance from tile coordinates (any broadcastable arrays,
    one per axis).

    A pixel is covered when its centre falls on the tile (``-0.5 <= c <= n - 0.5``). The
    outer half pixel lies beyond the last sample, where values are the edge's, not
    interpolated; there the weight is scaled by ``_EDGE_WEIGHT``, so it fills the mosaic's rim
    but never dilutes a neighbour's interpolated value in an overlap."""
    valid = weight = dist = None
    blend = plan.params.blend
    for c, n in zip(coords, shape, strict=True):
        v = (c >= -0.5) & (c <= n - 0.5)
        valid = v if valid is None else valid & v
        if blend in ("linear", "focus", "mean"):
            if blend == "mean":
                w = xp.ones(c.shape, dtype=xp.float32)
            else:
                d = xp.minimum(c + 0.5, n - 0.5 - c)
                w = xp.clip((d + 0.5) / (plan.feather_px + 0.5), 0, 1).astype(xp.float32)
            w = xp.where((c < 0) | (c > n - 1), w * _EDGE_WEIGHT, w)
            weight = w if weight is None else weight * w
        elif blend == "closest":
            r = (xp.abs(c - (n - 1) / 2) / (n / 2)).astype(xp.float32)
            dist = r if dist is None else xp.maximum(dist, r)
    return valid, weight, dist


def _warp(
    tile: Any,
    matrix: np.ndarray,
    offset: np.ndarray,
    out_shape: tuple[int, ...],
    order: int,
    n_channel_axes: int,
    work: Any,
    backend: Backend,
) -> Any:
    """Resample ``tile`` (channels first) onto an output box: out[o] = tile[matrix @ o + offset]."""
    xp, ndi = backend.xp, backend.ndimage
    ndim = len(out_shape)
    # crop to the input region the box needs, plus the interpolation's reach
    corners = np.array(np.meshgrid(*[(0, s - 1) for s in out_shape], indexing="ij"))
    corners = corners.reshape(ndim, -1).T
    lin = np.diag(matrix) if matrix.ndim == 1 else matrix
    src = corners @ lin.T + offset
    margin = (_SPLINE_MARGIN if order > 1 else 1) + 1
    spatial = tile.shape[n_channel_axes:]
    lo = np.maximum(np.floor(src.min(axis=0)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(src.max(axis=0)).astype(int) + margin + 1, spatial)
    crop = tile[(Ellipsis, *(slice(a, b) for a, b in zip(lo, hi, strict=True)))]
    crop = xp.asarray(crop, dtype=work).reshape((-1, *crop.shape[n_channel_axes:]))
    out = xp.empty((crop.shape[0], *out_shape), dtype=work)
    for i in range(crop.shape[0]):
        ndi.affine_transform(
            crop[i],
            xp.asarray(matrix),
            offset=tuple(offset - lo),
            output_shape=out_shape,
            output=out[i],
            order=order,
            mode="nearest",
            prefilter=order > 1,
        )
    return out


def _separable(
    tile: Any, axes: list[np.ndarray], order: int, n_channel_axes: int, work: Any, xp: Any
) -> Any:
    """Resample along each axis in turn at tile coordinates ``axes`` (one 1-D array per
    spatial axis): nearest (order 0) or linear (order 1), edges clamped like
    ``ndimage``'s ``mode="nearest"``. Equal to ``affine_transform`` for axis-aligned
    transforms, faster, and plain array arithmetic (no GIL held). A pure shift uses two
    slices per axis instead of gathers."""
    # crop to the rows/columns the coordinates reach, then convert once
    crop = []
    for i, c in enumerate(axes):
        n = tile.shape[n_channel_axes + i]
        lo = int(np.clip(np.floor(c.min()), 0, n - 1))
        hi = int(np.clip(np.floor(c.max()) + 2, lo + 1, n))
        crop.append(slice(lo, hi))
    out = xp.asarray(tile[(Ellipsis, *crop)], dtype=work)
    for i, c in enumerate(axes):
        axis = n_channel_axes + i
        n = out.shape[axis]
        c = c - crop[i].start
        if order == 0:
            idx = np.clip(np.floor(c + 0.5), 0, n - 1).astype(np.intp)
            out = xp.take(out, xp.asarray(idx), axis=axis)
            continue
        lo = np.floor(c)
        frac = c - lo
        if lo.size > 2 and np.all(np.diff(lo) == 1) and np.ptp(frac) < 1e-12:
            out = _shift_linear(out, axis, int(lo[0]), lo.size, float(frac[0]), xp)
            continue
        a = xp.take(out, xp.asarray(np.clip(lo, 0, n - 1).astype(np.intp)), axis=axis)
        b = xp.take(out, xp.asarray(np.clip(lo + 1, 0, n - 1).astype(np.intp)), axis=axis)
        shape = [1] * (out.ndim - axis)
        shape[0] = -1
        out = a + (b - a) * xp.asarray(frac.astype(work).reshape(shape))
    return out.reshape((-1, *out.shape[n_channel_axes:]))


def _shift_linear(x: Any, axis: int, first: int, count: int, frac: float, xp: Any) -> Any:
    """``count`` samples at ``first + frac + k`` along ``axis``, linear, edges clamped; with
    slices only (the samples outside ``[0, n - 1]`` take the edge value)."""
    n = x.shape[axis]
    lead = (slice(None),) * axis
    out = xp.empty((*x.shape[:axis], count, *x.shape[axis + 1 :]), dtype=x.dtype)
    k0 = min(max(0, -first), count)  # samples before the first pixel
    k1 = min(max(0, first + count - (n - 1)), count - k0)  # samples reaching the last pixel
    if count - k0 - k1 > 0:
        s = first + k0
        a = x[(*lead, slice(s, s + count - k0 - k1))]
        b = x[(*lead, slice(s + 1, s + 1 + count - k0 - k1))]
        out[(*lead, slice(k0, count - k1))] = a + (b - a) * x.dtype.type(frac)
    if k0:
        out[(*lead, slice(0, k0))] = x[(*lead, slice(0, 1))]
    if k1:
        out[(*lead, slice(count - k1, count))] = x[(*lead, slice(n - 1, n))]
    return out


def _contribution(
    plan: FusionPlan, k: int, tile: Any, lo: np.ndarray, hi: np.ndarray, backend: Backend
) -> tuple[tuple[slice, ...], Any, Any, Any, Any] | None:
    """Values (channels flattened first), validity, weight and centre distance of tile ``k``
    inside the chunk ``[lo, hi)``; ``None`` when it does not reach the chunk."""
    xp = backend.xp
    box = plan.boxes[k]
    r0, r1 = np.maximum(box[0], lo), np.minimum(box[1], hi)
    if np.any(r1 <= r0):
        return None
    ndim = plan.ndim
    shape = plan.tile_shapes[k]
    a = plan.affines[k]
    inv = np.linalg.inv(a)
    lin, t = inv[:ndim, :ndim], inv[:ndim, ndim]
    out_shape = tuple(int(v) for v in r1 - r0)
    work = _work_dtype(plan.dtype)
    n_ch = len(plan.channel_shape)
    local = tuple(
        slice(int(a_ - lo_), int(b_ - lo_)) for a_, b_, lo_ in zip(r0, r1, lo, strict=True)
    )
    diagonal = np.allclose(lin, np.diag(np.diag(lin)), atol=1e-12)
    if diagonal:
        scale = np.diag(lin)
        axes = [scale[i] * np.arange(r0[i], r1[i]) + t[i] for i in range(ndim)]
        coords = [
            xp.asarray(c.reshape([-1 if j == i else 1 for j in range(ndim)]))
            for i, c in enumerate(axes)
        ]
        shift = np.round(t)
        if np.allclose(scale, 1) and np.allclose(t, shift, atol=1e-6):
            first = (r0 + shift).astype(int)
            sl = tuple(slice(int(f), int(f + s)) for f, s in zip(first, out_shape, strict=True))
            inside = all(s.start >= 0 and s.stop <= n for s, n in zip(sl, shape, strict=True))
            if inside:  # whole pixels: a view, no resampling
                values = xp.asarray(tile[(Ellipsis, *sl)], dtype=work)
                values = values.reshape((-1, *out_shape))
                return local, values, None, *_profiles(coords, shape, plan, xp)[1:]
        if plan.params.order <= 1:
            values = _separable(tile, axes, plan.params.order, n_ch, work, xp)
        else:
            values = _warp(tile, scale, scale * r0 + t, out_shape, plan.params.order, n_ch, work,
                           backend)  # fmt: skip
    else:
        grid = np.meshgrid(*[np.arange(r0[i], r1[i]) for i in range(ndim)], indexing="ij")
        src = np.tensordot(lin, np.stack(grid), axes=1) + t.reshape((-1,) + (1,) * ndim)
        coords = [xp.asarray(c) for c in src]
        values = _warp(tile, lin, lin @ r0 + t, out_shape, plan.params.order, n_ch, work, backend)
    valid, weight, dist = _profiles(coords, shape, plan, xp)
    return local, values, valid, weight, dist


def fuse_chunk(
    plan: FusionPlan,
    index: tuple[int, ...],
    *,
    read: Reader | None = None,
    flatfield: Any = None,
    cache: TileCache | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Fuse the output chunk at grid position ``index``.

    Parameters
    ----------
    plan : FusionPlan
    index : tuple of int
        Chunk position in ``plan.grid``.
    read : callable, optional
        ``read(ref) -> array``; default :func:`scopefx.io.read_image`. It returns tiles as
        they are on disk; colour tiles (``plan.samples_last``) are turned channels first here.
    flatfield : FlatField, optional
        Applied to every tile before it is placed.
    cache : TileCache, optional
        Decoded-tile cache shared by the chunks of one run; default: none.
    device : {None, "cpu", "gpu", "cuda:N"}
        Where to compute; the result is always a NumPy array.

    Returns
    -------
    ndarray, shape ``(*plan.channel_shape, *chunk_shape)``, dtype ``plan.dtype``
    """
    backend = get_backend(None, device=device)
    xp = backend.xp
    read = tile_reader(read, plan.samples_last)
    if isinstance(read, SamplesFirst):  # colour tiles: with their alpha, to mask by
        read = replace(read, alpha=True)
    cache = cache if cache is not None else TileCache(max_bytes=0)
    lo, hi = plan.chunk_bounds(index)
    cshape = tuple(int(v) for v in hi - lo)
    n_ch = int(math.prod(plan.channel_shape))
    work = _work_dtype(plan.dtype)
    blend = plan.params.blend
    acc = xp.zeros((n_ch, *cshape), dtype=work)
    if blend == "max":
        acc[...] = -np.inf
    wsum = xp.zeros(cshape, dtype=work)
    best = xp.full(cshape, np.inf, dtype=np.float32) if blend == "closest" else None

    for k in (int(v) for v in plan.tiles_for(index)):
        tile, mask = split_alpha(cache.get(plan.refs[k], read), plan.samples_last, plan.ndim)
        _check_tile(plan, k, tile)
        if flatfield is not None:
            tile = flatfield.apply(tile)
        part = _contribution(plan, k, tile, lo, hi, backend)
        if part is None:
            continue
        sl, values, valid, weight, dist = part
        seen = None if mask is None else _contribution(plan, k, mask, lo, hi, backend)
        if seen is not None:  # covered where the pixels interpolated from are all opaque
            solid = seen[1][0] > 1 - 1e-3
            valid = solid if valid is None else valid & solid
        if np.dtype(plan.dtype).kind == "f":  # NaN/inf pixels are no data, as outside the tile
            finite = xp.isfinite(values).all(axis=0)
            if not bool(finite.all()):
                values = xp.where(finite, values, work(0))
                valid = finite if valid is None else valid & finite
        if blend in ("linear", "focus", "mean"):
            factor = work(plan.weights[k])
            w = xp.full(values.shape[1:], factor, dtype=work) if weight is None else weight * factor
            if valid is not None:
                w = xp.where(valid, w, work(0))
            else:
                w = xp.broadcast_to(w, values.shape[1:])
            acc[(slice(None), *sl)] += values * w
            wsum[sl] += w
            continue
        covered = xp.ones(values.shape[1:], dtype=bool) if valid is None else valid
        if blend == "max":
            view = acc[(slice(None), *sl)]
            acc[(slice(None), *sl)] = xp.where(covered, xp.maximum(view, values), view)
            wsum[sl] += covered
        else:  # first / closest: one tile per pixel, no mixing
            if blend == "first":
                take = covered & (wsum[sl] == 0)
            else:
                take = covered & (dist < best[sl])  # type: ignore[index]
                best[sl] = xp.where(take, dist, best[sl])  # type: ignore[index]
            acc[(slice(None), *sl)] = xp.where(take, values, acc[(slice(None), *sl)])
            wsum[sl] += covered
    hit = wsum > 0
    if blend in ("linear", "focus", "mean"):
        acc /= xp.where(hit, wsum, np.float32(1))
    out = xp.where(hit, acc, work(plan.params.fill))
    return backend.to_numpy(_to_dtype(out, plan.dtype, xp)).reshape((*plan.channel_shape, *cshape))


def _to_dtype(values: Any, dtype: str, xp: Any) -> Any:
    """Round half to even, never truncate, and clip to the integer range."""
    d = np.dtype(dtype)
    if d.kind in "iu":
        info = np.iinfo(d)
        return xp.clip(xp.rint(values), info.min, info.max).astype(d)
    if d.kind == "b":
        return values > 0.5
    return values.astype(d)
