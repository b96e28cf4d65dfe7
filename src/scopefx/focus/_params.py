"""Parameters of the MHFD focus score."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

from .._checks import is_finite, shown
from ..errors import ConfigError

__all__ = ["PRESETS", "FocusParams", "Preset"]

Mode = Literal["exact", "fast"]
Polarity = Literal["dark", "bright", "both"]
Modality = Literal["em", "fluorescence", "brightfield"]
NoiseModelKind = Literal["global", "signal"]

_MODES = ("exact", "fast")
_POLARITIES = ("dark", "bright", "both")
_NOISE_MODELS = ("global", "signal")

#: Largest focus-map cell side, in pixels. A cell larger than the image gives the same one-cell
#: map, but an image with transparent pixels is padded to whole cells (a mask of ``cell_px^2``
#: bytes at least: 16 MiB at this value, 10^12 bytes at ``cell_px=10**6``), and beyond
#: 2^31 - 1 the map's int32 indices overflowed.
MAX_CELL_PX = 4096
#: Largest Gaussian scale, in pixels: four times it must fit in the image (``min_image_px``),
#: and at 1e308 that product overflowed.
MAX_SIGMA_PX = 65536.0


@dataclass(frozen=True)
class Preset:
    """What a ``modality`` sets when the corresponding field is left at ``None``."""

    polarity: Polarity
    noise_model: NoiseModelKind
    threshold_k: float
    scale_weight: float = 0.0
    band_ratio: float = 0.0


#: Modality presets, chosen by measurement (``bench/focus_real.py``, ``docs/focus.md``).
#: ``em``: the paper's defaults (dark features, one global noise level, 4 sigma, every feature
#: counts 1), unchanged. ``fluorescence`` and ``brightfield``: noise that follows the signal;
#: on the light-sheet series ``dark`` (the dim gaps between bright structures) follows defocus
#: better than ``bright`` or ``both``.
#:
#: ``fluorescence`` counts every feature 1 at 6 sigma and multiplies the count by the image's
#: noise-corrected band energy ratio ``R = (E_1 - N_1) / (E_r - N_r)`` (``band_ratio=1``):
#: ``E_i`` the mean square of DoG band ``i``, ``N_i`` the part of it the noise model predicts,
#: band 1 the finest (``t_1``), band ``r`` the first with ``t_r >= 4 t_1`` (4.6 px at the
#: defaults). Why: a count above ``k`` noise deviations depends on how bright the specimen is
#: and how much of the frame it fills, as well as on focus; on the light-sheet series the
#: earlier ``(t_1 / t_i)^2`` weight at 9 sigma (mitochondria r -0.949, microtubules -0.820)
#: scored the in-focus microtubules (29 /Mpx) below the out-of-focus mitochondria (48): pooled
#: in/out AUC 0.805. ``R`` is a ratio of two energies of the same frame, so the amount of
#: structure and its brightness cancel, and subtracting each band's noise energy takes out the
#: signal-to-noise ratio, which the count cannot; defocus takes energy from the finest band
#: first (the spectral-shape idea behind PLLS and DCTS, specimen-independent focus measures).
#: On the real series: mitochondria r -0.965, microtubules -0.831, pooled AUC 0.974; synthetic
#: suite (``mhfd-fluo``, high SNR) mean r -0.991, worst -0.973, pooled AUC 0.876. Every k from
#: 5 to 10 meets the targets (r <= -0.90 mean, -0.75 worst; AUC >= 0.90); k = 6 by the rule
#: of the earlier sweep (smoothed mean r over k - 1..k + 1, within 0.005 the smaller k).
#: ``brightfield`` keeps the plain count at 6 sigma: on its one real series the weight cost
#: r (-0.948 against -0.969 at k = 6), and k = 10 (best there, -0.987) fell to a worst r of
#: -0.70 against -0.85 on synthetic low-SNR series: too few features left.
PRESETS: dict[str, Preset] = {
    "em": Preset(polarity="dark", noise_model="global", threshold_k=4.0),
    "fluorescence": Preset(polarity="dark", noise_model="signal", threshold_k=6.0, band_ratio=1.0),
    "brightfield": Preset(polarity="dark", noise_model="signal", threshold_k=6.0),
}


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
        (after ``target_px`` downsampling). Defaults 1 and 30, as in the paper's code at 1024^2;
        at most 65536.
    saturation_pct : float
        Percent of the darkest and of the brightest pixels saturated before mapping to [0, 1]
        (the paper: 0.175). Both tails are clipped.
    modality : {"em", "fluorescence", "brightfield"}
        Which instrument made the image; it chooses the defaults of ``polarity``,
        ``noise_model``, ``threshold_k``, ``scale_weight`` and ``band_ratio`` (each used only
        while that field is ``None``; a value given explicitly always wins). See
        :data:`PRESETS` and ``docs/focus.md``:

        ============  ========  ===========  ===========  ============  ==========
        modality      polarity  noise_model  threshold_k  scale_weight  band_ratio
        ============  ========  ===========  ===========  ============  ==========
        em            dark      global       4            0             0
        fluorescence  dark      signal       6            0             1
        brightfield   dark      signal       6            0             0
        ============  ========  ===========  ===========  ============  ==========
    polarity : {"dark", "bright", "both"} or None
        Which features count (``None``: from ``modality``). ``"dark"`` keeps the paper's sign,
        ``DoG_i = t_i (L(t_{i+1}) - L(t_i))``, positive at *dark* blobs on a brighter
        surround (stained structures in inverted-contrast backscatter images). ``"bright"``
        flips the sign; ``"both"`` uses the magnitude.
    threshold : float or None
        Minimum scale-normalised DoG response of a feature, in units of the normalised
        [0, 1] intensity. It is a local quantity, so its meaning does not change with image
        size. ``None`` (default) chooses it per image, per feature:
        ``threshold_k * sigma(mu) * gain``, where ``sigma(mu)`` is the image noise at the local
        mean intensity ``mu`` around the feature (see ``noise_model``), floored at the
        quantisation noise of one grey level, and ``gain`` the largest white-noise gain of the
        DoG filters, so that noise alone rarely makes a feature.
    threshold_k : float or None
        Multiplier of the automatic threshold (ignored when ``threshold`` is given;
        ``None``: from ``modality``).
    noise_model : {"global", "signal"} or None
        ``"global"``: one robust noise level for the whole image (the median absolute
        Immerkaer residual). ``"signal"``: a Poisson-Gaussian noise level function
        ``sigma(mu)^2 = a mu + b`` fitted to binned robust residuals against local mean
        intensity, so a feature in a bright region is judged against the (larger) shot
        noise there. ``None``: from ``modality``.
    scale_weight : float or None
        Each feature adds ``(t_1 / t_i)^scale_weight`` to the score, ``t_i`` the scale of the
        band it peaked in (``None``: from ``modality``). With 0 (the paper's, and ``em``'s)
        every feature counts 1 and the score is the count. With 2 a feature counts by its
        area relative to the finest scale's, so an isolated blob that blur widens from ``s``
        to ``sqrt(s^2 + b^2)`` counts ``s^2 / (s^2 + b^2)``: the score follows defocus in
        sparse images, where blur widens features rather than merging them.
    band_ratio : float or None
        Exponent ``b``: every feature's weight is multiplied by ``R^b``, ``R`` the image's
        noise-corrected band energy ratio ``(E_1 - N_1) / (E_r - N_r)`` (``E_i`` the mean
        square of DoG band ``i``, ``N_i`` the noise model's share of it; band ``r`` the first
        with ``t_r >= 4 t_1``; see :attr:`FocusResult.band_ratio`). ``None``: from
        ``modality``; 0 (``em``, ``brightfield``) leaves the score a count.
    channel : int or None
        For a colour (H, W, 3|4) image: score this channel (0 = red). ``None`` scores the
        luma ``0.2125 R + 0.7154 G + 0.0721 B`` (ITU-R BT.709, as ``skimage.color.rgb2gray``),
        rounded back to the input's integer type; alpha is ignored. An (H, W, 2) image (grey +
        alpha, or two channels) is scored on this channel, ``None`` the first. Grey images
        ignore it.
    mode : {"exact", "fast"}
        ``"exact"`` computes every band at full resolution. ``"fast"`` computes bands with
        ``sigma >= 6 px`` on a decimated spectrum and interpolates them back: 1.35-1.6x faster
        on a CPU, within 3 % of ``"exact"`` on in-focus images at good signal-to-noise, but up
        to ~15 % lower on strongly defocused or noisy images (see ``docs/focus.md``).
    target_px : int or None
        Downsample (block mean, integer factor) so the longer side is at most this many
        pixels before scoring; ``None`` scores at full resolution. The paper scored 4k tiles
        at 1024.
    cell_px : int
        Side of the focus-map cells, in pixels of the scored image. From 8 to 4096.
    """

    n_scales: int = 16
    min_sigma_px: float = 1.0
    max_sigma_px: float = 30.0
    saturation_pct: float = 0.175
    modality: Modality = "em"
    polarity: Polarity | None = None
    threshold: float | None = None
    threshold_k: float | None = None
    noise_model: NoiseModelKind | None = None
    scale_weight: float | None = None
    band_ratio: float | None = None
    channel: int | None = None
    mode: Mode = "exact"
    target_px: int | None = None
    cell_px: int = 256

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"{name} must be {expected}, got {shown(getattr(self, name))}")

        if not isinstance(self.n_scales, int) or isinstance(self.n_scales, bool):
            raise bad("n_scales", "an integer")
        if not 1 <= self.n_scales <= 256:
            raise bad("n_scales", "between 1 and 256")
        for name in (
            "min_sigma_px",
            "max_sigma_px",
            "saturation_pct",
            "threshold_k",
            "scale_weight",
            "band_ratio",
        ):
            value = getattr(self, name)
            if name in ("threshold_k", "scale_weight", "band_ratio") and value is None:
                continue
            if not is_finite(value):
                raise bad(name, "a finite number")
        if self.min_sigma_px < 0.5:
            raise bad("min_sigma_px", ">= 0.5 (smaller Gaussians are not resolved by pixels)")
        for name in ("min_sigma_px", "max_sigma_px"):
            if getattr(self, name) > MAX_SIGMA_PX:
                raise bad(name, f"<= {MAX_SIGMA_PX:g} px (wider than any image scopefx reads)")
        if self.max_sigma_px <= self.min_sigma_px:
            raise ConfigError(
                f"max_sigma_px must be > min_sigma_px, got max_sigma_px={self.max_sigma_px!r} "
                f"and min_sigma_px={self.min_sigma_px!r}"
            )
        if not 0 <= self.saturation_pct < 50:
            raise bad("saturation_pct", "in [0, 50)")
        if not isinstance(self.modality, str) or self.modality not in PRESETS:
            raise bad("modality", f"one of {tuple(PRESETS)}")
        if self.polarity is not None and self.polarity not in _POLARITIES:
            raise bad("polarity", f"None or one of {_POLARITIES}")
        if self.noise_model is not None and self.noise_model not in _NOISE_MODELS:
            raise bad("noise_model", f"None or one of {_NOISE_MODELS}")
        if self.channel is not None and (
            not isinstance(self.channel, int) or isinstance(self.channel, bool) or self.channel < 0
        ):
            raise bad("channel", "None or an integer >= 0 (0 = red)")
        if self.mode not in _MODES:
            raise bad("mode", f"one of {_MODES}")
        if self.threshold is not None and (not is_finite(self.threshold) or self.threshold < 0):
            raise bad("threshold", "None or a finite number >= 0")
        if self.threshold_k is not None and self.threshold_k <= 0:
            raise bad("threshold_k", "> 0")
        if self.scale_weight is not None and not 0 <= self.scale_weight <= 8:
            raise bad("scale_weight", "None or in [0, 8]")
        if self.band_ratio is not None and not 0 <= self.band_ratio <= 8:
            raise bad("band_ratio", "None or in [0, 8]")
        if self.target_px is not None and (
            not isinstance(self.target_px, int)
            or isinstance(self.target_px, bool)
            or self.target_px < 16
        ):
            raise bad("target_px", "None or an integer >= 16")
        if not isinstance(self.cell_px, int) or isinstance(self.cell_px, bool) or self.cell_px < 8:
            raise bad("cell_px", "an integer >= 8")
        if self.cell_px > MAX_CELL_PX:
            raise bad("cell_px", f"<= {MAX_CELL_PX} px (a map cell larger than most images)")

    @property
    def preset(self) -> Preset:
        """The defaults of ``modality``."""
        return PRESETS[self.modality]

    @property
    def resolved_polarity(self) -> Polarity:
        """``polarity``, or the modality's when it is ``None``."""
        return self.preset.polarity if self.polarity is None else self.polarity

    @property
    def resolved_threshold_k(self) -> float:
        """``threshold_k``, or the modality's when it is ``None``."""
        return self.preset.threshold_k if self.threshold_k is None else float(self.threshold_k)

    @property
    def resolved_noise_model(self) -> NoiseModelKind:
        """``noise_model``, or the modality's when it is ``None``."""
        return self.preset.noise_model if self.noise_model is None else self.noise_model

    @property
    def resolved_scale_weight(self) -> float:
        """``scale_weight``, or the modality's when it is ``None``."""
        return self.preset.scale_weight if self.scale_weight is None else float(self.scale_weight)

    @property
    def resolved_band_ratio(self) -> float:
        """``band_ratio``, or the modality's when it is ``None``."""
        return self.preset.band_ratio if self.band_ratio is None else float(self.band_ratio)

    def resolved(self) -> FocusParams:
        """A copy with the modality's preset written into every field left at ``None``.

        Two parameter sets that score alike compare equal once resolved (e.g. to check that
        a calibration applies).
        """
        return self.replace(
            polarity=self.resolved_polarity,
            threshold_k=self.resolved_threshold_k,
            noise_model=self.resolved_noise_model,
            scale_weight=self.resolved_scale_weight,
            band_ratio=self.resolved_band_ratio,
        )

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
    def resolve(
        cls, params: FocusParams | None = None, *, calibration: Any = None, **overrides: Any
    ) -> FocusParams:
        """``params`` with ``overrides`` applied; refuses other types with a message that names
        them. Without ``params``: the parameters ``calibration`` (a
        :class:`~scopefx.focus.Calibration`) was made with, where it records them (the only
        ones it can be used with), else ``FocusParams()``."""
        if calibration is not None and not hasattr(calibration, "focus_params"):
            hint = (f"; load the file with Calibration.load({calibration!r})"
                    if isinstance(calibration, (str, os.PathLike)) else "")  # fmt: skip
            raise ConfigError(
                f"calibration must be a Calibration, got {type(calibration).__name__}{hint}"
            )
        if params is None:
            own = calibration.focus_params() if calibration is not None else None
            base = own if own is not None else cls()
            return base.replace(**overrides) if overrides else base
        if not isinstance(params, FocusParams):
            raise ConfigError(f"params must be a FocusParams, got {type(params).__name__}")
        return params.replace(**overrides) if overrides else params

    def replace(self, **changes: Any) -> FocusParams:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``None`` fields stay ``None`` (meaning "from modality")."""
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
