"""The README's notebook example runs as printed, on the data `scopefx demo` writes."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> str:
    text = README.read_text()
    section = text[text.index("## In a notebook") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block under 'In a notebook'"
    return match.group(1)


def test_the_example_is_ten_lines():
    assert len([line for line in _example().splitlines() if line.strip()]) <= 10


@pytest.mark.slow
def test_the_readme_example_runs_on_the_demo_data(tmp_path, monkeypatch):
    from scopefx.cli.demo import run_demo

    monkeypatch.chdir(tmp_path)
    run_demo(Path("scopefx-demo"), out=io.StringIO())
    namespace: dict = {}
    lines = _example().splitlines()
    exec("\n".join(lines[:-2]), namespace)  # all but the last two lines
    flagged = eval(lines[-2], namespace)  # the list the notebook would display
    with open("scopefx-demo/planted.csv", newline="") as handle:  # the demo's planted truth
        planted = sorted(
            row["path"] for row in csv.DictReader(handle)
            if row["planted"] in ("out_of_focus", "partial")
        )  # fmt: skip
    assert sorted(Path(p).name for p, _ in flagged) == planted
    exec(lines[-1], namespace)
    assert (tmp_path / "mosaic.png").stat().st_size > 0
    assert (tmp_path / "mosaic.ome.zarr" / "0" / ".zarray").exists()
