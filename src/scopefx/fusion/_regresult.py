"""What :func:`~scopefx.fusion.register` returns: a :class:`Registration` (the refined tile
table and the evidence behind it) holding a :class:`PairResult` for each neighbouring pair, whose
``status`` is one of ``STATUSES``; :meth:`Registration.placed_by` says what placed each tile,
one of ``PLACEMENTS``."""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..io import TileTable
from ._regparams import RegistrationParams

__all__ = ["PLACEMENTS", "STATUSES", "PairResult", "Registration", "unmatched_note"]


#: Values of :attr:`PairResult.status`.
STATUSES = ("used", "outlier", "low_quality", "ambiguous", "blank", "corner")

#: Values of :meth:`Registration.placed_by`: at least one of the tile's pairs was used; none
#: was, and the stage model set one of them; none was and none was modelled (a tile that
#: overlaps no other, or the stage model is off), so the tile kept its stage position.
PLACEMENTS = ("registration", "stage model", "stage position")


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
        ``|(c_j - c_i) - shift|`` after the solve (``modelled_px`` in place of the shift where
        a used pair has one); NaN when the shift was not measurable.
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
        Weight in the solve (0 when not used); the smallest over the axes where the pair's
        shift is known worse along one of them (see ``Measured.spread``).
    modelled_px : tuple of float or None
        For an unusable side pair: the stage-model correction put in its place. For a used
        pair that alone joins its tiles along an axis where its NCC is a ridge (one straight
        feature across the overlap): the correction the solve took, its shift drawn there
        towards the stage model's step by their precision.
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

    def pairs_used_per_tile(self) -> np.ndarray:
        """How many used pairs (measured and in the final solve, not set by the stage model)
        each tile has, shape ``(n_tiles,)``."""
        counts = np.zeros(len(self.table), dtype=int)
        for p in self.pairs:
            if p.used:
                counts[[p.i, p.j]] += 1
        return counts

    def placed_by(self) -> tuple[str, ...]:
        """What placed each tile, one of ``PLACEMENTS`` per tile: ``"registration"`` (at
        least one used pair), ``"stage model"`` (no used pair; the stage model set one of its
        pairs) or ``"stage position"`` (no used pair and none modelled)."""
        used = self.pairs_used_per_tile()
        modelled = np.zeros(len(self.table), dtype=bool)
        for p in self.pairs:
            if p.modelled_px is not None:
                modelled[[p.i, p.j]] = True
        return tuple(PLACEMENTS[0] if u else PLACEMENTS[1] if m else PLACEMENTS[2]
                     for u, m in zip(used, modelled, strict=True))  # fmt: skip

    def unmatched_tiles(self) -> tuple[int, ...]:
        """The tiles that have a measured pair (any but a ``"corner"`` pair left unmeasured)
        and no used one: no match placed them, only the stage model or their stage position,
        however far off it is."""
        used = self.pairs_used_per_tile()
        measured = {k for p in self.pairs if p.status != "corner" for k in (p.i, p.j)}
        return tuple(k for k in sorted(measured) if not used[k])

    def _bridges_among(self, keep: Sequence[int]) -> set[int]:
        """Of the pairs ``keep`` (indices into ``pairs``), those no loop of them runs through."""
        from ._loops import _bridges

        links = np.array([(self.pairs[k].i, self.pairs[k].j) for k in keep], dtype=int)
        return {keep[e] for e in _bridges(len(self.table), links.reshape(-1, 2))}

    def unchecked_pairs(self) -> tuple[int, ...]:
        """Indices into ``pairs`` of the used pairs that no loop of used pairs runs through:
        each is the only used link between two groups of tiles, so nothing checks its shift
        and its residual is 0 whatever its error (every pair of a 1 x N strip; in a grid, a
        pair whose neighbours' pairs failed)."""
        return tuple(sorted(self._bridges_among([k for k, p in enumerate(self.pairs) if p.used])))

    def unconfirmed_weak_pairs(self) -> tuple[int, ...]:
        """Of :meth:`unchecked_pairs`, the weak ones (NCC under ``STRONG_MATCH``, 0.8) that
        the layout does give loops (their loops' other pairs failed): such a match is as often
        chance as not, and it does not count towards ``min_usable_fraction``. Over the 3x3 and
        4x4 cuts of ``bench/register_real_cut.py`` (``--allow-partial``) 80 of 169 weak
        unchecked pairs were more than 1.5 px off, 59 of the other 1,152 used pairs; each of
        the 11 cases this refuses was placed 1.4-9.6 px off on average (light-sheet 3x3 at
        20 %: 7.22, up to 26.9 px). A pair that no loop of the layout could check (a strip,
        two tiles) is not among them."""
        from ._correlate import STRONG_MATCH

        measured = [k for k, p in enumerate(self.pairs) if p.status != "corner"]
        never = self._bridges_among(measured)  # no loop of the layout runs through them
        return tuple(k for k in self.unchecked_pairs()
                     if k not in never and self.pairs[k].quality < STRONG_MATCH)  # fmt: skip

    def pairs_to_csv(self, path: str | os.PathLike[str]) -> None:
        """Write ``i,j,ref_i,ref_j,dx,dy[,dz],quality,used,residual_px,status,loop_checked``
        (x, y order; ``loop_checked``: used, and a loop of used pairs runs through it, see
        :meth:`unchecked_pairs`)."""
        axes = ["dx", "dy", "dz"][: self.table.ndim]
        refs = self.table.refs
        unchecked = set(self.unchecked_pairs())

        def num(v: float) -> str:
            return "" if math.isnan(v) else f"{v:.6g}"

        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["i", "j", "ref_i", "ref_j", *axes, "quality", "used", "residual_px",
                        "status", "loop_checked"])  # fmt: skip
            for k, p in enumerate(self.pairs):
                shift = [num(v) for v in p.shift_px[::-1]]
                checked = p.used and k not in unchecked
                w.writerow([p.i, p.j, refs[p.i], refs[p.j], *shift, num(p.quality), p.used,
                            num(p.residual_px), p.status, checked])  # fmt: skip


def unmatched_note(refs: Sequence[str], placed_by: Sequence[str], *, shown: int = 3) -> str:
    """``"1 tile placed by the stage model alone: tile_r1_c1.tif"``: the unmatched tiles
    (:meth:`Registration.unmatched_tiles`), their names (``refs``, the first ``shown``, the
    rest counted) and how they were placed (``placed_by``, values of ``PLACEMENTS``)."""
    how = {"stage model": "placed by the stage model alone",
           "stage position": "left at the stage position"}  # fmt: skip
    n = len(refs)
    names = ", ".join(refs[:shown]) + (f" and {n - shown} more" if n > shown else "")
    ways = " or ".join(how.get(p, p) for p in sorted(set(placed_by)))
    return f"{n} tile{'s' if n != 1 else ''} {ways}: {names}"
