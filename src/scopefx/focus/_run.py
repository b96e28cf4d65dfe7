"""The verdict policy of one run: every caller (local batches, the client, the CLI, the demo,
``scopefx watch``) judges its records through one :class:`FocusRun`, so the same scores give
the same verdicts wherever they were computed. Remote functions return scores only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ._params import FocusParams
from ._verdict import IN_FOCUS, PARTIAL, WARMUP, Calibration, RunBaseline

if TYPE_CHECKING:
    from ._batch import FocusRecord

__all__ = ["FocusRun"]


class FocusRun:
    """Judge the records of one run in run order: a calibration, the run's own baseline, or both.

    With a ``calibration`` the verdict of a whole image comes from its estimated |defocus|;
    the run baseline still compares focus-map cells with the same cells of recent in-focus
    sections, so an image that passes as a whole but has failing cells is ``partial``.
    Without one, verdicts are relative to the run (:class:`RunBaseline`): the first
    ``baseline.warmup`` sections are ``warmup`` until the baseline exists, and
    :meth:`settle` judges them then.

    Parameters
    ----------
    calibration : Calibration, optional
        Its parameters must match ``params``.
    baseline : RunBaseline, optional
        Default: ``RunBaseline()``.
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
        self.baseline = baseline if baseline is not None else RunBaseline()
        self._warmup: list[FocusRecord] = []

    @property
    def ready(self) -> bool:
        """Whether verdicts are final as they are given (a calibration, or a baseline that
        exists)."""
        return self.calibration is not None or not math.isnan(self.baseline.reference)

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
        if record.verdict == WARMUP:
            self._warmup.append(record)
        return record

    def judge_all(self, records: Iterable[FocusRecord]) -> list[FocusRecord]:
        """:meth:`judge` each record, in order."""
        return [self.judge(r) for r in records]

    def settle(self) -> list[FocusRecord]:
        """Judge the warm-up records against the baseline they built, once it exists.

        Returns the records whose verdict changed (now final), in run order; an empty list
        while the baseline does not exist yet (call again later, or at the end of the run).
        """
        if not self._warmup or math.isnan(self.baseline.reference):
            return []
        settled, self._warmup = self._warmup, []
        for record in settled:
            record.apply(self.baseline.rejudge(record.density_per_mpx))
        return settled

    def seed(self, records: Iterable[FocusRecord]) -> None:
        """Continue a run from records judged earlier (e.g. read back from its CSV): sections
        judged in focus (or still warming up) enter the baseline, nothing is judged again."""
        for record in records:
            if record.ok and record.verdict in (IN_FOCUS, WARMUP):
                self.baseline.update(record.density_per_mpx)
