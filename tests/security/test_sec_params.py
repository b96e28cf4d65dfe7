"""Parameters as a caller's JSON brings them: every value of the wrong type or size is a
ConfigError naming its field (not a TypeError or OverflowError, which a client takes for a
transient failure and sends again), and values the checks accept cannot make a fusion write
its fill value over pixels that tiles cover. What scopefx writes back as metadata is strict
JSON (a NaN fill is written as Zarr's "NaN")."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scopefx import FocusParams, FusionParams
from scopefx.errors import ConfigError
from scopefx.io import TileTable
from scopefx.remote._failures import is_transient
from scopefx.samples._mosaic import make_mosaic, write_mosaic

HUGE = 10**400  # a JSON integer no float holds


def _short(value: object) -> str:
    return repr(value)[:12]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("modality", ["em"]),
        ("modality", {"em": 1}),
        ("min_sigma_px", HUGE),
        ("max_sigma_px", HUGE),
        ("threshold", HUGE),
        ("threshold_k", HUGE),
        ("scale_weight", HUGE),
        ("band_ratio", HUGE),
        ("band_ratio", "1"),
    ],
    ids=_short,
)
def test_focus_parameters_of_any_json_value_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be") as caught:
        FocusParams.from_dict({field: value})
    assert not is_transient(caught.value)
    assert len(str(caught.value)) < 200  # the 400-digit number is not echoed whole


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("feather_px", "5"),
        ("feather_px", math.inf),
        ("feather_px", 1e30),
        ("feather_px", HUGE),
        ("focus_gamma", [2]),
        ("focus_gamma", math.inf),
        ("focus_gamma", 1000),
        ("max_output_gib", "1"),
        ("fill", "abc"),
        ("fill", math.inf),
        ("fill", HUGE),
    ],
    ids=_short,
)
def test_fusion_parameters_of_any_json_value_are_refused_by_name(field, value):
    with pytest.raises(ConfigError, match=f"^{field} must be") as caught:
        FusionParams.from_dict({field: value})
    assert not is_transient(caught.value)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pixel_size_um", HUGE),
        ("pixel_size_z_um", HUGE),
        ("pixel_size_z_um", "2"),
        ("pixel_size_z_um", -1.0),
        ("rotation_deg", HUGE),
        ("rotation_deg", math.nan),
        ("rotation_deg", True),
        ("flatfield", "flat.tif,"),  # was read as FLAT, and summarised as 'from flat.tif,'
        ("flatfield", ",dark.tif"),
        ("preview", "mosaic.jpg"),  # a PNG was written under that name
        ("preview", "mosaic"),
    ],
    ids=_short,
)
def test_fuse_options_of_any_json_value_are_refused_by_name(field, value):
    """A 400-digit pixel size or rotation raised OverflowError from math.isfinite, not an
    error naming the field."""
    from scopefx.fusion import FuseOptions

    with pytest.raises(ConfigError, match=f"^{field} must be") as caught:
        FuseOptions.from_dict({field: value})
    assert not is_transient(caught.value)
    assert len(str(caught.value)) < 200


def _fused(table, **params):
    from scopefx.fusion import fuse_lazy

    return fuse_lazy(table, params=FusionParams(chunk_px=64, **params)).compute()


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """2 x 2 mosaics that cover every pixel of their output, of uint16 tiles (none 0) and of
    float32 tiles."""
    out = {}
    for dtype in ("uint16", "float32"):
        folder = tmp_path_factory.mktemp(dtype)
        mosaic = make_mosaic(grid=(2, 2), tile_px=64, overlap=0.2, dtype=dtype)
        write_mosaic(folder, mosaic)
        assert all(t.min() > 0 for t in mosaic.tiles)
        out[dtype] = ([str(folder / f"tile_{i:04d}.tif") for i in range(4)], mosaic.positions_xy)
    return out


@pytest.mark.parametrize("gamma", [16, 64])
def test_the_widest_feather_and_sharpest_focus_blend_leave_no_covered_pixel_empty(tiles, gamma):
    """feather_px 1e30 filled the whole mosaic with the fill value, and a focus_gamma of 16
    (or 1000) left the fill where only the less sharp tiles reach (their weights underflowed
    float32: 9,129 of 13,225 pixels), and the fusion reported success. Within the bounds now
    accepted every covered pixel is a tile's value."""
    refs, positions = tiles["uint16"]
    fused = _fused(TileTable.from_positions(refs, positions), feather_px=65536)
    assert np.count_nonzero(fused == 0) == 0
    scored = TileTable.from_positions(refs, positions, focus=[1.0, 1e-6, 1e-6, 1e-6])
    fused = _fused(scored, blend="focus", focus_gamma=gamma)
    assert np.count_nonzero(fused == 0) == 0


def _strict(text: str):
    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_a_nan_fill_is_written_as_strict_json(tiles, tmp_path, ngff):
    """`--fill nan` (the usual 'no data' of float mosaics) wrote a bare NaN token into the
    mosaic's root metadata, which JavaScript viewers and the NGFF validator cannot parse."""
    from scopefx import fuse
    from scopefx.fusion import FuseOptions

    refs, positions = tiles["float32"]
    out = tmp_path / "m.ome.zarr"
    fuse(TileTable.from_positions(refs, positions), out,
         params=FusionParams(fill=math.nan), options=FuseOptions(ngff=ngff))  # fmt: skip
    names = {".zattrs", "zarr.json", ".zarray", ".zgroup"}
    found = [p for p in out.rglob("*") if p.name in names]
    assert found
    for path in found:
        _strict(path.read_text())  # every metadata file parses as strict JSON
    root = out / (".zattrs" if ngff == "0.4" else "zarr.json")
    assert '"fill": "NaN"' in root.read_text()
