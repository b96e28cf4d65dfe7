"""scopefx: focus QC and mosaic fusion for microscopy runs.

Importing scopefx has no side effects: nothing is read or written, CuPy is not imported.
"""

from ._version import __version__
from .focus import (
    Calibration,
    FocusParams,
    FocusRecord,
    FocusResult,
    RunBaseline,
    focus_response,
    focus_score,
    score_files,
)

__all__ = [
    "Calibration",
    "FocusParams",
    "FocusRecord",
    "FocusResult",
    "RunBaseline",
    "__version__",
    "focus_response",
    "focus_score",
    "score_files",
]
