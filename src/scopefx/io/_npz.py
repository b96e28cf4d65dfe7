"""Reading ``.npz`` archives (flat fields, saved fusion plans) within a budget.

``numpy.load`` inflates each member whole, whatever its ``.npy`` header declares: a 0.59 MB
deflated member declaring 384 MiB took a worker to 1.1 GiB before anything looked at its
shape. :func:`read_npz` opens the file through the confined reader (non-blocking, regular
files only, inside the roots), reads the archive's directory only when it is small, and for
each member it is asked for parses the ``.npy`` header first: a member is refused, before any
of its data is decoded, when it holds Python objects or anything but numbers, when it declares
more than the budget, or when the archive's own size for it disagrees with its header. It then
decodes at most the declared bytes (deflate is decoded in bounded steps; other compressions,
whose decoders in :mod:`zipfile` are not bounded, are refused).
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection
from typing import Any, BinaryIO

import numpy as np

from ..errors import ConfigError, CorruptImageError, ResourceLimitError, ScopefxError
from ._confine import open_binary
from ._limits import size_text
from ._read import npy_header

__all__ = ["NpzCheck", "read_npz"]

#: ``check(name, shape, dtype)``, called with each member's header before it is decoded.
NpzCheck = Callable[[str, tuple[int, ...], np.dtype[Any]], None]

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: 22 bytes
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory record: 56 bytes
_LOCATOR = 20  # zip64 end of central directory locator
_ENTRY_BYTES = 4096  # directory bytes allowed per member (a 46-byte entry plus name, extras)
_STEP = 1 << 20  # bytes decoded per step
_KINDS = "biuf"  # booleans, integers, floats: what scopefx saves


def _directory(fh: BinaryIO) -> tuple[int, int] | None:
    """``(members, directory bytes)`` as the archive's end record declares them (found as
    :mod:`zipfile` finds it), read before :mod:`zipfile` reads the directory; None when no
    end record is found (:mod:`zipfile` then refuses the file)."""
    end = fh.seek(0, os.SEEK_END)
    start = max(0, end - _EOCD.size - 0xFFFF)
    fh.seek(start)
    tail = fh.read(end - start)
    at = len(tail) - _EOCD.size
    if not (at >= 0 and tail[at : at + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0"):
        at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _EOCD.size > len(tail):
        return None
    fields = _EOCD.unpack_from(tail, at)
    members, size = int(fields[4]), int(fields[5])
    if members == 0xFFFF or size == 0xFFFFFFFF:  # zip64: the record just before its locator
        where = start + at - _LOCATOR - _EOCD64.size
        if where < 0:
            return None
        fh.seek(where)
        record = fh.read(_EOCD64.size)
        if len(record) < _EOCD64.size or record[:4] != b"PK\x06\x06":
            return None
        big = _EOCD64.unpack(record)
        members, size = int(big[7]), int(big[8])
    return members, size


def _member(zf: zipfile.ZipFile, key: str) -> zipfile.ZipInfo | None:
    """The member ``numpy.load`` gives as ``key``: named ``key``, else ``key.npy``."""
    for name in (key, f"{key}.npy"):
        try:
            return zf.getinfo(name)
        except KeyError:
            continue
    return None


def _decode(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    key: str,
    *,
    max_bytes: int,
    setting: str,
    what: str,
    shown: str,
    check: NpzCheck | None,
) -> np.ndarray:
    """One member: header checked, then at most the declared bytes decoded."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CorruptImageError(
            f"cannot read {what} '{shown}': its array {key!r} is compressed with method "
            f"{info.compress_type}, whose decoded size cannot be bounded; save it with "
            "numpy.savez or numpy.savez_compressed"
        )
    with zf.open(info) as f:
        shape, fortran, dtype = npy_header(f)
        if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None:
            raise CorruptImageError(
                f"cannot read {what} '{shown}': its array {key!r} holds {dtype} values, not "
                "numbers (Python objects are never unpickled); save an array of numbers"
            )
        if any(s < 0 for s in shape):
            raise CorruptImageError(f"cannot read {what} '{shown}': {key!r} has shape {shape}")
        nbytes = math.prod(shape) * dtype.itemsize
        declared = "x".join(map(str, shape)) or "scalar"
        if nbytes > max_bytes:
            raise ResourceLimitError(
                f"{what} '{shown}': its array {key!r} declares {declared} {dtype} "
                f"({size_text(nbytes)} decoded), over this process's limit of "
                f"{size_text(max_bytes)} ({setting}); it was not decoded"
            )
        header = f.tell()
        if info.file_size != header + nbytes:
            raise CorruptImageError(
                f"cannot read {what} '{shown}': its array {key!r} declares {declared} {dtype} "
                f"({header + nbytes:,} bytes with its header), but the archive stores "
                f"{info.file_size:,} bytes for it; it was not decoded"
            )
        if check is not None:
            check(key, shape, dtype)
        data = np.empty(math.prod(shape), dtype)
        view = data.view(np.uint8)
        done = 0
        while done < nbytes:
            part = f.read(min(_STEP, nbytes - done))
            if not part:
                raise CorruptImageError(
                    f"cannot read {what} '{shown}': its array {key!r} is truncated "
                    f"({done:,} of {nbytes:,} bytes)"
                )
            view[done : done + len(part)] = np.frombuffer(part, np.uint8)
            done += len(part)
        f.read(1)  # at the member's end: zipfile checks its CRC
    return data.reshape(shape[::-1]).T if fortran else data.reshape(shape)


def read_npz(
    source: str | os.PathLike[str] | BinaryIO,
    *,
    max_bytes: int,
    setting: str,
    what: str,
    names: Collection[str] | None = None,
    required: Collection[str] = (),
    check: NpzCheck | None = None,
    max_members: int = 64,
    ref: str | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` archive, each refused from its header when over ``max_bytes``.

    Parameters
    ----------
    source : path or binary file
        A path is opened with :func:`~scopefx.io.open_binary` (confined to the roots,
        non-blocking, regular files only); an open file is read as it is (open it that way).
    max_bytes : int
        Decoded bytes one array may have (its header's shape times its item size).
    setting : str
        What sets ``max_bytes`` (``"SCOPEFX_MAX_IMAGE_BYTES"``), named when it refuses.
    what : str
        What the archive is (``"flat field"``), for messages.
    names : collection of str, optional
        The arrays to decode (``numpy.load``'s keys: member names without ``.npy``); the
        others are not read. Default: all.
    required : collection of str
        Arrays that must be there.
    check : callable, optional
        ``check(name, shape, dtype)``, called with each array's header before it is decoded;
        it raises to refuse the array.
    max_members : int
        Members the archive may hold (its directory is refused unread when larger).
    ref : str, optional
        How to name the file in messages (default: the path).

    Returns
    -------
    dict of str to ndarray
        The arrays of ``names`` found in the archive, by name.

    Raises
    ------
    FileNotFoundError
        Nothing at the path.
    AccessDeniedError, UnsupportedFormatError
        The path leads out of the roots, or is no regular file (:func:`open_read`).
    ResourceLimitError
        An array over ``max_bytes``, or an archive of more than ``max_members`` members.
    CorruptImageError
        Not a readable ``.npz``: not a zip archive, an array that is not numbers (objects are
        never unpickled), a member whose stored size disagrees with its header, an
        unsupported compression, a truncated or damaged member.
    ConfigError
        An array of ``required`` is missing.
    """
    if isinstance(source, (str, os.PathLike)):
        shown = ref if ref is not None else os.fspath(source)
        with open_binary(source, ref=ref) as fh:
            return read_npz(
                fh, max_bytes=max_bytes, setting=setting, what=what, names=names,
                required=required, check=check, max_members=max_members, ref=shown,
            )  # fmt: skip
    shown = ref if ref is not None else str(getattr(source, "name", "<npz>"))
    try:
        directory = _directory(source)
        if directory is not None and (
            directory[0] > max_members or directory[1] > max_members * _ENTRY_BYTES
        ):
            raise ResourceLimitError(
                f"{what} '{shown}' declares {directory[0]:,} members in a directory of "
                f"{directory[1]:,} bytes, more than the {max_members} a {what} may hold; it was "
                "not read"
            )
        source.seek(0)
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise ResourceLimitError(
                    f"{what} '{shown}' holds {len(infos):,} members, more than the "
                    f"{max_members} a {what} may hold; it was not read"
                )
            keys = sorted({i.filename.removesuffix(".npy") for i in infos})
            missing = [k for k in required if _member(zf, k) is None]
            if missing:
                raise ConfigError(
                    f"'{shown}' holds no {missing[0]!r} array (it has {keys}); a {what} holds "
                    f"the arrays {sorted(required)}"
                )
            arrays = {}
            for key in keys if names is None else names:
                info = _member(zf, key)
                if info is not None:
                    arrays[key] = _decode(
                        zf, info, key, max_bytes=max_bytes, setting=setting, what=what,
                        shown=shown, check=check,
                    )  # fmt: skip
            return arrays
    except ScopefxError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
            RuntimeError, NotImplementedError, OSError) as exc:  # fmt: skip
        raise CorruptImageError(f"cannot read '{shown}' as an .npz {what} ({exc})") from exc
