"""Fusion on a GPU gives the CPU's mosaic: every blend, sub-pixel and rotated placements, a
flat field, the OME-Zarr written chunk by chunk. Runs where CuPy sees a CUDA device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from scopefx._backend import list_gpus
from scopefx.fusion import BLENDS, FusionParams, fuse, fuse_lazy
from scopefx.io import TileTable, read_tile_table
from scopefx.samples import make_mosaic, write_mosaic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not list_gpus(), reason="no CUDA device that CuPy sees"),
]


def _table(tmp_path: Path, blend: str, **mosaic: object) -> TileTable | Path:
    tiles = make_mosaic(grid=(3, 3), tile_px=128, name="retina", dtype="uint16", **mosaic)
    table = write_mosaic(tmp_path, tiles, affine=True)
    if blend != "focus":
        return table
    return read_tile_table(table).with_focus(list(range(1, 10)))


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("placement", ["subpixel", "rotated"])
def test_every_blend_on_the_gpu_matches_the_cpu(tmp_path, blend, placement):
    if placement == "subpixel":
        table = _table(tmp_path, blend, jitter_px=4.5, subpixel=True, overlap=0.2)
    else:
        table = _table(tmp_path, blend, rotation_deg=2.0, overlap=0.2)
    params = FusionParams(chunk_px=96, blend=blend)  # type: ignore[arg-type]
    on_cpu = fuse_lazy(table, params=params, device="cpu").compute()
    on_gpu = fuse_lazy(table, params=params, device="gpu").compute()
    assert isinstance(on_gpu, np.ndarray) and on_gpu.dtype == on_cpu.dtype
    diff = np.abs(on_gpu.astype(np.int64) - on_cpu.astype(np.int64))
    assert diff.max() <= 1, (blend, placement, int(diff.max()))  # rounding of a float32 sum
    assert (diff > 0).mean() < 0.01


def test_an_ome_zarr_fused_on_the_gpu_equals_the_cpu_s(tmp_path):
    table = _table(tmp_path / "tiles", "linear", jitter_px=3.0, subpixel=True, vignetting=0.3)
    stores = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / f"{device}.ome.zarr"
        fuse(table, out, params=FusionParams(chunk_px=96), device=device)
        stores[device] = zarr.open_group(str(out), mode="r")
    for level in ("0", "1"):
        a, b = (np.asarray(stores[d][level][:]) for d in ("cpu", "gpu"))
        assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max() <= 1, level
