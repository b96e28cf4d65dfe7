"""How the client reads a failed task: may it succeed if sent again (a lost worker, a dropped
connection), was its worker lost (split the batch to isolate a crashing item), did the engine
stop for good, was the function refused; and the waits between tries."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import os
import re
import time
from typing import Any

__all__ = [
    "INFO_TIMEOUT_ENV",
    "LOST_AFTER_ENV",
    "engine_attempts",
    "info_timeout",
    "is_transient",
    "lost_after",
]

log = logging.getLogger("scopefx.remote.client")  # the client's messages, one logger


def is_transient(exc: BaseException) -> bool:
    """Whether a failed task may succeed when sent again (a lost worker, a dropped
    connection), as opposed to a scopefx error that would only repeat. Remote exceptions
    arrive as text (Globus Compute's ``TaskExecutionFailed``, scopefx's
    :class:`~scopefx.errors.RemoteTaskError`), so the text is checked too."""
    from .. import errors

    if isinstance(exc, errors.ScopefxError) and not isinstance(exc, errors.RemoteTaskError):
        return False
    text = f"{type(exc).__name__}: {exc}"
    if "MaxResultSizeExceeded" in text or _refused_function(exc):  # the same again
        return False
    if _engine_stopped(exc):  # every later task fails the same way until a restart
        return False
    names = [name for name in errors.__all__ if name != "RemoteTaskError"]
    return not any(name in text.replace("RemoteTaskError", "") for name in names)


def engine_attempts(exc: BaseException) -> int:
    """How many times the endpoint already ran the task that failed with ``exc``.

    An endpoint engine with ``max_retries_on_system_failure`` (every shipped template: 2)
    runs a task whose worker was lost again itself, and its error then carries one
    traceback per attempt ("Traceback from attempt: ..."). The client counts those against
    its own ``max_retries``, so one failing task runs at most ``1 + max_retries`` times in
    all, not (1 + engine retries) x (1 + client retries).
    """
    return max(1, f"{exc}".count("Traceback from attempt:"))


#: First wait before a retry, doubled each time up to _BACKOFF_MAX_S.
_BACKOFF_S = 1.0
_BACKOFF_MAX_S = 30.0
_sleep = time.sleep


def _backoff(attempt: int) -> None:
    """Wait before retry ``attempt`` (1, 2, ...): a lost node or a restarting endpoint needs
    a moment, and resending at once only loses the retry too."""
    _sleep(min(_BACKOFF_MAX_S, _BACKOFF_S * 2 ** (attempt - 1)))


_LOST = re.compile(
    r"WorkerLost|ManagerLost|loss of (manager|worker)|worker\b.*\b(lost|died|killed)", re.I
)


def _lost_worker(exc: BaseException) -> bool:
    """Whether a task failed because the process running it died or was lost (a crash, the
    memory limit, a lost node: Parsl's ``WorkerLost``/``ManagerLost``), as opposed to a
    failure to submit or reach the endpoint, which splitting the task would not help."""
    return bool(_LOST.search(f"{type(exc).__name__}: {exc}"))


def _engine_stopped(exc: BaseException) -> bool:
    """Whether the endpoint's engine stopped taking tasks for good: Parsl's
    ``BadStateException``, raised for every task once its provider's blocks all failed (a lost
    worker pool, with Parsl's default block error handler). Resending cannot succeed until
    the endpoint is restarted."""
    return "BadStateException" in f"{type(exc).__name__}: {exc}"


_ENGINE_STOPPED = (
    "the endpoint's engine stopped taking tasks after its worker pool was lost (Parsl "
    "BadStateException); nothing sent there can run until the endpoint is restarted "
    "(`globus-compute-endpoint restart NAME`), or route this role to another endpoint"
)


def _last_line(exc: BaseException) -> str:
    """The last line of an error's text that has words in it: the exception itself, at the
    end of a remote traceback."""
    lines = [line.strip() for line in f"{exc}".splitlines() if any(c.isalpha() for c in line)]
    return lines[-1] if lines else ""


def _too_large(exc: BaseException) -> bool:
    """Whether a task failed because its result was over the endpoint's size limit
    (Globus Compute's ``MaxResultSizeExceeded``, also when it arrives as text)."""
    return "MaxResultSizeExceeded" in f"{type(exc).__name__}: {exc}"


#: Environment variable with the client's default ``lost_after_s`` (seconds; ``inf``: never).
LOST_AFTER_ENV = "SCOPEFX_LOST_AFTER_S"


def lost_after(explicit: float | None, executor: Any) -> float:
    """Seconds a task may go unanswered while no other task is answered either, before the
    client counts it lost; ``math.inf``: never.

    Parsl's worker pool (under every Globus Compute endpoint) hands a finished task's result
    to a background feeder thread of the worker process; a worker that dies before that
    thread has written it (its next task crashing at once, the OOM killer) loses the result,
    and no ``WorkerLost`` is raised for it: the task is never answered. Only the client can
    notice. The limit is, in order: ``explicit`` (the client's ``lost_after_s``),
    ``SCOPEFX_LOST_AFTER_S``, the executor's own ``lost_after_s`` (the in-process
    :class:`~scopefx.remote.EngineExecutor` derives one from its workers' ``GC_TASK_TIMEOUT``),
    else none: a batch endpoint may hold a task in its scheduler's queue for hours, and a
    Globus Compute future says nothing between submission and answer.
    """
    from ..errors import ConfigError

    where = "lost_after_s"
    value: Any = explicit
    if value is None and os.environ.get(LOST_AFTER_ENV):
        where, value = LOST_AFTER_ENV, os.environ[LOST_AFTER_ENV]
    if value is None:
        where, value = (
            f"{type(executor).__name__}.lost_after_s",
            getattr(executor, "lost_after_s", None),
        )
    if value is None:
        return math.inf
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:  # NaN too
        raise ConfigError(f"{where} must be a number of seconds > 0 (or inf: never), got {value!r}")
    return seconds


#: Seconds between "still waiting" messages while an endpoint's first answer is queued.
_INFO_NOTICE_S = 60.0

#: Environment variable with a limit on the wait for an endpoint's first answer (seconds).
INFO_TIMEOUT_ENV = "SCOPEFX_INFO_TIMEOUT"


def info_timeout() -> float:
    """Seconds to wait for an endpoint's ``endpoint_info``: ``SCOPEFX_INFO_TIMEOUT``, else
    (unset or empty) ``math.inf``. Read before anything is sent, so that a malformed value
    is reported as what it is, not as an endpoint that did not answer.

    Raises
    ------
    ConfigError
        The variable is not a number of seconds > 0.
    """
    from ..errors import ConfigError

    value = os.environ.get(INFO_TIMEOUT_ENV)
    if not value:
        return math.inf
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # NaN too
        raise ConfigError(
            f"{INFO_TIMEOUT_ENV} must be a number of seconds > 0 (or inf, or unset: wait as "
            f"long as it takes), got {value!r}"
        )
    return seconds


def _wait_for_info(future: cf.Future[Any], name: str, limit_s: float | None = None) -> Any:
    """The result of the first ``endpoint_info``, waited for as long as it takes.

    A batch endpoint (the SLURM and PBS templates) starts no job until a task arrives, so
    its first answer waits in the scheduler's queue, for minutes or hours: a fixed limit
    would fail a command only because the queue is slow. The wait is logged once a minute;
    ``SCOPEFX_INFO_TIMEOUT`` (seconds, :func:`info_timeout`; ``limit_s`` when given) sets a
    limit where one is wanted.
    """
    if limit_s is None:
        limit_s = info_timeout()
    waited = 0.0
    while True:
        step = min(_INFO_NOTICE_S, limit_s - waited)
        # cf.wait, not result(timeout=): a task that failed with TimeoutError is an answer
        done, _ = cf.wait([future], timeout=step)
        if done:
            return future.result()
        waited += step
        if waited >= limit_s:
            future.cancel()
            raise TimeoutError(
                f"no answer within {INFO_TIMEOUT_ENV}={limit_s:g} s; a batch endpoint may "
                "still be waiting for its job to start: raise or unset the limit"
            )
        log.warning(
            "waiting %.0f s so far for endpoint %r to answer (a batch endpoint waits for "
            "its first job to start in the scheduler's queue)", waited, name,
        )  # fmt: skip


def _refused_function(exc: BaseException) -> str:
    """What to do when an endpoint refused to run a function (``allowed_functions``), or ""."""
    text = f"{type(exc).__name__}: {exc}"
    if "not permitted on endpoint" not in text and "FUNCTION_NOT_ALLOWED" not in text:
        return ""
    return (
        "the endpoint runs only the functions its allowed_functions lists: run `scopefx "
        "register` once (it writes the function manifest this client submits by), then "
        "`scopefx endpoint-config` on the endpoint's config.yaml, and restart the endpoint"
    )
