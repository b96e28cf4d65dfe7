"""The z planes of a tile inside an instrument file: which one a reference names
(``file::tile/N/z/K``, ``file::tile/N/z/max``) and the shape of what it reads as. A leaf module,
so :mod:`scopefx.io._vendor` (the front door and the bioio reader) and :mod:`scopefx.io._ome`
(the OME-TIFF reader) share it without importing each other."""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["ZSel", "is_index", "plane_index", "stack_shape"]

ZSel = int | str | None
"""A plane of a z-stack tile: ``None`` (the whole stack), a plane index, or ``"max"``."""


def is_index(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts ``'²'``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def plane_index(zsel: ZSel, size_z: int, ref: str) -> int | None:
    """The plane index ``zsel`` names (``None`` for the whole stack or its projection),
    refused when the tile has no such plane."""
    if isinstance(zsel, int) and not 0 <= zsel < size_z:
        raise ConfigError(
            f"{ref!r}: z plane {zsel} does not exist; the tile has {size_z} plane(s), "
            f"0 to {size_z - 1}"
        )
    return zsel if isinstance(zsel, int) else None


def stack_shape(c: int, z: int, y: int, x: int, zsel: ZSel) -> tuple[int, ...]:
    """Shape of what a reference returns: ``(C,) (Z,) Y, X``, C and Z only when over 1, Z
    gone for one plane or the projection."""
    return ((c,) if c > 1 else ()) + ((z,) if z > 1 and zsel is None else ()) + (y, x)
