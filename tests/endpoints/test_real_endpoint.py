"""The real ``globus-compute-endpoint`` process, started from each shipped template, fed tasks.

Everything below the Globus web service is real: RabbitMQ (tools/rabbitmq/rabbitmq.sh), the
user-endpoint process as its core endpoint starts it (``_start-user-endpoint`` with the
rendered template on stdin), its engine, interchange and worker processes, scopefx on the
workers. The service's part is :class:`gc_standin.ServiceStandIn` (queues, task packing,
start commands; no login, no registration API).

Each template is rendered as the core endpoint renders it, then only what ties it to its
site is replaced (see :func:`localize`): the provider runs one worker on this host, the
environment activation is this test's interpreter, and the data roots are this test's
folders. What the template says about the wire and about time (``allowed_serializers``,
``GC_TASK_TIMEOUT``, retries) is kept, and checked to be kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest

pytest.importorskip("globus_compute_endpoint")
pytest.importorskip("pika")

import yaml
from gc_standin import ServiceStandIn, StandInExecutor, UserEndpoint
from globus_compute_endpoint.endpoint.config.utils import (
    get_config,
    load_user_config_schema,
    load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.endpoint import Endpoint
from globus_compute_endpoint.endpoint.identity_mapper import MappedPosixIdentity
from globus_compute_sdk.sdk.batch import create_user_runtime
from globus_compute_sdk.serialize import (
    ComputeSerializer,
    DillCode,
    DillDataBase64,
    JSONData,
    PureSourceTextInspect,
)

import scopefx
from scopefx.remote import FUNCTION_NAMES, Client, Manifest
from scopefx.remote import functions as suite

pytestmark = [pytest.mark.endpoint, pytest.mark.slow]

ENDPOINTS = pathlib.Path(__file__).resolve().parents[2] / "endpoints"
SRC = pathlib.Path(scopefx.__file__).resolve().parents[1]
#: Each shipped template, with the user options it is rendered with.
TEMPLATES = {
    "edge-gpu": ("edge-gpu", {}),
    "hpc-slurm": ("hpc-slurm", {}),
    "pbs-polaris": ("pbs-polaris", {}),
    "facility-local": ("facility-multiuser", {}),
    "facility-slurm": ("facility-multiuser", {"provider": "slurm", "account": "mic-042"}),
}
#: Seconds to wait for one task's result (the first includes the worker pool's start).
RESULT_TIMEOUT_S = 180


# --- rendering, as the core endpoint renders --------------------------------------------


def render(folder: str, user_opts: dict[str, Any], tmp: pathlib.Path) -> str:
    """The user endpoint config the core endpoint would write on the child's stdin."""
    ep_dir = ENDPOINTS / folder
    parent = get_config(ep_dir) if folder != "facility-multiuser" else _facility_config(tmp)
    template_path = Endpoint.user_config_template_path(ep_dir, parent)
    return render_config_user_template(
        parent_config=parent,
        user_config_template=load_user_config_template(ep_dir / template_path.name),
        user_config_template_path=template_path,
        mapped_identity=MappedPosixIdentity(
            local_user_record=pwd.getpwuid(os.getuid()),
            matched_identity=uuid.UUID(int=0),
            globus_identity_candidates=[],
        ),
        user_config_schema=load_user_config_schema(ep_dir / "user_config_schema.json"),
        user_opts=user_opts,
        user_runtime=json.loads(json.dumps(asdict(create_user_runtime()))),
    )


def _facility_config(tmp: pathlib.Path) -> Any:
    """The facility config.yaml, pointed at a copy of its installed files."""
    import shutil

    installed = tmp / "opt-scopefx-endpoint"
    if not installed.exists():
        shutil.copytree(ENDPOINTS / "facility-multiuser", installed)
        config = installed / "config.yaml"
        config.write_text(config.read_text().replace("/opt/scopefx/endpoint", str(installed)))
    return get_config(installed)


def localize(rendered: str, *, data_root: pathlib.Path, out_root: pathlib.Path) -> str:
    """The rendered config with its site replaced by this host (see the module docs).

    Kept from the template: the engine type, ``allowed_serializers``, retries, idle limits,
    and every ``export`` of ``worker_init`` except the roots (``GC_TASK_TIMEOUT``
    included). Replaced: the provider (one local worker), the address (loopback), the
    accelerators (none here), the activation lines (the workers inherit this interpreter's
    environment), the data roots (this test's folders).
    """
    conf = yaml.safe_load(rendered)
    engine = conf["engine"]
    worker_init = engine["provider"].get("worker_init", "")
    lines = []
    for line in worker_init.splitlines():
        stripped = line.strip()
        if re.match(r"(source|module|conda)\b", stripped) or not stripped:
            continue  # the site's environment: here, the test's interpreter
        if stripped.startswith("export SCOPEFX_DATA_ROOTS="):
            stripped = f"export SCOPEFX_DATA_ROOTS={data_root}"
        elif stripped.startswith("export SCOPEFX_OUTPUT_ROOTS="):
            stripped = f"export SCOPEFX_OUTPUT_ROOTS={out_root}"
        elif stripped.startswith("export SCOPEFX_CLUSTER="):
            continue  # no dask cluster here: fusion runs in the worker
        lines.append(stripped)
    engine["provider"] = {
        "type": "LocalProvider",
        "init_blocks": 1,
        "min_blocks": 0,
        "max_blocks": 1,
        "worker_init": "\n".join(lines) + "\n",
    }
    engine["max_workers_per_node"] = 1
    engine["address"] = "127.0.0.1"
    engine.pop("available_accelerators", None)
    engine.pop("cpu_affinity", None)
    engine.pop("job_status_kwargs", None)
    return yaml.safe_dump(conf)


# --- the endpoint of one template, shared by the tests of that template ------------------


@pytest.fixture(scope="module")
def service(amqp_url: str) -> Iterator[ServiceStandIn]:
    standin = ServiceStandIn(amqp_url)
    yield standin
    standin.close()


@pytest.fixture(scope="module")
def manifest(service: ServiceStandIn) -> Manifest:
    """The suite registered as ``scopefx register`` registers it (the SDK's default code
    serializer), under ids the stand-in makes up."""
    ids = {name: service.register_function(getattr(suite, name)) for name in FUNCTION_NAMES}
    return Manifest(scopefx_version=scopefx.__version__, functions=ids, registered="test")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """A data root with 4 sections and a 2 x 2 mosaic, an output root, and a file outside."""
    from scopefx.samples import make_mosaic, write_defocus_series, write_mosaic

    base = tmp_path_factory.mktemp("site")
    data, out = base / "data", base / "out"
    write_defocus_series(data / "run1", [0.0, 0.2, 5.0, 0.0], size=128, seed=3)
    write_mosaic(data / "mosaic", make_mosaic(grid=(2, 2), tile_px=96, overlap=0.15, jitter_px=1))
    out.mkdir()
    (base / "outside").mkdir()
    (base / "outside" / "secret.tif").write_bytes((data / "run1" / "section_0000.tif").read_bytes())
    return {"base": base, "data": data, "out": out}


def start_endpoint(
    name: str,
    service: ServiceStandIn,
    manifest: Manifest,
    site: dict[str, pathlib.Path],
    tmp_path_factory: pytest.TempPathFactory,
    *,
    engine: dict[str, Any] | None = None,
) -> UserEndpoint:
    """The real user endpoint of template ``name`` (a key of TEMPLATES), localized; ``engine``
    adds engine options that the template leaves at Parsl's defaults (a test's own timing)."""
    folder, user_opts = TEMPLATES[name]
    tmp = tmp_path_factory.mktemp(f"ep-{name}")
    rendered = render(folder, user_opts, tmp)
    config = localize(rendered, data_root=site["data"], out_root=site["out"])
    if engine:
        conf = yaml.safe_load(config)
        overridden = sorted(engine.keys() & yaml.safe_load(rendered)["engine"].keys())
        assert not overridden, f"the template sets {overridden}: a test must not replace them"
        conf["engine"].update(engine)
        config = yaml.safe_dump(conf)
    home = tmp / "home"
    home.mkdir()
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
        "DASK_CONFIG": str(tmp / "dask"),
    }
    env.pop("SCOPEFX_DATA_ROOTS", None)
    ep = UserEndpoint(
        service,
        config=config,
        allowed_functions=list(manifest.functions.values()),
        gc_dir=home / ".globus_compute",
        name=f"scopefx-{name}",
        env=env,
    )
    ep.rendered = rendered  # type: ignore[attr-defined]
    ep.config = config  # type: ignore[attr-defined]
    return ep


@pytest.fixture(scope="module", params=list(TEMPLATES), ids=list(TEMPLATES))
def endpoint(
    request: pytest.FixtureRequest,
    service: ServiceStandIn,
    manifest: Manifest,
    site: dict[str, pathlib.Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[UserEndpoint]:
    ep = start_endpoint(request.param, service, manifest, site, tmp_path_factory)
    started = time.monotonic()
    try:
        yield ep
    finally:
        ep.stop()
        print(f"\n{request.param}: endpoint up {time.monotonic() - started:.1f} s")


def run_raw(ep: UserEndpoint, fid: str, args_buffer: str, kwargs_buffer: str | None = None) -> Any:
    """Send one task whose argument buffers are given as is (what a hostile client can
    put in a submission), and return its Result."""
    serde = ComputeSerializer()
    payload = serde.pack_buffers([args_buffer, kwargs_buffer or JSONData().serialize({})])
    batch = {"tasks": {fid: [payload]}}
    (tid,) = ep.service.submit(ep.endpoint_id, batch)
    try:
        return ep.service.results(ep.endpoint_id, [tid], RESULT_TIMEOUT_S)[tid]
    except TimeoutError:
        pytest.fail(f"no result from the endpoint; its logs:\n{ep.logs()}")


class _Plant:
    """Un-pickling this creates ``path`` (a folder): proof that code from an argument ran."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (self.path,))


# --- the tests --------------------------------------------------------------------------


def test_template_settings_reach_the_endpoint(endpoint: UserEndpoint) -> None:
    """What the test changed is only the site; the wire and the timeout are the template's."""
    shipped = yaml.safe_load(endpoint.rendered)["engine"]  # type: ignore[attr-defined]
    running = yaml.safe_load(endpoint.config)["engine"]  # type: ignore[attr-defined]
    assert (
        running["allowed_serializers"]
        == shipped["allowed_serializers"]
        == [
            "scopefx.remote.serializers.DillCode",
            "scopefx.remote.serializers.JSONData",
        ]
    )
    assert running["max_retries_on_system_failure"] == shipped["max_retries_on_system_failure"]
    worker_init = running["provider"]["worker_init"]
    assert re.search(r"^export GC_TASK_TIMEOUT=\d+$", worker_init, re.M)
    assert re.search(r"^export SCOPEFX_TASK_TIMEOUT_S=\d+$", worker_init, re.M)


def test_each_suite_function_runs(
    endpoint: UserEndpoint, manifest: Manifest, site: dict[str, pathlib.Path]
) -> None:
    """Through scopefx's own client: JSON arguments, by registered id, version checked."""
    executor = StandInExecutor(endpoint, timeout_s=RESULT_TIMEOUT_S)
    t0 = time.monotonic()
    with Client(executor, manifest=manifest, max_retries=0, progress=False) as client:
        try:
            info = client.info()
            assert info["scopefx"] == scopefx.__version__
            assert info["data_roots"] and str(site["data"]) in info["data_roots"][0]
            refs = [f"run1/section_{i:04d}.tif" for i in range(4)]
            records = client.score_focus(refs)
            assert [r.status for r in records] == ["ok"] * 4
            assert all(r.verdict and r.features for r in records)

            out = site["out"] / endpoint.endpoint_id
            whole = client.fuse("mosaic/tiles.csv", str(out / "whole.ome.zarr"))
            fanned = client.fuse("mosaic/tiles.csv", str(out / "fanned.ome.zarr"), regions=2)
        except Exception:
            print(endpoint.logs())
            raise
    assert whole.shape == fanned.shape
    assert (out / "whole.ome.zarr").is_dir() and (out / "fanned.ome.zarr").is_dir()
    assert executor.registered == []  # nothing uploaded: every call by its registered id
    print(f"suite through {endpoint.endpoint_id[:8]}: {time.monotonic() - t0:.1f} s")


def test_references_outside_the_roots_are_refused_per_item(
    endpoint: UserEndpoint, manifest: Manifest, site: dict[str, pathlib.Path]
) -> None:
    executor = StandInExecutor(endpoint, timeout_s=RESULT_TIMEOUT_S)
    secret = site["base"] / "outside" / "secret.tif"
    refs = ["run1/section_0000.tif", "../outside/secret.tif", str(secret), "run1/../../outside"]
    with Client(executor, manifest=manifest, max_retries=0, progress=False) as client:
        records = client.score_focus(refs, calibration=None)
    assert records[0].status == "ok"
    assert [r.status for r in records[1:]] == ["denied"] * 3, [r.error for r in records]


def test_outputs_land_under_the_output_root_and_never_on_a_data_root(
    endpoint: UserEndpoint, manifest: Manifest, site: dict[str, pathlib.Path]
) -> None:
    """The template's roots as the worker sees them: a relative output resolves under the
    output root; an output onto the data root is refused and the data are left as they were."""
    executor = StandInExecutor(endpoint, timeout_s=RESULT_TIMEOUT_S)
    relative = f"{endpoint.endpoint_id}-rel/m.ome.zarr"
    tiles = site["data"] / "mosaic" / "tiles.csv"
    before = sorted(p.name for p in (site["data"] / "mosaic").iterdir())
    with Client(executor, manifest=manifest, max_retries=0, progress=False) as client:
        info = client.info()
        summary = client.fuse("mosaic/tiles.csv", relative)
        with pytest.raises(Exception, match=r"data root \(read-only\)") as refused:
            client.fuse("mosaic/tiles.csv", str(site["data"] / "mosaic"), overwrite=True)
    assert info["output_roots"] == [str(site["out"])]
    assert summary.shape
    assert (site["out"] / relative / "0").is_dir()  # level 0 of the mosaic, under the root
    assert not (site["data"] / relative.split("/")[0]).exists()
    assert sorted(p.name for p in (site["data"] / "mosaic").iterdir()) == before
    assert tiles.is_file()
    print(f"refused: {refused.value}")


def test_an_unlisted_function_is_refused(endpoint: UserEndpoint, tmp_path: pathlib.Path) -> None:
    import shutil

    victim = tmp_path / "victim"
    victim.mkdir()
    fid = endpoint.service.register_function(shutil.rmtree)
    result = run_raw(endpoint, fid, JSONData().serialize([str(victim)]))
    assert result.is_error
    assert result.error_details.code == "FUNCTION_NOT_ALLOWED"
    assert victim.is_dir()


def _pickled(plant: _Plant, name: str) -> tuple[str, str | None]:
    """(args buffer, kwargs buffer) of one attack on function ``name``."""
    return {
        "score_focus": (DillDataBase64().serialize([["run1/section_0000.tif"], plant]), None),
        "fuse_mosaic": (DillDataBase64().serialize([{"tiles": plant, "output": "x"}]), None),
        "endpoint_info": (DillDataBase64().serialize([plant]), None),
        "plan_mosaic": (JSONData().serialize([]), DillDataBase64().serialize({"job": plant})),
    }[name]


@pytest.mark.parametrize("name", ["score_focus", "fuse_mosaic", "endpoint_info", "plan_mosaic"])
def test_a_pickled_argument_is_refused_before_it_runs(
    endpoint: UserEndpoint, manifest: Manifest, tmp_path: pathlib.Path, name: str
) -> None:
    marker = tmp_path / f"pwned-{name}"
    args_buffer, kwargs_buffer = _pickled(_Plant(marker), name)
    result = run_raw(endpoint, manifest.functions[name], args_buffer, kwargs_buffer)
    assert result.is_error
    assert "DillDataBase64" in result.data and "Allowed serializers" in result.data
    assert not marker.exists()


def test_source_code_as_an_argument_is_refused(
    endpoint: UserEndpoint, manifest: Manifest, tmp_path: pathlib.Path
) -> None:
    """A code serializer the template does not allow, in an argument's place."""
    marker = tmp_path / "pwned-source"
    source = f"import os\nos.mkdir({str(marker)!r})\ndef f():\n    pass\n"
    buffer = PureSourceTextInspect.identifier + "f" + PureSourceTextInspect._separator + source
    result = run_raw(endpoint, manifest.functions["endpoint_info"], buffer)
    assert result.is_error and "PureSourceTextInspect" in result.data
    assert not marker.exists()


@pytest.mark.parametrize("place", ["args", "kwargs"])
def test_a_pickle_tagged_as_code_in_an_argument_is_refused(
    endpoint: UserEndpoint, manifest: Manifest, tmp_path: pathlib.Path, place: str
) -> None:
    """globus-compute-endpoint 4.x deserializes each buffer with whichever allowed strategy
    its header names; DillCode, allowed for the function, un-pickles. The templates' names
    for their serializers (scopefx.remote.serializers) make the endpoint refuse a task
    whose argument buffers are not data, before anything is deserialized."""
    marker = tmp_path / f"pwned-code-tag-{place}"
    pickle = DillCode().serialize([_Plant(marker)])
    buffers = (pickle, None) if place == "args" else (JSONData().serialize([]), pickle)
    result = run_raw(endpoint, manifest.functions["endpoint_info"], *buffers)
    assert result.is_error
    assert "task refused before deserializing" in result.data, result.data
    assert f"{place}: DillCode (code)" in result.data
    assert not marker.exists()


def test_without_a_manifest_the_client_points_at_scopefx_register(
    endpoint: UserEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """Submitting by value registers a fresh function, which allowed_functions refuses: the
    error says what to do, once, instead of retrying."""
    from scopefx.errors import EndpointError

    executor = StandInExecutor(endpoint, timeout_s=RESULT_TIMEOUT_S)
    with (
        Client(executor, manifest=None, max_retries=2, progress=False) as client,
        pytest.raises(EndpointError, match=r"not permitted.*run `scopefx register` once"),
    ):
        client.info()
    assert len(executor.registered) == 1  # one try, not one per retry
    assert "Run `scopefx register` once" in caplog.text


#: Templates whose worker pool runs on the endpoint host (LocalProvider): they set
#: ``block_error_handler: false``, so a lost pool is replaced. The batch templates keep
#: Parsl's default (docs/security.md: a job failing at start would be resubmitted forever).
LOCAL_POOL = ["edge-gpu", "facility-local"]
#: The interchange counts a silent worker pool lost after ``heartbeat_threshold`` s (Parsl's
#: default: 120, which the templates keep) and only then runs its tasks again elsewhere; the
#: lost-pool test waits for that, so it shortens it (heartbeats every 2 s, as EngineExecutor).
FAST_HEARTBEAT = {"heartbeat_period": 2, "heartbeat_threshold": 15}


def _pool_processes(ep: UserEndpoint) -> list[Any]:
    """The endpoint's worker pool (process_worker_pool) and every process under it."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "process_worker_pool" in cmd and str(ep.ep_dir) in cmd:
            with contextlib.suppress(psutil.Error):
                procs.extend([proc, *proc.children(recursive=True)])
    return procs


@pytest.mark.parametrize("name", LOCAL_POOL)
def test_a_lost_worker_pool_is_replaced_and_later_tasks_run(
    name: str,
    service: ServiceStandIn,
    manifest: Manifest,
    site: dict[str, pathlib.Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Every process of the worker pool killed (what the OOM killer or a GPU reset does):
    with the template's ``block_error_handler: false`` the engine starts a new block and
    later tasks run; with Parsl's default they failed with ``BadStateException`` until the
    endpoint was restarted."""
    import psutil

    ep = start_endpoint(name, service, manifest, site, tmp_path_factory, engine=FAST_HEARTBEAT)
    shipped = yaml.safe_load(ep.rendered)["engine"]  # type: ignore[attr-defined]
    running = yaml.safe_load(ep.config)["engine"]  # type: ignore[attr-defined]
    assert shipped["block_error_handler"] is running["block_error_handler"] is False
    # the interchange notices the silent pool after FAST_HEARTBEAT's threshold, then the
    # engine runs the task again on the new pool
    executor = StandInExecutor(ep, timeout_s=RESULT_TIMEOUT_S + 60)
    refs = [f"run1/section_{i:04d}.tif" for i in range(4)]
    try:
        with Client(executor, manifest=manifest, max_retries=0, progress=False) as client:
            assert [r.status for r in client.score_focus(refs)] == ["ok"] * 4  # pool up
            killed = _pool_processes(ep)
            for proc in killed:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            t0 = time.monotonic()
            later = client.score_focus(refs)
            print(f"\n{name}: later tasks answered {time.monotonic() - t0:.0f} s after the kill")
        replaced = {p.pid for p in _pool_processes(ep)}
    except Exception:
        print(ep.logs())
        raise
    finally:
        ep.stop()
    assert len(killed) >= 2, killed  # the pool and its worker at least
    assert [r.status for r in later] == ["ok"] * 4, [r.error for r in later]
    assert replaced and not replaced & {p.pid for p in killed}  # a new pool ran them
