"""One writer per output (issue 14, part 4): of two different jobs started on one output
exactly one goes on; a job never removes a store another job is writing; a resume never
reports success over a store another plan wrote into."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zarr

from scopefx import FuseOptions, FusionParams, fuse
from scopefx.errors import ConfigError
from scopefx.samples import make_mosaic, write_mosaic

TRIES = 12


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("writers")
    return write_mosaic(folder / "tiles", make_mosaic(grid=(2, 2), tile_px=64, overlap=0.2))


def _level0(path) -> np.ndarray:
    return np.asarray(zarr.open_group(str(path), mode="r")["0"][...])


def test_two_jobs_on_one_output_exactly_one_writes(table, tmp_path):
    """Started at the same moment, 12 times: one job writes, the other is refused clearly,
    and the store equals a clean run of the one that wrote."""
    params = {"max": FusionParams(blend="max", chunk_px=32), "mean": FusionParams(chunk_px=32)}
    clean = {name: _level0(fuse(table, tmp_path / f"{name}.ome.zarr", params=p).path)
             for name, p in params.items()}  # fmt: skip
    for i in range(TRIES):
        out = tmp_path / f"race{i}.ome.zarr"
        gate = threading.Barrier(2)
        outcome: dict[str, object] = {}

        def run(name: str, out=out, gate=gate, outcome=outcome) -> None:
            gate.wait()
            try:
                fuse(table, out, params=params[name])
                outcome[name] = "ok"
            except ConfigError as exc:
                outcome[name] = exc

        threads = [threading.Thread(target=run, args=(n,)) for n in params]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [n for n, v in outcome.items() if v == "ok"]
        assert len(winners) == 1, f"try {i}: {outcome}"
        loser = next(v for v in outcome.values() if v != "ok")
        assert "another job" in str(loser) or "exists" in str(loser), loser
        np.testing.assert_array_equal(_level0(out), clean[winners[0]])
        other = next(n for n in params if n != winners[0])
        with pytest.raises(ConfigError, match="another job"):
            fuse(
                table, out, params=params[other], options=FuseOptions(resume=True)
            )  # never "complete" over it


def test_overwrite_is_refused_while_another_job_writes(table, tmp_path):
    out = tmp_path / "busy.ome.zarr"
    writing, tried = threading.Event(), threading.Event()
    first: dict[str, object] = {}

    def on_chunk(status: int, total: int) -> None:
        writing.set()
        tried.wait(timeout=120)  # hold the job mid-write until the other one has tried

    def job_a() -> None:
        try:
            first["result"] = fuse(table, out, params=FusionParams(chunk_px=32), workers=1,
                                   on_chunk=on_chunk)  # fmt: skip
        except Exception as exc:  # reported below
            first["result"] = exc

    a = threading.Thread(target=job_a)
    a.start()
    try:
        assert writing.wait(timeout=120)
        with pytest.raises(ConfigError, match="being written by another job"):
            fuse(
                table,
                out,
                params=FusionParams(blend="max", chunk_px=32),
                options=FuseOptions(overwrite=True),
            )
    finally:
        tried.set()
        a.join()
    assert not isinstance(first["result"], Exception), first["result"]
    clean = fuse(table, tmp_path / "clean.ome.zarr", params=FusionParams(chunk_px=32))
    np.testing.assert_array_equal(_level0(out), _level0(clean.path))


def test_a_worker_writes_into_the_plan_the_store_has_now_not_the_one_it_saw(site):
    """Fan-out: a worker fused a region of plan A, another worker planned the output again
    (overwrite, another shape), and the first worker then fused plan B's regions into the
    arrays it had opened for plan A: the finish reported success with 79 % of every level
    zeros."""
    import json
    import os
    import subprocess
    import sys

    from scopefx.remote import functions

    small = write_mosaic(site.data / "a", make_mosaic(grid=(2, 2), tile_px=64, overlap=0.2))
    large = write_mosaic(site.data / "b", make_mosaic(grid=(3, 3), tile_px=96, overlap=0.2))
    job = {"output": "m.ome.zarr", "workers": 1, "params": {"chunk_px": 64}}
    a = functions.plan_mosaic({**job, "tiles": f"a/{small.name}"}, regions=1)
    functions.fuse_region(a["plan"], a["regions"][0], fingerprint=a["fingerprint"])
    again = (  # the other worker: another process, so none of this one's caches
        "import json; from scopefx.remote import functions; "
        f"print(json.dumps(functions.plan_mosaic({{**{job!r}, 'tiles': 'b/{large.name}', "
        "'options': {'overwrite': True}}, regions=1)))"
    )
    done = subprocess.run([sys.executable, "-c", again], capture_output=True, text=True,
                          env=os.environ, check=True)  # fmt: skip
    b = json.loads(done.stdout.strip().splitlines()[-1])
    functions.fuse_region(b["plan"], b["regions"][0], fingerprint=b["fingerprint"])
    functions.finish_mosaic(b["plan"], fingerprint=b["fingerprint"])
    fresh = functions.fuse_mosaic({**job, "tiles": f"b/{large.name}", "output": "fresh.ome.zarr"})
    got = zarr.open_group(str(site.out / "m.ome.zarr"), mode="r")
    want = zarr.open_group(fresh["path"], mode="r")
    for level in sorted(want.array_keys()):
        np.testing.assert_array_equal(got[level][...], want[level][...], err_msg=level)


@pytest.mark.parametrize("edited", ["job.json", "level"])
def test_a_plan_edited_in_the_output_folder_is_held_to_the_limits(site, monkeypatch, edited):
    """The plan a fan-out task reads lies in the caller's output folder: job.json edited to
    12000^2-px chunks made fuse_region allocate 1.4 GiB (a MemoryError under 3 GiB) while
    SCOPEFX_MAX_CHUNK_PX was 65,536; the level's own chunk shape, edited, alike."""
    import json

    from scopefx.errors import ResourceLimitError
    from scopefx.remote import functions

    monkeypatch.setenv("SCOPEFX_MAX_CHUNK_PX", str(256**2))
    job = {"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr", "params": {"chunk_px": 64}}
    planned = functions.plan_mosaic(job, regions=1)
    store = site.out / "m.ome.zarr"
    if edited == "job.json":
        meta_file, key, limit = store / ".scopefx" / "job.json", "chunk", "SCOPEFX_MAX_CHUNK_PX"
    else:
        meta_file, key, limit = store / "0" / ".zarray", "chunks", "SCOPEFX_MAX_CHUNK_BYTES"
    meta = json.loads(meta_file.read_text())
    meta[key] = [12000, 12000]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ResourceLimitError, match=limit):
        functions.fuse_region(planned["plan"], planned["regions"][0])


@pytest.mark.parametrize("region", [None, [0, 4], {"start": 0}, {"start": 0, "stop": 10**9}])
def test_a_region_that_is_no_region_is_refused_before_anything_is_written(site, region):
    """fuse_region(plan, None) fused every chunk of the mosaic, then failed with a bare
    TypeError (which the client retries)."""
    from scopefx.remote import functions

    job = {"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr", "params": {"chunk_px": 64}}
    planned = functions.plan_mosaic(job, regions=1)
    with pytest.raises(ConfigError, match="region"):
        functions.fuse_region(planned["plan"], region)
    assert not list((site.out / "m.ome.zarr" / ".scopefx" / "done").rglob("*.*"))
