"""OME-Zarr (NGFF) multiscale images: layout, metadata, and durable chunk writes.

Two flavours are written:

* **NGFF 0.4 on Zarr v2** (the default). It is what the widest set of readers opens today:
  napari through napari-ome-zarr / ome-zarr-py, Fiji (MoBIE, n5-viewer), QuPath, neuroglancer,
  vizarr. Chunk keys use ``/`` separators, as 0.4 requires.
* **NGFF 0.5 on Zarr v3** (``ngff="0.5"``), for readers that have moved to Zarr v3.

Every level has a ``scale`` (pixel size times the level's factor) and a ``translation``
(the mosaic origin, shifted by half the level's extra pixel extent so that level centres stay
on the same physical grid). Levels halve every spatial axis until the image fits one chunk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["OmeZarrSpec", "create_ome_zarr", "multiscales_metadata"]

NGFF_VERSIONS = ("0.4", "0.5")
_SPATIAL = ("z", "y", "x")


@dataclass(frozen=True)
class OmeZarrSpec:
    """Shape and metadata of a multiscale image.

    ``shape`` and ``chunks`` include the channel axis (first) when ``channels`` is set;
    ``pixel_size`` and ``origin`` are per spatial axis (index order), in ``unit``.
    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    pixel_size: tuple[float, ...]
    origin: tuple[float, ...]
    unit: str | None = "micrometer"
    channels: int | None = None
    channel_names: tuple[str, ...] | None = None
    """Names of the channels (e.g. from the instrument file), written as OMERO labels."""
    channel_colors: tuple[str, ...] | None = None
    """OMERO display colour of each channel, ``RRGGBB`` (``None``: white); with names only."""
    ngff: str = "0.4"
    fill_value: float = 0
    name: str = "mosaic"
    max_levels: int = 10

    def __post_init__(self) -> None:
        if self.ngff not in NGFF_VERSIONS:
            raise ConfigError(f"ngff must be one of {NGFF_VERSIONS}, got {self.ngff!r}")
        names = self.channel_names
        if names is not None and len(names) != (self.channels or 1):
            raise ConfigError(
                f"{len(names)} channel names {list(names)} for {self.channels or 1} channel(s)"
            )
        colors = self.channel_colors
        if colors is not None and (names is None or len(colors) != len(names)):
            raise ConfigError(f"channel colours {list(colors)} need one channel name each")

    @property
    def n_spatial(self) -> int:
        return len(self.pixel_size)

    @property
    def zarr_format(self) -> int:
        return 2 if self.ngff == "0.4" else 3

    def level_shapes(self) -> list[tuple[int, ...]]:
        """Array shape of every pyramid level (channels kept, spatial axes halved)."""
        lead = len(self.shape) - self.n_spatial
        spatial = self.shape[lead:]
        shapes = [tuple(self.shape)]
        cap = max(self.chunks[lead:])
        while max(spatial) > cap and len(shapes) < self.max_levels:
            spatial = tuple(max(1, math.ceil(s / 2)) for s in spatial)
            shapes.append((*self.shape[:lead], *spatial))
        return shapes

    def axes(self) -> list[dict[str, str]]:
        out = [{"name": "c", "type": "channel"}] if self.channels is not None else []
        for name in _SPATIAL[-self.n_spatial :]:
            axis = {"name": name, "type": "space"}
            if self.unit:
                axis["unit"] = self.unit
            out.append(axis)
        return out


def multiscales_metadata(spec: OmeZarrSpec) -> dict[str, Any]:
    """The ``multiscales`` entry (without the version key) for ``spec``."""
    lead = len(spec.shape) - spec.n_spatial
    datasets = []
    for level in range(len(spec.level_shapes())):
        f = 2.0**level
        scale = [1.0] * lead + [p * f for p in spec.pixel_size]
        shift = [0.0] * lead + [
            o + (f - 1) / 2 * p for o, p in zip(spec.origin, spec.pixel_size, strict=True)
        ]
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": shift},
                ],
            }
        )
    return {
        "name": spec.name,
        "axes": spec.axes(),
        "datasets": datasets,
        "type": "mean",
        "metadata": {"method": "scopefx: mean of 2^ndim blocks, rounded"},
    }


def omero_metadata(spec: OmeZarrSpec) -> dict[str, Any] | None:
    """The ``omero`` entry naming the channels (``None`` without channel names): what napari
    and OMERO show as channel labels."""
    if spec.channel_names is None:
        return None
    import numpy as np

    kind = np.dtype(spec.dtype)
    top = float(np.iinfo(kind).max) if kind.kind in "ui" else 1.0
    window = {"min": 0.0, "max": top, "start": 0.0, "end": top}
    colors = spec.channel_colors or ("FFFFFF",) * len(spec.channel_names)
    channels = [
        {"label": str(name), "color": str(color), "active": True, "window": dict(window)}
        for name, color in zip(spec.channel_names, colors, strict=True)
    ]
    model = "color" if spec.channel_colors else "greyscale"
    return {"channels": channels, "rdefs": {"model": model}}


def _compressor(zarr_format: int) -> Any:
    """Blosc LZ4 with byte shuffle: on 1024^2 uint16 EM tiles it encodes in ~2 ms against
    ~13 ms for zstd-3 with bit shuffle, for a ratio of 1.30 instead of 1.42."""
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def create_ome_zarr(
    path: str | os.PathLike[str], spec: OmeZarrSpec, *, extra_attrs: dict[str, Any] | None = None
) -> list[Any]:
    """Create (or re-create identically) the group, its metadata and every level's array.

    Existing chunk files are kept: calling this again with the same spec is how a resumed
    write re-opens its output. Returns the level arrays, finest first.
    """
    import zarr

    from ._zarrstore import open_store

    store = open_store(path, mode="a", fsync=True)  # no link followed, every file made durable
    group = zarr.open_group(store=store, mode="a", zarr_format=spec.zarr_format)  # type: ignore[arg-type]
    arrays = []
    for level, shape in enumerate(spec.level_shapes()):
        kwargs: dict[str, Any] = {}
        if spec.zarr_format == 2:
            kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
        else:
            kwargs["dimension_names"] = [a["name"] for a in spec.axes()]
        name = str(level)
        if name in group and _same_array(group[name], shape, spec):
            arrays.append(group[name])
            continue
        arrays.append(
            group.create_array(
                name,
                shape=shape,
                chunks=tuple(min(c, s) for c, s in zip(spec.chunks, shape, strict=True)),
                dtype=spec.dtype,
                fill_value=np.array(spec.fill_value).astype(spec.dtype).item(),
                compressors=_compressor(spec.zarr_format),
                overwrite=True,
                **kwargs,
            )
        )
    multiscales = multiscales_metadata(spec)
    attrs: dict[str, Any]
    if spec.ngff == "0.4":
        attrs = {"multiscales": [{"version": "0.4", **multiscales}]}
        if (omero := omero_metadata(spec)) is not None:
            attrs["omero"] = {"version": "0.4", **omero}
    else:
        attrs = {"ome": {"version": "0.5", "multiscales": [multiscales]}}
        if (omero := omero_metadata(spec)) is not None:
            attrs["ome"]["omero"] = omero
    attrs.update(extra_attrs or {})
    group.attrs.update(attrs)
    return arrays


def _same_array(node: Any, shape: Sequence[int], spec: OmeZarrSpec) -> bool:
    return (
        hasattr(node, "shape")
        and tuple(node.shape) == tuple(shape)
        and str(node.dtype) == str(np.dtype(spec.dtype))
    )


def chunk_file(path: Path, level: int, zarr_format: int, index: Sequence[int]) -> Path:
    """Where a chunk's bytes live (unsharded arrays, ``/`` keys)."""
    parts = [str(i) for i in index]
    if zarr_format == 3:
        parts = ["c", *parts]
    return path.joinpath(str(level), *parts)


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage (no-op when it does not exist: an empty chunk)."""
    try:  # never through a link, never blocking on a FIFO planted there
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
