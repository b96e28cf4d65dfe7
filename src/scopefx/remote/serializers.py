"""The serializers scopefx's endpoints allow, and the task check that naming them installs.

Every shipped endpoint template lists its engine's ``allowed_serializers`` through this
module::

    allowed_serializers:
      - scopefx.remote.serializers.DillCode
      - scopefx.remote.serializers.JSONData

They *are* the Globus Compute SDK's ``DillCode`` and ``JSONData`` (the endpoint accepts no
other classes), so the allowlist is exactly what the SDK's own names would give. What naming
them here adds: the endpoint imports this module to resolve the names, and the import puts
:func:`check_task_buffer` in front of the engine's ``submit``. globus-compute-endpoint 4.x
deserializes each of a task's three buffers (function, positional arguments, keyword
arguments) with whichever allowed strategy the buffer's own header names, so an argument
tagged ``DillCode`` would be un-pickled on the worker, code and all. The check refuses, in the
endpoint process and before any buffer is deserialized, a task whose two argument buffers are
not tagged with *data* strategies; the allowlist (checked again by the worker) then decides
which data strategies pass.

This is the one scopefx module that acts when imported, and only where
globus-compute-endpoint is installed; ``import scopefx`` never imports it. It relies on the
4.x endpoint's ``GlobusComputeEngineBase.submit(task_f, packed_task, ...)``, and refuses to
load (so the endpoint refuses to start) where that is not what it finds.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import logging
from typing import Any

from globus_compute_sdk.errors import DeserializationError
from globus_compute_sdk.serialize import DillCode, JSONData
from globus_compute_sdk.serialize.base import IDENTIFIER_LENGTH, SerializationStrategy

__all__ = ["DillCode", "JSONData", "check_task_buffer"]

log = logging.getLogger(__name__)

#: What a task buffer must hold: the function (a code strategy), then its positional and
#: keyword arguments (data strategies).
_ROLES = (("function", True), ("args", False), ("kwargs", False))


def check_task_buffer(packed: str) -> None:
    """Refuse a task buffer unless it is a function and two argument buffers of data.

    ``packed`` is split exactly as ``ComputeSerializer.unpack_and_deserialize`` splits it on
    the worker (a length line, then that many characters, until nothing is left), so what is
    checked is what the worker would deserialize. Only the 3-character headers are read;
    nothing is deserialized.

    Parameters
    ----------
    packed : str
        A task's ``task_buffer``: the function buffer the service stored at registration
        followed by the caller's packed arguments.

    Raises
    ------
    globus_compute_sdk.errors.DeserializationError
        The buffer is malformed, does not hold exactly 3 buffers, or names a strategy that
        does not fit its place (code for the function, data for each argument buffer).
    """
    found: list[SerializationStrategy | None] = []
    rest = packed
    try:
        while rest and len(found) <= len(_ROLES):
            length, body = rest.split("\n", 1)
            size = int(length)
            current, rest = body[:size], body[size:]
            found.append(SerializationStrategy.get_cached_by_id(current[:IDENTIFIER_LENGTH]))
    except ValueError as e:
        raise DeserializationError(f"task refused: its buffer is malformed ({e})") from None
    fits = len(found) == len(_ROLES) and all(
        s is not None and s.for_code == code for s, (_, code) in zip(found, _ROLES, strict=False)
    )
    if not fits:
        got = ", ".join(
            f"{role}: {_kind(s)}" for (role, _), s in zip(_ROLES, found, strict=False)
        ) + (", and more buffers" if len(found) > len(_ROLES) else "")
        raise DeserializationError(
            "task refused before deserializing: a task must be a function serialized with a "
            "code strategy and its args and kwargs serialized with data strategies (JSONData "
            f"on scopefx endpoints; scopefx's client sends that); got {got or 'no buffers'}"
        )


def _kind(strategy: SerializationStrategy | None) -> str:
    if strategy is None:
        return "an unknown header"
    return f"{type(strategy).__name__} ({'code' if strategy.for_code else 'data'})"


def _check_packed_task(packed_task: bytes) -> None:
    """:func:`check_task_buffer` of a messagepack ``Task`` as the engine receives it."""
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task

    try:
        task = messagepack.unpack(packed_task)
    except Exception as e:
        raise DeserializationError(f"task refused: not a task message ({e})") from None
    if not isinstance(task, Task):
        raise DeserializationError(f"task refused: a {type(task).__name__}, not a Task")
    check_task_buffer(task.task_buffer)


def _refuse(task_f: Any, error: DeserializationError) -> None:
    """Answer a refused task as the endpoint answers one it does not run: a failed Result."""
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Result, ResultErrorDetails

    log.warning("task %s: %s", task_f.gc_task_id, error)
    task_f.set_result(
        messagepack.pack(
            Result(
                task_id=task_f.gc_task_id,
                data=f"DeserializationError: {error}",
                error_details=ResultErrorDetails(
                    code="DeserializationError", user_message=f"remote error: {error}"
                ),
                task_statuses=[],
            )
        )
    )


def _install() -> None:
    """Check every task the endpoint's engines are given (idempotent)."""
    if importlib.util.find_spec("globus_compute_endpoint") is None:
        return  # a client: no engine here to guard
    from globus_compute_endpoint.engines.base import GlobusComputeEngineBase as Base

    submit = Base.submit
    if getattr(submit, "_scopefx_checked", False):
        return
    expected = ["self", "task_f", "packed_task"]
    overridden = [c.__name__ for c in _subclasses(Base) if "submit" in vars(c)]
    if list(inspect.signature(submit).parameters)[:3] != expected or overridden:
        raise ImportError(
            "scopefx.remote.serializers cannot check tasks on this globus-compute-endpoint: "
            f"expected GlobusComputeEngineBase.submit{tuple(expected)} used by every engine, "
            f"found {inspect.signature(submit)} (overridden by {overridden or 'none'}); "
            "install a globus-compute-endpoint 4.x that scopefx supports (pyproject.toml)"
        )

    @functools.wraps(submit)
    def checked_submit(self: Any, task_f: Any, packed_task: bytes, *args: Any, **kw: Any) -> Any:
        try:
            _check_packed_task(packed_task)
        except DeserializationError as e:
            _refuse(task_f, e)  # answered and acknowledged: never queued again
            return None
        return submit(self, task_f, packed_task, *args, **kw)

    checked_submit._scopefx_checked = True  # type: ignore[attr-defined]
    Base.submit = checked_submit


def _subclasses(cls: type) -> list[type]:
    subs: list[type] = cls.__subclasses__()
    return [c for sub in subs for c in (sub, *_subclasses(sub))]


_install()
