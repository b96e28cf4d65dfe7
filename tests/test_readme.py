"""The README's notebook example runs as printed, on the data `scopefx demo` writes: as Python,
and pasted into a fresh Jupyter kernel, where it shows the plot and the flagged list."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## In a notebook") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under 'In a notebook'"
    return match.group(1)


def _planted(folder: Path) -> list[str]:
    """The demo's planted out-of-focus and partial sections (file names)."""
    with (folder / "scopefx-demo" / "planted.csv").open(newline="") as handle:
        return sorted(
            row["path"] for row in csv.DictReader(handle)
            if row["planted"] in ("out_of_focus", "partial")
        )  # fmt: skip


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding what `scopefx demo` writes (``scopefx-demo/``), made once."""
    from scopefx.cli.demo import run_demo

    folder = tmp_path_factory.mktemp("readme")
    run_demo(folder / "scopefx-demo", out=io.StringIO())
    yield folder


def test_the_example_is_ten_lines():
    assert len([line for line in _example().splitlines() if line.strip()]) <= 10


def test_the_readme_says_how_to_get_jupyter():
    text = README.read_text()
    section = text[text.index("## In a notebook") : text.index("```python")]
    assert 'pip install ".[notebook]"' in section
    import tomllib

    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    extra = " ".join(pyproject["project"]["optional-dependencies"]["notebook"])
    assert "jupyterlab" in extra and "ipykernel" in extra


@pytest.mark.slow
def test_the_readme_example_runs_on_the_demo_data(demo_folder, monkeypatch):
    from matplotlib.figure import Figure

    monkeypatch.chdir(demo_folder)
    shown: list = []
    namespace: dict = {"display": shown.append}  # what a notebook provides
    lines = _example().splitlines()
    exec("\n".join(lines[:-1]), namespace)  # all but the last line
    flagged = eval(lines[-1], namespace)  # the list the notebook would display
    assert sorted(Path(p).name for p, _ in flagged) == _planted(demo_folder)
    assert len(shown) == 1 and isinstance(shown[0], Figure)
    assert (demo_folder / "mosaic.png").stat().st_size > 0
    assert (demo_folder / "mosaic.ome.zarr" / "0" / ".zarray").exists()


@pytest.mark.slow
def test_the_readme_example_in_a_fresh_kernel(demo_folder, kernel_home, monkeypatch):
    """Pasted into one cell of a fresh kernel (no ``%matplotlib``, the kernel's own backend):
    the plot is an image, not ``<Figure size ...>``, the flagged list is the cell's result,
    and nothing is written to stderr (no warning, even without ipywidgets)."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # as in a user's kernel (conftest sets Agg)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(_example())]
    NotebookClient(
        nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(demo_folder)}}
    ).execute()
    outputs = nb.cells[0].outputs
    shown = [o for o in outputs if o.output_type in ("display_data", "execute_result")]
    images = [o for o in shown if "image/png" in o.data]
    assert len(images) == 1, [o.data.get("text/plain") for o in shown]
    assert images[0].data["image/png"]  # base64 PNG
    assert not any("<Figure size" in o.data.get("text/plain", "") for o in images)
    result = [o for o in shown if o.output_type == "execute_result"]
    assert len(result) == 1
    flagged = eval(result[0].data["text/plain"])  # the list, as the notebook shows it
    assert sorted(Path(p).name for p, _ in flagged) == _planted(demo_folder)
    assert {v for _, v in flagged} == {"out_of_focus", "partial"}
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert not stderr, stderr  # e.g. tqdm.auto's IProgress warning without ipywidgets
