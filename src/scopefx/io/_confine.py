"""Confined file access: how scopefx opens every file it reads or writes for a caller.

Checking a path and then opening it leaves a window in which the path can be swapped for a
symbolic link; so nothing here trusts a check made earlier.

* **Reads** open first (``O_NONBLOCK``, so a FIFO or a device cannot block the worker), then
  check what was opened: it must be a regular file, and with roots configured the opened file's
  own path (``/proc/self/fd``, or ``fstat`` compared with the resolved path elsewhere) must lie
  inside the readable roots (data roots and output roots).
* **Writes** never follow a link: the output's folders are opened one component at a time with
  ``O_NOFOLLOW`` from the output root (from the store's own folder when no roots are set), files
  are written to a fresh name created with ``O_EXCL | O_NOFOLLOW`` and renamed into place (a
  rename replaces a planted link, never its target). ``ENOSPC``/``EDQUOT`` become
  :class:`~scopefx.errors.DiskFullError`.

The roots come from the process environment (:meth:`DataRoots.from_env`); a remote caller
cannot change them.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import stat
import uuid
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import AccessDeniedError, DiskFullError, ResourceLimitError, UnsupportedFormatError
from ._roots import DATA_ROOTS_ENV, OUTPUT_ROOTS_ENV, DataRoots, inside

__all__ = [
    "check_name",
    "current_roots",
    "open_binary",
    "open_dir",
    "open_read",
    "read_bytes",
    "remove_file",
    "remove_tree",
    "write_file",
]

_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@functools.lru_cache(maxsize=8)
def _roots(data: str, outputs: str) -> DataRoots:
    return DataRoots.from_env({DATA_ROOTS_ENV: data, OUTPUT_ROOTS_ENV: outputs})


def current_roots() -> DataRoots:
    """The roots of this process (``SCOPEFX_DATA_ROOTS``, ``SCOPEFX_OUTPUT_ROOTS``), cached."""
    return _roots(os.environ.get(DATA_ROOTS_ENV, ""), os.environ.get(OUTPUT_ROOTS_ENV, ""))


def check_name(path: str | os.PathLike[str], ref: str | None = None) -> str:
    """``path`` as text; a NUL byte, which no file name can hold, is refused naming the item."""
    text = os.fsdecode(os.fspath(path))
    if "\x00" in text:
        raise UnsupportedFormatError(
            f"reference {ref if ref is not None else text!r} holds a NUL byte (\\x00), which no "
            "file name can contain; check how the list of references was built"
        )
    return text


def _opened_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_opened(fd: int, text: str, shown: str, allowed: tuple[str, ...] | None) -> None:
    st = os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"'{shown}' is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UnsupportedFormatError(
            f"'{shown}' is {_kind(st.st_mode)}, not a regular file; scopefx reads images and "
            "Zarr chunks from regular files only"
        )
    if allowed is None:
        return
    actual = _opened_path(fd)
    if actual is None:  # no /proc: the opened file must be the one the resolved path names
        actual = os.path.realpath(text)
        try:
            same = os.path.samestat(st, os.stat(actual))
        except OSError:
            same = False
        if not same:
            actual = "(a file that changed while being opened)"
    if not any(inside(actual, r) for r in allowed):
        raise AccessDeniedError(
            f"'{shown}' is refused: the file opened is {actual!r}, outside the roots of this "
            f"endpoint ({os.pathsep.join(allowed)}); a symbolic link leads out of them"
        )


def open_read(path: str | os.PathLike[str], *, ref: str | None = None) -> int:
    """Open a regular file for reading, confined to the readable roots; returns the descriptor.

    Raises
    ------
    AccessDeniedError
        The file opened lies outside the data and output roots (a link, or a swap after a check).
    UnsupportedFormatError
        Not a regular file (FIFO, device, socket, directory), or a NUL byte in the name.
    FileNotFoundError
        Nothing is there.
    """
    text = check_name(path, ref)
    shown = ref if ref is not None else text
    allowed = current_roots().readable
    if allowed is not None:  # cheap early refusal; the check that counts is after the open
        real = os.path.realpath(text)
        if not any(inside(real, r) for r in allowed):
            raise AccessDeniedError(
                f"'{shown}' is refused: it resolves to {real!r}, outside the roots of this "
                f"endpoint ({os.pathsep.join(allowed)}); a symbolic link may lead out of them"
            )
    fd = os.open(text, _READ)
    try:
        _check_opened(fd, text, shown, allowed)
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_binary(path: str | os.PathLike[str], *, ref: str | None = None) -> BinaryIO:
    """:func:`open_read` as a binary file object."""
    return os.fdopen(open_read(path, ref=ref), "rb")


def read_bytes(path: str | os.PathLike[str], *, limit: int, ref: str | None = None) -> bytes:
    """All bytes of a confined regular file, refused when it is larger than ``limit``."""
    with open_binary(path, ref=ref) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise ResourceLimitError(
                f"'{ref if ref is not None else os.fspath(path)}' is {size:,} bytes, over the "
                f"limit of {limit:,} bytes for this kind of file; it was not read"
            )
        return fh.read(limit + 1)[:limit]


# --------------------------------------------------------------------------------------------
# writing


def _walk(fd: int, parts: list[str], *, create: bool, shown: str) -> int:
    """Open ``parts`` below directory ``fd`` one by one, never following a link; closes ``fd``."""
    for part in parts:
        if part in ("", ".", ".."):
            os.close(fd)
            raise AccessDeniedError(f"'{shown}': path component {part!r} is not allowed")
        try:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            nxt = os.open(part, _DIR | _NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise AccessDeniedError(
                    f"'{shown}' is refused: {part!r} on its way is a symbolic link or not a "
                    "folder; scopefx never follows links inside its outputs"
                ) from None
            if exc.errno in _FULL:
                raise _disk_full(shown, exc) from exc
            raise
        os.close(fd)
        fd = nxt
    return fd


def open_dir(path: str | os.PathLike[str], *, create: bool = False) -> int:
    """Open (and with ``create`` make) the output folder ``path`` without following links.

    With output roots configured the walk starts at the output root holding ``path``, so no
    component below it may be a link; without roots it starts at ``path``'s parent as given.
    """
    text = os.path.abspath(check_name(path))
    roots = current_roots()
    if roots.writable is not None:
        anchor = next((r for r in roots.writable if inside(text, r)), None)
        if anchor is None:
            raise AccessDeniedError(
                f"'{text}' is outside the output roots of this endpoint "
                f"({os.pathsep.join(roots.writable)}); outputs are written only there"
            )
        rel = os.path.relpath(text, anchor)
        parts = [] if rel == "." else rel.split(os.sep)
        return _walk(os.open(anchor, _DIR), parts, create=create, shown=text)
    parent, name = os.path.split(text)
    if create:
        os.makedirs(parent, exist_ok=True)
    return _walk(os.open(parent or "/", _DIR), [name], create=create, shown=text)


def _disk_full(shown: str, exc: OSError) -> DiskFullError:
    return DiskFullError(
        f"cannot write '{shown}': {os.strerror(exc.errno or errno.ENOSPC)} (errno {exc.errno}); "
        "free space on the output's file system or write elsewhere, then run again with resume"
    )


#: The temporary names of :func:`_temporary`, which :func:`remove_partials` removes.
_PARTIAL = re.compile(r"\..+\.[0-9a-f]{32}\.partial")


def _temporary(name: str) -> str:
    """The fresh name a write of ``name`` goes to before it is published beside it."""
    return f".{name}.{uuid.uuid4().hex}.partial"


def write_file(
    root: str | os.PathLike[str],
    key: str,
    data: bytes | bytearray | memoryview,
    *,
    exclusive: bool = False,
    fsync: bool = True,
) -> None:
    """Write ``data`` to ``root/key`` atomically, without following any link below ``root``.

    ``exclusive``: fail with FileExistsError when ``key`` exists (the write is a claim).
    """
    parts = [p for p in key.split("/") if p]
    shown = os.path.join(os.fspath(root), *parts)
    dfd = _walk(open_dir(root, create=True), parts[:-1], create=True, shown=shown)
    name = parts[-1]
    tmp = _temporary(name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as fh:
                fh.write(data)
                fh.flush()
                if fsync:
                    os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
            os.unlink(tmp, dir_fd=dfd)
        else:
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        if exc.errno in _FULL:
            raise _disk_full(shown, exc) from exc
        raise
    finally:
        os.close(dfd)


def remove_partials(root: str | os.PathLike[str]) -> int:
    """Remove the temporary files that writes under ``root`` left when their process was
    killed between creating and publishing them (``.NAME.<32 hex>.partial``, regular files
    only), never following a link. Call it only while no other process writes there.
    Returns how many were removed."""
    dfd = open_dir(root)
    removed = 0
    try:
        for _, _, files, fd in os.fwalk(".", dir_fd=dfd, follow_symlinks=False):
            for name in files:
                if not _PARTIAL.fullmatch(name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        os.unlink(name, dir_fd=fd)
                        removed += 1
    finally:
        os.close(dfd)
    return removed


def remove_file(root: str | os.PathLike[str], key: str) -> None:
    """Remove ``root/key`` (a link is removed itself); missing is fine."""
    parts = [p for p in key.split("/") if p]
    shown = os.path.join(os.fspath(root), *parts)
    try:
        dfd = _walk(open_dir(root), parts[:-1], create=False, shown=shown)
    except FileNotFoundError:
        return
    try:
        os.unlink(parts[-1], dir_fd=dfd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        import shutil

        shutil.rmtree(parts[-1], dir_fd=dfd)
    finally:
        os.close(dfd)


def remove_tree(root: str | os.PathLike[str], key: str = "") -> None:
    """Remove the folder ``root/key`` and all below it, never following a link out of it."""
    import shutil

    parts = [p for p in key.split("/") if p]
    text = os.path.abspath(os.fspath(root))
    if not parts:
        text, last = os.path.split(text)
        parts = [last]
    try:
        dfd = _walk(open_dir(text), parts[:-1], create=False, shown=os.fspath(root))
    except FileNotFoundError:
        return
    try:
        st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(parts[-1], dir_fd=dfd)  # fd-based: links inside are removed, not followed
        else:
            os.unlink(parts[-1], dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


@contextlib.contextmanager
def created(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[BinaryIO]:
    """A file to write at ``path``, published atomically when the block ends without error.

    It is written under a fresh name (``O_EXCL | O_NOFOLLOW``) beside ``path``; at the end it is
    linked to ``path`` exclusively (FileExistsError if something is there) or, with ``replace``,
    renamed over it (a link at ``path`` is replaced, never followed).
    """
    text = os.path.abspath(check_name(path))
    parent, name = os.path.split(text)
    dfd = open_dir(parent, create=True)
    tmp = _temporary(name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                os.unlink(tmp, dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    except OSError as exc:
        if exc.errno in _FULL:
            raise _disk_full(text, exc) from exc
        raise
    finally:
        os.close(dfd)
