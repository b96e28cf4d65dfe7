"""dask clusters from config files; real LocalCluster runs, SLURM/PBS job scripts."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from scopefx import FusionParams, fuse
from scopefx.cli import main
from scopefx.cluster import ClusterSpec, load_cluster_spec, open_cluster
from scopefx.errors import ConfigError

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from scopefx.samples import make_mosaic, write_mosaic

    folder = tmp_path_factory.mktemp("cluster-tiles")
    return write_mosaic(folder, make_mosaic(grid=(3, 3), tile_px=128, jitter_px=1.0))


def _equal(a, b) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    keys = sorted(ga.array_keys())
    assert keys == sorted(gb.array_keys()) and keys
    for key in keys:
        np.testing.assert_array_equal(ga[key][...], gb[key][...])


def test_spec_from_yaml_and_toml(tmp_path):
    (tmp_path / "c.yaml").write_text(
        textwrap.dedent(
            """\
            cluster:
              kind: slurm
              cores: 4
              processes: 2
              memory: 8GiB
              walltime: "00:30:00"
              queue: debug
              gpus: 1
              jobs: 2
              job_extra_directives: ["--exclusive"]
            """
        )
    )
    spec = load_cluster_spec(tmp_path / "c.yaml")
    assert (spec.kind, spec.cores, spec.workers, spec.job_extra_directives) == (
        "slurm", 4, 4, ("--exclusive",)
    )  # fmt: skip
    (tmp_path / "c.toml").write_text('kind = "pbs"\ncores = 2\nwalltime = "1:00:00"\n')
    assert load_cluster_spec(tmp_path / "c.toml").kind == "pbs"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "k8s"}, "kind must be"),
        ({"cores": 0}, "cores must be an integer >= 1"),
        ({"cores": 2, "processes": 3}, "cannot exceed cores"),
        ({"walltime": 3600}, "walltime must be"),
        ({"memory": "lots"}, "memory must be like"),
        ({"adapt_min": 1}, "give both adapt_min and adapt_max"),
        ({"adapt_min": 3, "adapt_max": 2}, "adapt_min <= adapt_max"),
        ({"partition": "gpu"}, r"unknown key\(s\) \['partition'\]"),
    ],
)
def test_bad_specs_name_the_problem(settings, message):
    with pytest.raises(ConfigError, match=message):
        ClusterSpec.from_dict(settings)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read cluster config"):
        load_cluster_spec(tmp_path / "nope.yaml")


def test_importing_jobqueue_through_scopefx_writes_nothing_home(tmp_path):
    pytest.importorskip("dask_jobqueue")
    code = (
        "import sys, scopefx.cluster as c; assert 'dask_jobqueue' not in sys.modules; "
        "c._jobqueue(); assert 'dask_jobqueue' in sys.modules; print('ok')"
    )
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
    assert list(tmp_path.iterdir()) == []  # no ~/.config/dask/jobqueue.yaml


@pytest.mark.parametrize("kind", ["slurm", "pbs"])
def test_job_scripts_carry_the_settings(kind, tmp_path):
    pytest.importorskip("dask_jobqueue")
    from scopefx.cluster import _make

    spec = ClusterSpec(
        kind=kind, cores=4, processes=2, memory="8GiB", walltime="00:20:00", queue="gpu",
        account="lab42", gpus=2, job_extra_directives=("--constraint=a100",) if kind == "slurm"
        else ("-l filesystems=home:eagle",), job_script_prologue=("source /opt/venv/bin/activate",),
        log_directory=str(tmp_path),
    )  # fmt: skip
    cluster = _make(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "source /opt/venv/bin/activate" in script and "--nworkers 2" in script
    if kind == "slurm":
        for line in ("-p gpu", "-A lab42", "-t 00:20:00", "--gpus=2", "--constraint=a100"):
            assert f"#SBATCH {line}" in script, line
    else:
        for line in ("-q gpu", "-A lab42", "walltime=00:20:00", "ngpus=2", "filesystems=home"):
            assert line in script, line


def test_cli_fuse_on_a_local_cluster_equals_threads(tiles, tmp_path):
    (tmp_path / "local.yaml").write_text("kind: local\ncores: 2\nprocesses: 2\nmemory: 1GiB\n")
    fuse(tiles, tmp_path / "threads.ome.zarr", params=FusionParams(chunk_px=64))
    out = io.StringIO()
    args = ["fuse", str(tiles), "-o", str(tmp_path / "cluster.ome.zarr"), "--chunk", "64"]
    assert main([*args, "--cluster", str(tmp_path / "local.yaml"), "-q"], out=out) == 0
    assert "chunks written" in out.getvalue()
    _equal(tmp_path / "threads.ome.zarr", tmp_path / "cluster.ome.zarr")


def test_the_account_of_a_shared_cluster_config_is_the_users_own(tmp_path):
    """A facility endpoint shares one cluster config among its users: the account in it
    charged everyone's dask jobs to one account. SCOPEFX_CLUSTER_ACCOUNT (the facility
    template sets each user's) replaces it; anything but an account name is refused."""
    from scopefx.cluster import cluster_from_env

    (tmp_path / "slurm.yaml").write_text(
        "kind: slurm\ncores: 4\nmemory: 8GiB\nwalltime: '01:00:00'\naccount: facility\n"
    )
    env = {"SCOPEFX_CLUSTER": str(tmp_path / "slurm.yaml")}
    assert cluster_from_env(env).account == "facility"
    assert cluster_from_env({**env, "SCOPEFX_CLUSTER_ACCOUNT": "mic-042"}).account == "mic-042"
    for bad in ("a b", "x;rm -rf ~", "-x", "a" * 65, "acct\n#SBATCH --qos=high"):
        with pytest.raises(ConfigError, match="SCOPEFX_CLUSTER_ACCOUNT must be"):
            cluster_from_env({**env, "SCOPEFX_CLUSTER_ACCOUNT": bad})
    assert cluster_from_env({"SCOPEFX_CLUSTER_ACCOUNT": "mic-042"}) is None  # no config


def test_remote_fuse_mosaic_uses_the_endpoint_cluster(tiles, tmp_path, monkeypatch):
    from scopefx.remote import functions

    (tmp_path / "local.yaml").write_text("kind: local\ncores: 2\nprocesses: 2\nmemory: 1GiB\n")
    monkeypatch.setenv("SCOPEFX_CLUSTER", str(tmp_path / "local.yaml"))
    job = {"tiles": str(tiles), "params": {"chunk_px": 64}}
    small = functions.fuse_mosaic({**job, "output": str(tmp_path / "small.ome.zarr")})
    assert small["cluster"] is None  # fewer chunks than SCOPEFX_CLUSTER_MIN_CHUNKS
    monkeypatch.setenv("SCOPEFX_CLUSTER_MIN_CHUNKS", "4")
    big = functions.fuse_mosaic({**job, "output": str(tmp_path / "big.ome.zarr")})
    assert big["cluster"] == "local" and big["chunks_written"] == small["chunks_written"]
    _equal(tmp_path / "small.ome.zarr", tmp_path / "big.ome.zarr")
    monkeypatch.delenv("SCOPEFX_CLUSTER")
    with pytest.raises(ConfigError, match="sets no SCOPEFX_CLUSTER"):
        functions.fuse_mosaic({**job, "output": str(tmp_path / "x.ome.zarr"), "cluster": True})


def test_open_cluster_closes_on_error(tmp_path):
    spec = ClusterSpec(kind="local", cores=1, memory="512MiB")
    clients = []
    with pytest.raises(RuntimeError, match="inside the block"), open_cluster(spec) as client:
        clients.append(client)
        raise RuntimeError("inside the block")
    assert clients[0].status == "closed"


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).resolve().parents[1] / "endpoints").glob("*/cluster-*.yaml")),
    ids=lambda p: p.parent.name,
)
def test_shipped_cluster_configs_make_job_scripts(path, tmp_path):
    pytest.importorskip("dask_jobqueue")
    from scopefx.cluster import _make

    spec = load_cluster_spec(path)
    assert spec.kind in ("slurm", "pbs") and spec.adapt_max is not None
    # no such NIC here; logs in tmp_path, not in the home folder
    cluster = _make(dataclasses.replace(spec, interface=None, log_directory=str(tmp_path)))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert spec.job_script_prologue[-1] in script


def _malloc_trim() -> str | None:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_workers_keep_the_default_malloc(tmp_path):
    """distributed's nanny would set MALLOC_TRIM_THRESHOLD_=65536 (2.2x slower chunks)."""
    with open_cluster(ClusterSpec(kind="local", cores=1, memory="512MiB")) as client:
        assert set(client.run(_malloc_trim).values()) == {None}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"memory": "64"}, r"memory must be like '16GiB' \(a number and a unit\), got '64'"),
        ({"memory": 64}, r"memory must be like '16GiB'"),
        ({"start_timeout_s": -5}, r"start_timeout_s must be a number of seconds > 0, got -5"),
        ({"start_timeout_s": "soon"}, r"start_timeout_s must be a number of seconds > 0"),
        ({"adapt_min": 0, "adapt_max": 0}, r"adapt_max >= 1, got 0 and 0"),
        ({"adapt_min": 0.5, "adapt_max": 2.5}, r"adapt_min and adapt_max must be whole numbers"),
        ({"gpus": True}, r"gpus must be an integer >= 0, got True"),
        ({"walltime": "99:99"}, r"walltime must be HH:MM:SS"),
    ],
    ids=["memory-no-unit", "memory-number", "timeout-negative", "timeout-text", "adapt-max-0",
         "adapt-fraction", "gpus-bool", "walltime-99:99"],
)  # fmt: skip
def test_values_the_docs_refuse_are_refused_by_key(settings, message):
    """docs/scaleout.md: values out of range are refused with the key's name (``memory: "64"``
    used to reach dask-jobqueue, which failed with a bare TypeError)."""
    with pytest.raises(ConfigError, match=message):
        ClusterSpec.from_dict({"kind": "slurm", **settings})


@pytest.mark.parametrize(
    ("kind", "accepted", "refused"),
    [
        (
            "slurm",
            ["00:01:00", "1:00:00", "48:00:00", "1-12:00:00"],
            ["02:00", "1-02:00", "01:60:00", "00:00:60", "1-24:00:00", "00:00:00", "00:00:59"],
        ),
        ("pbs", ["00:01:00", "100:00:00"], ["02:00", "1-00:00:00", "01:00:99", "00:00:00"]),
    ],
)
def test_walltime_takes_only_unambiguous_forms(kind, accepted, refused):
    """sbatch and qsub read HH:MM as minutes:seconds, PBS has no day field, and SLURM reads a
    zero limit as none: only HH:MM:SS (and D-HH:MM:SS on SLURM) of at least a minute pass."""
    for walltime in accepted:
        assert ClusterSpec(kind=kind, walltime=walltime).walltime == walltime
    for walltime in refused:
        with pytest.raises(ConfigError, match="walltime must be") as refusal:
            ClusterSpec(kind=kind, walltime=walltime)
        text = str(refusal.value)
        assert repr(walltime) in text and "HH:MM:SS" in text, text
        assert "HH:MM[" not in text and ("D-HH" in text) == (kind == "slurm"), text


def test_pbs_job_with_gpus_still_asks_for_its_memory(tmp_path):
    """A resource_spec replaces dask-jobqueue's select=...:mem=...; the memory must stay."""
    pytest.importorskip("dask_jobqueue")
    from scopefx.cluster import _make

    spec = ClusterSpec(
        kind="pbs", cores=32, processes=4, memory="480GiB", gpus=4, log_directory=str(tmp_path)
    )
    cluster = _make(spec)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#PBS -l select=1:ncpus=32:ngpus=4:mem=480GB" in script.splitlines()
    assert "--memory-limit 120.00GiB" in script  # what each of the 4 workers assumes


def _memory_limit(dask_worker) -> int:
    return dask_worker.memory_manager.memory_limit


def test_local_memory_is_per_job_like_on_slurm():
    """``memory`` is per job, shared by its processes (docs/scaleout.md), locally as in a
    dask-jobqueue job: 2 processes of a 1GiB job get 512MiB each, not 1GiB each."""
    from dask.utils import parse_bytes

    spec = ClusterSpec(kind="local", cores=2, processes=2, memory="1GiB")
    with open_cluster(spec) as client:
        limits = sorted(client.run(_memory_limit).values())
    assert limits == [parse_bytes("512MiB")] * 2
