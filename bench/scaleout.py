"""Scale-out benchmark: the 16k mosaic on local threads and on 1 and 2 SLURM worker jobs.

What it runs
------------
The ``16k`` case of ``bench/fusion.py`` (16 x 16 tiles of 1024^2 uint16, 10 % overlap,
sub-pixel jitter; its ``make_tiles``, so the same tiles), fused by
``scopefx.fuse(tiles.csv, out, params=FusionParams(chunk_px=1024), workers=2, scheduler=...)``
into OME-Zarr with a pyramid (225 + 64 + 16 + 4 + 1 = 310 chunk tasks in 5 compute calls, one
per level), in these configurations:

* ``threads`` (the peer): ``scheduler=None``, dask's threaded scheduler with 2 threads, in a
  fresh process (as ``bench/fusion.py`` runs ``scopefx fuse``).
* ``slurm-JxC``: ``J`` SLURM batch jobs of ``C`` cores each (one dask worker process with ``C``
  threads per job), started by ``scopefx.cluster.open_cluster(ClusterSpec(kind="slurm", ...))``
  on the single-node SLURM of ``tools/slurm/slurm.sh`` (2 CPUs); the scheduler runs in this
  process, as it does for ``scopefx fuse --cluster``. ``slurm-1x1``: one core, the scaling
  reference; ``slurm-1x2``: one worker with the peer's 2 threads; ``slurm-2x1``: two workers
  of one core, the scale-out path; ``slurm-2x1-libc``: the same with glibc's default malloc
  settings in the workers. distributed's nanny starts every worker with
  ``MALLOC_TRIM_THRESHOLD_=65536`` (its ``distributed.nanny.pre-spawn-environ``), which also
  turns off glibc's dynamic mmap threshold: every large array is then a fresh ``mmap`` and
  page faults. The ``-libc`` jobs point ``DASK_CONFIG`` (``job_script_prologue``) at a file
  that unsets it. What each worker got is printed.

Every configuration runs ``--repeats`` times; the tables give the median of each figure over
the repeats (peak memory: the largest). Each SLURM run has a cluster of its own (started,
used once, closed: its jobs cancelled and gone from the queue before the next one starts), so
every run starts, like the peer's, from fresh processes: per-run peak memory, no tile cache
left over, and start-up measured every time. (Restarting the workers between runs instead,
``client.restart()``, failed once here: the worker never came back, its job had been cancelled
from this process, as SpecCluster does with a worker gone for longer than
``distributed.deploy.lost-worker-timeout``, 15 s.)
Before the run the workers import what a chunk task needs (not counted; the first task on a
fresh worker otherwise waits about 0.25 s for ``dask.array``; the peer's imports are not
counted either). The tiles are in the page cache for every run. Unless ``--quick`` the peer
runs once more at the end, to show drift.

Correctness first: the output of every run (every pyramid level, decoded) is hashed and must
equal the peer's first run, byte for byte.

Figures
-------
* **first worker s / all workers s**: from entering ``open_cluster`` (SLURMCluster created,
  jobs submitted) to the first worker joining, and to all of them; **warm s**: the imports
  above. None of it is in the run figures.
* **fuse s**: ``FusionResult.seconds``, the whole ``fuse`` call with the cluster up and warm
  (tile headers, planning, creating the store, every level, the pyramid); **x threads**: that
  over the peer's.
* **in scheduler s** (``W``): the wall time ``fuse`` spends inside the scheduler's ``get``,
  summed over its compute calls. For SLURM the scheduler passed to ``fuse`` is ``client.get``
  wrapped in a timer (dask calls exactly that when given the client); for the peer, the
  ``_start``..``_finish`` of a ``dask.callbacks.Callback``.
* **task s** (``C``): the chunk tasks' compute times, summed: the distributed task stream
  (``distributed.get_task_stream``, the workers' ``compute`` intervals) for SLURM; for the
  peer, ``_pretask``..``_posttask`` of the callback, taken on the scheduling thread
  (submission to result received), so the peer's ``C`` includes the hand-off and its overhead
  is a lower bound. A chunk task fuses one chunk (or downsamples one, for the pyramid), writes
  it, ``fsync``s it and records it done; dask's ``finalize`` task of each call is not one.
* **L0 / pyramid ms/chunk**: mean chunk task time, level 0 and the pyramid levels.
* **overhead ms/chunk** = ``(W - C / k) / n``, ``k`` the worker threads, ``n`` the chunk tasks:
  the wall time per chunk beyond a perfect scheduler keeping all ``k`` slots busy with no
  latency. It is the sum, over the compute calls, of **submit** (the call to its first chunk
  task starting: graph build and submission, first dispatch), **idle** (first task start to
  last task end, less that level's ``C / k``: slots waiting for a task, including the level
  barriers: the last levels have 4 and 1 chunks for ``k`` slots) and **return** (last task end
  to the call returning: ``finalize``, results back), each over ``n``.
* **sched CPU ms/task** (SLURM): CPU time of this process (scheduler and client; the workers
  are other processes) during ``W``, over ``n``. Tasks finishing one by one (as here) cost the
  scheduler more than a saturated scheduler, which batches its messages.
* **KiB sent/task** (SLURM): bytes sent by the machine over every interface (loopback
  included: scheduler, client and workers) during ``W``, over ``n``.
* **peak MiB/worker**: peak RSS (``ru_maxrss``) of each dask worker process, read with
  ``client.run`` after the run; for the peer, the peak RSS of its whole process.

The scheduler alone (on ``slurm-2x1``, after its runs): this process's CPU per second with the
cluster idle, then no-op tasks in one ``map_blocks`` (1024, ``--quick``: 256), the task
function carrying nothing, this mosaic's ``FusionPlan`` or the plan of the 100-node mosaic
below (made from positions: no file), as scopefx's chunk tasks carry their plan: wall,
scheduler CPU and bytes sent per task.

A closing paragraph puts these on a 100-node run on paper: 100 x 100 tiles of 2048^2 with
10 % overlap, 1024^2 chunks (its plan's grid, then halving as the OME-Zarr writer does), on
100 nodes of 32 cores, by the issue's formula (tasks x compute / slots + tasks x overhead per
chunk) and refined (compute in waves of 3,200 per level; the scheduler's per-task CPU and
bytes with the 100-node plan in every task); its assumptions are printed with it.

Run
---
``python bench/scaleout.py`` (the 16k case, 3 repeats, all configurations: about 4 min on the
2-core machine, under 1 of it making the tiles); ``--quick``: the ``4k`` case (8 x 8 tiles of
512^2: 21 chunk tasks), ``slurm-1x2`` and ``slurm-2x1``, one run each, no drift run (about
20 s including the SLURM start; a smoke test). SLURM is started with ``tools/slurm/slurm.sh
start`` when it is not up, and stopped at the end only then; where it is not installed only
the peer runs. After the last cluster is closed none of the jobs this benchmark submitted may
be in ``squeue`` (what ``squeue -h`` then shows is printed). The exit code is 0 whatever the
figures; an output that differs from the peer's or a job left in the queue makes it 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Report, environment_lines, fmt, pass_fail, progress, table  # noqa: E402
from fusion import CASES, OVERLAP, Truth, make_tiles  # noqa: E402

SLURM_SH = HERE.parent / "tools" / "slurm" / "slurm.sh"
CHUNK = 1024
THREADS = 2  # the peer's threads, and the slots of every SLURM configuration but slurm-1x1
#: (jobs, cores per job, workers with glibc's default malloc settings)
CONFIGS = {
    "slurm-1x1": (1, 1, False),
    "slurm-1x2": (1, 2, False),
    "slurm-2x1": (2, 1, False),
    "slurm-2x1-libc": (2, 1, True),
}
#: distributed's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 (its config
#: ``distributed.nanny.pre-spawn-environ``); the ``-libc`` configuration unsets it.
LIBC_YAML = "distributed:\n  nanny:\n    pre-spawn-environ:\n      MALLOC_TRIM_THRESHOLD_: null\n"
# The 100-node run on paper (docs/scaleout.md): 100 x 100 tiles of 2048^2, 10 % overlap,
# 1024^2 chunks, on 100 nodes of 32 cores.
PAPER_GRID, PAPER_TILE, PAPER_NODES, PAPER_CORES = 100, 2048, 100, 32


# --------------------------------------------------------------------------------------------
# one run and its figures


@dataclass
class Run:
    """One ``fuse`` call: its timings (``time.time()``) and what it wrote."""

    fuse_s: float
    windows: list[tuple[float, float]]
    """(start, end) of every compute call inside the scheduler, in order (one per level)."""
    tasks: list[tuple[bool, float, float]]
    """(is a chunk task, start, stop) of every task."""
    slots: int
    chunks_written: int
    digest: str
    peak_mib: list[float]
    window_cpu_s: list[float] = field(default_factory=list)
    """CPU time of this process during each window (SLURM runs: the scheduler and client)."""
    sent_bytes: float = math.nan
    """Bytes the machine sent during the windows (SLURM runs: scheduler, client, workers)."""
    plan: Any = field(default=None, repr=False)
    per_worker: list[int] = field(default_factory=list)

    @property
    def in_scheduler_s(self) -> float:
        return sum(b - a for a, b in self.windows)

    def _calls(self) -> list[list[tuple[float, float]]]:
        """(start, stop) of the chunk tasks of each compute call (the window holding the start)."""
        calls: list[list[tuple[float, float]]] = [[] for _ in self.windows]
        for chunk, start, stop in self.tasks:
            if chunk:
                i = max((j for j, (a, _) in enumerate(self.windows) if a <= start), default=0)
                calls[i].append((start, stop))
        return calls

    @property
    def n(self) -> int:
        return sum(1 for chunk, _, _ in self.tasks if chunk)

    @property
    def task_s(self) -> float:
        return sum(stop - start for chunk, start, stop in self.tasks if chunk)

    def compute_ms(self, level0: bool) -> float:
        calls = self._calls()
        times = [b - a for call in (calls[:1] if level0 else calls[1:]) for a, b in call]
        return 1e3 * statistics.fmean(times) if times else math.nan

    def _parts(self) -> tuple[float, float, float]:
        """(submit, idle, return) seconds summed over the compute calls; with ``C / k`` they
        add up to ``W``."""
        submit = idle = back = 0.0
        for (a, b), call in zip(self.windows, self._calls(), strict=True):
            if not call:
                back += b - a
                continue
            first, last = min(t[0] for t in call), max(t[1] for t in call)
            submit += first - a
            idle += (last - first) - sum(t1 - t0 for t0, t1 in call) / self.slots
            back += b - last
        return submit, idle, back

    def per_chunk_ms(self, part: str) -> float:
        if part == "overhead":
            return 1e3 * (self.in_scheduler_s - self.task_s / self.slots) / self.n
        submit, idle, back = self._parts()
        return 1e3 * {"submit": submit, "idle": idle, "return": back}[part] / self.n

    @property
    def sched_cpu_ms(self) -> float:
        return 1e3 * sum(self.window_cpu_s) / self.n if self.window_cpu_s else math.nan


def is_chunk_task(key: Any) -> bool:
    """Every task of a compute call is a chunk task but dask's ``finalize-...`` (which gathers
    the chunks' statuses) and ``scopefx-plan-...`` (the plan, one graph node every chunk task
    depends on); a one-chunk level runs as ``<name>-finalize-...`` and counts."""
    return not (isinstance(key, str) and key.startswith(("finalize-", "scopefx-plan-")))


def digest(store: Path) -> str:
    """sha256 of every level's decoded pixels, read in bands of chunk rows."""
    import numpy as np
    import zarr

    h = hashlib.sha256()
    level = 0
    while (store / str(level)).is_dir():
        arr = zarr.open_array(str(store / str(level)), mode="r")
        h.update(repr((arr.shape, str(arr.dtype))).encode())
        lead = (slice(None),) * (arr.ndim - 2)
        for y in range(0, arr.shape[-2], CHUNK):
            h.update(np.ascontiguousarray(arr[(*lead, slice(y, y + CHUNK), slice(None))]).data)
        level += 1
    return f"{level} levels, sha256 {h.hexdigest()[:16]}"


# --------------------------------------------------------------------------------------------
# the peer: threads, in a fresh process


def threads_child(csv_path: str, out: str, report: str) -> None:
    """Run in a fresh process by :func:`run_threads`: fuse on threads, write the figures."""
    import resource

    from dask.callbacks import Callback

    from scopefx import FusionParams, fuse

    class Recorder(Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.windows: list[tuple[float, float]] = []
            self.tasks: list[tuple[bool, float, float]] = []
            self.begun: dict[Any, float] = {}
            self.t0 = 0.0

        def _start(self, dsk: Any) -> None:
            self.t0 = time.time()

        def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
            self.begun[key] = time.time()

        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            self.tasks.append((is_chunk_task(key), self.begun.pop(key), time.time()))

        def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
            self.windows.append((self.t0, time.time()))

    with Recorder() as rec:
        result = fuse(csv_path, out, params=FusionParams(chunk_px=CHUNK), workers=THREADS)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {"fuse_s": result.seconds, "windows": rec.windows, "tasks": rec.tasks,
            "chunks_written": result.chunks_written, "peak_mib": peak}  # fmt: skip
    Path(report).write_text(json.dumps(info))


def run_threads(csv_path: Path, out: Path) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    report = out.with_suffix(".json")
    cmd = [sys.executable, __file__, "--threads-child", str(csv_path), str(out), str(report)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the threads run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    info = json.loads(report.read_text())
    run = Run(
        fuse_s=info["fuse_s"],
        windows=[tuple(w) for w in info["windows"]],
        tasks=[tuple(t) for t in info["tasks"]],
        slots=THREADS,
        chunks_written=info["chunks_written"],
        digest=digest(out),
        peak_mib=[info["peak_mib"]],
    )
    shutil.rmtree(out, ignore_errors=True)
    return run


# --------------------------------------------------------------------------------------------
# SLURM


def _warm() -> None:
    """Run on every worker before a run: import what a chunk task needs (the peer has
    imported it all while planning and creating the store, before its first task)."""
    import dask.array  # noqa: F401
    import numcodecs  # noqa: F401
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    import scopefx.fusion
    import scopefx.io  # noqa: F401


def _malloc_env() -> str:
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset")


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bytes_sent() -> int:
    """Bytes sent by this machine over every interface (loopback included) so far."""
    import psutil

    return sum(nic.bytes_sent for nic in psutil.net_io_counters(pernic=True).values())


class TimedGet:
    """``client.get`` (what dask calls when given the client as scheduler), timed: the wall
    time of every call, this process's CPU time and the machine's bytes sent during them."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.windows: list[tuple[float, float]] = []
        self.cpu_s: list[float] = []
        self.sent = 0

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        t0, c0, b0 = time.time(), time.process_time(), bytes_sent()
        try:
            return self.client.get(dsk, keys, **kwargs)
        finally:
            self.windows.append((t0, time.time()))
            self.cpu_s.append(time.process_time() - c0)
            self.sent += bytes_sent() - b0


def run_slurm(client: Any, csv_path: Path, out: Path, slots: int) -> Run:
    from distributed import get_task_stream

    from scopefx import FusionParams, fuse

    shutil.rmtree(out, ignore_errors=True)
    timed = TimedGet(client)
    with get_task_stream(client) as stream:
        result = fuse(
            csv_path, out, params=FusionParams(chunk_px=CHUNK), scheduler=timed, workers=THREADS
        )
    tasks, where = [], {}
    for t in stream.data:
        for ss in t["startstops"]:
            if ss["action"] == "compute":
                tasks.append((is_chunk_task(t["key"]), ss["start"], ss["stop"]))
                if is_chunk_task(t["key"]):
                    where[t["worker"]] = where.get(t["worker"], 0) + 1
    peaks = client.run(_peak_rss_mib)
    run = Run(
        fuse_s=result.seconds,
        windows=timed.windows,
        tasks=tasks,
        slots=slots,
        chunks_written=result.chunks_written,
        digest=digest(out),
        peak_mib=[peaks[w] for w in sorted(peaks)],
        window_cpu_s=timed.cpu_s,
        sent_bytes=timed.sent,
        per_worker=[where[w] for w in sorted(where)],
        plan=result.plan,
    )
    shutil.rmtree(out, ignore_errors=True)
    return run


def _noop(payload: Any, block_info: Any = None) -> Any:
    import numpy as np

    return np.ones((1, 1), dtype=np.int8)


@dataclass
class Probe:
    label: str
    payload_bytes: int
    tasks: int
    wall_ms: float
    cpu_ms: float
    sent_kib: float


def probe_payload(client: Any, payloads: dict[str, Any], n: int) -> tuple[float, list[Probe]]:
    """This process's CPU ms per second with the cluster idle (heartbeats, work stealing...),
    and no-op tasks, one ``map_blocks`` of ``n`` blocks (as scopefx submits chunks), whose
    function carries each payload: wall, scheduler CPU and bytes sent per task."""
    import pickle

    import dask.array as da
    import numpy as np

    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(2.0)
    idle = 1e3 * (time.process_time() - c0) / (time.perf_counter() - t0)
    side = math.isqrt(n)
    rows = []
    for label, payload in payloads.items():
        func = functools.partial(_noop, payload)
        blocks = da.map_blocks(func, chunks=((1,) * side, (1,) * side), dtype=np.int8)
        t0, c0, b0 = time.perf_counter(), time.process_time(), bytes_sent()
        blocks.compute(scheduler=client)
        wall, cpu, sent = time.perf_counter() - t0, time.process_time() - c0, bytes_sent() - b0
        k = side * side
        size = len(pickle.dumps(payload))
        rows.append(Probe(label, size, k, 1e3 * wall / k, 1e3 * cpu / k, sent / k / 1024))
    return idle, rows


def _squeue(*fields: str) -> list[str]:
    done = subprocess.run(["squeue", "-h", *fields], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def wait_queue_empty(job_ids: set[str], timeout: float = 20.0) -> list[str]:
    """Wait until none of ``job_ids`` is in ``squeue``; those still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [j for j in _squeue("-o", "%A") if j.strip() in job_ids]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return probe.returncode == 0 and any(s in probe.stdout for s in ("idle", "mix", "alloc"))


@contextlib.contextmanager
def slurm_session() -> Iterator[tuple[bool, str]]:
    """A running SLURM: the one up, or one started here (and stopped again at the end).
    Yields ``(available, how)``."""
    started, how = False, "already running"
    if not _slurm_up() and shutil.which("slurmctld") is not None:
        t0 = time.perf_counter()
        done = subprocess.run(["bash", str(SLURM_SH), "start"], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            if line.startswith("export SLURM_CONF="):
                os.environ["SLURM_CONF"] = line.split("=", 1)[1].strip().strip("'\"")
        if done.returncode != 0:
            how = f"tools/slurm/slurm.sh start failed: {done.stderr.strip()[-500:]}"
        elif "already running" in done.stderr or "another caller" in done.stderr:
            how = f"already running ({os.environ.get('SLURM_CONF')})"
        else:
            started = True
            how = f"started by this benchmark in {time.perf_counter() - t0:.1f} s"
    if not _slurm_up():
        yield False, how if "failed" in how else "not installed (tools/slurm/slurm.sh install)"
        return
    try:
        yield True, how
    finally:
        if started:
            subprocess.run(["bash", str(SLURM_SH), "stop"], capture_output=True, timeout=120)


@dataclass
class Config:
    name: str
    jobs: int
    cores: int
    libc_malloc: bool = False
    runs: list[Run] = field(default_factory=list)
    first_s: list[float] = field(default_factory=list)
    all_s: list[float] = field(default_factory=list)
    warm_s: list[float] = field(default_factory=list)
    malloc: str = ""
    probes: list[Probe] = field(default_factory=list)
    idle_cpu_ms_s: float = math.nan

    @property
    def slots(self) -> int:
        return self.jobs * self.cores


def run_config(
    cfg: Config, csv_path: Path, work: Path, repeats: int, job_ids: set[str], probe_n: int = 0
) -> None:
    from scopefx.cluster import ClusterSpec, open_cluster

    prologue: tuple[str, ...] = ()
    if cfg.libc_malloc:  # the job script points the worker's dask config at this file
        folder = work / "dask-config-libc"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "distributed.yaml").write_text(LIBC_YAML)
        prologue = (f"export DASK_CONFIG={folder}",)
    spec = ClusterSpec(
        kind="slurm",
        cores=cfg.cores,
        processes=1,
        memory="4GiB",
        walltime="00:30:00",
        jobs=cfg.jobs,
        local_directory=str(work / "dask-local"),
        log_directory=str(work / "slurm-logs"),
        start_timeout_s=120.0,
        job_script_prologue=prologue,
    )
    for r in range(repeats):
        left = wait_queue_empty(job_ids)  # the jobs of the cluster before
        if left:
            raise RuntimeError(f"SLURM jobs {left} still queued after their cluster closed")
        t0 = time.perf_counter()
        with open_cluster(spec) as client:
            cfg.first_s.append(time.perf_counter() - t0)
            job_ids.update(str(job.job_id) for job in client.cluster.workers.values())
            client.wait_for_workers(cfg.jobs, timeout=120)
            cfg.all_s.append(time.perf_counter() - t0)
            cfg.malloc = ", ".join(sorted(set(client.run(_malloc_env).values())))
            t1 = time.perf_counter()
            client.run(_warm)
            cfg.warm_s.append(time.perf_counter() - t1)
            progress(f"[{cfg.name}] run {r + 1}/{repeats} ...")
            cfg.runs.append(run_slurm(client, csv_path, work / f"{cfg.name}.ome.zarr", cfg.slots))
            progress(f"    {cfg.runs[-1].fuse_s:.2f} s, {cfg.runs[-1].digest}")
            if probe_n and r == repeats - 1:
                progress(f"[{cfg.name}] no-op tasks carrying plans ...")
                payloads = {"nothing": None, "this mosaic's plan": cfg.runs[-1].plan,
                            "the 100-node mosaic's plan": paper_plan()}  # fmt: skip
                cfg.idle_cpu_ms_s, cfg.probes = probe_payload(client, payloads, probe_n)
            job_ids.update(str(job.job_id) for job in client.cluster.workers.values())


# --------------------------------------------------------------------------------------------
# the 100-node run on paper


@functools.cache
def paper_plan() -> Any:
    """The plan of the 100-node mosaic: 100 x 100 tiles of 2048^2 on a 10 % overlap grid with
    +-4 px jitter (geometry only: no file is read)."""
    import numpy as np

    from scopefx.fusion import FusionParams, TileTable, make_plan

    step = round(PAPER_TILE * (1 - OVERLAP))
    rng = np.random.default_rng(0)
    pos = [(c * step + rng.uniform(-4, 4), r * step + rng.uniform(-4, 4))
           for r in range(PAPER_GRID) for c in range(PAPER_GRID)]  # fmt: skip
    table = TileTable.from_positions([f"t{i}.tif" for i in range(len(pos))], pos)
    shapes = np.full((len(pos), 2), PAPER_TILE)
    return make_plan(table, shapes, params=FusionParams(chunk_px=CHUNK), force=True)


def paper_levels() -> list[int]:
    """Chunks per level of the 100-node mosaic: its plan's level-0 grid, then each level
    halves (rounding up) until it fits one chunk, as scopefx's OME-Zarr writer does."""
    shape = list(paper_plan().full_shape[-2:])
    counts = [math.prod(math.ceil(s / CHUNK) for s in shape)]
    while max(shape) > CHUNK and len(counts) < 10:  # OmeZarrSpec.max_levels
        shape = [math.ceil(s / 2) for s in shape]
        counts.append(math.prod(math.ceil(s / CHUNK) for s in shape))
    return counts


def paper_lines(ref: Config, configs: Sequence[Config]) -> list[str]:
    """The 100-node run on paper, from ``ref``'s medians and probes (see the text)."""

    def med(cfg: Config, f: Any) -> float:
        return statistics.median(f(r) for r in cfg.runs)

    c0 = med(ref, lambda r: r.compute_ms(True)) / 1e3
    cp = med(ref, lambda r: r.compute_ms(False)) / 1e3
    over = med(ref, lambda r: r.per_chunk_ms("overhead")) / 1e3
    run_cpu = med(ref, lambda r: r.sched_cpu_ms) / 1e3
    levels = paper_levels()
    n, cores = sum(levels), PAPER_NODES * PAPER_CORES
    flat = (levels[0] * c0 + sum(levels[1:]) * cp) / cores
    waves = sum(math.ceil(k / cores) * (c0 if i == 0 else cp) for i, k in enumerate(levels))
    lines = [
        f"A 100-node run on paper, from {ref.name} (one core per worker, distributed's defaults):",
        f"  mosaic: {PAPER_GRID} x {PAPER_GRID} tiles of {PAPER_TILE}^2, {OVERLAP:.0%} overlap, "
        f"{CHUNK}^2 chunks: {levels[0]:,} level-0 + {sum(levels[1:]):,} pyramid chunks = {n:,} "
        f"tasks in {len(levels)} compute calls (levels); {PAPER_NODES} nodes x {PAPER_CORES} "
        f"cores = {cores:,} slots",
        f"  measured here: {1e3 * c0:.0f} ms per level-0 chunk, {1e3 * cp:.0f} ms per pyramid "
        f"chunk, {1e3 * over:.2f} ms overhead per chunk, {1e3 * run_cpu:.2f} ms of scheduler "
        "CPU per task (background work included)",
        f"  the issue's formula: tasks x compute / slots + tasks x overhead per chunk = "
        f"{flat:.1f} + {n * over:.0f} = {flat + n * over:.0f} s (it takes the overhead as serial: "
        "pessimistic for the latency in it, which overlaps on many slots)",
    ]
    probes = {p.label: p for p in ref.probes}
    thin, big = probes.get("nothing"), probes.get("the 100-node mosaic's plan")
    if thin is not None and big is not None:
        lines += [
            f"  the scheduler's throughput: scopefx ships the plan once per worker (a node of the "
            f"graph; the runs above sent {ref.runs[0].sent_bytes / ref.runs[0].n / 1024:.0f} KiB "
            f"per task), so a "
            f"task costs the scheduler about what a task carrying nothing does: {thin.cpu_ms:.2f} "
            f"ms of CPU (at most {1e3 / thin.cpu_ms:,.0f} tasks/s). Were the plan in every task, "
            f"as a naive map_blocks closure puts it: {big.payload_bytes / 2**20:.1f} MiB per task "
            f"at 10,000 tiles, {n * big.sent_kib / 2**20:,.0f} GiB out of the scheduler and "
            f"{big.cpu_ms:.2f} ms of its CPU per task",
            f"  refined: compute in waves (level 0 is {math.ceil(levels[0] / cores)} waves of "
            f"{cores:,}) {waves:.1f} s + the one scheduler, {n:,} tasks x {thin.cpu_ms:.2f} ms = "
            f"{n * thin.cpu_ms / 1e3:.0f} s: about {waves + n * thin.cpu_ms / 1e3:.0f} s, bound by "
            f"the scheduler's CPU (with the plan in every task it would be about "
            f"{waves + n * big.cpu_ms / 1e3:.0f} s); file-system reads and writes come on top",
        ]
    by_name = {c.name: c for c in configs if c.runs}
    if "slurm-1x1" in by_name and "slurm-1x2" in by_name:
        base = max(max(r.peak_mib) for r in by_name["slurm-1x1"].runs)
        per_thread = max(max(r.peak_mib) for r in by_name["slurm-1x2"].runs) - base
        lines.append(
            f"  memory: a worker peaks at {base:.0f} MiB with 1 thread and {base + per_thread:.0f}"
            f" MiB with 2 ({per_thread:+.0f} MiB per thread): a 32-thread worker would need about"
            f" {base + 31 * per_thread:,.0f} MiB if that held; better several worker processes "
            "of a few threads per node (the GIL: compare slurm-1x2 with slurm-2x1)"
        )
    if "slurm-2x1-libc" in by_name:
        libc = med(by_name["slurm-2x1-libc"], lambda r: r.compute_ms(True)) / 1e3
        lines.append(
            f"  with glibc's default malloc (slurm-2x1-libc) a level-0 chunk takes "
            f"{1e3 * libc:.0f} ms instead of {1e3 * c0:.0f} ms ({libc / c0:.2f}x)"
        )
    lines.append(
        "  assumptions: a chunk costs what it costs here on one core (1024^2 tiles, about 4 per "
        "chunk; 2048^2 tiles touch 1 to 4 per chunk but are 4x larger to read); tiles come from "
        "the page cache here and from a parallel file system there, and the reads and writes "
        "(docs/scaleout.md) are not in these figures; one central dask scheduler whose "
        "per-task cost does not grow with the workers; chunks independent within a level, a "
        "barrier between levels; worker start-up not counted."
    )
    return lines


# --------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the 4k case, 2 configurations, 1 run")
    ap.add_argument("--case", choices=("4k", "16k"), help="mosaic (default 16k; --quick: 4k)")
    ap.add_argument("--configs", help=f"comma list of {', '.join(CONFIGS)} (default all; "
                    "--quick: slurm-1x2,slurm-2x1)")  # fmt: skip
    ap.add_argument("--repeats", type=int, help="runs per configuration (default 3; --quick: 1)")
    ap.add_argument("--workdir", help="where tiles and outputs go (default: a temp folder)")
    ap.add_argument("--out", metavar="FILE", help="also write the summary to FILE")
    ap.add_argument("--threads-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.case = args.case or ("4k" if args.quick else "16k")
    configs = args.configs or ("slurm-1x2,slurm-2x1" if args.quick else ",".join(CONFIGS))
    args.configs = [c for c in configs.split(",") if c]
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; expected some of {sorted(CONFIGS)}")
    args.repeats = args.repeats or (1 if args.quick else 3)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads_child:
        threads_child(*args.threads_child)
        return 0
    command = "python bench/scaleout.py " + " ".join(sys.argv[1:] if argv is None else argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scopefx-bench-scaleout-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    # dask-jobqueue writes its config file into DASK_CONFIG (default: the home folder) on import.
    os.environ.setdefault("DASK_CONFIG", str(work / "dask-config"))
    case = CASES[args.case]
    grid, tile = case["grid"], case["tile"]
    peer = Config("threads", 1, THREADS)
    configs = [Config(name, *CONFIGS[name]) for name in args.configs]
    job_ids: set[str] = set()
    leaked: list[str] = []
    queue_after: list[str] = []
    t_start = time.perf_counter()
    try:
        with slurm_session() as (have_slurm, slurm_how):
            progress(f"SLURM: {slurm_how}")
            csv_path = work / args.case / "tiles" / "tiles.csv"
            if not csv_path.exists():  # kept in a --workdir between runs (same layout as fusion.py)
                progress(f"[{args.case}] making {grid}x{grid} tiles of {tile}^2 ...")
                csv_path, _ = make_tiles(csv_path.parent, grid, tile, Truth())
            out = work / args.case
            for r in range(args.repeats):
                progress(f"[threads] run {r + 1}/{args.repeats} ...")
                peer.runs.append(run_threads(csv_path, out / "threads.ome.zarr"))
                progress(f"    {peer.runs[-1].fuse_s:.2f} s, {peer.runs[-1].digest}")
            if have_slurm:
                for cfg in configs:
                    probe_n = (256 if args.quick else 1024) if cfg.name == "slurm-2x1" else 0
                    run_config(cfg, csv_path, out, args.repeats, job_ids, probe_n)
                leaked = wait_queue_empty(job_ids)
                queue_after = _squeue()
            drift = None
            if not args.quick:
                progress("[threads] drift run ...")
                drift = run_threads(csv_path, out / "threads.ome.zarr")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    total_s = time.perf_counter() - t_start

    ok, rep = summary(
        args, command, peer, [c for c in configs if c.runs], drift,
        slurm=(have_slurm, slurm_how, job_ids, leaked, queue_after), total_s=total_s,
    )  # fmt: skip
    rep.emit(args.out)
    return 0 if ok else 1


def summary(
    args: argparse.Namespace,
    command: str,
    peer: Config,
    ran: list[Config],
    drift: Run | None,
    *,
    slurm: tuple[bool, str, set[str], list[str], list[str]],
    total_s: float,
) -> tuple[bool, Report]:
    """The printed summary, and whether every output equals the peer's and no job leaked."""
    have_slurm, slurm_how, job_ids, leaked, queue_after = slurm
    reference = peer.runs[0].digest
    equal = all(r.digest == reference for c in [peer, *ran] for r in c.runs)
    if drift is not None:
        equal &= drift.digest == reference
    case = CASES[args.case]
    rep = Report()
    rep.add(
        f"# Scale-out: the {args.case} mosaic ({case['grid']} x {case['grid']} tiles of "
        f"{case['tile']}^2, {CHUNK}^2 chunks) on local threads and on SLURM worker jobs",
        "",
        f"run: {time.strftime('%Y-%m-%d %H:%M %Z')}; command: {command}",
        *environment_lines(),
    )
    with contextlib.suppress(Exception):  # versions are only for the header
        from importlib import metadata

        rep.add(
            f"dask {metadata.version('dask')}, distributed {metadata.version('distributed')}, "
            f"dask-jobqueue {metadata.version('dask-jobqueue')}"
        )
    with contextlib.suppress(Exception):
        sv = subprocess.run(["sinfo", "-V"], capture_output=True, text=True, timeout=10)
        rep.add(f"SLURM: {sv.stdout.strip() or 'not installed'}; {slurm_how}")
    first = peer.runs[0]
    rep.add(
        f"mosaic: {first.n} chunk tasks over {len(first.windows)} levels "
        f"({', '.join(str(len(c)) for c in first._calls())}); {args.repeats} run(s) per "
        "configuration, medians (peak memory: the largest); threads = the peer",
        "",
    )

    def med(cfg: Config, f: Any) -> float:
        return statistics.median(f(r) for r in cfg.runs)

    peer_s = med(peer, lambda r: r.fuse_s)
    rows, rows2 = [], []
    for cfg in [peer, *ran]:
        is_peer = cfg is peer
        fuse_s = med(cfg, lambda r: r.fuse_s)
        rows.append([
            cfg.name, f"{cfg.jobs} x {cfg.cores}",
            *("-" if is_peer else fmt(statistics.median(v), 1)
              for v in (cfg.first_s, cfg.all_s, cfg.warm_s)),
            fmt(fuse_s, 2), f"{fuse_s / peer_s:.2f}",
            fmt(med(cfg, lambda r: r.in_scheduler_s), 2), fmt(med(cfg, lambda r: r.task_s), 2),
            " / ".join(f"{max(r.peak_mib[i] for r in cfg.runs):.0f}"
                       for i in range(len(cfg.runs[0].peak_mib))),
            "yes" if all(r.digest == reference for r in cfg.runs) else "NO",
        ])  # fmt: skip
        rows2.append([
            cfg.name,
            fmt(med(cfg, lambda r: r.compute_ms(True)), 1),
            fmt(med(cfg, lambda r: r.compute_ms(False)), 1),
            *(fmt(med(cfg, lambda r, p=p: r.per_chunk_ms(p)), 2)
              for p in ("overhead", "submit", "idle", "return")),
            "-" if is_peer else fmt(med(cfg, lambda r: r.sched_cpu_ms), 2),
            "-" if is_peer else fmt(med(cfg, lambda r: r.sent_bytes / r.n / 1024), 0),
            "-" if is_peer else " / ".join(str(v) for v in cfg.runs[0].per_worker),
        ])  # fmt: skip
    rep.add(
        *table(["config", "jobs x cores", "first worker s", "all workers s", "warm s", "fuse s",
                "x threads", "in scheduler s", "task s", "peak MiB/worker", "output = peer"],
               rows),
        "",
        *table(["config", "L0 ms/chunk", "pyramid ms/chunk", "overhead ms/chunk", "submit",
                "idle", "return", "sched CPU ms/task", "KiB sent/task", "chunks per worker"],
               rows2),
        "",
    )  # fmt: skip
    every = [f"{c.name} " + ", ".join(fmt(r.fuse_s, 2) for r in c.runs) for c in [peer, *ran]]
    rep.add("fuse s of every run: " + "; ".join(every))
    if ran:
        rep.add("MALLOC_TRIM_THRESHOLD_ in the SLURM workers: "
                + "; ".join(f"{c.name} {c.malloc}" for c in ran))  # fmt: skip
    if drift is not None:
        rep.add(f"drift: the peer again at the end: {drift.fuse_s:.2f} s "
                f"({drift.fuse_s / peer_s - 1:+.0%} against its median)")  # fmt: skip
    rep.add(f"output equal to the peer's (every level, every run): {pass_fail(equal)} "
            f"({reference})")  # fmt: skip
    counted = all(r.n == r.chunks_written for c in [peer, *ran] for r in c.runs)
    rep.add(f"chunk tasks timed = chunks written, every run: {pass_fail(counted)}")
    if not have_slurm:
        rep.add(f"SLURM: {slurm_how}: only the peer ran")
    else:
        rep.add(
            f"SLURM jobs submitted: {len(job_ids)}; left in the queue after the last cluster "
            f"closed: {len(leaked)} {pass_fail(not leaked)}; squeue -h then: "
            f"{'empty' if not queue_after else f'{len(queue_after)} line(s) (not ours)'}"
        )
    rep.add(f"benchmark wall time: {total_s:.0f} s (tiles, SLURM and cluster start-up included)")
    probed = next((c for c in ran if c.probes), None)
    if probed is not None:
        rep.add(
            "",
            f"The scheduler alone, on {probed.name}: idle, this process uses "
            f"{probed.idle_cpu_ms_s:.0f} ms of CPU per second (heartbeats, work stealing, "
            f"monitors); {probed.probes[0].tasks} no-op tasks in one map_blocks (as scopefx "
            "submits chunks), the task function carrying:",
            *table(["payload", "pickled KiB", "wall ms/task", "sched CPU ms/task",
                    "KiB sent/task"],
                   [[p.label, fmt(p.payload_bytes / 1024, 0), fmt(p.wall_ms, 2), fmt(p.cpu_ms, 2),
                     fmt(p.sent_kib, 0)] for p in probed.probes]),
        )  # fmt: skip
    ref = next((c for c in ran if c.name == "slurm-2x1"), ran[-1] if ran else None)
    if ref is not None:
        rep.add("", *paper_lines(ref, ran))
    return equal and not (have_slurm and leaked), rep


if __name__ == "__main__":
    sys.exit(main())
