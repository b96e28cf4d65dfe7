"""Probe the tiles, plan, and build the lazy mosaic: one dask task per output chunk.

Each task (``map_blocks``) reads only the tiles its chunk names, so the graph's size is the
number of chunks and a task's memory is bounded by the chunk plus the tiles that touch it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ConfigError, ImageNotFoundError, InvalidImageError
from ..io import SAMPLES_LAST, TileTable, flatten_z, read_tile_table, same_pixel_size
from ._blend import Reader, TileCache, fuse_chunk, tile_reader
from ._params import FuseOptions, FusionParams
from ._plan import FusionPlan, make_plan

__all__ = ["fuse_lazy", "plan_fusion"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# probing and planning


def _as_table(tiles: TileTable | str | os.PathLike[str], options: FuseOptions) -> TileTable:
    if isinstance(tiles, TileTable):
        if options.scene is not None:
            raise ConfigError(
                f"scene {options.scene!r} is given with a TileTable: a scene chooses the mosaic "
                "read from an instrument file; give the file's path instead"
            )
        return tiles
    if isinstance(tiles, (str, os.PathLike)):
        return read_tile_table(
            tiles, pixel_size_um=options.pixel_size_um, rotation_deg=options.rotation_deg,
            flip_x=options.flip_x, flip_y=options.flip_y, pixel_size_z_um=options.pixel_size_z_um,
            scene=options.scene,
        )  # fmt: skip
    raise ConfigError(
        f"tiles must be a TileTable or the path of a tile table, got {type(tiles).__name__}"
    )


def _probe(table: TileTable, workers: int) -> tuple[list[Any], list[str]]:
    """Header of every tile (shape, dtype) without decoding pixels; refs that are missing."""
    from ..io import read_metadata

    def one(ref: str) -> Any:
        try:
            return read_metadata(ref)
        except ImageNotFoundError:
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        metas = list(pool.map(one, table.refs))
    missing = [r for r, m in zip(table.refs, metas, strict=True) if m is None]
    return metas, missing


def _flat_z(table: TileTable, metas: list[Any]) -> TileTable:
    """A 3D table of 2D grey tiles all at z 0 (the ``z`` column of zeros that several exporters
    write for 2D tiles) as the 2D table it is; any other table as it is."""
    if table.ndim != 3:
        return table
    present = [m for m in metas if m is not None]
    if not present or any(len(m.shape) != 2 for m in present):
        return table
    affines = [np.asarray(t.affine, dtype=float) for t in table]
    if any(a[0, 3] != 0 or a[0, 0] != 1 or a[0, 1:3].any() or a[1:3, 0].any() for a in affines):
        return table  # placed off z 0, or turned about x or y: a real 3D table
    log.info("tile table %s: z is 0 for every 2D tile; read as a 2D table", table.source or "")
    pairs = zip(table, affines, strict=True)
    tiles = tuple(dataclasses.replace(t, affine=a[1:, 1:]) for t, a in pairs)
    return table.replace(tiles=tiles, ndim=2, pixel_size_z_um=None)


def tile_layout(table: TileTable, metas: list[Any]) -> tuple[np.ndarray, tuple[int, ...], str]:
    """Spatial shapes, common channel shape and dtype; refuses mixtures, naming the tiles.
    Colour tiles count with their channels first, as :func:`colour_samples` reads them."""
    ndim = table.ndim
    first = metas[0]
    if len(first.shape) < ndim:
        raise ConfigError(
            f"tile {first.path} has shape {list(first.shape)}, fewer axes than the {ndim}D table"
        )
    keep = colour_samples(metas, table.ndim)
    shapes_read = [fused_shape(m.shape, keep) for m in metas]
    channels = tuple(shapes_read[0][:-ndim])
    odd = [
        m
        for m, shape in zip(metas, shapes_read, strict=True)
        if m.dtype != first.dtype or tuple(shape[:-ndim]) != channels
    ]
    if odd:
        listed = ", ".join(f"{m.path} ({m.dtype}{list(m.shape)})" for m in odd[:5])
        raise ConfigError(
            f"tiles must share dtype and channels; {first.path} is {first.dtype}"
            f"{list(first.shape)} but {len(odd)} differ: {listed}"
        )
    if np.dtype(first.dtype).kind not in "biuf":  # complex: its imaginary part was dropped
        raise InvalidImageError(
            f"tiles are {first.dtype} ({first.path}): scopefx fuses real intensities (integer "
            "or floating point); save the magnitude (or the part to fuse) as the tiles",
            status="dtype",
        )
    shapes = np.array([shape[-ndim:] for shape in shapes_read], dtype=np.int64)
    empty = np.flatnonzero((shapes < 1).any(axis=1))
    if len(empty):  # nothing to place (and a layout of them has no area to judge)
        listed = ", ".join(f"{metas[k].path} ({' x '.join(map(str, shapes[k]))} px)"
                           for k in empty[:5])  # fmt: skip
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise ConfigError(f"{len(empty)} tile(s) hold no pixels: {listed}{more}")
    return shapes, channels, first.dtype


def fused_shape(shape: tuple[int, ...], samples_last: int) -> tuple[int, ...]:
    """The shape of a tile as fusion reads it: a colour tile's samples moved first (see
    :class:`~scopefx.fusion._blend.SamplesFirst`); others unchanged."""
    shape = tuple(int(v) for v in shape)
    if not samples_last:
        return shape
    return shape[:-1] if samples_last == 1 else (samples_last, *shape[:-1])


#: Display names and OMERO colours of the channels of colour tiles (alpha is not fused).
RGB_CHANNELS = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))


def colour_samples(metas: list[Any], ndim: int) -> int:
    """How many samples of colour tiles are fused (``FusionPlan.samples_last``): 3 for RGB
    or RGBA (alpha not fused), 1 for grey + alpha, all of them for samples the file does not
    mark as colour or alpha (:attr:`~scopefx.io.ImageMetadata.samples` ``"channels"``, or
    unknown), 0 when the tiles are not colour images. Colour models other than RGB (CMYK,
    YCbCr, Lab) are refused, and so is a mixture of colour and grey tiles (or of tiles fused
    as different numbers of channels), naming the tiles."""
    stacks = [m for m in metas if _colour_stack(m)]
    if stacks:
        listed = ", ".join(f"{m.path} ({m.pages} pages of {str(m.samples).upper()}, "
                           f"{list(m.shape)})" for m in stacks[:5])  # fmt: skip
        raise ConfigError(
            f"{len(stacks)} of {len(metas)} tiles hold several pages of colour images: "
            f"{listed}; fusion takes one colour image per tile (a colour z-stack or series is "
            "not fused): write each page to its own file and list those, or pass grey tiles"
        )
    colour = [_samples_last(m, ndim) for m in metas]
    if not any(colour):
        return 0
    picked = [m for m, c in zip(metas, colour, strict=True) if c]
    foreign = [m for m in picked if getattr(m, "samples", None) not in _FUSED_SAMPLES]
    if foreign:
        listed = ", ".join(f"{m.path} ({str(m.samples).upper()})" for m in foreign[:5])
        raise ConfigError(
            f"{len(foreign)} of {len(metas)} tiles are colour images that are not RGB: "
            f"{listed}; fusion takes RGB(A), grey + alpha or grey tiles: convert them to RGB"
        )
    keeps = [_kept(m) for m in picked]
    if all(colour) and len(set(keeps)) == 1:
        return keeps[0]
    grey = [m for m, c in zip(metas, colour, strict=True) if not c]
    odd = grey or [m for m, k in zip(picked, keeps, strict=True) if k == min(keeps)]
    listed = ", ".join(f"{m.path} ({m.dtype}{list(m.shape)})" for m in odd[:5])
    raise ConfigError(
        f"{sum(colour)} of {len(metas)} tiles are colour or grey + alpha images (samples "
        f"last) and {len(odd)} are not like the others: {listed}; the tiles of one mosaic "
        "must all be RGB(A), all grey + alpha, or all grey"
    )


#: ImageMetadata.samples of the colour tiles fusion takes (None: the file does not say).
_FUSED_SAMPLES = (None, "rgb", "rgba", "grey+alpha", "channels")


def _kept(meta: Any) -> int:
    """Samples fused of a tile with its samples last: RGB of RGB(A), grey of grey + alpha,
    every sample that is not marked as alpha."""
    samples = getattr(meta, "samples", None)
    if samples in ("rgb", "rgba"):
        return 3
    return 1 if samples == "grey+alpha" else int(meta.shape[-1])


def _colour_stack(meta: Any) -> bool:
    """Several pages of RGB(A) or grey + alpha images, (P, H, W, samples): no layout of a
    mosaic's axes fits them (their samples would be taken for columns)."""
    shape = tuple(getattr(meta, "shape", ()))
    return (
        len(shape) >= 4
        and shape[-1] in SAMPLES_LAST
        and getattr(meta, "samples", None) in ("rgb", "rgba", "grey+alpha")
    )


def _samples_last(meta: Any, ndim: int) -> bool:
    """An image with its samples last, (H, W, 2|3|4): RGB(A) or grey + alpha, one page. In a
    2D table its last axis would be taken for the columns and its rows for channels."""
    shape = tuple(meta.shape)
    return ndim == 2 and len(shape) == 3 and shape[-1] in SAMPLES_LAST and meta.pages == 1


def _score_focus(table: TileTable, read: Reader, workers: int) -> list[float]:
    """MHFD features of every tile (the middle plane of 3D tiles, the channel sum)."""
    from ..focus import focus_score

    def one(ref: str) -> float:
        image = np.asarray(read(ref), dtype=np.float32)
        spatial = image.shape[image.ndim - table.ndim :]
        image = image.reshape(-1, *spatial).sum(axis=0)  # channels summed
        if table.ndim == 3:
            image = image[image.shape[0] // 2]
        return float(focus_score(image).features)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, table.refs))


def _best_planes(table: TileTable, read: Reader, workers: int) -> list[int]:
    """The sharpest plane of every z-stack tile: the highest MHFD focus score, each plane
    scored at the tile's own resolution (the channels summed)."""
    from ..focus import focus_score

    def one(ref: str) -> int:
        stack = np.asarray(read(ref))  # (C,) Z, Y, X
        planes = stack.shape[-3]
        if stack.ndim == 4:
            scores = [focus_score(stack[:, k].sum(axis=0, dtype=np.float32)) for k in range(planes)]
        else:
            scores = [focus_score(stack[k]) for k in range(planes)]
        return int(np.argmax([s.features for s in scores]))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(one, table.refs))


def select_z(
    table: TileTable, z_plane: int | str | None, *, read: Reader | None = None, workers: int = 4
) -> TileTable:
    """The 2D table of one plane per z-stack tile that ``FuseOptions.z_plane`` asks for
    (``"best"``: each tile's sharpest, read and scored here); ``None``: ``table`` unchanged.
    """
    if z_plane is None:
        return table
    if z_plane == "best":
        if table.ndim != 3 or "vendor" not in table.extra:
            return flatten_z(table, 0)  # single planes: nothing to choose (or refused)
        log.info("scoring every plane of %d z-stack tiles for the sharpest", len(table))
        return flatten_z(table, _best_planes(table, read or _read_image, workers))
    return flatten_z(table, z_plane)


def plan_fusion(
    tiles: TileTable | str | os.PathLike[str],
    *,
    params: FusionParams | None = None,
    options: FuseOptions | None = None,
    read: Reader | None = None,
    workers: int = 4,
) -> tuple[FusionPlan, list[str]]:
    """Read the tile table and the tiles' headers, and plan the fusion.

    ``options`` (a :class:`FuseOptions`) gives the pixel size, rotation, ``skip_missing``
    and ``force``; registration and flat fields are :func:`scopefx.fusion.prepare`'s.
    Returns the plan and the references that were missing and skipped.

    Raises
    ------
    ImageNotFoundError
        Tiles are missing (all are listed) and ``skip_missing`` is not set.
    ConfigError
        Mixed dtypes or channel counts, tiles whose recorded pixel sizes differ by more than
        1 % (without a pixel size given), a singular affine, an output over the size limit.
    """
    options = FuseOptions.resolve(options)
    table, metas, missing = load_tiles(tiles, options, workers=workers, read=read)
    plan = plan_loaded(table, metas, params=params, read=read, workers=workers, force=options.force)
    return plan, missing


def load_tiles(
    tiles: TileTable | str | os.PathLike[str],
    options: FuseOptions,
    *,
    workers: int = 4,
    read: Reader | None = None,
) -> tuple[TileTable, list[Any], list[str]]:
    """The tile table (with ``options``' pixel size, rotation, flips and z plane, and the z
    step of 3D tiles), the header of each present tile, and the missing refs (skipped when
    ``options.skip_missing``, else an ``ImageNotFoundError`` listing them). Tiles of different
    recorded pixel sizes are refused (:func:`_check_pixel_sizes`)."""
    pixel_size_um, skip_missing = options.pixel_size_um, options.skip_missing
    table = _as_table(tiles, options)
    table = select_z(table, options.z_plane, read=read, workers=workers)
    if pixel_size_um is not None and table.pixel_size_um is None:
        table = table.replace(pixel_size_um=pixel_size_um)
    if options.pixel_size_z_um is not None and table.ndim == 3:  # given: it wins
        table = table.replace(pixel_size_z_um=options.pixel_size_z_um)
    metas, missing = _probe(table, workers)
    table = _flat_z(table, metas)
    if missing and not skip_missing:
        listed = "\n  ".join(missing[:20]) + ("\n  ..." if len(missing) > 20 else "")
        raise ImageNotFoundError(
            f"{len(missing)} of {len(table)} tiles are missing (--skip-missing fills their "
            f"area and reports them):\n  {listed}"
        )
    if missing:
        keep = [i for i, m in enumerate(metas) if m is not None]
        if not keep:
            raise ImageNotFoundError(f"all {len(table)} tiles are missing")
        table = table.replace(tiles=tuple(table[i] for i in keep))
        metas = [metas[i] for i in keep]
    if table.pixel_size_um is None and metas[0].pixel_size_um:
        table = table.replace(pixel_size_um=metas[0].pixel_size_um)
    _check_pixel_sizes(table, metas, given=pixel_size_um)
    return _with_z_step(table, metas), metas, missing


def _check_pixel_sizes(table: TileTable, metas: list[Any], *, given: float | None) -> None:
    """Refuses tiles whose recorded pixel sizes differ by more than 1 % from the mosaic's (the
    first tile's), naming them with their sizes: fusion pastes every tile at one scale, so a
    binned tile or one from another objective would land at the wrong size. With a pixel size
    ``given`` (``--pixel-size``), or one the table carries that its first tile does not record,
    the tiles are fused at it and a warning names those that record another. Tiles that
    record no pixel size are not compared."""
    recorded = [(m, float(m.pixel_size_um)) for m in metas if getattr(m, "pixel_size_um", None)]
    if not recorded:
        return
    first_path, first = recorded[0][0].path, recorded[0][1]
    size = given if given is not None else (table.pixel_size_um or first)

    odd = [(m, s) for m, s in recorded if not same_pixel_size(s, size)]
    if not odd:
        return
    named = ", ".join(f"{m.path} {s:g} µm" for m, s in odd[:5])
    named += f" and {len(odd) - 5} more" if len(odd) > 5 else ""
    if given is not None or not same_pixel_size(size, first):
        why = "given" if given is not None else "of the tile table"
        log.warning(
            "%d of %d tiles record a pixel size more than 1 %% from the mosaic's %g µm (%s): "
            "%s; they are fused at %g µm",
            len(odd), len(metas), size, why, named, size,
        )  # fmt: skip
        return
    raise ConfigError(
        f"{len(odd)} of {len(metas)} tiles record a pixel size more than 1 % from the "
        f"mosaic's, {size:g} µm as {first_path} records: {named}; the tiles of one mosaic "
        "share one pixel size, and a binned tile or one from another objective would be "
        f"pasted at the wrong scale: resample those tiles to {size:g} µm (e.g. Fiji: Image > "
        "Scale) or fuse them as a mosaic of their own; if the recorded sizes are wrong, give "
        "the pixel size (--pixel-size / pixel_size_um=) to fuse every tile at it"
    )


def _with_z_step(table: TileTable, metas: list[Any]) -> TileTable:
    """A 3D table of image files with the z step its first tile records (ImageJ ``spacing``,
    OME ``PhysicalSizeZ``), the mosaic's z scale, where the table carries none; without one,
    the xy pixel size is the z scale, with a warning. Instrument files' tables carry their
    own (:func:`scopefx.io.read_tile_table` warns there)."""
    if table.ndim != 3 or table.pixel_size_z_um is not None or "vendor" in table.extra:
        return table
    step = getattr(metas[0], "pixel_size_z_um", None)
    if step:
        log.info("%s: z step %g um, as %s records", table.source or "tiles", step, metas[0].path)
        return table.replace(pixel_size_z_um=float(step))
    if table.pixel_size_um is not None:
        log.warning(
            "%s: the first tile, %s, records no z step (ImageJ spacing, OME PhysicalSizeZ): z is "
            "assumed to have the xy pixel size, %g um, the mosaic's z scale (--pixel-size-z / "
            "pixel_size_z_um= gives it)",
            table.source or "tiles", metas[0].path, table.pixel_size_um,
        )  # fmt: skip
    return table


def plan_loaded(
    table: TileTable,
    metas: list[Any],
    *,
    params: FusionParams | None = None,
    read: Reader | None = None,
    workers: int = 4,
    force: bool = False,
) -> FusionPlan:
    """Plan from a table and the headers :func:`load_tiles` read (no pixel is read unless
    ``blend="focus"`` must score tiles that have no focus value)."""
    params = params or FusionParams()
    shapes, channels, dtype = tile_layout(table, metas)
    samples = colour_samples(metas, table.ndim)
    focus = None
    if params.blend == "focus" and any(t.focus is None for t in table):
        given = sum(t.focus is not None for t in table)
        if given:  # a score of another scale would not compare with MHFD's counts
            log.warning("%d of %d tiles have no focus score: every tile is scored (MHFD), the "
                        "%d given are not used", len(table) - given, len(table), given)  # fmt: skip
        focus = _score_focus(table, tile_reader(read, samples), workers)
    return make_plan(
        table,
        shapes,
        channel_shape=channels,
        dtype=dtype,
        params=params,
        focus=focus,
        force=force,
        samples_last=samples,
    )


def _read_image(ref: str) -> Any:
    from ..io import read_image

    return read_image(ref)


# --------------------------------------------------------------------------------------------
# lazy array


def _fuse_block(
    plan: FusionPlan,
    read: Reader | None,
    flatfield: Any,
    device: str | None,
    cache: TileCache,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    loc = block_info[None]["chunk-location"]  # type: ignore[index]
    index = tuple(loc[len(plan.channel_shape) :])
    return fuse_chunk(plan, index, read=read, flatfield=flatfield, device=device, cache=cache)


def _dask_chunks(plan: FusionPlan) -> tuple[tuple[int, ...], ...]:
    spatial = []
    for s, c in zip(plan.shape, plan.chunk, strict=True):
        spatial.append(tuple(min(c, s - i) for i in range(0, s, c)))
    return (*((n,) for n in plan.channel_shape), *spatial)


def fuse_lazy(
    tiles: TileTable | str | os.PathLike[str] | FusionPlan,
    *,
    params: FusionParams | None = None,
    options: FuseOptions | None = None,
    flatfield: Any = None,
    read: Reader | None = None,
    device: str | None = None,
) -> Any:
    """The fused mosaic as a dask array, one task per output chunk; nothing is read yet.

    Parameters
    ----------
    tiles : TileTable, path of a tile table, or FusionPlan
    params : FusionParams, optional
    options : FuseOptions, optional
        Pixel size, rotation, ``skip_missing``, ``force`` (see :func:`plan_fusion`).
    flatfield : FlatField, optional
    read : callable, optional
        ``read(ref) -> array``; default :func:`scopefx.io.read_image`.
    device : {None, "cpu", "gpu", "cuda:N"}
        Where the chunks are computed (``None``: the CPU). A GPU gives the same mosaic, but
        on an H200 it was slower than the CPU's cores (``docs/fusion.md``, "Not done yet").

    Returns
    -------
    dask.array.Array
        Shape ``(*channels, *spatial)``, the tiles' dtype; the plan is
        ``fuse_lazy(...).scopefx_plan``.
    """
    import dask.array as da

    if isinstance(tiles, FusionPlan):
        plan = tiles
    else:
        plan, _ = plan_fusion(tiles, params=params, options=options, read=read)
    fn = functools.partial(_fuse_block, plan, read, flatfield, device, TileCache())
    out = da.map_blocks(
        fn,
        chunks=_dask_chunks(plan),
        dtype=np.dtype(plan.dtype),
        meta=np.empty((0,) * len(plan.full_shape), dtype=plan.dtype),
        name=f"scopefx-fuse-{plan.fingerprint()[:12]}",
    )
    out.scopefx_plan = plan
    return out
