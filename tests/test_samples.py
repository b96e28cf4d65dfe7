"""``scopefx.samples``: a public package (the demo's data included), its API pinned."""

from __future__ import annotations

import csv

import scopefx.samples as samples


def test_exported_members():
    assert samples.__all__ == sorted(samples.__all__)
    for name in samples.__all__:
        assert hasattr(samples, name), name
    assert {"make_demo_run", "make_demo_mosaic", "make_mosaic", "bundled_image"} <= set(
        samples.__all__
    )


def test_make_demo_run_takes_a_string_path(tmp_path):
    made = samples.make_demo_run(str(tmp_path / "demo"), size=64, sections=3)
    assert sorted(made) == ["planted", "run", "through_focus"]
    assert sorted(p.name for p in made["run"].glob("*.tif")) == [
        "section_0000.tif", "section_0001.tif", "section_0002.tif",
    ]  # fmt: skip
    with made["planted"].open(newline="") as handle:
        planted = {row["path"]: row["planted"] for row in csv.DictReader(handle)}
    assert planted == {f"section_{i:04d}.tif": "in_focus" for i in range(3)}
    assert made["through_focus"].name == "defocus.csv"
