"""Bounded focus tasks: a stack is stopped between its pages by the task clock and by the
pages one reference may score; focus parameters that overflowed or took memory without bound
are refused; a reference too long to be a file name is a clear per-item error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import scopefx.errors
import scopefx.io
from scopefx.focus import FocusParams, score_one
from scopefx.remote import functions

STACK_PAGES = 64


@pytest.fixture
def stack(site) -> str:
    """A 64-page stack of 32 x 32 noise in the data root; its reference."""
    pixels = np.random.default_rng(3).integers(0, 4000, (STACK_PAGES, 32, 32), dtype=np.uint16)
    tifffile.imwrite(site.data / "stack.tif", pixels)
    return "stack.tif"


def _scored(item: dict) -> list[int]:
    return [p["page"] for p in item["pages"] if p["status"] == "ok"]


def test_the_task_clock_stops_a_stack_between_its_pages(stack, monkeypatch):
    """One reference naming a long stack ran every page past SCOPEFX_TASK_TIMEOUT_S: the
    clock was checked only between references. Now the pages scored come back, and one page
    record (the first not scored) says the rest were not, naming the setting."""
    monkeypatch.setenv("SCOPEFX_TASK_TIMEOUT_S", "1e-9")  # over once the first page is scored
    item, after = functions.score_focus([stack, "run1/section_0.tif"])
    assert _scored(item) == [0]
    rest = item["pages"][-1]
    assert (rest["page"], rest["status"], rest["ref"]) == (1, "limit", stack)
    assert "SCOPEFX_TASK_TIMEOUT_S" in rest["error"]
    assert f"pages 1 to {STACK_PAGES - 1} of the {STACK_PAGES}" in rest["error"]
    assert "not scored" in rest["error"]
    assert (item["status"], item["error"]) == ("limit", rest["error"])
    assert after["status"] == "limit" and "SCOPEFX_TASK_TIMEOUT_S" in after["error"]
    monkeypatch.delenv("SCOPEFX_TASK_TIMEOUT_S")
    (whole,) = functions.score_focus([stack])
    assert whole["status"] == "ok" and _scored(whole) == list(range(STACK_PAGES))
    assert whole["pages"][0]["features"] == item["pages"][0]["features"]
    timings = {"read_seconds", "score_seconds"}
    as_before = [  # what score_one records, page by page, bar the timings
        {"ref": stack, **{k: v for k, v in r.to_dict().items() if k not in timings}}
        for r in score_one(whole["path"], FocusParams())
    ]
    assert [{k: v for k, v in p.items() if k not in timings} for p in whole["pages"]] == as_before


def test_pages_scored_per_reference_are_bounded(stack, site, monkeypatch):
    """SCOPEFX_MAX_PAGES bounds the pages one reference scores (and so its result: about
    600 bytes a page); the item says which were not scored, how to split the stack, and the
    next reference is scored as usual."""
    monkeypatch.setenv("SCOPEFX_MAX_PAGES", "16")
    item, after = functions.score_focus([stack, "run1/section_0.tif"])
    assert _scored(item) == list(range(16))
    rest = item["pages"][-1]
    assert (rest["page"], rest["status"]) == (16, "limit")
    assert "SCOPEFX_MAX_PAGES" in rest["error"] and "16 pages" in rest["error"]
    assert f"pages 16 to {STACK_PAGES - 1} of the {STACK_PAGES}" in rest["error"]
    assert "split" in rest["error"]
    assert item["status"] == "limit" and after["status"] == "ok"
    bounded = len(json.dumps(item))
    monkeypatch.setenv("SCOPEFX_MAX_PAGES", str(STACK_PAGES))
    (whole,) = functions.score_focus([stack])
    assert whole["status"] == "ok" and len(whole["pages"]) == STACK_PAGES
    assert bounded < len(json.dumps(whole)) * 17 / STACK_PAGES + 1024
    assert scopefx.io.EndpointLimits().max_pages == 4096
    with pytest.raises(ValueError, match="SCOPEFX_MAX_PAGES"):
        scopefx.io.EndpointLimits.from_env({"SCOPEFX_MAX_PAGES": "0"})


@pytest.mark.parametrize(
    "params",
    [
        {"cell_px": 10**12},  # an OverflowError deep in the focus map
        {"cell_px": 2**31},
        {"cell_px": 10**6},  # a 10^12-byte mask for an image with transparent pixels
        {"min_sigma_px": 1e308, "max_sigma_px": 1.5e308},  # OverflowError in min_image_px
        {"max_sigma_px": 1e300},
    ],
    ids=["cell_1e12", "cell_2e31", "cell_1e6", "min_sigma_1e308", "max_sigma_1e300"],
)
def test_focus_parameters_that_overflow_are_refused_up_front(site, params):
    name = next(iter(params))
    with pytest.raises(scopefx.errors.ConfigError, match=rf"{name} must be .*got"):
        FocusParams(**params)
    with pytest.raises(scopefx.errors.ConfigError, match=name):
        functions.score_focus(["run1/section_0.tif"], params)


def test_the_largest_parameters_allowed_still_score_and_one_more_is_refused(site):
    with pytest.raises(scopefx.errors.ConfigError, match="cell_px must be <= 4096 px"):
        FocusParams(cell_px=4097)
    rgba = np.full((64, 64, 4), 255, np.uint8)
    rgba[..., :3] = np.random.default_rng(0).integers(0, 255, (64, 64, 3))
    rgba[:8, :, 3] = 0  # transparent rows: the focus map's padded mask
    tifffile.imwrite(site.data / "rgba.tif", rgba)
    params = FocusParams(cell_px=4096, max_sigma_px=4096.0).to_dict()
    (item,) = functions.score_focus(["rgba.tif"], params)
    assert item["status"] == "ok" and item["focus_map"] is not None


LONG = 5000


@pytest.mark.parametrize("kind", ["relative", "absolute", "nested", "array", "deep"])
def test_a_reference_too_long_for_a_file_name_is_a_clear_per_item_error(site, kind):
    """5000 characters gave a raw OSError (ENAMETOOLONG, status "error"), or a "missing"
    message that repeated all 5000 characters."""
    long = {
        "relative": "a" * LONG,
        "absolute": str(site.data / ("a" * LONG)),
        "nested": "run1/" + "b" * LONG + ".tif",
        "array": "run1::" + "c" * LONG,
        "deep": "run1/" + "d/" * (LONG // 2) + "x.tif",  # short names, too long a path
    }[kind]
    good, bad = functions.score_focus(["run1/section_0.tif", long])
    assert good["status"] == "ok"
    assert bad["status"] == "unsupported", bad["error"][:300]
    assert "too long" in bad["error"] and long[:40] in bad["error"]
    assert len(bad["error"]) < 600, bad["error"][:300]


def test_a_long_reference_read_directly_or_as_an_output_is_a_clear_error(site, monkeypatch):
    with pytest.raises(scopefx.errors.UnsupportedFormatError, match="too long"):
        functions.fuse_mosaic({"tiles": "mosaic/tiles.csv", "output": "o" * LONG + ".ome.zarr"})
    monkeypatch.delenv("SCOPEFX_DATA_ROOTS")  # unconfined: the reader's own check
    with pytest.raises(scopefx.errors.UnsupportedFormatError, match="too long"):
        scopefx.io.read_image(site.data / ("a" * LONG))
