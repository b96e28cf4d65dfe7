"""The benchmarks still run (quick mode) and print their figures next to their targets."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


#: Smaller images than the quick runs' own, where a script takes them: every step and figure
#: is the same, at a fraction of the time (focus_speed's blob_dog on 1024 px images, 4 calls
#: per image, took most of a minute on 2 cores).
SMALLER = {
    "focus_accuracy.py": ["--size", "256"],
    "focus_speed.py": ["--size", "256", "--repeats", "1"],
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("focus_accuracy.py", ["mhfd-auto", "tenengrad", "mean r", "pooled AUC"]),
        ("focus_speed.py", ["focus_score exact", "blob_dog", ">= 20x"]),
        ("fusion.py", ["scopefx s", "RMSE", "plan 10,000 tiles"]),
        ("remote.py", ["overhead ms/img", "overhead %", "batch"]),
        ("watch.py", ["median s", "latency / scoring", "target: latency < 1 s"]),
    ],
)
def test_benchmark_runs_in_quick_mode(script, expected, tmp_path):
    out = tmp_path / "result.txt"
    smaller = SMALLER.get(script, [])
    subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", *smaller, "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.read_text()
    for needle in expected:
        assert needle in text, needle


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")  # beside tests/test_slurm.py's, never at the same time
def test_scaleout_benchmark_runs_in_quick_mode(slurm, tmp_path):
    """Needs the test SLURM (the fixture starts it); the benchmark checks its own outputs."""
    out = tmp_path / "result.txt"
    subprocess.run(
        [sys.executable, str(BENCH / "scaleout.py"), "--quick", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.read_text()
    needles = (
        "output equal to the peer's (every level, every run): PASS",
        "left in the queue after the last cluster closed: 0 PASS",
        "x threads",
    )
    for needle in needles:
        assert needle in text, needle


DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "tiles_real").is_dir(), reason="../shared/data is not here")
def test_real_cut_benchmark_places_tiles_cut_from_a_real_frame(tmp_path):
    """One real frame cut into a 3x3 mosaic with exact truth: the script runs, and the cut is
    what it says (whole-pixel tiles are the frame's own pixels at their true positions)."""
    sys.path.insert(0, str(BENCH))
    import register_real_cut as bench

    frame = np.arange(300 * 400, dtype=np.float32).reshape(300, 400)
    tiles, stage, true, size = bench.cut_mosaic([frame, frame + 1], (3, 3), 0.2, 1, False)
    assert len(tiles) == 9 and all(t.shape == (size, size) for t in tiles)
    for k, (t, (y, x)) in enumerate(zip(tiles, true, strict=True)):
        np.testing.assert_array_equal(
            t, frame[int(y) : int(y) + size, int(x) : int(x) + size] + k % 2
        )
    jitter = true - np.array(stage)[:, ::-1]
    assert np.abs(jitter).max() <= 2 * np.ceil(bench.JITTER_SHARE * size)  # stage off by the jitter
    out = tmp_path / "result.txt"
    subprocess.run(
        [sys.executable, str(BENCH / "register_real_cut.py"), "--sources", "leica_tma",
         "--overlaps", "0.2", "--seeds", "1", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.read_text()
    assert "leica_tma" in text and "mean over cases" in text
    banded = bench.add_banding([np.zeros((4, 5), np.float32), np.ones((4, 5), np.float32)], 2.0)
    np.testing.assert_allclose(banded[1] - banded[0], 1.0, atol=1e-5)  # the same offsets in all
    rows, cols = banded[0][:, :1] - banded[0][:1, :1], banded[0][:1] - banded[0][:1, :1]
    np.testing.assert_allclose(banded[0], banded[0][0, 0] + rows + cols, atol=1e-5)  # separable


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "tiles_real").is_dir(), reason="../shared/data is not here")
def test_sparse_benchmark_sets_a_frame_in_a_flat_surround(tmp_path):
    """A frame set in a flat surround and cut into a mosaic with exact truth: the corner tiles
    hold the surround alone, the middle one the frame, the stage is off by the jitter; and the
    script runs on a real frame."""
    sys.path.insert(0, str(BENCH))
    import register_sparse as bench

    frame = np.full((40, 40), 50.0)
    frame[15:25, 15:25] = 200.0  # no pixel noise to add: horizontal differences are all 0
    tiles, stage, true, holds = bench.sparse_mosaic(frame, (3, 3), 64, 0.1, 0.03, 1)
    assert len(tiles) == 9 and all(t.shape == (64, 64) for t in tiles)
    np.testing.assert_allclose(tiles[0], 50.0, atol=1e-3)  # the surround: the 5th percentile
    assert tiles[4].max() > 199 and tiles[4].min() < 51  # the frame's square and its edges
    assert holds.tolist() == [False] * 4 + [True] + [False] * 4  # only the middle tile
    jitter = true - np.array(stage)[:, ::-1]
    assert np.abs(jitter - jitter.mean(axis=0)).max() <= 2 * 0.03 * 64
    out = tmp_path / "result.txt"
    subprocess.run(
        [sys.executable, str(BENCH / "register_sparse.py"), "--sources", "leica_tma",
         "--grid", "3x3", "--tile", "256", "--seeds", "1", "--allow-partial", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.read_text()
    assert "leica_tma" in text and "mean over cases" in text


@pytest.mark.slow
def test_register_speed_benchmark_times_both_paths(tmp_path):
    """The registration timing runs, and both of its scopefx paths register the mosaic."""
    out = tmp_path / "result.txt"
    subprocess.run(
        [sys.executable, str(BENCH / "register_speed.py"), "--quick", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.read_text()
    assert "fft / scopefx" in text
    row = next(line.split() for line in text.splitlines() if line.strip().startswith("256 "))
    assert row[1] == "12/12"
    assert float(row[4]) < 1.0 and float(row[7]) < 1.0  # both placed within a pixel


@pytest.mark.parametrize("script", ["focus_gpu.py", "fusion_gpu.py"])
def test_gpu_benchmarks_say_so_without_a_gpu(script, tmp_path):
    """They import and run anywhere; where CuPy sees no device they measure nothing and say
    why (their figures need a GPU: bench/results/ has the H200's)."""
    from scopefx._backend import list_gpus

    if list_gpus():
        pytest.skip("a GPU is here: the benchmark would measure")
    out = tmp_path / "result.txt"
    subprocess.run(
        [sys.executable, str(BENCH / script), "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "no CUDA device that CuPy sees" in out.read_text()


def test_the_fusion_gpu_benchmark_compares_two_fusions(tmp_path):
    """Its CPU dry run (the CPU twice) fuses both cases and tabulates them."""
    out = tmp_path / "result.txt"
    subprocess.run(
        [sys.executable, str(BENCH / "fusion_gpu.py"), "--cpu-only", "--grid", "2",
         "--tile", "256", "--workers", "2", "--out", str(out)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = out.read_text()
    for needle in ("translated", "rotated", "CPU / GPU", "max diff"):
        assert needle in text, needle
