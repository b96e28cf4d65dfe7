"""Shared fixtures. Nothing here writes outside pytest's temporary folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keep dask (and dask-jobqueue's import-time config write) out of the user's home."""
    monkeypatch.setenv("DASK_CONFIG", str(tmp_path_factory.getbasetemp() / "dask-config"))
    monkeypatch.delenv("SCOPEFX_DEVICE", raising=False)  # where files are scored: auto


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


_SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "slurm" / "slurm.sh"


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return probe.returncode == 0 and any(s in probe.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture(scope="session")
def slurm() -> Iterator[None]:
    """A running single-node SLURM: the one already up, or one started here with
    tools/slurm/slurm.sh (stopped again at the end, unless pytest-xdist workers may share it).
    Where SLURM is not installed the test is skipped, unless SCOPEFX_REQUIRE_SLURM=1 (set by
    CI) makes that a failure."""
    started, why = False, ""
    if not _slurm_up() and shutil.which("slurmctld") is not None:
        run = subprocess.run(["bash", str(_SLURM_SCRIPT), "start"], capture_output=True, text=True)
        if run.returncode == 0:
            started = True
            for line in run.stdout.splitlines():  # export SLURM_CONF=...
                if line.startswith("export SLURM_CONF="):
                    os.environ["SLURM_CONF"] = line.split("=", 1)[1].strip().strip("'\"")
        else:
            why = f" (tools/slurm/slurm.sh start failed: {run.stderr.strip()[-500:]})"
    if not _slurm_up():
        message = (
            "no SLURM here: start one with `tools/slurm/slurm.sh install` and "
            f"`tools/slurm/slurm.sh start` (docs/slurm-dev.md){why}"
        )
        if os.environ.get("SCOPEFX_REQUIRE_SLURM") == "1":
            pytest.fail(message + "; SCOPEFX_REQUIRE_SLURM=1 requires it")
        pytest.skip(message)
    try:
        yield
    finally:
        if started and "PYTEST_XDIST_WORKER" not in os.environ:
            subprocess.run(["bash", str(_SLURM_SCRIPT), "stop"], capture_output=True)


@pytest.fixture
def kernel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A ``python3`` kernelspec that runs this interpreter, found before any other one, and
    Jupyter's, IPython's and the kernel's temporary files in ``tmp_path``.

    Without it, ``python3`` may resolve to a kernelspec in the user's Jupyter folders that
    runs another Python, which would not have this checkout installed.
    """
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    share = tmp_path / "jupyter"
    write_kernel_spec(share / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(share))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    # jupyter_core 5.0-5.x warns (DeprecationWarning) that its paths are migrating, unless set
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    work = tmp_path / "work"
    work.mkdir()
    # the notebooks' tempfile folders: a short path, because the engine's worker pool (notebook
    # 3) opens Unix sockets in TMPDIR and their paths may not exceed 107 bytes, which pytest's
    # temporary folders under xdist can
    short = Path(tempfile.mkdtemp(prefix="scopefx-nb-"))
    monkeypatch.setenv("TMPDIR", str(short))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert Path(spec.argv[0]) == Path(sys.executable), spec.argv
    yield work
    shutil.rmtree(short, ignore_errors=True)
