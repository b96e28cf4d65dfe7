"""The thin client: references in, batches out, small results gathered back.

The client depends only on :class:`concurrent.futures.Executor`. A Globus Compute
``Executor(endpoint_id=...)`` sends the work to an endpoint; with none the embedded local
default (a thread pool in this process) runs the same functions here. Nothing above the
client knows which it has.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .._version import __version__
from ..errors import ConfigError, EndpointError
from . import functions as _functions
from ._batching import PAYLOAD_LIMIT_BYTES, batch_size
from ._config import ROLES, ClientConfig, EndpointSpec
from ._executors import Executors, local_workers, send_json
from ._failures import (
    _ENGINE_STOPPED,
    _backoff,
    _engine_stopped,
    _refused_function,
    _wait_for_info,
    engine_attempts,
    info_timeout,
    is_transient,
    lost_after,
)
from ._gather import gather
from ._manifest import FUNCTION_NAMES, Manifest, major_minor

__all__ = ["PAYLOAD_LIMIT_BYTES", "Client"]

log = logging.getLogger(__name__)


class Client:
    """Send scopefx work where it should run and gather the answers.

    Parameters
    ----------
    executor : concurrent.futures.Executor, optional
        Where every role runs: e.g. ``globus_compute_sdk.Executor(endpoint_id=...)``. Default:
        the embedded local default (threads in this process; no account, no network).
    routes : mapping of role -> Executor, optional
        Per-role executors (``"focus"``, ``"fusion"``), taking precedence over ``executor``.
    batch_size : int, optional
        References per task. Default: chosen per run to spread the work over the endpoint's
        workers while amortising the per-task cost (at most 64), and always small enough to
        keep a task's arguments and result far below Globus Compute's 10 MB limit.
    max_retries : int
        How many times a task that failed as a whole (lost worker, endpoint restart) is
        run again before its items are reported as ``status="failed"``, counting the
        endpoint engine's own reruns (``max_retries_on_system_failure``), with a growing
        wait before each resend.
    lost_after_s : float, optional
        Seconds a focus task may go unanswered while no other task is answered either,
        after which it counts as lost (an endpoint can lose a finished task's result when its
        worker dies right after) and is sent again, as two halves if it has several
        references, without counting against ``max_retries``; a single reference is sent
        again at most ``max_retries`` times, then reported ``status="failed"``. Default:
        ``SCOPEFX_LOST_AFTER_S``, else the executor's own (an :class:`EngineExecutor` with a
        ``GC_TASK_TIMEOUT``: that plus a minute), else never: a batch endpoint may keep a
        task in its queue for hours. ``math.inf``: never.
    manifest : Manifest or path, optional
        Registered function UUIDs (``scopefx register``). With one, Globus Compute executors
        get ``submit_to_registered_function``; default: the manifest for this scopefx version
        if it exists.
    check_version : bool
        Ask each executor's ``endpoint_info`` before the first task and refuse an endpoint
        whose scopefx major.minor differs from this one's. The answer is waited for as long
        as it takes (a batch endpoint's first job may queue), unless ``SCOPEFX_INFO_TIMEOUT``
        (seconds) is set.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal or a notebook).

    Examples
    --------
    >>> with Client() as client:                                  # doctest: +SKIP
    ...     records = client.score_focus(["run1/s001.tif", "run1/s002.tif"])
    >>> from globus_compute_sdk import Executor                   # doctest: +SKIP
    >>> client = Client(Executor(endpoint_id="2f8c..."))          # doctest: +SKIP
    """

    def __init__(
        self,
        executor: cf.Executor | None = None,
        *,
        routes: Mapping[str, cf.Executor] | None = None,
        batch_size: int | None = None,
        max_retries: int = 2,
        lost_after_s: float | None = None,
        manifest: Manifest | str | os.PathLike[str] | None = None,
        check_version: bool = True,
        progress: bool | None = None,
    ) -> None:
        if executor is not None and not isinstance(executor, cf.Executor):
            raise ConfigError(
                f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}"
            )
        routes = dict(routes or {})
        bad = [r for r in routes if r not in ROLES]
        if bad:
            raise ConfigError(f"unknown role(s) {bad} in routes; roles are {list(ROLES)}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        self._executors = Executors(executor, routes)
        self._info: dict[int, dict[str, Any]] = {}
        self.batch_size = batch_size
        self.max_retries = max_retries
        if lost_after_s is not None:
            lost_after(lost_after_s, None)  # refuse a bad value here, not at the first run
        self.lost_after_s = lost_after_s
        self.check_version = check_version
        self.progress = progress
        if isinstance(manifest, Manifest):
            self.manifest: Manifest | None = manifest
        else:
            self.manifest = Manifest.find(manifest)
        if self.manifest is not None and not self.manifest.matches_installed():
            log.warning(
                "manifest %s is for scopefx %s, this is %s: submitting functions by value",
                self.manifest.path, self.manifest.scopefx_version, __version__,
            )  # fmt: skip
            self.manifest = None
        self.endpoint_names: dict[str, str] = {}
        self._warned_batch = False
        self._warned_by_value: set[str] = set()  # function names; "": no manifest

    # -- construction from the user's configuration --------------------------------------------

    @classmethod
    def from_config(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> Client:
        """A client routed as the user's endpoint configuration says.

        Parameters
        ----------
        path : path, optional
            The TOML file (default ``$SCOPEFX_CONFIG`` or ``~/.config/scopefx/endpoints.toml``;
            see :mod:`scopefx.remote._config`). Without a file everything runs locally.
        endpoint : str, optional
            Send every role to this configured endpoint (``"local"``: run everything here).
        **kwargs
            Override :class:`Client` arguments (``batch_size``, ``max_retries``...); a
            ``None`` means "as the file says", as an option not given on the command line.
        """
        config = ClientConfig.load(path)
        for key in ("batch_size", "max_retries", "manifest"):
            if kwargs.get(key) is None:
                kwargs[key] = getattr(config, key)
        client = cls(**kwargs)
        if endpoint is not None and endpoint != "local":
            if endpoint not in config.endpoints:
                known = sorted(config.endpoints) or "none"
                where = (f"in {config.path}" if config.path else "configured: no endpoint "
                         "configuration file was found ($SCOPEFX_CONFIG, "
                         "~/.config/scopefx/endpoints.toml, or --config)")  # fmt: skip
                raise ConfigError(
                    f"no endpoint named {endpoint!r} {where} (configured: {known}); add "
                    "[endpoints.NAME] with its id, or use --endpoint local"
                )
            specs = dict.fromkeys(ROLES, config.endpoints[endpoint])
        elif endpoint == "local":
            specs = {}
        else:
            specs = {role: spec for role in ROLES if (spec := config.for_role(role)) is not None}
        made: dict[str, cf.Executor] = {}

        def factory(spec: EndpointSpec) -> cf.Executor:
            if spec.name not in made:  # one executor per endpoint, shared by its roles
                made[spec.name] = spec.make_executor()
            return made[spec.name]

        for role, spec in specs.items():
            client.endpoint_names[role] = spec.name
            client._executors.factories[role] = functools.partial(factory, spec)
        return client

    # -- executors --------------------------------------------------------------------------------

    def executor_for(self, role: str) -> cf.Executor:
        """The executor that runs ``role`` (made on first use)."""
        return self._executors.for_role(role)

    def is_local(self, role: str) -> bool:
        ex = self.executor_for(role)
        return ex is self._executors.local

    def _dispatch(self, ex: cf.Executor, name: str, *args: Any) -> cf.Future[Any]:
        """One call of suite function ``name`` on ``ex``: by UUID where a manifest names it
        and the executor is a Globus Compute one, else the function itself. Arguments
        travel as JSON data (see :func:`~scopefx.remote._executors.send_json`)."""
        send_json(ex)
        fid = self.manifest.function_id(name) if self.manifest is not None else None
        if hasattr(ex, "submit_to_registered_function"):
            if fid is not None:
                return ex.submit_to_registered_function(fid, args=args)
            missing = "" if self.manifest is None else name
            if missing not in self._warned_by_value:  # once per missing function
                self._warned_by_value.add(missing)
                if self.manifest is None:
                    log.warning(
                        "no function manifest for scopefx %s: sending the functions themselves, "
                        "registered anew for this run; an endpoint whose allowed_functions is "
                        "set (every shipped template) refuses them. Run `scopefx register` once.",
                        ".".join(major_minor(__version__)),
                    )
                else:  # a manifest of part of the suite
                    log.warning(
                        "the function manifest %s (scopefx %s) has no %s: sending that function "
                        "itself, registered anew for this run; an endpoint whose "
                        "allowed_functions is set (every shipped template) refuses it. Run "
                        "`scopefx register` to register the whole suite.",
                        self.manifest.path or "given", self.manifest.scopefx_version, name,
                    )  # fmt: skip
        return ex.submit(getattr(_functions, name), *args)

    def _submit(self, role: str, name: str, *args: Any) -> cf.Future[Any]:
        if name not in FUNCTION_NAMES:
            raise ConfigError(f"unknown function {name!r}; the suite has {list(FUNCTION_NAMES)}")
        ex = self.executor_for(role)
        if self.check_version and ex is not self._executors.local:
            self._endpoint_info(role, ex)
        return self._dispatch(ex, name, *args)

    def submit(self, name: str, *args: Any, role: str = "focus") -> cf.Future[Any]:
        """Submit one call of a suite function (by name) to the executor of ``role``."""
        return self._submit(role, name, *args)

    def _endpoint_info(self, role: str, ex: cf.Executor) -> dict[str, Any]:
        """``endpoint_info()`` of ``ex``, asked once per executor; with ``check_version``,
        refuses an endpoint whose scopefx major.minor differs from this one's (and asks it
        again next time: it may have been upgraded meanwhile)."""
        if ex is self._executors.local:
            return _functions.endpoint_info()
        name = self.endpoint_names.get(role, type(ex).__name__)
        info = self._info.get(id(ex))
        if info is None:
            limit_s = info_timeout()  # a malformed limit is said before anything is sent
            try:
                future = self._dispatch(ex, "endpoint_info")
                info = _wait_for_info(future, name, limit_s)
            except Exception as exc:
                refused = _refused_function(exc)
                raise EndpointError(
                    f"endpoint {name!r} did not answer endpoint_info: {type(exc).__name__}: "
                    f"{exc}" + (f"; {refused}" if refused else "")
                ) from exc
            self._info[id(ex)] = info
        theirs = str(info.get("scopefx", "?"))
        if self.check_version and major_minor(theirs) != major_minor(__version__):
            del self._info[id(ex)]
            raise EndpointError(
                f"endpoint {name!r} runs scopefx {theirs}, this client is {__version__}: "
                "major.minor must match; install the same scopefx version on both sides"
            )
        return info

    def info(self, role: str = "focus") -> dict[str, Any]:
        """``endpoint_info()`` of the executor that runs ``role``, asked once; an endpoint
        whose scopefx major.minor differs is refused (:class:`~scopefx.errors.EndpointError`)
        unless ``check_version`` is false."""
        return self._endpoint_info(role, self.executor_for(role))

    # -- focus ------------------------------------------------------------------------------------

    def _batch_size(self, refs: list[str], role: str) -> int:
        workers = 1  # the endpoint's workers size only an automatic batch
        if self.batch_size is None:
            ex = self.executor_for(role)
            info = self._info.get(id(ex), {})
            workers = (
                local_workers()
                if ex is self._executors.local
                else len(info.get("gpus") or []) or info.get("cpus") or 4
            )
        bounded = batch_size(refs, requested=self.batch_size, workers=workers)
        if self.batch_size is not None and bounded < self.batch_size and not self._warned_batch:
            self._warned_batch = True
            log.warning(
                "batch_size %d lowered to %d to keep each task's arguments and result far "
                "below Globus Compute's %d MiB limit", self.batch_size, bounded,
                PAYLOAD_LIMIT_BYTES // 2**20,
            )  # fmt: skip
        return bounded

    def iter_focus(
        self,
        refs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        params: Any = None,
        run: Any = None,
        calibration: Any = None,
        baseline: Any = None,
        on_record: Callable[[Any], None] | None = None,
        **overrides: Any,
    ) -> Iterator[Any]:
        """Score references where the ``focus`` role runs; yield :class:`~scopefx.FocusRecord`
        objects in input order, each as soon as it and all before it are back.

        The endpoint returns scores; verdicts are given here, by ``run`` (a
        :class:`~scopefx.focus.FocusRun`; default one made from ``calibration`` and
        ``baseline``), so local and remote scoring give the same verdicts. A reference that
        fails yields a record with its ``status`` and ``error``; a task that fails as a whole
        is retried ``max_retries`` times, then its records say ``status="failed"``.
        ``refs`` is a list; a single folder or glob is expanded here
        (:func:`scopefx.io.as_image_refs`), its images named as it was: relative to the
        current folder when it is relative (``"run1"`` -> ``"run1/s001.tif"``), as a
        reference on the endpoint is (relative to its data roots).
        """
        from ..focus import FocusParams, FocusRun
        from ..io import as_image_refs

        cal = calibration if calibration is not None else getattr(run, "calibration", None)
        focus_params = FocusParams.resolve(params, calibration=cal, **overrides)
        run = FocusRun.resolve(run, params=focus_params, calibration=calibration, baseline=baseline)
        items = as_image_refs(refs)
        if isinstance(refs, (str, os.PathLike)) and not os.path.isabs(os.fspath(refs)):
            items = [os.path.relpath(i) if os.path.isabs(i) else i for i in items]
        if not items:
            return
        ex = self.executor_for("focus")
        if self.check_version and ex is not self._executors.local:
            self._endpoint_info("focus", ex)  # also tells _batch_size the endpoint's workers
        size = self._batch_size(items, "focus")
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        wire = focus_params.to_dict()
        for records in gather(
            batches,
            lambda batch: self._submit("focus", "score_focus", batch, wire),
            max_retries=self.max_retries,
            lost_after_s=lost_after(self.lost_after_s, ex),
            progress=self.progress,
        ):
            for record in records:
                run.judge(record)
                if on_record is not None:
                    on_record(record)
                yield record

    def score_focus(
        self,
        refs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
        *,
        params: Any = None,
        run: Any = None,
        calibration: Any = None,
        baseline: Any = None,
        on_record: Callable[[Any], None] | None = None,
        **overrides: Any,
    ) -> list[Any]:
        """:meth:`iter_focus` gathered into a list, warm-up verdicts settled at the end
        (:meth:`FocusRun.settle`; final, unless ``run`` is given: a run fed in several calls
        goes on)."""
        from ..focus import FocusParams, FocusRun

        cal = calibration if calibration is not None else getattr(run, "calibration", None)
        focus_params = FocusParams.resolve(params, calibration=cal, **overrides)
        final = run is None
        run = FocusRun.resolve(run, params=focus_params, calibration=calibration, baseline=baseline)
        records = list(self.iter_focus(refs, params=focus_params, run=run, on_record=on_record))
        run.settle(final=final)
        return records

    # -- mosaics ----------------------------------------------------------------------------------

    def fuse(
        self,
        tiles: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        params: Any = None,
        options: Any = None,
        regions: int | None = None,
        workers: int | None = None,
        **overrides: Any,
    ) -> Any:
        """Fuse a mosaic where the ``fusion`` role runs.

        Parameters
        ----------
        tiles, output : references on that endpoint (tile table; ``.ome.zarr`` output)
        params : FusionParams, optional
        options : FuseOptions, optional
            What to read and how to write (``resume``, ``overwrite``, ``register``,
            ``flatfield``, ``pixel_size_um``, ``preview``...); ``**overrides`` of its fields
            are applied on top. Its ``flatfield`` and ``preview`` are references there too.
        regions : int, optional
            Fan out: plan once, fuse this many regions as separate tasks at once, then
            finish (pyramid, completion). Default: one ``fuse_mosaic`` task.
        workers : int, optional
            Threads per task on the endpoint.

        Returns
        -------
        FusionResult
            Without the plan; ``extra`` holds ``output`` (the reference as sent) and the
            endpoint's ``timings``.

        A task lost on the way is resubmitted up to ``max_retries`` times with
        ``resume=True``: chunks already written are kept. Only JSON data is sent.
        """
        from ..fusion import FuseOptions, FusionParams, FusionResult

        fuse_options = FuseOptions.resolve(options, **overrides)
        fusion_params = params if params is not None else FusionParams()
        if not isinstance(fusion_params, FusionParams):
            raise ConfigError(f"params must be a FusionParams, got {type(params).__name__}")
        job: dict[str, Any] = {
            "tiles": os.fspath(tiles),
            "output": os.fspath(output),
            "params": fusion_params.to_dict(),
            "options": fuse_options.to_dict(),
        }
        if workers is not None:
            job["workers"] = workers
        if regions is None:
            return FusionResult.from_dict(self._retrying("fuse_mosaic", job, resume_key=True))
        if not isinstance(regions, int) or regions < 1:
            raise ConfigError(f"regions must be an integer >= 1, got {regions!r}")
        planned = self._retrying("plan_mosaic", job, regions, resume_key=True)
        futures = {
            self._submit(
                "fusion", "fuse_region", planned["plan"], region, workers, planned["fingerprint"]
            ): region
            for region in planned["regions"]
        }
        for future in cf.as_completed(futures):
            try:
                future.result()
            except Exception as exc:  # finish_mosaic writes whatever a lost region left
                log.warning(
                    "region %s failed (%s); finish_mosaic will write it", futures[future], exc
                )
        summary = self._retrying(
            "finish_mosaic", planned["plan"], fuse_options.preview, workers, planned["fingerprint"]
        )
        return FusionResult.from_dict(summary)

    def _retrying(self, name: str, *args: Any, resume_key: bool = False) -> dict[str, Any]:
        attempts = 0
        while True:
            try:
                return self._submit("fusion", name, *args).result()
            except Exception as exc:
                attempts += engine_attempts(exc)
                if _engine_stopped(exc):
                    raise EndpointError(f"{name} failed: {_ENGINE_STOPPED}") from exc
                if attempts > self.max_retries or not is_transient(exc):
                    raise
                log.warning(
                    "%s failed (%s: %s); retrying with resume", name, type(exc).__name__, exc
                )
                _backoff(attempts)
                if resume_key:  # the job again, now finishing what the lost task wrote
                    job = args[0]
                    options = {**job["options"], "resume": True, "overwrite": False}
                    args = ({**job, "options": options}, *args[1:])

    # -- life cycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Shut down the executors this client made (not the ones it was given)."""
        self._executors.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = {
            r: self.endpoint_names.get(
                r,
                "local"
                if r not in self._executors.routes and self._executors.default is None
                else "given",
            )
            for r in ROLES
        }
        return f"Client({', '.join(f'{r}={w}' for r, w in where.items())})"
