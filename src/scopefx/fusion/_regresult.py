"""What :func:`~scopefx.fusion.register` returns: a :class:`Registration` (the refined tile
table and the evidence behind it) holding a :class:`PairResult` for each neighbouring pair, whose
``status`` is one of ``STATUSES``."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from ..io import TileTable
from ._regparams import RegistrationParams

__all__ = ["STATUSES", "PairResult", "Registration"]


#: Values of :attr:`PairResult.status`.
STATUSES = ("used", "outlier", "low_quality", "ambiguous", "blank", "corner")


@dataclass(frozen=True)
class PairResult:
    """What one overlap measured.

    Attributes
    ----------
    i, j : int
        Tile indices, ``i < j``.
    shift_px : tuple of float
        Correction of tile ``j`` relative to tile ``i`` beyond what the current transforms
        predict, index order, mosaic pixels (NaN when nothing could be measured).
    quality : float
        Normalised cross-correlation (0..1) of the two crops at the shift, each minus its
        polynomial fit over their common pixels (``detrend_degree``).
    overlap_px : tuple of int
        Extent of the stage overlap, index order.
    used : bool
        The measurement entered the final solve.
    residual_px : float
        ``|(c_j - c_i) - shift|`` after the solve; NaN when the shift was not measurable.
    status : str
        ``"used"``, ``"outlier"`` (dropped by the solve), ``"low_quality"`` (NCC under
        ``min_quality``, not above chance, or the best shift on the edge of the search),
        ``"ambiguous"`` (a runner-up match almost as good), ``"blank"`` (no content) or
        ``"corner"`` (diagonal neighbour, not measured).
    runner_up : float
        The best distinct other shift, on the NCC scale (shifts are ranked by a lower
        confidence bound of their NCC, so a thin common part does not win by chance; the
        runner-up is that bound plus the match's own margin between NCC and bound).
    weight : float
        Weight in the solve (0 when not used).
    modelled_px : tuple of float or None
        For an unusable side pair: the stage-model correction put in its place.
    """

    i: int
    j: int
    shift_px: tuple[float, ...]
    quality: float
    overlap_px: tuple[int, ...]
    used: bool
    residual_px: float
    status: str = "used"
    runner_up: float = 0.0
    weight: float = 0.0
    modelled_px: tuple[float, ...] | None = None


@dataclass(frozen=True, eq=False)
class Registration:
    """The refined tile table and the evidence behind it.

    Attributes
    ----------
    table : TileTable
        Each affine's translation column corrected; the linear parts are unchanged.
    pairs : tuple of PairResult
        Every neighbouring pair, sorted by ``(i, j)``.
    corrections_px : ndarray, shape (n_tiles, ndim)
        Correction added to each tile's translation, index order, mosaic pixels.
    params : RegistrationParams
        The settings used.
    stage_table : TileTable or None
        The table before registration.
    flatfield : str
        The flat field the tiles were corrected by before correlation: ``"given"`` (the
        caller's), ``"estimated"`` (from the tiles, ``RegistrationParams.estimate_flatfield``)
        or ``"none"``.
    banding : str
        ``"removed"`` when row and column offsets shared by the tiles (a camera's banding,
        ``RegistrationParams.remove_banding``) were found and taken out before correlation,
        else ``"none"``.
    """

    table: TileTable
    pairs: tuple[PairResult, ...]
    corrections_px: np.ndarray
    params: RegistrationParams = dataclasses.field(default_factory=RegistrationParams)
    stage_table: TileTable | None = None
    flatfield: str = "none"
    banding: str = "none"

    @property
    def rms_residual_px(self) -> float:
        """Root-mean-square residual over the used pairs (NaN when none was used)."""
        res = [p.residual_px for p in self.pairs if p.used]
        return float(np.sqrt(np.mean(np.square(res)))) if res else math.nan

    def pairs_to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write ``i,j,ref_i,ref_j,dx,dy[,dz],quality,used,residual_px,status`` (x, y order)."""
        axes = ["dx", "dy", "dz"][: self.table.ndim]
        refs = self.table.refs

        def num(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["i", "j", "ref_i", "ref_j", *axes, "quality", "used", "residual_px",
                        "status"])  # fmt: skip
            for p in self.pairs:
                shift = [num(v) for v in p.shift_px[::-1]]
                w.writerow([p.i, p.j, refs[p.i], refs[p.j], *shift, num(p.quality), p.used,
                            num(p.residual_px), p.status])  # fmt: skip
