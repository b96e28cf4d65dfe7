"""Pure checks of whether a run's focus evidence can be trusted, for the verdict policy.

Nothing here decides a verdict: these functions turn per-record quantities (density,
``noise_limited``, modality) into reasons to doubt a run baseline, which the run verdict
object can report as "unverifiable" instead of "in focus".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "CALIBRATION_ABOVE",
    "IN_FOCUS_DENSITY_FLOOR",
    "baseline_doubts",
    "calibration_doubts",
    "head_doubts",
    "rises",
]

#: Lowest in-focus density (score per megapixel) measured per modality with its preset,
#: divided by 4 as a margin (bench/results/focus_real.txt, bench/results/focus_accuracy.txt):
#: a baseline below it is more likely a run that starts out of focus, or blank, than sparse
#: content. em: the sparsest synthetic in-focus image (retina, ~1440/Mpx at high SNR).
#: fluorescence: the light-sheet series, whose score is the count times the band energy ratio
#: (in focus 69.8-79/Mpx for microtubules, 76.6-79/Mpx for mitochondria; it was 6.5 for the
#: earlier weighted score). brightfield: one series (in focus ~2190/Mpx).
IN_FOCUS_DENSITY_FLOOR = {"em": 360.0, "fluorescence": 17.0, "brightfield": 550.0}


def baseline_doubts(
    densities: Sequence[float],
    *,
    modality: str,
    noise_limited: Sequence[bool] | None = None,
    warmup: int = 5,
    ratio: float = 0.5,
) -> list[str]:
    """Reasons to doubt a run baseline built from the first ``warmup`` sections.

    Parameters
    ----------
    densities : sequence of float
        Feature densities (per megapixel) of the run's sections, in acquisition order.
    modality : str
        The :class:`FocusParams` modality they were scored with.
    noise_limited : sequence of bool, optional
        ``FocusResult.noise_limited`` of the same sections.
    warmup, ratio : int, float
        As in :class:`RunBaseline`.

    Returns
    -------
    list of str
        Empty when nothing is suspicious; else any of ``"low_for_modality"`` (the warm-up
        median is below :data:`IN_FOCUS_DENSITY_FLOOR`), ``"rises_after_warmup"`` (a later
        stretch of ``warmup`` sections has a median above ``warmup median / ratio``: the run
        started out of focus, so the warm-up sections were judged against themselves),
        ``"noise_limited_warmup"`` (most warm-up sections are noise-limited).
    """
    values = np.asarray(densities, dtype=np.float64)
    if values.size < warmup:
        return []
    head = float(np.median(values[:warmup]))
    flags = noise_limited[:warmup] if noise_limited is not None else None
    doubts = head_doubts(values[:warmup].tolist(), modality=modality, noise_limited=flags)
    if values.size >= 2 * warmup:
        windows = np.lib.stride_tricks.sliding_window_view(values[warmup:], warmup)
        if any(rises(head, window, ratio) for window in windows):
            doubts.insert(int("low_for_modality" in doubts), "rises_after_warmup")
    return doubts


def head_doubts(
    densities: Sequence[float], *, modality: str, noise_limited: Sequence[bool] | None = None
) -> list[str]:
    """The doubts known once the warm-up sections are in (``densities`` and
    ``noise_limited`` of those sections): ``"low_for_modality"``, ``"noise_limited_warmup"``."""
    doubts = []
    if float(np.median(densities)) < IN_FOCUS_DENSITY_FLOOR.get(modality, 0.0):
        doubts.append("low_for_modality")
    if noise_limited is not None and sum(bool(v) for v in noise_limited) > len(densities) / 2:
        doubts.append("noise_limited_warmup")
    return doubts


def rises(head: float, window: Sequence[float], ratio: float) -> bool:
    """Whether a later stretch of sections (``window``) has a median density above the
    warm-up median ``head`` divided by ``ratio``: the run started out of focus."""
    later = float(np.median(window))
    return head <= 0 or (math.isfinite(later) and later > head / ratio)


#: A section "above" a calibration holds more than this many times the density it predicts at
#: best focus. Two light-sheet specimens (mitochondria, microtubules) differ by 4x in focus
#: (bench/results/focus_real.txt); within a series the in-focus frames stay under 1.2x.
CALIBRATION_ABOVE = 3.0
#: Sections above a calibration that doubt it (one could be debris or a bright artefact).
_ABOVE_SECTIONS = 2


def calibration_doubts(
    *, sections: int, above: int, best: float, in_focus: float, min_density: float
) -> list[str]:
    """Reasons to doubt that a calibration fits a run, from what the run has scored so far.

    Parameters
    ----------
    sections : int
        Sections judged with the calibration.
    above : int
        Of those, how many hold over :data:`CALIBRATION_ABOVE` times ``in_focus``.
    best : float
        The highest density among them.
    in_focus, min_density : float
        The calibration's predicted density at best focus, and its lowest in-focus density.

    Returns
    -------
    list of str
        ``"above_calibration"`` when two or more sections are above it (the calibration came
        from sparser content: out-of-focus sections may pass as in focus; within a series the
        in-focus frames stay under 1.2x, and a through-focus or drifting run holds few of
        them, so a rule of "most sections" missed a calibration from another specimen that
        passed 18 of 23 out-of-focus frames), ``"below_calibration"``
        when not one section came within a factor 2 of its in-focus range (the whole run is
        out of focus, or the calibration came from denser content). Nothing before 5 sections.
    """
    if sections < 5:
        return []
    doubts = []
    if above >= _ABOVE_SECTIONS:
        doubts.append("above_calibration")
    if best < min_density / 2:
        doubts.append("below_calibration")
    return doubts
