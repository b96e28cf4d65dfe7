"""Gathering a focus run: every batch submitted, failed or lost tasks retried or split in
halves, and each batch's records handed back in input order (for ``Client.iter_focus``).

How a failure is read (transient? a lost worker? too large?) is :mod:`._failures`' job;
this module only keeps the books: what is out, since when, how often it was tried or lost,
and what each batch has back.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import EndpointError
from ._failures import (
    _ENGINE_STOPPED,
    _backoff,
    _engine_stopped,
    _last_line,
    _lost_worker,
    _refused_function,
    _too_large,
    engine_attempts,
    is_transient,
)

__all__ = ["gather"]

log = logging.getLogger("scopefx.remote.client")  # the client's messages, one logger

#: A task's references: ``(k, lo, hi)`` is ``batches[k][lo:hi]``.
_Key = tuple[int, int, int]


def gather(
    batches: list[list[str]],
    submit: Callable[[list[str]], cf.Future[Any]],
    *,
    max_retries: int,
    lost_after_s: float = math.inf,
    progress: bool | None = None,
) -> Iterator[list[Any]]:
    """Submit every batch, retry failed tasks, and yield each batch's records in order.

    A task whose result is over the endpoint's size limit (large focus maps, many pages)
    is split in two and each half sent again, down to single references; only a single
    reference whose result alone is too large fails.

    A task of several references whose worker process died or was lost (Parsl's
    ``WorkerLost``/``ManagerLost``: a segfault or the memory limit on one image, a lost
    node or worker pool) is split the same way after a backoff, so one image that kills
    its worker costs only itself: it alone ends ``failed``, naming the reference, and
    every other reference of the batch gets its result. The halves carry the attempts
    already made (engine and client), so a reference that keeps killing its worker is not
    run more than ``1 + max_retries`` times once it is alone, and usually fewer.

    A task not answered ``lost_after_s`` seconds after it was sent, in which no other task
    was answered either, counts as lost: it is sent again, split the same way, without
    counting against the attempts its references carry (its loss says nothing about
    them); a single reference is sent again at most ``max_retries`` times.
    """
    yield from _Gathering(
        batches, submit, max_retries=max_retries, lost_after_s=lost_after_s, progress=progress
    ).run()


class _Gathering:
    """The books of one :func:`gather`."""

    def __init__(
        self,
        batches: list[list[str]],
        submit: Callable[[list[str]], cf.Future[Any]],
        *,
        max_retries: int,
        lost_after_s: float,
        progress: bool | None,
    ) -> None:
        self.batches = batches
        self.submit = submit
        self.max_retries = max_retries
        self.lost_after_s = lost_after_s
        self.parts: dict[int, dict[int, list[Any]]] = {k: {} for k in range(len(batches))}
        self.left = {k: len(b) for k, b in enumerate(batches)}
        self.attempts: dict[_Key, int] = {}
        self.pending: dict[cf.Future[Any], _Key] = {}
        self.sent_at: dict[cf.Future[Any], float] = {}
        self.unanswered: dict[_Key, int] = {}
        self.answered_at = time.monotonic()
        tqdm = _progress_bar_class(progress)
        self.bar = tqdm(
            total=sum(len(b) for b in batches),
            unit="img",
            disable=None if progress is None else not progress,
        )

    def run(self) -> Iterator[list[Any]]:
        try:
            for k, batch in enumerate(self.batches):
                self.send((k, 0, len(batch)))
            following = 0
            while self.pending:
                for future in self.wait():
                    self.answered(future)
                while following < len(self.batches) and self.left[following] == 0:
                    pieces = self.parts.pop(following)
                    yield [r for lo in sorted(pieces) for r in pieces[lo]]
                    following += 1
        finally:
            self.bar.close()
            for future in self.pending:
                future.cancel()

    def wait(self) -> set[cf.Future[Any]]:
        """Wait for the next answers, or until the oldest task counts as lost; resend the
        lost ones and return the answered ones."""
        lost_after_s = self.lost_after_s
        since = max(self.answered_at, min(self.sent_at[f] for f in self.pending))
        timeout = since + lost_after_s - time.monotonic()
        done, _ = cf.wait(
            list(self.pending),
            timeout=None if math.isinf(lost_after_s) else max(0.0, timeout),
            return_when=cf.FIRST_COMPLETED,
        )
        now = time.monotonic()
        if done:
            self.answered_at = now
        for future in [f for f in self.pending if f not in done]:
            if max(self.answered_at, self.sent_at[future]) + lost_after_s <= now:
                future.cancel()
                del self.sent_at[future]
                self.lost(self.pending.pop(future))
        return done

    def send(self, key: _Key) -> None:
        k, lo, hi = key
        try:
            future = self.submit(self.batches[k][lo:hi])
        except Exception as exc:  # submission itself failed: count it as an attempt
            future = cf.Future()
            future.set_exception(exc)
        self.pending[future] = key
        self.sent_at[future] = time.monotonic()

    def settle(self, key: _Key, records: list[Any]) -> None:
        k, lo, hi = key
        self.parts[k][lo] = records
        self.left[k] -= hi - lo
        self.bar.update(hi - lo)

    def lost(self, key: _Key) -> None:
        """A task not answered in time while no other was: resend it (halved), or give up."""
        k, lo, hi = key
        lost_after_s = self.lost_after_s
        if hi - lo > 1:
            log.warning("task of %d references not answered in %g s, nor any other "
                        "(its result lost on the endpoint?); sending them again as two "
                        "tasks", hi - lo, lost_after_s)  # fmt: skip
            mid = (lo + hi) // 2
            for half in ((k, lo, mid), (k, mid, hi)):
                self.attempts[half] = self.attempts.get(key, 0)
                self.unanswered[half] = self.unanswered.get(key, 0)
                self.send(half)
            return
        self.unanswered[key] = self.unanswered.get(key, 0) + 1
        if self.unanswered[key] <= self.max_retries:
            log.warning("task of %r not answered in %g s, nor any other (its result lost "
                        "on the endpoint?); sending it again (%d of %d)", self.batches[k][lo],
                        lost_after_s, self.unanswered[key], self.max_retries)  # fmt: skip
            self.send(key)
            return
        message = (
            f"{self.batches[k][lo]!r} not scored: its task was not answered in "
            f"{lost_after_s:g} s, {self.unanswered[key]} times, while no other task was "
            "(the endpoint lost it: a worker that died right after finishing it loses "
            "its result; a worker pool in that state needs a restart). A longer "
            "lost_after_s / SCOPEFX_LOST_AFTER_S waits longer."
        )
        self.settle(key, _failed_records([self.batches[k][lo]], message))

    def answered(self, future: cf.Future[Any]) -> None:
        """A task came back: settle its records, or handle its failure."""
        del self.sent_at[future]
        key = self.pending.pop(future)
        k, lo, hi = key
        refs = self.batches[k][lo:hi]
        try:
            items = future.result()
            if not isinstance(items, list) or len(items) != len(refs):
                raise EndpointError(
                    f"score_focus returned {type(items).__name__} of "
                    f"{len(items) if isinstance(items, list) else '?'} items for "
                    f"{len(refs)} references"
                )
            self.settle(key, [r for item in items for r in _to_record(item)])
        except Exception as exc:
            self.failed(key, exc)

    def failed(self, key: _Key, exc: Exception) -> None:
        """A task failed: split it (too large, a lost worker), retry it (transient), or
        settle its references as ``failed``."""
        k, lo, hi = key
        refs = self.batches[k][lo:hi]
        if _too_large(exc) and hi - lo > 1:
            mid = (lo + hi) // 2
            log.warning("result of %d references over the size limit; sending "
                        "them as two tasks", hi - lo)  # fmt: skip
            self.send((k, lo, mid))
            self.send((k, mid, hi))
            return
        attempts = self.attempts
        attempts[key] = attempts.get(key, 0) + engine_attempts(exc)
        if hi - lo > 1 and is_transient(exc) and _lost_worker(exc):
            mid = (lo + hi) // 2
            log.warning("task of %d references failed (%s: %s); sending them "
                        "as two tasks to isolate the failing one", hi - lo,
                        type(exc).__name__, _last_line(exc))  # fmt: skip
            _backoff(min(attempts[key], self.max_retries + 1))
            for half in ((k, lo, mid), (k, mid, hi)):
                attempts[half] = attempts[key]
                self.send(half)
            return
        if attempts[key] <= self.max_retries and is_transient(exc):
            log.warning("task of %d references failed (%s: %s); retry %d of %d",
                        len(refs), type(exc).__name__, exc, attempts[key],
                        self.max_retries)  # fmt: skip
            _backoff(attempts[key])
            self.send(key)
            return
        message = f"task failed after {attempts[key]} attempt(s): {type(exc).__name__}: {exc}"
        if hi - lo == 1 and is_transient(exc) and _lost_worker(exc):
            message = (
                f"{refs[0]!r} failed on its own after {attempts[key]} "
                "attempt(s): its task's worker process died or was lost "
                "(a crash or the memory limit while reading or scoring this "
                "image?); the rest of its batch was sent without it. "
                f"{type(exc).__name__}: {exc}"
            )
        if refused := _refused_function(exc):
            message += f"; {refused}"
        if _engine_stopped(exc):
            message = f"not scored: {_ENGINE_STOPPED}. {message}"
        self.settle(key, _failed_records(refs, message))


def _failed_records(refs: list[str], message: str) -> list[Any]:
    """One ``status="failed"`` FocusRecord per reference, saying why."""
    from ..focus import FocusRecord

    return [FocusRecord(path=r, status="failed", error=message) for r in refs]


def _to_record(item: dict[str, Any]) -> list[Any]:
    """FocusRecords (one per page) from one result item of ``score_focus``."""
    import dataclasses

    from ..focus import FocusRecord

    known = {f.name for f in dataclasses.fields(FocusRecord)}
    pages = item.get("pages") or [item]
    records = []
    for page in pages:
        fields = {k: v for k, v in page.items() if k in known}
        fields["path"] = str(page.get("ref", item.get("ref", "")))
        for key, value in list(fields.items()):
            if value is None and isinstance(getattr(FocusRecord, key, None), float):
                fields[key] = math.nan
        if fields.get("focus_map") is not None:
            fields["focus_map"] = np.asarray(fields["focus_map"], dtype=np.float64)
        records.append(FocusRecord(**fields))
    return records


def _progress_bar_class(progress: bool | None) -> Any:
    """tqdm's notebook bar where it can draw (a kernel with ipywidgets), else the text bar:
    ``tqdm.auto`` without ipywidgets prints a warning to the notebook's stderr."""
    import importlib.util

    if progress is not False and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm

        return tqdm
    from tqdm import tqdm as text_tqdm

    return text_tqdm
