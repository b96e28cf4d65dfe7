"""Follow an acquisition folder and score each image as soon as it is complete.

:class:`FolderWatch` polls a folder and its subfolders (polling works on the network shares
instruments write to, where change notifications often do not arrive). A new image file is
*complete* when its size and modification time have stopped changing for ``settle`` seconds
and it can be read: a file that is still being written and cannot be decoded yet is tried
again until ``grace`` seconds after its last change, and only then reported as unreadable
(one that changed while it was being read is always tried again, however long the read took).
Complete files are scored in small batches through a :class:`~scopefx.Client` (the local
default or an endpoint), and each record comes back with its *latency*: seconds from the
file's last write to its verdict.

With a CSV (``csv=``) the watch is restart-safe: every record is appended and flushed as it
comes, and files already in the CSV are not scored again (a torn last line left by a kill is
dropped). Verdicts continue across restarts: a run baseline is re-seeded from the CSV.

A file that changes after it was scored (its size or modification time differ from those it
was scored at, recorded in the CSV) is scored again once it settles: a stack that grew (pages
appended by a slow writer, or a restart after a kill part-way through its records) gets
records for its new pages only; any other change is a re-acquisition under the same name and
gets new records for every page (the CSV keeps the old rows above them).

Examples
--------
>>> from scopefx.watch import FolderWatch
>>> with FolderWatch("run/", csv="run-focus.csv") as watch:        # doctest: +SKIP
...     for scored in watch.follow(idle_exit=60):
...         print(scored.record.path, scored.record.verdict, f"{scored.latency:.2f} s")
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .focus import (
    CSV_COLUMNS,
    FLAGGED,
    Calibration,
    FocusParams,
    FocusRecord,
    FocusRun,
    RunBaseline,
)
from .focus.csv import FocusCsvWriter
from .focus.csv import read_focus_csv as read_watch_csv
from .io import IMAGE_SUFFIXES

log = logging.getLogger("scopefx.watch")

__all__ = ["WATCH_COLUMNS", "FolderWatch", "Scored", "read_watch_csv"]

#: Columns of the watch CSV: the focus CSV's, then when and how fast each verdict came, and the
#: file's size and modification time when it was scored (a later change is scored again).
WATCH_COLUMNS = (*CSV_COLUMNS, "latency_seconds", "scored_at", "file_size", "file_mtime_ns")

#: Statuses that may mean "still being written": retried until ``grace`` has passed.
_RETRY_STATUSES = frozenset({"corrupt", "empty", "missing", "unreadable"})
#: Seconds between tries of a file that could not be read yet.
_RETRY_EVERY = 0.5
#: Seconds between looks at the files already scored (has one changed since?).
_RECHECK_EVERY = 1.0
#: File suffixes never followed (partial downloads, editors' and writers' temporaries).
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")
#: Suffixes the watch follows: image files (Zarr stores are directories written piecewise).
_WATCHED_SUFFIXES = frozenset(s for s in IMAGE_SUFFIXES if s != ".zarr")


@dataclass
class Scored:
    """One scored image (one page of a stack) from :meth:`FolderWatch.follow`."""

    record: FocusRecord
    """The focus record; ``record.path`` is the local path of the file."""
    latency: float
    """Seconds from the file's last write to its verdict."""
    section: str
    """The file's path relative to the watched folder."""
    late: bool = False
    """``True`` for a warm-up section judged again once the baseline existed."""

    @property
    def flagged(self) -> bool:
        return self.record.ok and self.record.verdict in FLAGGED


class _Unjudged(FocusRun):
    """A run that gives no verdicts: the watch has the client score without judging, and
    judges each record itself once it keeps it (a held file's record must leave no trace in
    the run's baseline)."""

    def judge(self, record: FocusRecord) -> FocusRecord:
        return record


@dataclass
class _Done:
    """A file already scored: its size and time then (None: not known, an older CSV's row)
    and how many pages its records cover (0: a single image)."""

    size: int | None
    mtime_ns: int | None
    pages: int = 0
    checked: bool = False  # its page count compared with the file's (once per session)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    changed_at: float  # monotonic time when (size, mtime) last changed
    next_try: float = 0.0  # monotonic time before which a held file is not tried again
    # monotonic time this watch first saw it: the grace of a failed read counts from here
    # at the earliest (changed_at of a file first seen comes from its mtime, another
    # machine's clock: one running behind made a file still being written seem settled
    # long ago, each piece of it reported corrupt)
    first_seen: float = 0.0


class FolderWatch:
    """Follow ``folder`` (and its subfolders) and score each new image once.

    Parameters
    ----------
    folder : path-like
        The acquisition folder (local, or a mount of the endpoint's filesystem).
    client : Client, optional
        Where scoring runs; default: the local default (``Client()``). The watch closes a
        client it made, not one it was given.
    params : FocusParams, optional
    run : FocusRun, optional
        The run's verdict policy; default one made from ``calibration`` and ``baseline``
        (shorthands). Without a calibration, verdicts are relative to the run; the first
        ``baseline.warmup`` sections are ``warmup`` until there is a baseline, then judged
        again (yielded with ``late=True``).
    csv : path-like, optional
        Append one row per record; files already in it are skipped (restart-safe).
    remote_dir : str, optional
        The watched folder's path on the endpoint, when it differs from ``folder``
        (references sent are ``remote_dir/<path relative to folder>``).
    interval : float
        Seconds between scans of the folder.
    settle : float
        Seconds a file's size and time must be unchanged before it is scored.
    grace : float
        Seconds after its last change that an unreadable file is tried again before it is
        reported (a writer may pause).
    batch_size : int
        Most files scored per batch (more ready files go in several batches).
    include_existing : bool
        Also score files already in the folder when the watch starts (default); ``False``
        scores only files that appear afterwards.
    exclude : iterable of path-like
        Files never to score, however they appear in the folder: the caller's own outputs
        (``scopefx watch`` leaves out its CSV and summary plot).
    on_flagged : callable, optional
        Called with each record flagged (out of focus, or partly so), a warm-up section judged
        again included, *before* its row is written to ``csv``: a watch killed in between
        scores the file again on restart and calls it again, so an alarm is never lost (it
        may repeat). ``scopefx watch --on-oof`` runs its command from here.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        client: Any = None,
        params: FocusParams | None = None,
        run: FocusRun | None = None,
        calibration: Calibration | None = None,
        baseline: RunBaseline | None = None,
        csv: str | os.PathLike[str] | None = None,
        remote_dir: str | None = None,
        interval: float = 0.2,
        settle: float = 0.25,
        grace: float = 10.0,
        batch_size: int = 8,
        include_existing: bool = True,
        exclude: Iterable[str | os.PathLike[str]] = (),
        on_flagged: Callable[[FocusRecord], None] | None = None,
    ) -> None:
        self.folder = Path(folder).absolute()
        self._exclude = frozenset(os.path.abspath(p) for p in exclude)
        if not self.folder.is_dir():
            raise ConfigError(f"watch folder {os.fspath(folder)!r} is not a directory")
        for name, value in (("interval", interval), ("settle", settle), ("grace", grace)):
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.params = params
        run = FocusRun.resolve(run, params=params, calibration=calibration, baseline=baseline)
        self.run = run
        self._unjudged = _Unjudged(calibration=run.calibration, params=run.params)
        self.calibration = run.calibration
        self.baseline = run.baseline
        self.remote_dir = remote_dir.rstrip("/") if remote_dir else None
        self.interval, self.settle, self.grace = float(interval), float(settle), float(grace)
        self.batch_size = batch_size
        self._on_flagged = on_flagged
        self._own_client = client is None
        if client is None:
            from .remote import Client

            client = Client(progress=False)
        self.client = client
        self._csv = (
            FocusCsvWriter(csv, columns=WATCH_COLUMNS, resume=True) if csv is not None else None
        )
        self._done: dict[str, _Done] = {}
        self._again: dict[str, int] = {}  # changed since scored: path -> pages recorded
        self._rechecked = -math.inf  # monotonic time of the last look at the scored files
        self._seen: dict[str, _Seen] = {}
        self._unlisted: set[str] = set()  # folders that could not be listed, said once each
        self.previous: list[FocusRecord] = []
        """Records of earlier sessions read back from the CSV (in its order)."""
        self.records: list[FocusRecord] = []
        """Records of this session, in the order they were scored."""
        self.latencies: list[float] = []
        """Latency of each live file of this session (files older than the watch excluded)."""
        self._shown: dict[int, str | None] = {}  # id(record) -> the verdict its row showed
        self._started = time.time()
        if self._csv is not None:
            self._resume(self._csv.rows)
            self._check_modality(csv)
        if not include_existing:  # as they are now: one still being written changes, and is new
            for path in self._scan():
                with contextlib.suppress(OSError):
                    st = os.stat(path)
                    self._done.setdefault(path, _Done(st.st_size, st.st_mtime_ns))

    # -- restart --------------------------------------------------------------------------------

    def _check_modality(self, csv: Any) -> None:
        """Refuse to go on with a CSV whose sections were scored with another modality: their
        densities and this session's are not comparable (a restart without --modality
        fluorescence called new in-focus sections unverifiable and rewrote old ones out of
        focus)."""
        recorded = sorted({r.modality for r in self.previous if r.ok and r.modality})
        current = (self.params or FocusParams()).modality
        if recorded and current not in recorded:
            self.close()
            raise ConfigError(
                f"{os.fspath(csv)}: its sections were scored with modality "
                f"{', '.join(recorded)}, this watch scores with {current}: their densities are "
                f"not comparable; go on with the same focus options (--modality "
                f"{recorded[0]}) or start another --csv"
            )

    def _resume(self, rows: list[dict[str, str]]) -> None:
        for number, row in enumerate(rows, start=1):
            try:
                self._resume_row(row)
            except (ConfigError, ValueError, TypeError, OverflowError) as exc:
                self.close()
                raise ConfigError(
                    f"{self._csv.path if self._csv else 'the CSV'}, row {number} after the "
                    f"header: not a row scopefx wrote ({exc}); fix or remove it, or give "
                    "another --csv"
                ) from None

    def _resume_row(self, row: dict[str, str]) -> None:
        """Take one row of the CSV back: the file it names is done (at that size and time)."""
        path = os.path.abspath(row["path"])
        done = self._done.setdefault(path, _Done(None, None))
        with contextlib.suppress(KeyError, ValueError):  # an older CSV: no such columns
            done.size, done.mtime_ns = int(row["file_size"]), int(row["file_mtime_ns"])
        if row.get("page"):
            done.pages = max(done.pages, int(row["page"]) + 1)
        record = FocusRecord.from_row(row)
        self.previous.append(record)
        self._shown[id(record)] = record.verdict  # reported by an earlier session
        self.run.seed([record])  # the run's baseline goes on

    # -- finding complete files -----------------------------------------------------------------

    def _scan(self) -> list[str]:
        found: list[str] = []
        stack = [self.folder]
        while stack:
            folder = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue  # removed meanwhile
            except OSError as exc:  # its sections would never be seen: said, once
                if str(folder) not in self._unlisted:
                    self._unlisted.add(str(folder))
                    log.warning("cannot list folder %s (%s): its images are not watched "
                                "until it can be", folder, exc.strerror or exc)  # fmt: skip
                continue
            self._unlisted.discard(str(folder))
            for entry in entries:
                name = entry.name
                if name.startswith(".") or name.endswith(_TEMP_SUFFIXES):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if not name.lower().endswith(".zarr"):
                            stack.append(Path(entry.path))
                    elif os.path.splitext(name)[1].lower() in _WATCHED_SUFFIXES:
                        path = os.path.abspath(entry.path)
                        if path not in self._exclude:
                            found.append(path)
                except OSError:
                    continue
        return found

    def _changed(self, path: str, done: _Done) -> bool:
        """Whether a scored file changed since: another size or time than it was scored at,
        or (a stack whose records may stop part-way: a kill) more pages than were recorded."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        if done.size is not None and (done.size, done.mtime_ns) != (st.st_size, st.st_mtime_ns):
            return True
        if done.pages and not done.checked:
            from .io import read_metadata

            done.checked = True
            try:
                pages = int(read_metadata(path).pages or 1)
            except Exception:  # unreadable now: judged when it is scored
                pages = done.pages
            if pages > done.pages:
                return True
        done.size, done.mtime_ns = st.st_size, st.st_mtime_ns
        return False

    def ready(self) -> list[str]:
        """New files that have stopped changing, oldest first (one scan of the folder)."""
        now = time.monotonic()
        wall = time.time()
        ready: list[tuple[int, str]] = []
        present = set()
        recheck = now - self._rechecked >= _RECHECK_EVERY
        if recheck:
            self._rechecked = now
        for path in self._scan():
            done = self._done.get(path)
            if done is not None:
                if not recheck or not self._changed(path, done):
                    continue
                self._again[path] = done.pages  # scored again once it settles
                del self._done[path]
            present.add(path)
            try:
                st = os.stat(path)
            except OSError:
                continue
            seen = self._seen.get(path)
            if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                # new or still growing; a file written long before we saw it is settled already
                age = max(0.0, wall - st.st_mtime_ns / 1e9)
                changed = now - age if seen is None else now
                first = now if seen is None else seen.first_seen
                self._seen[path] = seen = _Seen(st.st_size, st.st_mtime_ns, changed,
                                                first_seen=first)  # fmt: skip
            if seen.next_try > now:
                continue
            if st.st_size > 0 and now - seen.changed_at >= self.settle:
                ready.append((st.st_mtime_ns, path))
            elif st.st_size == 0 and now - seen.changed_at >= self.grace:
                ready.append((st.st_mtime_ns, path))  # still empty after the grace: report it
        for gone in set(self._seen) - present:
            del self._seen[gone]
        return [p for _, p in sorted(ready)]

    # -- scoring --------------------------------------------------------------------------------

    def _ref(self, path: str) -> str:
        if self.remote_dir is None:
            return path
        rel = os.path.relpath(path, self.folder).replace(os.sep, "/")
        return f"{self.remote_dir}/{rel}"

    def _section(self, path: str) -> str:
        return os.path.relpath(path, self.folder)

    def _latency(self, path: str) -> float:
        seen = self._seen.get(path)
        if seen is None or seen.mtime_ns / 1e9 < self._started:
            return math.nan  # there before the watch started: a backlog, not a live file
        return max(0.0, time.time() - seen.mtime_ns / 1e9)

    def score(self, paths: list[str]) -> Generator[Scored, None, None]:
        """Score ``paths`` in batches; yield what is final, keep what may be still writing."""
        for start in range(0, len(paths), self.batch_size):
            batch = paths[start : start + self.batch_size]
            refs = [self._ref(p) for p in batch]
            by_ref = dict(zip(refs, batch, strict=True))
            held: set[str] = set()
            pending: list[FocusRecord] = []  # the current file's records (a stack's pages)
            for record in self.client.iter_focus(refs, params=self.params, run=self._unjudged):
                # judged below, once kept: a held file leaves no trace in the run
                path = by_ref.get(record.path, record.path)
                if path in held:
                    continue
                if pending and pending[0].path != path:  # the previous file is complete
                    yield from self._file_done(pending[0].path, pending)
                    pending = []
                if self._hold(path, record, first=not pending):  # first: a stack's first page
                    held.add(path)
                    continue
                record.path = path
                pending.append(self.run.judge(record))  # in run order, as the client would
            if pending:
                yield from self._file_done(pending[0].path, pending)
            for path in batch:  # none of its records came back: done all the same
                if path not in held and path not in self._done:
                    yield from self._file_done(path, [])

    def _file_done(self, path: str, records: list[FocusRecord]) -> Iterator[Scored]:
        """Report one file's records and remember it as scored (its size, time and pages). A
        file scored before that has grown into more pages reports its new pages only."""
        pages = max((r.page + 1 for r in records if r.page is not None), default=0)
        before = self._again.pop(path, None)
        if before and pages > before:  # a stack grown since (or a kill part-way through it)
            records = [r for r in records if r.page is not None and r.page >= before]
        for record in records:
            yield self._finish(path, record)
            yield from self._settle_warmup()
        seen = self._seen.pop(path, None)
        done = _Done(None, None, pages, checked=True)
        if seen is not None:
            done.size, done.mtime_ns = seen.size, seen.mtime_ns
        self._done[path] = done

    def _hold(self, path: str, record: FocusRecord, *, first: bool) -> bool:
        """Whether to leave ``path`` for a later try: it changed since the scan that found it
        settled (a writer's pause longer than ``settle``, then the rest of the file; checked
        on its ``first`` record, and on any failed one: what was read is not known, and a
        record kept with the size and time of before had the next look score the file again,
        two rows of one section), or a failed record may be a file still being written."""
        retry = not record.ok and record.status in _RETRY_STATUSES
        seen = self._seen.get(path)
        if seen is None or not (retry or first):
            return False
        if retry and record.status == "missing" and not os.path.exists(path):
            # renamed or removed before it was read: forget it (a file written again under
            # that name is a new section, scored when it settles)
            self._seen.pop(path, None)
            return True
        now = time.monotonic()
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is not None and (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
            # still being written, however long the read took (a slow endpoint or a loaded
            # machine outlasts any grace period)
            seen.size, seen.mtime_ns, seen.changed_at = st.st_size, st.st_mtime_ns, now
            seen.next_try = now + _RETRY_EVERY
            return True
        if not retry:
            return False
        seen.next_try = now + _RETRY_EVERY
        return now - max(seen.changed_at, seen.first_seen) < self.grace

    def _finish(self, path: str, record: FocusRecord) -> Scored:
        scored = Scored(record, self._latency(path), self._section(path))
        self.records.append(record)
        self._shown[id(record)] = record.verdict  # records are kept: their ids stay theirs
        if record.ok and not math.isnan(scored.latency):
            self.latencies.append(scored.latency)
        if scored.flagged and self._on_flagged is not None:
            self._on_flagged(record)  # before its row: a kill in between repeats, never loses
        if self._csv is not None:
            seen = self._seen.get(path)
            self._csv.write(
                record,
                latency_seconds=None if math.isnan(scored.latency) else f"{scored.latency:.3f}",
                scored_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                file_size=None if seen is None else seen.size,
                file_mtime_ns=None if seen is None else seen.mtime_ns,
            )
        return scored

    def _settle_warmup(self) -> Iterator[Scored]:
        """Once the baseline exists, judge the warm-up sections against it; report again those
        already reported with another verdict. A record scored but not yet reported (the run
        judges a file's records before the watch knows the file is complete) is reported
        once, in its own row, with its final verdict: never "settled" before it was seen."""
        warm = self.run.settle()
        again = [
            Scored(record, math.nan, self._section(record.path), late=True)
            for record in warm
            if self._shown.get(id(record), record.verdict) != record.verdict
        ]
        for scored in again:
            if scored.flagged and self._on_flagged is not None:
                self._on_flagged(scored.record)  # before the rewrite, as in _finish
        if warm and self._csv is not None:
            self._csv.rewrite_verdicts(warm)
        for scored in again:
            self._shown[id(scored.record)] = scored.record.verdict
            yield scored

    def poll(self) -> list[Scored]:
        """One scan: score whatever is complete, return the records."""
        return list(self.score(self.ready()))

    def follow(
        self,
        *,
        idle_exit: float | None = None,
        max_files: int | None = None,
        stop: threading.Event | None = None,
    ) -> Iterator[Scored]:
        """Scan every ``interval`` and yield each record as it is scored, until ``stop`` is set,
        ``idle_exit`` seconds pass without a new file, or ``max_files`` files are done."""
        stop = stop or threading.Event()
        last_new = time.monotonic()
        files = 0
        while not stop.is_set():
            ready = self.ready()
            if max_files is not None:  # not one file more than asked for
                ready = ready[: max(max_files - files, 0)]
            batches = self.score(ready)
            for scored in batches:
                last_new = time.monotonic()
                if not scored.late and scored.record.page in (None, 0):
                    files += 1
                yield scored
                if stop.is_set():  # now, not after a backlog of files: the rest stay new
                    batches.close()
                    return
            if max_files is not None and files >= max_files:
                return
            if self._seen:  # files still being written or retried are activity
                last_new = max(last_new, max(s.changed_at for s in self._seen.values()))
            elif idle_exit is not None and time.monotonic() - last_new >= idle_exit:
                return
            stop.wait(self.interval)

    # -- summary --------------------------------------------------------------------------------

    def all_records(self) -> list[FocusRecord]:
        """Every record of the run: earlier sessions' (from the CSV) then this session's."""
        return [*self.previous, *self.records]

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._own_client:
            self.client.close()

    def __enter__(self) -> FolderWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
