"""The endpoint configurations in ``endpoints/`` load with globus-compute-endpoint's own code.

globus-compute-endpoint 4.x starts every endpoint from a ``config.yaml`` without an engine
(a ``CoreEndpointConfig``); when work arrives it renders ``user_config_template.yaml.j2``
with the user's options, after checking them against ``user_config_schema.json``, and
loads the result as a ``UserEndpointConfig``. These tests go through the same functions,
in the same order, as ``CoreEndpoint`` and ``globus-compute-endpoint render-user-config``:
``get_config``, ``Endpoint.user_config_template_path`` / ``user_config_schema_path``,
``load_user_config_template``, ``load_user_config_schema``,
``render_config_user_template`` and ``load_config_yaml``. Nothing here starts an endpoint
or reaches the Globus service.
"""

from __future__ import annotations

import importlib.metadata
import json
import operator
import os
import pathlib
import pwd
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import pytest

pytest.importorskip("globus_compute_endpoint")

import jsonschema
import parsl.addresses
import parsl.executors.high_throughput.executor as htex_module
import yaml
from globus_compute_endpoint.endpoint.config import CoreEndpointConfig, UserEndpointConfig
from globus_compute_endpoint.endpoint.config.utils import (
    get_config,
    load_config_yaml,
    load_user_config_schema,
    load_user_config_template,
    render_config_user_template,
)
from globus_compute_endpoint.endpoint.endpoint import Endpoint
from globus_compute_endpoint.endpoint.identity_mapper import (
    MappedPosixIdentity,
    PosixIdentityMapper,
)
from globus_compute_endpoint.engines import GlobusComputeEngine
from globus_compute_sdk.sdk.batch import create_user_runtime
from packaging.version import Version
from parsl.launchers import MpiExecLauncher, SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, PBSProProvider, SlurmProvider

pytestmark = pytest.mark.endpoint

ENDPOINTS = pathlib.Path(__file__).resolve().parents[2] / "endpoints"
SINGLE_USER = ("edge-gpu", "hpc-slurm", "pbs-polaris")
FACILITY = "facility-multiuser"
#: Where docs/endpoints.md installs the facility endpoint's files; config.yaml names them there.
FACILITY_INSTALL_DIR = "/opt/scopefx/endpoint"
#: The login-node interface the Polaris configuration names, and the address the fake gives.
POLARIS_IFNAME = "bond0"
POLARIS_ADDRESS = "10.1.2.3"

FACILITY_SLURM = {
    "provider": "slurm",
    "account": "mic-042",
    "partition": "gpu-debug",
    "walltime": "04:00:00",
    "gpus_per_node": 2,
    "max_blocks": 3,
}


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[pathlib.Path]:
    """Point HOME and the Globus Compute directory at an empty folder; it must stay empty."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GLOBUS_COMPUTE_USER_DIR", str(home / ".globus_compute"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the engine records its run directory as the current one
    yield home
    assert sorted(p.name for p in home.iterdir()) == []


@pytest.fixture(autouse=True)
def address_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for parsl's address discovery, which the engine runs while being built.

    Without an ``address``, parsl lists every address of this host, asking a public web
    service for the external one (and leaking a socket per interface); with
    ``address_by_interface`` it reads a network interface this test machine lacks. The
    fakes answer at once; the list records the interfaces asked for.
    """
    asked: list[str] = []

    def by_interface(ifname: str) -> str:
        asked.append(ifname)
        return POLARIS_ADDRESS

    monkeypatch.setattr(htex_module, "get_all_addresses", lambda: {"127.0.0.1"})
    monkeypatch.setattr(parsl.addresses, "address_by_interface", by_interface)
    return asked


@pytest.fixture
def endpoint_dir(tmp_path: pathlib.Path) -> Callable[[str], pathlib.Path]:
    """The endpoint directory for one folder of ``endpoints/``, as the endpoint would see it.

    The single-user folders are used in place (their files have the default names). The
    facility's files are copied to a stand-in for /opt/scopefx/endpoint and its config.yaml
    pointed there, since the loader requires the files it names to exist.
    """

    def _dir(name: str) -> pathlib.Path:
        if name != FACILITY:
            return ENDPOINTS / name
        installed = tmp_path / "opt-scopefx-endpoint"
        if installed.exists():
            return installed
        shutil.copytree(ENDPOINTS / name, installed)
        config = installed / "config.yaml"
        config.write_text(config.read_text().replace(FACILITY_INSTALL_DIR, str(installed)))
        return installed

    return _dir


def render_user_config(ep_dir: pathlib.Path, user_opts: dict[str, Any]) -> UserEndpointConfig:
    """Render and load the user endpoint config as the core endpoint does before starting it."""
    config = load_config_yaml(_render_text(ep_dir, user_opts))
    assert isinstance(config, UserEndpointConfig)
    return config


def _render_text(
    ep_dir: pathlib.Path, user_opts: dict[str, Any], *, check_schema: bool = True
) -> str:
    """The user endpoint config (YAML) the core endpoint renders, before it is loaded.

    ``check_schema=False`` renders without the schema, to test the template's own guards.
    """
    parent = get_config(ep_dir)
    template_path = Endpoint.user_config_template_path(ep_dir, parent)
    schema_path = Endpoint.user_config_schema_path(ep_dir, parent)
    return render_config_user_template(
        parent_config=parent,
        user_config_template=load_user_config_template(template_path),
        user_config_template_path=template_path,
        mapped_identity=MappedPosixIdentity(
            local_user_record=pwd.getpwuid(os.getuid()),
            matched_identity=uuid.UUID(int=0),
            globus_identity_candidates=[],
        ),
        user_config_schema=load_user_config_schema(schema_path) if check_schema else None,
        user_opts=user_opts,
        # What the SDK sends with each task; JSON round trip as the service delivers it.
        user_runtime=json.loads(json.dumps(asdict(create_user_runtime()))),
    )


def worker_environment(worker_init: str, *, home: pathlib.Path) -> dict[str, str]:
    """The SCOPEFX_* variables a worker_init exports, expanded by bash as a job would.

    Only the ``export SCOPEFX_...`` lines run (the environment activation needs the real
    host), with HOME and USER set as on the endpoint.
    """
    exports = [line for line in worker_init.splitlines() if re.match(r"\s*export SCOPEFX_", line)]
    script = "\n".join([*exports, "env"])
    env = {"HOME": str(home), "USER": "alice", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    pairs = (line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {key: value for key, value in pairs if key.startswith("SCOPEFX_")}


# --- the endpoint (core) configurations ----------------------------------------------------


@pytest.mark.parametrize("name", [*SINGLE_USER, FACILITY])
def test_config_yaml_is_a_core_endpoint_that_runs_nothing_until_filled(
    name: str, endpoint_dir: Callable[[str], pathlib.Path]
) -> None:
    config = get_config(endpoint_dir(name))

    # No engine block: `globus-compute-endpoint start` refuses a config.yaml with one.
    assert isinstance(config, CoreEndpointConfig)
    assert config.display_name
    # Fail closed: an empty allow-list refuses every function; None would allow any.
    assert config.allowed_functions == ()


@pytest.mark.parametrize("name", [*SINGLE_USER, FACILITY])
def test_endpoint_config_fills_the_allow_list(
    name: str, endpoint_dir: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """What `scopefx endpoint-config` writes is a config.yaml the endpoint accepts."""
    from scopefx.remote._manifest import FUNCTION_NAMES, Manifest, fill_allowed_functions

    ids = {fn: str(uuid.uuid5(uuid.NAMESPACE_URL, f"scopefx:{fn}")) for fn in FUNCTION_NAMES}
    manifest = Manifest(scopefx_version="0.0.test", functions=ids, registered="2024-01-01")
    filled_dir = tmp_path / "filled"
    filled_dir.mkdir()
    filled = fill_allowed_functions((endpoint_dir(name) / "config.yaml").read_text(), manifest)
    (filled_dir / "config.yaml").write_text(filled)

    config = get_config(filled_dir)

    assert isinstance(config, CoreEndpointConfig)
    assert config.allowed_functions == tuple(ids.values())


def test_facility_config_names_its_installed_files(
    endpoint_dir: Callable[[str], pathlib.Path],
) -> None:
    shipped = yaml.safe_load((ENDPOINTS / FACILITY / "config.yaml").read_text())
    keys = ("identity_mapping_config_path", "user_config_template_path", "user_config_schema_path")
    for key in keys:
        path = pathlib.PurePosixPath(shipped[key])
        assert str(path.parent) == FACILITY_INSTALL_DIR, key
        assert (ENDPOINTS / FACILITY / path.name).is_file(), key

    ep_dir = endpoint_dir(FACILITY)
    config = get_config(ep_dir)
    assert isinstance(config, CoreEndpointConfig)
    assert config.identity_mapping_config_path == ep_dir / "identity_mapping.json"
    assert Endpoint.user_config_template_path(ep_dir, config) == (
        ep_dir / "user_config_template.yaml.j2"
    )
    assert Endpoint.user_config_schema_path(ep_dir, config) == ep_dir / "user_config_schema.json"
    assert config.email  # a privileged endpoint will not start without one
    assert config.public is False


# --- the user endpoint configurations rendered from the templates -------------------------

RENDER_CASES = {
    "edge-gpu": (
        "edge-gpu",
        {},
        LocalProvider,
        SingleNodeLauncher,
        {
            "engine.max_workers_per_node": 2,
            "engine.executor.available_accelerators": ["0", "1"],
            "engine.executor.cpu_affinity": "none",
            "engine.executor.address": "127.0.0.1",
            "engine.max_retries_on_system_failure": 2,
            "engine.executor.provider.init_blocks": 1,
            "engine.executor.provider.min_blocks": 1,
            "engine.executor.provider.max_blocks": 1,
            "idle_heartbeats_soft": 240,
        },
    ),
    "hpc-slurm": (
        "hpc-slurm",
        {},
        SlurmProvider,
        SrunLauncher,
        {
            "engine.max_workers_per_node": 4,
            "engine.executor.available_accelerators": ["0", "1", "2", "3"],
            "engine.executor.cpu_affinity": "block",
            "engine.max_retries_on_system_failure": 2,
            "engine.executor.provider.partition": "gpu",
            "engine.executor.provider.walltime": "02:00:00",
            "engine.executor.provider.nodes_per_block": 1,
            "engine.executor.provider.init_blocks": 0,
            "engine.executor.provider.min_blocks": 0,
            "engine.executor.provider.max_blocks": 4,
            "engine.executor.provider.exclusive": True,
        },
    ),
    "pbs-polaris": (
        "pbs-polaris",
        {},
        PBSProProvider,
        MpiExecLauncher,
        {
            "engine.max_workers_per_node": 4,
            "engine.executor.available_accelerators": ["0", "1", "2", "3"],
            "engine.executor.cpu_affinity": "block-reverse",
            "engine.executor.address": POLARIS_ADDRESS,
            "engine.max_retries_on_system_failure": 2,
            "engine.executor.provider.queue": "debug",
            "engine.executor.provider.walltime": "01:00:00",
            "engine.executor.provider.cpus_per_node": 64,
            "engine.executor.provider.select_options": "ngpus=4",
            "engine.executor.provider.scheduler_options": "#PBS -l filesystems=home:eagle",
            "engine.executor.provider.init_blocks": 0,
            "engine.executor.provider.min_blocks": 0,
            "engine.executor.provider.launcher.bind_cmd": "--cpu-bind",
            "engine.executor.provider.launcher.overrides": "--depth=64 --ppn 1",
        },
    ),
    "facility-local": (
        FACILITY,
        {},
        LocalProvider,
        SingleNodeLauncher,
        {
            "engine.max_workers_per_node": 1,
            "engine.executor.available_accelerators": ["0"],
            "engine.executor.address": "127.0.0.1",
            "engine.max_retries_on_system_failure": 2,
            "engine.executor.provider.max_blocks": 1,
            "idle_heartbeats_soft": 10,
        },
    ),
    "facility-slurm": (
        FACILITY,
        FACILITY_SLURM,
        SlurmProvider,
        SrunLauncher,
        {
            "engine.max_workers_per_node": 2,
            "engine.executor.available_accelerators": ["0", "1"],
            "engine.executor.provider.account": "mic-042",
            "engine.executor.provider.partition": "gpu-debug",
            "engine.executor.provider.walltime": "04:00:00",
            "engine.executor.provider.gpus_per_node": 2,
            "engine.executor.provider.max_blocks": 3,
            "engine.executor.provider.init_blocks": 0,
            "engine.executor.provider.exclusive": False,
        },
    ),
}


@pytest.mark.parametrize(
    ("name", "user_opts", "provider_type", "launcher_type", "expected"),
    list(RENDER_CASES.values()),
    ids=list(RENDER_CASES),
)
def test_template_renders_to_the_intended_engine(
    name: str,
    user_opts: dict[str, Any],
    provider_type: type,
    launcher_type: type,
    expected: dict[str, Any],
    endpoint_dir: Callable[[str], pathlib.Path],
) -> None:
    config = render_user_config(endpoint_dir(name), user_opts)

    assert type(config.engine) is GlobusComputeEngine
    assert type(config.engine.executor.provider) is provider_type
    assert type(config.engine.executor.provider.launcher) is launcher_type
    actual = {path: operator.attrgetter(path)(config) for path in expected}
    assert actual == expected


def test_slurm_templates_ask_for_the_gpus(endpoint_dir: Callable[[str], pathlib.Path]) -> None:
    hpc = render_user_config(endpoint_dir("hpc-slurm"), {}).engine.executor.provider
    facility = render_user_config(endpoint_dir(FACILITY), FACILITY_SLURM).engine.executor.provider
    assert "#SBATCH --gpus-per-node=4" in hpc.scheduler_options.splitlines()
    assert "#SBATCH --gpus-per-node=2" in facility.scheduler_options.splitlines()
    assert "#SBATCH --account=mic-042" in facility.scheduler_options.splitlines()


def test_polaris_address_is_the_named_login_interface(
    endpoint_dir: Callable[[str], pathlib.Path], address_lookups: list[str]
) -> None:
    render_user_config(endpoint_dir("pbs-polaris"), {})
    assert address_lookups == [POLARIS_IFNAME]


@pytest.mark.parametrize(
    ("name", "user_opts", "cluster"),
    [
        ("edge-gpu", {}, False),
        ("hpc-slurm", {}, True),
        ("pbs-polaris", {}, True),
        (FACILITY, {}, False),
        (FACILITY, FACILITY_SLURM, True),
    ],
    ids=["edge-gpu", "hpc-slurm", "pbs-polaris", "facility-local", "facility-slurm"],
)
def test_worker_init_sets_data_roots(
    name: str,
    user_opts: dict[str, Any],
    cluster: bool,
    endpoint_dir: Callable[[str], pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    config = render_user_config(endpoint_dir(name), user_opts)
    worker_home = tmp_path / "worker-home"

    env = worker_environment(config.engine.executor.provider.worker_init, home=worker_home)

    roots = env["SCOPEFX_DATA_ROOTS"].split(os.pathsep)
    outputs = env["SCOPEFX_OUTPUT_ROOTS"].split(os.pathsep)
    assert roots and outputs, env
    for root in roots + outputs:
        path = pathlib.PurePosixPath(root)
        assert path.is_absolute(), root
        assert ".." not in path.parts, root
        assert "$" not in root, root  # every variable was expanded
    # Data roots are read-only: no output root is one of them, inside one or holding one,
    # so a relative or absolute output can never land among the instrument's data.
    for out in outputs:
        for data in roots:
            assert not pathlib.PurePosixPath(out).is_relative_to(data), (out, data)
            assert not pathlib.PurePosixPath(data).is_relative_to(out), (out, data)
    # What the process sees: outputs resolve under the output root, a data root is refused.
    from scopefx.errors import AccessDeniedError
    from scopefx.io import DataRoots

    where = DataRoots.from_env(env)
    assert where.resolve_output("run1/m.ome.zarr").startswith(outputs[0] + "/")
    with pytest.raises(AccessDeniedError, match="data root"):
        where.resolve_output(roots[0] + "/run1/m.ome.zarr")
    if name == FACILITY:
        assert "alice" in pathlib.PurePosixPath(outputs[0]).parts  # per mapped user
    if cluster:
        cluster_file = pathlib.PurePosixPath(env["SCOPEFX_CLUSTER"])
        assert cluster_file.is_absolute() and cluster_file.suffix == ".yaml"
    else:
        assert "SCOPEFX_CLUSTER" not in env
    if name == FACILITY and cluster:
        # the shared cluster file charges each user's dask jobs to that user's own account
        assert env["SCOPEFX_CLUSTER_ACCOUNT"] == user_opts["account"]


# --- what users may and may not send ------------------------------------------------------


def test_schemas_are_valid_json_schema() -> None:
    for name in (*SINGLE_USER, FACILITY):
        schema = load_user_config_schema(ENDPOINTS / name / "user_config_schema.json")
        assert schema is not None
        jsonschema.Draft202012Validator.check_schema(schema)


def test_facility_defaults_match_the_schema(endpoint_dir: Callable[[str], pathlib.Path]) -> None:
    """What the template renders for an omitted option is the default the schema documents."""
    schema = json.loads((ENDPOINTS / FACILITY / "user_config_schema.json").read_text())
    defaults = {
        key: spec["default"] for key, spec in schema["properties"].items() if "default" in spec
    }
    provider = render_user_config(
        endpoint_dir(FACILITY), {"provider": "slurm", "account": "mic-042"}
    ).engine.executor.provider

    rendered = {
        "provider": "slurm" if isinstance(provider, SlurmProvider) else "local",
        "gpus_per_node": provider.gpus_per_node,
        "partition": provider.partition,
        "walltime": provider.walltime,
        "max_blocks": provider.max_blocks,
    }
    assert rendered == defaults | {"provider": "slurm"}
    local = render_user_config(endpoint_dir(FACILITY), {}).engine.executor.provider
    assert isinstance(local, LocalProvider) and defaults["provider"] == "local"


BAD_OPTIONS = {
    # The single-user endpoints take no options at all.
    "edge-any-option": ("edge-gpu", {"gpus": 1}, "Additional properties are not allowed"),
    "edge-worker-init": (
        "edge-gpu",
        {"worker_init": "export SCOPEFX_DATA_ROOTS=/"},
        r"'worker_init' was unexpected",
    ),
    "slurm-walltime": ("hpc-slurm", {"walltime": "04:00:00"}, r"'walltime' was unexpected"),
    "polaris-queue": ("pbs-polaris", {"queue": "prod"}, r"'queue' was unexpected"),
    # The facility endpoint: types, enums, bounds, unknown keys.
    "wrong-type": (FACILITY, {"gpus_per_node": "2"}, r"'2' is not of type 'integer'"),
    "bool-for-int": (FACILITY, {"gpus_per_node": True}, r"True is not of type 'integer'"),
    "too-many-gpus": (FACILITY, {"gpus_per_node": 8}, r"8 is greater than the maximum of 4"),
    "no-gpus": (FACILITY, {"gpus_per_node": 0}, r"0 is less than the minimum of 1"),
    "unknown-provider": (
        FACILITY,
        {"provider": "kubernetes"},
        r"'kubernetes' is not one of \['local', 'slurm'\]",
    ),
    "unknown-partition": (
        FACILITY,
        {**FACILITY_SLURM, "partition": "bigmem"},
        r"'bigmem' is not one of \['gpu', 'gpu-debug'\]",
    ),
    "walltime-too-long": (
        FACILITY,
        {**FACILITY_SLURM, "walltime": "48:00:00"},
        r"'48:00:00' does not match",
    ),
    "walltime-not-hms": (FACILITY, {**FACILITY_SLURM, "walltime": 3600}, r"3600 is not of type"),
    # parsl submits whole minutes (rounding down): under a minute is `--time=0`, no limit.
    "walltime-zero": (FACILITY, {**FACILITY_SLURM, "walltime": "00:00:00"}, r"does not match"),
    "walltime-59s": (FACILITY, {**FACILITY_SLURM, "walltime": "00:00:59"}, r"does not match"),
    "too-many-blocks": (FACILITY, {**FACILITY_SLURM, "max_blocks": 5}, r"5 is greater than"),
    "account-injection": (
        FACILITY,
        {**FACILITY_SLURM, "account": "x\nworker_init: rm -rf ~"},
        r"does not match",
    ),
    "slurm-without-account": (
        FACILITY,
        {"provider": "slurm"},
        r"'account' is a required property",
    ),
    "slurm-option-for-local": (FACILITY, {"partition": "gpu"}, r"False schema does not allow"),
    # Nothing may reach the environment or the data roots.
    "data-roots": (
        FACILITY,
        {"SCOPEFX_DATA_ROOTS": "/"},
        r"'SCOPEFX_DATA_ROOTS' was unexpected",
    ),
    "worker-init": (
        FACILITY,
        {"worker_init": "export SCOPEFX_DATA_ROOTS=/"},
        r"'worker_init' was unexpected",
    ),
    "endpoint-setup": (FACILITY, {"endpoint_setup": "id"}, r"'endpoint_setup' was unexpected"),
    "requirements": (FACILITY, {"requirements": "numpy"}, r"'requirements' was unexpected"),
}


@pytest.mark.parametrize(
    ("name", "user_opts", "match"), list(BAD_OPTIONS.values()), ids=list(BAD_OPTIONS)
)
def test_bad_user_options_are_refused(
    name: str,
    user_opts: dict[str, Any],
    match: str,
    endpoint_dir: Callable[[str], pathlib.Path],
) -> None:
    with pytest.raises(jsonschema.ValidationError, match=match):
        render_user_config(endpoint_dir(name), user_opts)


def test_reserved_template_variables_are_refused(
    endpoint_dir: Callable[[str], pathlib.Path],
) -> None:
    # Refused by the endpoint itself, before the schema: a user cannot replace what the
    # template reads about the mapped identity or the runtime.
    with pytest.raises(ValueError, match="'_GC' is a reserved word"):
        render_user_config(endpoint_dir(FACILITY), {"_GC": {"env": {}}})


# --- identity mapping ---------------------------------------------------------------------


def _identity(username: str) -> dict[str, str]:
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_DNS, username)),
        "username": username,
        "status": "used",
    }


#: A throwaway ordinary account the tests create where they can (root, as in CI).
TEST_USER = "scopefxidm"


@pytest.fixture(scope="module")
def ordinary_account() -> Iterator[str | None]:
    """TEST_USER as an ordinary account (uid >= 1000, a login shell), created here when this
    runs as root and removed after; None where accounts cannot be created."""
    try:
        pwd.getpwnam(TEST_USER)
        yield TEST_USER
        return
    except KeyError:
        pass
    if os.getuid() != 0 or shutil.which("useradd") is None:
        yield None
        return
    subprocess.run(["useradd", "-M", "-s", "/bin/sh", TEST_USER], check=True)
    try:
        yield TEST_USER
    finally:
        subprocess.run(["userdel", TEST_USER], check=False)


@pytest.fixture
def identity_mapper(tmp_path: pathlib.Path) -> Iterator[PosixIdentityMapper]:
    """The mapper the core endpoint builds from the shipped identity_mapping.json, its
    program pointed at this checkout's identity_map.py (installed: /opt/scopefx/endpoint)."""
    import sys

    doc = json.loads((ENDPOINTS / FACILITY / "identity_mapping.json").read_text())
    (mapping,) = doc
    assert mapping["command"] == ["/usr/bin/python3", f"{FACILITY_INSTALL_DIR}/identity_map.py"]
    mapping["command"] = [sys.executable, str(ENDPOINTS / FACILITY / "identity_map.py")]
    path = tmp_path / "identity_mapping.json"
    path.write_text(json.dumps(doc))
    mapper = PosixIdentityMapper(path, "scopefx-test")
    try:
        yield mapper
    finally:
        mapper.stop_watching()


def _map(mapper: PosixIdentityMapper, username: str) -> str | None:
    identity = _identity(username)
    (results,) = mapper.map_identities([identity])
    return results[0][identity["id"]][0] if results else None


@pytest.mark.parametrize(
    "username",
    [
        "root@facility.example.org",  # uid 0
        "daemon@facility.example.org",  # a system account (uid < 1000)
        "bin@facility.example.org",
        "nobody@facility.example.org",  # uid 65534, no login shell
        "no-such-user-xyz@facility.example.org",
        "alice@example.org",
        "root@facility.example.org.evil.example",
        "root@facilityXexample.org",
        "-rf@facility.example.org",
        "@facility.example.org",
    ],
)
def test_identity_mapping_refuses_system_accounts_and_strangers(
    identity_mapper: PosixIdentityMapper, username: str
) -> None:
    assert _map(identity_mapper, username) is None


def test_identity_mapping_maps_an_ordinary_account(
    identity_mapper: PosixIdentityMapper, ordinary_account: str | None
) -> None:
    if ordinary_account is None:
        pytest.skip("needs root to create a throwaway ordinary account (CI runs as root)")
    record = pwd.getpwnam(ordinary_account)
    assert record.pw_uid >= 1000
    assert _map(identity_mapper, f"{ordinary_account}@facility.example.org") == ordinary_account
    assert _map(identity_mapper, f"{ordinary_account}@FACILITY.example.org") == ordinary_account
    assert _map(identity_mapper, f"{ordinary_account}@facility.example.org.evil.example") is None


# --- what crosses the wire, and for how long it may run -----------------------------------

ALL_RENDERS = [
    ("edge-gpu", {}),
    ("hpc-slurm", {}),
    ("pbs-polaris", {}),
    (FACILITY, {}),
    (FACILITY, FACILITY_SLURM),
]
ALL_RENDER_IDS = ["edge-gpu", "hpc-slurm", "pbs-polaris", "facility-local", "facility-slurm"]


@pytest.mark.parametrize(("name", "user_opts"), ALL_RENDERS, ids=ALL_RENDER_IDS)
def test_engine_deserializes_json_data_only(
    name: str, user_opts: dict[str, Any], endpoint_dir: Callable[[str], pathlib.Path]
) -> None:
    from globus_compute_sdk.serialize import DillCode, DillDataBase64, JSONData
    from globus_compute_sdk.serialize.base import DeserializationError

    rendered = yaml.safe_load(_render_text(endpoint_dir(name), user_opts))
    engine = render_user_config(endpoint_dir(name), user_opts).engine
    serde = engine.serde

    # named through scopefx.remote.serializers, whose import (by the engine, resolving the
    # names) checks every task's argument buffers; the classes are the SDK's own
    assert rendered["engine"]["allowed_serializers"] == [
        "scopefx.remote.serializers.DillCode",
        "scopefx.remote.serializers.JSONData",
    ]
    assert getattr(type(engine).submit, "_scopefx_checked", False)
    assert serde.allowed_deserializer_types == {DillCode, JSONData}
    data = {"refs": ["run1/a.tif"], "params": {"sigma_ratio": 1.6}}
    assert serde.deserialize(JSONData().serialize(data)) == data
    with pytest.raises(DeserializationError, match="DillDataBase64"):
        serde.deserialize(DillDataBase64().serialize(data))


@pytest.mark.parametrize(
    ("name", "user_opts", "timeout_s"),
    [
        ("edge-gpu", {}, 3600),
        ("hpc-slurm", {}, 6600),  # walltime 02:00:00
        ("pbs-polaris", {}, 3300),  # walltime 01:00:00
        (FACILITY, {}, 3600),
        (FACILITY, FACILITY_SLURM, 4 * 3600 - 300),  # walltime 04:00:00
        (FACILITY, {"provider": "slurm", "account": "mic-042"}, 1620),  # default 00:30:00
        (FACILITY, {"provider": "slurm", "account": "a", "walltime": "00:05:00"}, 270),
    ],
    ids=[*ALL_RENDER_IDS, "facility-slurm-default", "facility-slurm-short"],
)
def test_every_template_sets_a_task_timeout(
    name: str,
    user_opts: dict[str, Any],
    timeout_s: int,
    endpoint_dir: Callable[[str], pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    """GC_TASK_TIMEOUT, read by the engine's worker for every task; under the walltime of
    a batch job, so a stuck task is reported as timed out instead of lost and retried. And
    SCOPEFX_TASK_TIMEOUT_S a little under it (at most 2 min), so scopefx stops a batch or a
    fusion between items or chunks, keeping what it finished, before the engine kills it."""
    from scopefx.io import EndpointLimits

    provider = render_user_config(endpoint_dir(name), user_opts).engine.executor.provider
    exports = [
        line.strip()
        for line in provider.worker_init.splitlines()
        if line.strip().startswith("export GC_TASK_TIMEOUT=")
    ]
    assert exports == [f"export GC_TASK_TIMEOUT={timeout_s}"]
    env = worker_environment(provider.worker_init, home=tmp_path)
    own = EndpointLimits.from_env(env).task_timeout_s
    assert own is not None and timeout_s - 120 <= own < timeout_s, env
    walltime = getattr(provider, "walltime", None)
    if walltime:
        h, m, s = (int(x) for x in walltime.split(":"))
        assert timeout_s < h * 3600 + m * 60 + s


def test_globus_compute_pins_have_an_upper_bound() -> None:
    """The templates use the 4.x schema and settings; a new major must be a decision."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ENDPOINTS.parent / "pyproject.toml").read_text())["project"]
    pins = [
        Requirement(r)
        for extra in project["optional-dependencies"].values()
        for r in extra
        if r.startswith("globus-compute")
    ]
    assert pins
    for pin in pins:
        assert any(s.operator == "<" for s in pin.specifier), str(pin)
        installed = Version(importlib.metadata.version(pin.name))
        assert installed in pin.specifier, f"{pin.name} {installed} outside {pin}"


def _user_endpoint_config_examples() -> list[tuple[str, str]]:
    """(where, TOML line) of every ``user_endpoint_config = {...}`` example we ship."""
    root = ENDPOINTS.parent
    files = [
        *sorted((root / "src").rglob("*.py")),
        *sorted((root / "docs").rglob("*.md")),
        root / "README.md",
        *sorted((root / "notebooks").glob("*.ipynb")),
    ]
    found = []
    for path in files:
        text = path.read_text()
        if path.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"])
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("user_endpoint_config = {"):
                found.append((str(path.relative_to(root)), stripped))
    return found


EXAMPLES = _user_endpoint_config_examples()


def test_user_endpoint_config_examples_are_found() -> None:
    where = {w for w, _ in EXAMPLES}
    assert {"notebooks/03_remote_execution.ipynb", "src/scopefx/remote/_config.py"} <= where


@pytest.mark.parametrize(("where", "line"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_user_endpoint_config_examples_are_accepted(
    where: str, line: str, endpoint_dir: Callable[[str], pathlib.Path]
) -> None:
    """Every example renders through the facility template (the only endpoint that takes
    options); the single-user schemas accept only no options at all."""
    import tomllib

    options = tomllib.loads(line)["user_endpoint_config"]
    render_user_config(endpoint_dir(FACILITY), options)
    for name in SINGLE_USER:
        schema = json.loads((ENDPOINTS / name / "user_config_schema.json").read_text())
        assert list(jsonschema.Draft202012Validator(schema).iter_errors(options)), name
        jsonschema.validate({}, schema)


# --- bounds that must hold for every option the facility schema admits --------------------


def _hms(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def test_facility_smallest_walltime_is_a_bounded_job(
    endpoint_dir: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """The shortest walltime the schema admits still becomes a SLURM job with a time limit
    (``--time=0`` means none) and a task timeout above 0 (0 turns the engine's off)."""
    schema = json.loads((ENDPOINTS / FACILITY / "user_config_schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    base = {"provider": "slurm", "account": "mic-042"}
    smallest = next(
        _hms(t) for t in range(12 * 3600 + 1) if validator.is_valid({**base, "walltime": _hms(t)})
    )

    provider = render_user_config(
        endpoint_dir(FACILITY), {**base, "walltime": smallest}
    ).engine.executor.provider
    # The job script parsl submits: its own minute rounding, no sbatch run.
    provider.script_dir = str(tmp_path / "scripts")
    os.mkdir(provider.script_dir)
    submitted: list[str] = []

    def execute_wait(cmd: str, *args: Any, **kwargs: Any) -> tuple[int, str, str]:
        submitted.append(cmd)
        return 0, "Submitted batch job 42", ""

    provider.execute_wait = execute_wait  # type: ignore[method-assign]
    provider.submit("echo worker", 1, "job")
    assert submitted and submitted[0].startswith("sbatch")
    script = pathlib.Path(submitted[0].split()[-1])  # sbatch PATH, written by parsl
    (time_limit,) = re.findall(r"^#SBATCH --time=(\d+)$", script.read_text(), re.MULTILINE)
    assert int(time_limit) >= 1, (smallest, time_limit)

    env = worker_environment(provider.worker_init, home=tmp_path)
    (gc_timeout,) = re.findall(r"export GC_TASK_TIMEOUT=(\d+)", provider.worker_init)
    assert 0 < int(gc_timeout) < int(time_limit) * 60, (smallest, gc_timeout)
    assert 0 < int(env["SCOPEFX_TASK_TIMEOUT_S"]) < int(gc_timeout), env
    assert not validator.is_valid({**base, "walltime": "00:00:59"})


def test_facility_template_keeps_task_timeouts_above_zero_on_its_own(
    endpoint_dir: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    """A second guard behind the schema's floor: even a zero walltime (a loosened schema)
    renders GC_TASK_TIMEOUT >= 1, since the engine reads 0 as no timeout."""
    options = {"provider": "slurm", "account": "mic-042", "walltime": "00:00:00"}
    rendered = yaml.safe_load(_render_text(endpoint_dir(FACILITY), options, check_schema=False))
    worker_init = rendered["engine"]["provider"]["worker_init"]
    (gc_timeout,) = re.findall(r"export GC_TASK_TIMEOUT=(\d+)", worker_init)
    assert int(gc_timeout) >= 1
    env = worker_environment(worker_init, home=tmp_path)
    assert int(env["SCOPEFX_TASK_TIMEOUT_S"]) >= 1


def test_facility_integer_options_sent_as_whole_floats_render(
    endpoint_dir: Callable[[str], pathlib.Path],
) -> None:
    """JSON Schema counts 2.0 as an integer (TOML ``gpus_per_node = 2.0`` sends one): the
    rendered endpoint must load with integers, not fail on the engine's typed settings."""
    schema = json.loads((ENDPOINTS / FACILITY / "user_config_schema.json").read_text())
    integers = sorted(k for k, v in schema["properties"].items() if v.get("type") == "integer")
    assert integers == ["gpus_per_node", "max_blocks"]  # every integer option is checked here
    options = {**FACILITY_SLURM, "gpus_per_node": 2.0, "max_blocks": 3.0}

    config = render_user_config(endpoint_dir(FACILITY), options)

    provider = config.engine.executor.provider
    got = (
        config.engine.max_workers_per_node,
        provider.gpus_per_node,
        provider.cores_per_node,
        provider.max_blocks,
    )
    assert got == (2, 2, 16, 3)
    assert all(type(v) is int for v in got), got
    local = render_user_config(endpoint_dir(FACILITY), {"gpus_per_node": 2.0}).engine
    assert local.max_workers_per_node == 2


def test_cluster_files_start_dask_workers_in_the_endpoint_environment(
    endpoint_dir: Callable[[str], pathlib.Path],
) -> None:
    """Each shipped cluster file is the one its template's SCOPEFX_CLUSTER names, and its
    job_script_prologue activates the environment the template's worker_init activates (the
    lines before the first export): the dask workers it starts run scopefx too."""
    from scopefx.cluster import load_cluster_spec

    files = sorted(ENDPOINTS.glob("*/cluster-*.yaml"))
    assert {f.parent.name for f in files} == {"hpc-slurm", "pbs-polaris"}
    for file in files:
        worker_init = render_user_config(
            endpoint_dir(file.parent.name), {}
        ).engine.executor.provider.worker_init
        lines = [line.strip() for line in worker_init.splitlines()]
        activation = lines[: next(i for i, x in enumerate(lines) if x.startswith("export "))]
        assert activation, file
        (cluster_var,) = (x for x in lines if x.startswith("export SCOPEFX_CLUSTER="))
        assert cluster_var.rsplit("/", 1)[-1] == file.name
        prologue = list(load_cluster_spec(file).job_script_prologue)
        assert prologue == activation, file
