"""Reads outside the roots (issue 14, parts 2 and 3): OME multi-file references, links in Zarr
stores, and a tile swapped for a link after it was checked. Every file is opened, then what was
opened is checked, so none of these reads a byte of the secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from _sec_helpers import FLIP, SECRET, plant_ome_reference

from scopefx.errors import AccessDeniedError
from scopefx.io import DataRoots, read_image, read_metadata


@pytest.mark.parametrize("kind", ["absolute", "relative"])
def test_ome_tiff_naming_an_outside_file_reads_only_itself(site, kind):
    secret = site.outside / "secret.ome.tif"
    tifffile.imwrite(secret, np.full((16, 16), SECRET, np.uint16), ome=True)
    folder = site.data / "a" / "b"
    folder.mkdir(parents=True)
    other = str(secret) if kind == "absolute" else "../../../outside/secret.ome.tif"
    plant_ome_reference(folder / "planted.ome.tif", other)
    ref = DataRoots.from_env().resolve("a/b/planted.ome.tif")
    pixels = read_image(ref)
    assert SECRET not in pixels and pixels.shape == (16, 16)
    assert read_metadata(ref).shape == (16, 16)  # the header read does not follow it either


def _zarr_store(folder: Path) -> Path:
    store = folder / "img.zarr"
    array = zarr.create_array(store, shape=(16, 16), chunks=(8, 8), dtype="uint16", fill_value=0)
    array[...] = 1
    return store


def test_zarr_chunk_file_linking_out_is_refused(site):
    store = _zarr_store(site.data)
    outside = _zarr_store(site.outside)
    zarr.open_array(outside, mode="r+")[...] = SECRET
    chunk = store / "c" / "0" / "0"
    chunk.unlink()
    chunk.symlink_to(outside / "c" / "0" / "0")
    with pytest.raises(AccessDeniedError, match="outside the roots"):
        read_image(DataRoots.from_env().resolve("img.zarr"))


def test_zarr_chunk_folder_linking_out_is_refused(site):
    store = _zarr_store(site.data)
    outside = _zarr_store(site.outside)
    zarr.open_array(outside, mode="r+")[...] = SECRET
    folder = store / "c" / "1"
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.symlink_to(outside / "c" / "1")
    with pytest.raises(AccessDeniedError, match="outside the roots"):
        read_image(DataRoots.from_env().resolve("img.zarr"))


def test_tile_swapped_for_a_link_after_planning_is_refused(site):
    """Checked at planning, swapped before its chunk is read: the read itself refuses it (the
    job is re-opened directly, so no second check of the table runs before the reads)."""
    from scopefx.fusion import FusionJob
    from scopefx.remote import functions

    job = {"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr", "params": {"chunk_px": 64}}
    planned = functions.plan_mosaic(job)
    assert planned["state"] == "new"
    tile = sorted((site.data / "mosaic").glob("*.tif"))[4]
    tifffile.imwrite(site.outside / "big.tif", np.full((64, 64), SECRET, np.uint16))
    swapped = tile.with_name(".swap")
    swapped.symlink_to(site.outside / "big.tif")
    os.replace(swapped, tile)
    with pytest.raises(AccessDeniedError, match="outside the roots"):
        FusionJob.open(site.out / "m.ome.zarr").finish()
    with pytest.raises(AccessDeniedError, match="outside the data roots"):
        functions.finish_mosaic(planned["plan"])


def test_swap_race_never_reads_the_secret(site):
    """Another process flips a tile between the real file and a link out while it is checked
    and read 2,000 times, as ``score_focus`` does: each read gives the real pixels or is
    refused, never the secret's."""
    tile = site.data / "run1" / "section_1.tif"
    real = site.data / "run1" / ".real"
    os.link(tile, real)
    flipper = subprocess.Popen([sys.executable, "-c", FLIP, str(tile), str(real), str(site.secret)])
    roots = DataRoots.from_env()
    seen = {"real": 0, "denied": 0, "raced": 0}
    try:
        while not tile.is_symlink():  # the flipper has started
            assert flipper.poll() is None
        for _ in range(2000):
            try:
                pixels = read_image(roots.resolve("run1/section_1.tif"))
            except AccessDeniedError:
                seen["denied"] += 1
                continue
            except OSError:  # the file vanished or changed while being checked
                seen["raced"] += 1
                continue
            assert SECRET not in pixels, f"the secret was read after {seen}"
            seen["real"] += 1
    finally:
        flipper.kill()
        flipper.wait()
    assert sum(seen.values()) == 2000
