"""Fusion against ground truth: mosaics cut from a bundled image and fused back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from _mosaic_helpers import coverage, truth_view

from scopefx.errors import ConfigError, ImageNotFoundError
from scopefx.fusion import BLENDS, FuseOptions, FusionParams, fuse, fuse_lazy
from scopefx.io._tiles import Tile, TileTable, translation
from scopefx.samples import make_mosaic, write_mosaic

SMALL = {"grid": (3, 3), "tile_px": 128, "name": "retina"}


def _fused(table: Path | TileTable, **params: object) -> tuple[np.ndarray, object]:
    lazy = fuse_lazy(table, params=FusionParams(chunk_px=96, **params))  # type: ignore[arg-type]
    return lazy.compute(), lazy.scopefx_plan


@pytest.mark.parametrize("blend", BLENDS)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_integer_shifts_reproduce_the_image_exactly(tmp_path, blend, dtype):
    mosaic = make_mosaic(**SMALL, jitter_px=5, dtype=dtype)
    table = write_mosaic(tmp_path, mosaic)
    extra = {"focus_gamma": 1.0} if blend == "focus" else {}
    if blend == "focus":
        t = TileTable.from_positions(
            [str(tmp_path / f"tile_{i:04d}.tif") for i in range(9)],
            mosaic.positions_xy,
            focus=list(range(1, 10)),
        )
        fused, plan = _fused(t, blend=blend, **extra)
    else:
        fused, plan = _fused(table, blend=blend)
    covered = coverage(plan)
    assert fused.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fused[covered], truth_view(mosaic.truth, plan)[covered])
    assert np.all(fused[~covered] == 0)  # the fill value
    assert (~covered).any()  # jitter leaves uncovered corners: the check above means something


@pytest.mark.parametrize("blend", ["linear", "mean", "max", "first", "closest"])
def test_nan_pixels_are_no_data_that_a_neighbour_fills(tmp_path, blend):
    """NaN in a float tile (a warped or masked export) spread into the blend of the overlap, so
    the neighbour's good pixels came out NaN; they are no data, like the outside of a tile."""
    mosaic = make_mosaic(**SMALL, overlap=0.25, dtype="float32")
    table = write_mosaic(tmp_path, mosaic)
    centre = mosaic.tiles[4].copy()
    centre[:8, :] = np.nan  # under tile 1
    centre[:, :8] = np.inf  # under tile 3
    tifffile.imwrite(tmp_path / "tile_0004.tif", centre)
    fused, plan = _fused(table, blend=blend)
    assert np.isfinite(fused).all()
    np.testing.assert_array_equal(fused, truth_view(mosaic.truth, plan))


@pytest.mark.parametrize(
    ("case", "order", "max_rmse"),
    [
        ({"subpixel": True, "jitter_px": 3.0}, 1, 1.5e-3),
        ({"subpixel": True, "jitter_px": 3.0}, 3, 3e-4),
        ({"rotation_deg": 1.5}, 1, 1.5e-3),
        ({"rotation_deg": 1.5}, 3, 3e-4),
    ],
)
def test_subpixel_and_rotated_tiles_within_stated_rmse(tmp_path, case, order, max_rmse):
    """Tiles resampled from a smooth truth (sigma 1 px) are put back within the RMSE given
    (relative to a [0, 1] image); cubic beats linear."""
    mosaic = make_mosaic(**SMALL, smooth_sigma_px=1.0, dtype="float32", **case)
    fused, plan = _fused(write_mosaic(tmp_path, mosaic), order=order)
    covered = coverage(plan)
    err = (fused - truth_view(mosaic.truth, plan))[covered]
    rmse = float(np.sqrt(np.mean(err**2)))
    assert rmse < max_rmse, rmse
    if "rotation_deg" in case:
        assert not all(Tile("", a).is_translation for a in mosaic.affines)


def test_noise_averages_down_in_overlaps(tmp_path):
    """Read noise is independent per tile: where two tiles overlap, the mean halves its
    variance."""
    mosaic = make_mosaic(**SMALL, overlap=0.3, jitter_px=2, read_noise=1000.0)
    clean = make_mosaic(**SMALL, overlap=0.3, jitter_px=2)
    fused, plan = _fused(write_mosaic(tmp_path, mosaic), blend="mean")
    count = np.zeros(plan.shape, int)
    for lo, hi in plan.boxes:
        count[lo[0] : hi[0], lo[1] : hi[1]] += 1
    err = fused.astype(float) - truth_view(clean.truth, plan)
    single = np.sqrt(np.mean(err[count == 1] ** 2))
    double = np.sqrt(np.mean(err[count == 2] ** 2))
    assert single == pytest.approx(1000, rel=0.05)
    assert double == pytest.approx(1000 / np.sqrt(2), rel=0.05)


def test_linear_blending_has_no_seam_steps(tmp_path):
    """Vignetted tiles of a flat specimen: the plain mean jumps where a tile's edge enters
    the overlap; feathered weights fall to zero there, so the mosaic stays smooth."""
    ramp = make_mosaic(**SMALL, vignetting=0.6, dtype="float32").vignetting
    flat = np.full((128, 128), 0.5, np.float32) * ramp
    tifffile.imwrite(tmp_path / "flat.tif", flat)
    refs = [str(tmp_path / "flat.tif")] * 4
    table = TileTable.from_positions(refs, [(0, 0), (100, 0), (0, 100), (100, 100)])
    steps = {}
    for blend in ("linear", "mean"):
        fused, _ = _fused(table, blend=blend)
        steps[blend] = max(np.abs(np.diff(fused, axis=a)).max() for a in (0, 1))
    tile_step = max(np.abs(np.diff(flat, axis=a)).max() for a in (0, 1))
    assert steps["mean"] > 5 * tile_step
    assert steps["linear"] < 2 * tile_step


def test_focus_blending_prefers_the_sharper_tile(tmp_path):
    """Two tiles of the same area, one blurred: focus blending returns the sharp one."""
    from scipy import ndimage

    mosaic = make_mosaic(**{**SMALL, "grid": (1, 1)}, dtype="float32")
    sharp = mosaic.tiles[0]
    soft = ndimage.gaussian_filter(sharp, 3)
    tifffile.imwrite(tmp_path / "sharp.tif", sharp)
    tifffile.imwrite(tmp_path / "soft.tif", soft)
    table = TileTable.from_positions(
        [str(tmp_path / "soft.tif"), str(tmp_path / "sharp.tif")], [(0, 0), (0, 0)]
    )
    fused, plan = _fused(table, blend="focus")  # scores computed with MHFD
    assert plan.focus[1] > 2 * plan.focus[0]
    mean, _ = _fused(table, blend="mean")
    assert np.abs(fused - sharp).mean() < 0.05 * np.abs(mean - sharp).mean()


def test_rounding_is_to_nearest_not_truncation(tmp_path):
    a = np.full((64, 64), 10, np.uint8)
    b = np.full((64, 64), 13, np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    table = TileTable.from_positions([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")],
                                     [(0, 0), (0, 0)])  # fmt: skip
    fused, _ = _fused(table, blend="mean")
    assert np.all(fused == 12)  # 11.5 rounds to 12; truncation would give 11


def test_fill_value_where_no_tile_covers(tmp_path):
    tile = np.full((40, 40), 7, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", tile)
    table = TileTable.from_positions([str(tmp_path / "a.tif")] * 2, [(0, 0), (100, 0)])
    fused, _ = _fused(table, fill=3)
    assert fused.shape == (40, 140)
    assert np.all(fused[:, 40:100] == 3) and np.all(fused[:, :40] == 7)


def test_3d_tiles(tmp_path):
    mosaic = make_mosaic(**{**SMALL, "tile_px": 64}, depth=12, jitter_px=3)
    table = write_mosaic(tmp_path, mosaic)
    fused, plan = _fused(table)
    assert fused.shape[0] == 12 and plan.ndim == 3
    covered = coverage(plan)
    np.testing.assert_array_equal(fused[covered], truth_view(mosaic.truth, plan)[covered])


def test_3d_tiles_placed_in_z(tmp_path):
    """Two (Z, Y, X) stacks stacked along z with a z overlap: the z position is honoured."""
    vol = (np.arange(20)[:, None, None] * np.ones((1, 32, 32)) * 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "lo.tif", vol[:12])
    tifffile.imwrite(tmp_path / "hi.tif", vol[8:])
    table = TileTable.from_positions(
        [str(tmp_path / "lo.tif"), str(tmp_path / "hi.tif")], [(0, 0, 0), (0, 0, 8)]
    )
    fused, _ = _fused(table)
    np.testing.assert_array_equal(fused, vol)


def test_multichannel_tiles(tmp_path):
    mosaic = make_mosaic(**SMALL, channels=3, jitter_px=2)
    fused, plan = _fused(write_mosaic(tmp_path, mosaic))
    assert fused.shape[0] == 3 and plan.channel_shape == (3,)
    covered = coverage(plan)
    truth = truth_view(mosaic.truth, plan)
    for c in range(3):
        np.testing.assert_array_equal(fused[c][covered[c]], truth[c][covered[c]])


def test_fuse_writes_an_ome_zarr_pyramid_equal_to_the_lazy_array(tmp_path):
    mosaic = make_mosaic(**SMALL, jitter_px=4)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    out = tmp_path / "mosaic.ome.zarr"
    result = fuse(
        table, out, params=FusionParams(chunk_px=96), options=FuseOptions(pixel_size_um=0.25)
    )
    lazy = fuse_lazy(table, params=FusionParams(chunk_px=96)).compute()
    level0 = zarr.open_array(out / "0", mode="r")[...]
    np.testing.assert_array_equal(level0, lazy)
    assert result.levels >= 3 and result.chunks_written > 0 and result.chunks_resumed == 0
    level1 = zarr.open_array(out / "1", mode="r")[...]
    h, w = (s // 2 * 2 for s in level0.shape)
    expected = np.rint(level0[:h, :w].astype(float).reshape(h // 2, 2, w // 2, 2).mean((1, 3)))
    np.testing.assert_array_equal(level1[: h // 2, : w // 2], expected)
    assert not (out / ".scopefx").exists()  # tidied up: a clean Zarr hierarchy
    assert json.loads((out / ".zattrs").read_text())["scopefx"]["n_tiles"] == 9


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_ngff_metadata_validates_and_opens_like_napari(tmp_path, ngff):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    mosaic = make_mosaic(**SMALL, jitter_px=4, channels=2)
    out = tmp_path / "m.ome.zarr"
    result = fuse(write_mosaic(tmp_path / "t", mosaic), out, params=FusionParams(chunk_px=64),
                  options=FuseOptions(ngff=ngff, pixel_size_um=0.5))  # fmt: skip
    group = zarr.open_group(out, mode="r")
    if ngff == "0.4":
        from ome_zarr_models.v04.image import Image

        ms = Image.from_zarr(group).attributes.multiscales[0]
    else:
        from ome_zarr_models.v05.image import Image as Image05

        ms = Image05.from_zarr(group).ome_attributes.multiscales[0]
    assert [a.name for a in ms.axes] == ["c", "y", "x"]
    scale0, shift0 = ms.datasets[0].coordinateTransformations
    assert list(scale0.scale) == [1.0, 0.5, 0.5]
    origin = np.array(result.origin_px) * 0.5
    assert list(shift0.translation) == [0.0, *origin]
    scale1, shift1 = ms.datasets[1].coordinateTransformations
    assert list(scale1.scale) == [1.0, 1.0, 1.0]
    assert list(shift1.translation) == [0.0, *(origin + 0.25)]
    nodes = list(Reader(parse_url(str(out)))())  # ome-zarr-py: what napari-ome-zarr uses
    assert nodes[0].data[0].shape == result.shape
    assert len(nodes[0].data) == result.levels


def test_small_mosaics_can_be_written_as_tiff(tmp_path):
    mosaic = make_mosaic(**SMALL, jitter_px=4, channels=2)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    result = fuse(table, tmp_path / "m.tif", options=FuseOptions(pixel_size_um=0.5))
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "CYX"
        data = tif.asarray()
    np.testing.assert_array_equal(data, fuse_lazy(table).compute())
    assert result.levels == 1 and result.shape == data.shape
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        fuse(table, tmp_path / "m.tif")


# --------------------------------------------------------------------------------------------
# bad input


def test_missing_tiles_are_listed_or_skipped(tmp_path):
    mosaic = make_mosaic(**SMALL)
    table = write_mosaic(tmp_path, mosaic)
    (tmp_path / "tile_0002.tif").unlink()
    (tmp_path / "tile_0007.tif").unlink()
    with pytest.raises(ImageNotFoundError, match=r"2 of 9 tiles are missing") as info:
        fuse(table, tmp_path / "out.ome.zarr")
    assert "tile_0002.tif" in str(info.value) and "tile_0007.tif" in str(info.value)
    result = fuse(table, tmp_path / "out.ome.zarr", options=FuseOptions(skip_missing=True))
    assert len(result.missing) == 2 and result.n_tiles == 7


def test_mixed_dtypes_are_refused_naming_the_tile(tmp_path):
    mosaic = make_mosaic(**SMALL)
    table = write_mosaic(tmp_path, mosaic)
    tifffile.imwrite(tmp_path / "tile_0004.tif", mosaic.tiles[4].astype(np.float32))
    with pytest.raises(ConfigError, match=r"share dtype.*tile_0004\.tif \(float32"):
        fuse_lazy(table)


def _samples_how(samples: int) -> dict[str, object]:
    if samples == 2:
        return {"photometric": "minisblack", "planarconfig": "contig", "extrasamples": [2]}
    return {"photometric": "rgb", "planarconfig": "contig"}


def _colour_mosaic(tmp_path: Path, samples: int, **kw: object) -> tuple[Path, np.ndarray, object]:
    """A 3x3 mosaic whose tiles are written samples last (grey + alpha, RGB or RGBA PNG-like
    TIFFs), each channel different; returns the table, the tiles' channels first and the
    mosaic."""
    mosaic = make_mosaic(**{**SMALL, "dtype": "uint8", **kw})  # type: ignore[arg-type]
    table = write_mosaic(tmp_path, mosaic)
    planes = []
    for k, tile in enumerate(mosaic.tiles):
        chans = [tile, tile // 4 * 3 + 30, tile // 2 + 100][: 3 if samples >= 3 else 1]
        if samples in (2, 4):
            chans.append(np.full_like(tile, 255))  # alpha: not fused
        colour = np.stack(chans, axis=-1)
        tifffile.imwrite(tmp_path / f"tile_{k:04d}.tif", colour, **_samples_how(samples))
        planes.append(np.stack(chans[: 3 if samples >= 3 else 1]))
    return table, np.stack(planes), mosaic


@pytest.mark.parametrize("samples", [2, 3, 4])
def test_colour_tiles_fuse_channel_by_channel(tmp_path, samples):
    """RGB(A) tiles fuse as 3 channels red, green, blue (alpha not fused); grey + alpha as grey.
    They were refused (and before that, fused as H channels of (W, 3) columns)."""
    table, planes, mosaic = _colour_mosaic(tmp_path, samples, jitter_px=5)
    fused, plan = _fused(table)
    keep = 3 if samples >= 3 else 1
    assert plan.samples_last == keep
    assert fused.shape == ((3,) if keep == 3 else ()) + plan.shape and fused.dtype == np.uint8
    covered = coverage(plan).reshape(-1, *plan.shape).all(axis=0)
    for c in range(keep):  # each channel is the fusion of that channel's grey tiles
        grey = tmp_path / f"grey{c}"
        grey_mosaic = type(mosaic)(**{**vars(mosaic), "tiles": [p[c] for p in planes]})
        expected, _ = _fused(write_mosaic(grey, grey_mosaic))
        got = fused[c] if keep == 3 else fused
        np.testing.assert_array_equal(got[covered], expected[covered])
    if keep == 3:  # red, green, blue in that order, not three copies of one
        r, g, b = (fused[c][covered].astype(float) for c in range(3))
        assert np.abs(g - (r * 0.75 + 30)).max() < 3 and np.abs(b - (r / 2 + 100)).max() < 2


@pytest.mark.parametrize("samples", [2, 4])
@pytest.mark.parametrize("blend", ["linear", "mean", "max", "first", "closest"])
def test_transparent_pixels_of_colour_tiles_are_no_data(tmp_path, samples, blend):
    """A PNG with transparent padding (alpha 0, black under it) blended its black into the
    neighbour's overlap: a dark seam. Transparent pixels are no data, like NaN in a float
    tile; the neighbour fills them."""
    clean, _ = _fused(_colour_mosaic(tmp_path / "clean", samples, overlap=0.25)[0], blend=blend)
    table, _, _ = _colour_mosaic(tmp_path, samples, overlap=0.25)  # overlaps of 32 px
    corner = tifffile.imread(tmp_path / "tile_0000.tif")
    corner[-24:, :] = corner[:, -24:] = 0  # padding under tiles 1, 3 and 4: alpha 0, black
    tifffile.imwrite(tmp_path / "tile_0000.tif", corner, **_samples_how(samples))
    fused, _ = _fused(table, blend=blend)
    np.testing.assert_array_equal(fused, clean)


def test_transparent_padding_does_not_stop_registration(tmp_path):
    """RGBA tiles with a transparent (black) padding in their overlaps: registration
    correlated the black bands and found no usable pair (0 of 12, refused); transparent
    pixels are no data there too, and the QC report's agreement skips them as well."""
    from scopefx.fusion import register, registration_report
    from scopefx.io import read_tile_table

    _, _, mosaic = _colour_mosaic(tmp_path, 4, overlap=0.25)
    true = mosaic.affines[:, :2, 2]
    off = np.random.default_rng(3).uniform(-4, 4, true.shape)
    refs = list(read_tile_table(tmp_path / "tiles.csv").refs)
    for ref in refs:
        tile = tifffile.imread(ref)
        tile[-12:, :] = tile[:, -12:] = 0  # alpha 0, black under it
        tifffile.imwrite(ref, tile, **_samples_how(4))
    TileTable.from_positions(refs, (true + off)[:, ::-1]).to_csv(tmp_path / "stage.csv")
    reg = register(read_tile_table(tmp_path / "stage.csv"))
    assert sum(p.used for p in reg.pairs) == 12
    assert reg.flatfield == "estimated"  # the padding left out of it (read as black: refused)
    err = reg.table.affines[:, :2, 2] - true
    err -= err.mean(axis=0)
    assert np.abs(err).max() < 0.6, err
    report = registration_report(reg)  # the public API reads the tiles as fusion (was [3, 128])
    assert report["tiles"][0]["size"] == [128, 128]
    assert report["summary"]["pairs_used"] == 12 and report["summary"]["overlap_agreement"] > 0.9


def test_two_channel_tiles_with_samples_last_keep_both_channels(tmp_path):
    """A chunky 2-channel TIFF (H, W, 2), its second sample not marked as alpha (a DAPI + GFP
    camera export), was taken for grey + alpha: the second channel was dropped. Only a sample
    the file marks as alpha is alpha; the others are channels."""
    mosaic = make_mosaic(**{**SMALL, "dtype": "uint8"}, overlap=0.25)
    table = write_mosaic(tmp_path, mosaic)
    for k, tile in enumerate(mosaic.tiles):
        second = np.where(np.arange(128)[:, None] % 16 < 8, 0, 255 - tile)  # zeros: not alpha
        tifffile.imwrite(tmp_path / f"tile_{k:04d}.tif", np.stack([tile, second], axis=-1),
                         photometric="minisblack", planarconfig="contig")  # fmt: skip
    fused, plan = _fused(table)
    assert plan.samples_last == 2 and fused.shape == (2, *plan.shape)
    expected, _ = _fused(write_mosaic(tmp_path / "grey", mosaic))
    np.testing.assert_array_equal(fused[0], expected)


def test_cmyk_tiles_are_refused_naming_them(tmp_path):
    """A CMYK JPEG (what some export tools write) was taken for RGBA: cyan, magenta, yellow
    fused as red, green, blue and black as alpha. It is refused, before any output exists."""
    from PIL import Image

    table, _, _ = _colour_mosaic(tmp_path, 3)
    for k in range(9):
        rgb = tifffile.imread(tmp_path / f"tile_{k:04d}.tif")
        Image.fromarray(rgb).convert("CMYK").save(tmp_path / f"tile_{k:04d}.jpg")
    text = table.read_text().replace(".tif,", ".jpg,")
    (tmp_path / "cmyk.csv").write_text(text)
    out = tmp_path / "m.ome.zarr"
    with pytest.raises(
        ConfigError, match=r"9 of 9 tiles.*not RGB.*tile_0000\.jpg \(CMYK\).*convert"
    ):
        fuse(tmp_path / "cmyk.csv", out, options=FuseOptions(register=True))
    assert not out.exists()


def test_colour_tiles_write_named_channels_a_colour_tiff_and_preview(tmp_path):
    table, _, _ = _colour_mosaic(tmp_path, 3, jitter_px=5)
    out = tmp_path / "m.ome.zarr"
    result = fuse(table, out, options=FuseOptions(preview=tmp_path / "m.png"))
    assert result.shape[0] == 3 and "colour tiles (RGB" in result.extra["colour"]
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    channels = attrs["omero"]["channels"]
    assert [c["label"] for c in channels] == ["red", "green", "blue"]
    assert [c["color"] for c in channels] == ["FF0000", "00FF00", "0000FF"]
    zarr_rgb = zarr.open_array(str(out / "0"), mode="r")[...]
    tif = tmp_path / "m.tif"
    fuse(table, tif, options=FuseOptions(preview=tmp_path / "t.png"))
    with tifffile.TiffFile(tif) as f:  # opens in colour anywhere: an RGB TIFF, samples last
        page = f.pages.first
        assert page.photometric == tifffile.PHOTOMETRIC.RGB and page.shape[-1] == 3
        np.testing.assert_array_equal(np.moveaxis(page.asarray(), -1, 0), zarr_rgb)
    from PIL import Image

    for png in ("m.png", "t.png"):  # the previews are in colour too
        rgb = np.asarray(Image.open(tmp_path / png).convert("RGB"), dtype=int)
        assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 100, png


def test_colour_tiles_register_flatfield_and_resume(tmp_path):
    from scopefx.fusion import FusionJob, estimate_flatfield, prepare, register
    from scopefx.io import read_tile_table

    _, _, mosaic = _colour_mosaic(tmp_path, 4, overlap=0.25)
    true = mosaic.affines[:, :2, 2]
    off = np.random.default_rng(3).uniform(-4, 4, true.shape)
    refs = list(read_tile_table(tmp_path / "tiles.csv").refs)
    TileTable.from_positions(refs, (true + off)[:, ::-1]).to_csv(tmp_path / "stage.csv")
    table = tmp_path / "stage.csv"
    reg = register(read_tile_table(table))  # the public API reads the colour tiles as fusion does
    err = reg.table.affines[:, :2, 2] - true
    err -= err.mean(axis=0)
    assert np.abs(err).max() < 0.6, err
    assert np.abs(off - off.mean(axis=0)).max() > 3  # the stage really was off
    flat = estimate_flatfield(refs)
    assert flat.flat.shape == (3, 128, 128)
    flat_job = prepare(table, tmp_path / "f.ome.zarr", options=FuseOptions(flatfield="estimate"))
    assert flat_job.flatfield.flat.shape == (3, 128, 128)
    job = prepare(table, tmp_path / "r.ome.zarr", options=FuseOptions(register=True))
    assert job.plan.samples_last == 3 and job.extra["registration"]["pairs_used"] == 12
    reopened = FusionJob.open(tmp_path / "r.ome.zarr")  # another process: the saved plan
    assert reopened.plan.samples_last == 3
    assert reopened.plan.fingerprint() == job.plan.fingerprint()
    result = reopened.finish()
    assert result.shape[0] == 3


def test_colour_and_grey_tiles_are_not_mixed(tmp_path):
    table, _, mosaic = _colour_mosaic(tmp_path, 3)
    tifffile.imwrite(tmp_path / "tile_0004.tif", mosaic.tiles[4])
    with pytest.raises(ConfigError, match=r"8 of 9 tiles are colour.*tile_0004\.tif"):
        fuse_lazy(table)
    grey_alpha = np.stack([mosaic.tiles[4]] * 2, axis=-1)  # grey + alpha among RGB
    tifffile.imwrite(tmp_path / "tile_0004.tif", grey_alpha, **_samples_how(2))
    with pytest.raises(ConfigError, match=r"9 of 9 tiles are colour.*tile_0004\.tif"):
        fuse(table, tmp_path / "out.ome.zarr", options=FuseOptions(register=True))
    assert not (tmp_path / "out.ome.zarr").exists()


def test_singular_affine_is_refused(tmp_path):
    bad = np.eye(3)
    bad[0, 0] = 0
    with pytest.raises(ConfigError, match=r"tile 1 \(b\.tif\): singular affine"):
        TileTable((Tile("a.tif", np.eye(3)), Tile("b.tif", bad)))


def test_far_apart_positions_are_refused_unless_forced(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint16))
    refs = [str(tmp_path / "a.tif")] * 3
    table = TileTable.from_positions(refs, [(0, 0), (60, 0), (4e6, 3e6)])  # um taken as px
    with pytest.raises(ConfigError, match=r"over the limit.*a\.tif at \[4000000, 3000000\]"):
        fuse_lazy(table)
    near = TileTable.from_positions(refs, [(0, 0), (60, 0), (9000, 7000)])
    small_limit = FusionParams(max_output_gib=0.01)
    with pytest.raises(ConfigError, match=r"over the limit of 0\.01 GiB"):
        fuse_lazy(near, params=small_limit)
    lazy = fuse_lazy(near, params=small_limit, options=FuseOptions(force=True))
    assert lazy.shape == (7064, 9064)  # planned, nothing computed


def test_output_holding_something_else_needs_overwrite(tmp_path):
    mosaic = make_mosaic(**SMALL)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    out = tmp_path / "out.ome.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"did not write; choose another path"):
        fuse(table, out)
    with pytest.raises(ConfigError, match=r"--overwrite refused: .* not a scopefx mosaic"):
        fuse(
            table, out, options=FuseOptions(overwrite=True)
        )  # overwrite removes only what scopefx wrote
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    fuse(table, out)
    fuse(table, out, options=FuseOptions(overwrite=True))  # a scopefx mosaic: replaced
    with pytest.raises(ConfigError, match=r"exists \(complete\); pass --resume"):
        fuse(table, out)
    resumed = fuse(table, out, options=FuseOptions(resume=True))
    assert resumed.chunks_written == 0  # nothing left to do
    with pytest.raises(ConfigError, match="other tiles or parameters") as info:
        fuse(table, out, params=FusionParams(blend="max"), options=FuseOptions(resume=True))
    # the refusal names what differs (it gave two hashes only)
    assert "blend ('linear', now 'max')" in str(info.value), info.value
    assert "tile list" not in str(info.value) and "flat field" not in str(info.value)
    with pytest.raises(ConfigError, match="holds the tile"):
        fuse(table, tmp_path, options=FuseOptions(overwrite=True))  # would delete the tiles


# --------------------------------------------------------------------------------------------
# resume

_KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from scopefx.fusion import FuseOptions, FusionParams, fuse
    table, out, after = sys.argv[1], sys.argv[2], int(sys.argv[3])
    count = 0
    def on_chunk(status, total):
        global count
        count += 1
        if count >= after:
            os.kill(os.getpid(), signal.SIGKILL)
    fuse(table, out, params=FusionParams(chunk_px=64), workers=2, on_chunk=on_chunk,
         options=FuseOptions(resume=os.path.exists(out)))
    """
)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".zattrs" not in p.name and p.name != "zarr.json"
    }


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 20, 45])
def test_resume_after_a_kill_equals_a_clean_run(tmp_path, kill_after):
    mosaic = make_mosaic(**SMALL, jitter_px=4, channels=2)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    clean = tmp_path / "clean.ome.zarr"
    fuse(table, clean, params=FusionParams(chunk_px=64))
    out = tmp_path / "killed.ome.zarr"
    script = tmp_path / "killer.py"
    script.write_text(_KILLER)
    run = subprocess.run([sys.executable, str(script), str(table), str(out), str(kill_after)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == -9, run.stderr
    assert (out / ".scopefx" / "plan.json").exists()
    # a torn write: the first chunk without a completion marker gets a file cut short
    done = out / ".scopefx" / "done"
    torn = next(
        f
        for f in sorted(clean.rglob("*"))
        if f.is_file() and f.relative_to(clean).parts[0].isdigit() and not f.name.startswith(".")
        and not (done / f.relative_to(clean).parts[0]
                 / ".".join(f.relative_to(clean).parts[2:])).exists()
    )  # fmt: skip
    (out / torn.relative_to(clean)).parent.mkdir(parents=True, exist_ok=True)
    (out / torn.relative_to(clean)).write_bytes(torn.read_bytes()[:10])
    # and a write the kill caught before it was published (its temporary file; a kill lands
    # there now and then: CI met one left in the resumed store)
    (out / torn.relative_to(clean)).with_name(f".{torn.name}.{'ab' * 16}.partial").write_bytes(b"")
    result = fuse(table, out, params=FusionParams(chunk_px=64), options=FuseOptions(resume=True))
    assert result.chunks_resumed >= kill_after  # each marker was written before on_chunk
    assert _tree(out) == _tree(clean)
    meta = json.loads((out / ".zattrs").read_text())
    clean_meta = json.loads((clean / ".zattrs").read_text())
    assert meta["multiscales"] == clean_meta["multiscales"]


def test_register_with_missing_tiles_skips_them(tmp_path):
    mosaic = make_mosaic(**{**SMALL, "tile_px": 160}, overlap=0.2, jitter_px=3)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    (tmp_path / "tiles" / "tile_0004.tif").unlink()
    result = fuse(
        table, tmp_path / "m.ome.zarr", options=FuseOptions(register=True, skip_missing=True)
    )
    assert result.n_tiles == 8 and len(result.missing) == 1
    assert result.extra["registration"]["pairs_used"] > 0


def _interrupted(tmp_path, *, chunks: int):
    """A small mosaic's table and the output of a fusion stopped after ``chunks`` chunks."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL, jitter_px=4))
    out = tmp_path / "m.ome.zarr"
    calls = []

    def stop(status: int, total: int) -> None:
        calls.append(status)
        if len(calls) == chunks:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fuse(table, out, params=FusionParams(chunk_px=64), workers=1, on_chunk=stop)
    return table, out


def test_resume_rewrites_a_chunk_without_a_marker(tmp_path):
    """In-process: a chunk whose data was damaged after its marker was lost is rewritten."""
    table, out = _interrupted(tmp_path, chunks=5)
    done = sorted(os.listdir(out / ".scopefx" / "done" / "0"))
    assert len(done) == 5
    result = fuse(table, out, params=FusionParams(chunk_px=64), options=FuseOptions(resume=True))
    assert result.chunks_resumed == 5
    clean = tmp_path / "clean.ome.zarr"
    fuse(table, clean, params=FusionParams(chunk_px=64))
    assert _tree(out) == _tree(clean)


def test_a_resume_refuses_tiles_written_again_since_the_run_began(tmp_path):
    """A tile exported again (same path, shape and position, new pixels) between a kill and
    the resume was mixed into the finished chunks; now the resume is refused."""
    from scopefx.io import read_tile_table

    table, out = _interrupted(tmp_path, chunks=3)
    tile = read_tile_table(table).refs[1]
    pixels = tifffile.imread(tile)
    tifffile.imwrite(tile, pixels[::-1].copy())  # the same shape, other pixels
    with pytest.raises(ConfigError) as info:
        fuse(table, out, params=FusionParams(chunk_px=64), options=FuseOptions(resume=True))
    assert "different: the tiles' files (size or modification time)" in str(info.value)


@pytest.mark.parametrize("fill", [70000.0, -1.0, 1.5, float("nan")])  # uint16 tiles
def test_a_fill_the_dtype_cannot_hold_is_refused(tmp_path, fill):
    """uint8 tiles with fill 300: the Zarr metadata said 44, the uncovered pixels held 255."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic(**SMALL))
    with pytest.raises(ConfigError, match="fill"):
        fuse(table, tmp_path / "m.ome.zarr", params=FusionParams(fill=fill))
    assert not (tmp_path / "m.ome.zarr").exists()


def test_plan_of_a_rotated_tile_covers_its_footprint():
    a = translation([10.0, 20.0]) @ np.array(
        [[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1]]
    )
    table = TileTable((Tile("a.tif", a),))
    from scopefx.fusion import make_plan

    plan = make_plan(table, [(100, 50)], params=FusionParams(chunk_px=32))
    corners = np.array([[0, 0], [0, 49], [99, 0], [99, 49]])
    mapped = corners @ a[:2, :2].T + a[:2, 2] - plan.origin
    assert np.all(mapped >= -0.5) and np.all(mapped < np.array(plan.shape) + 0.5)


def test_three_samples_not_marked_as_colour_are_channels_not_rgb(tmp_path):
    """A chunky TIFF of 3 grey samples (three fluorescence channels, ``photometric``
    minisblack) fuses as 3 channels, but is not labelled red, green, blue nor written as an
    RGB TIFF: only files that say RGB are."""
    table, _, _ = _colour_mosaic(tmp_path, 3)
    for k in range(9):
        rgb = tifffile.imread(tmp_path / f"tile_{k:04d}.tif")
        tifffile.imwrite(tmp_path / f"tile_{k:04d}.tif", rgb, photometric="minisblack",
                         planarconfig="contig")  # fmt: skip
    result = fuse(table, tmp_path / "m.ome.zarr")
    assert result.shape[0] == 3 and "not marked as colour" in result.extra["colour"]
    assert "omero" not in zarr.open_group(str(tmp_path / "m.ome.zarr"), mode="r").attrs
    fuse(table, tmp_path / "m.tif")
    with tifffile.TiffFile(tmp_path / "m.tif") as f:
        assert f.pages.first.photometric != tifffile.PHOTOMETRIC.RGB
        assert f.series[0].shape[0] == 3  # channels first, as the OME-Zarr


def test_the_preview_of_a_tiff_of_unmarked_samples_keeps_its_shape(tmp_path):
    """The preview took every TIFF mosaic of 3-sample tiles for an RGB TIFF (samples last) and
    moved its last axis first: a channels-first TIFF of unmarked samples came out as a
    768 x 58 px sliver of its columns. Whether a TIFF is RGB is read from the TIFF."""
    from PIL import Image

    table, _, _ = _colour_mosaic(tmp_path, 3)
    for k in range(9):
        rgb = tifffile.imread(tmp_path / f"tile_{k:04d}.tif")
        tifffile.imwrite(tmp_path / f"tile_{k:04d}.tif", rgb, photometric="minisblack",
                         planarconfig="contig")  # fmt: skip
    result = fuse(table, tmp_path / "m.tif", options=FuseOptions(preview=tmp_path / "p.png"))
    with Image.open(tmp_path / "p.png") as png:
        width, height = png.size
    mosaic_h, mosaic_w = result.shape[-2:]
    assert abs(height / width - mosaic_h / mosaic_w) < 0.25, (width, height, result.shape)


def test_multi_page_colour_tiles_are_refused_saying_why(tmp_path):
    """Tiles of 2 pages of RGB images, (2, H, W, 3): their colour samples were taken for the
    columns (a layout warning about a 53 x 114 px mosaic of 64 px tiles), then refused for
    '2 leading non-spatial axes (2, 64)'. They are refused naming the tiles and the pages."""
    mosaic = make_mosaic(**{**SMALL, "dtype": "uint8"})  # type: ignore[arg-type]
    table = write_mosaic(tmp_path, mosaic)
    for k, tile in enumerate(mosaic.tiles):
        rgb = np.stack([tile, tile, tile], axis=-1)
        tifffile.imwrite(tmp_path / f"tile_{k:04d}.tif", np.stack([rgb, rgb]), photometric="rgb")
    with pytest.raises(ConfigError, match=r"9 of 9 tiles hold several pages of colour images: "
                       r".*tile_0000\.tif \(2 pages of RGB"):  # fmt: skip
        fuse_lazy(table)


def test_a_finished_store_holds_no_temporary_file_of_a_write_killed_mid_run(tmp_path):
    """A worker killed mid-write leaves its chunk's temporary file; another worker writes the
    chunk. The finished store must not keep the leftover."""
    mosaic = make_mosaic(**SMALL, jitter_px=4)
    table = write_mosaic(tmp_path / "tiles", mosaic)
    out = tmp_path / "m.ome.zarr"
    planted = []

    def on_chunk(status, total):
        if not planted:  # as a killed worker would leave it, beside a chunk already written
            chunk = next(p for p in sorted((out / "0").rglob("*")) if p.is_file())
            leftover = chunk.with_name(f".{chunk.name}.{'cd' * 16}.partial")
            leftover.write_bytes(b"half")
            planted.append(leftover)

    fuse(table, out, params=FusionParams(chunk_px=64), on_chunk=on_chunk)
    assert planted and not planted[0].exists()
    assert not [p for p in out.rglob("*.partial")]


@pytest.mark.parametrize("fraction", [0.0003, 0.2, 0.4999, 0.5001, 0.8])
def test_tiles_at_fractional_positions_add_no_uncovered_edge(tmp_path, fraction):
    """A pixel belongs to the mosaic if its centre is inside a tile's footprint: two 60 x 80
    tiles side by side at y = 10 + f, x = 10 + f give 60 x 150 covered pixels and nothing else.
    Before: a row and a column that no tile covers (the fill value, a black line along the
    edge of every registered mosaic) at the bottom and right for f < 0.5, the top and left
    above it."""
    rng = np.random.default_rng(3)
    refs = []
    for k in range(2):
        refs.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(refs[-1], rng.integers(50, 250, (60, 80), dtype=np.uint8))
    table = TileTable.from_positions(refs, [(10 + fraction, 10 + fraction),
                                            (80 + fraction, 10 + fraction)])  # fmt: skip
    fused, _ = _fused(table, blend="linear")
    assert fused.shape == (60, 150)
    assert np.count_nonzero(fused == 0) == 0


def test_a_preview_named_other_than_png_is_refused_by_finish_too(tmp_path):
    """FusionJob.finish(preview=...) (and the remote finish_mosaic that calls it) wrote PNG
    bytes under a .jpg name; FuseOptions refused it, finish did not."""
    from scopefx.fusion import prepare

    table = write_mosaic(tmp_path / "tiles", make_mosaic("retina", grid=(1, 2), tile_px=64))
    job = prepare(table, tmp_path / "m.ome.zarr")
    with pytest.raises(ConfigError, match=r"a preview is a PNG; name it \.png"):
        job.finish(preview=tmp_path / "m.jpg")
    assert not (tmp_path / "m.jpg").exists()


def test_an_existing_file_at_the_preview_path_is_refused_before_fusing(tmp_path):
    """Through the API (and the endpoint's fuse_mosaic) a PNG scopefx did not write at the
    preview path was refused only after the whole fusion; now before the output is made."""
    table = write_mosaic(tmp_path / "tiles", make_mosaic("retina", grid=(1, 2), tile_px=64))
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG someone's")
    with pytest.raises(ConfigError, match=r"photo\.png exists and is not a preview scopefx wrote"):
        fuse(table, tmp_path / "m.ome.zarr", options=FuseOptions(preview=str(photo)))
    assert not (tmp_path / "m.ome.zarr").exists() and photo.read_bytes() == b"\x89PNG someone's"


@pytest.mark.parametrize("register", [False, True])
def test_a_tile_without_pixels_is_refused_by_name(tmp_path, register):
    """Tiles of 0 x 128 px raised ZeroDivisionError (the layout's area); one among good tiles
    under registration, an error about an array of shapes that named no tile."""
    paths = []
    for k in range(3):
        paths.append(str(tmp_path / f"t{k}.tif"))
        if k == 1:
            np.save(tmp_path / "t1.npy", np.ones((0, 128), np.uint16))
            paths[-1] = str(tmp_path / "t1.npy")
        else:
            tifffile.imwrite(paths[-1], np.ones((128, 128), np.uint16))
    table = TileTable.from_positions(paths, [(0, 0), (100, 0), (200, 0)])
    with pytest.raises(ConfigError, match=r"1 tile\(s\) hold no pixels: .*t1\.npy \(0 x 128 px\)"):
        fuse(table, tmp_path / "m.ome.zarr", options=FuseOptions(register=register))
    assert not (tmp_path / "m.ome.zarr").exists()


def test_an_output_below_a_file_is_refused_before_any_tile_is_read(tmp_path):
    """``-o table.csv/m.ome.zarr`` read every tile (and registered them) before a
    NotADirectoryError traceback."""
    (tmp_path / "notes.txt").write_text("x")

    def never(ref: str) -> np.ndarray:
        raise AssertionError(f"{ref} was read")

    table = TileTable.from_positions(["a.tif", "b.tif"], [(0, 0), (100, 0)])
    for out in ("notes.txt/m.ome.zarr", "notes.txt/deeper/m.tif"):
        with pytest.raises(ConfigError, match=r"notes\.txt' is a file, not a folder"):
            fuse(table, tmp_path / out, read=never)
