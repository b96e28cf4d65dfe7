"""One level up: the real multi-user (core) endpoint, given start commands on its queue.

The facility endpoint as root runs it: ``CoreEndpoint`` from globus-compute-endpoint, started
with the facility's config.yaml, identity mapping (``identity_map.py``), user template and
schema, installed in a folder of their own. Only its registration with the web service is
left out: the launcher hands it the registration answer (its command and heartbeat queues)
that :class:`gc_standin.ServiceStandIn` made. Then, as the service does when a Globus identity
submits, a start command arrives on its queue; the core endpoint maps the identity through
the shipped mapping to a throwaway local account this test creates, drops privileges and
starts that user's endpoint, which runs the suite as that account.

Needs root (to create the account, and as the facility runs the endpoint); CI runs as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("globus_compute_endpoint")
pytest.importorskip("pika")
pytest.importorskip("pyprctl")

import yaml
from gc_standin import ServiceStandIn, StandInExecutor

import scopefx
from scopefx.remote import FUNCTION_NAMES, Client, Manifest, fill_allowed_functions
from scopefx.remote import functions as suite

# one local account (USER) that the module's fixture creates and removes: under pytest -n its
# tests stay on one worker (--dist loadgroup)
pytestmark = [pytest.mark.endpoint, pytest.mark.slow, pytest.mark.xdist_group("multi-user")]

if os.getuid() != 0 or shutil.which("useradd") is None:
    pytest.skip(
        "the multi-user endpoint runs as root and maps to a throwaway account it creates",
        allow_module_level=True,
    )

ENDPOINTS = pathlib.Path(__file__).resolve().parents[2] / "endpoints"
FACILITY = ENDPOINTS / "facility-multiuser"
SRC = pathlib.Path(scopefx.__file__).resolve().parents[1]
USER = "scopefxmu"
DOMAIN = "facility.example.org"
RESULT_TIMEOUT_S = 180

#: The core endpoint as `globus-compute-endpoint start` runs it, less the registration call
#: to the web service (its answer comes on stdin) and the daemonizing.
LAUNCHER = """
import json, os, pathlib, sys
from globus_compute_endpoint.endpoint.config.utils import get_config
from globus_compute_endpoint.endpoint.core_endpoint import CoreEndpoint
from globus_compute_endpoint.logging_config import setup_logging
os.umask(0o077)
conf_dir = pathlib.Path(sys.argv[1])
reg_info = json.loads(sys.stdin.read())
setup_logging(logfile=conf_dir / "endpoint.log", debug=True, console_enabled=False)
CoreEndpoint(conf_dir, None, get_config(conf_dir), reg_info).start()
"""


class _UserEndpointView:
    """What StandInExecutor needs of a user endpoint the core endpoint started."""

    def __init__(self, service: ServiceStandIn, creds: dict[str, Any], home: pathlib.Path):
        self.service = service
        self.creds = creds
        self.endpoint_id = creds["endpoint_id"]
        self.home = home

    def logs(self) -> str:
        texts = []
        for path in sorted(self.home.glob(".globus_compute/**/*.log")):
            texts.append(f"==> {path} <==\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(texts)[-12000:]


def _python_for(user: str) -> tuple[str, list[str]]:
    """An interpreter ``user`` can run with scopefx's dependencies: this one, or (where it
    lives in a folder only root may enter, as with a pyenv under /root) the system's
    python3 of the same version, given this environment's site-packages. Returns the
    interpreter and the PYTHONPATH it needs."""
    import sysconfig

    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    purelib = sysconfig.get_paths()["purelib"]
    candidates = [(sys.executable, [str(SRC)]), ("/usr/bin/python3", [str(SRC), purelib])]
    for python, path in candidates:
        probe = subprocess.run(
            ["runuser", "-u", user, "--", "env", f"PYTHONPATH={os.pathsep.join(path)}", python,
             "-c", "import sys, globus_compute_endpoint, scopefx; "
                   "print('%d.%d' % sys.version_info[:2])"],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == want:
            return python, path
    pytest.skip(f"no Python {want} with scopefx's dependencies that {user} may run")


def _localize_template(
    text: str, *, bindir: pathlib.Path, data: pathlib.Path, out: pathlib.Path
) -> str:
    """The facility template with its site (environment, roots) replaced by this host's."""
    activate = f"export PATH={bindir}:$PATH"
    replaced = text.replace("source /facility/software/scopefx/venv/bin/activate", activate)
    replaced = replaced.replace("=/facility/instruments\n", f"={data}\n")
    # the per-user output root, $USER kept: the mapped account's shell expands it
    replaced = replaced.replace("=/facility/scratch/$USER/scopefx\n", f"={out}/$USER\n")
    assert replaced.count(activate) == 1 and str(data) in replaced and f"{out}/$USER" in replaced
    return replaced


def _kill_processes_of(uid: int) -> None:
    """Stop what the test's throwaway account still runs (its user endpoint, workers)."""
    import psutil

    procs = [p for p in psutil.process_iter(["uids"]) if p.info["uids"].real == uid]
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


@pytest.fixture(scope="module")
def facility(amqp_url: str) -> Iterator[dict[str, Any]]:
    from scopefx.samples import make_mosaic, write_defocus_series, write_mosaic

    base = pathlib.Path(tempfile.mkdtemp(prefix="scopefx-mu-"))
    base.chmod(0o755)  # the mapped account reads the data and its home under it
    # a leftover of a killed run: its processes first (userdel refuses a user still running)
    subprocess.run(["pkill", "-KILL", "-u", USER], capture_output=True)
    subprocess.run(["userdel", "-r", USER], capture_output=True)
    subprocess.run(["useradd", "-m", "-d", str(base / "home"), "-s", "/bin/sh", USER], check=True)
    account = pwd.getpwnam(USER)
    service = ServiceStandIn(amqp_url)
    core = None
    try:
        data, out = base / "data", base / "out"
        write_defocus_series(data / "run1", [0.0, 0.2, 5.0, 0.0], size=128, seed=3)
        write_mosaic(data / "mosaic", make_mosaic(grid=(2, 2), tile_px=96, overlap=0.15))
        subprocess.run(["chmod", "-R", "a+rX", str(data)], check=True)
        out.mkdir()
        os.chown(out, account.pw_uid, account.pw_gid)

        # The facility's scopefx environment: globus-compute-endpoint with an interpreter
        # the mapped account can run (the core endpoint starts it from PATH).
        python, pythonpath = _python_for(USER)
        bindir = base / "bin"
        bindir.mkdir()
        launcher = bindir / "globus-compute-endpoint"
        launcher.write_text(f'#!/bin/sh\nexec {python} -m globus_compute_endpoint.cli "$@"\n')
        launcher.chmod(0o755)

        # The endpoint's installed files (root-owned), as docs/endpoints.md installs them.
        opt = base / "opt"
        opt.mkdir()
        shutil.copy(FACILITY / "identity_map.py", opt)
        shutil.copy(FACILITY / "user_config_schema.json", opt)
        (opt / "user_config_template.yaml.j2").write_text(
            _localize_template(
                (FACILITY / "user_config_template.yaml.j2").read_text(),
                bindir=bindir,
                data=data,
                out=out,
            )
        )
        mapping = json.loads((FACILITY / "identity_mapping.json").read_text())
        mapping[0]["command"] = [sys.executable, str(opt / "identity_map.py")]
        (opt / "identity_mapping.json").write_text(json.dumps(mapping))

        ids = {name: service.register_function(getattr(suite, name)) for name in FUNCTION_NAMES}
        manifest = Manifest(scopefx_version=scopefx.__version__, functions=ids)
        conf_dir = base / "root-gc" / "scopefx-facility"
        conf_dir.mkdir(parents=True)
        config = (FACILITY / "config.yaml").read_text().replace("/opt/scopefx/endpoint", str(opt))
        (conf_dir / "config.yaml").write_text(fill_allowed_functions(config, manifest))
        # The environment the core endpoint gives each user endpoint (it clears its own).
        (conf_dir / "user_environment.yaml").write_text(
            yaml.safe_dump(
                {
                    "PATH": f"{bindir}:/usr/bin:/bin",
                    "PYTHONPATH": os.pathsep.join(pythonpath),
                    "MPLBACKEND": "Agg",
                }
            )
        )

        reg_info = service.create_core_endpoint()
        with (conf_dir / "process.log").open("wb") as log:
            # The same interpreter: the core endpoint renders the user's template in its
            # own forked child after dropping privileges to the mapped account.
            core = subprocess.Popen(
                [python, "-c", LAUNCHER, str(conf_dir)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "GLOBUS_COMPUTE_USER_DIR": str(base / "root-gc"),
                    "PYTHONPATH": os.pathsep.join(pythonpath),
                    "PATH": f"{bindir}:/usr/bin:/bin",
                },
                start_new_session=True,
            )
        assert core.stdin is not None
        core.stdin.write(json.dumps(reg_info).encode())
        core.stdin.close()
        yield {
            "service": service,
            "core_id": reg_info["endpoint_id"],
            "manifest": manifest,
            "account": account,
            "data": data,
            "out": out,
            "conf_dir": conf_dir,
            "core": core,
        }
    finally:
        if core is not None and core.poll() is None:
            os.killpg(core.pid, signal.SIGTERM)
            try:
                core.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(core.pid, signal.SIGKILL)
                core.wait()
        _kill_processes_of(account.pw_uid)
        service.close()
        subprocess.run(["userdel", "-r", USER], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _core_log(facility: dict[str, Any]) -> str:
    conf_dir = facility["conf_dir"]
    texts = [
        (conf_dir / name).read_text(errors="replace")[-6000:]
        for name in ("process.log", "endpoint.log")
        if (conf_dir / name).exists()
    ]
    return "\n".join(texts)


def _start(
    facility: dict[str, Any], username: str, user_opts: dict[str, Any] | None = None
) -> _UserEndpointView:
    service: ServiceStandIn = facility["service"]
    creds = service.create_endpoint()
    service.start_user_endpoint(
        facility["core_id"], username=username, amqp_creds=creds, user_opts=user_opts
    )
    return _UserEndpointView(service, creds, pathlib.Path(facility["account"].pw_dir))


def _first_report(view: _UserEndpointView, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reports = view.service.heartbeats(view.endpoint_id)
        if reports:
            return reports[0]
        time.sleep(0.5)
    return None


def test_a_mapped_identity_runs_the_suite_as_its_own_account(facility: dict[str, Any]) -> None:
    account = facility["account"]
    view = _start(facility, f"{USER}@{DOMAIN}")
    executor = StandInExecutor(view, timeout_s=RESULT_TIMEOUT_S)  # type: ignore[arg-type]
    t0 = time.monotonic()
    try:
        with Client(executor, manifest=facility["manifest"], max_retries=0, progress=False) as c:
            info = c.info()
            records = c.score_focus([f"run1/section_{i:04d}.tif" for i in range(4)])
            summary = c.fuse("mosaic/tiles.csv", "m.ome.zarr")  # relative: the user's root
            with pytest.raises(Exception, match=r"data root \(read-only\)"):
                c.fuse("mosaic/tiles.csv", str(facility["data"] / "m.ome.zarr"))
    except Exception:
        print(_core_log(facility), view.logs())
        raise
    print(f"multi-user: first start and the suite in {time.monotonic() - t0:.1f} s")
    assert info["scopefx"] == scopefx.__version__
    assert [r.status for r in records] == ["ok"] * 4
    assert summary.shape
    # under this user's output root, written by the mapped account, not root
    assert info["output_roots"] == [str(facility["out"] / USER)]
    assert (facility["out"] / USER / "m.ome.zarr").stat().st_uid == account.pw_uid
    assert not (facility["data"] / "m.ome.zarr").exists()
    report = _first_report(view)
    assert report is not None
    assert report.global_state["posix_username"] == USER
    assert report.global_state["posix_uid"] == account.pw_uid != 0


@pytest.mark.parametrize(
    "username",
    [f"daemon@{DOMAIN}", f"root@{DOMAIN}", f"nobody@{DOMAIN}", f"{USER}@example.org"],
)
def test_an_identity_the_mapping_refuses_starts_nothing(
    facility: dict[str, Any], username: str
) -> None:
    view = _start(facility, username)
    report = _first_report(view)
    assert report is not None, _core_log(facility)
    assert "Identity failed to map to a local user name" in report.global_state["error"]


def test_options_the_schema_refuses_start_nothing(facility: dict[str, Any]) -> None:
    view = _start(facility, f"{USER}@{DOMAIN}", {"worker_init": "export SCOPEFX_DATA_ROOTS=/"})
    report = _first_report(view)
    assert report is not None, _core_log(facility)
    assert "'worker_init' was unexpected" in report.global_state["error"]
    assert "posix_username" not in report.global_state  # no user endpoint ran
