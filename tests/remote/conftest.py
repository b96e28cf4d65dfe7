"""Fixtures for the remote suite: a small run of sections and a small mosaic, inside a data
root, with a corrupt file and a file outside the root."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

#: Defocus of each section of the sample run: two out of focus (indices 5 and 9).
DEFOCUS = [0.0, 0.3, 0.0, 0.2, 0.0, 5.0, 0.1, 0.0, 0.3, 6.0, 0.0, 0.2]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root/run1/section_*.tif`` (12 sections, 256 px), ``root/run1/corrupt.tif``,
    ``root/mosaic/tiles.csv`` (3 x 3 tiles) and ``outside/secret.tif`` beside the root."""
    from scopefx.samples import make_mosaic, write_defocus_series, write_mosaic

    base = tmp_path_factory.mktemp("remote")
    root = base / "root"
    write_defocus_series(root / "run1", DEFOCUS, size=256, seed=3)
    (root / "run1" / "corrupt.tif").write_bytes(b"II*\x00" + bytes(64))  # a truncated TIFF
    mosaic = make_mosaic(grid=(3, 3), tile_px=128, overlap=0.15, jitter_px=1.5, subpixel=True)
    write_mosaic(root / "mosaic", mosaic)
    (base / "outside").mkdir()
    import tifffile

    tifffile.imwrite(base / "outside" / "secret.tif", np.zeros((64, 64), np.uint8))
    return root


@pytest.fixture(scope="session")
def section_refs(data_root: Path) -> list[str]:
    return [f"run1/section_{i:04d}.tif" for i in range(len(DEFOCUS))]


@pytest.fixture
def confined(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """SCOPEFX_DATA_ROOTS set to the data root, as an endpoint's worker_init sets it, and
    SCOPEFX_OUTPUT_ROOTS to the same folder (writable: an output root wins where they tie)."""
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", str(data_root))
    monkeypatch.setenv("SCOPEFX_OUTPUT_ROOTS", str(data_root))
    return data_root
