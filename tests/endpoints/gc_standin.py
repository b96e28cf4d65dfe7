"""A thin stand-in for the Globus Compute web service, for running the real endpoint offline.

The endpoint process talks to the service only through AMQP: it consumes its task queue and
publishes results and heartbeats to exchanges, with the queue names and URLs the service
hands it (``amqp_creds``). :class:`ServiceStandIn` plays the service's part of that and
nothing more, on the broker of ``tools/rabbitmq/rabbitmq.sh``:

* **queues**: a task queue, a result queue and a heartbeat queue per endpoint;
* **packing**: a task is what the service builds from a registration and a submission:
  the function body the SDK uploaded at registration (``FunctionRegistrationData``), then
  the payload the SDK's ``Batch`` prepared (serialized args and kwargs), in a messagepack
  ``Task``, with the ``function_uuid``/``task_uuid``/``result_serializers`` headers;
* **start commands**: ``globus-compute-endpoint _start-user-endpoint NAME`` with the JSON
  its core endpoint writes on stdin (rendered config, ``amqp_creds``, ``allowed_functions``).

No login, no registration API, no routing: function ids are made up here.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
import uuid
from typing import Any


class ServiceStandIn:
    """The service's side of the endpoint's queues (see the module docs)."""

    TASKS, RESULTS, HEARTBEATS = "scopefx-test.tasks", "scopefx-test.results", "scopefx-test.hb"

    def __init__(self, url: str) -> None:
        import pika

        self.url = url
        self._pika = pika
        self._lock = threading.Lock()
        self._conn = pika.BlockingConnection(pika.URLParameters(url))
        self._chan = self._conn.channel()
        for exchange in (self.TASKS, self.RESULTS, self.HEARTBEATS):
            self._chan.exchange_declare(exchange=exchange, exchange_type="direct")
        #: function id -> the function body as registration stored it
        self.functions: dict[str, str] = {}
        self._results: dict[str, Any] = {}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- registration: what the SDK uploads, kept under a made-up id ----------------------

    def register_function(self, fn: Any, serializer: Any = None) -> str:
        from globus_compute_sdk.sdk.client import FunctionRegistrationData
        from globus_compute_sdk.serialize import ComputeSerializer

        data = FunctionRegistrationData(function=fn, serializer=serializer or ComputeSerializer())
        fid = str(uuid.uuid4())
        self.functions[fid] = str(data.function_code)
        return fid

    # -- queues -----------------------------------------------------------------------------

    def create_endpoint(self) -> dict[str, Any]:
        """Queues for a new endpoint; returns its ``amqp_creds`` as the service hands them
        to an endpoint (and a core endpoint passes them on to the user endpoint)."""
        eid = str(uuid.uuid4())
        queues = {}
        with self._lock:
            for kind, exchange in (
                ("task", self.TASKS), ("result", self.RESULTS), ("heartbeat", self.HEARTBEATS)
            ):  # fmt: skip
                name = f"{eid}.{kind}s"
                self._chan.queue_declare(queue=name)
                self._chan.queue_bind(queue=name, exchange=exchange, routing_key=name)
                queues[kind] = (name, exchange)

        def publish_info(kind: str) -> dict[str, Any]:
            name, exchange = queues[kind]
            return {
                "connection_url": self.url,
                "exchange": exchange,
                "queue": name,
                "queue_publish_kwargs": {
                    "exchange": exchange,
                    "routing_key": name,
                    "mandatory": True,
                    "properties": {"delivery_mode": 2},
                },
            }

        return {
            "endpoint_id": eid,
            "task_queue_info": {"connection_url": self.url, "queue": queues["task"][0]},
            "result_queue_info": publish_info("result"),
            "heartbeat_queue_info": publish_info("heartbeat"),
        }

    def submit(self, endpoint_id: str, batch: dict[str, Any]) -> list[str]:
        """Queue the tasks of a batch as the SDK POSTs it (``Batch.prepare()``): each payload
        after its function's registered body, in a messagepack Task. Returns the task ids."""
        from globus_compute_common import messagepack
        from globus_compute_common.messagepack.message_types import Task

        task_ids = []
        headers_common = {
            "result_serializers": batch.get("result_serializers") or [],
            "resource_specification": json.dumps(batch.get("resource_specification")),
        }
        with self._lock:
            for fid, payloads in batch["tasks"].items():
                for payload in payloads:
                    tid = uuid.uuid4()
                    body = messagepack.pack(
                        Task(task_id=tid, task_buffer=self.functions[fid] + payload)
                    )
                    headers = {**headers_common, "function_uuid": fid, "task_uuid": str(tid)}
                    self._chan.basic_publish(
                        exchange=self.TASKS,
                        routing_key=f"{endpoint_id}.tasks",
                        body=body,
                        properties=self._pika.BasicProperties(headers=headers, delivery_mode=2),
                    )
                    task_ids.append(str(tid))
        return task_ids

    def results(self, endpoint_id: str, task_ids: list[str], timeout_s: float) -> dict[str, Any]:
        """The messagepack ``Result`` of each task, waiting up to ``timeout_s`` in all."""
        from globus_compute_common import messagepack

        deadline = time.monotonic() + timeout_s
        wanted = set(task_ids)
        while not wanted <= set(self._results) and time.monotonic() < deadline:
            with self._lock:
                method, _props, body = self._chan.basic_get(f"{endpoint_id}.results", auto_ack=True)
                if method is None:
                    self._conn.sleep(0.1)
                    continue
            result = messagepack.unpack(body)
            self._results[str(result.task_id)] = result
        missing = wanted - set(self._results)
        if missing:
            raise TimeoutError(f"no result for {len(missing)} of {len(wanted)} tasks")
        return {tid: self._results.pop(tid) for tid in task_ids}

    def heartbeats(self, endpoint_id: str) -> list[Any]:
        """The status reports (messagepack ``EPStatusReport``) the endpoint published so far on
        its heartbeat queue, drained: heartbeats, and a core endpoint's start failures."""
        from globus_compute_common import messagepack

        reports = []
        with self._lock:
            while True:
                method, _props, body = self._chan.basic_get(
                    f"{endpoint_id}.heartbeats", auto_ack=True
                )
                if method is None:
                    return reports
                reports.append(messagepack.unpack(body))

    # -- a core (multi-user) endpoint: its command queue and the start command --------------

    def create_core_endpoint(self) -> dict[str, Any]:
        """Queues for a core endpoint; returns the registration info the service would
        answer its registration with (``command_queue_info``, ``heartbeat_queue_info``)."""
        creds = self.create_endpoint()
        eid = creds["endpoint_id"]
        with self._lock:
            self._chan.queue_declare(queue=f"{eid}.commands")
        return {
            "endpoint_id": eid,
            "command_queue_info": {"connection_url": self.url, "queue": f"{eid}.commands"},
            "heartbeat_queue_info": creds["heartbeat_queue_info"],
        }

    def start_user_endpoint(
        self,
        core_id: str,
        *,
        username: str,
        amqp_creds: dict[str, Any],
        user_opts: dict[str, Any] | None = None,
    ) -> None:
        """The command the service sends a core endpoint when ``username`` (a Globus
        identity) submits to it: start that user's endpoint with these queues and options."""
        from dataclasses import asdict

        from globus_compute_sdk.sdk.batch import create_user_runtime

        identity = {
            "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, username)),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_DNS, username)),
            "username": username,
            "status": "used",
        }
        body = {
            "command": "cmd_start_endpoint",
            "globus_effective_identity": identity["id"],
            "globus_identity_set": [identity],
            "globus_username": username,
            "args": [],
            "kwargs": {
                "name": f"uep.{core_id}.{amqp_creds['endpoint_id']}",
                "amqp_creds": amqp_creds,
                "user_opts": user_opts or {},
                "user_runtime": json.loads(json.dumps(asdict(create_user_runtime()))),
            },
        }
        with self._lock:
            self._chan.basic_publish(
                exchange="",
                routing_key=f"{core_id}.commands",
                body=json.dumps(body).encode(),
                properties=self._pika.BasicProperties(
                    content_type="application/json", timestamp=round(time.time())
                ),
            )


class UserEndpoint:
    """A real ``globus-compute-endpoint`` user-endpoint process, started as its core
    endpoint starts it: ``_start-user-endpoint NAME``, the rendered config on stdin."""

    def __init__(
        self,
        service: ServiceStandIn,
        *,
        config: str,
        allowed_functions: list[str] | None,
        gc_dir: pathlib.Path,
        name: str,
        env: dict[str, str],
    ) -> None:
        self.service = service
        self.creds = service.create_endpoint()
        self.endpoint_id = self.creds["endpoint_id"]
        self.ep_dir = gc_dir / name
        self.ep_dir.mkdir(parents=True, exist_ok=True)
        self.log = self.ep_dir / "process.log"
        stdin = {
            "amqp_creds": self.creds,
            "config": config,
            "ep_info": {},
            "allowed_functions": allowed_functions,
        }
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [gce_executable(), "_start-user-endpoint", name],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, "GLOBUS_COMPUTE_USER_DIR": str(gc_dir)},
                cwd=self.ep_dir,
                start_new_session=True,  # as the core endpoint does (setsid): one group to stop
            )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(stdin).encode())
        self.proc.stdin.close()

    def logs(self) -> str:
        texts = [self.log.read_text(errors="replace")]
        for path in sorted(self.ep_dir.glob("**/*.log")):
            if path != self.log:
                texts.append(f"==> {path} <==\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(texts)[-12000:]

    def stop(self, grace_s: float = 10) -> None:
        """SIGTERM (the endpoint's own shutdown), then SIGKILL to its whole process group
        (interchange and worker pool included) if it is not done within ``grace_s``."""
        import signal

        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def gce_executable() -> str:
    """``globus-compute-endpoint`` beside this interpreter (the core endpoint looks it up on
    PATH; a test environment's bin/ need not be on PATH)."""
    beside = pathlib.Path(sys.executable).parent / "globus-compute-endpoint"
    return str(beside) if beside.exists() else shutil.which("globus-compute-endpoint") or ""


class StandInExecutor(cf.Executor):
    """The SDK Executor's interface over the stand-in: ``submit_to_registered_function``,
    ``submit`` (registers the function first, as the SDK's Executor does), a
    ``serializer`` used exactly as the SDK's ``Batch`` uses it, and results deserialized as
    the SDK does (failures as ``TaskExecutionFailed``)."""

    def __init__(self, endpoint: UserEndpoint, *, timeout_s: float = 120) -> None:
        from globus_compute_sdk.serialize import ComputeSerializer

        self.endpoint = endpoint
        self.serializer = ComputeSerializer()
        self.timeout_s = timeout_s
        self._pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="standin")
        self.registered: list[str] = []

    def submit_to_registered_function(
        self, function_id: str, args: Any = None, kwargs: Any = None
    ) -> cf.Future[Any]:
        from globus_compute_sdk.sdk.batch import Batch

        batch = Batch(task_group_id=None, serializer=self.serializer)
        batch.add(function_id, args=tuple(args or ()), kwargs=dict(kwargs or {}))
        (task_id,) = self.endpoint.service.submit(self.endpoint.endpoint_id, batch.prepare())
        return self._pool.submit(self._result, task_id)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fid = self.endpoint.service.register_function(fn, self.serializer)
        self.registered.append(fid)
        return self.submit_to_registered_function(fid, args, kwargs)

    def _result(self, task_id: str) -> Any:
        from globus_compute_sdk.errors import TaskExecutionFailed

        (result,) = self.endpoint.service.results(
            self.endpoint.endpoint_id, [task_id], self.timeout_s
        ).values()
        if result.is_error:
            raise TaskExecutionFailed(result.data)
        return self.serializer.deserialize(result.data)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)
