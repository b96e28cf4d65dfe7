"""Parameters of the MHFD focus score."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

__all__ = ["FocusParams"]

Mode = Literal["exact", "fast"]
Polarity = Literal["dark", "bright", "both"]

_MODES = ("exact", "fast")
_POLARITIES = ("dark", "bright", "both")


@dataclass(frozen=True)
class FocusParams:
    """Parameters of multi-scale histologic feature detection (MHFD).

    Parameters
    ----------
    n_scales : int
        Number of difference-of-Gaussian bands ``n``; the scale space has ``n + 1`` Gaussian
        levels ``t_i = min_sigma_px + (i - 1) (max_sigma_px - min_sigma_px) / n``. Default 16:
        the scale count of the paper's figures; it resolves feature sizes in 1.8 px steps from
        1 to 30 px, and on our benchmark series it correlates better with defocus than 30 scales
        at 0.6x the cost (see ``docs/focus.md``).
    min_sigma_px, max_sigma_px : float
        Smallest and largest Gaussian standard deviation, in pixels of the scored image
        (after ``target_px`` downsampling). Defaults 1 and 30, as in the paper's code at 1024^2.
    saturation_pct : float
        Percent of the darkest and of the brightest pixels saturated before mapping to [0, 1]
        (the paper: 0.175). Both tails are clipped.
    polarity : {"dark", "bright", "both"}
        Which features count. ``"dark"`` keeps the paper's sign,
        ``DoG_i = t_i (L(t_{i+1}) - L(t_i))``, positive at *dark* blobs on a brighter
        surround (stained structures in inverted-contrast backscatter images). ``"bright"``
        flips the sign; ``"both"`` uses the magnitude.
    threshold : float or None
        Minimum scale-normalised DoG response of a feature, in units of the normalised
        [0, 1] intensity. It is a local quantity, so its meaning does not change with image
        size. ``None`` (default) chooses it per image: ``threshold_k * noise_sigma * gain``,
        where ``noise_sigma`` is a robust estimate of the image noise and ``gain`` the largest
        white-noise gain of the DoG filters, so that noise alone rarely makes a feature.
    threshold_k : float
        Multiplier of the automatic threshold (ignored when ``threshold`` is given).
    mode : {"exact", "fast"}
        ``"exact"`` computes every band at full resolution. ``"fast"`` computes bands with
        ``sigma >= 6 px`` on a decimated spectrum and interpolates them back: about 1.4x faster
        on a CPU, within 3 % of ``"exact"`` on in-focus images at good signal-to-noise, but up
        to ~15 % lower on strongly defocused or noisy images (see ``docs/focus.md``).
    target_px : int or None
        Downsample (block mean, integer factor) so the longer side is at most this many
        pixels before scoring; ``None`` scores at full resolution. The paper scored 4k tiles
        at 1024.
    cell_px : int
        Side of the focus-map cells, in pixels of the scored image.
    """

    n_scales: int = 16
    min_sigma_px: float = 1.0
    max_sigma_px: float = 30.0
    saturation_pct: float = 0.175
    polarity: Polarity = "dark"
    threshold: float | None = None
    threshold_k: float = 4.0
    mode: Mode = "exact"
    target_px: int | None = None
    cell_px: int = 256

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        if not isinstance(self.n_scales, int) or isinstance(self.n_scales, bool):
            raise bad("n_scales", "an integer")
        if not 1 <= self.n_scales <= 256:
            raise bad("n_scales", "between 1 and 256")
        for name in ("min_sigma_px", "max_sigma_px", "saturation_pct", "threshold_k"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise bad(name, "a finite number")
        if self.min_sigma_px < 0.5:
            raise bad("min_sigma_px", ">= 0.5 (smaller Gaussians are not resolved by pixels)")
        if self.max_sigma_px <= self.min_sigma_px:
            raise ConfigError(
                f"max_sigma_px must be > min_sigma_px, got max_sigma_px={self.max_sigma_px!r} "
                f"and min_sigma_px={self.min_sigma_px!r}"
            )
        if not 0 <= self.saturation_pct < 50:
            raise bad("saturation_pct", "in [0, 50)")
        if self.polarity not in _POLARITIES:
            raise bad("polarity", f"one of {_POLARITIES}")
        if self.mode not in _MODES:
            raise bad("mode", f"one of {_MODES}")
        if self.threshold is not None and (
            not isinstance(self.threshold, (int, float))
            or not math.isfinite(self.threshold)
            or self.threshold < 0
        ):
            raise bad("threshold", "None or a finite number >= 0")
        if self.threshold_k <= 0:
            raise bad("threshold_k", "> 0")
        if self.target_px is not None and (
            not isinstance(self.target_px, int) or self.target_px < 16
        ):
            raise bad("target_px", "None or an integer >= 16")
        if not isinstance(self.cell_px, int) or self.cell_px < 8:
            raise bad("cell_px", "an integer >= 8")

    @property
    def sigmas_px(self) -> tuple[float, ...]:
        """The ``n + 1`` Gaussian scales ``t_1 .. t_{n+1}`` in pixels."""
        step = (self.max_sigma_px - self.min_sigma_px) / self.n_scales
        return tuple(self.min_sigma_px + i * step for i in range(self.n_scales + 1))

    @property
    def min_image_px(self) -> int:
        """Smallest image side that can be scored: the 3x3 suppression needs 3 pixels and the
        finest DoG band needs room for a feature of ``2 * min_sigma_px``."""
        return max(8, math.ceil(4 * self.min_sigma_px))

    @classmethod
    def resolve(cls, params: FocusParams | None = None, **overrides: Any) -> FocusParams:
        """``params`` (default ``FocusParams()``) with ``overrides`` applied; refuses other
        types with a message that names them."""
        if params is None:
            return cls(**overrides) if overrides else cls()
        if not isinstance(params, FocusParams):
            raise ConfigError(f"params must be a FocusParams, got {type(params).__name__}")
        return params.replace(**overrides) if overrides else params

    def replace(self, **changes: Any) -> FocusParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FocusParams:
        """Build from a dict, refusing unknown keys with their names."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown focus parameter(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**data)
