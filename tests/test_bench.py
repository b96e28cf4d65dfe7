"""The benchmarks still run (quick mode) and print their figures next to their targets."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


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
    subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--out", str(out)],
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
