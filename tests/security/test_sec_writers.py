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
