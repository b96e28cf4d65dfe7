"""The thin client over the embedded local default and over any Executor; the Globus
Compute Executor path up to the HTTP request it sends."""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import threading
import uuid

import pytest

import scopefx
from conftest import DEFOCUS
from scopefx import Client
from scopefx.errors import ConfigError, EndpointError
from scopefx.remote import FUNCTION_NAMES, ClientConfig, Manifest, functions
from scopefx.remote.client import PAYLOAD_LIMIT_BYTES, is_transient


@pytest.fixture
def in_root(data_root, monkeypatch):
    monkeypatch.chdir(data_root)
    return data_root


def test_local_default_scores_in_order_with_verdicts(in_root, section_refs):
    refs = [*section_refs, "run1/corrupt.tif", "run1/missing.tif"]
    with Client(progress=False) as client:
        records = client.score_focus(refs)
        assert client.is_local("focus") and client.is_local("fusion")
    assert [r.path for r in records] == refs
    assert [r.status for r in records[-2:]] == ["corrupt", "missing"]
    flagged = [i for i, r in enumerate(records) if r.verdict == "out_of_focus"]
    assert flagged == [i for i, d in enumerate(DEFOCUS) if d > 1]


def test_iter_focus_streams_in_input_order(in_root, section_refs):
    seen = []
    with Client(batch_size=2, progress=False) as client:
        for record in client.iter_focus(section_refs, on_record=lambda r: seen.append(r.path)):
            assert record.path == section_refs[len(seen) - 1]  # yielded as it came back
    assert seen == section_refs


def test_given_executor_is_used_and_not_shut_down(in_root, section_refs):
    pool = cf.ThreadPoolExecutor(2)
    calls = []
    original = pool.submit

    def spy(fn, *args, **kwargs):
        calls.append(fn.__name__)
        return original(fn, *args, **kwargs)

    pool.submit = spy  # type: ignore[method-assign]
    with Client(pool, batch_size=5, progress=False) as client:
        records = client.score_focus(section_refs)
    assert calls == ["endpoint_info", "score_focus", "score_focus", "score_focus"]
    assert len(records) == len(section_refs)
    assert pool.submit(sum, [1, 2]).result() == 3  # still open: the client did not own it
    pool.shutdown()


def test_version_mismatch_is_refused(in_root, monkeypatch):
    from scopefx.remote import _tasks

    monkeypatch.setattr(_tasks, "__version__", "9.9.0")
    with (
        cf.ThreadPoolExecutor(1) as pool,
        Client(pool, progress=False) as client,
        pytest.raises(EndpointError, match=r"runs scopefx 9\.9\.0, this client is .*major\.minor"),
    ):
        client.score_focus(["run1/section_0000.tif"])
    monkeypatch.setattr(_tasks, "__version__", scopefx.__version__.rsplit(".", 1)[0] + ".99")
    with cf.ThreadPoolExecutor(1) as pool, Client(pool, progress=False) as client:
        assert client.score_focus(["run1/section_0000.tif"])[0].ok  # patch level may differ


class FlakyExecutor(cf.ThreadPoolExecutor):
    """A pool whose first ``failures`` score tasks die as a lost worker would."""

    def __init__(self, failures: int) -> None:
        super().__init__(2)
        self.failures = failures
        self.lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):
        with self.lock:
            fail = fn.__name__ == "score_focus" and self.failures > 0
            self.failures -= fail
        if fail:
            future: cf.Future = cf.Future()
            future.set_exception(ConnectionResetError("worker lost (ManagerLost)"))
            return future
        return super().submit(fn, *args, **kwargs)


def test_transient_failures_are_retried(in_root, section_refs, caplog):
    caplog.set_level(logging.WARNING)
    with FlakyExecutor(2) as pool, Client(pool, batch_size=4, max_retries=2, progress=False) as c:
        records = c.score_focus(section_refs)
    assert [r.status for r in records] == ["ok"] * len(section_refs)
    # lost workers: each failed batch of 4 was sent again as two halves, or retried
    assert sum("retry" in r.message or "two tasks" in r.message for r in caplog.records) == 2


def test_retries_are_bounded_and_other_batches_survive(in_root, section_refs, monkeypatch):
    from scopefx.remote import _failures as failures_module

    monkeypatch.setattr(failures_module, "_sleep", lambda s: None)
    with FlakyExecutor(3) as pool, Client(pool, batch_size=1, max_retries=1, progress=False) as c:
        records = c.score_focus(section_refs[:2])
    # three failures over two single-reference tasks with one retry each: one failed twice
    # and is reported; the other's retry succeeded
    assert sorted(r.status for r in records) == ["failed", "ok"]
    records = [r for r in records if r.status == "failed"]
    assert "after 2 attempt(s)" in records[0].error and "ManagerLost" in records[0].error


def test_a_failed_batch_is_split_and_its_halves_recover(in_root, section_refs, monkeypatch):
    """A whole task lost (not a scopefx error) costs no reference of a multi-item batch: it is
    sent again as two halves, and every reference gets its result."""
    from scopefx.remote import _failures as failures_module

    monkeypatch.setattr(failures_module, "_sleep", lambda s: None)
    with FlakyExecutor(3) as pool, Client(pool, batch_size=6, max_retries=0, progress=False) as c:
        records = c.score_focus(section_refs)
    assert [r.status for r in records] == ["ok"] * len(section_refs)


class ForgetfulExecutor(cf.ThreadPoolExecutor):
    """A pool that never answers the score tasks holding ``forget`` (as an endpoint whose
    worker died right after finishing one loses its result), ``times`` times in all."""

    def __init__(self, forget: str, times: int) -> None:
        super().__init__(2)
        self.forget, self.times, self.sent = forget, times, []

    def submit(self, fn, /, *args, **kwargs):
        if fn.__name__ == "score_focus":
            self.sent.append(list(args[0]))
            if self.forget in args[0] and self.times > 0:
                self.times -= 1
                return cf.Future()  # never answered
            # the others answered at once: only the forgotten task can outlast lost_after_s,
            # however slow the machine (scored in the pool, a slow batch counted lost too)
            future: cf.Future = cf.Future()
            future.set_result(fn(*args, **kwargs))
            return future
        return super().submit(fn, *args, **kwargs)


def test_a_task_never_answered_is_sent_again_without_a_hang(in_root, section_refs, caplog):
    """A task with no answer while no other task is answered either counts lost after
    ``lost_after_s``: sent again as two halves, then alone, and every reference is scored,
    without charging the attempts its references carry."""
    caplog.set_level(logging.WARNING, logger="scopefx.remote.client")
    forget = section_refs[5]
    with (
        ForgetfulExecutor(forget, times=2) as pool,
        Client(pool, batch_size=6, max_retries=1, lost_after_s=0.5, progress=False) as client,
    ):
        records = client.score_focus(section_refs)
    assert [r.path for r in records] == section_refs
    assert [r.status for r in records] == ["ok"] * len(section_refs)
    # 6 (lost) -> 3 (lost) -> 2: split like a lost worker, though max_retries is 1
    assert [b for b in pool.sent if forget in b] == [section_refs[i:6] for i in (0, 3, 4)]
    assert sum("not answered" in r.message for r in caplog.records) == 2


def test_a_reference_never_answered_fails_alone_with_a_clear_error(in_root, section_refs):
    forget = section_refs[2]
    with (
        ForgetfulExecutor(forget, times=99) as pool,
        Client(pool, batch_size=1, max_retries=2, lost_after_s=0.2, progress=False) as client,
    ):
        records = client.score_focus(section_refs[:4])
    assert [r.status for r in records] == ["ok", "ok", "failed", "ok"]
    assert records[2].error.startswith(f"{forget!r} not scored: its task was not answered")
    assert "3 times" in records[2].error and "SCOPEFX_LOST_AFTER_S" in records[2].error
    assert pool.sent.count([forget]) == 3  # sent, then again max_retries times


@pytest.mark.parametrize("value", [0, -1, "soon", float("nan")])
def test_a_bad_lost_after_is_refused(value, monkeypatch):
    with pytest.raises(ConfigError, match="lost_after_s must be a number of seconds > 0"):
        Client(lost_after_s=value)
    monkeypatch.setenv("SCOPEFX_LOST_AFTER_S", str(value))
    with (
        pytest.raises(ConfigError, match="SCOPEFX_LOST_AFTER_S must be"),
        Client(cf.ThreadPoolExecutor(1), check_version=False, progress=False) as client,
    ):
        client.score_focus(["run1/section_0000.tif"])


def test_where_the_lost_after_limit_comes_from(monkeypatch):
    import math

    from scopefx.remote._failures import lost_after

    class Hinted(cf.ThreadPoolExecutor):
        lost_after_s = 90.0

    assert lost_after(None, cf.ThreadPoolExecutor(1)) == math.inf  # remote: never, by default
    assert lost_after(None, Hinted(1)) == 90.0
    assert lost_after(5, Hinted(1)) == 5.0
    monkeypatch.setenv("SCOPEFX_LOST_AFTER_S", "30")
    assert lost_after(None, Hinted(1)) == 30.0 and lost_after(5, Hinted(1)) == 5.0
    monkeypatch.setenv("SCOPEFX_LOST_AFTER_S", "inf")
    assert lost_after(None, Hinted(1)) == math.inf


def test_scopefx_errors_are_not_retried():
    assert not is_transient(ConfigError("bad"))
    assert not is_transient(RuntimeError("Traceback ... scopefx.errors.ConfigError: unknown"))
    assert is_transient(RuntimeError("parsl WorkerLost: worker 3 died"))


def test_batch_size_is_auto_and_bounded(in_root):
    with Client(progress=False) as client:
        assert client._batch_size(["a.tif"] * 10_000, "focus") == 64
        assert client._batch_size(["a.tif"] * 8, "focus") == 1  # spread over the workers
        long = ["/" + "x" * 200_000 + ".tif"] * 500  # absurdly long references
        size = client._batch_size(long, "focus")
        assert size * 200_000 < PAYLOAD_LIMIT_BYTES / 5
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1"):
        Client(batch_size=0)


def test_a_batch_size_over_the_payload_budget_is_lowered_with_a_warning(caplog):
    with (
        Client(batch_size=1000, progress=False) as client,
        caplog.at_level(logging.WARNING, logger="scopefx.remote.client"),
    ):
        assert client._batch_size(["a.tif"] * 2000, "focus") == 256
        client._batch_size(["a.tif"] * 2000, "focus")
    assert caplog.text.count("batch_size 1000 lowered to 256") == 1


def test_fuse_through_the_local_default(in_root):
    params = scopefx.FusionParams(chunk_px=64)
    with Client(progress=False) as client:
        one = client.fuse("mosaic/tiles.csv", "out/client.ome.zarr", params=params)
        fan = client.fuse("mosaic/tiles.csv", "out/client_fan.ome.zarr", params=params, regions=3)
        with pytest.raises(ConfigError, match="params must be a FusionParams"):
            client.fuse("mosaic/tiles.csv", "out/x.ome.zarr", params={"chunk_px": 64})
    assert isinstance(one, scopefx.FusionResult) and isinstance(fan, scopefx.FusionResult)
    assert one.shape == fan.shape and one.n_tiles == fan.n_tiles == 9
    assert fan.chunks_written > 0 and one.extra["output"] == "out/client.ome.zarr"


def test_fuse_resumes_after_a_lost_task(in_root, caplog):
    class LosesFirstFuse(cf.ThreadPoolExecutor):
        lost = False

        def submit(self, fn, /, *args, **kwargs):
            if fn.__name__ == "fuse_mosaic" and not self.lost:
                self.lost = True
                # the task ran part-way (the store exists) and then its worker was lost
                functions.plan_mosaic(args[0])
                future: cf.Future = cf.Future()
                future.set_exception(ConnectionResetError("WorkerLost"))
                return future
            return super().submit(fn, *args, **kwargs)

    caplog.set_level(logging.WARNING)
    with LosesFirstFuse(1) as pool, Client(pool, progress=False) as client:
        summary = client.fuse("mosaic/tiles.csv", "out/client_lost.ome.zarr")
    assert summary.chunks_written > 0
    assert any("retrying with resume" in r.message for r in caplog.records)


def test_fan_out_fuse_refuses_a_store_replaced_after_planning(in_root):
    """Client.fuse hands the plan's fingerprint to every region and to the finish: a store
    replaced by another job after planning is refused, not completed as the other mosaic."""

    class ReplacedAfterPlanning(cf.ThreadPoolExecutor):
        replaced = False

        def submit(self, fn, /, *args, **kwargs):
            if fn.__name__ == "fuse_region" and not self.replaced:
                self.replaced = True  # another job takes the output over meanwhile
                job = {"tiles": "mosaic/tiles.csv", "output": args[0],
                       "params": {"chunk_px": 32}, "options": {"overwrite": True}}  # fmt: skip
                functions.plan_mosaic(job, 2)
            return super().submit(fn, *args, **kwargs)

    params = scopefx.FusionParams(chunk_px=64)
    with (
        ReplacedAfterPlanning(1) as pool,
        Client(pool, progress=False) as client,
        pytest.raises(ConfigError, match="no longer the mosaic that was planned"),
    ):
        client.fuse("mosaic/tiles.csv", "out/client_swap.ome.zarr", params=params, regions=2)


# --------------------------------------------------------------------------------------------
# configuration and routing


def _write_config(tmp_path, text: str):
    path = tmp_path / "endpoints.toml"
    path.write_text(text)
    return path


def make_pool() -> cf.Executor:
    """A factory named in the test configurations."""
    return cf.ThreadPoolExecutor(2)


def test_from_config_routes_roles(tmp_path, in_root, section_refs):
    config = _write_config(
        tmp_path,
        """
        batch_size = 3
        [endpoints.edge]
        factory = "test_client:make_pool"
        roles = ["focus"]
        """,
    )
    with Client.from_config(config, progress=False) as client:
        assert client.batch_size == 3
        assert not client.is_local("focus") and client.is_local("fusion")
        assert client.endpoint_names == {"focus": "edge"}
        assert len(client.score_focus(section_refs[:4])) == 4
    with Client.from_config(config, endpoint="local", progress=False) as client:
        assert client.is_local("focus")
    with Client.from_config(config, endpoint="edge", progress=False) as client:
        assert not client.is_local("fusion") and client.endpoint_names["fusion"] == "edge"
        assert client.executor_for("focus") is client.executor_for("fusion")  # one per endpoint


def test_no_config_file_means_everything_local(tmp_path, monkeypatch):
    monkeypatch.setenv("SCOPEFX_CONFIG", str(tmp_path / "absent.toml"))
    assert ClientConfig.load().endpoints == {}
    with Client.from_config(progress=False) as client:
        assert client.is_local("focus") and client.is_local("fusion")


_ID_A = "6f1c2b9e-0d4a-4c59-9d7e-2a1b3c4d5e6f"
_ID_B = "0b7e3f2a-9c8d-4e1f-8a2b-3c4d5e6f7a8b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[endpoints.a]\nroles = ['focus']\n", "needs exactly one of 'id'"),
        ("[endpoints.a]\nid = 'nope'\n", "id must be a UUID"),
        (f"[endpoints.a]\nid = '{_ID_A}'\nroles = ['gpu']\n", "unknown role"),
        (f"[endpoints.a]\nid = '{_ID_A}'\nendpoint = 'x'\n", "unknown key"),
        (
            f"[endpoints.a]\nid = '{_ID_A}'\nroles = ['focus']\n"
            f"[endpoints.b]\nid = '{_ID_B}'\nroles = ['focus']\n",
            "given to both",
        ),
        ("batch_size = 0\n", "batch_size must be"),
        ("this is = not toml", "cannot read endpoint configuration"),
    ],
)
def test_bad_configs_are_refused(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        ClientConfig.load(_write_config(tmp_path, text))


def test_unknown_endpoint_name(tmp_path):
    config = _write_config(tmp_path, f"[endpoints.edge]\nid = '{uuid.uuid4()}'\n")
    with pytest.raises(ConfigError, match=r"no endpoint named 'hpc' .*configured: \['edge'\]"):
        Client.from_config(config, endpoint="hpc")


# --------------------------------------------------------------------------------------------
# the Globus Compute Executor, up to the request it sends (the service is unreachable here)


@pytest.fixture
def compute_service(tmp_path, monkeypatch):
    """A real globus_compute_sdk Client and Executor whose HTTP requests are recorded and
    answered 400 (the web service cannot be reached from here)."""
    pytest.importorskip("globus_compute_sdk")
    responses = pytest.importorskip("responses")
    import globus_sdk
    from globus_compute_sdk import Client as ComputeClient
    from globus_compute_sdk import Executor

    monkeypatch.setenv("HOME", str(tmp_path))
    gcc = ComputeClient(do_version_check=False, authorizer=globus_sdk.NullAuthorizer())
    base = gcc._compute_web_client.v3.base_url.rstrip("/")
    endpoint_id = str(uuid.uuid4())
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        refusal = {"code": "TEST", "message": "the web service is not reachable in tests"}
        mock.add(
            responses.POST, f"{base}/v3/endpoints/{endpoint_id}/submit", status=400, json=refusal
        )
        mock.add(responses.POST, f"{base}/v3/functions", json={"function_uuid": str(uuid.uuid4())})
        executor = Executor(endpoint_id=endpoint_id, client=gcc)
        try:
            yield executor, mock, endpoint_id
        finally:
            executor.shutdown(wait=True, cancel_futures=True)


def _sent_tasks(mock) -> list[tuple[str, tuple, dict]]:
    """(function_uuid, args, kwargs) of every task in the submit requests, deserialized."""
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData

    serde = ComputeSerializer()
    out = []
    for call in mock.calls:
        if not call.request.url.endswith("/submit"):
            continue
        body = json.loads(call.request.body)
        for fid, payloads in body["tasks"].items():
            for payload in payloads:
                assert len(payload) < PAYLOAD_LIMIT_BYTES / 10
                buffers = serde.unpack_buffers(payload)
                # JSON data only: endpoints that allow only JSONData would refuse pickles
                assert [b[:3] for b in buffers] == [JSONData.identifier] * 2
                args, kwargs = (serde.deserialize(b) for b in buffers)
                out.append((fid, args, kwargs))
    return out


def test_globus_executor_submits_registered_functions_by_uuid(compute_service, section_refs):
    executor, mock, _ = compute_service
    manifest = Manifest(
        scopefx_version=scopefx.__version__,
        functions={name: str(uuid.uuid4()) for name in FUNCTION_NAMES},
    )
    client = Client(executor, manifest=manifest, batch_size=5, max_retries=0, check_version=False,
                    progress=False)  # fmt: skip
    records = client.score_focus(section_refs, n_scales=6)
    # the service refused: every item is reported, none lost
    assert [r.status for r in records] == ["failed"] * len(section_refs)
    assert "not reachable in tests" in records[0].error
    sent = _sent_tasks(mock)
    assert [fid for fid, _, _ in sent] == [manifest.functions["score_focus"]] * 3
    batches = [args[0] for _, args, _ in sent]
    assert sorted(batches) == sorted([section_refs[0:5], section_refs[5:10], section_refs[10:]])
    assert all(args[1]["n_scales"] == 6 for _, args, _ in sent)  # FocusParams as a dict
    assert not any(c.request.url.endswith("/v3/functions") for c in mock.calls)  # no upload


def test_globus_executor_without_manifest_registers_the_function(compute_service, tmp_path):
    from globus_compute_sdk.serialize import ComputeSerializer

    executor, mock, _ = compute_service
    client = Client(executor, manifest=None, max_retries=0, progress=False)
    with pytest.raises(EndpointError, match="did not answer endpoint_info"):
        client.score_focus(["run1/section_0000.tif"])
    (registration,) = [c for c in mock.calls if c.request.url.endswith("/v3/functions")]
    body = json.loads(registration.request.body)
    assert body["function_name"] == "endpoint_info"
    serde = ComputeSerializer()
    (code,) = serde.unpack_buffers(body["function_code"])
    assert serde.deserialize(code)()["functions"] == list(FUNCTION_NAMES)
    ((_, args, kwargs),) = _sent_tasks(mock)
    assert args == [] and kwargs == {}  # JSON has no tuples


def test_the_first_answer_of_a_batch_endpoint_is_waited_for(monkeypatch, caplog):
    """A SLURM/PBS endpoint queues a job for its first task: no fixed limit, a notice while
    waiting, and a limit only where SCOPEFX_INFO_TIMEOUT sets one."""
    import concurrent.futures as cf
    import threading

    from scopefx.remote import _failures as failures_module

    monkeypatch.setattr(failures_module, "_INFO_NOTICE_S", 0.05)
    monkeypatch.delenv("SCOPEFX_INFO_TIMEOUT", raising=False)
    future: cf.Future = cf.Future()
    answered = threading.Event()

    def answer_after_notices() -> None:
        while "waiting" not in caplog.text:
            threading.Event().wait(0.01)
        future.set_result({"scopefx": scopefx.__version__})
        answered.set()

    threading.Thread(target=answer_after_notices, daemon=True).start()
    assert failures_module._wait_for_info(future, "hpc") == {"scopefx": scopefx.__version__}
    assert "'hpc'" in caplog.text and "queue" in caplog.text

    monkeypatch.setenv("SCOPEFX_INFO_TIMEOUT", "0.1")
    with pytest.raises(TimeoutError, match=r"SCOPEFX_INFO_TIMEOUT=0\.1 s; a batch endpoint"):
        failures_module._wait_for_info(cf.Future(), "hpc")

    # a task that itself failed with TimeoutError is an answer, not a reason to wait on
    monkeypatch.delenv("SCOPEFX_INFO_TIMEOUT")
    failed: cf.Future = cf.Future()
    failed.set_exception(TimeoutError("no result from the endpoint"))
    with pytest.raises(TimeoutError, match="no result from the endpoint"):
        failures_module._wait_for_info(failed, "hpc")


class _FailingExecutor(cf.Executor):
    """Every task fails as an endpoint reports a lost worker: with the engine's own retries
    (one traceback per attempt, as GlobusComputeEngine formats them) or without."""

    def __init__(self, engine_attempts: int) -> None:
        from globus_compute_endpoint.engines.base import _EXC_HISTORY_TMPL, _EXC_NO_HISTORY_TMPL

        lost = "parsl.executors.high_throughput.errors.WorkerLost: Task failure due to loss"
        if engine_attempts == 1:
            self.text = _EXC_NO_HISTORY_TMPL.format(exc=lost)
        else:
            ndx = [*range(engine_attempts - 1), "final attempt"]
            self.text = "\n".join(_EXC_HISTORY_TMPL.format(ndx=i, exc=lost) for i in ndx)
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        self.submitted += 1
        future: cf.Future = cf.Future()
        future.set_exception(RuntimeError(self.text))
        return future


@pytest.mark.parametrize(("engine_attempts", "client_sends"), [(1, 3), (3, 1), (2, 2)])
def test_retries_are_counted_once_across_engine_and_client(
    engine_attempts, client_sends, monkeypatch
):
    """max_retries=2: a task runs at most 3 times in all. An endpoint whose engine already
    ran it 3 times (the templates' max_retries_on_system_failure: 2) is not sent it again."""
    pytest.importorskip("globus_compute_endpoint")
    from scopefx.remote import _failures as failures_module

    monkeypatch.setattr(failures_module, "_sleep", lambda s: None)
    executor = _FailingExecutor(engine_attempts)
    client = Client(executor, max_retries=2, check_version=False, progress=False, manifest=None)
    (record,) = client.score_focus(["run1/section_0000.tif"])
    assert record.status == "failed"
    assert executor.submitted == client_sends
    assert f"after {engine_attempts * client_sends} attempt(s)" in record.error


def test_retries_back_off(monkeypatch):
    pytest.importorskip("globus_compute_endpoint")
    from scopefx.remote import _failures as failures_module

    waits: list[float] = []
    monkeypatch.setattr(failures_module, "_sleep", waits.append)
    client = Client(_FailingExecutor(1), max_retries=3, check_version=False, progress=False,
                    manifest=None)  # fmt: skip
    client.score_focus(["run1/section_0000.tif"])
    assert waits == [1.0, 2.0, 4.0]


# --------------------------------------------------------------------------------------------
# review 43: configuration defaults, references as typed, the info limit, a partial manifest


class _Spy(cf.ThreadPoolExecutor):
    """A thread pool standing in for an endpoint that records what each task was sent."""

    def __init__(self) -> None:
        super().__init__(2)
        self.sent: list[tuple[str, tuple]] = []

    def submit(self, fn, /, *args, **kwargs):
        self.sent.append((fn.__name__, args))
        return super().submit(fn, *args, **kwargs)


def test_from_config_takes_a_none_argument_from_the_file(tmp_path, in_root):
    """The CLI passes batch_size=None when --batch-size is not given: the file's value holds."""
    manifest = Manifest(scopefx.__version__, {n: str(uuid.uuid4()) for n in FUNCTION_NAMES})
    path = manifest.save(tmp_path / "functions.json")
    config = _write_config(tmp_path, f'batch_size = 3\nmax_retries = 5\nmanifest = "{path}"\n')
    kwargs = {"batch_size": None, "max_retries": None, "manifest": None}
    with Client.from_config(config, progress=False, **kwargs) as client:
        assert (client.batch_size, client.max_retries) == (3, 5)
        assert client.manifest == manifest
    with Client.from_config(config, progress=False, batch_size=7, max_retries=0) as client:
        assert (client.batch_size, client.max_retries) == (7, 0)  # given: they win


def test_a_folder_or_glob_string_is_sent_relative_as_typed(tmp_path, data_root, confined,
                                                           monkeypatch):  # fmt: skip
    """The share is mounted at another path here than on the endpoint (confined to its data
    roots): a relative folder's images go as relative references, as a file given relative
    does, and are scored there."""
    import shutil

    mirror = tmp_path / "mirror"
    shutil.copytree(data_root / "run1", mirror / "run1")
    monkeypatch.chdir(mirror)
    expected = ["run1/corrupt.tif", *(f"run1/section_{i:04d}.tif" for i in range(len(DEFOCUS)))]
    for given, refs in [("run1", expected), ("run1/section_000[0-2].tif", expected[1:4])]:
        with _Spy() as pool, Client(pool, batch_size=64, progress=False) as client:
            records = client.score_focus(given)
        assert [args[0] for name, args in pool.sent if name == "score_focus"] == [refs]
        assert [r.path for r in records] == refs
        assert [r.status for r in records] == ["corrupt" if "corrupt" in r else "ok" for r in refs]
    with _Spy() as pool, Client(pool, progress=False) as client:  # absolute stays absolute
        records = client.score_focus(str(mirror / "run1"))
    assert records[1].path == str(mirror / "run1" / "section_0000.tif")
    assert records[1].status == "denied"  # outside the endpoint's roots, as given


@pytest.mark.parametrize("value", ["5m", "0", "-1", "nan"])
def test_a_bad_info_timeout_is_refused_before_anything_is_sent(value, in_root, monkeypatch):
    monkeypatch.setenv("SCOPEFX_INFO_TIMEOUT", value)
    with (
        _Spy() as pool,
        Client(pool, progress=False) as client,
        pytest.raises(
            ConfigError, match=rf"SCOPEFX_INFO_TIMEOUT must be a number of seconds > 0.*'{value}'"
        ),
    ):
        client.score_focus(["run1/section_0000.tif"])
    assert pool.sent == []
    monkeypatch.setenv("SCOPEFX_INFO_TIMEOUT", "30")
    with _Spy() as pool, Client(pool, progress=False) as client:
        assert client.score_focus(["run1/section_0000.tif"])[0].ok


class _Registry(_Spy):
    """A stand-in for a Globus Compute executor: runs registered functions by UUID."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__()
        self.by_id = {fid: getattr(functions, name) for name, fid in manifest.functions.items()}

    def submit_to_registered_function(self, fid, args=(), kwargs=None):
        return self.submit(self.by_id[fid], *args)


def test_a_manifest_lacking_a_function_says_which(in_root, caplog):
    names = [n for n in FUNCTION_NAMES if n != "endpoint_info"]
    manifest = Manifest(scopefx.__version__, {n: str(uuid.uuid4()) for n in names})
    with (
        _Registry(manifest) as pool,
        Client(pool, manifest=manifest, progress=False) as client,
        caplog.at_level(logging.WARNING, logger="scopefx.remote.client"),
    ):
        assert client.score_focus(["run1/section_0000.tif"])[0].ok
    assert "has no endpoint_info" in caplog.text
    assert "no function manifest" not in caplog.text  # there is one
