"""A Zarr store whose every read and write goes through :mod:`._confine`.

:class:`ConfinedStore` is zarr's ``LocalStore`` with its file access replaced: chunk and
metadata reads open the file, then check that it is a regular file inside the readable roots
and within its size budget (a FIFO or a link out is refused, never followed or waited on);
writes and deletes walk the store's folders without following links and publish each file by
an atomic rename, optionally made durable (``fsync``) first.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Iterable
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.core.buffer.core import default_buffer_prototype
from zarr.storage import LocalStore

from ._codecguard import ChunkGuard, chunk_guard
from ._confine import open_binary, open_dir, remove_file, remove_tree, write_file
from ._limits import EndpointLimits

__all__ = ["ConfinedStore", "open_store"]

_META = ("zarr.json", ".zarray", ".zgroup", ".zattrs", ".zmetadata")


class ConfinedStore(LocalStore):
    """``LocalStore`` confined to the process's roots (see the module docs)."""

    def __init__(self, root: Any, *, read_only: bool = False, fsync: bool = False) -> None:
        super().__init__(root, read_only=read_only)
        self.fsync = fsync
        self.limits = EndpointLimits.from_env()
        # per folder of the store: the chunk check of the array there, None (an array whose
        # codecs keep sizes), or False (no array: look further up)
        self._guards: dict[str, ChunkGuard | bool | None] = {}

    def with_read_only(self, read_only: bool = False) -> ConfinedStore:
        return type(self)(self.root, read_only=read_only, fsync=self.fsync)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConfinedStore) and super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    # -- reading ------------------------------------------------------------------------------

    def _read(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None
    ) -> Buffer | None:
        limit = self.limits.max_meta_bytes if key.endswith(_META) else self.limits.max_chunk_bytes
        path = os.path.join(os.fspath(self.root), *key.split("/"))
        try:
            fh = open_binary(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            start, stop = 0, size
            if isinstance(byte_range, RangeByteRequest):
                start, stop = byte_range.start, min(byte_range.end, size)
            elif isinstance(byte_range, OffsetByteRequest):
                start = byte_range.offset
            elif isinstance(byte_range, SuffixByteRequest):
                start = max(0, size - byte_range.suffix)
            elif byte_range is not None:
                raise TypeError(f"unexpected byte_range, got {byte_range!r}")
            if stop - start > limit:
                from ..errors import ResourceLimitError

                raise ResourceLimitError(
                    f"Zarr file '{path}' is {size:,} bytes, over the limit of {limit:,} bytes "
                    "(SCOPEFX_MAX_CHUNK_BYTES / SCOPEFX_MAX_META_BYTES); it was not read"
                )
            fh.seek(start, io.SEEK_SET)
            data = fh.read(max(0, stop - start))
        if not key.endswith(_META):  # a chunk: no larger, decoded, than its array declares
            guard = self._guard(key)
            if guard is not None:
                guard(data, whole=byte_range is None)
        return prototype.buffer.from_bytes(data)

    def _guard(self, key: str) -> ChunkGuard | None:
        """The chunk check of the array that holds chunk ``key``: the nearest folder above it
        with array metadata (:func:`~._codecguard.chunk_guard`)."""
        parts = key.split("/")[:-1]
        for depth in range(len(parts), -1, -1):
            prefix = "/".join(parts[:depth])
            found = self._guards.get(prefix, True)
            if found is True:
                found = self._array_guard(prefix)
                self._guards[prefix] = found
            if found is not False:
                return found  # type: ignore[return-value]
        return None

    def _array_guard(self, prefix: str) -> ChunkGuard | bool | None:
        """The check for the array whose metadata is in folder ``prefix``; False if none is."""
        import json

        proto = default_buffer_prototype()
        for name in (".zarray", "zarr.json"):
            raw = self._read(f"{prefix}/{name}" if prefix else name, proto, None)
            if raw is None:
                continue
            try:
                meta = json.loads(raw.to_bytes())
            except ValueError:
                return False  # zarr refuses it when it reads it
            if not isinstance(meta, dict) or (name == "zarr.json"
                                              and meta.get("node_type") != "array"):  # fmt: skip
                return False
            if name == ".zarray":
                meta.setdefault("zarr_format", 2)
            ref = os.path.join(os.fspath(self.root), prefix) if prefix else os.fspath(self.root)
            return chunk_guard(meta, ref)
        return False

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        self._ensure_open_sync()
        return self._read(key, prototype or default_buffer_prototype(), byte_range)

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        if not self._is_open:
            await self._open()
        return await asyncio.to_thread(
            self._read, key, prototype or default_buffer_prototype(), byte_range
        )

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    # -- writing ------------------------------------------------------------------------------

    async def _open(self, *, mode: Any = None) -> None:
        if not self.read_only:
            os.close(open_dir(self.root, create=True))
        if not self.root.exists():
            raise FileNotFoundError(f"{self.root} does not exist")
        self._is_open = True

    def _ensure_open_sync(self) -> None:
        if not self._is_open:
            if not self.read_only:
                os.close(open_dir(self.root, create=True))
            if not self.root.exists():
                raise FileNotFoundError(f"{self.root} does not exist")
            self._is_open = True

    def _write(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(f"ConfinedStore.set(): value must be a Buffer, got {type(value)}")
        write_file(self.root, key, value.as_buffer_like(), exclusive=exclusive, fsync=self.fsync)

    def set_sync(self, key: str, value: Buffer) -> None:
        self._ensure_open_sync()
        self._write(key, value)

    async def _set(self, key: str, value: Buffer, exclusive: bool = False) -> None:
        if not self._is_open:
            await self._open()
        await asyncio.to_thread(self._write, key, value, exclusive)

    def delete_sync(self, key: str) -> None:
        self._ensure_open_sync()
        self._check_writable()
        remove_file(self.root, key)

    async def delete(self, key: str) -> None:
        self._check_writable()
        await asyncio.to_thread(remove_file, self.root, key)

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        if prefix.strip("/"):
            await asyncio.to_thread(remove_tree, self.root, prefix)

    async def clear(self) -> None:
        self._check_writable()
        await asyncio.to_thread(remove_tree, self.root)
        os.close(open_dir(self.root, create=True))


def open_store(
    path: str | os.PathLike[str], *, mode: str = "r", fsync: bool = False
) -> ConfinedStore:
    """A :class:`ConfinedStore` for ``path``, read-only unless ``mode`` writes."""
    return ConfinedStore(path, read_only=mode == "r", fsync=fsync)
