"""Mosaic fusion: tiles placed by their transforms, fused chunk by chunk into OME-Zarr.

High-level API: :func:`fuse` (write an OME-Zarr mosaic, resumably), which is :func:`prepare`
(table, headers, registration, flat field, plan, store) then ``job.finish()``, and
:func:`fuse_lazy` (the mosaic as a dask array). A job's options travel as one
:class:`FuseOptions`, its resampling and blending as one :class:`FusionParams`.
:func:`plan_fusion` and :func:`fuse_chunk` expose the two halves: the pure-geometry plan and
the per-chunk execution. :func:`register` refines stage positions from the tiles' overlaps;
:class:`FlatField` removes vignetting. :class:`FusionJob` (:func:`prepare_fusion` from a plan)
writes a mosaic in stages, so that regions of it can be fused by separate tasks (the remote
``plan_mosaic`` / ``fuse_region`` functions).
"""

from ..io import Tile, TileTable, read_tile_table
from ._blend import TileCache, fuse_chunk
from ._flatfield import FlatField, estimate_flatfield, flatfield_from_images, load_flatfield
from ._fuse import fuse_lazy, plan_fusion
from ._job import FusionJob, FusionResult, prepare_fusion
from ._overlaps import overlapping_pairs
from ._params import BLENDS, FuseOptions, FusionParams
from ._plan import FusionPlan, make_plan
from ._qc import qc_only, registration_report, report_summary, sidecar, write_report
from ._register import register
from ._regparams import BANDING_MODES, RegistrationParams
from ._regresult import PairResult, Registration
from ._resume import unfinished
from ._write import TiffJob, fuse, prepare, qc
from .plot import plot_mosaic, write_preview

__all__ = [  # noqa: RUF022 (the high-level API first, then sorted)
    "fuse",
    "fuse_lazy",
    "prepare",
    "BANDING_MODES",
    "BLENDS",
    "FlatField",
    "FuseOptions",
    "FusionJob",
    "FusionParams",
    "FusionPlan",
    "FusionResult",
    "PairResult",
    "Registration",
    "RegistrationParams",
    "TiffJob",
    "Tile",
    "TileCache",
    "TileTable",
    "estimate_flatfield",
    "flatfield_from_images",
    "fuse_chunk",
    "load_flatfield",
    "make_plan",
    "overlapping_pairs",
    "plan_fusion",
    "plot_mosaic",
    "prepare_fusion",
    "qc",
    "qc_only",
    "read_tile_table",
    "register",
    "registration_report",
    "report_summary",
    "sidecar",
    "unfinished",
    "write_preview",
    "write_report",
]
