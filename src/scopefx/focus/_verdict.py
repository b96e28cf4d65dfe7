"""In/out-of-focus verdicts: a calibration from a through-focus series, or a run's own baseline.

Both work on the feature *density* (features per megapixel), so a calibration made on one image
size applies to another and to focus-map cells.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import CalibrationError, ConfigError, ResourceLimitError, ScopefxError
from ._params import FocusParams

_MAX_LOG_DENSITY = 100.0  # |intercept| above it is no log density (features per Mpx)
_DENSITY_FLOOR = 1e-12  # features per Mpx that no feature at all counts as (log of 0)
_MAX_FILE_BYTES = 1 << 20  # a calibration is a few kB: a larger "calibration" is refused

__all__ = ["FLAGGED", "Calibration", "RunBaseline", "Verdict"]

IN_FOCUS = "in_focus"
OUT_OF_FOCUS = "out_of_focus"
PARTIAL = "partial"
WARMUP = "warmup"
#: A run baseline that cannot be trusted (it looks built from out-of-focus or blank sections):
#: the section is not called in focus, and the operator should check the run.
UNVERIFIABLE = "unverifiable"
#: Verdicts that ask the operator to look again.
FLAGGED = (OUT_OF_FOCUS, PARTIAL)

#: A focus-map cell is judged only where the reference expects at least this many features.
MIN_CELL_FEATURES = 40.0


@dataclass(frozen=True)
class Verdict:
    """The verdict on one image.

    ``status`` is ``"in_focus"``, ``"out_of_focus"``, ``"partial"`` (the image as a whole passes
    but some focus-map cells fail: tilt, a wrinkle, charging) or ``"warmup"`` (a run baseline
    without enough history yet).
    """

    status: str
    reference_density: float = math.nan  # baseline or calibrated in-focus density (per Mpx)
    ratio: float = math.nan  # density / reference_density
    defocus: float = math.nan  # estimated |defocus| (calibration only)
    bad_cells: int = 0


def _cells_fail(focus_map: np.ndarray, reference: np.ndarray, ratio: float, cell_px: int) -> int:
    """Cells below ``ratio`` times the reference map, among those expected to hold enough
    features for the comparison to be meaningful."""
    judged = reference * (cell_px * cell_px) / 1e6 >= MIN_CELL_FEATURES
    return int(np.count_nonzero(judged & (focus_map < ratio * reference)))


@dataclass(frozen=True)
class Calibration:
    """``log(density) = intercept - slope * |defocus - center|``, fitted on a through-focus series.

    Attributes
    ----------
    intercept, slope : float
        Fit in natural log of features per megapixel; ``slope > 0``.
    r : float
        Pearson correlation of log(density) with ``|defocus - center|`` (negative).
    n : int
        Images in the fit.
    center : float
        Defocus (or working distance) of best focus, in ``unit``; 0 unless fitted.
    unit : str
        Unit of defocus values (``"um"`` by default).
    max_defocus : float
        Largest |defocus| still called in focus.
    params : dict
        The :class:`FocusParams` the series was scored with; the calibration applies only to
        results scored the same way.
    """

    intercept: float
    slope: float
    r: float
    n: int
    max_defocus: float
    center: float = 0.0
    unit: str = "um"
    params: dict[str, Any] = field(default_factory=dict)
    instrument: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    scopefx_version: str = __version__

    def __post_init__(self) -> None:
        # a hand-edited file (a string, null, NaN or 1e6 where a number was) gave tracebacks
        # after scoring had begun, or called every image in focus
        for name in ("intercept", "slope", "max_defocus", "center"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CalibrationError(f"calibration {name} must be a number, got {value!r}")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an integer beyond float: 10**400 in the JSON
                finite = False
            if not finite:
                shown = (
                    value if isinstance(value, float) else f"an integer of {len(str(value))} digits"
                )
                raise CalibrationError(f"calibration {name} must be finite, got {shown}")
        if abs(self.intercept) > _MAX_LOG_DENSITY:
            raise CalibrationError(
                f"calibration intercept {self.intercept!r} is no log density (|value| <= "
                f"{_MAX_LOG_DENSITY:g}: up to e^{_MAX_LOG_DENSITY:g} features per Mpx)"
            )
        if not self.slope > 0:
            raise CalibrationError(
                f"calibration slope must be > 0 (counts falling with defocus), got {self.slope!r}"
            )
        if not self.max_defocus >= 0:
            raise CalibrationError(f"max_defocus must be >= 0, got {self.max_defocus!r}")
        reach = (self.intercept - math.log(_DENSITY_FLOOR)) / self.slope
        if not self.max_defocus < reach:  # a hand edit (slope or max_defocus 1e300)
            raise CalibrationError(
                f"calibration max_defocus {self.max_defocus!r} is beyond any |defocus| it can "
                f"estimate ({reach:.3g} at most, with slope {self.slope!r}, for an image "
                "without features): every image would be called in focus"
            )
        if isinstance(self.r, bool) or not isinstance(self.r, (int, float)):
            raise CalibrationError(f"calibration r must be a number, got {self.r!r}")
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 0:
            raise CalibrationError(f"calibration n must be a whole number >= 0, got {self.n!r}")
        for name in ("params", "instrument"):
            if not isinstance(getattr(self, name), dict):
                raise CalibrationError(
                    f"calibration {name} must be a mapping, got {getattr(self, name)!r}"
                )
        if not isinstance(self.unit, str):
            raise CalibrationError(f"calibration unit must be a string, got {self.unit!r}")
        try:
            self.focus_params()  # the parameters it records are ones scopefx can score with
        except (ConfigError, TypeError) as exc:
            raise CalibrationError(f"calibration params: {exc}") from None

    @classmethod
    def fit(
        cls,
        defocus: Sequence[float],
        density: Sequence[float],
        *,
        params: FocusParams | None = None,
        fit_center: bool = False,
        max_defocus: float | None = None,
        unit: str = "um",
        instrument: dict[str, Any] | None = None,
    ) -> Calibration:
        """Fit the calibration.

        Parameters
        ----------
        defocus : sequence of float
            Defocus of each image (relative to best focus unless ``fit_center``: then any
            focus coordinate, e.g. the working distance).
        density : sequence of float
            Feature density (features per megapixel) of each image.
        fit_center : bool
            Also find the focus coordinate of best focus (grid search, then least squares).
        max_defocus : float, optional
            In-focus tolerance; default: a quarter of the largest |defocus| in the series.

        Raises
        ------
        CalibrationError
            Fewer than 3 usable images, no spread in defocus, or counts that do not fall
            with defocus.
        """
        x = np.asarray(defocus, dtype=np.float64)
        y = np.asarray(density, dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1:
            raise CalibrationError(
                f"defocus and density must be 1-D of equal length, got {x.shape} and {y.shape}"
            )
        usable = np.isfinite(x) & np.isfinite(y) & (y > 0)
        if usable.sum() < 3:
            raise CalibrationError(
                f"need at least 3 images with features to calibrate, got {int(usable.sum())}"
            )
        x, logy = x[usable], np.log(y[usable])

        def line(center: float) -> tuple[float, float, float]:
            dist = np.abs(x - center)
            if np.ptp(dist) == 0:
                return math.nan, math.nan, math.inf
            coeffs = np.polyfit(dist, logy, 1)
            residuals = logy - np.polyval(coeffs, dist)
            return float(coeffs[1]), float(-coeffs[0]), float(np.sum(residuals**2))

        center = 0.0
        if fit_center:
            grid = np.linspace(x.min(), x.max(), 201)
            fits = [line(c) for c in grid]
            # among the centres about which counts fall with |defocus| (a series on one side
            # of focus was fitted best about its far end, rising, and refused)
            misfit = [f[2] if f[1] > 0 else math.inf for f in fits]
            if not np.isfinite(misfit).any():
                misfit = [f[2] for f in fits]
            center = float(grid[int(np.argmin(misfit))])
        intercept, slope, _ = line(center)
        if not math.isfinite(slope):
            raise CalibrationError("all images have the same |defocus|: nothing to fit")
        dist = np.abs(x - center)
        r = float(np.corrcoef(dist, logy)[0, 1])
        if slope <= 0:
            raise CalibrationError(
                f"feature counts do not fall with |defocus| (slope {-slope:.3g}, r={r:.3f}): "
                "check the defocus values and that the series spans focus"
            )
        if max_defocus is None:
            max_defocus = float(dist.max()) / 4
        return cls(
            intercept=intercept,
            slope=slope,
            r=r,
            n=int(x.size),
            max_defocus=float(max_defocus),
            center=center,
            unit=unit,
            # resolved: the preset's values are written in, so a later change of a preset
            # cannot silently make this calibration apply to a differently defined score
            params=(params or FocusParams()).resolved().to_dict(),
            instrument=dict(instrument or {}),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        )

    @property
    def in_focus_density(self) -> float:
        """Predicted density at best focus (features per megapixel)."""
        return math.exp(self.intercept)

    @property
    def min_density(self) -> float:
        """Smallest density still called in focus."""
        return math.exp(self.intercept - self.slope * self.max_defocus)

    def estimate_defocus(self, density: float | np.ndarray) -> Any:
        """Estimated |defocus| (in ``unit``) from feature density; 0 at or above best focus."""
        logd = np.log(np.maximum(np.asarray(density, dtype=np.float64), _DENSITY_FLOOR))
        out = np.maximum((self.intercept - logd) / self.slope, 0.0)
        return float(out) if np.ndim(out) == 0 else out

    def focus_params(self) -> FocusParams | None:
        """The focus parameters the calibration was made with (``None`` when it does not say:
        saved before they were recorded)."""
        if not self.params:
            return None
        names = {f.name for f in dataclasses.fields(FocusParams)}
        known = {k: v for k, v in self.params.items() if k in names}
        known.setdefault("scale_weight", 0.0)  # saved before scale_weight existed
        known.setdefault("band_ratio", 0.0)  # saved before band_ratio existed
        return FocusParams.from_dict(known)

    def check_params(self, params: FocusParams) -> None:
        """Raise :class:`CalibrationError` unless ``params`` score images as the calibration did."""
        if not self.params:
            return
        # compare resolved parameters: a modality preset and the same values given explicitly
        # score alike, and a calibration saved before presets existed (no modality) is em
        ours = params.resolved().to_dict()
        known = {k: v for k, v in self.params.items() if k in ours}
        # saved before scale_weight existed: every feature counted 1, whatever the preset says now
        known.setdefault("scale_weight", 0.0)
        known.setdefault("band_ratio", 0.0)
        try:
            theirs = {**self.params, **FocusParams.from_dict(known).resolved().to_dict()}
        except ConfigError:
            theirs = dict(self.params)
        differ = {k: (v, ours.get(k)) for k, v in theirs.items() if ours.get(k) != v}
        differ.pop("cell_px", None)  # the map cell size does not change densities
        if differ:
            detail = ", ".join(f"{k}: calibrated {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise CalibrationError(
                f"the calibration was made with other focus parameters ({detail}); "
                "score with the calibration's parameters or calibrate again"
            )

    def verdict(self, density: float) -> Verdict:
        """In or out of focus from the estimated |defocus| of a whole image.

        Partly defocused images are found by comparing focus-map cells with the same cells of
        recent sections (:class:`RunBaseline`), since content varies within a section.
        """
        estimate = self.estimate_defocus(density)
        return Verdict(
            status=OUT_OF_FOCUS if estimate > self.max_defocus else IN_FOCUS,
            reference_density=self.in_focus_density,
            ratio=density / self.in_focus_density,
            defocus=estimate,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the calibration as JSON (a profile per instrument setting)."""
        path = Path(path)
        path.write_text(json.dumps({"scopefx_calibration": 1, **self.to_dict()}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration written by :meth:`save`.

        Raises
        ------
        CalibrationError
            The file is missing, not JSON, or not a scopefx calibration.
        """
        from ..io.confined import read_bytes  # a regular file: no FIFO, device or link out

        path = Path(path)
        try:  # /dev/zero was read until memory ran out, a FIFO hung, 300 MB were read whole
            data = json.loads(read_bytes(path, limit=_MAX_FILE_BYTES))
        except FileNotFoundError:
            raise CalibrationError(f"calibration file {str(path)!r} does not exist") from None
        except ResourceLimitError as exc:
            raise CalibrationError(
                f"calibration file {str(path)!r}: {exc}; a calibration is a few kB: is it the "
                "right file?"
            ) from None
        except ScopefxError as exc:  # not a regular file; outside the data roots
            raise CalibrationError(f"calibration file {str(path)!r}: {exc}") from None
        except (OSError, ValueError, RecursionError) as exc:  # nested 100,000 deep: Recursion
            why = "nested too deep" if isinstance(exc, RecursionError) else exc
            raise CalibrationError(f"calibration file {str(path)!r} is not JSON: {why}") from None
        version = data.get("scopefx_calibration") if isinstance(data, dict) else None
        if isinstance(version, int) and not isinstance(version, bool) and version > 1:
            raise CalibrationError(
                f"{str(path)!r} is a calibration of a newer format ({version}; this scopefx, "
                f"{__version__}, reads format 1): update scopefx, or calibrate again"
            )
        if not isinstance(data, dict) or data.pop("scopefx_calibration", None) != 1:
            raise CalibrationError(
                f"{str(path)!r} is not a scopefx calibration (no 'scopefx_calibration': 1 key); "
                "make one with `scopefx calibrate`"
            )
        return cls.from_dict(data, source=f"calibration file {str(path)!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "calibration") -> Calibration:
        """Build from :meth:`to_dict` output (unknown keys are ignored, for newer files)."""
        if not isinstance(data, dict):
            raise CalibrationError(f"{source} must be a dict, got {type(data).__name__}")
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields}
        required = [f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]  # fmt: skip
        missing = [name for name in required if name not in data]
        if missing:  # was "Calibration.__init__() missing 4 required positional arguments"
            raise CalibrationError(
                f"{source} lacks the field(s) {', '.join(missing)}, which every calibration "
                "holds; make it again with `scopefx calibrate`"
            )
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise CalibrationError(f"{source} is incomplete: {exc}") from None
        except CalibrationError as exc:  # a value no calibration holds: say where it is
            raise CalibrationError(f"{source}: {exc}") from None


class RunBaseline:
    """Verdicts relative to the run itself, for live runs without a calibration.

    The reference is the median density of the last ``window`` sections judged in focus (a
    robust running median: one bad section does not move it, and out-of-focus sections never
    enter it). A section is out of focus when its density falls below ``ratio`` times the
    reference, and ``partial`` when focus-map cells fall below ``cell_ratio`` times the same
    cells' median over those sections (stricter than ``ratio``: the content of a cell changes
    more from section to section than that of a whole image, while a defocused region drops
    to a tenth or less). The first ``warmup`` sections build the baseline and are reported
    ``"warmup"`` (they are still judged against the baseline once it exists: see
    :meth:`rejudge`).

    Parameters
    ----------
    window : int
        Sections in the running median.
    ratio : float
        Fraction of the baseline below which a section is out of focus, in (0, 1).
    cell_ratio : float
        Fraction of a cell's baseline below which the cell fails, in (0, 1).
    warmup : int
        Sections needed before verdicts are given.
    """

    def __init__(
        self, *, window: int = 25, ratio: float = 0.5, cell_ratio: float = 0.3, warmup: int = 5
    ) -> None:
        if not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an integer >= 1, got {window!r}")
        if not 0 < ratio < 1:
            raise ConfigError(f"ratio must be in (0, 1), got {ratio!r}")
        if not 0 < cell_ratio < 1:
            raise ConfigError(f"cell_ratio must be in (0, 1), got {cell_ratio!r}")
        if not isinstance(warmup, int) or not 1 <= warmup <= window:
            raise ConfigError(f"warmup must be an integer in [1, window={window}], got {warmup!r}")
        self.window, self.ratio, self.cell_ratio, self.warmup = window, ratio, cell_ratio, warmup
        self._densities: deque[float] = deque(maxlen=window)
        self._maps: deque[np.ndarray] = deque(maxlen=window)

    @property
    def reference(self) -> float:
        """Current baseline density (``nan`` until ``warmup`` sections are in)."""
        if len(self._densities) < self.warmup:
            return math.nan
        return float(np.median(self._densities))

    def _judge(self, density: float) -> Verdict:
        """In or out of focus against the current reference (``warmup`` without one)."""
        reference = self.reference
        if math.isnan(reference):
            return Verdict(status=WARMUP)
        ratio = density / reference if reference > 0 else math.inf
        status = OUT_OF_FOCUS if ratio < self.ratio else IN_FOCUS
        return Verdict(status=status, reference_density=reference, ratio=ratio)

    def update(
        self, density: float, *, focus_map: np.ndarray | None = None, cell_px: int = 256
    ) -> Verdict:
        """Judge one section and, if it is in focus, add it to the baseline."""
        verdict = self._judge(density)
        comparable = (
            verdict.status == IN_FOCUS
            and focus_map is not None
            and focus_map.size > 1
            and bool(self._maps)
            and all(m.shape == focus_map.shape for m in self._maps)
        )
        if comparable:
            median_map = np.median(np.stack(self._maps), axis=0)
            bad = _cells_fail(np.asarray(focus_map), median_map, self.cell_ratio, cell_px)
            if bad:
                verdict = dataclasses.replace(verdict, status=PARTIAL, bad_cells=bad)
        if verdict.status in (IN_FOCUS, WARMUP):
            self._densities.append(density)
            if focus_map is not None:
                self._maps.append(np.asarray(focus_map))
        return verdict

    def restart(
        self, densities: Sequence[float], focus_maps: Sequence[np.ndarray | None] = ()
    ) -> None:
        """Build the baseline again from these sections alone (those that rose when a run
        turns out to have started out of focus): what it held before no longer counts."""
        self._densities.clear()
        self._maps.clear()
        self._densities.extend(float(d) for d in densities)
        self._maps.extend(np.asarray(m) for m in focus_maps if m is not None)

    def rejudge(self, density: float) -> Verdict:
        """Judge a density against the current baseline without adding it (for warm-up sections)."""
        return self._judge(density)
