"""Bounded work (issue 14, part 5): budgets checked from headers before decoding, with the
peak memory of a fresh process measured under each bomb; bounds on a fusion's chunks checked
at planning; limits a job cannot lift; reads that cannot block; clear per-item errors."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import tifffile
from _sec_helpers import RSS_BUDGET_MIB, run_measured

import scopefx.errors
import scopefx.io
from scopefx import FusionParams
from scopefx.io import read_image
from scopefx.remote import functions

# names new in issue 14 are looked up as the tests run (so each test fails on its own before)
BOMB_PX = 20000


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory):
    """A deflate TIFF of a few hundred kB that declares 20000 x 20000 uint16 (800 MB); its one
    tile of zeros is compressed once and written 400 times (tifffile wrote the same bytes
    compressing each)."""
    import imagecodecs

    path = tmp_path_factory.mktemp("bombs") / "bomb.tif"
    tile = imagecodecs.deflate_encode(np.zeros((1024, 1024), np.uint16).tobytes(), level=6)
    n = (-(-BOMB_PX // 1024)) ** 2
    tifffile.imwrite(path, (tile for _ in range(n)), shape=(BOMB_PX, BOMB_PX), dtype=np.uint16,
                     tile=(1024, 1024), compression="zlib")  # fmt: skip
    assert path.stat().st_size < 4 * 2**20
    return path


def _read_in_child(ref, **env: str) -> dict:
    return run_measured(
        f"from scopefx.io import read_image\nread_image({str(ref)!r})\nresult = 'decoded'",
        env=env,
    )


def test_deflate_bomb_is_refused_from_its_header(deflate_bomb):
    out = _read_in_child(deflate_bomb)
    assert out["error"] and out["error"][0] == "ResourceLimitError", out
    assert "20000x20000" in out["error"][1] and "SCOPEFX_MAX_IMAGE_PX" in out["error"][1]
    assert out["peak_rss_mib"] < RSS_BUDGET_MIB, out


def test_zarr_metadata_bomb_is_refused(tmp_path):
    """A 300-byte zarr.json declaring a 200000^2 array in one chunk, no chunk files."""
    store = tmp_path / "bomb.zarr"
    store.mkdir()
    meta = {
        "zarr_format": 3, "node_type": "array", "shape": [200000, 200000],
        "data_type": "uint16", "chunk_grid": {"name": "regular",
        "configuration": {"chunk_shape": [200000, 200000]}},
        "chunk_key_encoding": {"name": "default"}, "fill_value": 7,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }  # fmt: skip
    (store / "zarr.json").write_text(json.dumps(meta))
    assert (store / "zarr.json").stat().st_size < 400
    out = _read_in_child(store)
    assert out["error"] and out["error"][0] == "ResourceLimitError", out
    assert out["peak_rss_mib"] < RSS_BUDGET_MIB, out


def test_png_and_npy_headers_are_checked_before_decoding(tmp_path, monkeypatch):
    import imageio.v3 as iio

    monkeypatch.setenv("SCOPEFX_MAX_IMAGE_PX", str(10**6))
    iio.imwrite(tmp_path / "wide.png", np.zeros((2000, 2000), np.uint8))
    with pytest.raises(scopefx.errors.ResourceLimitError, match=r"wide\.png"):
        read_image(tmp_path / "wide.png")
    npy = tmp_path / "liar.npy"
    with open(npy, "wb") as fh:  # a header declaring 10^10 values, then 16 bytes
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "<u2", "fortran_order": False, "shape": (100000, 100000)}
        )
        fh.write(bytes(16))
    out = _read_in_child(npy)
    assert out["error"] and out["error"][0] == "ResourceLimitError", out
    assert out["peak_rss_mib"] < RSS_BUDGET_MIB, out


@pytest.mark.parametrize("where", ["chunk", "metadata"])
def test_a_fifo_in_a_zarr_store_does_not_block(tmp_path, where):
    import zarr

    store = tmp_path / "img.zarr"
    zarr.create_array(store, shape=(16, 16), chunks=(8, 8), dtype="uint16", fill_value=0)[...] = 1
    target = store / ("c/0/0" if where == "chunk" else "zarr.json")
    target.unlink()
    os.mkfifo(target)
    try:  # the timeout only guards the test run against a regression that hangs
        out = run_measured(
            f"from scopefx.io import read_image\nread_image({str(store)!r})", timeout=120
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"reading a Zarr store whose {where} is a FIFO blocked")
    assert out["error"] is not None, out
    assert "FIFO" in out["error"][1] or "not a Zarr store" in out["error"][1], out


def _far_tiles(site, gap_px: float, n: int = 2):
    for i in range(n):
        tifffile.imwrite(site.data / f"far{i}.tif", np.ones((64, 64), np.uint16))
    rows = "".join(f"far{i}.tif,{i * gap_px},{i * gap_px}\n" for i in range(n))
    (site.data / "far.csv").write_text("path,x,y\n" + rows)


def test_tiles_far_apart_are_refused_at_planning_whatever_the_params_say(site):
    """Two tiles 10^6 px apart: a 10^12 px mosaic, ~954k chunks; refused from geometry."""
    _far_tiles(site, 1e6)
    job = {"tiles": "far.csv", "output": "far.ome.zarr", "params": {"max_output_gib": 1e9}}
    out = run_measured(
        f"from scopefx.remote import functions\nfunctions.fuse_mosaic({job!r})",
        env={"SCOPEFX_DATA_ROOTS": str(site.data), "SCOPEFX_OUTPUT_ROOTS": str(site.out)},
    )
    assert out["error"] and out["error"][0] == "ResourceLimitError", out
    assert out["peak_rss_mib"] < RSS_BUDGET_MIB, out
    assert not (site.out / "far.ome.zarr").exists()


def test_huge_chunks_and_too_many_chunks_are_refused_at_planning(site, monkeypatch):
    _far_tiles(site, 16000)
    job = {"tiles": "far.csv", "output": "f.ome.zarr", "params": {"chunk_px": 16384}}
    with pytest.raises(scopefx.errors.ResourceLimitError, match="SCOPEFX_MAX_CHUNK_PX"):
        functions.fuse_mosaic(job)
    monkeypatch.setenv("SCOPEFX_MAX_CHUNKS", "100")
    with pytest.raises(scopefx.errors.ResourceLimitError, match="SCOPEFX_MAX_CHUNKS"):
        functions.fuse_mosaic({**job, "params": {"chunk_px": 256}})


def test_force_and_params_cannot_lift_the_endpoint_size_limit(site, monkeypatch):
    monkeypatch.setenv("SCOPEFX_MAX_OUTPUT_GIB", "0.00001")  # ~10 kB
    job = {"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr",
           "params": FusionParams(max_output_gib=1e6).to_dict()}  # fmt: skip
    with pytest.raises(scopefx.errors.ResourceLimitError, match="SCOPEFX_MAX_OUTPUT_GIB"):
        functions.fuse_mosaic(job)
    with pytest.raises(scopefx.errors.ConfigError, match="'force' is not accepted"):
        functions.fuse_mosaic({**job, "options": {"force": True}})
    assert scopefx.io.EndpointLimits.from_env().max_output_gib == 0.00001


def test_a_nul_byte_in_a_reference_is_a_clear_per_item_error(site):
    items = functions.score_focus(["run1/section_0.tif", "run1/sec\x00tion_1.tif"])
    assert items[1]["status"] == "unsupported"
    assert "NUL byte" in items[1]["error"] and "sec\\x00tion_1.tif" in items[1]["error"]
    assert items[0]["status"] != "unsupported"


def test_disk_full_is_a_clear_error(site, monkeypatch):
    import errno

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(scopefx.errors.DiskFullError, match="No space left on device"):
        functions.fuse_mosaic({"tiles": "mosaic/tiles.csv", "output": "m.ome.zarr"})


def test_limits_come_from_the_environment_only():
    limits = scopefx.io.EndpointLimits.from_env(
        {"SCOPEFX_MAX_IMAGE_PX": "1000", "SCOPEFX_MAX_CHUNKS": "5"}
    )
    assert (limits.max_image_px, limits.max_chunks) == (1000, 5)
    with pytest.raises(ValueError, match="SCOPEFX_MAX_CHUNKS"):
        scopefx.io.EndpointLimits.from_env({"SCOPEFX_MAX_CHUNKS": "lots"})
    with pytest.raises(ValueError, match="max_chunk_px"):
        scopefx.io.EndpointLimits(max_chunk_px=0)


MALFORMED = {
    "empty.csv": "",
    "no_header.csv": "a,b\n1,2\n",
    "not_numeric.csv": "path,x,y\nt.tif,abc,1\n",
    "no_positions.csv": "path,x\nt.tif,1\n",
    "nan.csv": "path,x,y\nt.tif,nan,1\n",
    "binary.csv": "\x00\x01\x02\xff",
    "short_row.csv": "path,x,y\nt.tif,1\n",
    "long_row.csv": "path,x,y,affine\nt.tif,1,1,[[1,2]]\n",
    "TileConfiguration.txt": "dim = 2\nt.tif; ; (1, 2\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_table_is_a_clear_configuration_error(site, name):
    (site.data / name).write_text(MALFORMED[name], encoding="latin-1")
    with pytest.raises(scopefx.errors.ScopefxError) as info:
        functions.fuse_mosaic({"tiles": name, "output": "m.ome.zarr"})
    assert info.value.status in ("config", "unsupported"), info.value
    assert name in str(info.value) or "tile 0" in str(info.value)


def test_a_callers_registration_search_is_bounded_before_any_tile_is_read(site, monkeypatch):
    """A caller who asks for the widest search (max_shift_px up to the tile) gets a
    ResourceLimitError naming the endpoint's setting, and nothing is written."""
    monkeypatch.setenv("SCOPEFX_MAX_SEARCH_BYTES", str(2**20))  # 1 MiB: 64 px tiles fit
    wide = {"register": True, "registration": {"max_shift_px": 64}}
    job = {"tiles": "mosaic/tiles.csv", "output": "r.ome.zarr", "options": wide}
    with pytest.raises(scopefx.errors.ResourceLimitError, match="SCOPEFX_MAX_SEARCH_BYTES"):
        functions.fuse_mosaic(job)
    assert not any(p.name.startswith("r.") for p in site.out.iterdir())
    assert functions.fuse_mosaic({**job, "options": {"register": True}})["registration"]


def test_focus_parameters_cannot_take_memory_past_the_endpoint_budget(site, monkeypatch):
    """256 scales of 0.5-0.51 px took 1 KiB per pixel (1.4 GiB on a 1344 x 1024 frame, 256 GiB
    on the largest image allowed): the scale space is now estimated and bounded by
    SCOPEFX_MAX_FOCUS_BYTES before it is built, per item."""
    ref = "run1/section_0.tif"
    pixels = np.random.default_rng(0).integers(0, 4000, (256, 256), dtype=np.uint16)
    tifffile.imwrite(site.data / ref, pixels)
    monkeypatch.setenv("SCOPEFX_MAX_FOCUS_BYTES", str(32 * 2**20))  # 32 MiB
    wide = {"n_scales": 256, "min_sigma_px": 0.5, "max_sigma_px": 0.51}
    (bad,) = functions.score_focus([ref], wide)
    assert bad["status"] == "limit" and "SCOPEFX_MAX_FOCUS_BYTES" in bad["error"]
    (good,) = functions.score_focus([ref])
    assert good["status"] == "ok"


def test_the_focus_memory_estimate_bounds_what_scoring_takes():
    import tracemalloc

    from scopefx.focus import FocusParams, _scalespace, focus_score
    from scopefx.focus._scalespace import working_bytes

    image = np.random.default_rng(1).normal(100, 10, (384, 320)).astype(np.float32)
    for params in (FocusParams(), FocusParams(n_scales=64, min_sigma_px=0.5, max_sigma_px=0.6),
                   FocusParams(mode="fast")):  # fmt: skip
        focus_score(image, params=params)  # FFT caches and imports outside the measure
        _scalespace._plans.clear()  # the filters are built inside it, as on a first call
        tracemalloc.start()
        try:
            focus_score(image, params=params)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        estimate = working_bytes(image.shape, params.sigmas_px, params.mode)
        assert peak <= estimate, (params, peak, estimate)


# -- compressed chunks that inflate past their chunk (zarr codec bombs) -----------------------

_GIB = 2**30


def _stream(kind: str, n: int) -> bytes:
    """``n`` zero bytes compressed by ``kind`` (a few kB to 1 MiB for 1 GiB).

    Built from one compressed 16 MiB piece, repeated: compressing the whole 1 GiB took 10 to
    30 s per stream. zlib and gzip: one stream, its deflate blocks repeated (each piece ends
    in a full flush, so none refers back past its start), with the stream's own checksum.
    bz2 and lzma: one stream per piece, one after another, as ``bz2.decompress`` and
    ``lzma.decompress`` (what numcodecs decodes with) read them: the whole 1 GiB."""
    import bz2
    import lzma
    import struct
    import zlib

    piece = 2**24
    assert n % piece == 0, n
    block, count = b"\0" * piece, n // piece
    if kind in ("zlib", "gzip"):
        raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = raw.compress(block) + raw.flush(zlib.Z_FULL_FLUSH)
        final = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # empty, last
        deflate = body * count + final
        check = 0 if kind == "gzip" else 1
        for _ in range(count):
            check = (zlib.crc32 if kind == "gzip" else zlib.adler32)(block, check)
        if kind == "gzip":
            header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
            return header + deflate + struct.pack("<II", check, n % 2**32)
        return b"\x78\xda" + deflate + struct.pack(">I", check)
    if kind == "bz2":
        return bz2.compress(block, 9) * count
    return lzma.compress(block, format=lzma.FORMAT_ALONE) * count


def _bomb_store(tmp_path, fmt: int, codec: dict, payload: bytes):
    """A 16 x 16 uint16 array (one 512-byte chunk declared) whose one stored chunk is
    ``payload``; zarr v2 (``codec`` as its compressor) or v3 (``codec`` after ``bytes``)."""
    store = tmp_path / f"bomb{fmt}.zarr"
    store.mkdir()
    if fmt == 2:
        meta = {"zarr_format": 2, "shape": [16, 16], "chunks": [16, 16], "dtype": "<u2",
                "compressor": codec, "fill_value": 0, "order": "C", "filters": None}  # fmt: skip
        (store / ".zarray").write_text(json.dumps(meta))
        (store / "0.0").write_bytes(payload)
    else:
        meta = {"zarr_format": 3, "node_type": "array", "shape": [16, 16], "data_type": "uint16",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [16, 16]}},
                "chunk_key_encoding": {"name": "default"}, "fill_value": 0,
                "codecs": [{"name": "bytes"}, codec]}  # fmt: skip
        (store / "zarr.json").write_text(json.dumps(meta))
        (store / "c" / "0").mkdir(parents=True)
        (store / "c" / "0" / "0").write_bytes(payload)
    return store


@pytest.mark.parametrize(
    ("fmt", "codec", "kind"),
    [
        (2, {"id": "zlib"}, "zlib"),
        (2, {"id": "bz2"}, "bz2"),
        (2, {"id": "lzma"}, "lzma"),
        (3, {"name": "gzip", "configuration": {"level": 9}}, "gzip"),
    ],
)
def test_a_chunk_that_inflates_past_its_declared_size_is_refused_before_decoding(
    tmp_path, fmt, codec, kind
):
    """A 16 x 16 uint16 chunk stored as a 3 kB bz2 (or 1 MiB zlib) stream of 1 GiB of
    zeros: the decoder inflated all of it (2.1 GiB peak) before zarr compared sizes."""
    store = _bomb_store(tmp_path, fmt, codec, _stream(kind, _GIB))
    out = _read_in_child(store)
    assert out["error"] and out["error"][0] == "ResourceLimitError", out
    # decoded no further than one byte past the declared size (not a whole stream)
    assert "decode to more than the 512 bytes its chunk shape declares" in out["error"][1], out
    assert out["peak_rss_mib"] < RSS_BUDGET_MIB, out


def test_headers_that_declare_more_than_the_chunk_are_refused(tmp_path):
    """Blosc, LZ4 and Zstandard decoders allocate the size their header declares."""
    import struct

    from scopefx.errors import ResourceLimitError

    blosc = bytes([2, 1, 1, 2]) + struct.pack("<III", 2**31, 2**16, 40) + b"\0" * 24
    lz4 = struct.pack("<I", 2**31) + b"\0" * 8
    # a single-segment frame declaring 2 GiB (4-byte size), and one that declares none
    zstd = struct.pack("<I", 0xFD2FB528) + bytes([0xA0]) + struct.pack("<I", 2**31) + b"\0" * 8
    no_size = struct.pack("<I", 0xFD2FB528) + bytes([0x00, 0x58]) + b"\0" * 8
    cases = [({"id": "blosc"}, blosc), ({"id": "lz4"}, lz4), ({"id": "zstd"}, zstd),
             ({"id": "zstd"}, no_size)]  # fmt: skip
    for k, (codec, payload) in enumerate(cases):
        folder = tmp_path / str(k)
        folder.mkdir()
        with pytest.raises(ResourceLimitError, match="its chunk shape declares"):
            read_image(_bomb_store(folder, 2, codec, payload))


def test_ordinary_compressed_and_sharded_arrays_read_as_before(tmp_path):
    import numcodecs
    import zarr

    data = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    stores = {
        "v2_blosc.zarr": {"zarr_format": 2},
        "v2_zlib.zarr": {"zarr_format": 2, "compressors": numcodecs.Zlib(level=5)},
        "v3_zstd.zarr": {},
        "v3_gzip_crc.zarr": {"compressors": [zarr.codecs.GzipCodec()]},
        "v3_sharded.zarr": {"shards": (32, 48)},
    }
    for name, kwargs in stores.items():
        array = zarr.create_array(store=str(tmp_path / name), shape=data.shape, chunks=(16, 16),
                                  dtype="u2", **kwargs)  # fmt: skip
        array[...] = data
        np.testing.assert_array_equal(read_image(tmp_path / name), data, err_msg=name)


def test_a_sharded_array_with_an_inflating_inner_chunk_is_refused(tmp_path):
    import zarr

    from scopefx.errors import ResourceLimitError

    store = tmp_path / "s.zarr"
    array = zarr.create_array(store=str(store), shape=(32, 32), chunks=(16, 16), shards=(32, 32),
                              dtype="u2", compressors=[zarr.codecs.GzipCodec()])  # fmt: skip
    array[...] = 1
    shard = store / "c" / "0" / "0"
    raw = shard.read_bytes()
    index = np.frombuffer(raw[-(16 * 4 + 4) : -4], dtype="<u8").reshape(-1, 2).copy()
    bomb = _stream("gzip", 2**28)
    body = bytearray()
    for k in range(4):  # inner chunk 0 swapped for the bomb
        offset, size = (int(v) for v in index[k])
        piece = bomb if k == 0 else raw[offset : offset + size]
        index[k] = (len(body), len(piece))
        body += piece
    import google_crc32c  # zarr's own checksum of the index

    table = index.astype("<u8").tobytes()
    shard.write_bytes(bytes(body) + table + np.uint32(google_crc32c.value(table)).tobytes())
    with pytest.raises(ResourceLimitError, match="its chunk shape declares"):
        read_image(store)
