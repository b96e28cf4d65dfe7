"""Focus QC by multi-scale histologic feature detection (MHFD).

High-level API first: :func:`focus_score` for one image, :func:`score_files` for a batch,
:class:`Calibration` and :class:`RunBaseline` for verdicts. Plots live in
:mod:`scopefx.focus.plot`, the float64 reference in :mod:`scopefx.focus.reference`.
"""

from ._batch import CSV_COLUMNS, FocusRecord, score_files
from ._noise import NoiseModel
from ._params import FocusParams
from ._score import FocusResult, focus_response, focus_score
from ._verdict import Calibration, RunBaseline, Verdict

__all__ = [
    "CSV_COLUMNS",
    "Calibration",
    "FocusParams",
    "FocusRecord",
    "FocusResult",
    "NoiseModel",
    "RunBaseline",
    "Verdict",
    "focus_response",
    "focus_score",
    "score_files",
]
