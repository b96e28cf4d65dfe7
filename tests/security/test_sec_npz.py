"""``.npz`` inputs (review 37, findings 1 and 2): the flat field a job names and the plan a
fan-out task re-opens are read through the confined reader, each array held to its budget
from its header before it is inflated, and a saved plan's arrays checked against the plan.

Before: the flat field was read by name with ``np.load`` (a link swapped in after the check
read a file outside the roots and named its arrays, a FIFO blocked the worker, a 0.59 MB
member declaring 384 MiB peaked at 1.1 GiB under a 64 MiB budget), and ``plan.npz`` was
inflated whole (819 MiB) and its arrays used at any length."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from _sec_helpers import FLIP, run_measured

from scopefx.errors import AccessDeniedError, ConfigError, CorruptImageError
from scopefx.fusion import FlatField
from scopefx.io import DataRoots
from scopefx.remote import functions

BOMB_MIB = 512  # what a planted member declares; its file is under 1 MB
BUDGET = str(64 * 2**20)  # SCOPEFX_MAX_IMAGE_BYTES of the measured children


def _planted(path: Path, name: str, shape: tuple[int, ...], keep: dict | None = None) -> None:
    """An .npz holding ``keep`` and a deflated ``name`` of ones declaring ``shape`` float64,
    written row by row (as a caller can, in their own output root)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for key, value in (keep or {}).items():
            with z.open(f"{key}.npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value))
        with z.open(f"{name}.npy", "w", force_zip64=True) as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(f, header)
            row = np.ones(shape[-1] if len(shape) > 1 else 2**16).tobytes()
            for _ in range(int(np.prod(shape)) * 8 // len(row)):
                f.write(row)
    assert path.stat().st_size < 2**20


def _saved(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


def _job(**extra) -> dict:
    return {"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr", "params": {"chunk_px": 64},
            "workers": 1, **extra}  # fmt: skip


# ------------------------------------------------------------------------------ flat field


def test_a_flat_field_linked_out_of_the_roots_is_refused_without_naming_its_arrays(site):
    np.savez(site.outside / "bob.npz", bob_private_array_name=np.zeros(3))
    (site.out / "flat.npz").symlink_to(site.outside / "bob.npz")
    with pytest.raises(AccessDeniedError, match="outside the roots") as info:
        FlatField.load(site.out / "flat.npz")
    assert "bob_private" not in str(info.value)


def test_a_flat_field_swapped_for_a_link_after_its_check_is_never_read(site):
    """The reference is checked by name (as the remote job does) and then read, 1,000 times,
    while another process flips it between the caller's own flat field and a link to a file
    outside the roots: each read gives the caller's flat or is refused, and no error names
    the outside file's arrays (before: 4 of 60 fusions did)."""
    np.savez(site.outside / "bob.npz", bob_private_array_name=np.zeros(3))
    real = site.out / ".real.npz"
    FlatField(np.full((64, 64), 2.0)).save(real)
    name = site.out / "flat.npz"
    os.link(real, name)
    flipper = subprocess.Popen(
        [sys.executable, "-c", FLIP, str(name), str(real), str(site.outside / "bob.npz")]
    )
    roots = DataRoots.from_env()
    seen = {"real": 0, "denied": 0, "raced": 0}
    try:
        while not name.is_symlink():  # the flipper has started
            assert flipper.poll() is None
        for _ in range(1000):
            try:
                flat = FlatField.load(roots.resolve("flat.npz"))
            except AccessDeniedError as exc:
                assert "bob_private" not in str(exc)
                seen["denied"] += 1
                continue
            except (OSError, ConfigError) as exc:  # vanished, or changed while checked
                assert "bob_private" not in str(exc), f"read outside the roots after {seen}"
                seen["raced"] += 1
                continue
            assert flat.flat.shape == (64, 64) and np.all(flat.flat == 1)
            seen["real"] += 1
    finally:
        flipper.kill()
        flipper.wait()
    assert sum(seen.values()) == 1000 and seen["real"] and seen["denied"], seen


def test_a_fifo_named_as_the_flat_field_does_not_block(site):
    os.mkfifo(site.out / "flat.npz")
    code = (
        "from scopefx.remote import functions\n"
        f"functions.fuse_mosaic({_job(options={'flatfield': 'flat.npz'})!r})\n"
    )
    try:  # the timeout only guards the test run against a regression that hangs
        out = run_measured(code, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("fusing with a FIFO as the flat field blocked")
    assert out["error"] and out["error"][0] == "UnsupportedFormatError", out
    assert "FIFO" in out["error"][1], out


def test_a_deflate_bomb_flat_field_is_refused_before_inflating(site):
    """A 0.3 MB flat.npz whose member declares 8192 x 8192 float64 (512 MiB), under a 64 MiB
    image budget: refused from its header, the worker's peak under the declared size (before:
    it was inflated whole, 1.1 GiB at 384 MiB); a flat field within the budget still fuses."""
    side = int((BOMB_MIB * 2**20 / 8) ** 0.5)
    _planted(site.out / "bomb.npz", "flat", (side, side))
    FlatField(np.full((64, 64), 2.0)).save(site.out / "flat.npz")
    bomb, ok = _job(options={"flatfield": "bomb.npz"}), _job(output="ok.ome.zarr")
    ok["options"] = {"flatfield": "flat.npz"}
    code = (
        "from scopefx.remote import functions\n"
        "try:\n"
        f"    functions.fuse_mosaic({bomb!r})\n"
        "except Exception as exc:\n"
        "    result = [type(exc).__name__, str(exc)]\n"
        f"functions.fuse_mosaic({ok!r})\n"
    )
    out = run_measured(code, env={"SCOPEFX_MAX_IMAGE_BYTES": BUDGET})
    assert out["error"] is None, out  # the legitimate flat field fused
    assert out["result"] and out["result"][0] == "ResourceLimitError", out
    assert "bomb.npz" in out["result"][1] and "SCOPEFX_MAX_IMAGE_BYTES" in out["result"][1], out
    assert out["peak_rss_mib"] < BOMB_MIB * 0.8, out


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_a_flat_field_in_a_compression_without_bounded_decoding_is_refused(site, method):
    """zipfile inflates a bzip2 or LZMA member's reads whole (a 785-byte bz2 stream holds
    1 GiB), so only stored and deflated members are decoded."""
    with zipfile.ZipFile(site.out / "flat.npz", "w", method) as z, z.open("flat.npy", "w") as f:
        np.lib.format.write_array(f, np.ones((16, 16)))
    with pytest.raises(CorruptImageError, match=r"flat\.npz.*cannot be bounded"):
        FlatField.load(site.out / "flat.npz")


@pytest.mark.parametrize("extra", [1, -1])
def test_a_flat_field_member_whose_stored_size_disagrees_with_its_header_is_refused(site, extra):
    path = site.out / "flat.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, z.open("flat.npy", "w") as f:
        header = {"descr": "<f8", "fortran_order": False, "shape": (16, 16)}
        np.lib.format.write_array_header_1_0(f, header)
        f.write(np.ones(16 * 16 + extra).tobytes())
    with pytest.raises(CorruptImageError, match=r"flat\.npz.*'flat' declares 16x16"):
        FlatField.load(path)


# ------------------------------------------------------------------------------ saved plan


@pytest.mark.parametrize("task", ["fuse_region", "finish_mosaic"])
def test_a_planted_oversized_plan_member_is_refused_before_inflating(site, task):
    """plan.npz's ``weights`` replaced by a 0.3 MB member declaring 512 MiB: refused from its
    header under a 64 MiB budget (before: inflated whole, 819 MiB at 384 MiB, and used)."""
    planned = functions.plan_mosaic(_job(), regions=1)
    npz = site.out / "m.ome.zarr" / ".scopefx" / "plan.npz"
    keep = {k: v for k, v in _saved(npz).items() if k != "weights"}
    _planted(npz, "weights", (BOMB_MIB * 2**20 // 8,), keep)
    call = (
        f"functions.fuse_region({planned['plan']!r}, {planned['regions'][0]!r})"
        if task == "fuse_region"
        else f"functions.finish_mosaic({planned['plan']!r})"
    )
    out = run_measured(
        f"from scopefx.remote import functions\n{call}", env={"SCOPEFX_MAX_IMAGE_BYTES": BUDGET}
    )
    assert out["error"] and out["error"][0] == "ResourceLimitError", out
    assert "plan.npz" in out["error"][1] and "SCOPEFX_MAX_IMAGE_BYTES" in out["error"][1], out
    assert out["peak_rss_mib"] < BOMB_MIB * 0.8, out
    assert not list((site.out / "m.ome.zarr" / ".scopefx" / "done").rglob("*.*"))


def _edit(arrays: dict[str, np.ndarray], what: str) -> None:
    n = len(arrays["weights"])
    if what == "weights":  # one weight more than tiles
        arrays["weights"] = np.ones(n + 1)
    elif what == "focus":
        arrays["focus"] = np.full(n * 1000, np.nan)
    elif what == "chunk_ptr":  # one chunk short
        arrays["chunk_ptr"] = arrays["chunk_ptr"][:-1]
    elif what == "chunk_tiles":  # a tile that is not in the plan
        arrays["chunk_tiles"] = np.full_like(arrays["chunk_tiles"], n)
    elif what == "affines":  # one tile short
        arrays["affines"] = arrays["affines"][:-1]


@pytest.mark.parametrize("what", ["weights", "focus", "chunk_ptr", "chunk_tiles", "affines"])
def test_a_plan_array_that_does_not_fit_the_plan_is_refused(site, what):
    """A saved plan's arrays, edited to the wrong length, are refused naming the plan file
    (before: an extra weight or a longer focus list was used as it was, a tile outside the
    plan failed with a bare IndexError); the plan as saved, with a flat field, still fuses
    what a single call fuses."""
    FlatField(np.linspace(1, 2, 64 * 64).reshape(64, 64)).save(site.out / "flat.npz")
    job = _job(options={"flatfield": "flat.npz"})
    planned = functions.plan_mosaic(job, regions=2)
    npz = site.out / "m.ome.zarr" / ".scopefx" / "plan.npz"
    original = npz.read_bytes()
    arrays = _saved(npz)
    assert "flatfield_flat" in arrays
    _edit(arrays, what)
    np.savez(npz, **arrays)
    with pytest.raises(ConfigError, match=rf"plan\.npz.*'{what}'"):
        functions.fuse_region(planned["plan"], planned["regions"][0])
    with pytest.raises(ConfigError, match=rf"plan\.npz.*'{what}'"):
        functions.finish_mosaic(planned["plan"])
    npz.write_bytes(original)  # as planned: it fuses
    for region in planned["regions"]:
        functions.fuse_region(planned["plan"], region, fingerprint=planned["fingerprint"])
    functions.finish_mosaic(planned["plan"], fingerprint=planned["fingerprint"])
    fresh = functions.fuse_mosaic({**job, "output": "fresh.ome.zarr"})
    got = zarr.open_group(str(site.out / "m.ome.zarr"), mode="r")
    want = zarr.open_group(fresh["path"], mode="r")
    for level in sorted(want.array_keys()):
        np.testing.assert_array_equal(got[level][...], want[level][...], err_msg=level)
