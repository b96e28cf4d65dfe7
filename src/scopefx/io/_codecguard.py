"""Stored Zarr chunks checked before a codec decodes them (used by :mod:`._zarrstore`).

A chunk's decoded size is declared by the array's metadata (the chunk shape times the item
size), but the decoders allocate what the stored stream asks for: a 785-byte bz2 stream or a
1 MiB zlib stream of a chunk declared as 16 x 16 uint16 inflated to 2 GiB before zarr
compared its size with the chunk's. :func:`chunk_guard` reads the array's codecs and returns a
check that each stored chunk, once decoded, is no larger than declared: from the header where
the format records the decoded size (Blosc, LZ4, Zstandard frames), else by decoding at most
one byte more than declared (zlib, gzip, bz2, lzma). Codecs whose output size cannot be
bounded this way (a compressor used as a filter, two compressors stacked, object codecs) are
refused before any chunk is read.
"""

from __future__ import annotations

import bz2
import lzma
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ResourceLimitError, UnsupportedFormatError

__all__ = ["ChunkGuard", "chunk_guard"]

#: Codecs that keep the size of what they decode (or shrink it): no bomb.
_PLAIN = frozenset(
    {"bytes", "transpose", "delta", "shuffle", "bitround", "quantize", "fixedscaleoffset",
     "astype", "crc32c", "crc32", "adler32", "fletcher32", "jenkins_lookup3"}
)  # fmt: skip
#: Checksums appended to the stored bytes (v3 ``crc32c``: 4 bytes at the end).
_TRAILER = {"crc32c": 4}
_COMPRESSORS = frozenset({"zlib", "gzip", "bz2", "lzma", "blosc", "zstd", "lz4"})


def _name(codec: Any) -> str:
    """A codec's id in array metadata: v2's ``{"id": ...}``, v3's ``{"name": ...}``."""
    if isinstance(codec, str):
        return codec.removeprefix("numcodecs.").lower()
    if not isinstance(codec, dict):
        return "?"
    return str(codec.get("name", codec.get("id", "?"))).removeprefix("numcodecs.").lower()


def _config(codec: Any) -> dict[str, Any]:
    conf = codec.get("configuration", {}) if isinstance(codec, dict) else {}
    return conf if isinstance(conf, dict) else {}


class ChunkGuard:
    """Checks stored chunks of one array against its declared decoded chunk size."""

    def __init__(self, compressor: str | None, trailer: int, limit: int, ref: str,
                 shard: tuple[int, int, str] | None = None) -> None:  # fmt: skip
        self.compressor, self.trailer, self.limit, self.ref = compressor, trailer, limit, ref
        # sharded: (inner chunks per shard, index bytes, "start" | "end")
        self.shard = shard

    def __call__(self, data: bytes, *, whole: bool) -> None:
        """Refuse ``data`` (one stored chunk; ``whole``: the file as stored, not a byte range
        of it) if it would decode to more than the declared chunk."""
        if self.compressor is None or not data:
            return
        if self.shard is None:
            self._one(data)
            return
        count, index_bytes, where = self.shard
        if not whole:  # a byte range: the index, or one inner chunk
            if len(data) != index_bytes:
                self._one(data)
            return
        index = data[-index_bytes:] if where == "end" else data[:index_bytes]
        if len(data) < index_bytes:
            return  # too short to hold its index: zarr refuses it
        pairs = np.frombuffer(index[: 16 * count], dtype="<u8").reshape(-1, 2)
        for offset, size in pairs.tolist():
            if offset == 2**64 - 1 and size == 2**64 - 1:
                continue  # an empty inner chunk
            self._one(data[offset : offset + size])

    def _one(self, data: bytes) -> None:
        body = data[: len(data) - self.trailer] if self.trailer else data
        out = _decoded_size(self.compressor or "", body, self.limit)
        if out is not None and out > self.limit:
            size = "more than" if out == self.limit + 1 else f"{out:,} bytes, more than"
            raise ResourceLimitError(
                f"Zarr array {self.ref!r}: a stored chunk of {len(data):,} bytes would decode to "
                f"{size} the {self.limit:,} bytes its chunk shape declares ({self.compressor}); "
                "it was not decoded"
            )


def _decoded_size(kind: str, data: bytes, limit: int) -> int | None:
    """What ``data`` decodes to, in bytes (``limit + 1``: more than ``limit``), read from its
    header or by decoding at most ``limit + 1`` bytes; None when it cannot be told (zarr's
    decoder then refuses the stream as corrupt)."""
    try:
        if kind in ("zlib", "gzip"):
            d = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip header, told apart
            return len(d.decompress(data, limit + 1))
        if kind == "bz2":
            return len(bz2.BZ2Decompressor().decompress(data, limit + 1))
        if kind == "lzma":
            return len(lzma.LZMADecompressor().decompress(data, limit + 1))
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        return None
    if kind == "blosc":  # header: version, versionlz, flags, typesize, nbytes (u32 LE), ...
        return struct.unpack_from("<I", data, 4)[0] if len(data) >= 16 else None
    if kind == "lz4":  # numcodecs' LZ4: the decoded size as a u32 LE before the block
        return struct.unpack_from("<I", data, 0)[0] if len(data) >= 4 else None
    if kind == "zstd":
        return _zstd_content_size(data, limit)
    return None


def _zstd_content_size(data: bytes, limit: int) -> int:
    """The content size a Zstandard frame declares (decoders allocate it); a frame that does
    not declare one counts as over ``limit`` (its decoder would grow without bound)."""
    if len(data) < 6 or struct.unpack_from("<I", data, 0)[0] != 0xFD2FB528:
        return 0  # not a frame: zarr's decoder refuses it
    descriptor = data[4]
    fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    dict_bytes = (0, 1, 2, 4)[descriptor & 3]
    pos = 5 + (0 if single else 1) + dict_bytes
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0 or len(data) < pos + size:
        return limit + 1  # no declared size
    value = int.from_bytes(data[pos : pos + size], "little")
    return value + 256 if size == 2 else value


def chunk_guard(meta: dict[str, Any], ref: str) -> ChunkGuard | None:
    """The check for the stored chunks of the array whose metadata (``.zarray`` or
    ``zarr.json``, parsed) is ``meta``; None when its codecs keep sizes (nothing to check).

    Raises
    ------
    UnsupportedFormatError
        A codec chain whose decoded size cannot be bounded before decoding: an unknown codec,
        a compressor used as a filter, two compressors stacked; or metadata that does not
        say the chunk shape and data type.
    """
    try:
        if meta.get("zarr_format") == 2:
            chunks = [int(c) for c in meta["chunks"]]
            item = np.dtype(meta["dtype"]).itemsize
            compressor = meta.get("compressor")
            chain = [*(meta.get("filters") or ()), *([compressor] if compressor else [])]
            return _guard(chain, math.prod(chunks) * item, ref)
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        item = np.dtype(str(meta["data_type"])).itemsize
        codecs = list(meta.get("codecs") or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise UnsupportedFormatError(
            f"Zarr array {ref!r}: its metadata does not give its chunk shape and data type "
            f"({type(exc).__name__}: {exc})"
        ) from None
    for k, codec in enumerate(codecs):
        if _name(codec) == "sharding_indexed":
            conf = _config(codec)
            inner = [int(c) for c in conf.get("chunk_shape", ())]
            if len(inner) != len(grid) or min(inner, default=0) < 1:
                raise UnsupportedFormatError(f"Zarr array {ref!r}: a shard without inner chunks")
            chain = [*codecs[:k], *(conf.get("codecs") or ()), *codecs[k + 1 :]]
            guard = _guard(chain, math.prod(inner) * item, ref)
            if guard is None:
                return None
            per_shard = math.prod(-(-int(s) // c) for s, c in zip(grid, inner, strict=True))
            trailer = sum(_TRAILER.get(_name(c), 0) for c in conf.get("index_codecs") or ())
            guard.shard = (per_shard, 16 * per_shard + trailer,
                           str(conf.get("index_location", "end")))  # fmt: skip
            return guard
    return _guard(codecs, math.prod(int(c) for c in grid) * item, ref)


def _guard(chain: Sequence[Any], limit: int, ref: str) -> ChunkGuard | None:
    """The guard for a chain of codecs, first applied first when encoding (the stored bytes
    are the last one's output)."""
    names = [_name(c) for c in chain]
    unknown = [n for n in names if n not in _PLAIN and n not in _COMPRESSORS]
    if unknown:
        raise UnsupportedFormatError(
            f"Zarr array {ref!r} uses the codec(s) {unknown}, whose decoded size cannot be "
            "bounded before decoding; store it with blosc, zstd, lz4, gzip/zlib, bz2 or lzma"
        )
    packed = [i for i, n in enumerate(names) if n in _COMPRESSORS]
    if not packed:
        return None
    if len(packed) > 1:
        raise UnsupportedFormatError(
            f"Zarr array {ref!r} stacks the compressors {[names[i] for i in packed]}: the "
            "decoded size of the inner one cannot be bounded before decoding; store it with "
            "one compressor"
        )
    outer = names[packed[0] + 1 :]  # between the compressor and the stored bytes: checksums
    if any(n not in _TRAILER and n not in ("crc32", "adler32", "fletcher32") for n in outer):
        raise UnsupportedFormatError(
            f"Zarr array {ref!r} applies {outer} after its compressor {names[packed[0]]!r}; "
            "store it with the compressor last"
        )
    trailer = sum(_TRAILER.get(n, 4 if n in ("crc32", "adler32", "fletcher32") else 0)
                  for n in outer)  # fmt: skip
    return ChunkGuard(names[packed[0]], trailer, limit, ref)
