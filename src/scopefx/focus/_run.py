"""The verdict policy of one run: every caller (local batches, the client, the CLI, the demo,
``scopefx watch``) judges its records through one :class:`FocusRun`, so the same scores give
the same verdicts wherever they were computed. Remote functions return scores only.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ._params import FocusParams
from ._plausibility import CALIBRATION_ABOVE, calibration_doubts, head_doubts, rises
from ._verdict import (
    IN_FOCUS,
    OUT_OF_FOCUS,
    PARTIAL,
    UNVERIFIABLE,
    WARMUP,
    Calibration,
    RunBaseline,
)

if TYPE_CHECKING:
    from ._batch import FocusRecord

__all__ = ["BASELINE_RATIO", "FocusRun"]

#: The run baseline's default ratio per modality (below it a section is out of focus).
#: Measured (bench/results/focus_real.txt): on light-sheet fluorescence, with the fluorescence
#: preset's score, mild defocus (0.3-0.95 um) leaves 0.08-0.95 of the in-focus density while
#: in-focus frames never fall below 0.92 of it: 0.8 flags 90-96 % of the out-of-focus frames
#: and no in-focus frame (0.5: 60 %); bright field falls to 0.06-0.23, and em (the paper's SEM
#: setting) keeps 0.5.
BASELINE_RATIO = {"em": 0.5, "fluorescence": 0.8, "brightfield": 0.5}

#: Doubts about a baseline that are known once the warm-up is in (see :meth:`FocusRun.doubts`).
_WARMUP_DOUBTS = ("low_for_modality", "noise_limited_warmup")
#: Sections called in focus after the warm-up that are kept, in windows of the baseline, to be
#: judged again should the run turn out to have started out of focus.
_EARLY_SECTIONS = 4


class FocusRun:
    """Judge the records of one run in run order: a calibration, the run's own baseline, or both.

    With a ``calibration`` the verdict of a whole image comes from its estimated |defocus|;
    the run baseline still compares focus-map cells with the same cells of recent in-focus
    sections, so an image that passes as a whole but has failing cells is ``partial``.
    Without one, verdicts are relative to the run (:class:`RunBaseline`): the first
    ``baseline.warmup`` sections are ``warmup`` until the baseline exists, and
    :meth:`settle` judges them then.

    A run baseline is only as good as the sections it is built from. When it looks built from
    out-of-focus or blank sections (:meth:`doubts`: a warm-up density below what the
    modality gives in focus, mostly noise-limited warm-up sections, or a run whose density
    later rises well above its warm-up), sections are not called in focus: they are
    ``"unverifiable"``, and once the rise is seen the warm-up sections, and those called in
    focus against their baseline, are judged again against the later baseline.

    Parameters
    ----------
    calibration : Calibration, optional
        Its parameters must match ``params``.
    baseline : RunBaseline, optional
        Default: ``RunBaseline(ratio=BASELINE_RATIO[params.modality])``.
    params : FocusParams, optional
        How the records were scored (the focus-map cell size; checked against the calibration).

    Examples
    --------
    >>> from scopefx.focus import FocusRun, FocusRecord
    >>> run = FocusRun()
    >>> for density in (900.0, 1000.0, 1100.0, 950.0, 1050.0, 300.0):
    ...     record = run.judge(FocusRecord(path="s", features=1, density_per_mpx=density))
    >>> record.verdict
    'out_of_focus'
    >>> [r.verdict for r in run.settle()]
    ['in_focus', 'in_focus', 'in_focus', 'in_focus', 'in_focus']
    """

    def __init__(
        self,
        *,
        calibration: Calibration | None = None,
        baseline: RunBaseline | None = None,
        params: FocusParams | None = None,
    ) -> None:
        if calibration is not None and not isinstance(calibration, Calibration):
            raise ConfigError(
                f"calibration must be a Calibration, got {type(calibration).__name__}"
            )
        if baseline is not None and not isinstance(baseline, RunBaseline):
            raise ConfigError(f"baseline must be a RunBaseline, got {type(baseline).__name__}")
        self.params = params if params is not None else FocusParams()
        if calibration is not None:
            calibration.check_params(self.params)
        self.calibration = calibration
        if baseline is None:
            baseline = RunBaseline(ratio=BASELINE_RATIO.get(self.params.modality, 0.5))
        self.baseline = baseline
        self._warmup: list[FocusRecord] = []
        self._first: list[FocusRecord] = []  # the sections the baseline was first built from
        # what the doubts need, kept up to date record by record (constant work per record)
        self._head_doubts: list[str] = []
        self._judged = 0
        self._rises = False
        self._above, self._best = 0, 0.0  # with a calibration: sections far above it, densest
        self._short = False  # the run ended before its warm-up was complete
        # sections called in focus against the warm-up's baseline before a rise showed it
        # was built out of focus: judged again with the warm-up (a bounded number)
        self._early: list[FocusRecord] = []
        self._order_of: dict[int, int] = {}  # run order of the records settle() may return
        self._rising: deque[FocusRecord] = deque(maxlen=self.baseline.warmup)  # latest judged
        # verdicts changed since the last settle(): given as the run goes (the warm-up once the
        # baseline exists, the first sections once a rise shows), whenever settle() is called
        self._changed: dict[int, FocusRecord] = {}
        # after a rise: the sections judged again as the rebuilt baseline fills (see _restart)
        self._maturing: list[FocusRecord] = []
        self._since_restart = -1  # sections judged since the rise (-1: none yet)
        self._matured_reference = math.nan

    @classmethod
    def resolve(
        cls,
        run: FocusRun | None = None,
        *,
        params: FocusParams | None = None,
        calibration: Calibration | None = None,
        baseline: RunBaseline | None = None,
    ) -> FocusRun:
        """``run`` if given (its calibration checked against ``params``), else a new run from
        ``calibration`` and ``baseline``: what every caller that takes both a ``run=`` and
        its shorthands does."""
        if run is None:
            return cls(calibration=calibration, baseline=baseline, params=params)
        if not isinstance(run, FocusRun):
            raise ConfigError(f"run must be a FocusRun, got {type(run).__name__}")
        if run.calibration is not None:
            run.calibration.check_params(params if params is not None else FocusParams())
        return run

    @property
    def ready(self) -> bool:
        """Whether verdicts are final as they are given (a calibration, or a baseline that
        exists)."""
        return self.calibration is not None or not math.isnan(self.baseline.reference)

    def doubts(self) -> list[str]:
        """Reasons not to trust the run baseline (empty when nothing is suspicious):
        ``"low_for_modality"``, ``"noise_limited_warmup"``, ``"rises_after_warmup"`` (as
        :func:`scopefx.focus._plausibility.baseline_doubts` gives them for the run's densities
        so far), or ``"too_few_sections"`` once ``settle(final=True)`` found fewer sections
        than the warm-up needs. With a calibration, reasons to doubt that it fits the run
        (:func:`scopefx.focus._plausibility.calibration_doubts`): ``"above_calibration"``,
        ``"below_calibration"``; they do not change verdicts."""
        if self.calibration is not None:
            cal = self.calibration
            return calibration_doubts(
                sections=self._judged,
                above=self._above,
                best=self._best,
                in_focus=cal.in_focus_density,
                min_density=cal.min_density,
            )
        if self._short:
            return ["too_few_sections"]
        doubts = list(self._head_doubts)
        if self._rises:
            doubts.insert(int("low_for_modality" in doubts), "rises_after_warmup")
        return doubts

    def _note(self, record: FocusRecord) -> None:
        """Update what the doubts need with one judged section: the warm-up's doubts once it
        is complete, then whether the latest stretch of ``warmup`` sections rose above it."""
        warmup = self.baseline.warmup
        self._judged += 1
        if self.calibration is not None:
            density = record.density_per_mpx
            self._best = max(self._best, density)
            self._above += density > CALIBRATION_ABOVE * self.calibration.in_focus_density
            return
        self._rising.append(record)
        if self._judged == warmup:
            self._head_doubts = head_doubts(
                [r.density_per_mpx for r in self._first],
                modality=self.params.modality,
                noise_limited=[bool(r.noise_limited) for r in self._first],
            )
        elif self._judged >= 2 * warmup and not self._rises:
            head = float(np.median([r.density_per_mpx for r in self._first]))
            recent = [r.density_per_mpx for r in self._rising]
            self._rises = rises(head, recent, self.baseline.ratio)
            if self._rises:
                self._restart()

    def _restart(self) -> None:
        """The run started out of focus: its density has risen well above the warm-up. The
        baseline is built again from the sections that rose (the latest ``warmup`` that
        passed), so the warm-up and the sections called in focus against it no longer define
        "in focus", and the doubts about the warm-up are replaced by those of the sections
        that rose. Those sections are judged again against it, and again each time its
        reference rises while it fills (the next ``baseline.window`` sections, those called in
        focus meanwhile included): a run that comes into focus slowly is judged against the
        focus it reaches, the same whenever :meth:`settle` is called. A verdict judged again
        only ever turns ``out_of_focus`` (a ``partial`` or ``in_focus`` one stays, never back),
        so a section flagged for re-acquisition stays flagged."""
        rose = [r for r in self._rising if r.verdict in (IN_FOCUS, UNVERIFIABLE)]
        self.baseline.restart(
            [r.density_per_mpx for r in rose],
            [r.focus_map for r in rose],
        )
        self._head_doubts = head_doubts(
            [r.density_per_mpx for r in self._rising],
            modality=self.params.modality,
            noise_limited=[bool(r.noise_limited) for r in self._rising],
        )
        again = list(self._warmup) + [r for r in self._first if r not in self._warmup]
        again += [r for r in self._early if r not in again]
        self._warmup, self._early = [], []
        self._maturing, self._since_restart = again, 0
        self._matured_reference = self.baseline.reference
        self._rejudge(again, worse_only=True)

    def _mature(self, record: FocusRecord) -> None:
        """While the rebuilt baseline fills after a rise: keep ``record`` if it was called in
        focus, and judge the kept sections again whenever the reference has risen."""
        if self._since_restart < 0 or self._since_restart >= self.baseline.window:
            return
        self._since_restart += 1
        if record.verdict in (IN_FOCUS, UNVERIFIABLE, PARTIAL):
            self._maturing.append(record)
            self._order_of[id(record)] = self._judged
        reference = self.baseline.reference
        if reference > self._matured_reference:
            self._matured_reference = reference
            self._rejudge(self._maturing, worse_only=True)
        if self._since_restart >= self.baseline.window:
            self._maturing = []  # the baseline is the run's own again: verdicts are final

    def _rejudge(self, records: Iterable[FocusRecord], *, worse_only: bool = False) -> None:
        """Judge ``records`` against the current baseline without adding them to it; those
        whose verdict changes are given by the next :meth:`settle`. ``worse_only``: a judged
        section changes only to ``out_of_focus`` (one still ``warmup`` gets its verdict)."""
        for record in records:
            before = record.verdict
            verdict = self.baseline.rejudge(record.density_per_mpx)
            if before == PARTIAL and verdict.status == IN_FOCUS:
                continue  # its failing cells still fail
            if worse_only and before != WARMUP and verdict.status != OUT_OF_FOCUS:
                continue
            record.apply(verdict)
            if record.verdict == IN_FOCUS and self._doubted(_WARMUP_DOUBTS):
                record.verdict = UNVERIFIABLE
            if record.verdict != before:
                self._changed[id(record)] = record

    def judge(self, record: FocusRecord) -> FocusRecord:
        """Give ``record`` its verdict (in place) and let it update the run; returns it.

        Records that failed (``record.ok`` false) are returned unchanged and never enter the
        baseline. Call in run order.
        """
        if not record.ok:
            return record
        verdict = self.baseline.update(
            record.density_per_mpx, focus_map=record.focus_map, cell_px=self.params.cell_px
        )
        if self.calibration is not None:
            whole = self.calibration.verdict(record.density_per_mpx)
            if whole.status == IN_FOCUS and verdict.bad_cells:
                whole = dataclasses.replace(whole, status=PARTIAL, bad_cells=verdict.bad_cells)
            verdict = whole
        record.apply(verdict)
        kept = False
        if record.verdict == WARMUP:
            self._warmup.append(record)
            kept = True
        if len(self._first) < self.baseline.warmup:
            self._first.append(record)
            kept = True
        elif (
            self.calibration is None
            and not self._rises
            and record.verdict in (IN_FOCUS, PARTIAL)
            and len(self._early) < _EARLY_SECTIONS * self.baseline.window
        ):
            self._early.append(record)
            kept = True
        if kept:
            self._order_of[id(record)] = self._judged
        self._note(record)
        if record.verdict == IN_FOCUS and self._doubted(_WARMUP_DOUBTS):
            record.verdict = UNVERIFIABLE
        self._settle_warmup()
        self._mature(record)
        return record

    def _settle_warmup(self) -> None:
        """Once the baseline exists, judge the sections that built it (still ``warmup``)."""
        if self._warmup and not math.isnan(self.baseline.reference):
            pending, self._warmup = self._warmup, []
            self._rejudge(pending)

    def _doubted(self, kinds: tuple[str, ...]) -> bool:
        return self.calibration is None and any(d in kinds for d in self.doubts())

    def judge_all(self, records: Iterable[FocusRecord]) -> list[FocusRecord]:
        """:meth:`judge` each record, in order."""
        return [self.judge(r) for r in records]

    def settle(self, *, final: bool = False) -> list[FocusRecord]:
        """Judge the warm-up records against the baseline they built, once it exists.

        ``final``: the run is over. When it ended before its warm-up was complete (fewer than
        ``baseline.warmup`` sections scored, and no calibration), its sections can never be
        judged: they are ``"unverifiable"`` (doubt ``"too_few_sections"``), not left
        ``"warmup"``; a single image has no run to be judged against.

        Once the run's density has risen well above its warm-up (``"rises_after_warmup"``:
        the run started out of focus), the baseline is built again from the sections that
        rose, and the sections it was first built from and those called in focus against it
        before the rise showed (the first ``4 * baseline.window`` of them), then those called
        in focus while it fills, are judged again each time its reference rises, for
        ``baseline.window`` sections; a verdict judged again only turns ``out_of_focus``.

        Returns the records whose verdict changed since the last call, in run order; an
        empty list while the baseline does not exist yet (call again later, or at the end of
        the run). Verdicts do not depend on when it is called: the run judges those sections
        as soon as it can (:meth:`judge`), and ``settle`` gives what changed.
        """
        if math.isnan(self.baseline.reference):
            if not (final and self._warmup and self.calibration is None):
                return self._take_changed()
            self._short = True
            short, self._warmup = self._warmup, []
            for record in short:
                record.verdict = UNVERIFIABLE
                self._changed[id(record)] = record
            return self._take_changed()
        self._settle_warmup()
        return self._take_changed()

    def _take_changed(self) -> list[FocusRecord]:
        changed = sorted(self._changed.values(), key=self._order)
        self._changed = {}
        return changed

    def _order(self, record: FocusRecord) -> int:
        return self._order_of.get(id(record), self._judged)

    def seed(self, records: Iterable[FocusRecord]) -> None:
        """Continue a run from records judged earlier (e.g. read back from its CSV): sections
        judged in focus (or still warming up) enter the baseline, and every scored one the
        doubts about it; those still warming up are judged by :meth:`settle` once the baseline
        exists (a watch stopped during its warm-up left them ``warmup`` for good); nothing
        else is judged again."""
        for record in records:
            if not record.ok:
                continue
            if record.verdict in (IN_FOCUS, WARMUP, UNVERIFIABLE):  # those the baseline took
                self.baseline.update(record.density_per_mpx)
            if record.verdict == WARMUP:  # not judged yet: settle() judges it with the rest
                self._warmup.append(record)
                self._order_of[id(record)] = self._judged
            if len(self._first) < self.baseline.warmup:
                self._first.append(record)
            self._note(record)
