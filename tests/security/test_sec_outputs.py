"""Outputs that destroy data (issue 14, parts 2 and 3): data roots are read-only, outputs go
only under the output roots, ``overwrite`` removes only what scopefx wrote, nothing is written
through a link planted on the way."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from _sec_helpers import tree

from scopefx import FuseOptions, fuse
from scopefx.errors import AccessDeniedError, ConfigError
from scopefx.remote import functions


def _job(output: str, **options: object) -> dict:
    """A mosaic job as the client sends it: FuseOptions fields go under "options"."""
    job = {"tiles": "mosaic/tiles.csv", "output": output, "params": {"chunk_px": 64}}
    return {**job, "options": options} if options else job


@pytest.mark.parametrize(
    "output", [".", "{data}", "{data}/run1", "{data}/mosaic", "{other}/run7", "{other}", "{out}"]
)
def test_overwrite_never_removes_a_data_root_or_another_users_folder(site, output):
    before = {f: tree(f) for f in (site.data, site.other, site.out)}
    target = output.format(data=site.data, other=site.other, out=site.out)
    with pytest.raises(AccessDeniedError):
        functions.fuse_mosaic(_job(output=target, overwrite=True))
    assert {f: tree(f) for f in (site.data, site.other, site.out)} == before


def test_overwrite_never_removes_an_output_folder_that_holds_a_data_root(site, monkeypatch):
    """A data root inside an output root is read-only, but an output naming the folder that
    held it was writable: with a scopefx marker planted there and overwrite, the folder was
    removed, data root and all."""
    import json

    inst = site.out / "inst"
    raw = inst / "raw"
    raw.mkdir(parents=True)
    tifffile.imwrite(raw / "irreplaceable.tif", np.ones((32, 32), np.uint16))
    (inst / ".scopefx").mkdir()
    (inst / ".scopefx" / "plan.json").write_text(json.dumps({"fingerprint": "x",
                                                             "kind": "fusion"}))  # fmt: skip
    monkeypatch.setenv("SCOPEFX_DATA_ROOTS", f"{site.data}:{raw}")
    before = tree(site.out)
    with pytest.raises(AccessDeniedError, match=r"which holds the data root .*raw"):
        functions.fuse_mosaic(_job(output="inst", overwrite=True))
    assert tree(site.out) == before
    functions.fuse_mosaic(_job(output="inst/m.ome.zarr"))  # beside the data root: fine
    assert (raw / "irreplaceable.tif").is_file()


@pytest.mark.parametrize("output", ["run1", "mosaic"])
def test_a_data_folders_name_is_a_new_folder_under_the_output_root(site, output):
    before = tree(site.data)
    functions.fuse_mosaic(_job(output=output, overwrite=True))
    assert tree(site.data) == before
    assert (site.out / output / ".zattrs").is_file()


def test_relative_output_lands_under_the_output_root(site):
    result = functions.fuse_mosaic(_job(output="run1/mosaic.ome.zarr"))
    assert result["path"] == str(site.out / "run1" / "mosaic.ome.zarr")
    assert (site.out / "run1" / "mosaic.ome.zarr" / ".zattrs").is_file()
    assert not (site.data / "run1" / "mosaic.ome.zarr").exists()


def test_without_output_roots_nothing_is_written(site, monkeypatch):
    monkeypatch.delenv("SCOPEFX_OUTPUT_ROOTS")
    before = tree(site.data)
    with pytest.raises(AccessDeniedError, match="sets no output roots"):
        functions.fuse_mosaic(_job(output="m.ome.zarr"))
    assert tree(site.data) == before


def test_preview_onto_another_image_is_refused(site):
    image = site.data / "run1" / "section_0.tif"
    before = image.read_bytes()
    with pytest.raises(ConfigError, match=r"ending in \.png"):  # a preview is a PNG
        functions.fuse_mosaic(_job(output="m.ome.zarr", preview=str(image)))
    overview = site.data / "run1" / "overview.png"
    overview.write_bytes(b"\x89PNG the instrument's")
    with pytest.raises(AccessDeniedError, match="data root"):
        functions.fuse_mosaic(_job(output="m.ome.zarr", preview=str(overview)))
    assert image.read_bytes() == before and overview.read_bytes() == b"\x89PNG the instrument's"
    # inside the output root: an image scopefx did not write is kept too
    mine = site.out / "photo.png"
    mine.write_bytes(b"\x89PNG not scopefx's")
    with pytest.raises(ConfigError, match=r"photo\.png exists"):
        functions.fuse_mosaic(_job(output="m2.ome.zarr", preview="photo.png"))
    assert mine.read_bytes() == b"\x89PNG not scopefx's"
    # its own preview is replaced on a re-run
    functions.fuse_mosaic(_job(output="m3.ome.zarr", preview="p.png"))
    functions.fuse_mosaic(_job(output="m3.ome.zarr", preview="p.png", overwrite=True))


def test_tiff_overwrite_replaces_only_a_tiff_scopefx_wrote(tmp_path):
    """Locally too (no roots): a TIFF output with overwrite never replaces a tile, or any
    file scopefx did not write."""
    from scopefx.samples import make_mosaic, write_mosaic

    table = write_mosaic(tmp_path / "tiles", make_mosaic(grid=(2, 2), tile_px=64, overlap=0.2))
    tile = sorted((tmp_path / "tiles").glob("*.tif"))[0]
    before = tile.read_bytes()
    with pytest.raises(ConfigError, match="one of the tiles"):
        fuse(table, tile, options=FuseOptions(overwrite=True))
    assert tile.read_bytes() == before
    other = tmp_path / "notes.tif"
    tifffile.imwrite(other, np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="not a TIFF mosaic scopefx wrote"):
        fuse(table, other, options=FuseOptions(overwrite=True))
    fuse(table, tmp_path / "m.tif")
    fuse(table, tmp_path / "m.tif", options=FuseOptions(overwrite=True))  # its own: replaced


def test_links_planted_in_an_output_store_are_never_followed(site):
    """Plan a mosaic, plant a link where its chunks go, finish: refused, nothing written out."""
    planned = functions.plan_mosaic(_job(output="m.ome.zarr"))
    store = next(p for p in (site.out / "m.ome.zarr", site.data / "m.ome.zarr") if p.exists())
    level = store / "0"  # (before output roots existed, the store landed in the data root)
    (site.outside / "victim").mkdir()
    planted = level / "0"
    if planted.exists():
        planted.rmdir()
    planted.symlink_to(site.outside / "victim")
    with pytest.raises(AccessDeniedError, match="never follows links"):
        functions.finish_mosaic(planned["plan"])
    assert list((site.outside / "victim").iterdir()) == []


def test_a_sidecar_linking_out_is_not_written_through(site):
    victim = site.outside / ".bashrc"
    victim.write_text("export PS1='$ '\n")
    for folder in (site.out, site.data):  # (where the store landed before output roots)
        (folder / "m.registered.csv").symlink_to(victim)
    # refused as a link whether or not overwrite is asked (every side file is checked first)
    with pytest.raises(ConfigError, match=r"m\.registered\.csv is a link or not a regular file"):
        functions.fuse_mosaic(_job(output="m.ome.zarr", register=True))
    assert victim.read_text() == "export PS1='$ '\n"
    with pytest.raises(ConfigError, match="link or not a regular file"):
        functions.fuse_mosaic(_job(output="m.ome.zarr", register=True, overwrite=True))
    assert victim.read_text() == "export PS1='$ '\n"


def test_side_files_are_written_under_the_output_root_not_the_system_temporary_folder(
    site, monkeypatch
):
    """The TIFF mosaic, the preview and registration's sidecars were staged in the system's
    temporary folder, then copied: a TIFF mosaic of many GiB filled a shared /tmp (often a
    small memory file system) outside the caller's output root and its quota."""
    import tempfile

    system_tmp = site.outside / "system-tmp"  # absent: nothing can be staged there
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    result = functions.fuse_mosaic(
        _job(output="m.tif", register=True, preview="m.png", overwrite=True)
    )
    assert result["path"] == str(site.out / "m.tif")
    assert not system_tmp.exists()
    written = sorted(p.name for p in site.out.iterdir())
    assert "m.tif" in written and "m.png" in written and "m.registered.csv" in written
    assert not [name for name in written if name.endswith((".staging", ".partial"))], written
    tifffile.imread(site.out / "m.tif")  # complete
    functions.fuse_mosaic(_job(output="m.tif", register=True, preview="m.png", overwrite=True))
    assert sorted(p.name for p in site.out.iterdir()) == written  # replaced in place
