"""Tile layouts that cost the planner quadratic work: thousands of rows of a caller's table at one
stage position made the layout check enumerate every pair of them (20,000 tiles: 2 x 10^8 pairs,
gigabytes, and a warning naming every tile), registration measure every pair, and a
registration run past the endpoint's task time. Each is now bounded before that work starts."""

from __future__ import annotations

import io
import logging
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from _sec_helpers import run_measured

import scopefx.errors
from scopefx.remote import functions

#: Longest warning or error a stacked layout may cause (it named every tile: megabytes).
MESSAGE_BYTES = 4096
#: Peak of Python allocations (tracemalloc) while a stacked layout is planned.
PEAK_MIB = 200
#: Peak RSS of a fresh process planning 20,000 tiles at one place, its imports included
#: (measured 215-225 MiB; one byte per pair of those tiles would be 191 MiB more).
PEAK_RSS_MIB = 400


def _write_stacks(folder: Path, positions: np.ndarray) -> str:
    """One 16 x 16 ``.npy`` tile per position (x, y), and their table; returns its reference."""
    buf = io.BytesIO()
    np.save(buf, np.zeros((16, 16), np.uint16))
    tile = buf.getvalue()
    (folder / "t").mkdir(parents=True)
    rows = ["path,x,y"]
    for k, (x, y) in enumerate(positions.tolist()):
        (folder / "t" / f"{k}.npy").write_bytes(tile)
        rows.append(f"t/{k}.npy,{x!r},{y!r}")
    (folder / "tiles.csv").write_text("\n".join(rows) + "\n")
    return f"{folder.name}/tiles.csv"


@pytest.mark.slow  # 20,000 tile files probed twice: about 20 s
def test_twenty_thousand_tiles_at_one_place_cost_little_and_say_so_briefly(site):
    """20,000 rows at x 0, y 0, to be registered: one short warning, then refused before a pair
    is measured, in bounded memory (before: 2 x 10^8 pairs, a MemoryError under the child's
    6 GiB cap, and a warning naming every tile).

    The memory is the child's own peak RSS (``run_measured``: ``VmHWM``), C/C++ allocations
    included (the pairs were a C++ container, which tracemalloc does not see); tracing
    Python's allocations tripled the time."""
    tiles = _write_stacks(site.data / "stack", np.zeros((20_000, 2)))
    out = run_measured(f"""
        import logging
        from scopefx.remote import functions
        messages = []
        class Keep(logging.Handler):
            def emit(self, record):
                messages.append(record.getMessage())
        logging.getLogger("scopefx").addHandler(Keep())
        job = {{"tiles": {tiles!r}, "output": "r.ome.zarr", "options": {{"register": True}},
               "workers": 8}}
        try:
            functions.plan_mosaic(job)
            refused = None
        except Exception as exc:
            refused = [type(exc).__name__, str(exc)]
        result = {{"messages": messages, "refused": refused}}
    """)  # fmt: skip
    assert out["error"] is None, out["error"]
    got = out["result"]
    stacked = [m for m in got["messages"] if "share a position" in m]
    lengths = [len(m) for m in got["messages"]]
    assert stacked and max(lengths) < MESSAGE_BYTES, (lengths, str(got["refused"])[:300])
    assert "20,000 tiles share a position" in stacked[0]
    assert "0.npy, 1.npy, 2.npy and 19,997 more at x 0, y 0" in stacked[0]
    assert got["refused"], "registered 20,000 tiles at one place"
    name, message = got["refused"]
    assert name == "ConfigError" and len(message) < MESSAGE_BYTES, got["refused"]
    assert "20,000 tiles overlap" in message and "many tiles at one place" in message
    assert out["peak_rss_mib"] < PEAK_RSS_MIB, out["peak_rss_mib"]


def test_three_stacks_of_tiles_are_named_once_each_and_not_registered(site, caplog):
    """Three places holding 1,000 tiles each (jittered within 0.4 px): three groups in one
    short warning, each with three tiles named and a count; registration is refused before a
    pair is measured (there were 1.5 million; the warning named all 3,000 tiles, 30 kB).

    The memory is traced while the registered plan is made: it checks the same layout (and
    warns again) before its pairs are refused; tracing both plans doubled the time."""
    rng = np.random.default_rng(3)
    places = np.array([(0.0, 0.0), (400.0, 0.0), (0.0, 400.0)])
    positions = places[np.arange(3000) % 3] + rng.uniform(-0.2, 0.2, (3000, 2))
    tiles = _write_stacks(site.data / "stacks", positions)
    job = {"tiles": tiles, "output": "s.ome.zarr", "workers": 8}
    with caplog.at_level(logging.WARNING, logger="scopefx"):
        assert functions.plan_mosaic(job)["n_tiles"] == 3000
    stacked = [r.getMessage() for r in caplog.records if "share a position" in r.getMessage()]
    assert len(stacked) == 1 and len(stacked[0]) < MESSAGE_BYTES, [len(m) for m in stacked]
    assert stacked[0].count(" and 997 more at x ") == 3, stacked
    assert "3,000 tiles share a position" in stacked[0] and "more group" not in stacked[0]
    caplog.clear()
    tracemalloc.start()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="scopefx"),
            pytest.raises(scopefx.errors.ConfigError, match="many tiles at one place") as refused,
        ):
            functions.plan_mosaic({**job, "output": "r.ome.zarr", "options": {"register": True}})
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    again = [r.getMessage() for r in caplog.records if "share a position" in r.getMessage()]
    assert again == stacked  # the traced plan checked the layout too
    assert len(str(refused.value)) < MESSAGE_BYTES and "3,000 tiles overlap" in str(refused.value)
    assert peak < PEAK_MIB, peak


def test_an_ordinary_grid_registers_as_before_within_the_task_time(site, monkeypatch, caplog):
    """The 3 x 3 grid registers as it did (12 side pairs of 20 used, no layout warning) under a
    generous task time; under one already spent, the registration of a plan stops naming the
    setting and nothing is written (it ignored SCOPEFX_TASK_TIMEOUT_S, checked only between
    chunks: a huge pair list ran unbounded, and plan_mosaic has no chunks)."""
    job = {"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr", "options": {"register": True}}
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "600")
    with caplog.at_level(logging.WARNING, logger="scopefx"):
        summary = functions.fuse_mosaic(job)
    assert "layout_problems" not in summary and not caplog.records
    assert (summary["registration"]["pairs"], summary["registration"]["pairs_used"]) == (20, 12)
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "1e-9")
    with pytest.raises(scopefx.errors.ResourceLimitError, match="SCOPEFX_TASK_TIMEOUT_S"):
        functions.plan_mosaic({**job, "output": "late.ome.zarr"})  # the planning: no chunks
    assert not any(p.name.startswith("late.") for p in site.out.iterdir())
