"""Tests of scopefx.io reading and reference handling, on real files written to tmp_path."""

from __future__ import annotations

import os
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from scopefx.errors import (
    ConfigError,
    CorruptImageError,
    EmptyFileError,
    ImageNotFoundError,
    ScopefxError,
    UnsupportedFormatError,
)
from scopefx.io import IMAGE_SUFFIXES, find_images, read_image, read_metadata, split_ref


def _image(dtype: str, shape: tuple[int, ...] = (48, 64), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 1, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)


def _stack(n: int = 3, dtype: str = "uint16") -> np.ndarray:
    return np.stack([_image(dtype, seed=i) for i in range(n)])


def _touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_tiff_2d_roundtrip_keeps_dtype(tmp_path: Path, dtype: str) -> None:
    data = _image(dtype)
    tifffile.imwrite(tmp_path / "a.tif", data)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, data)


def test_tiff_accepts_str_and_tiff_extension(tmp_path: Path) -> None:
    data = _image("uint16")
    tifffile.imwrite(tmp_path / "A.TIFF", data)
    np.testing.assert_array_equal(read_image(str(tmp_path / "A.TIFF")), data)


def test_tiff_multipage_reads_stack_or_one_page(tmp_path: Path) -> None:
    data = _stack(3)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    np.testing.assert_array_equal(read_image(path), data)
    np.testing.assert_array_equal(read_image(path, page=2), data[2])
    np.testing.assert_array_equal(read_image(path, page=np.int64(0)), data[0])


def test_tiff_pages_written_one_by_one_form_a_stack(tmp_path: Path) -> None:
    data = _stack(4, "uint8")
    path = tmp_path / "appended.tif"
    for plane in data:
        tifffile.imwrite(path, plane, append=True, metadata=None)
    np.testing.assert_array_equal(read_image(path), data)
    np.testing.assert_array_equal(read_image(path, page=3), data[3])


def test_tiff_imagej_hyperstack_is_flattened_to_pages(tmp_path: Path) -> None:
    data = _image("uint16", (2, 3, 32, 40))
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZYX"})
    out = read_image(path)
    assert out.shape == (6, 32, 40)
    np.testing.assert_array_equal(out, data.reshape(6, 32, 40))
    np.testing.assert_array_equal(read_image(path, page=4), data[1, 1])


def test_tiff_rgb_keeps_colour(tmp_path: Path) -> None:
    data = _image("uint8", (32, 40, 3))
    tifffile.imwrite(tmp_path / "rgb.tif", data, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), data)


def test_tiff_with_a_thumbnail_first_reads_the_full_image(tmp_path: Path) -> None:
    """A reduced-resolution thumbnail (NewSubfileType 1) written before the image was read, and
    scored, in place of the image."""
    from scopefx.io import read_metadata

    image = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    path = tmp_path / "with_thumbnail.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(image[::8, ::8], subfiletype=1)
        tif.write(image)
    np.testing.assert_array_equal(read_image(path), image)
    np.testing.assert_array_equal(read_image(path, page=0), image)
    assert read_metadata(path).shape == (64, 80)


def test_bigtiff(tmp_path: Path) -> None:
    data = _stack(2)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, data, bigtiff=True, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
    np.testing.assert_array_equal(read_image(path), data)
    np.testing.assert_array_equal(read_image(path, page=1), data[1])


@pytest.mark.parametrize("compression", ["zlib", "lzw", "zstd"])
def test_compressed_tiff(tmp_path: Path, compression: str) -> None:
    data = _stack(2)
    path = tmp_path / f"{compression}.tif"
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
    np.testing.assert_array_equal(read_image(path), data)


@pytest.mark.parametrize("page", [3, -1])
def test_page_out_of_range(tmp_path: Path, page: int) -> None:
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, _stack(3), photometric="minisblack")
    with pytest.raises(ConfigError, match=r"page .* out of range .*stack\.tif.* 3 page"):
        read_image(path, page=page)


@pytest.mark.parametrize("page", ["1", 1.0, True])
def test_page_must_be_an_integer(tmp_path: Path, page: object) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _image("uint8"))
    with pytest.raises(ConfigError, match="page must be an integer"):
        read_image(tmp_path / "a.tif", page=page)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Pillow formats


@pytest.mark.parametrize(("name", "dtype"), [("a.png", "uint8"), ("b.png", "uint16")])
def test_png_roundtrip(tmp_path: Path, name: str, dtype: str) -> None:
    data = _image(dtype)
    iio.imwrite(tmp_path / name, data)
    out = read_image(tmp_path / name)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, data)


def test_png_rgb(tmp_path: Path) -> None:
    data = _image("uint8", (32, 40, 3))
    iio.imwrite(tmp_path / "rgb.png", data)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png"), data)


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_values_approximately(tmp_path: Path, suffix: str) -> None:
    yy, xx = np.mgrid[0:64, 0:80]
    data = (100 + 60 * np.sin(xx / 9.0) * np.cos(yy / 7.0)).astype(np.uint8)
    iio.imwrite(tmp_path / f"a{suffix}", data, quality=95)
    out = read_image(tmp_path / f"a{suffix}")
    assert out.shape == data.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - data).mean() < 2


def test_bmp(tmp_path: Path) -> None:
    data = _image("uint8")
    iio.imwrite(tmp_path / "a.bmp", data)
    np.testing.assert_array_equal(read_image(tmp_path / "a.bmp"), data)


def test_gif_single_and_animated(tmp_path: Path) -> None:
    frame = np.zeros((16, 20), np.uint8)
    frame[4:8, 5:10] = 255
    iio.imwrite(tmp_path / "one.gif", frame)
    iio.imwrite(tmp_path / "two.gif", np.stack([frame, frame[::-1]]))
    one = read_image(tmp_path / "one.gif")
    assert one.shape[:2] == (16, 20)
    assert one[5, 6].min() == 255 and one[0, 0].max() == 0
    two = read_image(tmp_path / "two.gif")
    assert two.shape[:3] == (2, 16, 20)
    np.testing.assert_array_equal(read_image(tmp_path / "two.gif", page=1), two[1])
    with pytest.raises(ConfigError, match=r"two\.gif"):
        read_image(tmp_path / "two.gif", page=2)


def test_single_image_accepts_page_zero_only(tmp_path: Path) -> None:
    data = _image("uint8")
    iio.imwrite(tmp_path / "a.png", data)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", page=0), data)
    with pytest.raises(ConfigError, match=r"a\.png"):
        read_image(tmp_path / "a.png", page=1)


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3), (20, 30, 2)])
def test_single_array_image_page_zero_is_the_image(tmp_path: Path, shape) -> None:
    """page=0 of a 2D or colour .npy / Zarr array gave its first row, not the image."""
    data = np.arange(int(np.prod(shape)), dtype=np.uint16).reshape(shape)
    np.save(tmp_path / "a.npy", data)
    store = zarr.open_array(tmp_path / "a.zarr", mode="w", shape=shape, dtype=data.dtype)
    store[...] = data
    for ref in (tmp_path / "a.npy", tmp_path / "a.zarr"):
        np.testing.assert_array_equal(read_image(ref, page=0), data)
        with pytest.raises(ConfigError, match=r"page 1 is out of range"):
            read_image(ref, page=1)


# --------------------------------------------------------------------------- NumPy


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_npy(tmp_path: Path, dtype: str) -> None:
    data = _image(dtype)
    np.save(tmp_path / "a.npy", data)
    out = read_image(tmp_path / "a.npy")
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, data)


def test_npy_stack_page(tmp_path: Path) -> None:
    data = _stack(3)
    np.save(tmp_path / "s.npy", data)
    out = read_image(tmp_path / "s.npy", page=1)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, data[1])


def test_npy_refuses_pickles_and_npz(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CorruptImageError, match=r"obj\.npy.*allow_pickle"):
        read_image(tmp_path / "obj.npy")
    with (tmp_path / "z.npy").open("wb") as fh:
        np.savez(fh, a=_image("uint8"))
    with pytest.raises(UnsupportedFormatError, match=r"z\.npy.*npz"):
        read_image(tmp_path / "z.npy")


# --------------------------------------------------------------------------- Zarr


def test_zarr_v3_nested_arrays(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=3)
    data = {"raw/0": _image("uint16", seed=1), "a/b/c": _image("float32", seed=2)}
    for name, values in data.items():
        root.create_array(name, data=values, chunks=(16, 16))
    assert (store / "zarr.json").is_file()
    for name, values in data.items():
        np.testing.assert_array_equal(read_image(f"{store}::{name}"), values)
    np.testing.assert_array_equal(read_image(f"{store}::/a/b/c/"), data["a/b/c"])


def test_zarr_root_array_and_pages(tmp_path: Path) -> None:
    data = _stack(3)
    for fmt in (2, 3):
        store = tmp_path / f"v{fmt}.zarr"
        arr = zarr.create_array(
            store=store, shape=data.shape, dtype=data.dtype, chunks=(1, 16, 16), zarr_format=fmt
        )
        arr[...] = data
        np.testing.assert_array_equal(read_image(store), data)
        np.testing.assert_array_equal(read_image(f"{store}::"), data)
        np.testing.assert_array_equal(read_image(store, page=2), data[2])


def test_zarr_group_and_missing_array(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.create_array("raw/0", data=_image("uint8"), chunks=(16, 16))
    with pytest.raises(UnsupportedFormatError, match=r"run\.zarr.*group.*run\.zarr::raw/0"):
        read_image(store)
    with pytest.raises(UnsupportedFormatError, match=r"'raw'.*group"):
        read_image(f"{store}::raw")
    with pytest.raises(ImageNotFoundError, match=r"raw/9.*run\.zarr.*raw/0"):
        read_image(f"{store}::raw/9")
    with pytest.raises(ImageNotFoundError, match=r"nope\.zarr"):
        read_image(f"{tmp_path / 'nope.zarr'}::raw/0")


def test_zarr_corrupt_chunk(tmp_path: Path) -> None:
    store = tmp_path / "run.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=3)
    root.create_array("raw/0", data=_image("uint16"), chunks=(16, 16))
    chunk = next(p for p in (store / "raw" / "0" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(CorruptImageError, match=r"run\.zarr::raw/0"):
        read_image(f"{store}::raw/0")


def test_directory_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(UnsupportedFormatError, match=r"empty\.zarr.*not a Zarr store"):
        read_image(tmp_path / "empty.zarr")
    with pytest.raises(UnsupportedFormatError, match="directory, not an image"):
        read_image(tmp_path)
    tifffile.imwrite(tmp_path / "a.tif", _image("uint8"))
    with pytest.raises(UnsupportedFormatError, match=r"a\.tif.*not a Zarr store directory"):
        read_image(f"{tmp_path / 'a.tif'}::raw/0")


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing_tile.tif"
    with pytest.raises(ImageNotFoundError, match=r"missing_tile\.tif.*does not exist") as info:
        read_image(path)
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.status == "missing"


@pytest.mark.parametrize("name", ["a.tif", "a.png", "a.jpg", "a.npy"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    _touch(tmp_path / name)
    with pytest.raises(EmptyFileError, match=rf"{re.escape(name)}.*0 bytes") as info:
        read_image(tmp_path / name)
    assert info.value.status == "empty"


def test_links_that_lead_nowhere_are_listed_and_said_to_lead_nowhere(tmp_path: Path) -> None:
    """Two links in a loop were dropped from a folder's listing without a record (a dangling
    link was listed); reading either said only 'does not exist'."""
    (tmp_path / "l1.tif").symlink_to(tmp_path / "l2.tif")
    (tmp_path / "l2.tif").symlink_to(tmp_path / "l1.tif")
    (tmp_path / "gone.tif").symlink_to(tmp_path / "nothing.tif")
    found = [Path(p).name for p in find_images(tmp_path)]
    assert found == ["gone.tif", "l1.tif", "l2.tif"]
    for name in found:
        with pytest.raises(ImageNotFoundError, match="symbolic link that leads nowhere") as info:
            read_image(tmp_path / name)
        assert info.value.status == "missing"


def test_a_fifo_is_not_a_file_being_written(tmp_path: Path) -> None:
    """A FIFO named like an image was reported empty ("may still be being written"), sending
    the user to wait for an acquisition that was never there; opening it would block."""
    os.mkfifo(tmp_path / "pipe.tif")
    for read in (read_image, read_metadata):
        with pytest.raises(UnsupportedFormatError, match=r"pipe\.tif' is a FIFO .*not a regular"):
            read(tmp_path / "pipe.tif")


@pytest.mark.parametrize("name", ["noise.tif", "noise.png", "noise.jpg", "noise.gif", "noise.npy"])
def test_random_bytes_behind_an_image_extension(tmp_path: Path, name: str) -> None:
    _touch(tmp_path / name, np.random.default_rng(3).bytes(2000))
    with pytest.raises(
        CorruptImageError, match=rf"cannot decode .*{re.escape(name)}.*extension"
    ) as info:
        read_image(tmp_path / name)
    assert isinstance(info.value, OSError)


def test_png_truncated_half_way(tmp_path: Path) -> None:
    iio.imwrite(tmp_path / "full.png", _image("uint8", (128, 128)))
    data = (tmp_path / "full.png").read_bytes()
    _touch(tmp_path / "half.png", data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match=r"half\.png.*truncated"):
        read_image(tmp_path / "half.png")


@pytest.mark.parametrize("compression", [None, "zlib", "lzw"])
@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_tiff(tmp_path: Path, compression: str | None, keep: float) -> None:
    data = _image("uint16", (128, 160))
    tifffile.imwrite(tmp_path / "full.tif", data, compression=compression, rowsperstrip=16)
    raw = (tmp_path / "full.tif").read_bytes()
    _touch(tmp_path / "cut.tif", raw[: int(len(raw) * keep)])
    with pytest.raises(CorruptImageError, match=r"cut\.tif"):
        read_image(tmp_path / "cut.tif")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_stack_does_not_lose_pages_silently(
    tmp_path: Path, compression: str | None
) -> None:
    # cutting a stack drops the IFDs of the later pages: tifffile then sees fewer pages
    data = _stack(3)
    tifffile.imwrite(tmp_path / "full.tif", data, compression=compression, photometric="minisblack")
    raw = (tmp_path / "full.tif").read_bytes()
    _touch(tmp_path / "cut.tif", raw[: int(len(raw) * 0.6)])
    with pytest.raises(CorruptImageError, match=r"cut\.tif"):
        read_image(tmp_path / "cut.tif")


def test_unsupported_extension_lists_supported_ones(tmp_path: Path) -> None:
    _touch(tmp_path / "notes.txt", b"hello")
    with pytest.raises(UnsupportedFormatError, match=r"'\.txt'.*notes\.txt.*\.tif, \.tiff"):
        read_image(tmp_path / "notes.txt")
    _touch(tmp_path / "README", b"hello")
    with pytest.raises(UnsupportedFormatError, match=r"no extension.*README"):
        read_image(tmp_path / "README")


@pytest.mark.parametrize("ref", ["s3://bucket/a.tif", "http://host/a.png", "gs://b/run.zarr::x"])
def test_urls_are_refused(ref: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=rf"{ref[:4]}.*local paths"):
        read_image(ref)


def test_every_error_is_a_scopefx_error(tmp_path: Path) -> None:
    _touch(tmp_path / "empty.tif")
    _touch(tmp_path / "bad.tif", b"garbage!" * 20)
    for ref in ["nope.tif", tmp_path / "empty.tif", tmp_path / "bad.tif", "x.doc", tmp_path]:
        with pytest.raises(ScopefxError):
            read_image(ref)


# --------------------------------------------------------------------------- split_ref


@pytest.mark.parametrize(
    ("ref", "path", "array"),
    [
        ("tile_001.tif", "tile_001.tif", None),
        ("run.zarr::raw/0", "run.zarr", "raw/0"),
        ("/data/run.zarr::/raw/0/", "/data/run.zarr", "raw/0"),
        ("run.zarr::", "run.zarr", None),
        ("file:///data/a.tif", "/data/a.tif", None),
        ("file://localhost/data/a.tif", "/data/a.tif", None),
        ("C:\\data\\a.tif", "C:\\data\\a.tif", None),
    ],
)
def test_split_ref(ref: str, path: str, array: str | None) -> None:
    assert split_ref(ref) == (Path(path), array)


def test_split_ref_accepts_path_like(tmp_path: Path) -> None:
    assert split_ref(tmp_path / "a.tif") == (tmp_path / "a.tif", None)


@pytest.mark.parametrize("ref", ["s3://bucket/run.zarr::raw/0", "https://x/a.tif", "", "::a"])
def test_split_ref_errors(ref: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=re.escape(ref) if ref else "empty"):
        split_ref(ref)


# --------------------------------------------------------------------------- find_images


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in [
        "section_10.tif",
        "section_2.tif",
        "section_1.TIF",
        "b.png",
        "notes.txt",
        ".hidden.tif",
        "sub/section_3.tif",
        "sub/deeper/x.npy",
        "sub/.secret/y.tif",
    ]:
        _touch(tmp_path / "run" / name, b"x")
    root = zarr.open_group(tmp_path / "run" / "group.zarr", mode="w")
    root.create_array("raw/0", data=np.zeros((4, 4), np.uint8))
    arr = zarr.create_array(store=tmp_path / "run" / "tile.zarr", shape=(4, 4), dtype="uint8")
    arr[...] = 1
    return tmp_path / "run"


def _rel(paths: list[str], base: Path) -> list[str]:
    return [os.path.relpath(p, base) for p in paths]


def test_find_images_directory_natural_order(tree: Path) -> None:
    found = find_images([tree])
    assert all(os.path.isabs(p) for p in found)
    assert _rel(found, tree) == [
        "b.png",
        "section_1.TIF",
        "section_2.tif",
        "section_10.tif",
        "tile.zarr",
    ]


def test_find_images_recursive(tree: Path) -> None:
    found = _rel(find_images([str(tree)], recursive=True), tree)
    assert found == [
        "b.png",
        "section_1.TIF",
        "section_2.tif",
        "section_10.tif",
        os.path.join("sub", "deeper", "x.npy"),
        os.path.join("sub", "section_3.tif"),
        "tile.zarr",
    ]


def test_find_images_globs(tree: Path) -> None:
    assert _rel(find_images([str(tree / "*.tif")]), tree) == ["section_2.tif", "section_10.tif"]
    deep = _rel(find_images([str(tree / "**" / "*.tif")]), tree)
    assert deep == ["section_2.tif", "section_10.tif", os.path.join("sub", "section_3.tif")]
    assert _rel(find_images([str(tree / "*.zarr")]), tree) == ["group.zarr", "tile.zarr"]
    assert find_images([str(tree / "*.czi")]) == []


def test_find_images_keeps_explicit_items(tree: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing_7.tif"
    found = find_images([tree / "notes.txt", missing, tree / "section_2.tif", "s3://b/a.tif"])
    assert found == [
        str(missing),
        str(tree / "notes.txt"),
        str(tree / "section_2.tif"),
        "s3://b/a.tif",
    ]


def test_find_images_zarr_refs_and_dedup(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tree)
    found = find_images(["group.zarr::raw/0", "section_2.tif", str(tree / "section_2.tif"), "."])
    assert f"{tree / 'group.zarr'}::raw/0" in found
    assert found.count(str(tree / "section_2.tif")) == 1
    assert str(tree / "tile.zarr") in found


def test_find_images_empty_and_single_string(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert find_images([tmp_path / "empty"]) == []
    assert find_images([]) == []
    _touch(tmp_path / "one.tif", b"x")
    assert find_images(str(tmp_path / "one.tif")) == [str(tmp_path / "one.tif")]


def test_image_suffixes() -> None:
    assert {".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy"} <= set(IMAGE_SUFFIXES)
    assert all(s == s.lower() and s.startswith(".") for s in IMAGE_SUFFIXES)


def test_zarr_named_file_is_not_a_store(tmp_path: Path) -> None:
    _touch(tmp_path / "packed.zarr", b"PK\x03\x04 not really")
    with pytest.raises(UnsupportedFormatError, match=r"packed\.zarr.*directories only"):
        read_image(tmp_path / "packed.zarr")


def test_a_png_with_a_grey_palette_is_a_grey_image(tmp_path: Path) -> None:
    """Some tools save 8-bit grey images as palette PNGs (GIFs): read as grey (H, W), with the
    grey levels the palette names, not as RGB, which fusion refuses as colour tiles."""
    from PIL import Image

    from scopefx.io import read_metadata

    grey = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(40, 30)
    Image.fromarray(grey, "L").convert("P").save(tmp_path / "p.png")  # 256 grey entries
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), grey)
    assert tuple(read_metadata(str(tmp_path / "p.png")).shape) == (40, 30)
    # a colour palette stays colour
    rgb = np.stack([grey, grey[::-1], grey], axis=-1)
    Image.fromarray(rgb, "RGB").quantize(16).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").shape == (40, 30, 3)
    assert tuple(read_metadata(str(tmp_path / "c.png")).shape) == (40, 30, 3)


def test_a_palette_png_with_transparency_is_read_with_its_alpha(tmp_path: Path) -> None:
    """A palette PNG with a transparent entry (what PNG optimisers write) was decoded to RGB
    with Pillow's 'should be converted to RGBA' warning, and its transparency was lost (fusion
    then blended the transparent pixels' colour). It reads as RGBA, alpha 0 where transparent.
    """
    from PIL import Image

    from scopefx.io import read_metadata

    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[..., 0] = np.arange(30, dtype=np.uint8) * 8
    rgba[..., 3] = 255
    rgba[:5] = 0  # transparent padding
    Image.fromarray(rgba, "RGBA").quantize(16).save(tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as im:
        assert im.mode == "P" and "transparency" in im.info
        expected = np.asarray(im.convert("RGBA"))
    image = read_image(tmp_path / "t.png")
    assert (image[:5, :, 3] == 0).all() and (image[5:, :, 3] == 255).all()
    np.testing.assert_array_equal(image, expected)
    meta = read_metadata(str(tmp_path / "t.png"))
    assert (tuple(meta.shape), meta.samples) == ((40, 30, 4), "rgba")


@pytest.mark.parametrize(("samples", "kind"), [(3, "rgb"), (4, "rgba"), (2, "grey+alpha")])
def test_a_16_bit_colour_png_keeps_its_16_bits(tmp_path: Path, samples, kind, monkeypatch) -> None:
    """Pillow decodes a 16-bit RGB(A) or grey + alpha PNG to 8 bits (grey + alpha to RGBA):
    the tiles of a 16-bit colour camera lost their low byte, silently. They are read as
    stored, 16 bits a sample."""
    import imagecodecs

    from scopefx.io import read_metadata

    image = np.random.default_rng(samples).integers(0, 65536, (20, 30, samples), np.uint16)
    (tmp_path / "c.png").write_bytes(imagecodecs.png_encode(image))
    read = read_image(tmp_path / "c.png")
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, image)
    meta = read_metadata(str(tmp_path / "c.png"))
    assert (tuple(meta.shape), meta.dtype, meta.samples) == ((20, 30, samples), "uint16", kind)
    from scopefx.errors import ResourceLimitError

    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_BYTES", str(image.nbytes - 1))  # from its header
    with pytest.raises(ResourceLimitError):
        read_image(tmp_path / "c.png")


def test_a_16_bit_colour_png_padded_with_chunks_is_not_read_whole(tmp_path: Path) -> None:
    """A 16-bit colour PNG is decoded from bytes read whole: a 4x4 image whose file is padded
    with megabytes of ancillary chunks is refused before they are read into memory."""
    import zlib

    import imagecodecs

    from scopefx.errors import ResourceLimitError

    png = imagecodecs.png_encode(np.ones((4, 4, 3), np.uint16))
    data = b"x" * (3 * 2**20)
    chunk = len(data).to_bytes(4, "big") + b"teXt" + data
    chunk += zlib.crc32(b"teXt" + data).to_bytes(4, "big")
    (tmp_path / "big.png").write_bytes(png[:33] + chunk + png[33:])  # after the IHDR
    with pytest.raises(ResourceLimitError, match=r"big\.png.*4x4 16-bit PNG"):
        read_image(tmp_path / "big.png")
    (tmp_path / "ok.png").write_bytes(png)
    assert read_image(tmp_path / "ok.png").shape == (4, 4, 3)


def test_the_budget_of_a_png_counts_what_it_decodes_to(tmp_path: Path, monkeypatch) -> None:
    """A colour-palette PNG decodes to RGB and a 16-bit PNG to two bytes a pixel: the budget
    checked from the header counts that, not one byte per pixel."""
    from PIL import Image

    from scopefx.errors import ResourceLimitError

    rgb = np.zeros((100, 100, 3), np.uint8)
    rgb[..., 0] = np.arange(100, dtype=np.uint8)
    Image.fromarray(rgb, "RGB").quantize(16).save(tmp_path / "c.png")
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(tmp_path / "d.png")
    grey = (np.arange(100 * 100) % 256).astype(np.uint8).reshape(100, 100)
    Image.fromarray(grey, "L").convert("P").save(tmp_path / "g.png")
    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_BYTES", str(15_000))  # 1.5 bytes a pixel
    for name in ("c.png", "d.png"):
        with pytest.raises(ResourceLimitError):
            read_image(tmp_path / name)
    assert read_image(tmp_path / "g.png").shape == (100, 100)  # grey: one byte a pixel


@pytest.mark.parametrize("subsampling", [(1, 1), (2, 2)])
def test_jpeg_ycbcr_tiff_reads_as_rgb(tmp_path: Path, subsampling: tuple[int, int]) -> None:
    """Slide scanners write JPEG-compressed TIFFs with photometric YCbCr: the decoder gives
    RGB, so the tile is RGB (uncompressed YCbCr, whose samples stay YCbCr, is refused)."""
    from scopefx.io import read_metadata
    from scopefx.samples import bundled_image

    grey = bundled_image("immunohistochemistry", size=128).astype(np.float64)
    rgb = np.stack([grey, 0.8 * grey + 20, 0.5 * grey + 60], axis=-1)
    rgb = 255 * (rgb - rgb.min()) / (rgb.max() - rgb.min())
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    ycc = np.stack([0.299 * r + 0.587 * g + 0.114 * b,  # JFIF (full range), as JPEG holds it
                    128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                    128 + 0.5 * r - 0.418688 * g - 0.081312 * b], axis=-1)  # fmt: skip
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.clip(np.rint(ycc), 0, 255).astype(np.uint8), photometric="ycbcr",
                     compression="jpeg", subsampling=subsampling)  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        assert int(tif.pages[0].photometric) == 6 and int(tif.pages[0].compression) == 7
    assert read_metadata(path).samples == "rgb"
    image = read_image(path)
    assert image.shape == (128, 128, 3)
    assert np.abs(image.astype(float) - rgb).mean() < 4  # JPEG's loss, not a colour mix-up


# --------------------------------------------------------------------------- CMYK


def test_a_cmyk_jpeg_is_read_as_rgb_not_with_k_as_alpha(tmp_path: Path) -> None:
    """A CMYK JPEG (print and Photoshop workflows) was read as RGBA: C, M, Y as R, G, B and
    K as alpha. A grey image printed as black ink scored 0 features, and Pillow's own
    RGB -> CMYK conversion (K = 0) was refused as 'transparent'. Both read as RGB."""
    from PIL import Image

    from scopefx.samples import bundled_image

    grey = np.rint(255 * bundled_image("immunohistochemistry", size=128)).astype(np.uint8)
    ink = np.zeros_like(grey)
    Image.fromarray(np.dstack([ink, ink, ink, 255 - grey]), "CMYK").save(
        tmp_path / "black.jpg", quality=95
    )
    Image.fromarray(np.dstack([grey, grey, grey])).convert("CMYK").save(tmp_path / "rgb.jpg")
    for name in ("black.jpg", "rgb.jpg"):
        image = read_image(tmp_path / name)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8, name
        for c in range(3):  # JPEG's loss, not an inversion or a channel mix-up
            assert np.abs(image[..., c].astype(float) - grey).mean() < 4, name


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("planar", [False, True])
def test_a_cmyk_tiff_is_read_as_rgb(tmp_path: Path, dtype: str, planar: bool) -> None:
    """A TIFF of CMYK inks (photometric separated) was read as its four ink samples, scored
    as RGBA with K as alpha. It reads as RGB, R = (1 - C)(1 - K) in the dtype's range, a
    stack page by page; in whatever order its samples are stored (planar: (3, H, W), as an
    RGB planar TIFF reads)."""
    inks = _image(dtype, (2, 16, 24, 4))
    top = np.iinfo(dtype).max
    k = inks[..., 3].astype(np.float64)
    rgb = np.rint((top - inks[..., :3]) * (top - k[..., None]) / top).astype(dtype)
    axis = 1 if planar else -1
    stored = np.moveaxis(inks, -1, 1) if planar else inks
    tifffile.imwrite(tmp_path / "c.tif", stored[0], photometric="separated",
                     planarconfig="separate" if planar else "contig")  # fmt: skip
    tifffile.imwrite(tmp_path / "s.tif", stored, photometric="separated",
                     planarconfig="separate" if planar else "contig")  # fmt: skip
    one = read_image(tmp_path / "c.tif")
    assert one.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(np.moveaxis(one, 0 if planar else -1, -1), rgb[0])
    stack = read_image(tmp_path / "s.tif")
    np.testing.assert_array_equal(np.moveaxis(stack, axis, -1), rgb)
    page = read_image(tmp_path / "s.tif", page=1)
    np.testing.assert_array_equal(np.moveaxis(page, 0 if planar else -1, -1), rgb[1])


def test_a_cmyk_tiff_without_a_known_range_is_refused(tmp_path: Path) -> None:
    """Float inks have no range to convert in: refused, naming the file and what to do,
    rather than scored with K as alpha."""
    tifffile.imwrite(tmp_path / "f.tif", _image("float32", (16, 24, 4)), photometric="separated")
    with pytest.raises(UnsupportedFormatError, match=r"f\.tif.*float32.*export .* RGB or grey"):
        read_image(tmp_path / "f.tif")


# --------------------------------------------------------------------------- Pillow's bomb limit


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))  # fmt: skip


@pytest.mark.parametrize("side", [20_000, 40_000])
def test_a_png_header_over_the_budget_is_a_limit_not_corrupt(tmp_path: Path, side: int) -> None:
    """A header-only PNG bomb of 400 Mpx or 1.6 Gpx was refused by Pillow's own limit and
    reported corrupt ('copy it again'); it is over scopefx's budget (2^28 px), and says so."""
    from PIL import Image

    from scopefx.errors import ResourceLimitError

    before = Image.MAX_IMAGE_PIXELS
    path = _touch(tmp_path / "bomb.png", _png_header(side, side))
    with pytest.raises(ResourceLimitError, match=r"bomb\.png.*SCOPEFX_MAX_IMAGE_PX") as info:
        read_image(path)
    assert (info.value.status, Image.MAX_IMAGE_PIXELS) == ("limit", before)  # put back


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.gif", "a.bmp"])
def test_an_image_over_pillows_limit_within_the_budget_is_read(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's own bomb limit (179 Mpx) is smaller than scopefx's budget (268 Mpx): a valid
    196 Mpx PNG was refused as corrupt, and from 89 Mpx Pillow warned on stderr. Within the
    budget an image is read, without a warning (warnings are errors here), on every thread,
    and Pillow's limit is put back after. Pillow's limit is lowered here, not the image
    enlarged."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    image = (np.arange(64 * 80) % 251).astype(np.uint8).reshape(64, 80)
    Image.fromarray(image).save(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 80 is over twice that
    with ThreadPoolExecutor(4) as pool:
        shapes = list(pool.map(lambda _: read_image(tmp_path / name).shape, range(8)))
    assert shapes == [(64, 80)] * 8
    assert Image.MAX_IMAGE_PIXELS == 1000
