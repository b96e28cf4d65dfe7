"""A real Globus Compute endpoint engine in this process, as a ``concurrent.futures.Executor``.

:class:`EngineExecutor` starts globus-compute-endpoint's own ``GlobusComputeEngine`` (Parsl's
HighThroughputExecutor with an interchange and real worker processes, on a ``LocalProvider``
unless told otherwise) and feeds it tasks packed exactly as the web service would hand them
to an endpoint: the function as registration serializes it, the arguments as
``globus_compute_sdk``'s batch serializes them, wrapped in a messagepack ``Task``; results come
back as messagepack ``Result`` messages and are deserialized the way the SDK does.

Only the Globus web service (login, registration, routing) is left out, which is why the tests
and ``bench/remote.py`` use it: everything the endpoint does to a task is real. It also runs
the suite on a machine with no network at all (``factory =
"scopefx.remote:EngineExecutor"`` in the endpoint configuration).
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import contextlib
import logging
import os
import tempfile
import threading
import uuid
from typing import Any

from ..errors import RemoteTaskError

__all__ = ["EngineExecutor", "RemoteTaskError", "pack_task"]

log = logging.getLogger(__name__)

#: Seconds past the task time limit before an unanswered task counts as lost: the answer of
#: a task stopped at its limit, a worker restarted, a lost block replaced.
_LOST_MARGIN_S = 60.0


def pack_task(
    fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], serializer: Any = None
) -> tuple[uuid.UUID, bytes]:
    """A task as the service delivers it to an endpoint: ``(task_id, packed Task bytes)``."""
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_sdk.sdk.client import FunctionRegistrationData
    from globus_compute_sdk.serialize import ComputeSerializer

    serde = serializer or ComputeSerializer()
    function_code = str(FunctionRegistrationData(function=fn, serializer=serde).function_code)
    payload = serde.pack_buffers([serde.serialize(args), serde.serialize(kwargs)])
    task_id = uuid.uuid4()
    return task_id, messagepack.pack(Task(task_id=task_id, task_buffer=function_code + payload))


def _launch_from_this_interpreter(engine: Any) -> None:
    """Start the engine's interchange and worker pool with this interpreter
    (``python -m globus_compute_endpoint.cli``) instead of looking up
    ``globus-compute-endpoint`` on PATH, which a Jupyter kernel registered from a virtual
    environment does not have (FileNotFoundError on start)."""
    import shlex
    import sys

    module = [sys.executable, "-m", "globus_compute_endpoint.cli"]
    executor = engine.executor
    ix = list(executor.interchange_launch_cmd)
    if ix[:1] == ["globus-compute-endpoint"]:
        executor.interchange_launch_cmd = [*module, *ix[1:]]
    prefix = "globus-compute-endpoint "
    if executor.launch_cmd.startswith(prefix):
        here = " ".join(shlex.quote(part) for part in module)
        executor.launch_cmd = here + " " + executor.launch_cmd[len(prefix) :]


class EngineExecutor(cf.Executor):
    """Run functions in a real ``GlobusComputeEngine`` (see the module docs).

    Parameters
    ----------
    workers : int
        Worker processes (``max_workers_per_node`` of one LocalProvider block).
    run_dir : path, optional
        The engine's run folder (logs, submit scripts, task working dirs); default a
        temporary folder removed at shutdown.
    env : dict, optional
        Environment of the workers (e.g. ``{"SCOPEFX_DATA_ROOTS": "/data"}``), set through
        the provider's ``worker_init`` as an endpoint configuration would.
    max_retries_on_system_failure : int
        The engine's own retry of tasks whose worker was lost (endpoints set this in
        ``config.yaml``); 0 leaves retries to the client.
    provider : parsl provider, optional
        Default: ``LocalProvider(init_blocks=1, max_blocks=1)``.
    **engine_options
        Passed to ``GlobusComputeEngine``.

    Attributes
    ----------
    lost_after_s : float or None
        How long a :class:`~scopefx.Client` waits, with no task answered, before it counts
        its unanswered tasks lost and sends them again: the workers' ``GC_TASK_TIMEOUT``
        (from ``env``) plus a minute, since no task can then run longer; ``None`` without
        one. Parsl's worker pool loses the result of a task whose worker dies right after
        finishing it (docs/security.md), and nothing else reports that task.
    """

    def __init__(
        self,
        workers: int = 2,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        max_retries_on_system_failure: int = 0,
        provider: Any = None,
        **engine_options: Any,
    ) -> None:
        import shlex

        from globus_compute_endpoint.engines import GlobusComputeEngine
        from globus_compute_sdk.serialize import ComputeSerializer
        from parsl.providers import LocalProvider

        self._tmp = None
        if run_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="scopefx-engine-")
            run_dir = self._tmp.name
        self.run_dir = os.fspath(run_dir)
        timeout_s = float((env or {}).get("GC_TASK_TIMEOUT") or 0)
        self.lost_after_s = timeout_s + _LOST_MARGIN_S if timeout_s > 0 else None
        if provider is None:
            init = "; ".join(f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items())
            provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1, worker_init=init)
        elif env:
            raise ValueError(
                "env is set through the default provider; put it in your provider's worker_init"
            )
        # A lost worker pool (every worker killed: the OOM killer, a lost node) ends its block.
        # Parsl's default handler then fails the engine for good once every block it started
        # has failed, which with one block is the first loss: every later task would fail.
        # The windowed handler gives up only after 3 blocks in a row failed (a pool that
        # cannot start at all), so a lost pool is replaced by a new block and work goes on.
        from parsl.jobs.error_handlers import windowed_error_handler

        engine_options.setdefault("block_error_handler", windowed_error_handler)
        engine_options.setdefault("address", "127.0.0.1")
        engine_options.setdefault("heartbeat_period", 2)
        engine_options.setdefault("heartbeat_threshold", 10)
        self.engine = GlobusComputeEngine(
            provider=provider,
            max_workers_per_node=workers,
            max_retries_on_system_failure=max_retries_on_system_failure,
            **engine_options,
        )
        _launch_from_this_interpreter(self.engine)
        self.serializer = ComputeSerializer()
        self.endpoint_id = uuid.uuid4()
        self._lock = threading.Lock()
        self._shutdown = False
        self.engine.start(endpoint_id=self.endpoint_id, run_dir=self.run_dir)
        # an engine left running keeps the interpreter from exiting: stop it at exit
        atexit.register(self.shutdown)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        from globus_compute_common import messagepack
        from globus_compute_endpoint.engines.base import GCFuture

        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit to an EngineExecutor after shutdown")
        task_id, packed = pack_task(fn, args, kwargs, self.serializer)
        outer: cf.Future[Any] = cf.Future()
        inner = GCFuture(task_id)

        def done(f: cf.Future[Any]) -> None:
            try:
                result: Any = messagepack.unpack(f.result())
                if result.is_error:
                    raise RemoteTaskError(result.data)
                outer.set_result(self.serializer.deserialize(result.data))
            except BaseException as exc:
                outer.set_exception(exc)

        inner.add_done_callback(done)
        outer.set_running_or_notify_cancel()
        self.engine.submit(inner, packed, resource_specification={})
        return outer

    def worker_pids(self) -> list[int]:
        """Process ids of this engine's worker processes (for fault-injection tests): the
        children of the worker pool that the provider started with this run folder."""
        import psutil

        pids: list[int] = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "process_worker_pool" in cmd and self.run_dir in cmd:
                with contextlib.suppress(psutil.Error):
                    spawned = sorted(
                        (c for c in proc.children() if "spawn_main" in " ".join(c.cmdline())),
                        key=lambda c: c.create_time(),
                    )
                    # the first one spawned is the pool's multiprocessing manager, not a worker
                    pids.extend(c.pid for c in spawned[1:])
        return pids

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        atexit.unregister(self.shutdown)
        try:
            self.engine.shutdown()
        finally:
            self._reap()
            if self._tmp is not None:
                self._tmp.cleanup()

    def _reap(self, grace_s: float = 5.0) -> None:
        """Stop what the provider started for this engine and did not stop: a worker pool
        whose workers were killed can outlive the interchange (it would spin until its
        heartbeat threshold, or longer)."""
        import psutil

        procs = []
        for proc in psutil.process_iter(["cmdline"]):
            if self.run_dir in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    procs.extend([proc, *proc.children(recursive=True)])
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
