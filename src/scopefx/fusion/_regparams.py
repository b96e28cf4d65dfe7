"""The settings of :func:`scopefx.fusion.register`: one frozen, validated object."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import is_number as _number
from .._checks import shown
from ..errors import ConfigError

__all__ = ["AUTO_SHIFT", "BANDING_MODES", "RegistrationParams"]

#: Default search range: this fraction of the pair's smaller tile extent (at least 8 px).
AUTO_SHIFT = 0.15
#: Values of :attr:`RegistrationParams.remove_banding`.
BANDING_MODES = ("auto", "on", "off")


def _check(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{name} must be {expected}, got {shown(value)}")


@dataclass(frozen=True)
class RegistrationParams:
    """Every setting of :func:`register`, validated on construction.

    Parameters
    ----------
    max_shift_px : float, optional
        Largest correction searched per pair and axis, mosaic pixels, finite (searched up to
        the pair's larger tile extent at most). Default (None): 15 % of the pair's smaller
        tile extent, at least 8 px (enough for 5-50 % overlaps and stage errors of a tenth of
        a tile).
    min_overlap_px : float
        Narrowest common part (at the measured shift) a match may rest on; pairs whose stage
        overlap is narrower are still measured, on the overlap enlarged by the search range,
        with the stage overlap as their limit.
    min_quality : float
        NCC (0..1, on high-passed crops) below which a match is not used.
    min_peak_margin : float
        The best match must exceed the best distinct runner-up's NCC by this much; otherwise
        the pair is ambiguous (a repeated pattern) and not used.
    outlier_px : float
        Used pairs whose residual after the solve exceeds this are dropped, worst first.
    prior_weight : float
        Weight of ``c_k = 0`` per tile: fixes the global offset and keeps unconnected tiles at
        their stage position (the least weight of the stage model's prior too).
    highpass_sigma_px : float, optional
        Gaussian (sigma, px) subtracted from each tile before correlation. Default (None) or
        0: none; ``detrend_degree`` removes smooth shading instead, fitted on the common part
        of each shift alike in both tiles (a per-tile high-pass is estimated differently near
        the two tiles' edges, where the overlap lies, and biases smooth content).
    detrend_degree : int
        Each pair's crops are compared minus their least-squares polynomial of this degree
        (0: the mean only; 1: a plane; 2: a quadratic, the default, which takes out
        vignetting over the overlap) fitted on the pixels both tiles hold at each shift.
    estimate_flatfield : bool
        When :func:`register` is given no flat field, estimate one from the tiles themselves
        (:func:`~scopefx.fusion.estimate_flatfield`; at least 8 tiles of one shape, 2D) and
        correlate flat-field-corrected tiles (on by default). The detrend takes out shading
        that adds to the content; vignetting multiplies it, and over wide overlaps of
        low-contrast content that biased matches by 0.2-0.3 px (``cell`` with a
        ``1 - 0.5 r^2`` falloff, 30-45 % overlap; 0.02-0.03 px with the estimate). The
        estimate is shrunk towards flat by its own noise, so unshaded tiles are left as they
        are; where it cannot be made (too few tiles, mixed shapes, a black border) the tiles
        are correlated as read. Only registration sees it: the fused pixels are corrected
        only by the flat field the caller asks for.
    remove_banding : {"auto", "on", "off"}
        Row and column offsets that every tile shares at the same sensor row (column), a
        camera's fixed-pattern banding, match the two tiles of every overlap at their stage
        positions (offsets of the size of the pixel noise put 3x3 mosaics cut from real frames
        5-20 px off). ``"on"``: estimate them from the tiles (2D tiles of one shape, at least
        4) and take out what the tiles share beyond chance. ``"auto"`` (default): only what
        looks like banding: the tiles hold at least 95 % of it in common, which banding of
        half the pixel noise reaches on real frames (0.94-1.00) and tiles without banding did
        not (at most 0.85 over 190 mosaics, where heavy overlaps or a grid-aligned repeated
        pattern share content), and it changes from line to line (lag-1 autocorrelation at
        most 0.5: a black border or shading that every tile shares is smooth, not banding).
        ``"off"``: never. See ``docs/fusion.md``.
    corner_pairs : bool
        Also measure diagonal neighbours that share only a corner (off by default).
    stage_model : bool
        Settle unusable side pairs by the median step of the usable pairs crossing the same
        boundary between rows (columns), else of their row (column); and, where the used
        pairs close at least 3 loops, hold each tile to that model (or to the stage itself,
        whichever predicts the used pairs better) with the weight the loops and the stage's
        scatter give it, so that chains of weak pairs do not add up their errors. False:
        neither (the pairs alone, ``prior_weight`` fixing the common offset).
    min_usable_fraction : float
        Fraction of the side pairs that must give a usable match (0..1): of the pairs the
        solve keeps (loop-confirmed pairs count, outliers do not, nor do weak matches, NCC
        under 0.8, that no loop confirms where the layout gives them loops: such a match is
        as often chance as not; with ``allow_partial`` they are still used).
    allow_partial : bool
        Register with fewer usable pairs than ``min_usable_fraction`` instead of raising.

    Examples
    --------
    >>> RegistrationParams(max_shift_px=80, min_overlap_px=8).to_dict()["max_shift_px"]
    80.0
    """

    max_shift_px: float | None = None
    min_overlap_px: float = 6.0
    min_quality: float = 0.25
    min_peak_margin: float = 0.05
    outlier_px: float = 1.5
    prior_weight: float = 1e-4
    highpass_sigma_px: float | None = None
    detrend_degree: int = 2
    estimate_flatfield: bool = True
    remove_banding: str = "auto"
    corner_pairs: bool = False
    stage_model: bool = True
    min_usable_fraction: float = 0.5
    allow_partial: bool = False

    def __post_init__(self) -> None:
        ms = self.max_shift_px
        ok_ms = ms is None or (_number(ms) and 0 < ms < math.inf)
        _check("max_shift_px", ms, ok_ms, "a finite number > 0, or None")
        for name, lo, hi in (
            ("min_overlap_px", 0, math.inf),
            ("outlier_px", 0, math.inf),
            ("prior_weight", 0, math.inf),
        ):
            v = getattr(self, name)
            _check(name, v, _number(v) and lo < v < hi, "> 0")
        for name in ("min_quality", "min_peak_margin", "min_usable_fraction"):
            v = getattr(self, name)
            _check(name, v, _number(v) and 0 <= v <= 1, "in [0, 1]")
        hp = self.highpass_sigma_px
        ok_hp = hp is None or (_number(hp) and 0 <= hp < math.inf)
        _check("highpass_sigma_px", hp, ok_hp, ">= 0 or None")
        dd = self.detrend_degree
        ok_dd = isinstance(dd, (int, np.integer)) and not isinstance(dd, bool) and 0 <= dd <= 2
        _check("detrend_degree", dd, ok_dd, "0, 1 or 2")
        object.__setattr__(self, "detrend_degree", int(dd))
        rb = self.remove_banding
        _check("remove_banding", rb, rb in BANDING_MODES, f"one of {BANDING_MODES}")
        for name in ("estimate_flatfield", "corner_pairs", "stage_model", "allow_partial"):
            v = getattr(self, name)
            _check(name, v, isinstance(v, bool), "True or False")
        for f in dataclasses.fields(self):  # plain floats, so to_dict round-trips exactly
            v = getattr(self, f.name)
            if _number(v) and f.name != "detrend_degree":
                object.__setattr__(self, f.name, float(v))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able settings (``from_dict`` reads them back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistrationParams:
        """Settings from :meth:`to_dict`; unknown keys are refused by name."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"registration settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown registration setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def pair_reach(params: RegistrationParams, shapes: np.ndarray, i: int, j: int) -> float:
    """Pair ``(i, j)``'s search range: ``max_shift_px`` up to the larger tile's extent (no
    shift beyond it leaves a common part), else the default share of the smaller tile."""
    if params.max_shift_px is not None:
        return min(params.max_shift_px, float(max(shapes[i].max(), shapes[j].max())))
    return max(8.0, AUTO_SHIFT * float(min(shapes[i].min(), shapes[j].min())))
