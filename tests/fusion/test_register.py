"""Tests of tile registration, on tiles cut from a real bundled image at known positions.

Synthetic steps: :func:`scopefx.samples.bundled_image` gives the ground truth; tiles are cut at
true positions (sub-pixel ones by cubic-spline shifting of the ground truth); the "stage"
positions are the true ones plus seeded uniform errors. Registration fixes tiles only up to one
common offset (the prior pulls toward the stage mean), so positions are compared after removing
the mean error.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from scopefx import samples
from scopefx.errors import ConfigError, ImageNotFoundError, RegistrationError, ResourceLimitError
from scopefx.fusion import FlatField
from scopefx.fusion._overlaps import overlapping_pairs
from scopefx.fusion._qc import overlap_agreement
from scopefx.fusion._register import register
from scopefx.fusion._regparams import RegistrationParams
from scopefx.io import read_tile_table
from scopefx.io._tiles import Tile, TileTable

TILE, STEP, GRID, MARGIN = 160, 112, 4, 24


def _truth(size: int = 560) -> np.ndarray:
    return samples.bundled_image("immunohistochemistry", size=size)


def _cut(image: np.ndarray, pos: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Tile whose pixel p shows image(p + pos), by spline shifting a padded local window."""
    base = np.floor(pos).astype(int)
    frac = pos - base
    pad = 8
    lo = base - pad
    window = image[tuple(slice(a, a + n + 2 * pad) for a, n in zip(lo, shape, strict=True))]
    if np.any(frac):
        window = ndimage.shift(window.astype(np.float64), -frac, order=3, mode="reflect")
    return np.ascontiguousarray(window[(slice(pad, -pad),) * len(shape)], dtype=np.float32)


def _mosaic(
    *, subpixel: bool = False, seed: int = 0, error_px: float = 6.0
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """4x4 tiles of 160 px overlapping by 48 px; returns tiles, true and stage positions (y, x)."""
    rng = np.random.default_rng(seed)
    grid = np.array([(r, c) for r in range(GRID) for c in range(GRID)], dtype=float)
    true = MARGIN + grid * STEP + rng.integers(-3, 4, grid.shape)
    if subpixel:
        true = true + rng.uniform(-0.5, 0.5, true.shape)
    image = _truth()
    tiles = [_cut(image, p, (TILE, TILE)) for p in true]
    stage = true + rng.uniform(-error_px, error_px, true.shape)
    return tiles, true, stage


def _table(stage_yx: np.ndarray, refs: list[str] | None = None) -> TileTable:
    refs = refs or [f"tile_{k:02d}" for k in range(len(stage_yx))]
    return TileTable.from_positions(refs, stage_yx[:, ::-1])


def _memory_reader(tiles: list[np.ndarray]):
    by_ref = {f"tile_{k:02d}": t for k, t in enumerate(tiles)}
    return by_ref.__getitem__


def _position_error(table: TileTable, true: np.ndarray, skip: tuple[int, ...] = ()) -> np.ndarray:
    """|placed - true| per tile after removing the mean offset of the tiles not skipped."""
    nd = table.ndim
    err = table.affines[:, :nd, nd] - true
    keep = np.setdiff1d(np.arange(len(err)), skip)
    return np.abs(err - err[keep].mean(axis=0))


@pytest.mark.parametrize("subpixel", [False, True], ids=["integer", "subpixel"])
def test_register_recovers_true_positions(subpixel: bool) -> None:
    tiles, true, stage = _mosaic(subpixel=subpixel)
    table = _table(stage)
    assert _position_error(table, true).max() > 3  # the stage really is off
    reg = register(table, read=_memory_reader(tiles), shapes=[(TILE, TILE)] * len(tiles))
    assert _position_error(reg.table, true).max() < 0.5
    sides = [p for p in reg.pairs if p.status != "corner"]
    assert len(sides) == 2 * GRID * (GRID - 1)
    assert all(p.used and p.quality > 0.8 for p in sides)
    corners = [p for p in reg.pairs if p.status == "corner"]  # listed, not measured
    assert len(corners) == 2 * (GRID - 1) ** 2 and not any(p.used for p in corners)
    assert reg.rms_residual_px < 0.2
    # Pairwise shifts are the true relative corrections, to well under a pixel.
    c_true = true - stage
    for p in sides:
        np.testing.assert_allclose(p.shift_px, c_true[p.j] - c_true[p.i], atol=0.3)
    np.testing.assert_allclose(reg.table.affines[:, :2, 2] - stage, reg.corrections_px)
    np.testing.assert_array_equal(reg.table.affines[:, :2, :2], table.affines[:, :2, :2])


def test_noisy_tiff_tiles_with_the_real_reader(tmp_path: Path) -> None:
    tiles, true, stage = _mosaic(subpixel=True, seed=1)
    paths = []
    for k, tile in enumerate(tiles):
        path = tmp_path / f"tile_{k:02d}.tif"
        tifffile.imwrite(path, samples.acquire(tile, photons=100, read_noise=3, seed=k))
        paths.append(str(path))
    reg = register(_table(stage, paths), workers=2)  # shapes from the TIFF headers
    assert _position_error(reg.table, true).max() < 0.5
    assert reg.table.refs == paths


@pytest.mark.parametrize("kind", ["blank", "noise"])
def test_tile_without_content_is_placed_by_the_stage_model(kind: str) -> None:
    """A tile without content takes the median step of its row and column (MIST's model)."""
    tiles, true, stage = _mosaic(seed=2)
    bad = 5
    rng = np.random.default_rng(3)
    tiles[bad] = (
        np.full((TILE, TILE), 0.4, np.float32)
        if kind == "blank"
        else rng.random((TILE, TILE)).astype(np.float32)
    )
    table = _table(stage)
    reg = register(table, read=_memory_reader(tiles), shapes=[(TILE, TILE)] * len(tiles))
    touching = [p for p in reg.pairs if bad in (p.i, p.j) and p.status != "corner"]
    assert touching and not any(p.used for p in touching)
    assert all(p.status == ("blank" if kind == "blank" else "low_quality") for p in touching)
    assert all(p.modelled_px is not None for p in touching)
    if kind == "blank":
        assert all(np.isnan(p.residual_px) and np.all(np.isnan(p.shift_px)) for p in touching)
    assert all(p.used for p in reg.pairs if bad not in (p.i, p.j) and p.status != "corner")
    # the stage model puts it within the grid's jitter (+-3 px), the stage left it further off
    err = _position_error(reg.table, true, skip=(bad,))
    assert err[bad].max() < 4.5
    assert (
        _position_error(reg.table, true, skip=(bad,)).max(axis=1)[np.arange(16) != bad].max() < 0.5
    )


def test_outlier_pairs_are_rejected() -> None:
    """Tile 6's strip shared with its left neighbour shows content displaced by 5 px (a fold)."""
    tiles, true, stage = _mosaic(seed=4)
    strip = TILE - STEP
    displaced = _cut(_truth(), true[6] + [5.0, 0.0], (TILE, TILE))
    tiles[6] = tiles[6].copy()
    tiles[6][:, :strip] = displaced[:, :strip]
    read, shapes = _memory_reader(tiles), [(TILE, TILE)] * len(tiles)
    reg = register(_table(stage), read=read, shapes=shapes)
    by_pair = {(p.i, p.j): p for p in reg.pairs}
    bad = by_pair[(5, 6)]
    assert bad.quality > 0.5 and not bad.used and bad.residual_px > 2
    assert bad.status == "outlier"
    assert _position_error(reg.table, true).max() < 0.5
    assert reg.rms_residual_px < 0.3
    # Without rejection, the planted pairs drag tile 6 (and its neighbours) off.
    kept = register(
        _table(stage), read=read, shapes=shapes, params=RegistrationParams(outlier_px=1e6)
    )
    assert _position_error(kept.table, true).max() > 1


def test_3d_tiles() -> None:
    """2x2 tiles of 32x64x64 from a stack mixing three crops of the image along z, y and x."""
    image = _truth(512)
    yx, zx, zy = image[:140, :140], image[200:264, 100:240], image[300:364, 300:440]
    volume = yx[None] * (0.5 + zx[:, None, :]) + zy[:, :, None]  # (64, 140, 140)
    rng = np.random.default_rng(5)
    grid = np.array([(0, r, c) for r in range(2) for c in range(2)], dtype=float)
    true = np.array([12, 12, 12]) + grid * 40 + rng.integers(-3, 4, grid.shape)
    tiles = [_cut(volume, p, (32, 64, 64)) for p in true]
    stage = true + rng.uniform(-3, 3, true.shape)
    table = _table(stage)
    assert table.ndim == 3
    reg = register(table, read=_memory_reader(tiles), shapes=[(32, 64, 64)] * 4)
    assert len(reg.pairs) == 6
    assert [p.status for p in reg.pairs].count("corner") == 2
    assert all(p.used for p in reg.pairs if p.status != "corner")
    assert _position_error(reg.table, true).max() < 0.5


def test_rotated_tiles_are_resampled() -> None:
    """Tiles whose transform has a 1 degree rotation: crops are resampled into the mosaic grid."""
    image = _truth()
    theta = np.deg2rad(1.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rng = np.random.default_rng(6)
    grid = np.array([(r, c) for r in range(3) for c in range(3)], dtype=float)
    true = 40 + grid * STEP + rng.uniform(-2, 2, grid.shape)
    yy, xx = np.mgrid[:TILE, :TILE].astype(float)
    tiles, affines = [], []
    for t in true:
        coords = np.einsum("ab,bij->aij", rot, np.stack([yy, xx])) + t[:, None, None]
        tiles.append(ndimage.map_coordinates(image, coords, order=3).astype(np.float32))
    stage = true + rng.uniform(-4, 4, true.shape)
    for s in stage:
        a = np.eye(3)
        a[:2, :2], a[:2, 2] = rot, s
        affines.append(a)
    table = TileTable(tuple(Tile(f"tile_{k:02d}", a) for k, a in enumerate(affines)))
    reg = register(table, read=_memory_reader(tiles), shapes=[(TILE, TILE)] * 9)
    assert all(p.used for p in reg.pairs if p.status != "corner")
    assert _position_error(reg.table, true).max() < 0.5
    np.testing.assert_allclose(reg.table.affines[:, :2, :2], table.affines[:, :2, :2])


def test_channels_and_per_tile_shapes() -> None:
    """Two-channel tiles (C, Y, X), the last column narrower: channels summed, shapes per tile."""
    tiles, true, stage = _mosaic(seed=7)
    shapes = []
    for k in range(len(tiles)):
        if k % GRID == GRID - 1:
            tiles[k] = tiles[k][:, :120]
        tiles[k] = np.stack([tiles[k] * 0.3, tiles[k] ** 2])
        shapes.append(tiles[k].shape[1:])
    reads: list[str] = []

    def read(ref: str) -> np.ndarray:
        reads.append(ref)
        return _memory_reader(tiles)(ref)

    reg = register(_table(stage), read=read, shapes=shapes, workers=3)
    assert _position_error(reg.table, true).max() < 0.5
    assert sorted(reads) == sorted(set(reads)) and len(reads) == len(tiles)  # each read once
    with pytest.raises(ConfigError, match=r"tile 0 \(tile_00\): spatial shape \(160, 160\)"):
        register(_table(stage), read=read, shapes=[(160, 150)] * len(tiles))


def test_missing_tile_names_the_file(tmp_path: Path) -> None:
    tiles, _, stage = _mosaic(seed=8)
    paths = [str(tmp_path / f"tile_{k:02d}.tif") for k in range(len(tiles))]
    for path, tile in zip(paths, tiles, strict=True):
        tifffile.imwrite(path, samples.acquire(tile, seed=0))
    Path(paths[9]).unlink()
    with pytest.raises(ImageNotFoundError, match=r"tile_09\.tif"):
        register(_table(stage, paths))
    with pytest.raises(ImageNotFoundError, match=r"tile_09\.tif"):
        register(_table(stage, paths), shapes=[(TILE, TILE)] * len(paths), workers=2)


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("workers", 0, "workers must be an integer >= 1, got 0"),
        ("workers", 2.5, "workers must be an integer >= 1, got 2.5"),
        ("shapes", [(TILE, TILE)], r"shapes must give .* shape \(16, 2\), got .* \(1, 2\)"),
    ],
)
def test_bad_parameters_name_the_value(option: str, value: object, match: str) -> None:
    tiles, _, stage = _mosaic()
    kwargs = {"read": _memory_reader(tiles), "shapes": [(TILE, TILE)] * 16, option: value}
    with pytest.raises(ConfigError, match=match):
        register(_table(stage), **kwargs)  # type: ignore[arg-type]


def _brute_force(lo: np.ndarray, hi: np.ndarray, min_overlap: float) -> dict:
    found = {}
    ext = hi - lo
    for i in range(len(lo)):
        for j in range(i + 1, len(lo)):
            olo, ohi = np.maximum(lo[i], lo[j]), np.minimum(hi[i], hi[j])
            need = np.minimum(min_overlap, np.minimum(ext[i], ext[j]))
            if np.all(ohi - olo > 0) and np.all(ohi - olo >= need - 1e-9):
                found[(i, j)] = (olo, ohi)
    return found


@pytest.mark.parametrize("ndim", [2, 3])
def test_overlapping_pairs_matches_brute_force(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    n = 300
    shapes = rng.integers(8, 120, (n, ndim))
    offsets = rng.uniform(0, 600, (n, ndim))
    scale = np.where(rng.random(n) < 0.2, 1.5, 1.0)  # some tiles scaled, so not translations
    tiles = []
    for k in range(n):
        a = np.eye(ndim + 1)
        a[:ndim, :ndim] *= scale[k]
        a[:ndim, ndim] = offsets[k]
        tiles.append(Tile(f"t{k}", a))
    table = TileTable(tuple(tiles), ndim=ndim)
    lo, hi = offsets, offsets + shapes * scale[:, None]
    expected = _brute_force(lo, hi, 16)
    got = overlapping_pairs(table, shapes, min_overlap_px=16)
    assert [(i, j) for i, j, _, _ in got] == sorted(expected)
    assert 50 < len(got) < n * (n - 1) // 2
    for i, j, olo, ohi in got:
        np.testing.assert_allclose(olo, expected[(i, j)][0])
        np.testing.assert_allclose(ohi, expected[(i, j)][1])


def test_overlapping_pairs_of_10000_tiles() -> None:
    """Every neighbour pair of a 100 x 100 grid, diagonals included (speed: bench/fusion.py)."""
    side, tile, step = 100, 512, 461  # 51 px overlaps, +-3 px stage jitter
    rng = np.random.default_rng(9)
    grid = np.array([(r, c) for r in range(side) for c in range(side)], dtype=float)
    stage = grid * step + rng.uniform(-3, 3, grid.shape)
    table = _table(stage)
    shapes = np.full((side * side, 2), tile)
    pairs = overlapping_pairs(table, shapes)
    assert len(pairs) == 2 * side * (side - 1) + 2 * (side - 1) ** 2


def test_pairs_to_csv_round_trip(tmp_path: Path) -> None:
    tiles, _, stage = _mosaic(seed=10)
    tiles[0] = np.zeros_like(tiles[0])  # a blank tile: its shifts are empty fields
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(TILE, TILE)] * 16)
    path = tmp_path / "pairs.csv"
    reg.pairs_to_csv(path)
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == [
        "i", "j", "ref_i", "ref_j", "dx", "dy", "quality", "used", "residual_px", "status",
        "loop_checked",
    ]  # fmt: skip
    assert len(rows) == len(reg.pairs)
    assert reg.unchecked_pairs() == ()  # the blank tile's pairs failed; loops run through the rest
    for row, pair in zip(rows, reg.pairs, strict=True):
        assert row["loop_checked"] == str(pair.used)
        assert (int(row["i"]), int(row["j"])) == (pair.i, pair.j)
        assert row["ref_i"] == f"tile_{pair.i:02d}" and row["ref_j"] == f"tile_{pair.j:02d}"
        assert row["used"] == str(pair.used)
        if np.isnan(pair.residual_px):
            assert row["dx"] == row["dy"] == row["residual_px"] == ""
        else:
            assert float(row["dx"]) == pytest.approx(pair.shift_px[1], abs=1e-5)
            assert float(row["dy"]) == pytest.approx(pair.shift_px[0], abs=1e-5)
            assert float(row["residual_px"]) == pytest.approx(pair.residual_px, abs=1e-5)
        assert float(row["quality"]) == pytest.approx(pair.quality, abs=1e-5)


def test_unchecked_pairs_are_the_used_pairs_no_loop_runs_through() -> None:
    """A used pair that is the only used link between two groups of tiles is checked by
    nothing: its residual is 0 whatever its error, and the QC report said it fitted best."""
    from scopefx.fusion._regresult import PairResult, Registration

    table = _table(np.array([(0, 0), (0, 100), (100, 0), (100, 100), (0, 200)], float))

    def pair(i: int, j: int, used: bool = True) -> PairResult:
        return PairResult(i, j, (0.0, 0.0), 0.9, (80, 20), used, 0.0 if used else math.nan,
                          "used" if used else "low_quality")  # fmt: skip

    loop = [pair(0, 1), pair(0, 2), pair(1, 3), pair(2, 3)]
    reg = Registration(table, (*loop, pair(1, 4)), np.zeros((5, 2)))
    assert reg.unchecked_pairs() == (4,)  # tile 4 hangs on (1, 4); the square is a loop
    reg = Registration(table, (*loop[:3], pair(2, 3, used=False), pair(1, 4)), np.zeros((5, 2)))
    assert reg.unchecked_pairs() == (0, 1, 2, 4)  # the square opened: a chain of links
    assert Registration(table, (pair(0, 1, used=False),), np.zeros((5, 2))).unchecked_pairs() == ()


# --------------------------------------------------------------------------------------------
# Defects seen on real tile sets (issue 16): each of these failed before the rewrite.

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tiles_real"


def _grid(
    rows: int, cols: int, tile: int, step_yx: tuple[float, float], *, seed: int,
    jitter: float = 2.0, stage_error: float = 3.0, image: np.ndarray | None = None,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:  # fmt: skip
    """Tiles of a rows x cols grid cut from a bundled image; true and stage positions (y, x)."""
    rng = np.random.default_rng(seed)
    grid = np.array([(r, c) for r in range(rows) for c in range(cols)], dtype=float)
    true = 16 + grid * step_yx + rng.uniform(-jitter, jitter, grid.shape)
    image = _truth(1024) if image is None else image
    tiles = [_cut(image, p, (tile, tile)) for p in true]
    stage = true + rng.uniform(-stage_error, stage_error, true.shape)
    return tiles, true, stage


def test_small_overlaps_are_measured() -> None:
    """6 % overlaps (10 px of 160): the old minimum of 16 px skipped every pair silently."""
    tiles, true, stage = _grid(3, 3, 160, (150, 150), seed=20)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(160, 160)] * 9)
    sides = [p for p in reg.pairs if p.status != "corner"]
    assert len(sides) == 12 and all(p.used for p in sides)
    assert _position_error(reg.table, true).max() < 0.5


def test_shifts_beyond_a_third_of_the_overlap_are_found() -> None:
    """A strip with 60 px overlaps and the stage up to 28 px off per step (old reach: 20 px)."""
    rng = np.random.default_rng(21)
    steps = 140 + rng.choice([-1, 1], 5) * rng.uniform(22, 28, 5)
    true = np.zeros((6, 2))
    true[:, 0] = 40
    true[1:, 1] = 16 + np.cumsum(steps)
    true[0, 1] = 16
    image = _truth(1024)
    tiles = [_cut(image, p, (200, 200)) for p in true]
    stage = np.column_stack([np.full(6, 40.0), 16 + 140.0 * np.arange(6)])
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(200, 200)] * 6)
    assert all(p.used for p in reg.pairs)
    assert _position_error(reg.table, true).max() < 0.5


def _vignetted(tiles: list[np.ndarray], strength: float = 0.8) -> list[np.ndarray]:
    n = tiles[0].shape[0]
    r2 = ((np.mgrid[:n, :n] - (n - 1) / 2) ** 2).sum(axis=0) / (n / 2) ** 2
    fall = (1 - strength * np.clip(r2 / 2, 0, 1)).astype(np.float32)
    return [t * fall for t in tiles]


def test_vignetted_corner_pairs_do_not_pull_tiles_off() -> None:
    """Strong fall-off and 40 px overlaps: diagonal corners share mostly shading."""
    tiles, true, stage = _grid(3, 4, 200, (160, 160), seed=22)
    tiles = _vignetted(tiles)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(200, 200)] * 12)
    assert {p.status for p in reg.pairs if p.status != "used"} == {"corner"}
    assert _position_error(reg.table, true).max() < 0.5


def test_flat_field_is_applied_before_correlation() -> None:
    tiles, true, stage = _grid(2, 3, 200, (160, 160), seed=23)
    vignetted = _vignetted(tiles)
    flat = vignetted[0] / np.maximum(tiles[0], 1e-6)
    seen: list[tuple[int, ...]] = []

    def correct(tile: np.ndarray) -> np.ndarray:
        seen.append(tile.shape)
        return tile / flat

    # only the flat field removes the shading; no banding pass, so each tile is read once
    params = RegistrationParams(highpass_sigma_px=0, remove_banding="off")
    reg = register(_table(stage), read=_memory_reader(vignetted), shapes=[(200, 200)] * 6,
                   params=params, flatfield=correct)  # fmt: skip
    assert len(seen) == 6
    assert _position_error(reg.table, true).max() < 0.5
    # a FlatField object works the same way (its apply() is used)
    reg = register(_table(stage), read=_memory_reader(vignetted), shapes=[(200, 200)] * 6,
                   params=params, flatfield=FlatField(flat))  # fmt: skip
    assert _position_error(reg.table, true).max() < 0.5


def test_stage_model_places_a_blank_tile_of_a_strip() -> None:
    """1x10 strip whose stage step is 9 px short; tile 4 is blank. The median step of the row
    places it (the stage left it 9 px off, and dragged one side of the strip along)."""
    true = np.column_stack([np.full(10, 30.0), 16 + 100.0 * np.arange(10)])
    image = _truth(1200)
    tiles = [_cut(image, p, (140, 140)) for p in true]
    tiles[4] = np.full_like(tiles[4], 0.5)
    stage = np.column_stack([np.full(10, 30.0), 16 + 91.0 * np.arange(10)])
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(140, 140)] * 10)
    by = {(p.i, p.j): p for p in reg.pairs}
    assert by[(3, 4)].status == by[(4, 5)].status == "blank"
    np.testing.assert_allclose(by[(3, 4)].modelled_px, (0, 9), atol=0.2)
    assert _position_error(reg.table, true).max() < 0.5


def test_blank_pairs_do_not_stop_the_stage_model_of_a_partial_registration() -> None:
    """1x10 strip whose stage step is 9 px short; tiles 3-7 are blank, so 6 of its 9 pairs
    are blank and only 3 usable: refused by default, registered with ``allow_partial``. Blank
    pairs say nothing about the measurements: every pair with content matched, so the median
    step still places the blank tiles and carries the far end of the strip (8, 9) to where it
    is, as it does when fewer tiles are blank."""
    true = np.column_stack([np.full(10, 30.0), 16 + 100.0 * np.arange(10)])
    image = _truth(1200)
    tiles = [_cut(image, p, (140, 140)) for p in true]
    for k in range(3, 8):
        tiles[k] = np.full_like(tiles[k], 0.5)
    stage = np.column_stack([np.full(10, 30.0), 16 + 91.0 * np.arange(10)])
    kwargs = {"read": _memory_reader(tiles), "shapes": [(140, 140)] * 10}
    with pytest.raises(RegistrationError, match="only 3 of 9"):
        register(_table(stage), **kwargs)  # type: ignore[arg-type]
    reg = register(_table(stage), params=RegistrationParams(allow_partial=True), **kwargs)  # type: ignore[arg-type]
    by = {(p.i, p.j): p for p in reg.pairs}
    assert [by[(k, k + 1)].status for k in range(2, 8)] == ["blank"] * 6
    np.testing.assert_allclose(by[(5, 6)].modelled_px, (0, 9), atol=0.2)
    assert _position_error(reg.table, true).max() < 0.5


def test_a_partial_registration_does_not_spread_the_steps_of_failing_content() -> None:
    """Noisy retina, 8x8 tiles of 64 px at 10 % overlap (6 px strips), each up to 2.6 px off
    the stage: 22 of the 112 pairs give a usable match, most of them chance matches leaning
    towards a larger common part. With ``allow_partial`` their median step (about 2.5 px short)
    was given to every other pair, and repeated along each row it carried the tiles 5.8 px
    (mean) off where the stage left them 2.0 px off; most pairs with content failed, so the
    stage places the unusable pairs instead."""
    n, tile = 8, 64
    m = samples.make_mosaic("retina", grid=(n, n), tile_px=tile, overlap=0.1, jitter_px=2.56,
                            subpixel=True, vignetting=0.3, photons=300.0, read_noise=2.0,
                            seed=1)  # fmt: skip
    true = m.affines[:, :2, 2]
    grid = np.array([(r, c) for r in range(n) for c in range(n)], dtype=float)
    stage = grid * round(tile * 0.9) + (true - grid * round(tile * 0.9)).mean(axis=0)
    refs = [f"tile_{k}" for k in range(n * n)]
    reg = register(_table(stage, refs), read=dict(zip(refs, m.tiles, strict=True)).__getitem__,
                   shapes=[(tile, tile)] * (n * n),
                   params=RegistrationParams(allow_partial=True))  # fmt: skip
    sides = [p for p in reg.pairs if p.status != "corner"]
    assert sum(p.used for p in sides) < 0.25 * sum(p.status != "blank" for p in sides)
    modelled = np.array([p.modelled_px for p in sides if p.modelled_px is not None])
    assert len(modelled) and not modelled.any()  # the stage itself
    before = np.linalg.norm(_position_error(_table(stage), true), axis=1).mean()
    after = np.linalg.norm(_position_error(reg.table, true), axis=1).mean()
    assert after < 2 * before, (after, before)


def _ridge_scan(ridges: dict[tuple[int, int], float]):
    """A 2x4 scan (100 px tiles, 90 px steps) whose stage steps are all 2 px long along x,
    settled (``_settle``) from measurements made up for it: every side pair matched sharply
    at the truth (within 0.1 px, NCC 0.9), but pair 3-7 blank and the pairs in ``ridges``
    ridges along x (variance 60 px^2) whose crest put their shift at the given x."""
    from scopefx.fusion._correlate import Measured
    from scopefx.fusion._overlaps import overlapping_pairs
    from scopefx.fusion._settle import _settle

    grid = np.array([(r, c) for r in range(2) for c in range(4)], dtype=float)
    table = _table(grid * 90.0)
    shapes = np.full((8, 2), 100)
    geometry = overlapping_pairs(table, shapes, min_overlap_px=1.0)
    corner = [bool(np.all(np.subtract(hi, lo) < 50)) for _, _, lo, hi in geometry]
    rng = np.random.default_rng(3)
    results = []
    for (i, j, _, _), c in zip(geometry, corner, strict=True):
        truth = np.array([0.0, -2.0 if grid[i, 0] == grid[j, 0] else 0.0])
        if (i, j) == (3, 7) or c:
            results.append(Measured(np.full(2, np.nan), 0.0, 0.0, (0, 0)))
        elif (i, j) in ridges:
            results.append(Measured(np.array([0.05, ridges[(i, j)]]), 0.74, 0.5, (100, 10),
                                    spread=np.diag([0.1, 60.0])))  # fmt: skip
        else:
            results.append(Measured(truth + rng.uniform(-0.1, 0.1, 2), 0.9, 0.3, (100, 10),
                                    spread=np.diag([0.1, 0.1])))  # fmt: skip
    reg, refusal = _settle(table, shapes, geometry, corner, results, RegistrationParams(),
                           [15.0] * len(geometry))  # fmt: skip
    assert refusal is None
    return reg, {(p.i, p.j): p for p in reg.pairs}


def test_a_ridge_that_alone_joins_a_tile_is_drawn_to_the_stage_step() -> None:
    """Tile 7 of a 2x4 scan is joined only by pair 6-7 (3-7 is blank), whose NCC is a ridge
    along x (one vessel across the overlap: variance 60 px^2 there) with its crest 12 px
    along, where every sharp pair steps 2 px long. Weighed a hundredth along x, the ridge
    still alone decided tile 7's x: 14 px off. Nothing else joins it there, so its step is
    the precision-weighted mean of its own and the sharp pairs' (their median, their robust
    spread as its variance): 2 px long, as the stage steps. The report keeps the measured
    shift and gives the step the solve took; a ridge inside a loop (1-2, its crest 1.5 px
    along, where the sharp pairs around it decide) is left as measured."""
    reg, by = _ridge_scan({(6, 7): 12.0, (1, 2): -0.5})
    c = reg.corrections_px
    assert abs((c[7] - c[6])[1] - (-2.0)) < 0.3, c[7] - c[6]
    assert by[(6, 7)].used and by[(6, 7)].shift_px[1] == pytest.approx(12.0)
    assert by[(6, 7)].modelled_px is not None and abs(by[(6, 7)].modelled_px[1] + 2) < 0.3
    assert by[(6, 7)].residual_px < 0.3  # against the step the solve took
    assert by[(1, 2)].used and by[(1, 2)].modelled_px is None
    assert abs((c[2] - c[1])[1] - (-2.0)) < 0.3, c[2] - c[1]
    # without the ridge at 6-7 nothing is drawn and tile 7 follows its sharp pair
    reg, by = _ridge_scan({(1, 2): -0.5})
    assert all(p.modelled_px is None for p in reg.pairs if p.used)
    assert abs((reg.corrections_px[7] - reg.corrections_px[6])[1] + 2) < 0.15


def test_stage_model_follows_the_backlash_of_a_serpentine_scan() -> None:
    """4x5 serpentine scan whose return rows sit 7 px to the right (backlash); the stage gives
    the nominal grid and tile 12 (row 2) is blank. The vertical pairs of its column alternate
    between +7 and -7 px, so their median put it 3.5 px off; the pairs crossing the same row
    boundary all carry that boundary's offset and place it exactly."""
    rows, cols, bad = 4, 5, 12
    grid = np.array([(r, c) for r in range(rows) for c in range(cols)], dtype=float)
    stage = 24 + grid * 100.0
    true = stage + np.column_stack([np.zeros(len(grid)), 7.0 * (grid[:, 0] % 2)])
    image = _truth(700)
    tiles = [_cut(image, p, (140, 140)) for p in true]
    tiles[bad] = np.full_like(tiles[bad], 0.5)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(140, 140)] * len(tiles))
    by = {(p.i, p.j): p for p in reg.pairs}
    assert not by[(7, 12)].used and not by[(12, 17)].used
    np.testing.assert_allclose(by[(7, 12)].modelled_px, (0, -7), atol=0.2)  # rows 1 -> 2
    np.testing.assert_allclose(by[(12, 17)].modelled_px, (0, 7), atol=0.2)  # rows 2 -> 3
    assert np.linalg.norm(_position_error(reg.table, true, skip=(bad,)), axis=1).max() < 0.5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 10])
def test_leave_one_out_median_matches_recomputing_it(n: int) -> None:
    from scopefx.fusion._stagemodel import _leave_one_out_median

    rng = np.random.default_rng(n)
    values = rng.integers(-3, 4, (n, 2)).astype(float)  # ties included
    expected = np.array([np.median(np.delete(values, k, axis=0), axis=0) if n > 1
                         else [np.nan, np.nan] for k in range(n)])  # fmt: skip
    np.testing.assert_array_equal(_leave_one_out_median(values), expected)


def test_stage_model_with_a_single_usable_pair_warns_nothing() -> None:
    """A 1x3 strip whose second pair is unusable: the one usable pair cannot be judged by
    others, and no other axis says whether the stage's errors are shared, so the stage places
    the other pair (its step may be its own tiles' error), with no NaN warning."""
    import warnings

    from scopefx.fusion._stagemodel import _stage_fit

    table = _table(np.array([[0.0, 0.0], [0.0, 90.0], [0.0, 180.0]]))
    shapes = np.full((3, 2), 100)
    ij = np.array([[0, 1], [1, 2]])
    olo, ohi = np.array([[0.0, 90.0], [0.0, 180.0]]), np.array([[100.0, 100.0], [100.0, 190.0]])
    shifts = np.array([[0.5, 2.0], [np.nan, np.nan]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = _stage_fit(table, shapes, ij, shifts, np.array([True, False]),
                           np.array([True, True]), olo, ohi)[0]  # fmt: skip
    np.testing.assert_array_equal(model[1], (0.0, 0.0))
    # no usable pair at all: nothing to model from (the components are left as placed)
    none = _stage_fit(table, shapes, ij, np.full((2, 2), np.nan), np.array([False, False]),
                      np.array([True, True]), olo, ohi)[0]  # fmt: skip
    assert none == {}


@pytest.mark.parametrize("shared", [False, True])
def test_a_lone_usable_pair_models_its_axis_only_where_another_axis_shares_its_errors(
    shared: bool,
) -> None:
    """A 4x2 grid: the three vertical pairs of column 0 are usable, those of column 1 are not;
    of the four horizontal pairs one is usable (3 px long). Where the vertical pairs all
    carry one step error (the stage's, 4 px), the stage's errors are shared, so the lone
    horizontal step models the other horizontal pairs too; where each vertical pair errs its
    own way, the lone step may be its own tiles' error as well, and the stage places them
    (repeated along each row it would move tile k of a row k times that)."""
    from scopefx.fusion._stagemodel import _stage_fit

    rows, step = 4, 90.0
    grid = np.array([(r, c) for r in range(rows) for c in range(2)], dtype=float)
    table = _table(grid * step)
    shapes = np.full((len(grid), 2), 100)
    vertical = [(2 * r + c, 2 * r + 2 + c) for c in range(2) for r in range(rows - 1)]
    horizontal = [(2 * r, 2 * r + 1) for r in range(rows)]
    ij = np.array(vertical + horizontal)
    d = grid[ij[:, 1]] * step - grid[ij[:, 0]] * step
    lo = np.maximum(grid[ij[:, 0]] * step, grid[ij[:, 1]] * step)
    olo, ohi = lo, np.minimum(grid[ij[:, 0]] * step, grid[ij[:, 1]] * step) + 100
    assert np.all(np.abs(d).max(axis=1) == step)
    own = np.array([[3.0, -2.0], [-4.0, 1.5], [2.5, 3.0]])
    column0 = own * 0.05 + [4.0, 0.0] if shared else own
    shifts = np.full((len(ij), 2), np.nan)
    shifts[:3] = column0
    shifts[len(vertical)] = (0.5, 3.0)  # the lone usable horizontal pair, row 0
    used = np.isfinite(shifts[:, 0])
    model = _stage_fit(table, shapes, ij, shifts, used, np.ones(len(ij), bool), olo, ohi)[0]
    for k in range(len(vertical) + 1, len(ij)):  # the unusable horizontal pairs
        np.testing.assert_allclose(model[k], (0.5, 3.0) if shared else (0.0, 0.0))
    for k in range(3, len(vertical)):  # column 1's vertical pairs: column 0's median or stage
        np.testing.assert_allclose(model[k], np.median(column0, axis=0) if shared else 0.0)


@pytest.mark.parametrize("shared", [False, True])
def test_stage_model_keeps_the_stage_where_each_tile_errs_on_its_own(shared: bool) -> None:
    """A 1x6 strip, pair 2-3 unusable. Corrections that scatter around nothing shared (each
    tile's stage error its own): the median of the others predicts each usable pair worse than
    the stage itself, so the stage places the pair (the median added its own 1-3 px). A step
    error all pairs share (9 px short) is still modelled by their median."""
    from scopefx.fusion._stagemodel import _stage_fit

    n = 6
    table = _table(np.column_stack([np.zeros(n), 90.0 * np.arange(n)]))
    shapes = np.full((n, 2), 100)
    ij = np.column_stack([np.arange(n - 1), np.arange(1, n)])
    olo = np.column_stack([np.zeros(n - 1), 90.0 * np.arange(1, n)])
    ohi = np.column_stack([np.full(n - 1, 100.0), 90.0 * np.arange(n - 1) + 100])
    own = np.array([[3.0, -2.0], [-4.0, 1.0], [np.nan, np.nan], [2.0, 3.0], [-3.0, -2.0]])
    shifts = own * 0.1 + [0.0, 9.0] if shared else own
    used = np.isfinite(shifts[:, 0])
    model = _stage_fit(table, shapes, ij, shifts, used, np.ones(n - 1, bool), olo, ohi)[0]
    if shared:
        np.testing.assert_allclose(model[2], np.nanmedian(shifts, axis=0))
    else:
        np.testing.assert_array_equal(model[2], (0.0, 0.0))


def _ground_truth_error(name: str, overlap: float, *, vignetting: float, photons: float | None,
                        seed: int) -> np.ndarray:  # fmt: skip
    """Registration with default settings of a 2x3 synthetic mosaic (sub-pixel true positions,
    the stage on the nominal grid, so up to 6 % of a tile off); |placed - true| per tile."""
    m = samples.make_mosaic(name, grid=(2, 3), tile_px=192, overlap=overlap, jitter_px=11.5,
                            subpixel=True, vignetting=vignetting, photons=photons,
                            read_noise=2.0 if photons else 0.0, seed=seed)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(192 * (1 - overlap))
    grid = np.array([(r, c) for r in range(2) for c in range(3)], dtype=float) * step
    stage = grid + (true - grid).mean(axis=0)
    refs = [f"tile_{k:02d}" for k in range(len(true))]
    reg = register(_table(stage, refs), read=dict(zip(refs, m.tiles, strict=True)).__getitem__,
                   shapes=[(192, 192)] * len(refs))  # fmt: skip
    return np.linalg.norm(_position_error(reg.table, true), axis=1)


@pytest.mark.parametrize("overlap", [0.1, 0.25, 0.45])
@pytest.mark.parametrize(
    ("name", "vignetting", "photons"),
    [("cell", 0.0, None), ("cell", 0.6, None), ("cell", 0.0, 2000.0),
     ("immunohistochemistry", 0.6, 500.0)],
    ids=["smooth", "smooth-vignetted", "smooth-noisy", "stained-vignetted-noisy"],
)  # fmt: skip
def test_sub_pixel_against_ground_truth_with_defaults(
    name: str, overlap: float, vignetting: float, photons: float | None
) -> None:
    """Smooth content (a per-tile high-pass, estimated differently near each tile's edge where
    the overlap lies, once put such pairs 3-6 px off), vignetting and shot noise."""
    err = _ground_truth_error(name, overlap, vignetting=vignetting, photons=photons, seed=3)
    assert err.mean() < 0.5 and err.max() < 1.0, err


def _thin_case(name: str, overlap: float, photons: float | None) -> tuple[dict, np.ndarray]:
    """A 3x3 vignetted mosaic of 256 px tiles, up to 15 px off the stage grid (seed 1: the
    last tile's true overlaps with its upper and left neighbours are the thinnest), registered
    with defaults: the pairs by ``(i, j)`` and ``|placed - true|`` per tile."""
    m = samples.make_mosaic(name, grid=(3, 3), tile_px=256, overlap=overlap, jitter_px=15.0,
                            subpixel=True, vignetting=0.5, photons=photons,
                            read_noise=2.0 if photons else 0.0, seed=1)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(256 * (1 - overlap))
    grid = np.array([(r, c) for r in range(3) for c in range(3)], dtype=float) * step
    stage = grid + (true - grid).mean(axis=0)
    refs = [f"tile_{k}" for k in range(9)]
    reg = register(_table(stage, refs), read=dict(zip(refs, m.tiles, strict=True)).__getitem__,
                   shapes=[(256, 256)] * 9)  # fmt: skip
    by = {(p.i, p.j): p for p in reg.pairs}
    return by, np.linalg.norm(_position_error(reg.table, true), axis=1)


@pytest.mark.parametrize("photons", [None, 1000.0], ids=["vignetted", "vignetted-noisy"])
def test_thin_overlap_tile_joined_by_its_one_clear_match(photons: float | None) -> None:
    """5 % overlaps (13 px) with up to 15 px stage error: the last tile's true overlap with its
    upper neighbour is empty (a chance match there, NCC 0.78) and with its left neighbour 6 px
    wide (NCC 0.99), too thin to pass the test against chance over the whole search. Both are
    refused; the clearly better one joins the tile to the rest instead of the stage model
    (which left it 23 px off)."""
    by, err = _thin_case("coins", 0.05, photons)
    assert by[(7, 8)].used and not by[(5, 8)].used
    assert err.mean() < 0.3 and err.max() < 0.5, err


def test_chance_match_on_the_edge_of_the_search_is_not_used() -> None:
    """Tiles 5 and 8 do not overlap at all (the stage puts them 13 px into each other, 15 px
    too far); their best NCC (0.35) lies on the edge of the +-39 px search, where chance
    matches gather (the largest common part). It once moved tile 8 48 px off; an edge is no
    peak, so the pair is refused and tile 8 is placed by the stage model instead."""
    by, err = _thin_case("camera", 0.05, None)
    assert not by[(5, 8)].used and by[(5, 8)].status == "low_quality"
    assert err.max() < 20, err


def test_weak_runner_up_does_not_make_a_match_ambiguous() -> None:
    """The last tile's left match (NCC 0.97, 6 px wide) has a runner-up whose confidence bound
    is below zero; clipping that bound at zero once counted the runner-up as good as the match
    (ambiguous, refused) and the tile was placed 23 px off by the stage model."""
    by, err = _thin_case("cell", 0.05, None)
    assert by[(7, 8)].used and not by[(5, 8)].used
    assert err.mean() < 0.5 and err.max() < 1.0, err


def test_two_weak_joins_that_agree_confirm_each_other() -> None:
    """Smooth, noisy content: both true matches of the last tile (NCC 0.84 and 0.72) have a
    confidence bound below zero, so neither is significant alone, but they place the tile
    within 0.5 px of each other, as a loop would: both are used (the stage model left the tile
    24 px off)."""
    by, err = _thin_case("moon", 0.3, 1000.0)
    assert by[(5, 8)].used and by[(7, 8)].used
    assert err.mean() < 0.3 and err.max() < 0.5, err


def test_second_peaks_that_agree_join_a_tile() -> None:
    """Smooth, noisy content, 10 % overlaps: both of the last tile's best NCC peaks are chance
    matches (40-44 px off, refused), but each pair's second peak is the true shift (NCC 0.90
    and 0.84, too thin a common part to be significant alone); the two place the tile within
    0.5 px of each other, as a loop would, so they are used (the stage model left the tile
    23 px off)."""
    by, err = _thin_case("moon", 0.1, 1000.0)
    assert by[(5, 8)].used and by[(7, 8)].used
    assert by[(5, 8)].residual_px < 0.5 and by[(7, 8)].residual_px < 0.5
    assert err.mean() < 0.3 and err.max() < 0.5, err


def test_second_peak_confirmed_by_its_loop() -> None:
    """Noisy retina, 5 % overlaps: pairs 3-4, 3-6 and 6-7 have a chance match as their best
    peak and the true shift as another local maximum (NCC 0.88-0.96); once the solve joins
    their tiles, those peaks land within 1.5 px of what it predicts and are used (tiles 3 and
    6 were 30-35 px off)."""
    by, err = _thin_case("retina", 0.05, 1000.0)
    for pair in ((3, 4), (3, 6), (6, 7)):
        assert by[pair].used and by[pair].residual_px < 1.0, by[pair]
    # only tile 8 is left to the stage model (its one true peak has no loop to confirm it);
    # errors are relative to the mean offset, which tile 8 moves by about 2.6 px
    assert np.sort(err)[-2] < 4.0, err


def _grid_case(
    name: str, photons: float | None, *, seed: int = 1, vignetting: float = 0.5
) -> tuple[dict, np.ndarray]:
    """5x5 tiles of 256 px (vignetted by default), 6 % overlaps, up to 15 px off the stage
    grid, registered with defaults: the pairs by ``(i, j)`` and ``|placed - true|`` per tile
    after removing the median offset (a few tiles far off do not move it)."""
    m = samples.make_mosaic(name, grid=(5, 5), tile_px=256, overlap=0.06, jitter_px=15.0,
                            subpixel=True, vignetting=vignetting, photons=photons,
                            read_noise=2.0 if photons else 0.0, seed=seed)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(256 * 0.94)
    grid = np.array([(r, c) for r in range(5) for c in range(5)], dtype=float) * step
    stage = grid + (true - grid).mean(axis=0)
    refs = [f"tile_{k}" for k in range(25)]
    reg = register(_table(stage, refs), read=dict(zip(refs, m.tiles, strict=True)).__getitem__,
                   shapes=[(256, 256)] * 25)  # fmt: skip
    err = reg.table.affines[:, :2, 2] - true
    err = np.linalg.norm(err - np.median(err, axis=0), axis=1)
    return {(p.i, p.j): p for p in reg.pairs}, err


def test_a_pair_whose_true_overlap_is_under_the_minimum_is_refused() -> None:
    """Noisy retina, 5x5 tiles, 6 % overlaps: tiles 2 and 3 truly share 4.7 px, under the
    6 px ``min_overlap_px``. The best shift allowed is the narrowest, with the NCC's bound
    still rising beyond it: no peak, so the pair is refused (it was used 2.1 px off, once
    through a chance match 42 px off), and the links across its cut place the group."""
    by, err = _grid_case("retina", 1000.0)
    assert not by[(2, 3)].used and by[(2, 3)].status == "low_quality", by[(2, 3)]
    group = [2, 3, 4, 7, 8, 9, 12, 13, 14]
    assert err[group].max() < 1.0, err


def test_tiles_that_do_not_overlap_give_no_match_at_the_narrowest_common_part() -> None:
    """Clean ``coins``, 5x5 tiles, 6 % overlaps (seed 3): tiles 0 and 5 (3 and 8) lie 11 px
    (8 px) apart, with no common part at all. The content nearest across the gap correlates
    best at the narrowest common part allowed (NCC 0.83, the NCC still rising there and the
    bound falling only because the common part narrows): no peak, so such a pair is refused
    (0-5 is measured again on the raw crops, where the solve then drops it). Used, the two
    such matches of the first row agreed with each other, outvoted the true pair 1-6 (NCC
    0.996) and left the row 13 px off."""
    by, err = _grid_case("coins", None, seed=3, vignetting=0.0)
    for gap in ((0, 5), (3, 8)):
        assert not by[gap].used, by[gap]
    assert by[(1, 6)].used, by[(1, 6)]
    assert err.max() < 0.5, err


def test_a_near_perfect_match_outweighs_a_chance_match_in_its_loop() -> None:
    """Vignetted ``cell``, 5x5 tiles, 6 % overlaps (seed 3): the chance match 0-5 (NCC 0.54,
    47 px off) and the true pair 1-6 (NCC 0.998) share loops. Weighted by the NCC itself,
    their standardised residuals came out equal (26.0, 26.1), the true pair was dropped and
    the first row placed 47 px off (15 px mean error). Weighted by the NCC's Fisher z, the
    true pair outweighs the chance match 4.4 to 1 and the chance match is dropped."""
    from scopefx.fusion._settle import _strength

    by, err = _grid_case("cell", None, seed=3)
    assert by[(1, 6)].used and by[(1, 6)].quality > 0.99, by[(1, 6)]
    assert not by[(0, 5)].used and by[(0, 5)].status == "outlier", by[(0, 5)]
    assert err.max() < 0.5, err
    assert np.allclose(_strength(np.array([0.5, 0.99, 1.0])), np.arctanh([0.5, 0.99, 0.99]))


def test_a_lone_link_is_not_outvoted_by_its_own_repeats() -> None:
    """Brick wall (a repeated pattern), 5x5 tiles: tile 21's only confirmed link, 21-22 (NCC
    0.99, true), has other peaks one brick away, and so has 20-21's; one of each agreed, and
    counting the link's own other peak as a vote against it moved the tile 15 px off. Its own
    peaks do not vote: two other pairs must agree."""
    by, err = _grid_case("brick", None)
    assert by[(21, 22)].used and by[(21, 22)].residual_px < 1.0, by[(21, 22)]
    assert err.max() < 1.5, err


def test_other_peaks_alone_do_not_outvote_a_stronger_lone_link() -> None:
    """Noisy retina, 5x5 tiles, 6 % overlaps (draw 2): the true pair 11-12 (NCC 0.86) is the
    only link of its group; other peaks of two pairs across the same cut (NCC 0.70 and 0.58)
    agreed on a placement 43 px off and outvoted it (21.8 px mean error). Other peaks alone,
    each weaker than the link, do not outvote it."""
    by, err = _grid_case("retina", 1000.0, seed=2)
    assert by[(11, 12)].used and by[(11, 12)].quality > 0.85, by[(11, 12)]
    assert not by[(2, 3)].used or np.linalg.norm(by[(2, 3)].residual_px) < 1.5, by[(2, 3)]
    assert np.median(err) < 0.5 and err.mean() < 1.0, err


def test_a_lone_link_outvoted_by_best_peaks_alone_is_replaced() -> None:
    """Tiles in two columns (0-2-4 and 1-3-5) joined by one used link, 0-1, whose shift puts
    the right column 5 px from where the two other pairs across the cut (2-3, 4-5, refused
    but candidates) agree on. Those two best peaks outvote the link and are taken; with no
    other peaks left open, this raised IndexError (a 20x20 scan of 64 px ``retina`` tiles at
    15 % overlap, 2,000 photons)."""
    from scopefx.fusion._loops import _outvoted_bridge

    ij = np.array([(0, 2), (2, 4), (1, 3), (3, 5), (0, 1), (2, 3), (4, 5)])
    used = np.array([True, True, True, True, True, False, False])
    candidate = ~used
    shifts = np.zeros((7, 2))
    shifts[5:] = (0.0, 5.0)  # the pairs across the cut move the right column 5 px
    quality = np.array([0.9, 0.9, 0.9, 0.9, 0.5, 0.6, 0.6])
    none = (np.zeros(0, dtype=int), np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=bool))
    bridge, admit, picked = _outvoted_bridge(6, ij, used, candidate, shifts, quality, none,
                                             np.zeros((6, 2)), 1.5,
                                             np.array([2.0, 2, 2, 2, 1, 1, 1]))  # fmt: skip
    assert bridge == 4
    assert admit.tolist() == [5, 6] and picked.tolist() == [-1, -1]


def test_bridges_are_the_links_no_loop_runs_through() -> None:
    """A square (0-1-2-3) with a tail (3-4-5) and a separate pair (6-7)."""
    from scopefx.fusion._loops import _bridges

    links = np.array([(0, 1), (1, 2), (2, 3), (3, 0), (3, 4), (4, 5), (6, 7)])
    assert sorted(_bridges(8, links)) == [4, 5, 6]


def test_measure_refuses_a_best_shift_on_the_edge_of_the_search() -> None:
    """Two tiles 12 px off their stage positions searched over +-8 px: the best NCC lies on the
    edge of the search (the true peak lies beyond), which is no match, so the pair is refused
    (it was used, 4.8 px off)."""
    from scopefx.fusion._correlate import measure

    image = _truth(400).astype(np.float32)
    tiles = [image[100:160, 20:220], image[112:172, 180:380]]  # truly at (0, 0), (12, 160)
    reg = register(_table(np.array([[0.0, 0.0], [0.0, 160.0]])), read=_memory_reader(tiles),
                   shapes=[(60, 200)] * 2,
                   params=RegistrationParams(max_shift_px=8, allow_partial=True))  # fmt: skip
    assert not reg.pairs[0].used and reg.pairs[0].status == "low_quality"
    a, b = image[100:160, 20:220], image[112:172, 20:220]
    narrow = measure(a, b, 8, 6, (1.0, 1.0))
    assert not narrow.inside and abs(narrow.shift[0]) > 7
    wide = measure(a, b, 16, 6, (1.0, 1.0))
    assert wide.significant and wide.inside and np.allclose(wide.shift, [12, 0], atol=0.2)


def _grating(size: int = 1024, period: float = 12.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    return 0.5 + 0.25 * (np.cos(2 * np.pi * xx / period) + np.cos(2 * np.pi * yy / period))


def test_repeated_pattern_is_refused_not_aliased() -> None:
    """A pure grating matches equally at every period: no pair may be used."""
    tiles, _, stage = _grid(2, 2, 160, (120, 120), seed=24, image=_grating())
    rng = np.random.default_rng(0)
    tiles = [t + rng.normal(0, 0.01, t.shape).astype(np.float32) for t in tiles]
    kwargs = {"read": _memory_reader(tiles), "shapes": [(160, 160)] * 4}
    with pytest.raises(RegistrationError, match=r"only 0 of 4 .*4 ambiguous"):
        register(_table(stage), **kwargs)  # type: ignore[arg-type]
    reg = register(_table(stage), params=RegistrationParams(allow_partial=True), **kwargs)  # type: ignore[arg-type]
    assert {p.status for p in reg.pairs} == {"ambiguous", "corner"}
    np.testing.assert_allclose(reg.corrections_px, 0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unrelated_tiles_give_no_match(seed: int) -> None:
    """Independent noise in every tile: the best of the many shifts searched on a 16 px overlap
    correlates by chance (NCC 0.3-0.5), and must not pass for a match."""
    rng = np.random.default_rng(seed)
    tiles = [rng.integers(0, 255, (96, 96)).astype(np.float32) for _ in range(4)]
    stage = np.array([(r, c) for r in range(2) for c in range(2)], dtype=float) * 80
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(96, 96)] * 4,
                   params=RegistrationParams(allow_partial=True))  # fmt: skip
    assert not any(p.used for p in reg.pairs)


def test_too_few_usable_pairs_is_an_error_unless_partial_is_allowed() -> None:
    tiles, _, stage = _grid(2, 2, 160, (120, 120), seed=25)
    for k in (1, 2, 3):
        tiles[k] = np.full_like(tiles[k], 0.3)
    kwargs = {"read": _memory_reader(tiles), "shapes": [(160, 160)] * 4}
    with pytest.raises(RegistrationError, match=r"only 0 of 4 .*4 blank.*allow_partial"):
        register(_table(stage), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):  # also a ValueError
        register(_table(stage), **kwargs)  # type: ignore[arg-type]
    reg = register(_table(stage), params=RegistrationParams(allow_partial=True), **kwargs)  # type: ignore[arg-type]
    assert not any(p.used for p in reg.pairs)


def test_a_refusal_carries_the_evidence_and_what_partial_would_give() -> None:
    """The refused registration is in the error: every pair as measured and classified, and
    the layout ``allow_partial`` gives (a notebook can look at which pairs failed and how);
    it survives pickling, as an error sent back from an endpoint is."""
    import pickle

    tiles, _, stage = _grid(2, 3, 160, (120, 120), seed=25)
    for k in (2, 4, 5):
        tiles[k] = np.full_like(tiles[k], 0.3)
    kwargs = {"read": _memory_reader(tiles), "shapes": [(160, 160)] * 6}
    with pytest.raises(RegistrationError, match=r"only 2 of 7") as info:
        register(_table(stage), **kwargs)  # type: ignore[arg-type]
    refused = info.value.registration
    partial = register(_table(stage), params=RegistrationParams(allow_partial=True), **kwargs)  # type: ignore[arg-type]

    def evidence(reg):  # NaN shifts compare equal here
        return [(p.i, p.j, p.status, p.used) for p in reg.pairs], [p.shift_px for p in reg.pairs]

    assert refused is not None and evidence(refused)[0] == evidence(partial)[0]
    np.testing.assert_array_equal(evidence(refused)[1], evidence(partial)[1])
    assert sum(p.used for p in refused.pairs) == 2
    np.testing.assert_array_equal(refused.table.affines, partial.table.affines)
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value) and evidence(back.registration)[0] == evidence(refused)[0]
    with pytest.raises(RegistrationError) as none:  # nothing measured: nothing to carry
        register(_table(stage * 3), **kwargs)  # type: ignore[arg-type]
    assert none.value.registration is None


def test_tiles_that_do_not_overlap_cannot_be_registered() -> None:
    tiles, _, stage = _grid(2, 2, 160, (120, 120), seed=26)
    with pytest.raises(RegistrationError, match="no two of the 4 tiles overlap"):
        register(_table(stage * 100), read=_memory_reader(tiles), shapes=[(160, 160)] * 4)


def test_registration_params_round_trip_and_refusals() -> None:
    p = RegistrationParams(max_shift_px=80, min_overlap_px=8, allow_partial=True)
    d = p.to_dict()
    assert d["max_shift_px"] == 80.0 and d["allow_partial"] is True
    assert RegistrationParams.from_dict(json.loads(json.dumps(d))) == p
    with pytest.raises(ConfigError, match=r"unknown registration setting\(s\) \['max_shift'\]"):
        RegistrationParams.from_dict({"max_shift": 3})
    with pytest.raises(ConfigError, match="params must be a RegistrationParams"):
        register(_table(np.zeros((1, 2))), params={"max_shift_px": 3})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("min_quality", 1.5, r"min_quality must be in \[0, 1\], got 1.5"),
        ("max_shift_px", 0, "max_shift_px must be a finite number > 0, or None, got 0"),
        ("prior_weight", -1.0, r"prior_weight must be > 0, got -1.0"),
        ("outlier_px", 0.0, "outlier_px must be > 0, got 0.0"),
        ("min_overlap_px", 0, "min_overlap_px must be > 0, got 0"),
        ("highpass_sigma_px", -1, "highpass_sigma_px must be >= 0 or None, got -1"),
        ("allow_partial", "yes", "allow_partial must be True or False, got 'yes'"),
        ("min_peak_margin", float("nan"), r"min_peak_margin must be in \[0, 1\], got nan"),
    ],
)
def test_registration_params_name_the_bad_value(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RegistrationParams(**{field: value})  # type: ignore[arg-type]


def _real(name: str) -> Path:
    folder = REAL / name
    if not folder.is_dir():
        pytest.skip(f"real tile set {folder} is absent (it is shared/data/tiles_real/{name})")
    return folder


def _reference_error(table: TileTable, reference: Path) -> np.ndarray:
    ref = read_tile_table(reference)
    by_name = {Path(r).name: a[:2, 2] for r, a in zip(ref.refs, ref.affines, strict=True)}
    err = table.affines[:, :2, 2] - np.array([by_name[Path(r).name] for r in table.refs])
    return np.linalg.norm(err - err.mean(axis=0), axis=1)


def test_every_residual_is_taken_at_the_final_positions() -> None:
    """The Leica scan with tile r1-c1 100 px off its stage position: its pairs fail, too few
    loops are left to hold the tiles to the stage, and the stage model moves the tile. The
    unused pairs' residuals were those of the solve before that move (84.37 px reported for
    a pair whose final positions give 85.19)."""
    folder = _real("leica_tma4x3")
    table = read_tile_table(folder / "stage.csv")
    affines = table.affines
    moved = next(k for k, r in enumerate(table.refs) if Path(r).name == "r1-c1.png")
    affines[moved, 1, 2] += 100.0
    reg = register(table.with_affines(affines),
                   params=RegistrationParams(allow_partial=True))  # fmt: skip
    c = reg.corrections_px
    assert any(moved in (p.i, p.j) and not p.used for p in reg.pairs)
    for p in reg.pairs:
        if not np.all(np.isfinite(p.shift_px)):
            continue
        shift = p.modelled_px if p.used and p.modelled_px is not None else p.shift_px
        assert p.residual_px == pytest.approx(
            float(np.linalg.norm(c[p.j] - c[p.i] - np.asarray(shift))), abs=1e-6
        ), p


def test_an_inf_pixel_outside_every_overlap_blanks_no_pair() -> None:
    """A float tile with one inf pixel (a hot pixel, a division by 0 upstream): every crop of
    that tile read as blank, and its pairs were refused ("the overlaps hold too little
    content"). Such a pixel is no data, like a NaN."""
    m = samples.make_mosaic("cell", grid=(2, 2), tile_px=128, overlap=0.2, jitter_px=2.0,
                            subpixel=True, seed=1)  # fmt: skip
    tiles = [np.asarray(t, np.float32) for t in m.tiles]
    tiles[0][10, 10] = np.inf  # far from either of its overlaps
    refs = [f"tile_{k}" for k in range(4)]
    reg = register(_table(m.affines[:, :2, 2], refs),
                   read=dict(zip(refs, tiles, strict=True)).__getitem__,
                   shapes=[(128, 128)] * 4)  # fmt: skip
    sides = [p for p in reg.pairs if p.status != "corner"]
    assert all(p.used for p in sides), sides


def test_real_leica_scan_with_defaults() -> None:
    """Vignetted 4x3 scan, 58 px overlaps: the side pairs used (one may be refused: the scan
    is not rigid, its loops of true pairs miss by 1-2 px, and ``6.tif``/``7.tif`` stands
    1.5 px off the rest's prediction), corners not measured, within the published grid's
    couple of pixels."""
    folder = _real("leica_tma4x3")
    reg = register(read_tile_table(folder / "stage.csv"), workers=2)
    sides = [p for p in reg.pairs if p.status != "corner"]
    assert len(sides) == 17 and sum(not p.used for p in sides) <= 1
    assert _reference_error(reg.table, folder / "reference.csv").max() < 3.5


def test_refinement_has_the_last_word_over_the_searchs_integer_peak() -> None:
    """Leica tiles r3-c0 / r3-c1 through the estimated flat field: the search's smoothing,
    one-sided at each tile's edge, put the integer peak at -1 px along x while the NCC of the
    unsmoothed overlap peaks at +0.65 px (raw NCC 0.49 there, 0.37 at -0.3). Gauss-Newton
    climbed to +0.7 from the phase correlation's -0.3, but a result more than 1.5 px from the
    integer peak was thrown away for the phase estimate: the pair stayed 0.95 px off, and the
    scan's overlap agreement fell to 0.366 (0.403 with the refinement kept)."""
    from scopefx.fusion import estimate_flatfield

    folder = _real("leica_tma4x3")
    table = read_tile_table(folder / "stage.csv")
    flat = estimate_flatfield(list(table.refs))
    pair = TileTable.from_positions([table.refs[9], table.refs[10]],
                                    [tuple(table[k].offset[::-1]) for k in (9, 10)])  # fmt: skip
    reg = register(pair, params=RegistrationParams(estimate_flatfield=False), flatfield=flat)
    (found,) = reg.pairs
    assert found.used and abs(found.shift_px[1] - 0.65) < 0.25, found
    raw = register(pair, params=RegistrationParams(estimate_flatfield=False))  # the same pair
    assert abs(raw.pairs[0].shift_px[1] - found.shift_px[1]) < 0.25


def test_real_graph_paper_strip_with_defaults() -> None:
    """The nominal layout is up to 71 px off; the default search reaches every true step."""
    folder = _real("starrynight_strip10")
    table = read_tile_table(folder / "stage.csv")
    reg = register(table, workers=2)
    assert all(p.used for p in reg.pairs)
    before = _reference_error(table, folder / "reference.csv")
    after = _reference_error(reg.table, folder / "reference.csv")
    assert after.mean() < before.mean() / 4
    # Fiji's layout is no ground truth: its step from 7.tif to 8.tif (334 px) doubles the
    # vertical grid lines, ours (352 px) aligns them; our overlaps agree better than Fiji's.
    fiji = read_tile_table(folder / "reference.csv")
    assert overlap_agreement(reg.table, workers=2)[0] > overlap_agreement(fiji, workers=2)[0]


# --------------------------------------------------------------------------------------------
# Vignetting multiplies the content; registration corrects it by a flat field estimated from
# the tiles when it is given none (RegistrationParams.estimate_flatfield).


def _cell_mosaic(overlap: float, vignetting: float, seed: int = 1):
    m = samples.make_mosaic("cell", grid=(3, 3), tile_px=256, overlap=overlap, jitter_px=15.0,
                            subpixel=True, vignetting=vignetting, seed=seed)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(256 * (1 - overlap))
    nominal = np.array([(r, c) for r in range(3) for c in range(3)], float) * step
    stage = nominal + (true - nominal).mean(axis=0)
    return list(m.tiles), true, stage


def test_flatfield_estimate_removes_the_vignetting_bias_of_low_contrast_content() -> None:
    """``cell`` (low contrast) under a 1 - 0.5 r^2 falloff at 45 % overlap: correlated as read,
    the multiplied shading pulled four pairs by 0.5-0.8 px (0.27 px mean error); through the
    estimated flat field the layout is within 0.1 px."""
    tiles, true, stage = _cell_mosaic(0.45, 0.5)
    shapes = [(256, 256)] * 9
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=shapes)
    assert reg.flatfield == "estimated"
    assert _position_error(reg.table, true).mean() < 0.1
    raw = register(_table(stage), read=_memory_reader(tiles), shapes=shapes,
                   params=RegistrationParams(estimate_flatfield=False))  # fmt: skip
    assert raw.flatfield == "none"
    assert _position_error(raw.table, true).mean() > 0.15  # the bias the estimate removes


def test_flatfield_estimate_leaves_unshaded_tiles_alone() -> None:
    """On unshaded tiles the estimate shrinks to flat: the same layout as without it."""
    tiles, true, stage = _cell_mosaic(0.3, 0.0)
    shapes = [(256, 256)] * 9
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=shapes)
    raw = register(_table(stage), read=_memory_reader(tiles), shapes=shapes,
                   params=RegistrationParams(estimate_flatfield=False))  # fmt: skip
    assert reg.flatfield == "estimated"
    np.testing.assert_allclose(reg.table.affines, raw.table.affines, atol=0.02)
    assert _position_error(reg.table, true).mean() < 0.1


def test_flatfield_estimate_is_skipped_where_it_cannot_be_made(caplog) -> None:
    """Fewer than 8 tiles, tiles of mixed shapes, or a black border that the estimate refuses:
    registration correlates the tiles as read and says so; a caller's flat field wins."""
    tiles, true, stage = _mosaic(seed=3)
    with caplog.at_level("INFO", logger="scopefx.fusion._register"):
        few = register(_table(stage[:6]), read=_memory_reader(tiles), shapes=[(TILE, TILE)] * 6)
    assert few.flatfield == "none"
    assert "without a flat field: it needs at least 8 tiles, there are 6" in caplog.text
    bordered = [t.copy() for t in tiles]
    for t in bordered:
        t[:, -20:] = t[-20:, :] = 0  # no signal at every tile's edge: the estimate is refused
    # (the blank borders leave 9 of the 24 pairs usable: registered with allow_partial)
    reg = register(_table(stage), read=_memory_reader(bordered), shapes=[(TILE, TILE)] * 16,
                   params=RegistrationParams(allow_partial=True))  # fmt: skip
    assert reg.flatfield == "none"
    given = register(_table(stage), read=_memory_reader(tiles), shapes=[(TILE, TILE)] * 16,
                     flatfield=FlatField(np.ones((TILE, TILE), np.float32)))  # fmt: skip
    assert given.flatfield == "given"
    assert _position_error(given.table, true).max() < 0.5


def test_registration_estimates_one_flat_on_the_channel_sum() -> None:
    """Registration correlates the sum of a tile's channels, so its flat field is estimated on
    that sum: one (Y, X) flat however many channels (a per-channel estimate of 40-channel
    tiles held 40 reduced planes per tile), and the vignetting is found in it."""
    from scopefx.fusion._shading import _shading_estimate

    tiles, _, stage = _mosaic(seed=5)
    y, x = np.mgrid[-1 : 1 : TILE * 1j, -1 : 1 : TILE * 1j]
    shade = (1 - 0.25 * (x**2 + y**2)).astype(np.float32)
    many = [np.stack([t * shade * (1 + 0.1 * c) for c in range(40)]) for t in tiles]
    flat = _shading_estimate(_table(stage), _memory_reader(many), np.full((16, 2), TILE), 2)
    assert flat is not None and flat.flat.shape == (TILE, TILE)
    summed = [t.sum(axis=0) for t in many]  # the same estimate as from the summed planes
    grey = _shading_estimate(_table(stage), _memory_reader(summed), np.full((16, 2), TILE), 1)
    assert grey is not None
    np.testing.assert_allclose(flat.flat, grey.flat, rtol=1e-5)
    # and it holds the vignetting: 0.05 off on average, where no correction is 0.11 off (16
    # tiles of one 560 px image share content, which the median keeps in part)
    truth = shade / shade.mean()
    assert np.abs(flat.flat / flat.flat.mean() - truth).mean() < 0.07
    assert np.abs(1 - truth).mean() > 0.1


def test_flatfield_estimate_takes_numpy_integer_workers() -> None:
    """``register`` accepts a NumPy integer for ``workers``; the estimate refused it and the
    tiles were silently correlated without a flat field."""
    tiles, true, stage = _cell_mosaic(0.45, 0.5)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(256, 256)] * 9,
                   workers=np.int64(2))  # fmt: skip
    assert reg.flatfield == "estimated"
    assert _position_error(reg.table, true).mean() < 0.1


@pytest.mark.parametrize("estimate", [True, False])
@pytest.mark.parametrize("workers", [1, 3])
def test_a_tile_that_cannot_be_read_is_named(estimate, workers) -> None:
    """A caller's reader that fails on one tile: its error reaches the caller with a note
    naming that tile (it came bare: 'decoder failed: truncated strip')."""
    tiles, _, stage = _cell_mosaic(0.3, 0.0)
    refs = [f"tile_{k}.tif" for k in range(9)]
    by_ref = dict(zip(refs, tiles, strict=True))

    def read(ref: str) -> np.ndarray:
        if ref == "tile_4.tif":
            raise ValueError("decoder failed: truncated strip")
        return by_ref[ref]

    with pytest.raises(ValueError, match="truncated strip") as info:
        register(_table(stage, refs), read=read, shapes=[(256, 256)] * 9, workers=workers,
                 params=RegistrationParams(estimate_flatfield=estimate))  # fmt: skip
    assert "while reading tile 'tile_4.tif'" in getattr(info.value, "__notes__", [])


def test_clipped_pixels_are_no_data_under_the_flat_field() -> None:
    """A vignetted scan with 3 % of its pixels clipped at the top of the range: the flat-field
    correction turned each clipped plateau into a copy of the inverse shading, which differs
    between the two tiles of an overlap; a pair fell to low quality and tile 8 was placed by
    the stage model, 9.1 px off. Clipped pixels are left out of the match under a flat field;
    without one the layout is as it was."""
    m = samples.make_mosaic("cell", grid=(3, 3), tile_px=128, overlap=0.2, jitter_px=6.0,
                            subpixel=True, vignetting=0.5, seed=1)  # fmt: skip
    true = m.affines[:, :2, 2]
    nominal = np.array([(r, c) for r in range(3) for c in range(3)], float) * round(128 * 0.8)
    stage = nominal + (true - nominal).mean(axis=0)
    top = max(float(t.max()) for t in m.tiles)
    tiles = [np.clip(t.astype(np.float64) * 1.5, 0, top).astype(np.uint16) for t in m.tiles]
    assert 0.01 < np.mean([(t == top).mean() for t in tiles]) < 0.05
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(128, 128)] * 9)
    assert reg.flatfield == "estimated"
    assert _position_error(reg.table, true).max() < 0.5
    raw = register(_table(stage), read=_memory_reader(tiles), shapes=[(128, 128)] * 9,
                   params=RegistrationParams(estimate_flatfield=False))  # fmt: skip
    assert _position_error(raw.table, true).max() < 0.5


def _sparse_scan(name: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """A 4x4 scan of 256 px tiles, 10 % overlap, stage up to 5 px off, of sparse content: 25
    discs of ``name`` on a flat background at a tenth of full scale, shot and read noise."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    step = round(256 * 0.9)
    nominal = np.array([(r, c) for r in range(4) for c in range(4)], float) * step
    true = nominal + rng.uniform(-5, 5, nominal.shape)
    lo = np.floor(true.min(axis=0)) - 4
    shape = tuple(int(v) for v in np.ceil(true.max(axis=0)) + 256 + 4 - lo)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    discs = np.zeros(shape, bool)
    place = np.random.default_rng(100)
    for _ in range(25):
        cy, cx = place.uniform(0, shape[0]), place.uniform(0, shape[1])
        discs |= (yy - cy) ** 2 + (xx - cx) ** 2 < 40**2
    image = np.clip(0.1 + samples.bundled_image(name, size=shape).astype(np.float32) * discs, 0, 1)
    tiles = []
    for k, p in enumerate(true):
        t = ndi.affine_transform(image, np.eye(2), offset=p - lo, output_shape=(256, 256), order=3)
        tiles.append(samples.acquire(np.clip(t, 0, 1), photons=1000.0, read_noise=2.0,
                                     dtype=np.uint16, seed=k))  # fmt: skip
    return tiles, true, nominal + (true - nominal).mean(axis=0)


@pytest.mark.parametrize("name", ["cell", "coins"])
def test_a_weak_unconfirmed_match_far_from_the_stage_model_is_dropped(name) -> None:
    """Sparse content: a pair whose true overlap holds only background matched noise at NCC
    0.28-0.30 some 30 px away; as the only link between two groups no loop checked it, and
    half the scan moved with it (11.6-12.2 px mean error, the stage alone 3.7). A weak match
    that no loop confirms is checked against the corrections of the confirmed pairs of its
    direction, and the stage model places it when it lies far outside them."""
    tiles, true, stage = _sparse_scan(name)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(256, 256)] * 16)
    error = _position_error(reg.table, true)
    assert error.mean() < 3.0, error.mean()
    weak = [p for p in reg.pairs if p.status != "corner" and p.quality < 0.5]
    assert weak and not any(p.used for p in weak), weak


def _thin_strips(width: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Two crops of one image (a search box 128 px tall): ``a`` holds columns 4..4+width+4 of
    it, ``b`` the same place moved by ``fraction`` px along x (``b(m) = a(m + d)``,
    ``d = (0.2, fraction)``); their common part is ``width`` px wide."""
    image = samples.bundled_image("cell", size=(600, 600)).astype(np.float64)
    moved = ndimage.shift(image, (-0.2, -fraction), order=3)
    a, b = image[200:328, 196 : 204 + width].copy(), moved[200:328, 196 : 204 + width].copy()
    a[:, :4], b[:, -4:] = np.nan, np.nan  # a's left edge and b's right edge out of view
    a[:, -4:], b[:, :4] = np.nan, np.nan
    return a, b


@pytest.mark.parametrize("start", [-1.0, 0.0, 1.0])
def test_sub_pixel_refinement_is_exact_on_a_thin_common_part(start: float) -> None:
    """A 13 px wide common part, 0.3 px between the crops: the phase correlation's window,
    the same on both crops, keeps its estimate near the integer it starts from (three
    quarters of the remainder lost); Gauss-Newton on the NCC, both crops resampled half-way,
    reaches the shift from a pixel either side."""
    from scopefx.fusion._correlate import _gauss_newton, _subpixel

    a, b = _thin_strips(13, 0.3)
    pc = start + _subpixel(a, b, np.array([0, int(start)]), 2)[1]
    assert abs(pc - 0.3) > 0.2  # the window's pull: what made a thin overlap's pair off
    d = _gauss_newton(a, b, np.array([0.0, start]), 2)
    assert d is not None and np.allclose(d, [0.2, 0.3], atol=0.02), d


def test_thin_overlaps_register_to_a_hundredth_of_a_pixel() -> None:
    """A 4x4 scan of 128 px tiles at 10 % overlap (13 px), up to 3 px off the stage grid,
    clean: every pair is measurable and the layout exact (it was 0.61 px mean, 0.92 max: the
    search's smoothing, one-sided at each tile's edge, put pairs a pixel off, and the phase
    correlation could not bring them back)."""
    m = samples.make_mosaic("cell", grid=(4, 4), tile_px=128, overlap=0.1, jitter_px=3.0,
                            seed=0)  # fmt: skip
    true = m.affines[:, :2, 2]
    grid = np.array([(r, c) for r in range(4) for c in range(4)], dtype=float) * 115
    stage = grid + (true - grid).mean(axis=0)
    reg = register(_table(stage), read=_memory_reader(list(m.tiles)), shapes=[(128, 128)] * 16)
    assert all(p.used for p in reg.pairs if p.status != "corner")
    assert np.linalg.norm(_position_error(reg.table, true), axis=1).max() < 0.05


def test_a_best_shift_at_the_minimum_overlap_is_a_peak_only_if_the_ncc_falls_beyond() -> None:
    """The narrowest common part allowed (``min_overlap_px`` 6) is the edge of the search
    when the true one is narrower: 3 px true, the best shift there is no peak; 5.3 px true,
    the refinement finds it within half a pixel of the edge, and it stands."""
    from scopefx.fusion._correlate import measure

    image = samples.bundled_image("cell", size=(600, 600)).astype(np.float32)
    for true_overlap, inside in ((3.0, False), (5.3, True)):
        fraction = 6 - true_overlap  # b sits this much further right than a 6 px overlap
        moved = ndimage.shift(image, (0, -fraction), order=3)
        a = np.full((128, 40), np.nan, np.float32)
        b = np.full((128, 40), np.nan, np.float32)
        a[:, :26] = image[200:328, 200:226]  # a's right edge at column 26
        b[:, 20:] = moved[200:328, 220:240]  # b's left edge at 20: 6 px common at the stage
        r = measure(a, b, 8, 6, (1.0, 1.0))
        assert r.inside is inside, (true_overlap, r)
        if inside:
            assert abs(r.shift[1] - fraction) < 0.1, r.shift


def test_a_wrong_pair_in_a_loop_is_judged_by_what_the_others_predict() -> None:
    """A loop of four tiles, one pair 5 px off: the solve spreads the misfit over the loop,
    the wrong pair's own residual is a quarter of it (1.25 px, under ``outlier_px`` 1.5);
    against what the other three predict it is 5 px off; its standardised residual
    (``residual / sqrt(1 - h)``) is half that, 2.5 px, and so judged."""
    from scopefx.fusion._lsq import _misfit, _solve

    ij = np.array([(0, 1), (1, 3), (0, 2), (2, 3)])
    shifts = np.array([(0.0, 100.0), (100.0, 0.0), (100.0, 0.0), (0.0, 105.0)])  # last 5 off
    used, weight = np.ones(4, bool), np.ones(4)
    c = _solve(4, ij, shifts, weight, 1e-4)
    residual = np.linalg.norm(c[ij[:, 1]] - c[ij[:, 0]] - shifts, axis=1)
    assert np.allclose(residual, 1.25, atol=0.01)
    misfit = _misfit(4, ij, used, weight, residual, RegistrationParams())
    assert np.allclose(misfit, 2.5, atol=0.05)  # every pair of a lone loop: half the miss
    # with more loops (tiles 0-3 and 1-2 measured too), the wrong one stands out
    ij2 = np.vstack([ij, [(0, 3), (1, 2)]])
    shifts2 = np.vstack([shifts, [(100.0, 100.0), (100.0, -100.0)]])
    used2, weight2 = np.ones(6, bool), np.ones(6)
    c2 = _solve(4, ij2, shifts2, weight2, 1e-4)
    residual2 = np.linalg.norm(c2[ij2[:, 1]] - c2[ij2[:, 0]] - shifts2, axis=1)
    misfit2 = _misfit(4, ij2, used2, weight2, residual2, RegistrationParams())
    assert int(np.argmax(misfit2)) == 3 and misfit2[3] > 2 * np.delete(misfit2, 3).max()
    # dropped (worst first), the rest agree
    keep = np.arange(6) != 3
    c3 = _solve(4, ij2[keep], shifts2[keep], weight2[keep], 1e-4)
    residual3 = np.linalg.norm(c3[ij2[keep, 1]] - c3[ij2[keep, 0]] - shifts2[keep], axis=1)
    assert _misfit(4, ij2[keep], used2[keep], weight2[keep], residual3,
                   RegistrationParams()).max() < 0.01  # fmt: skip


def test_a_ridge_pair_weighs_less_along_its_ridge() -> None:
    """A loop of four tiles whose pair 0-1 has its shift 2 px off along y only (its NCC a
    ridge along y: one edge across the overlap). With one weight per pair the solve spreads
    the miss over the loop (tile 1 1.5 px off, under ``outlier_px``); weighing that pair
    a hundredth along y, the three others place tile 1 along y and the pair still along x.
    Equal weights on both axes give the solve and the misfit of one weight per pair."""
    from scopefx.fusion._lsq import _misfit, _solve

    ij = np.array([(0, 1), (1, 3), (0, 2), (2, 3)])
    truth = np.array([(0.0, 100.0), (100.0, 0.0), (100.0, 0.0), (0.0, 100.0)])
    shifts = truth + np.array([(2.0, 0.0), (0, 0), (0, 0), (0, 0)])
    scalar = _solve(4, ij, shifts, np.ones(4), 1e-4)
    assert abs((scalar[1] - scalar[0])[0] - 1.5) < 0.01
    per_axis = np.ones((4, 2))
    per_axis[0, 0] = 0.01
    c = _solve(4, ij, shifts, per_axis, 1e-4)
    # along y the pair's 2 px count 0.01 against the three in series (1/3): 2 x 0.029
    np.testing.assert_allclose(c[1] - c[0], (0.058, 100.0), atol=0.006)  # 1e-4 prior: 0.005
    np.testing.assert_allclose(c[3] - c[0], (100.0, 100.0), atol=0.05)
    used = np.ones(4, bool)
    same = np.full((4, 2), 3.0)
    np.testing.assert_allclose(_solve(4, ij, shifts, same, 1e-4),
                               _solve(4, ij, shifts, np.full(4, 3.0), 1e-4))  # fmt: skip
    p2 = scalar[ij[:, 1]] - scalar[ij[:, 0]] - shifts
    r2 = np.linalg.norm(p2, axis=1)
    np.testing.assert_allclose(
        _misfit(4, ij, used, same, r2, RegistrationParams(), parts=p2),
        _misfit(4, ij, used, np.full(4, 3.0), r2, RegistrationParams()),
    )


@pytest.mark.parametrize("content", ["edge", "diagonal", "texture"])
def test_a_shift_along_an_edge_is_known_to_be_uncertain_along_it(content: str) -> None:
    """:attr:`Measured.spread`: on one straight edge across the common part (the same on
    every row) the NCC is a ridge along the edge and the shift's variance along it is many
    pixels squared; across the edge, and on texture along both axes, it stays under the
    0.5 px^2 at which a pair starts to weigh less."""
    from scopefx.fusion._correlate import measure

    rng = np.random.default_rng(5)
    if content == "edge":
        big = np.broadcast_to(np.where(np.arange(140) >= 70, 1.0, 0.0), (100, 140))
        big = ndimage.gaussian_filter(big, 2.0)
    elif content == "diagonal":  # its near-best shifts touch at their corners only
        yy, xx = np.mgrid[:100, :140]
        big = ndimage.gaussian_filter(np.where(xx - yy >= 20, 1.0, 0.0), 2.0)
    else:
        big = ndimage.gaussian_filter(rng.normal(0, 1, (100, 140)), 2.0)
        big /= big.std()
    a = big[5:85, 5:125] + rng.normal(0, 0.05, (80, 120))
    b = big[8:88, 7:127] + rng.normal(0, 0.05, (80, 120))  # b(m) = a(m + (3, 2))
    r = measure(a.astype(np.float32), b.astype(np.float32), 10, 6, (1.0, 1.0))
    var = np.diag(r.spread)
    if content == "diagonal":  # along the ridge both axes are uncertain
        assert var.min() > 4 and abs((r.shift[1] - r.shift[0]) - (2 - 3)) < 0.5, (var, r.shift)
        return
    assert abs(r.shift[1] - 2) < 0.3, r.shift
    assert var[1] < 0.5, var
    if content == "edge":
        assert var[0] > 4, var
    else:
        assert var[0] < 0.5 and abs(r.shift[0] - 3) < 0.3, (var, r.shift)


def _direct_ncc(a, b, q, degree):
    """The NCC of ``a(m + q)`` and ``b(m)`` over their common pixels, each minus its
    least-squares polynomial there, computed pixel by pixel (the oracle of ``_ncc_surface``)."""
    from scopefx.fusion._correlate import _monomials

    idx = np.indices(b.shape).reshape(b.ndim, -1).T
    moved = idx + np.asarray(q)
    inside = np.all((moved >= 0) & (moved < np.array(a.shape)), axis=1)
    m, n = idx[inside], moved[inside]
    va, vb = a[tuple(n.T)], b[tuple(m.T)]
    keep = np.isfinite(va) & np.isfinite(vb)
    coords = [np.linspace(-1, 1, s)[m[keep, ax]] for ax, s in enumerate(b.shape)]
    design = np.stack([np.prod([c**p for c, p in zip(coords, e, strict=True)], axis=0)
                       for e in _monomials(b.ndim, degree)], axis=1)  # fmt: skip
    ra = va[keep] - design @ np.linalg.lstsq(design, va[keep], rcond=None)[0]
    rb = vb[keep] - design @ np.linalg.lstsq(design, vb[keep], rcond=None)[0]
    return float(ra @ rb / np.sqrt((ra @ ra) * (rb @ rb))), int(keep.sum())


@pytest.mark.parametrize("nd", [2, 3])
def test_ncc_surface_box_sums_match_the_fft_sums_and_the_direct_ncc(monkeypatch, nd):
    """Crops whose pixels fill a box take summed-area tables for every sum but the cross term;
    crops with holes take the FFT for all. Both give the NCC computed pixel by pixel."""
    from scopefx.fusion import _correlate

    rng = np.random.default_rng(nd)
    checked = 0
    for trial in range(12):
        shape = tuple(int(v) for v in rng.integers(8, 30 if nd == 2 else 12, nd))
        ramp = np.linspace(0, 3, shape[0]).reshape((-1,) + (1,) * (nd - 1))
        a, b = rng.normal(size=shape) + ramp, rng.normal(size=shape) - ramp
        for x in (a, b):  # each crop's pixels: a box inside the crop
            lo = [int(rng.integers(0, n // 3)) for n in shape]
            keep = np.zeros(shape, bool)
            ends = [int(rng.integers(2 * n // 3, n + 1)) for n in shape]
            keep[tuple(slice(v, e) for v, e in zip(lo, ends, strict=True))] = True
            x[~keep] = np.nan
        reach = np.array([int(rng.integers(1, n - 1)) for n in shape])
        degree = trial % 3
        fast = _correlate._ncc_surface(a, b, reach, degree)
        with monkeypatch.context() as patch:
            patch.setattr(_correlate, "_box", lambda valid: None)
            general = _correlate._ncc_surface(a, b, reach, degree)
        for got, want in zip(fast, general, strict=True):
            np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, atol=1e-9)
        ncc, count = fast[0], fast[1]
        for flat in rng.choice(ncc.size, 8, replace=False):
            at = np.unravel_index(flat, ncc.shape)
            if count[at] < 40:
                continue
            want, n = _direct_ncc(a, b, np.array(at) - reach, degree)
            assert count[at] == n
            assert ncc[at] == pytest.approx(want, abs=1e-6)  # the Gram's 1e-9 n ridge
            checked += 1
    assert checked >= 10
    shape = (24, 20, 6)[:nd]  # a hole: not a box, so the general path, still the direct NCC
    hole, b = rng.normal(size=shape), rng.normal(size=shape)
    hole[(12, 10, 3)[:nd]] = np.nan
    assert _correlate._box(np.isfinite(hole)) is None
    reach = np.array((4, 4, 2)[:nd])
    ncc = _correlate._ncc_surface(hole, b, reach, 2)[0]
    for q in [(0, 0, 0)[:nd], (3, -2, 1)[:nd]]:
        want = _direct_ncc(hole, b, np.array(q), 2)[0]
        assert ncc[tuple(np.array(q) + reach)] == pytest.approx(want, abs=1e-6)


def _banded_mosaic(amplitude):
    """A 3x3 mosaic of noisy retina tiles, each with the same row and column offsets (a
    camera's banding) of ``amplitude`` times the tiles' pixel-difference spread."""
    m = samples.make_mosaic("retina", grid=(3, 3), tile_px=192, overlap=0.1, jitter_px=8,
                            subpixel=True, photons=1000.0, read_noise=2.0, seed=3)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(192 * 0.9)
    nominal = np.array([(r, k) for r in range(3) for k in range(3)], float) * step
    stage = nominal + (true - nominal).mean(axis=0)
    level = np.std(np.diff(m.tiles[0].astype(float), axis=1)) / np.sqrt(2)
    rng = np.random.default_rng(0)
    spread = amplitude * level
    pattern = rng.normal(0, spread, (192, 1)) + rng.normal(0, spread, (1, 192))
    tiles = [(t.astype(np.float64) + pattern).astype(np.float32) for t in m.tiles]
    refs = [f"t{k}" for k in range(len(tiles))]
    table = TileTable.from_positions(refs, [(float(x), float(y)) for y, x in stage])
    by = dict(zip(refs, tiles, strict=True))
    return table, by.__getitem__, [t.shape for t in tiles], true


def _mean_error(reg, true):
    d = reg.table.affines[:, :2, 2] - true
    d -= d.mean(axis=0)
    return float(np.linalg.norm(d, axis=1).mean())


def test_banding_shared_by_the_tiles_is_taken_out_before_correlation():
    """Row and column offsets the same in every tile match each overlap at the stage
    position; estimated from the tiles and taken out (``remove_banding``: by default where it
    looks like banding, as here), the mosaic registers as without them."""
    table, read, shapes, true = _banded_mosaic(1.0)
    off = RegistrationParams(remove_banding="off", allow_partial=True)
    kept = register(table, read=read, shapes=shapes, params=off)
    removed = register(table, read=read, shapes=shapes)
    forced = register(table, read=read, shapes=shapes,
                      params=RegistrationParams(remove_banding="on"))  # fmt: skip
    assert _mean_error(kept, true) > 2.0  # measured 5.6 px
    assert _mean_error(removed, true) < 0.4  # measured 0.22 (0.20 without banding)
    assert removed.banding == "removed" and kept.banding == "none"
    np.testing.assert_array_equal(removed.table.affines, forced.table.affines)


def test_tiles_without_banding_are_left_alone_by_default():
    """Without banding, ``auto`` changes nothing; ``on`` takes out what the tiles share
    beyond chance, at little cost here."""
    table, read, shapes, true = _banded_mosaic(0.0)
    default = register(table, read=read, shapes=shapes)
    off = register(table, read=read, shapes=shapes,
                   params=RegistrationParams(remove_banding="off"))  # fmt: skip
    on = register(table, read=read, shapes=shapes,
                  params=RegistrationParams(remove_banding="on"))  # fmt: skip
    assert default.banding == "none" and default.params.remove_banding == "auto"
    np.testing.assert_array_equal(default.table.affines, off.table.affines)
    assert _mean_error(on, true) < 0.4  # measured 0.19 (0.20 off)


def test_a_shared_black_border_is_not_taken_for_banding():
    """Every tile's last rows and columns black: shared by all tiles, but a step, not
    banding; ``auto`` leaves it (taken out as row and column offsets it broke registration)."""
    from scopefx.fusion._shading import _looks_like_banding

    step = np.r_[np.zeros(100), np.full(20, -50.0)]
    assert not _looks_like_banding(step - step.mean(), 1.0)
    stripes = np.random.default_rng(0).normal(size=120)
    assert _looks_like_banding(stripes, 0.99) and not _looks_like_banding(stripes, 0.9)


def test_remove_banding_takes_its_three_modes_only():
    with pytest.raises(ConfigError, match="remove_banding"):
        RegistrationParams(remove_banding=True)


def test_banding_estimate_takes_a_tile_without_pixels_quietly():
    """A tile whose lines hold no pixel (transparent) gives NaN profiles: left out of the
    estimate without numpy's empty-slice warnings; independent profiles share nothing."""
    import warnings

    from scopefx.fusion._shading import _shrunk_median, _unsmooth

    rng = np.random.default_rng(0)
    profiles = [_unsmooth(rng.normal(size=64)) for _ in range(6)] + [_unsmooth(np.full(64, np.nan))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        line, share = _shrunk_median(np.stack(profiles))
    assert share == 0.0 and not line.any()
    shared = rng.normal(size=64)  # the same offsets in every tile: kept
    banded = np.stack([_unsmooth(shared + 0.3 * rng.normal(size=64)) for _ in range(6)])
    line, share = _shrunk_median(banded)
    assert share > 0.9 and np.corrcoef(line, _unsmooth(shared))[0, 1] > 0.95


def test_banding_estimate_warns_nothing_from_its_worker_threads():
    """A tile without a single pixel (all NaN) gives lines without pixels. The estimate's
    means over them issue no warning at all: silencing one with catch_warnings inside the
    pool's threads raced with the other threads (CI once saw numpy's 'Mean of empty slice'
    raised as an error from ``fuse``)."""
    import warnings

    table, read, shapes, _ = _banded_mosaic(1.0)

    def holed(ref):
        tile = read(ref)
        return np.full_like(tile, np.nan) if ref == "t4" else tile

    params = RegistrationParams(remove_banding="on", allow_partial=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = register(table, read=holed, shapes=shapes, workers=2, params=params)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert reg.banding == "removed"


# -- the memory bound of one search (SCOPEFX_MAX_SEARCH_BYTES) ------------------------------


@pytest.mark.parametrize("size, reach", [((160, 96), 24), ((512, 205), 77), ((400, 400), 150)])
def test_search_bytes_bounds_the_searchs_measured_peak(size, reach):
    """The estimate made from the geometry alone is an upper bound of what a search takes
    (tracemalloc, NumPy's arrays traced), and not a loose one."""
    import tracemalloc

    from scopefx.fusion._correlate import measure, search_bytes

    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.normal(size=(size[0], size[1] + 4)), 2).astype(np.float32)
    a, b = base[:, : size[1]].copy(), base[:, 4:].copy()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        found = measure(a, b, reach, 6.0, (1.0, 1.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.allclose(found.shift, (0, 4), atol=0.05)
    estimate = search_bytes(size, reach)
    assert 0.6 * estimate <= peak <= estimate, (peak, estimate)


def test_a_search_over_the_memory_limit_is_refused_before_any_tile_is_read(monkeypatch):
    tiles, _, stage = _mosaic(seed=3)
    calls = []

    def read(ref: str) -> np.ndarray:
        calls.append(ref)
        return tiles[int(ref.split("_")[1])]

    table = _table(stage)
    monkeypatch.setenv("SCOPEFX_MAX_SEARCH_BYTES", str(2 * 2**20))  # 2 MiB
    shapes = [t.shape for t in tiles]
    with pytest.raises(ResourceLimitError, match=r"SCOPEFX_MAX_SEARCH_BYTES.*no tile was read.*"
                       r"lower max_shift_px \(--max-shift\) to \d+ px or less"):  # fmt: skip
        register(table, read=read, shapes=shapes, params=RegistrationParams(max_shift_px=60))
    assert calls == []
    monkeypatch.setenv("SCOPEFX_MAX_SEARCH_BYTES", str(2**16))  # under any crop of the overlaps
    with pytest.raises(ResourceLimitError, match="overlap alone is too large to search"):
        register(table, read=read, shapes=shapes)
    assert calls == []


def test_a_default_search_over_the_memory_limit_is_narrowed_to_fit(monkeypatch, caplog):
    """The default reach (15 % of a 160 px tile: 24 px) is narrowed to what fits, with a
    warning that names the setting; the stage errors (up to 6 px) are still found."""
    from scopefx.fusion._correlate import search_bytes

    tiles, true, stage = _mosaic(seed=3)
    table = _table(stage)
    full = search_bytes((160 + 6, 48 + 48), 24)  # about a side pair's crop at the default
    monkeypatch.setenv("SCOPEFX_MAX_SEARCH_BYTES", str(int(0.8 * full)))
    with caplog.at_level("WARNING", logger="scopefx.fusion._register"):
        reg = register(table, read=_memory_reader(tiles), shapes=[t.shape for t in tiles])
    assert "narrower range than the default" in caplog.text
    assert "SCOPEFX_MAX_SEARCH_BYTES" in caplog.text
    assert np.abs(_position_error(reg.table, true)).max() < 0.5


def test_a_pair_the_estimated_flat_field_spoils_is_measured_again_without_it():
    """5x5 tiles of `camera` under a 50 % falloff, 15 px overlaps, stage up to 15 px off: the
    flat field estimated from these 25 tiles is 8 % off at their bottom edges, which swamps the
    faint ground in the last row's overlaps (NCC 0.99 on the raw crops, -0.35 corrected), and
    the last row was placed by the stage model, 7-20 px off. Measured again on raw crops
    (their shading taken out by the detrend), every tile is placed within 0.5 px."""
    from scopefx.samples import make_mosaic

    m = make_mosaic("camera", grid=(5, 5), tile_px=256, overlap=0.06, jitter_px=15.0,
                    subpixel=True, vignetting=0.5, seed=1)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(256 * (1 - 0.06))
    nominal = np.array([(r, k) for r in range(5) for k in range(5)], float) * step
    stage = nominal + (true - nominal).mean(axis=0)
    reg = register(_table(stage), read=_memory_reader(list(m.tiles)),
                   shapes=[t.shape for t in m.tiles])  # fmt: skip
    assert reg.flatfield == "estimated"
    assert _position_error(reg.table, true).max() < 0.5


def test_a_search_range_beyond_the_tiles_is_searched_up_to_the_tiles():
    """A caller's ``max_shift_px`` of 1e300 is searched as the tiles' extent (no shift beyond
    it leaves a common part; it overflowed an integer conversion before), and infinity is
    refused by name."""
    tiles, true, stage = _mosaic(seed=3)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[t.shape for t in tiles],
                   params=RegistrationParams(max_shift_px=1e300))  # fmt: skip
    assert _position_error(reg.table, true).max() < 0.5
    with pytest.raises(ConfigError, match="max_shift_px must be a finite number"):
        RegistrationParams(max_shift_px=float("inf"))


def test_a_tile_none_of_whose_pairs_matched_is_named(caplog) -> None:
    """A 3x3 scan's centre tile 42 px off its stage position, beyond the default search (24 px
    of 160): each of its pairs failed, the stage model placed it, and nothing said so
    (review 36, F4). It is named in a warning with the setting that widens the search, and
    with the search wide enough it is matched and placed."""
    tiles, true, stage = _grid(3, 3, 160, (120, 120), seed=31)
    stage[4] += (12, 40)
    table, read, shapes = _table(stage), _memory_reader(tiles), [(160, 160)] * 9
    with caplog.at_level("WARNING", logger="scopefx.fusion._register"):
        reg = register(table, read=read, shapes=shapes)
    assert reg.unmatched_tiles() == (4,)
    assert reg.placed_by() == ("registration",) * 4 + ("stage model",) + ("registration",) * 4
    assert reg.pairs_used_per_tile().tolist() == [2, 2, 2, 2, 0, 2, 2, 2, 2]
    assert "1 tile placed by the stage model alone: tile_04; none of its pairs" in caplog.text
    assert "max_shift_px / --max-shift" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="scopefx.fusion._register"):
        wide = register(table, read=read, shapes=shapes,
                        params=RegistrationParams(max_shift_px=60))  # fmt: skip
    assert wide.unmatched_tiles() == () and "stage model alone" not in caplog.text
    assert set(wide.placed_by()) == {"registration"}
    assert _position_error(wide.table, true).max() < 0.5


def test_registered_tiles_land_on_whole_pixels_when_their_offsets_are_whole(tmp_path) -> None:
    """Two tiles cut 230 px apart from one image, the stage says 227. The solve moved each by
    1.5 px (its prior keeps the corrections' mean at 0), so both were resampled at half a
    pixel and the whole mosaic blurred; a common shift under a pixel puts them on whole
    pixels, and the fused mosaic is the image itself."""
    import tifffile

    from scopefx.fusion import fuse_lazy

    image = _truth(640)
    true = np.array([[20.0, 20.0], [20.0, 250.0]])  # (y, x)
    paths = []
    for k, p in enumerate(true):
        paths.append(str(tmp_path / f"t{k}.tif"))
        tifffile.imwrite(paths[-1], _cut(image, p, (160, 300)))
    stage = true + np.array([[0.0, 0.0], [0.0, -3.0]])
    reg = register(_table(stage, paths))
    placed = reg.table.affines[:, :2, 2]  # (y, x)
    assert [p.used for p in reg.pairs] == [True]
    np.testing.assert_allclose(placed - placed.round(), 0, atol=0.05)
    np.testing.assert_allclose(placed[1] - placed[0], [0, 230], atol=0.05)
    mosaic = fuse_lazy(reg.table.with_affines(np.round(reg.table.affines, 1))).compute()
    np.testing.assert_allclose(mosaic, image[20:180, 20:550], atol=1e-3)


def test_a_weak_bridge_far_beyond_what_strong_pairs_correct_is_dropped_in_a_small_scan() -> None:
    """3x3 cuts of a light-sheet frame (bench/register_real_cut.py, mitochondria, 20 %, seed
    2): two weak matches (NCC 0.29, 0.38) 26-27 px off at the search's edge joined tiles that
    no loop checked, and too few loops closed for the confirmed-pairs check (4 of a direction),
    so they were used: 13.99 px mean error. The strong pairs (NCC >= 0.8) corrected at most
    12.5 px; a weak bridge near the edge of its search that corrects more than any of them
    (by 4 px) goes to the stage model (5.42 px)."""
    from scopefx.fusion._stagemodel import _implausible_bridges

    step, size = 90.0, 100.0
    where = {k: (k // 3, k % 3) for k in range(9)}
    table = _table(np.array([(r * step, c * step) for r, c in where.values()]))
    shapes = np.full((9, 2), size)
    ij = np.array([(k, k + 1) for k in range(9) if k % 3 < 2]
                  + [(k, k + 3) for k in range(6)])  # fmt: skip
    lo = np.array([[max(where[i][0], where[j][0]) * step, max(where[i][1], where[j][1]) * step]
                   for i, j in ij])  # fmt: skip
    hi = np.array([[min(where[i][0], where[j][0]) * step + size,
                    min(where[i][1], where[j][1]) * step + size] for i, j in ij])  # fmt: skip
    measured = {  # (i, j): (shift, NCC), all used; the rest unused (no match)
        (0, 1): ((9.05, -5.18), 0.845), (1, 4): ((-8.69, 8.95), 0.994),
        (4, 5): ((5.02, -8.17), 0.877), (4, 7): ((2.44, -0.37), 0.997),
        (0, 3): ((-27.0, -1.62), 0.289), (1, 2): ((-1.3, -25.75), 0.379),
        (6, 7): ((-4.0, 6.0), 0.35),  # weak too, but within what the strong pairs correct
    }  # fmt: skip
    shifts = np.full((len(ij), 2), np.nan)
    quality = np.zeros(len(ij))
    used = np.zeros(len(ij), bool)
    for k, (i, j) in enumerate(ij.tolist()):
        if (i, j) in measured:
            shifts[k], quality[k], used[k] = measured[i, j][0], measured[i, j][1], True
    side = np.ones(len(ij), bool)
    reach = np.full(len(ij), 29.0)  # the search's extent either way
    # each pair's best NCC within each radius of the stage (Measured.near), as measured: both
    # far matches had a rival about as good at a shift the strong pairs make plausible
    near: list[np.ndarray | None] = [None for _ in ij]
    at = {tuple(map(int, p)): k for k, p in enumerate(ij)}
    near[at[0, 3]] = _near_profile([((4.2, -3.8), 0.292), ((1.2, 5.5), 0.26)])
    near[at[1, 2]] = _near_profile([((-1.8, -14.8), 0.364), ((14.2, -16.4), 0.29)])
    spread = np.full(len(ij), 0.2)  # each match's covariance spread over its common part
    args = (table, shapes, ij, shifts, used, side, lo, hi, quality, reach, near, spread)
    assert sorted(tuple(map(int, ij[k])) for k in _implausible_bridges(*args)) == [(0, 3), (1, 2)]
    # a weak pair that corrects more than the strong ones (by over 4 px) but lies well inside
    # its search is kept (3x3 cuts of the Leica frame: a true weak pair 15 px off in a search
    # of 28 px, where the strong pairs corrected up to 10 px), whatever its rivals
    shifts[at[6, 7]] = (8.0, -16.0)
    near[at[6, 7]] = _near_profile([((1.0, 1.0), 0.35)])
    assert sorted(tuple(map(int, ij[k])) for k in _implausible_bridges(*args)) == [(0, 3), (1, 2)]
    # a far weak match near the edge of its search whose overlap offers no rival about as good
    # at a plausible shift is kept: a true match of a tile the stage put far off
    shifts[at[6, 7]] = (2.0, -26.0)
    near[at[6, 7]] = _near_profile([((1.0, 1.0), 0.2), ((3.0, 24.0), 0.34)])
    assert sorted(tuple(map(int, ij[k])) for k in _implausible_bridges(*args)) == [(0, 3), (1, 2)]
    # ... also where one slice of its common part holds most of its covariance: in a small scan
    # that is as often a true match of one or two cells as a speck that moved (review 50)
    spread[at[6, 7]] = 0.6
    assert sorted(tuple(map(int, ij[k])) for k in _implausible_bridges(*args)) == [(0, 3), (1, 2)]
    # ... and dropped once a shift within what the strong pairs correct matches about as well
    spread[at[6, 7]] = 0.2
    near[at[6, 7]] = _near_profile([((1.0, 1.0), 0.3)])
    assert sorted(tuple(map(int, ij[k])) for k in _implausible_bridges(*args)) == [
        (0, 3), (1, 2), (6, 7)]  # fmt: skip


def test_a_bridge_along_a_specimens_edge_is_checked_against_the_stage_below_ncc_08() -> None:
    """A sparse specimen's scan (``bench/register_sparse.py --sources bf_sephace_set1 --seeds
    1 --allow-partial``: the bright-field frame of ``../shared/data`` set in a flat surround,
    5x5 tiles of 384 px): the specimen's straight edge crossed an overlap of a corner tile,
    and that pair's NCC was a crest along the edge, 0.69 at its best 47 px along it, where the
    confidence bound leans. It joined the tile alone (its true pair lost to it as an outlier)
    and placed it 45 px off, where the confirmed pairs of its direction corrected a few px.
    Only bridges under NCC 0.5 were checked against the stage; every bridge that does not
    vouch for itself (under 0.8) now is, and one that does stays."""
    from scopefx.fusion._stagemodel import _implausible_bridges

    step, size, rows, cols = 90.0, 100.0, 3, 4
    where = {k: (k // cols, k % cols) for k in range(rows * cols)}
    table = _table(np.array([(r * step, c * step) for r, c in where.values()]))
    shapes = np.full((rows * cols, 2), size)
    ij = np.array([(k, k + 1) for k in range(rows * cols) if k % cols < cols - 1]
                  + [(k, k + cols) for k in range(rows * cols - cols)])  # fmt: skip
    lo = np.array([[max(where[i][0], where[j][0]) * step, max(where[i][1], where[j][1]) * step]
                   for i, j in ij])  # fmt: skip
    hi = np.array([[min(where[i][0], where[j][0]) * step + size,
                    min(where[i][1], where[j][1]) * step + size] for i, j in ij])  # fmt: skip
    rng = np.random.default_rng(7)
    block = {(i, j) for i, j in ij.tolist() if where[i][1] < 3 and where[j][1] < 3}
    shifts = np.full((len(ij), 2), np.nan)
    quality = np.zeros(len(ij))
    used = np.zeros(len(ij), bool)
    at = {tuple(map(int, p)): k for k, p in enumerate(ij)}
    for pair in block:  # the 3x3 block of columns 0-2: sharp pairs in loops, a few px off
        shifts[at[pair]], quality[at[pair]], used[at[pair]] = rng.uniform(-3, 3, 2), 0.95, True
    bridge = at[2, 3]  # tile 3's one usable pair: a crest along an edge, 0.69 at 40 px
    shifts[bridge], quality[bridge], used[bridge] = (1.0, -40.0), 0.69, True
    near: list[np.ndarray | None] = [None for _ in ij]
    near[bridge] = _near_profile([((0.5, 2.0), 0.66), ((1.0, -20.0), 0.67)])  # the crest
    reach = np.full(len(ij), 45.0)
    support = np.full(len(ij), 0.2)  # no one slice of a common part holds the match
    args = (table, shapes, ij, shifts, used, np.ones(len(ij), bool), lo, hi, quality, reach,
            near, support)  # fmt: skip
    assert [tuple(map(int, ij[k])) for k in _implausible_bridges(*args)] == [(2, 3)]
    quality[bridge] = 0.85  # a match that vouches for itself is not checked
    assert not len(_implausible_bridges(*args))
    quality[bridge], near[bridge] = 0.69, _near_profile([((0.5, 2.0), 0.3)])  # no rival
    assert not len(_implausible_bridges(*args))


def test_a_match_under_ncc_08_records_its_neighbourhood() -> None:
    """What the bridge check needs (``near``, ``concentration``) is recorded for every match
    that does not vouch for itself (NCC under 0.8), not only for those under 0.5."""
    from scopefx.fusion._correlate import measure

    rng = np.random.default_rng(3)
    content = ndimage.gaussian_filter(rng.normal(size=(96, 160)), 2.0)
    for noise, recorded in ((0.02, False), (0.5, True)):
        a = content[:, :60] + noise * rng.normal(size=(96, 60))
        b = content[:, :60] + noise * rng.normal(size=(96, 60))
        r = measure(a, b, 12.0, 6.0, (1.0, 1.0))
        assert (r.near is not None) == recorded and (0.5 <= r.quality < 0.8) == recorded, r.quality


def _near_profile(points: list[tuple[tuple[float, float], float]]) -> np.ndarray:
    """``Measured.near`` of an NCC surface whose only values are ``points`` (shift, NCC)."""
    top = np.full(64, -np.inf)
    for shift, ncc in points:
        k = int(np.ceil(np.hypot(*shift)))
        top[k] = max(top[k], ncc)
    top = np.maximum.accumulate(top)
    rises = np.flatnonzero(np.isfinite(top) & (top > np.concatenate([[-np.inf], top[:-1]])))
    return np.stack([rises, top[rises]]).astype(np.float32)


def test_near_profile_is_the_best_ncc_within_each_radius_apart_from_the_match() -> None:
    """The best NCC within each radius of no shift, of the searched shifts nearer to no shift
    than to the match (its own flank is no rival), kept where it rises."""
    from scopefx.fusion._correlate import _near, near_ncc

    ncc = np.full((9, 9), 0.1)
    r = np.array([4, 4])  # index of no shift
    ncc[4, 6], ncc[1, 4], ncc[8, 8] = 0.5, 0.3, 0.9  # at 2 px, at 3 px, the match (corner)
    ncc[7, 7] = 0.85  # the match's flank, nearer to it than to no shift
    ok = np.ones(ncc.shape, bool)
    ok[1, 4] = False  # not searched (too thin a common part)
    near = _near(ncc, ok, np.array([8, 8]), r)
    assert near.dtype == np.float32 and near.shape == (2, 2)  # rises at radius 0 and 2
    assert [near_ncc(near, k) for k in (0, 1, 1.9, 2, 10)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.5, 0.5]
    )
    ok[:] = False
    assert near_ncc(_near(ncc, ok, np.array([8, 8]), r), 10) == -1.0
    assert near_ncc(None, 10) == -1.0


def test_concentration_tells_one_feature_from_content_matching_throughout() -> None:
    """The share of a match's covariance held by the largest of 8 slices of its common part:
    about 1/8 for content matching throughout, most of it for one speck on noise."""
    from scopefx.fusion._correlate import _concentration

    rng = np.random.default_rng(0)
    content = ndimage.gaussian_filter(rng.normal(size=(40, 200)), 2)
    a = content + 0.3 * rng.normal(size=content.shape)
    b = content + 0.3 * rng.normal(size=content.shape)
    assert _concentration(a, b, np.zeros(2, int), 2) < 0.3
    yy, xx = np.mgrid[:40, :200]
    speck = 5 * np.exp(-((yy - 20) ** 2 + (xx - 60) ** 2) / 18.0)
    a, b = rng.normal(size=(40, 200)) + speck, rng.normal(size=(40, 200)) + speck
    a, b = ndimage.gaussian_filter(a, 2), ndimage.gaussian_filter(b, 2)
    assert _concentration(a, b, np.zeros(2, int), 2) > 0.6


def _far_tile(rows: int, off_px: float, noise: float, seed: int, spread_from: int):
    """``rows`` x 3 scan whose tile 0 the stage put ``off_px`` px off along x; its overlap below
    holds no content and tile 0 has noise of ``noise`` times tile ``spread_from``'s spread.
    Returns each tile's position error after registration, and the registration."""
    rng = np.random.default_rng(seed)
    grid = np.array([(r, c) for r in range(rows) for c in range(3)], float)
    true = MARGIN + 30 + grid * STEP
    stage = true + rng.uniform(-2, 2, true.shape)
    stage[0] = true[0].copy()
    stage[0, 1] -= off_px
    image = _truth(560).astype(np.float32).copy()
    y0, y1 = int(true[3, 0]) - 5, int(true[0, 0]) + TILE + 5  # the overlap below tile 0
    image[y0:y1, : int(true[0, 1]) + TILE + 30] = float(image.mean())
    tiles = [_cut(image, p, (TILE, TILE)) for p in true]
    spread = float(np.std(tiles[spread_from]))
    tiles[0] = tiles[0] + rng.normal(0, noise * spread, tiles[0].shape).astype(np.float32)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(TILE, TILE)] * len(true))
    return np.linalg.norm(_position_error(reg.table, true), axis=1), reg


def test_a_tile_far_off_keeps_its_weak_match_against_the_confirmed_pairs() -> None:
    """A 3x3 scan: the stage put tile 0 18 px off along x, its overlap below holds no content
    and its tile is noisy (match to the right: NCC about 0.4). Enough loops closed for the
    confirmed-pairs check (4 of the direction, all within 2 px), whose correction range the
    true match lay far outside: it went to the stage model, tile 0 18 px off (found by a
    review). Dropped now only where the match is no evidence against the stage (a rival about
    as good at a plausible shift, or one feature making it); this one is neither."""
    error, reg = _far_tile(3, 18, 6, seed=1, spread_from=4)
    assert error[0] < 2.0, (error, [(p.i, p.j, p.status, p.quality) for p in reg.pairs])


def test_a_tile_the_stage_put_far_off_keeps_its_true_weak_match() -> None:
    """A 2x3 scan: the stage put tile 0 20 px off along x, its overlap below holds no content
    and the one to its right is noisy (NCC about 0.4). That true weak match lay in the outer
    quarter of the search and corrected far more than the strong pairs, and the edge check
    dropped it: tile 0 went to the stage model, 16-18 px off (found by a review). A far weak
    match is now dropped only where it is no evidence against the stage; this one is not."""
    error, reg = _far_tile(2, 20, 5, seed=0, spread_from=-1)
    assert error[0] < 2.0, (error, [(p.i, p.j, p.status, p.quality) for p in reg.pairs])


def test_a_far_weak_match_made_by_one_speck_is_dropped() -> None:
    """A 3x3 scan whose tile 0 and its overlaps hold only background and noise, but for a
    speck that moved 16 px between the exposures of tiles 0 and 1 (debris, a cell): it makes
    a weak match (NCC about 0.4) 16 px off, which no loop confirms and whose overlap offers no
    rival near the stage (only noise there). One slice of its common part holds most of its
    covariance; the confirmed-pairs check drops it and tile 0 stays near its stage position
    (it was placed 14.5 px off; found by a review)."""
    rng = np.random.default_rng(1)
    grid = np.array([(r, c) for r in range(3) for c in range(3)], float)
    true = MARGIN + 30 + grid * STEP
    stage = true + rng.uniform(-2, 2, true.shape)
    image = _truth(560).astype(np.float32).copy()
    image[: int(true[0, 0]) + TILE + 5, : int(true[0, 1]) + TILE + 5] = float(image.mean())
    tiles = [_cut(image, p, (TILE, TILE)) for p in true]
    noise = 0.15 * float(np.std(tiles[4]))
    tiles = [t + rng.normal(0, noise, t.shape).astype(np.float32) for t in tiles]
    yy, xx = np.mgrid[:TILE, :TILE]
    at = np.array([true[0, 0] + 80, true[1, 1] + 24])  # in the overlap of tiles 0 and 1
    for k, centre in ((0, at), (1, at + np.array([0, 16]))):
        local = centre - true[k]
        speck = np.exp(-((yy - local[0]) ** 2 + (xx - local[1]) ** 2) / (2 * 3.0**2))
        tiles[k] += (16 * noise * speck).astype(np.float32)
    reg = register(_table(stage), read=_memory_reader(tiles), shapes=[(TILE, TILE)] * 9)
    error = np.linalg.norm(_position_error(reg.table, true), axis=1)
    assert error[0] < 3.0, (error, [(p.i, p.j, p.status, p.quality) for p in reg.pairs])


def test_only_a_clear_match_lets_the_refinement_land_far_from_the_integer_peak(
    monkeypatch,
) -> None:
    """A refinement that converges over 1.5 px from the search's integer peak is kept for a
    match of NCC >= 0.5 (the search's one-sided smoothing put a Leica pair's peak 1.65 px off,
    see the test above) and not for a weak one, whose unsmoothed NCC is mostly noise (a pair of
    NCC 0.33 in a 3x3 cut of the Leica frame: 2.5 px off, 1.6 with the phase estimate)."""
    from scopefx.fusion import _correlate

    landing = np.array([0.0, 1.7])
    monkeypatch.setattr(_correlate, "_gauss_newton", lambda a, b, start, degree: landing)
    phase = np.array([0.0, 0.7])
    monkeypatch.setattr(_correlate, "_phase_start", lambda a, b, peak, *rest: peak + phase)
    crop = np.zeros((8, 8))
    peak, score = np.zeros(2, int), np.zeros((3, 3))
    kept, settled = _correlate._refined(crop, crop, peak, 2, score, peak, far=True)
    assert settled and np.allclose(kept, landing)
    start, settled = _correlate._refined(crop, crop, peak, 2, score, peak, far=False)
    assert not settled and np.allclose(start, [0.0, 0.7])
    near = np.array([0.0, 1.2])
    monkeypatch.setattr(_correlate, "_gauss_newton", lambda a, b, start, degree: near)
    assert np.allclose(_correlate._refined(crop, crop, peak, 2, score, peak, far=False)[0], near)


@pytest.mark.parametrize(("name", "fraction"), [("coins", 0.75), ("coins", 0.5), ("coins", 0.4)])
def test_a_refusal_counts_the_pairs_its_report_shows(name: str, fraction: float) -> None:
    """The usable share is judged on the pairs the solve kept (loop-confirmed pairs count,
    outliers do not), the statuses the report shows: the refusal's "only N of M" and the
    registration it carries agree (a noisy, vignetted 3x3 coins scan at 3 % overlap: 6 of 12
    pairs kept; the first pass alone had 5, and the refusal said 5 while its report said 6).

    Nor does a weak match that no loop confirms where the layout has loops: of the 6, pair
    5-8 (NCC 0.45) is one, 16 px off, and the scan registered at 50 % with tile 8 placed 38
    px off (14.3 px mean, the stage 12.1). It is now refused at 50 % and registers at 40 %."""
    from scopefx.fusion._qc import registration_report, report_summary

    m = samples.make_mosaic(name, grid=(3, 3), tile_px=192, overlap=0.03, jitter_px=15.0,
                            subpixel=True, vignetting=0.5, photons=30.0, read_noise=2.0,
                            seed=1)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(192 * 0.97)
    grid = np.array([(r, c) for r in range(3) for c in range(3)], dtype=float) * step
    stage = grid + (true - grid).mean(axis=0)
    params = RegistrationParams(min_usable_fraction=fraction)
    args = (_table(stage),)
    kwargs = {"read": _memory_reader(list(m.tiles)), "shapes": [(192, 192)] * 9}
    if fraction >= 0.5:
        with pytest.raises(RegistrationError, match=r"only (\d+) of 12") as info:
            register(*args, params=params, **kwargs)
        said = int(re.search(r"only (\d+) of 12", str(info.value)).group(1))
        reg = info.value.registration
        assert sum(p.used for p in reg.pairs if p.status != "corner") == 6
        assert said == 5 and "1 of the used is a weak match (NCC under 0.8)" in str(info.value)
        report = registration_report(reg, refused=str(info.value), **kwargs)
        assert report["summary"]["pairs_unconfirmed_weak"] == 1
        assert report_summary(report).startswith(
            "registration refused: 5 of 12 side pairs gave a usable match, 1 weak used one "
            "that no loop confirms not counted"
        )
    else:
        reg = register(*args, params=params, **kwargs)
        assert sum(p.used for p in reg.pairs if p.status != "corner") == 6
        weak = [(p.i, p.j) for k, p in enumerate(reg.pairs)
                if k in reg.unchecked_pairs() and p.quality < 0.8]  # fmt: skip
        assert weak == [(5, 8)]


def _comb(rows: int, cols: int) -> np.ndarray:
    """The side pairs of a rows x cols grid (row-major tiles): every horizontal pair, and the
    vertical pairs of the first column and of every third column after it: rows that are long
    chains, with a few loops between them."""
    ij = [(r * cols + c, r * cols + c + 1) for r in range(rows) for c in range(cols - 1)]
    ij += [(r * cols + c, (r + 1) * cols + c) for r in range(rows - 1)
           for c in range(0, cols, 3)]  # fmt: skip
    return np.array(ij)


def test_a_chain_of_weak_pairs_is_held_to_the_stage() -> None:
    """Rows of 12 tiles joined by weak pairs (each 2 px off, sd per axis), with a few loops:
    solved by the pairs alone the errors add along each row (a random walk, several px at its
    end) where each tile's stage error is about 1.7 px; held to the stage as the loops and the
    stage's scatter say, the tiles come out nearer the truth than either."""
    from scopefx.fusion._lsq import _solve
    from scopefx.fusion._settle import _held_to_stage

    rows = cols = 12
    n = rows * cols
    ij = _comb(rows, cols)
    rng = np.random.default_rng(3)
    error = rng.uniform(-3, 3, (n, 2))  # each tile's stage error: the true correction
    shifts = error[ij[:, 1]] - error[ij[:, 0]] + rng.normal(0, 2.0, (len(ij), 2))
    used, side = np.ones(len(ij), bool), np.ones(len(ij), bool)
    weight = np.full((len(ij), 2), 0.3)
    steps = {k: np.zeros(2) for k in range(len(ij))}
    alone = _solve(n, ij, shifts, weight, 1e-4)
    held = _held_to_stage(n, ij, shifts, used, side, weight, alone, steps, 100.0, 1e-4)
    assert held is not None
    c, target = held
    assert np.all(target == 0)  # the stage predicts the pairs better than a model of 100 px

    def err(x: np.ndarray) -> float:
        e = x - error
        return float(np.linalg.norm(e - e.mean(axis=0), axis=1).mean())

    assert err(c) < 0.6 * err(alone)
    assert err(c) < 0.8 * err(np.zeros_like(error))  # the stage itself


def test_a_systematic_step_is_followed_and_strong_pairs_keep_their_place() -> None:
    """The stage steps 3 px short between columns (a scale error) and each tile errs by up to
    0.5 px more; the pairs are sub-pixel matches. The model (3 px per column) predicts the
    pairs better than the stage, so the tiles are held to it, and the strong pairs outweigh
    the prior: the result is the pairs' own solve within 0.05 px (held to the stage itself,
    the rows would bend back over 30 px)."""
    from scopefx.fusion._lsq import _solve
    from scopefx.fusion._settle import _held_to_stage

    rows = cols = 10
    n = rows * cols
    ij = _comb(rows, cols)
    rng = np.random.default_rng(4)
    column = np.arange(n) % cols
    error = np.stack([np.zeros(n), 3.0 * column], axis=1) + rng.uniform(-0.5, 0.5, (n, 2))
    shifts = error[ij[:, 1]] - error[ij[:, 0]] + rng.normal(0, 0.05, (len(ij), 2))
    used, side = np.ones(len(ij), bool), np.ones(len(ij), bool)
    weight = np.full((len(ij), 2), 2.5)
    horizontal = (ij[:, 1] - ij[:, 0]) == 1
    steps = {k: np.array([0.0, 3.0 if horizontal[k] else 0.0]) for k in range(len(ij))}
    miss = float(np.median(np.linalg.norm(shifts - np.array(list(steps.values())), axis=1)))
    alone = _solve(n, ij, shifts, weight, 1e-4)
    held = _held_to_stage(n, ij, shifts, used, side, weight, alone, steps, miss, 1e-4)
    assert held is not None
    c, target = held
    assert np.ptp(target[:, 1]) > 20  # the model's layout, not the stage's
    e, a = c - c.mean(axis=0), alone - alone.mean(axis=0)
    assert np.abs(e - a).max() < 0.05


def test_without_loops_the_pairs_are_not_judged_and_not_held() -> None:
    """A strip of tiles (no loop): how far its pairs err cannot be told, so nothing is held
    (the solve and the stage model's placement stand as they were)."""
    from scopefx.fusion._settle import _held_to_stage

    n = 6
    ij = np.array([(k, k + 1) for k in range(n - 1)])
    shifts = np.random.default_rng(0).normal(0, 2.0, (n - 1, 2))
    ones = np.ones(n - 1, bool)
    steps = {k: np.zeros(2) for k in range(n - 1)}
    weight = np.full((n - 1, 2), 0.3)
    plain = np.zeros((n, 2))
    assert _held_to_stage(n, ij, shifts, ones, ones, weight, plain, steps, 1.0, 1e-4) is None
