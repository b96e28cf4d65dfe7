"""The notebooks in ``notebooks/`` run top to bottom in a fresh ``python3`` kernel of this
interpreter, and are committed without outputs.

Each runs with its working directory in pytest's temporary folder (``TMPDIR`` in a short one of
its own), so nothing is
written into the repository; a cell that raises fails the test (nbclient's
``CellExecutionError``, with the cell and its traceback), and so does a cell that writes to
stderr (a warning, a log message), since a reader would see it.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = ("01_focus_qc.ipynb", "02_mosaic_fusion.ipynb", "03_remote_execution.ipynb")
#: Per cell; the slowest cell (starting a Globus Compute engine) takes ~10 s on 2 cores.
CELL_TIMEOUT_S = 300


def test_the_notebooks_are_the_ones_tested():
    """A notebook added, renamed or removed must be added here too (an empty glob fails)."""
    assert sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    nb = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))
    nbformat.validate(nbformat.from_dict(nb))
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, nb["metadata"]
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    for i, cell in enumerate(nb["cells"]):
        where = f"{name} cell {i} ({cell.get('id')})"
        assert set(cell["metadata"]) <= {"tags"}, f"{where}: metadata {cell['metadata']}"
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{where} has outputs: clear them before committing"
            assert cell["execution_count"] is None, f"{where} has an execution count"


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


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_home):
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(kernel_home)}},  # the kernel's working directory
    )
    client.execute()  # raises CellExecutionError if a cell raises
    stderr = [
        f"cell {cell.get('id')}: {out['text']}"
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "stream" and out.name == "stderr"
    ]
    assert not stderr, "\n".join(stderr)
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in ran), "not every cell ran"
