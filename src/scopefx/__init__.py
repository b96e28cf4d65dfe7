"""scopefx: focus QC and mosaic fusion for microscopy runs.

Importing scopefx has no side effects: nothing is read or written, CuPy is not imported.
"""

from ._version import __version__
from .focus import (
    Calibration,
    FocusParams,
    FocusRecord,
    FocusResult,
    FocusRun,
    RunBaseline,
    focus_response,
    focus_score,
    score_files,
)
from .fusion import (
    FuseOptions,
    FusionParams,
    FusionResult,
    TileTable,
    fuse,
    fuse_lazy,
    prepare,
    read_tile_table,
)
from .remote import Client

__all__ = [
    "Calibration",
    "Client",
    "FocusParams",
    "FocusRecord",
    "FocusResult",
    "FocusRun",
    "FuseOptions",
    "FusionParams",
    "FusionResult",
    "RunBaseline",
    "TileTable",
    "__version__",
    "focus_response",
    "focus_score",
    "fuse",
    "fuse_lazy",
    "prepare",
    "read_tile_table",
    "score_files",
]
