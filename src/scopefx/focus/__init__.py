"""Focus QC by multi-scale histologic feature detection (MHFD).

High-level API first: :func:`focus_score` for one image, :func:`score_files` for a batch,
:class:`FocusRun` (with a :class:`Calibration` or a :class:`RunBaseline`) for the verdicts of
a run. Plots live in :mod:`scopefx.focus.plot`, the float64 reference in
:mod:`scopefx.focus.reference`.
"""

from ._batch import CSV_COLUMNS, FocusRecord, score_files, score_one
from ._noise import NoiseModel
from ._params import FocusParams
from ._run import BASELINE_RATIO, FocusRun
from ._score import FocusResult, focus_response, focus_score
from ._verdict import FLAGGED, Calibration, RunBaseline, Verdict

__all__ = [  # noqa: RUF022 (plain sorted order, as tests/test_api.py pins)
    "BASELINE_RATIO",
    "CSV_COLUMNS",
    "Calibration",
    "FLAGGED",
    "FocusParams",
    "FocusRecord",
    "FocusResult",
    "FocusRun",
    "NoiseModel",
    "RunBaseline",
    "Verdict",
    "focus_response",
    "focus_score",
    "score_files",
    "score_one",
]
