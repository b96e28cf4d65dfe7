"""Length units in micrometres: the one table that every reader of a recorded pixel size or
position uses (plain TIFF and OME headers, Fibics records, OME-TIFF tiles and stage positions).
A leaf module, so :mod:`scopefx.io._metadata`, :mod:`scopefx.io._ome` and
:mod:`scopefx.io._vendor` share it without importing each other."""

from __future__ import annotations

import math
import unicodedata

__all__ = ["LENGTH_UNITS", "length_um", "same_pixel_size", "value_um"]

#: Micrometres per unit, by the unit's name in lower case (NFC). OME writes the symbols (``Å``,
#: ``µm``); Fibics ``um``; ImageJ ``micron`` or ``\u00b5m`` (those six characters).
_TO_UM = {
    "pm": 1e-6,
    "å": 1e-4,
    "a": 1e-4,
    "angstrom": 1e-4,
    "ångström": 1e-4,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "um": 1.0,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # Greek mu
    "\\u00b5m": 1.0,
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "in": 25400.0,
    "inch": 25400.0,
}

#: The units named in messages (each converts; the table knows more spellings).
LENGTH_UNITS = ("pm", "Å", "nm", "µm", "mm", "cm", "m", "in")


def length_um(unit: str) -> float | None:
    """Micrometres per ``unit`` (``"Å"``, ``"nm"``, ``"µm"``, ``"micron"``, ...; any case,
    surrounding blanks ignored), or ``None`` for a unit that is not a length scopefx knows
    (``"reference frame"``, ``"pixel"``).

    Examples
    --------
    >>> length_um("Å"), length_um(" NM "), length_um("reference frame")
    (0.0001, 0.001, None)
    """
    return _TO_UM.get(unicodedata.normalize("NFC", unit).strip().lower())


def value_um(value: str | None, unit: str | None) -> float | None:
    """A recorded length, ``value`` (text) in ``unit`` (µm where none is given), in micrometres;
    ``None`` where it is absent, not a finite number, or in a unit that is not a known length."""
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    factor = length_um(unit or "µm")
    return None if factor is None or not math.isfinite(v) else v * factor


#: Pixel sizes more than this fraction apart are not one pixel size.
SAME_PIXEL_SIZE = 0.01


def same_pixel_size(a: float, b: float) -> bool:
    """Whether pixel size ``a`` is ``b`` within :data:`SAME_PIXEL_SIZE` (1 %) of ``b``: one
    rule for the images of an OME-TIFF and for the tiles of a table."""
    return abs(a - b) <= SAME_PIXEL_SIZE * abs(b)


#: Pixel sizes (micrometres) outside this range are taken as unknown: a file that claims one
#: carries a placeholder (0.01 nm is below any instrument, 50 um above any microscope camera).
PLAUSIBLE_PIXEL_UM = (1e-5, 50.0)


def plausible_pixel_size(size: float | None) -> bool:
    """Whether ``size`` (um) lies in :data:`PLAUSIBLE_PIXEL_UM` (False for 0, negative, NaN)."""
    lo, hi = PLAUSIBLE_PIXEL_UM
    return size is not None and lo <= float(size) <= hi


def implausible_note(path: object, size: float, what: str = "a pixel size") -> str:
    """Why an instrument file's recorded pixel size is not taken, and what to do."""
    lo, hi = PLAUSIBLE_PIXEL_UM
    return (f"'{path}' records {what} of {float(size):g} um, which no microscope has "
            f"(plausible: {lo:g} to {hi:g} um); give the right one (--pixel-size / "
            "pixel_size_um=)")  # fmt: skip
