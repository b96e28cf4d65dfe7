"""The task check that the endpoint templates' serializer names install.

:func:`check_task_buffer` on buffers a hostile caller can send, then through a real engine's
``submit`` (globus-compute-endpoint's in-process ``ThreadPoolEngine``, whose tasks run
``execute_task`` as the workers do). Through the real endpoint process, for every template:
``tests/endpoints/test_real_endpoint.py::test_a_pickle_tagged_as_code_in_an_argument_is_refused``.
"""

from __future__ import annotations

import math
import os
import pathlib
import uuid
from typing import Any

import pytest

pytest.importorskip("globus_compute_endpoint")

from globus_compute_common import messagepack
from globus_compute_common.messagepack.message_types import Result, Task
from globus_compute_sdk.errors import DeserializationError
from globus_compute_sdk.serialize import (
    ComputeSerializer,
    DillCode,
    DillDataBase64,
    JSONData,
    PureSourceTextInspect,
)

from scopefx.remote.serializers import check_task_buffer

ALLOWED = ["scopefx.remote.serializers.DillCode", "scopefx.remote.serializers.JSONData"]


class _Plant:
    """Un-pickling this creates ``path`` (a folder): proof that code from an argument ran."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


def _double(x: float) -> float:
    return 2 * x


def _buffer(*buffers: str, fn: Any = math.hypot) -> str:
    """A task buffer as the service builds it: the function buffer stored at registration,
    then the caller's packed buffers."""
    return ComputeSerializer.pack_buffers([DillCode().serialize(fn), *buffers])


def _json(value: Any) -> str:
    return JSONData().serialize(value)


def test_a_task_of_json_arguments_passes() -> None:
    check_task_buffer(_buffer(_json([3, 4]), _json({})))
    # a pickled *data* argument passes this check; the allowlist refuses it on the worker
    check_task_buffer(_buffer(DillDataBase64().serialize([3, 4]), _json({})))


@pytest.mark.parametrize(
    ("place", "expected"),
    [
        ("args", r"got function: DillCode \(code\), args: DillCode \(code\), kwargs: JSONData"),
        ("kwargs", r"args: JSONData \(data\), kwargs: DillCode \(code\)"),
        ("fourth", r"kwargs: JSONData \(data\), and more buffers"),
        ("source", r"args: PureSourceTextInspect \(code\)"),
    ],
)
def test_code_in_an_arguments_place_is_refused_without_running(
    tmp_path: pathlib.Path, place: str, expected: str
) -> None:
    marker = tmp_path / "pwned"
    pickle = DillCode().serialize(_Plant(marker))
    buffers = {
        "args": [pickle, _json({})],
        "kwargs": [_json([]), pickle],
        "fourth": [_json([]), _json({}), pickle],
        "source": [PureSourceTextInspect().serialize(_double), _json({})],
    }[place]
    with pytest.raises(DeserializationError, match=r"task refused before deserializing") as e:
        check_task_buffer(_buffer(*buffers))
    assert e.match(expected)
    assert not marker.exists()


@pytest.mark.parametrize(
    "packed",
    [
        "",
        "5\nabc",  # the function buffer alone, cut short
        "x\n" + _json([]),  # not a length
        _json([]),  # no length line at all
        "3\n" + DillCode.identifier[:-1] + "?",  # an unknown header
    ],
    ids=["empty", "short", "bad-length", "no-length", "unknown-header"],
)
def test_malformed_buffers_are_refused(packed: str) -> None:
    with pytest.raises(DeserializationError, match=r"task refused"):
        check_task_buffer(packed)


def _submit(engine: Any, task_buffer: str) -> Result:
    from globus_compute_endpoint.engines.base import GCFuture

    task_id = uuid.uuid4()
    future = GCFuture(task_id)
    packed = messagepack.pack(Task(task_id=task_id, task_buffer=task_buffer))
    engine.submit(task_f=future, packed_task=packed, resource_specification={})
    result = messagepack.unpack(future.result(timeout=60))
    assert isinstance(result, Result)
    return result


def test_the_engine_answers_a_refused_task_and_runs_a_good_one(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real engine built with the templates' serializer names, as the endpoint builds it."""
    from globus_compute_endpoint.engines import ThreadPoolEngine

    monkeypatch.chdir(tmp_path)  # the engine's task runner changes directory
    engine = ThreadPoolEngine(max_workers=1, allowed_serializers=ALLOWED)
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path))
    try:
        marker = tmp_path / "pwned"
        refused = _submit(engine, _buffer(DillCode().serialize([_Plant(marker)]), _json({})))
        good = _submit(engine, _buffer(_json([3, 4]), _json({})))
    finally:
        engine.shutdown()
    assert refused.is_error and refused.error_details is not None
    assert refused.error_details.code == "DeserializationError"
    assert "args: DillCode (code)" in refused.data
    assert not marker.exists()
    assert not good.is_error, good.data
    assert ComputeSerializer().deserialize(good.data) == 5.0
