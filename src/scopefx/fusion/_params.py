"""Parameters of mosaic fusion."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["BLENDS", "FusionParams"]

Blend = Literal["linear", "mean", "max", "first", "closest", "focus"]
BLENDS: tuple[str, ...] = ("linear", "mean", "max", "first", "closest", "focus")
ORDERS = (0, 1, 3)


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
        Width of the linear ramp of ``"linear"``/``"focus"`` weights; ``None``: the typical
        overlap between neighbouring tiles (from the plan), at least 8 px.
    fill : float
        Value where no tile covers the mosaic.
    focus_gamma : float
        Sharpness of ``"focus"`` blending (see ``blend``).
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
            return ConfigError(f"{name} must be {expected}, got {getattr(self, name)!r}")

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
        if self.feather_px is not None and not self.feather_px >= 0:
            raise bad("feather_px", ">= 0 or None")
        if not self.focus_gamma >= 0:
            raise bad("focus_gamma", ">= 0")
        if not self.max_output_gib > 0:
            raise bad("max_output_gib", "> 0")

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
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown fusion parameters {unknown}; known: {sorted(names)}")
        return cls(**data)
