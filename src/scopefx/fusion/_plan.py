"""The fusion plan: pure geometry, no I/O.

From the tiles' transforms and shapes the plan derives the output's bounding box and chunk grid
and, for every output chunk, the tiles whose transformed footprint meets it. The lookup is one
vectorised pass over (tile, chunk) pairs sorted into a CSR index, so planning 10,000 tiles takes
well under a second. A plan is small (a few numbers per tile) and picklable, so it ships to any
worker; executing a chunk needs only the plan and the tiles that chunk names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError, ResourceLimitError
from ..io import EndpointLimits, TileTable, translation
from ._params import FusionParams

__all__ = ["FusionPlan", "make_plan", "tile_corners"]

_MIN_FEATHER_PX = 8.0
_EDGE_EPS = 1e-6  # px: a footprint edge this close to a pixel centre counts as reaching it
_MIN_FOCUS_WEIGHT = 1e-12  # (1e-3) ** 4: the weight of the least sharp tile at the default gamma


def tile_corners(affine: np.ndarray, shape: Sequence[int] | np.ndarray) -> np.ndarray:
    """Mosaic coordinates (index order) of the outer pixel edges of a tile, (2**ndim, ndim)."""
    ndim = len(shape)
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape])), dtype=float)
    homo = np.hstack([corners, np.ones((len(corners), 1))])
    return (homo @ np.asarray(affine, dtype=float).T)[:, :ndim]


@dataclass(frozen=True, eq=False)
class FusionPlan:
    """Where every tile goes in the output and which tiles each output chunk needs.

    Attributes
    ----------
    refs : tuple of str
        Tile references, in table order (``"first"`` blending follows it).
    affines : (n, ndim + 1, ndim + 1) ndarray
        Tile index -> *output* index transforms (the table's transforms shifted by ``-origin``).
    tile_shapes : (n, ndim) ndarray of int
        Spatial shape of each tile.
    channel_shape : tuple of int
        Leading non-spatial axes of every tile (``()`` for grey tiles).
    dtype : str
        Pixel type of the tiles and of the output.
    origin : (ndim,) ndarray of int
        Mosaic coordinate of output index 0 (index order).
    shape : tuple of int
        Spatial output shape.
    chunk : tuple of int
        Spatial chunk shape.
    boxes : (n, 2, ndim) ndarray of int
        Output index box ``[lo, hi)`` each tile may write to.
    chunk_ptr, chunk_tiles : ndarray of int
        CSR index: the tiles of chunk ``c`` (C order over the chunk grid) are
        ``chunk_tiles[chunk_ptr[c]:chunk_ptr[c + 1]]``, in table order.
    weights : (n,) ndarray of float
        Per-tile weight factor (focus blending; 1 otherwise).
    focus : (n,) ndarray of float
        Per-tile focus score where known (NaN where not).
    feather_px : float
        Ramp width of feathered blending.
    params : FusionParams
    pixel_size_um : float or None
    pixel_size_z_um : float or None
        The z step of a 3D mosaic whose voxels are not cubes; ``None``: ``pixel_size_um``.
    samples_last : int
        0: the tiles hold their channels first (or none). Otherwise the tiles are colour or
        grey + alpha images, samples last (Y, X, S) on disk, and the first ``samples_last``
        samples are fused as the channels (3: red, green, blue; 1: grey, no channel axis);
        alpha is not fused, its transparent pixels are no data.
    """

    refs: tuple[str, ...]
    affines: np.ndarray = field(repr=False)
    tile_shapes: np.ndarray = field(repr=False)
    channel_shape: tuple[int, ...]
    dtype: str
    origin: np.ndarray
    shape: tuple[int, ...]
    chunk: tuple[int, ...]
    boxes: np.ndarray = field(repr=False)
    chunk_ptr: np.ndarray = field(repr=False)
    chunk_tiles: np.ndarray = field(repr=False)
    weights: np.ndarray = field(repr=False)
    focus: np.ndarray = field(repr=False)
    feather_px: float
    params: FusionParams
    pixel_size_um: float | None = None
    pixel_size_z_um: float | None = None
    samples_last: int = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def voxel_um(self) -> tuple[float, ...] | None:
        """Physical size of an output pixel per spatial axis (index order), or ``None``."""
        if not self.pixel_size_um:
            return None
        z = (self.pixel_size_z_um or self.pixel_size_um,) if self.ndim == 3 else ()
        return (*z, self.pixel_size_um, self.pixel_size_um)

    @property
    def grid(self) -> tuple[int, ...]:
        """Number of chunks along each spatial axis."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunk, strict=True))

    @property
    def n_chunks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def full_shape(self) -> tuple[int, ...]:
        """Output shape with the channel axes in front."""
        return (*self.channel_shape, *self.shape)

    def chunk_bounds(self, index: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Output index box ``[lo, hi)`` of the chunk at grid position ``index``."""
        lo = np.asarray(index, dtype=np.int64) * np.asarray(self.chunk)
        hi = np.minimum(lo + np.asarray(self.chunk), np.asarray(self.shape))
        return lo, hi

    def tiles_for(self, index: Sequence[int]) -> np.ndarray:
        """Indices of the tiles that may touch the chunk at grid position ``index``."""
        c = int(np.ravel_multi_index(tuple(index), self.grid))
        return self.chunk_tiles[self.chunk_ptr[c] : self.chunk_ptr[c + 1]]

    def fingerprint(self) -> str:
        """A hash of everything that determines the output's bytes (for resume)."""
        h = hashlib.sha256()
        h.update(json.dumps([self.refs, self.channel_shape, self.dtype, self.shape]).encode())
        h.update(json.dumps([self.chunk, self.feather_px, self.params.to_dict()]).encode())
        if self.samples_last:  # colour tiles: the same pixels read another way
            h.update(f"samples_last={self.samples_last}".encode())
        for a in (self.affines, self.weights, self.origin):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
        return h.hexdigest()[:32]


def _check_fill(fill: float, dtype: str) -> None:
    """Refuse a fill value the output's dtype cannot hold: it wrapped around in the Zarr
    metadata (uint8: 300 became 44, -1 became 255) while the pixels were clipped (255, 0)."""
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        return
    info = np.iinfo(kind)
    if not math.isfinite(fill) or not info.min <= fill <= info.max or fill != int(fill):
        raise ConfigError(
            f"fill {fill!r} is not a value of the tiles' dtype {kind.name} (whole numbers "
            f"{info.min}..{info.max}); give one that is (--fill)"
        )


def _feather(boxes: np.ndarray, tile_shapes: np.ndarray) -> float:
    """Typical overlap width between neighbouring tiles: the median, over tiles, of the
    narrowest positive overlap with any other tile (sampled for big tables)."""
    n = len(boxes)
    if n < 2:
        return _MIN_FEATHER_PX
    rng = np.random.default_rng(0)
    sample = rng.choice(n, size=min(n, 256), replace=False)
    widths = []
    for i in sample:
        ov = np.minimum(boxes[i, 1], boxes[:, 1]) - np.maximum(boxes[i, 0], boxes[:, 0])
        ov[i] = 0
        touching = np.all(ov > 0, axis=1)
        if touching.any():
            # the overlap's narrow side is the seam width
            widths.append(np.max(np.min(ov[touching], axis=1)))
    if not widths:
        return _MIN_FEATHER_PX
    cap = float(np.min(tile_shapes)) / 2
    return float(min(max(np.median(widths), _MIN_FEATHER_PX), cap))


def make_plan(
    table: TileTable,
    tile_shapes: Any,
    *,
    channel_shape: tuple[int, ...] = (),
    dtype: str = "uint16",
    params: FusionParams | None = None,
    focus: Sequence[float | None] | None = None,
    force: bool = False,
    limits: EndpointLimits | None = None,
    samples_last: int = 0,
) -> FusionPlan:
    """Plan a fusion from transforms and tile shapes (no file is opened).

    Parameters
    ----------
    table : TileTable
        Tiles and their transforms.
    tile_shapes : (n, ndim) array of int
        Spatial shape of each tile (index order).
    channel_shape : tuple of int
        Leading channel axes shared by all tiles.
    dtype : str
        Pixel type of the tiles (and the output).
    params : FusionParams, optional
    focus : sequence of float, optional
        Per-tile focus scores for ``blend="focus"`` (defaults to the table's ``focus``).
    force : bool
        Plan even when the output exceeds ``params.max_output_gib``.
    limits : EndpointLimits, optional
        Hard bounds no option lifts (default: from the environment): output size, number of
        chunks, pixels per chunk, (tile, chunk) pairs. Checked before anything of the
        output's size is allocated.
    samples_last : int
        The tiles are colour images, samples last; fuse the first this many as channels
        (see :attr:`FusionPlan.samples_last`).

    Raises
    ------
    ConfigError
        Shapes do not match the table, ``blend="focus"`` without scores, or the output would
        exceed the size limit (names the tiles that stretch it).
    """
    params = params or FusionParams()
    _check_fill(params.fill, dtype)
    ndim = table.ndim
    shapes = np.asarray(tile_shapes, dtype=np.int64).reshape(len(table), -1)
    if shapes.shape[1] != ndim:
        raise ConfigError(f"tile shapes have {shapes.shape[1]} axes, the table is {ndim}D")
    if np.any(shapes < 1):
        bad = int(np.argmin(shapes.min(axis=1)))
        raise ConfigError(f"tile {bad} ({table[bad].ref}) has an empty shape {shapes[bad]}")

    affines = table.affines
    corners = np.stack([tile_corners(a, s) for a, s in zip(affines, shapes, strict=True)])
    # pixel-centre box: a pixel belongs to the output if its centre is inside a footprint
    # (edges included, within _EDGE_EPS): a tile at y = 10.2 with 300 rows spans 9.7..309.7,
    # rows 10..309; rounding the outermost pixel centres outward added row 310, which no tile
    # covers (a line of the fill value along the edge of every mosaic placed at fractions)
    lo = np.ceil(corners.min(axis=1) - _EDGE_EPS).astype(np.int64)
    hi = np.floor(corners.max(axis=1) + _EDGE_EPS).astype(np.int64) + 1
    origin = lo.min(axis=0)
    shape = tuple(int(v) for v in hi.max(axis=0) - origin)

    itemsize = np.dtype(dtype).itemsize * int(np.prod(channel_shape, dtype=np.int64))
    gib = float(np.prod(shape, dtype=np.float64)) * itemsize / 2**30
    if gib > params.max_output_gib and not force:
        far = np.argsort(-np.abs(lo - np.median(lo, axis=0)).max(axis=1))[:3]
        names = ", ".join(f"{table[int(i)].ref} at {lo[int(i)][::-1].tolist()}" for i in far)
        raise refused_layout(ConfigError(
            f"the mosaic would be {'x'.join(map(str, shape))} px ({gib:.3g} GiB), over the "
            f"limit of {params.max_output_gib:g} GiB; the farthest tiles are {names}. Positions "
            "in micrometres given as pixels? Fix the table, or raise max_output_gib / --force"
        ))  # fmt: skip

    limits = limits if limits is not None else EndpointLimits.from_env()
    chunk = tuple(min(params.chunk_for(ndim), s) for s in shape)
    _check_bounds(table, shape, chunk, lo, hi - lo, gib, limits)

    scores = list(focus) if focus is not None else [t.focus for t in table]
    weights = np.ones(len(table))
    if params.blend == "focus":
        missing = [i for i, s in enumerate(scores) if s is None]
        if missing:
            raise ConfigError(
                f'blend="focus" (--blend focus) needs a focus score per tile (the table\'s focus '
                f"column); {len(missing)} tiles have none (first: {table[missing[0]].ref})"
            )
        s = np.asarray(scores, dtype=float)
        unscored = np.flatnonzero(~(np.isfinite(s) & (s >= 0)))
        if len(unscored):  # NaN, infinity or below 0 made every weight alike (or NaN)
            k = int(unscored[0])
            raise ConfigError(
                f'blend="focus" (--blend focus) weighs tiles by their focus scores; '
                f"{len(unscored)} are not a finite score >= 0 (first: {table[k].ref}, "
                f"{scores[k]!r}): a focus column that holds something else (a focus drive's "
                "position) is no score"
            )
        best = float(s.max())
        rel = s / best if best > 0 else np.ones_like(s)
        # floored: a tile far less sharp than its neighbours still fills where it is alone
        weights = np.maximum(np.maximum(rel, 1e-3) ** params.focus_gamma, _MIN_FOCUS_WEIGHT)

    out_affines = np.stack([translation(-origin) @ a for a in affines])
    boxes = np.stack([lo - origin, hi - origin], axis=1)
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunk, strict=True))
    ptr, idx = _chunk_index(boxes, np.asarray(chunk), grid)
    feather = params.feather_px if params.feather_px is not None else _feather(boxes, shapes)
    return FusionPlan(
        refs=tuple(table.refs),
        affines=out_affines,
        tile_shapes=shapes,
        channel_shape=tuple(channel_shape),
        dtype=str(np.dtype(dtype)),
        origin=origin,
        shape=shape,
        chunk=chunk,
        boxes=boxes,
        chunk_ptr=ptr,
        chunk_tiles=idx,
        weights=weights,
        focus=np.array([np.nan if v is None else v for v in scores], dtype=float),
        feather_px=float(feather),
        params=params,
        pixel_size_um=table.pixel_size_um,
        pixel_size_z_um=table.pixel_size_z_um,
        samples_last=int(samples_last),
    )


_E = TypeVar("_E", bound=BaseException)


def refused_layout(error: _E) -> _E:
    """``error``, marked as planning's refusal of the layout itself (the tiles' positions
    span too much: :func:`is_refused_layout`), so that a fusion that registered first can say
    where registration placed them."""
    error.refused_layout = True  # type: ignore[attr-defined]
    return error


def is_refused_layout(error: BaseException) -> bool:
    """Whether ``error`` is planning's refusal of the layout (:func:`refused_layout`)."""
    return bool(getattr(error, "refused_layout", False))


def _check_bounds(
    table: TileTable, shape: tuple[int, ...], chunk: tuple[int, ...], lo: np.ndarray,
    extent: np.ndarray, gib: float, limits: EndpointLimits,
) -> None:  # fmt: skip
    """Refuse, from geometry alone, a fusion over the endpoint's hard limits."""
    from ..io.confined import LIMIT_ENV

    size = "x".join(map(str, shape))
    if gib > limits.max_output_gib:
        far = np.argsort(-np.abs(lo - np.median(lo, axis=0)).max(axis=1))[:3]
        names = ", ".join(f"{table[int(i)].ref} at {lo[int(i)][::-1].tolist()}" for i in far)
        raise refused_layout(ResourceLimitError(
            f"the mosaic would be {size} px ({gib:.3g} GiB), over this process's hard limit of "
            f"{limits.max_output_gib:g} GiB ({LIMIT_ENV['max_output_gib']}, which force does "
            f"not lift); the farthest tiles are {names}. Fix the positions in the table"
        ))  # fmt: skip
    chunk_px = math.prod(chunk)
    if chunk_px > limits.max_chunk_px:
        raise ResourceLimitError(
            f"output chunks of {'x'.join(map(str, chunk))} px ({chunk_px:,} px) are over the "
            f"limit of {limits.max_chunk_px:,} px per chunk ({LIMIT_ENV['max_chunk_px']}); "
            "use a smaller chunk_px"
        )
    n_chunks = math.prod(math.ceil(s / c) for s, c in zip(shape, chunk, strict=True))
    # (tile, chunk) pairs of the CSR index: each tile's extent in chunks, plus its edges
    pairs = float(np.prod(extent / np.asarray(chunk) + 2, axis=1).sum())
    if n_chunks > limits.max_chunks or pairs > 4 * limits.max_chunks:
        raise refused_layout(ResourceLimitError(
            f"the mosaic {size} px in chunks of {'x'.join(map(str, chunk))} has {n_chunks:,} "
            f"chunks, over the limit of {limits.max_chunks:,} ({LIMIT_ENV['max_chunks']}); "
            "tiles far apart (positions in micrometres given as pixels?), or chunk_px too small"
        ))  # fmt: skip


def check_plan_limits(plan: FusionPlan, limits: EndpointLimits | None = None) -> None:
    """Refuse a plan read back from a store (a fan-out task's, a resume's) over the process's
    hard limits, as planning does: the plan lies in the caller's output folder, where they
    can edit it (a planted ``job.json`` with 144 Mpx chunks passed every limit)."""
    from ..io.confined import LIMIT_ENV

    limits = limits or EndpointLimits.from_env()
    shape, chunk = tuple(int(v) for v in plan.shape), tuple(int(v) for v in plan.chunk)
    itemsize = np.dtype(plan.dtype).itemsize * int(np.prod(plan.channel_shape, dtype=np.int64))
    gib = float(np.prod(shape, dtype=np.float64)) * itemsize / 2**30
    chunk_px = math.prod(chunk)
    n_chunks = math.prod(math.ceil(s / max(c, 1)) for s, c in zip(shape, chunk, strict=True))
    problem = None
    if len(shape) != len(chunk) or min(chunk, default=0) < 1 or min(shape, default=0) < 1:
        problem = f"a shape {shape} in chunks {chunk}"
    elif gib > limits.max_output_gib:
        problem = f"{gib:.3g} GiB ({LIMIT_ENV['max_output_gib']} {limits.max_output_gib:g})"
    elif chunk_px > limits.max_chunk_px:
        problem = f"chunks of {chunk_px:,} px ({LIMIT_ENV['max_chunk_px']} {limits.max_chunk_px:,})"
    elif n_chunks > limits.max_chunks:
        problem = f"{n_chunks:,} chunks ({LIMIT_ENV['max_chunks']} {limits.max_chunks:,})"
    if problem is not None:
        raise ResourceLimitError(
            f"the fusion plan stored in this output asks for {problem}, over this process's "
            "limits; it was not planned so here (edited?): plan the mosaic again"
        )


def _chunk_index(
    boxes: np.ndarray, chunk: np.ndarray, grid: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """CSR index chunk -> tiles from the tiles' output boxes, without a loop over tiles."""
    first = boxes[:, 0] // chunk
    last = (boxes[:, 1] - 1) // chunk
    span = last - first + 1
    counts = np.prod(span, axis=1)
    tile = np.repeat(np.arange(len(boxes)), counts)
    # position of each pair inside its tile's block of chunks, unravelled over the tile's span
    local = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    coords = []
    for axis in reversed(range(boxes.shape[2])):
        s = span[tile, axis]
        coords.append(first[tile, axis] + local % s)
        local = local // s
    flat = np.ravel_multi_index(tuple(reversed(coords)), grid)
    order = np.lexsort((tile, flat))
    ptr = np.zeros(int(np.prod(grid)) + 1, dtype=np.int64)
    np.add.at(ptr, flat + 1, 1)
    return np.cumsum(ptr), tile[order].astype(np.int64)
