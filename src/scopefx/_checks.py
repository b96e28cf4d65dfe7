"""Checks of caller-given parameter values shared by the parameter objects
(:class:`~scopefx.FocusParams`, :class:`~scopefx.FusionParams`,
:class:`~scopefx.fusion.RegistrationParams`): values that arrive as JSON from any caller, so a
string, a list or a 400-digit integer must be refused by name, never fail inside a comparison."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["is_finite", "is_number", "json_safe", "shown"]


def is_number(value: Any) -> bool:
    """A real number (Python's or NumPy's), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A real number that is finite as a float (an integer too large for a float is not)."""
    if not is_number(value):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to about ``limit`` characters (a caller's
    400-digit number or megabyte string is not echoed whole)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's 4,300-digit limit on converting it to text
        return f"an integer of about {int(value.bit_length() * 0.30103):,} digits"
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_safe(value: Any, *, null: bool = False) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples) written as Zarr's
    strings for them (``"NaN"``, ``"Infinity"``, ``"-Infinity"``), or as ``None`` with
    ``null`` (a figure not measured, in a report), so ``json.dumps(..., allow_nan=False)``
    succeeds and JavaScript readers can parse what scopefx writes."""
    if isinstance(value, dict):
        return {k: json_safe(v, null=null) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v, null=null) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None if null else _NON_FINITE[repr(float(value))]
    return value
