"""A shared endpoint as a hostile user finds it: a data root (an instrument's raw data, read
only), an output root per user, another user's output folder, and secrets outside all of them.
The roots are set in the environment, as an endpoint's worker_init sets them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from _sec_helpers import SECRET


@dataclass
class Site:
    data: Path  # SCOPEFX_DATA_ROOTS
    out: Path  # SCOPEFX_OUTPUT_ROOTS (this user's)
    other: Path  # another user's output root: not ours
    outside: Path  # nothing of ours, beside the roots
    secret: Path  # outside/secret.tif, every pixel SECRET
    tiles: Path  # data/mosaic/tiles.csv, 3 x 3 tiles of 64 px


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Site:
    from scopefx.samples import make_mosaic, write_mosaic

    data, out, other, outside = (tmp_path / n for n in ("data", "out", "other", "outside"))
    for folder in (data, out, other, outside):
        folder.mkdir()
    (data / "run1").mkdir()
    for i in range(3):
        tifffile.imwrite(data / "run1" / f"section_{i}.tif", np.full((32, 32), i, np.uint16))
    (other / "run7").mkdir()
    (other / "run7" / "result.csv").write_text("path,score\n")
    tifffile.imwrite(outside / "secret.tif", np.full((64, 64), SECRET, np.uint16))
    mosaic = make_mosaic(grid=(3, 3), tile_px=64, overlap=0.2, name="retina")
    tiles = write_mosaic(data / "mosaic", mosaic)
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(out))
    return Site(data, out, other, outside, outside / "secret.tif", tiles)
