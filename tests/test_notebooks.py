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


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_home):  # kernel_home: tests/conftest.py
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
