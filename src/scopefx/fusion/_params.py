"""Parameters of mosaic fusion."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .._checks import is_finite, is_number, shown
from ..errors import ConfigError
from ._regparams import RegistrationParams

__all__ = ["BLENDS", "NGFF_VERSIONS", "FuseOptions", "FusionParams"]

Blend = Literal["linear", "mean", "max", "first", "closest", "focus"]
BLENDS: tuple[str, ...] = ("linear", "mean", "max", "first", "closest", "focus")
ORDERS = (0, 1, 3)
NGFF_VERSIONS = ("0.4", "0.5")
#: Widest feather ramp (:attr:`FusionParams.feather_px`), px: wider than any tile scopefx reads.
MAX_FEATHER_PX = 65536
#: Largest :attr:`FusionParams.focus_gamma`: past it the sharpest tile wins outright anyway.
MAX_FOCUS_GAMMA = 64
#: What ``FuseOptions.z_plane`` takes besides a plane index.
Z_CHOICES = ("best", "max")


@dataclass(frozen=True)
class FusionParams:
    """How tiles are resampled, blended and chunked.

    Parameters
    ----------
    blend : {"linear", "mean", "max", "first", "closest", "focus"}
        ``"linear"`` (default): feathered; each tile's weight falls linearly to (almost) zero
        toward its edges across ``feather_px``, so seams and vignetting steps fade out.
        ``"mean"``: plain average where tiles overlap. ``"max"``: maximum (DaskFusion's
        behaviour; ghosts where tiles disagree). ``"first"``: the first tile in the table
        wins, ``"closest"``: the tile whose centre is closest wins (no blending; for label
        images use ``order=0`` with these). ``"focus"``: feathered weights scaled by each
        tile's MHFD focus score, ``(score / best score) ** focus_gamma``, so the sharper tile
        wins in overlaps.
    order : {0, 1, 3}
        Interpolation order for tiles that are not placed at whole pixels (nearest, linear,
        cubic spline). Integer translations are copied by slicing whatever the order.
    chunk_px : int or None
        Side of the output chunks (and of the OME-Zarr chunks); ``None``: 1024 in 2D,
        256 in 3D. Memory per task is about ``chunk_px**ndim * (8 + itemsize)`` bytes
        plus the tiles the chunk touches.
    feather_px : float or None
        Width of the linear ramp of ``"linear"``/``"focus"`` weights, 0 to ``MAX_FEATHER_PX``
        (65536); ``None``: the typical overlap between neighbouring tiles (from the plan), at
        least 8 px.
    fill : float
        Value where no tile covers the mosaic: finite, or NaN for float tiles.
    focus_gamma : float
        Sharpness of ``"focus"`` blending (see ``blend``), 0 to ``MAX_FOCUS_GAMMA`` (64). A
        tile's focus weight is at least 1e-12, so where it alone covers the mosaic it is
        used however sharp its neighbours are.
    max_output_gib : float
        Refuse mosaics larger than this (usually a unit mix-up in the positions); ``force``
        in :func:`scopefx.fuse` overrides.
    """

    blend: Blend = "linear"
    order: int = 1
    chunk_px: int | None = None
    feather_px: float | None = None
    fill: float = 0.0
    focus_gamma: float = 4.0
    max_output_gib: float = 1024.0

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name} must be {expected}, got {shown(getattr(self, name))}")

        if self.blend not in BLENDS:
            raise bad("blend", f"one of {BLENDS}")
        if self.order not in ORDERS or isinstance(self.order, bool):
            raise bad("order", "0, 1 or 3")
        if self.chunk_px is not None and (
            not isinstance(self.chunk_px, int) or isinstance(self.chunk_px, bool)
        ):
            raise bad("chunk_px", "an integer or None")
        if self.chunk_px is not None and not 16 <= self.chunk_px <= 16384:
            raise bad("chunk_px", "between 16 and 16384")
        feather = self.feather_px
        if feather is not None and not (is_finite(feather) and 0 <= feather <= MAX_FEATHER_PX):
            raise bad("feather_px", f"None or a number in [0, {MAX_FEATHER_PX}] px")
        if not (is_finite(self.focus_gamma) and 0 <= self.focus_gamma <= MAX_FOCUS_GAMMA):
            raise bad("focus_gamma", f"a number in [0, {MAX_FOCUS_GAMMA}]")
        nan = isinstance(self.fill, (float, np.floating)) and math.isnan(self.fill)
        if not (is_finite(self.fill) or nan):
            raise bad("fill", "a finite number or NaN")
        if not (is_number(self.max_output_gib) and self.max_output_gib > 0):
            raise bad("max_output_gib", "a number > 0")

    def chunk_for(self, ndim: int) -> int:
        """Chunk side for a mosaic with ``ndim`` spatial dimensions."""
        if self.chunk_px is not None:
            return self.chunk_px
        return 1024 if ndim == 2 else 256

    def replace(self, **changes: Any) -> FusionParams:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionParams:
        """Build from :meth:`to_dict` output, refusing unknown keys by name."""
        return _from_dict(cls, data, "fusion parameters")


def _from_dict(cls: Any, data: Any, what: str) -> Any:
    """``cls(**data)`` for a plain dict, refusing other types and unknown keys by name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {what} {unknown}; known: {sorted(names)}")
    return cls(**data)


@dataclass(frozen=True)
class FuseOptions:
    """What a fusion job reads and how it writes: one typed object that travels whole from
    the CLI through the wire to :func:`scopefx.fuse` (with :class:`FusionParams`, which says
    how tiles are resampled and blended).

    Parameters
    ----------
    pixel_size_um : float or None
        Pixel size in micrometres, for tables in micrometres and the output's physical
        scale; ``None``: from the table or the tiles' metadata.
    pixel_size_z_um : float or None
        Z step (distance between planes) of z-stack tiles, in micrometres: divides a table's
        ``z_um`` and is the 3D mosaic's z scale. ``None``: what the instrument file or the
        first tile records (OME ``PhysicalSizeZ``, ImageJ ``spacing``), else the xy pixel
        size, with a warning. Ignored for 2D mosaics.
    rotation_deg : float
        Camera rotation relative to the stage, applied to stage positions.
    flip_x, flip_y : bool
        The stage's x (y) axis runs against the image's columns (rows): positions are
        negated along it (see :func:`scopefx.io.read_tile_table`).
    skip_missing : bool
        Fill the area of missing tiles (and list them) instead of refusing the job.
    force : bool
        Allow a mosaic over ``FusionParams.max_output_gib`` (locally; on an endpoint the
        limits are the endpoint's settings).
    register : bool
        Refine the positions from the tiles' overlaps before fusing (on flat-field-corrected
        tiles when there is a flat field); the refined table, the per-pair results and the
        stitching QC report (``<name>.qc.json``, ``<name>.qc.png``) are written beside the
        output.
    registration : RegistrationParams
        How ``register`` measures and solves: search range, minimum overlap, quality, whether
        a partial registration is accepted. A plain dict is converted.
    flatfield : str, path or None
        Vignetting correction: ``"estimate"`` (from the tiles), a saved ``.npz``, or
        ``"FLAT[,DARK]"`` image references.
    ngff : {"0.4", "0.5"}
        NGFF 0.4 on Zarr v2 (the most widely readable) or 0.5 on Zarr v3.
    pyramid : bool
        Write downsampled levels (halving until the image fits one chunk).
    resume : bool
        Finish an interrupted write: chunks recorded as done are skipped.
    overwrite : bool
        Replace a mosaic scopefx wrote earlier at the output.
    preview : str, path or None
        Also write a downsampled PNG with the tile outlines here.
    z_plane : int, "best", "max" or None
        For z-stack tiles of an instrument file (OME-TIFF, CZI, ND2, LIF), a 2D mosaic of
        one plane per tile instead of the 3D mosaic of the stacks (``None``, the default):
        plane ``K`` (from 0) of every tile, ``"best"`` (each tile's sharpest plane, the
        highest MHFD focus score; every plane of every tile is read and scored once) or
        ``"max"`` (each tile's maximum-intensity projection). Refused for tables of image
        files.
    scene : int, str or None
        The mosaic to read from an instrument file that holds several (a CZI's scenes, the
        tile scans of a LIF project): its index from 0 or its name. ``None``: the first (a
        LIF's first tile scan), with a warning that names the others. Refused for tables.

    Examples
    --------
    >>> from scopefx.fusion import FuseOptions
    >>> FuseOptions(register=True, ngff="0.5").to_dict()["ngff"]
    '0.5'
    """

    pixel_size_um: float | None = None
    pixel_size_z_um: float | None = None
    rotation_deg: float = 0.0
    flip_x: bool = False
    flip_y: bool = False
    skip_missing: bool = False
    force: bool = False
    register: bool = False
    registration: RegistrationParams = field(default_factory=RegistrationParams)
    flatfield: str | None = None
    ngff: str = "0.4"
    pyramid: bool = True
    resume: bool = False
    overwrite: bool = False
    preview: str | None = None
    z_plane: int | str | None = None
    scene: int | str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name} must be {expected}, got {shown(getattr(self, name))}")

        if isinstance(self.registration, dict):  # from JSON
            object.__setattr__(
                self, "registration", RegistrationParams.from_dict(self.registration)
            )
        if not isinstance(self.registration, RegistrationParams):
            raise bad("registration", "a RegistrationParams (or its dict)")
        for name in ("flip_x", "flip_y", "skip_missing", "force", "register", "pyramid",
                     "resume", "overwrite"):  # fmt: skip
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        for name in ("pixel_size_um", "pixel_size_z_um"):
            size = getattr(self, name)
            if size is not None and not (is_finite(size) and size > 0):
                raise bad(name, "None or a finite number > 0")
        if not is_number(self.rotation_deg):
            raise bad("rotation_deg", "a number of degrees")
        if not is_finite(self.rotation_deg):
            raise bad("rotation_deg", "a finite number of degrees")
        for name in ("flatfield", "preview"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):  # kept as plain text: the options are JSON data
                object.__setattr__(self, name, value := os.fspath(value))
            if value is not None and (not isinstance(value, str) or not value or "\0" in value):
                raise bad(name, "None or a non-empty path string")
        flat = self.flatfield
        if flat is not None and "," in flat and not all(p.strip() for p in flat.split(",", 1)):
            raise bad("flatfield", "'estimate', FLAT or FLAT,DARK (both named)")
        if self.preview is not None and not self.preview.lower().endswith(".png"):
            raise bad("preview", "None or a path ending in .png (the preview is a PNG)")
        if self.ngff not in NGFF_VERSIONS:
            raise bad("ngff", f"one of {NGFF_VERSIONS}")
        z = self.z_plane
        index = isinstance(z, int) and not isinstance(z, bool) and z >= 0
        if not (z is None or index or (isinstance(z, str) and z in Z_CHOICES)):
            raise bad("z_plane", f"None, a plane index >= 0 or one of {Z_CHOICES}")
        sc = self.scene
        if not (sc is None or (isinstance(sc, int) and not isinstance(sc, bool)
                               and 0 <= sc < 10**18)
                or (isinstance(sc, str) and 0 < len(sc) <= 1000 and "\0" not in sc)):  # fmt: skip
            raise bad("scene", "None, a scene index >= 0 or a scene's name")
        if self.resume and self.overwrite:
            raise ConfigError(
                "resume and overwrite exclude each other: resume keeps what is "
                "written, overwrite replaces it; choose one"
            )

    def replace(self, **changes: Any) -> FuseOptions:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FuseOptions:
        """Build from :meth:`to_dict` output, refusing unknown keys by name."""
        return _from_dict(cls, data, "fuse options")

    @classmethod
    def resolve(cls, options: FuseOptions | None = None, **overrides: Any) -> FuseOptions:
        """``options`` (default ``FuseOptions()``) with ``overrides`` applied."""
        if options is None:
            return cls.from_dict(overrides)
        if not isinstance(options, FuseOptions):
            raise ConfigError(f"options must be a FuseOptions, got {type(options).__name__}")
        if not overrides:
            return options
        return cls.from_dict({**options.to_dict(), **overrides})
