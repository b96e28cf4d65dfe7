"""Shared fixtures. Nothing here writes outside pytest's temporary folders."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep dask (and dask-jobqueue's import-time config write) out of the user's home."""
    monkeypatch.setenv("DASK_CONFIG", str(tmp_path_factory.getbasetemp() / "dask-config"))


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request: pytest.FixtureRequest):
    """The array module: NumPy always, CuPy where a CUDA device exists."""
    if request.param == "numpy":
        return np
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception as exc:
        pytest.skip(f"no CUDA device: {exc}")
    return cupy
