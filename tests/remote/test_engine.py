"""The suite inside globus-compute-endpoint's real GlobusComputeEngine: Parsl's interchange
and real worker processes on a LocalProvider, tasks packed as the service delivers them
(:class:`scopefx.remote.EngineExecutor`). Only the Globus web service is left out."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

pytest.importorskip("globus_compute_endpoint")

import scopefx as scopefx_module
from scopefx import Client, FusionParams, fuse
from scopefx.errors import ConfigError, RemoteTaskError
from scopefx.remote import EngineExecutor, functions

pytestmark = pytest.mark.endpoint


@pytest.fixture(scope="module")
def engine(data_root):
    """One engine for the module: 2 workers, data roots set through worker_init."""
    env = {"SCOPEFX_DATA_ROOTS": str(data_root), "SCOPEFX_OUTPUT_ROOTS": str(data_root)}
    ex = EngineExecutor(2, env=env)
    try:
        ex.submit(functions.endpoint_info).result(timeout=120)  # workers up
        yield ex
    finally:
        ex.shutdown()


def test_endpoint_info_from_the_workers(engine, data_root):
    info = engine.submit(functions.endpoint_info).result(timeout=60)
    assert info["data_roots"] == [str(data_root)]  # set by the provider's worker_init
    assert info["backend"] == "numpy"


def test_batch_in_the_engine_equals_the_local_result(engine, data_root, section_refs, monkeypatch):
    refs = [*section_refs, "run1/corrupt.tif", "../outside/secret.tif", "/etc/passwd"]
    remote = engine.submit(functions.score_focus, refs).result(timeout=120)
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data_root))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(data_root))
    local = functions.score_focus(refs)
    assert [r["ref"] for r in remote] == refs
    assert [r["status"] for r in remote] == [r["status"] for r in local]
    assert [r["status"] for r in remote[-3:]] == ["corrupt", "denied", "denied"]
    assert [r["features"] for r in remote] == [r["features"] for r in local]
    for a, b in zip(remote, local, strict=True):
        if a["status"] == "ok":
            np.testing.assert_allclose(a["focus_map"], b["focus_map"])


def test_a_function_error_comes_back_as_the_endpoints_traceback(engine):
    future = engine.submit(functions.score_focus, ["x.tif"], {"no_such_param": 1})
    with pytest.raises(RemoteTaskError, match=r"ConfigError.*unknown focus parameter") as info:
        future.result(timeout=60)
    # the scopefx error it ends in, as the command line answers it (exit 2, its message)
    cls, message = info.value.cause()
    assert cls is ConfigError and message.startswith("unknown focus parameter")
    assert "Traceback" not in message


def test_client_end_to_end_over_the_engine(engine, data_root, section_refs, monkeypatch):
    refs = [*section_refs, "run1/corrupt.tif"]
    with Client(engine, batch_size=4, progress=False) as client:
        remote = client.score_focus(refs)
    monkeypatch.chdir(data_root)
    with Client(progress=False) as client:  # the embedded local default
        local = client.score_focus(refs)
    assert [r.path for r in remote] == refs
    assert [r.features for r in remote] == [r.features for r in local]
    assert [r.verdict for r in remote] == [r.verdict for r in local]
    assert remote[-1].status == "corrupt"
    flagged = [i for i, r in enumerate(remote) if r.verdict == "out_of_focus"]
    assert flagged == [5, 9]


def test_worker_killed_mid_batch_is_retried_to_a_complete_result(
    engine, section_refs, caplog, data_root, monkeypatch
):
    import psutil

    refs = section_refs * 40  # 480 references in tasks of 40: a few seconds of work
    killed: list[int] = []

    def kill_a_busy_worker() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in engine.worker_pids():
                with contextlib.suppress(psutil.Error):
                    # running a task now (a busy worker of a loaded 2-core machine shows
                    # 30-50 %; killing an idle one loses no task and fails the retry check)
                    if psutil.Process(pid).cpu_percent(0.3) >= 10:
                        psutil.Process(pid).kill()
                        killed.append(pid)
                        return

    killer = threading.Thread(target=kill_a_busy_worker)
    caplog.set_level(logging.WARNING, logger="scopefx.remote.client")
    with Client(engine, batch_size=40, max_retries=3, progress=False) as client:
        killer.start()
        records = client.score_focus(refs)
    killer.join()
    assert killed, "no busy worker was found to kill"
    assert any("retry" in r.message or "two tasks" in r.message for r in caplog.records)
    assert [r.status for r in records] == ["ok"] * len(refs)
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data_root))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(data_root))
    expected = [i["features"] for i in functions.score_focus(section_refs)] * 40
    assert [r.features for r in records] == expected


def test_fan_out_fusion_over_the_engine_equals_local_fuse(engine, data_root, tmp_path):
    with Client(engine, progress=False) as client:
        summary = client.fuse(
            "mosaic/tiles.csv", "out/engine.ome.zarr", regions=4, params=FusionParams(chunk_px=64)
        )
    assert summary.extra["output"] == "out/engine.ome.zarr" and summary.n_tiles == 9

    local = fuse(
        data_root / "mosaic" / "tiles.csv",
        tmp_path / "local.ome.zarr",
        params=FusionParams(chunk_px=64),
    )
    assert summary.shape == local.shape and summary.levels == local.levels
    a = zarr.open_group(str(data_root / "out" / "engine.ome.zarr"), mode="r")
    b = zarr.open_group(str(tmp_path / "local.ome.zarr"), mode="r")
    for level in range(local.levels):
        np.testing.assert_array_equal(a[str(level)][...], b[str(level)][...])


def test_fuse_mosaic_in_the_engine_refuses_then_writes(engine, data_root):
    job = {"tiles": "mosaic/tiles.csv", "output": "out/whole.ome.zarr"}
    summary = engine.submit(functions.fuse_mosaic, job).result(timeout=120)
    assert summary["output"] == "out/whole.ome.zarr" and summary["chunks_written"] >= 1
    assert (data_root / "out" / "whole.ome.zarr" / "0").is_dir()
    # the same output again, without resume: the endpoint's ConfigError comes back whole
    with pytest.raises(RemoteTaskError, match=r"exists .*pass --resume"):
        engine.submit(functions.fuse_mosaic, job).result(timeout=120)
    escape = {"tiles": "mosaic/tiles.csv", "output": "/tmp/escape.ome.zarr"}
    with pytest.raises(RemoteTaskError, match="AccessDeniedError"):
        engine.submit(functions.fuse_mosaic, escape).result(timeout=120)


def test_a_result_over_the_size_limit_is_split_not_lost(engine, data_root, caplog):
    """256 records with 4,096-cell focus maps are about 13 MB, over the endpoint's 10 MiB
    result limit (``MaxResultSizeExceeded``, raised by the engine itself): the client sends
    the batch again as two halves, and every record comes back equal to the local result.

    The size is the focus maps' (``cell_px``); 4 scales instead of 16 only make each of the
    384 scorings (256, then 2 x 128) take half the time."""
    import os

    from scopefx.samples import write_defocus_series

    big = data_root / "big"
    if not big.exists():
        write_defocus_series(big, [0.0, 4.0], size=512, seed=5)
        for i in range(256):
            os.link(big / f"section_{i % 2:04d}.tif", big / f"ref_{i:04d}.tif")
    refs = [f"big/ref_{i:04d}.tif" for i in range(256)]
    with (
        Client(engine, batch_size=256, progress=False) as client,
        caplog.at_level(logging.WARNING, logger="scopefx.remote.client"),
    ):
        records = client.score_focus(refs, cell_px=8, n_scales=4)
    assert "over the size limit" in caplog.text
    assert [r.status for r in records] == ["ok"] * 256
    assert records[0].focus_map.size == 4096
    assert {r.features for r in records[0::2]} == {records[0].features}
    assert records[1].features < records[0].features  # the defocused one


def test_engine_starts_without_its_environment_on_path(monkeypatch, tmp_path):
    """A Jupyter kernel registered from a venv runs that venv's python without its bin/ on
    PATH: the engine must not need ``globus-compute-endpoint`` there (notebook 03)."""
    import shutil
    import sys

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert shutil.which("globus-compute-endpoint") is None
    src = str(Path(scopefx_module.__file__).resolve().parents[1])
    ex = EngineExecutor(workers=1, env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    try:
        info = ex.submit(functions.endpoint_info).result(timeout=120)
    finally:
        ex.shutdown()
    assert info["scopefx"] == scopefx_module.__version__
    assert sys.executable in " ".join(ex.engine.executor.interchange_launch_cmd)


class _DyingEngine(EngineExecutor):
    """The real engine, whose score_focus tasks run ``tests/remote/_dies_on.py``: a batch
    holding one named reference kills its worker process (``os._exit``) mid-task."""

    def submit(self, fn, /, *args, **kwargs):
        if getattr(fn, "__name__", "") == "score_focus":
            import _dies_on

            fn = _dies_on.score_focus
        return super().submit(fn, *args, **kwargs)


#: When the crashing-image test's client counts an unanswered task lost: twice the engine's
#: GC_TASK_TIMEOUT (no task runs longer), short of the engine's own 20 + 60 s.
LOST_AFTER_S = 40


@pytest.fixture(scope="module")
def dying_engine(data_root):
    src = str(Path(scopefx_module.__file__).resolve().parents[1])
    here = str(Path(__file__).resolve().parent)
    env = {
        "SCOPEFX_DATA_ROOTS": str(data_root),
        "SCOPEFX_OUTPUT_ROOTS": str(data_root),
        "PYTHONPATH": f"{src}:{here}",
        "SCOPEFX_TEST_DIES_ON": "run1/section_0005.tif",
        # bounds every task, so a task unanswered for longer than LOST_AFTER_S is lost
        "GC_TASK_TIMEOUT": "20",
    }
    ex = _DyingEngine(2, env=env)
    try:
        ex.submit(functions.endpoint_info).result(timeout=120)  # workers up
        yield ex
    finally:
        ex.shutdown()


def test_an_image_that_kills_its_worker_costs_only_itself(
    dying_engine, data_root, section_refs, caplog, monkeypatch
):
    """One batch of 12 whose 6th reference kills the worker process every time it is run:
    the client splits the failed batch in halves until that reference is alone, so it alone
    ends ``failed`` with a message naming it, and the 11 others get the local result.

    A worker that dies right after finishing a task may lose that task's result (Parsl's
    worker pool writes results from a background thread); the client then counts the task
    lost after ``lost_after_s`` with nothing answered and sends it again, where it used to
    wait forever. The engine's limit (``GC_TASK_TIMEOUT`` + 60 s) is checked; the client here
    waits ``LOST_AFTER_S``, still longer than any task may run."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))  # _dies_on, here too
    monkeypatch.setattr("scopefx.remote._failures._sleep", lambda s: None)
    bad = "run1/section_0005.tif"
    caplog.set_level(logging.WARNING, logger="scopefx.remote.client")
    assert dying_engine.lost_after_s == 20 + 60  # GC_TASK_TIMEOUT plus a minute
    with Client(
        dying_engine, batch_size=12, max_retries=1, lost_after_s=LOST_AFTER_S, progress=False
    ) as client:
        records = client.score_focus(section_refs)
    assert [r.path for r in records] == section_refs
    assert [r.status for r in records] == ["ok"] * 5 + ["failed"] + ["ok"] * 6
    # Alone, the crashing reference ends one of two ways: the engine reports its worker lost,
    # or (Parsl's lost-result race, docs/security.md) the loss itself goes unreported and the
    # client gives up on it after its resends; both name it, and no other item pays.
    error = records[5].error
    if error.startswith(f"{bad!r} failed on its own after "):
        assert "WorkerLost" in error or "ManagerLost" in error
    else:
        assert error.startswith(f"{bad!r} not scored: its task was not answered in ")
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data_root))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(data_root))
    expected = [i["features"] for i in functions.score_focus(section_refs)]
    assert [r.features for i, r in enumerate(records) if i != 5] == expected[:5] + expected[6:]
    splits = [r.message for r in caplog.records if "isolate the failing one" in r.message]
    # 12 -> 6 -> 3 -> 2 -> 1: four splits on the way to the bad reference, none elsewhere
    assert len(splits) == 4, splits
    # once alone, it ran 1 + max_retries times at most, engine attempts included
    lost = sum("not answered" in r.message for r in caplog.records)
    print(f"\n{records[5].error.splitlines()[0][:160]}; tasks never answered, sent again: {lost}")


def _pool_processes(engine):
    """The worker pool (process_worker_pool) of ``engine`` and every process under it."""
    import psutil

    procs = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "process_worker_pool" in cmd and engine.run_dir in cmd:
            with contextlib.suppress(psutil.Error):
                procs.extend([proc, *proc.children(recursive=True)])
    return procs


def test_a_lost_worker_pool_is_replaced_and_later_tasks_run(data_root, section_refs, caplog):
    """Every process of the engine's worker pool killed mid-batch (what the OOM killer or a
    lost node does): the tasks in flight fail as a whole, the client sends them again in
    halves, the engine replaces its block, and every reference is answered exactly once,
    with its result. The same client then runs later tasks on the new pool."""
    import psutil

    env = {"SCOPEFX_DATA_ROOTS": str(data_root), "SCOPEFX_OUTPUT_ROOTS": str(data_root)}
    engine = EngineExecutor(2, env=env)
    refs = section_refs * 40  # 480 references in tasks of 10
    killed: list[int] = []

    def kill_the_pool_when_busy() -> None:
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            for pid in engine.worker_pids():
                with contextlib.suppress(psutil.Error):
                    # running a task now (a busy worker of a loaded 2-core machine shows
                    # 30-50 %; killing an idle one loses no task and fails the retry check)
                    if psutil.Process(pid).cpu_percent(0.3) >= 10:
                        procs = _pool_processes(engine)
                        for proc in procs:
                            with contextlib.suppress(psutil.Error):
                                proc.kill()
                        killed.extend(proc.pid for proc in procs)
                        return

    caplog.set_level(logging.WARNING, logger="scopefx.remote.client")
    try:
        engine.submit(functions.endpoint_info).result(timeout=120)
        killer = threading.Thread(target=kill_the_pool_when_busy)
        with Client(engine, batch_size=10, max_retries=2, progress=False) as client:
            client.info()  # the version check done: the kill lands in the batch
            killer.start()
            records = client.score_focus(refs)
            killer.join()
            later = client.score_focus(section_refs)
        replaced = engine.worker_pids()
    finally:
        engine.shutdown()
    assert len(killed) >= 3, killed  # the pool and its two workers at least
    assert [r.path for r in records] == refs  # each reference answered once, in order
    assert [r.status for r in records] == ["ok"] * len(refs), {r.error for r in records}
    assert any("as two tasks" in r.message for r in caplog.records)  # tasks were lost
    assert [r.status for r in later] == ["ok"] * len(section_refs)
    assert replaced and not set(replaced) & set(killed)  # a new pool runs them
    expected = [r.features for r in later]
    assert [r.features for r in records] == expected * 40
    print(f"\nkilled {len(killed)} processes of the pool; {len(refs)} references all scored")


def test_an_engine_that_stopped_is_a_clear_error_not_a_retry_storm(monkeypatch):
    """Where the engine does give up after a lost pool (Parsl's default block error handler:
    ``BadStateException`` for every task), the client says so per item and does not resend."""
    from scopefx.remote import _failures as failures_module
    from scopefx.remote.client import is_transient

    sent: list[int] = []

    class Stopped(cf.Executor):
        def submit(self, fn, /, *args, **kwargs):
            sent.append(len(args[0]) if args else 0)
            future: cf.Future = cf.Future()
            future.set_exception(RemoteTaskError(
                "parsl.executors.errors.BadStateException: Executor GlobusComputeEngine "
                "failed due to: Error 1: EXIT CODE: 137"))  # fmt: skip
            return future

    monkeypatch.setattr(failures_module, "_sleep", lambda s: None)
    assert not is_transient(RemoteTaskError("BadStateException: Executor failed"))
    with Client(Stopped(), batch_size=8, max_retries=2, check_version=False,
                progress=False) as client:  # fmt: skip
        records = client.score_focus([f"run1/section_{i:04d}.tif" for i in range(8)])
    assert sent == [8]  # one task, not split or resent
    assert {r.status for r in records} == {"failed"}
    assert "endpoint is restarted" in records[0].error
