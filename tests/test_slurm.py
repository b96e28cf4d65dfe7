"""Scale-out on a real single-node SLURM (tools/slurm/slurm.sh): dask-jobqueue workers as
batch jobs, an endpoint engine on Parsl's SlurmProvider, lost workers and killed jobs."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from scopefx import FusionParams, fuse
from scopefx.cli import main

# one SLURM for the machine: its tests clear the whole queue, so under pytest -n they run on
# one worker (--dist loadgroup), not beside each other
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]
pytest.importorskip("dask_jobqueue")


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from scopefx.samples import make_mosaic, write_mosaic

    folder = tmp_path_factory.mktemp("slurm-tiles")
    return write_mosaic(folder, make_mosaic(grid=(5, 5), tile_px=256, jitter_px=1.0))


@pytest.fixture(scope="module")
def reference(tiles, tmp_path_factory):
    """The mosaic fused locally with threads: what every cluster run must equal."""
    out = tmp_path_factory.mktemp("slurm-ref") / "threads.ome.zarr"
    fuse(tiles, out, params=FusionParams(chunk_px=64))
    return out


def _slurm_yaml(tmp_path: Path, jobs: int = 1) -> Path:
    path = tmp_path / "slurm.yaml"
    path.write_text(
        f"kind: slurm\ncores: 1\nprocesses: 1\nmemory: 1GiB\nwalltime: '00:10:00'\n"
        f"queue: debug\njobs: {jobs}\nstart_timeout_s: 120\n"
        f"local_directory: {tmp_path / 'dask'}\nlog_directory: {tmp_path / 'logs'}\n"
    )
    return path


def _equal(a: Path, b: Path) -> None:
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    keys = sorted(ga.array_keys())
    assert keys == sorted(gb.array_keys()) and keys
    for key in keys:
        np.testing.assert_array_equal(ga[key][...], gb[key][...])


def _queue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture
def no_leaked_jobs(slurm):
    yield
    deadline = time.monotonic() + 30
    while _queue() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = _queue()
    if left:
        subprocess.run(["scancel", "--user", os.environ.get("USER", "root")])
    assert not left, f"jobs left in the queue: {left}"


def test_cli_fuse_on_slurm_equals_local(tiles, reference, tmp_path, no_leaked_jobs):
    out = io.StringIO()
    args = ["fuse", str(tiles), "-o", str(tmp_path / "slurm.ome.zarr"), "--chunk", "64", "-q"]
    assert main([*args, "--cluster", str(_slurm_yaml(tmp_path, jobs=2))], out=out) == 0
    _equal(reference, tmp_path / "slurm.ome.zarr")
    assert list((tmp_path / "logs").glob("*.err"))  # the workers really ran as batch jobs


def test_worker_killed_mid_fusion_is_rescheduled(tiles, reference, tmp_path, no_leaked_jobs):
    from scopefx.cluster import open_cluster

    spec = _slurm_yaml(tmp_path, jobs=2)
    out = tmp_path / "killed.ome.zarr"
    done = out / ".scopefx" / "done" / "0"
    with open_cluster(spec) as client:
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)  # worker address -> pid (on this single node)
        trims = client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_"))
        assert set(trims.values()) == {None}  # glibc's default malloc, not the nanny's
        victim = sorted(pids.values())[0]

        def kill_when_started() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if done.is_dir() and len(list(done.iterdir())) >= 5:
                    os.kill(victim, signal.SIGKILL)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        result = fuse(tiles, out, params=FusionParams(chunk_px=64), scheduler=client)
        killer.join()
    assert not Path(f"/proc/{victim}").exists()
    assert result.chunks_written > 0
    _equal(reference, out)


def test_killed_job_resumes_byte_identically(tiles, reference, tmp_path, no_leaked_jobs):
    spec = _slurm_yaml(tmp_path, jobs=1)
    out = tmp_path / "resumed.ome.zarr"
    done = out / ".scopefx" / "done" / "0"
    cmd = [sys.executable, "-m", "scopefx", "fuse", str(tiles), "-o", str(out), "--chunk", "64",
           "-q", "--cluster", str(spec)]  # fmt: skip
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if done.is_dir() and len(list(done.iterdir())) >= 10:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the fusion finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: client, scheduler, everything
    proc.wait()
    subprocess.run(["scancel", "--user", os.environ.get("USER", "root")])  # as a walltime would
    # scancel returns before the workers have stopped: one finishing a chunk then marked it
    # after the markers were listed (13 done on resume against 12 listed). Count once the
    # jobs have left the queue (a job is listed until its processes are gone).
    deadline = time.monotonic() + 60
    while _queue() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _queue(), f"jobs still in the queue after scancel: {_queue()}"
    names = [p.name for p in done.iterdir()]
    # a marker being written when the job was killed is left as its temporary (.NAME.UUID.partial,
    # which a resume ignores: only a complete marker says a chunk is done)
    marked = sorted(n for n in names if not n.startswith("."))
    assert all(n.startswith(".") and n.endswith(".partial") for n in names if n not in marked)
    ref0 = zarr.open_array(str(reference / "0"), mode="r")
    assert 10 <= len(marked) < ref0.nchunks  # killed part-way through level 0
    # every chunk marked done is durable and final: it equals the clean run's chunk
    got0 = zarr.open_array(str(out / "0"), mode="r")
    for name in marked:
        i, j = (int(v) for v in name.split("."))
        block = (slice(i * 64, (i + 1) * 64), slice(j * 64, (j + 1) * 64))
        np.testing.assert_array_equal(got0[block], ref0[block])
    text = io.StringIO()
    args = ["fuse", str(tiles), "-o", str(out), "--chunk", "64", "-q", "--resume"]
    assert main([*args, "--cluster", str(spec)], out=text) == 0
    assert f"{len(marked)} already done" in text.getvalue()
    _equal(reference, out)
    for level in ("0", "1"):  # byte-identical files, not just equal pixels
        for chunk in (reference / level).rglob("*"):
            if chunk.is_file() and not chunk.name.startswith("."):
                assert (
                    chunk.read_bytes()
                    == (out / level / chunk.relative_to(reference / level)).read_bytes()
                )


def test_fuse_mosaic_in_an_engine_on_the_slurm_provider(tiles, reference, tmp_path, no_leaked_jobs):
    """The shape of an HPC endpoint: GlobusComputeEngine whose blocks are SLURM jobs."""
    pytest.importorskip("globus_compute_endpoint")
    from parsl.launchers import SimpleLauncher
    from parsl.providers import SlurmProvider

    from scopefx.remote import EngineExecutor, functions

    root = tiles.parent
    provider = SlurmProvider(
        partition="debug",
        nodes_per_block=1,
        init_blocks=1,
        min_blocks=0,
        max_blocks=1,
        walltime="00:10:00",
        exclusive=False,
        launcher=SimpleLauncher(),
        worker_init=f"export SCOPEFX_DATA_ROOTS={root}:{tmp_path} SCOPEFX_OUTPUT_ROOTS={tmp_path}",
    )
    engine = EngineExecutor(1, provider=provider, run_dir=tmp_path / "engine")
    try:
        info = engine.submit(functions.endpoint_info).result(timeout=180)
        assert info["data_roots"] == [str(root), str(tmp_path)]
        job = {
            "tiles": "tiles.csv",
            "output": f"{tmp_path}/hpc.ome.zarr",
            "params": {"chunk_px": 64},
        }
        summary = engine.submit(functions.fuse_mosaic, job).result(timeout=300)
    finally:
        engine.shutdown()
        with contextlib.suppress(Exception):
            subprocess.run(["scancel", "--user", os.environ.get("USER", "root")])
    assert summary["n_tiles"] == 25
    _equal(reference, tmp_path / "hpc.ome.zarr")
