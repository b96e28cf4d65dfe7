"""Side files published safely: written in a private folder, then created at their place
exclusively, or over a regular file scopefx wrote (never through a link). Used for the
preview, the TIFF mosaic and registration's sidecars."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DiskFullError, ScopefxError
from ..io import open_binary
from ..io.confined import DIR_FLAGS, NOFOLLOW, open_dir
from ._plan import FusionPlan

__all__ = ["check_preview", "disk_full", "is_preview", "publish", "publish_preview", "staging_name"]


def publish(path: Path, write: Callable[[Path], Any], *, replace: bool) -> None:
    """Write a side file through ``write(tmp_path)`` in a private folder beside ``path``, then
    publish it there: linked exclusively, or with ``replace`` renamed over a regular file
    (never through a link). ``ENOSPC`` becomes DiskFullError.

    The private folder is made (mode 0700, a fresh name) in ``path``'s own folder, reached by
    the link-free walk from the output root, so the file is written under the output root,
    on its file system and its quota, and published without a copy: staged in the system's
    temporary folder, a TIFF mosaic of many GiB filled a shared ``/tmp`` (often a small
    memory file system) and was then copied."""
    import shutil

    if os.path.lexists(path):
        if not replace:
            raise ConfigError(
                f"{path} exists; scopefx creates its side files only where nothing is (pass "
                "--overwrite or --resume to replace a previous run's), or choose another output"
            )
        if path.is_symlink() or not path.is_file():
            raise ConfigError(
                f"{path} is a link or not a regular file; scopefx will not replace it"
            )
    text = os.path.abspath(path)
    parent, name = os.path.split(text)
    dfd = open_dir(parent, create=True)
    stage = staging_name(name)
    try:
        try:
            os.mkdir(stage, 0o700, dir_fd=dfd)
        except OSError as exc:  # name the file and its folder, not the hidden staging name
            if exc.errno in _FULL:
                raise disk_full(path, exc) from None
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc} (in {parent}); "
                              "choose another output") from None  # fmt: skip
        sfd = os.open(stage, DIR_FLAGS | NOFOLLOW, dir_fd=dfd)
        try:
            _write_and_publish(sfd, dfd, name, write, Path(parent, stage), replace=replace)
        except FileExistsError:
            raise ConfigError(
                f"{path} appeared while being written; choose another output"
            ) from None
        except OSError as exc:
            raise disk_full(path, exc) if exc.errno in _FULL else exc from None
        finally:
            os.close(sfd)
            with contextlib.suppress(OSError):
                shutil.rmtree(stage, dir_fd=dfd)
    finally:
        os.close(dfd)


def staging_name(name: str) -> str:
    """The private folder a side file ``name`` is written in before it is published beside it
    (a killed run leaves it; it is hidden, and named after the file)."""
    return f".{name}.{uuid.uuid4().hex}.staging"


def _write_and_publish(
    sfd: int,
    dfd: int,
    name: str,
    write: Callable[[Path], Any],
    shown: Path,
    *,
    replace: bool,
) -> None:
    # the writers take a path: give them one that names the opened folder itself where the
    # system has such paths, so a folder above it swapped for a link cannot redirect them
    proc = Path(f"/proc/self/fd/{sfd}")
    folder = proc if proc.is_dir() else shown
    write(folder / name)
    fd = os.open(name, os.O_RDONLY | NOFOLLOW, dir_fd=sfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{shown / name} is not a regular file; nothing was published")
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
    else:
        os.link(name, name, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)


_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def disk_full(path: Path, exc: OSError) -> DiskFullError:
    return DiskFullError(
        f"cannot write {path}: {os.strerror(exc.errno or errno.ENOSPC)}; free space on its "
        "file system or write elsewhere"
    )


def publish_preview(preview: str | os.PathLike[str], mosaic: Path, plan: FusionPlan) -> None:
    """:func:`write_preview` published with :func:`publish`: a PNG scopefx wrote (its
    ``scopefx`` text chunk) may be replaced, anything else at ``preview`` is kept and refused."""
    from PIL import Image, PngImagePlugin

    from .plot import write_preview

    path = Path(preview)
    replace = check_preview(path)

    def render(tmp: Path) -> None:
        png = tmp.with_name("render.png")
        write_preview(png, mosaic, plan)
        info = PngImagePlugin.PngInfo()
        info.add_text("scopefx", f"preview of {mosaic.name}")
        with Image.open(png) as im:
            im.save(tmp, format="PNG", pnginfo=info)

    publish(path, render, replace=replace)


def check_preview(preview: str | os.PathLike[str]) -> bool:
    """Refuse a preview path not named ``.png`` (``FusionJob.finish(preview=...)`` is not
    :class:`FuseOptions`) or holding something other than a preview scopefx wrote (checked
    by :func:`scopefx.fusion.prepare` before fusing, and again when it is written). Returns
    whether a previous preview is there to replace."""
    path = Path(preview)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"preview {str(path)!r}: a preview is a PNG; name it .png")
    replace = is_preview(path)
    if os.path.lexists(path) and not replace:  # not "exists (pass --overwrite)": it was passed
        raise ConfigError(
            f"preview {path} exists and is not a preview scopefx wrote; scopefx will not "
            "replace it: move it, or choose another preview path"
        )
    return replace


def is_preview(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file holding a preview scopefx wrote (a PNG with its
    ``scopefx`` text chunk): the only file a preview may replace."""
    from PIL import Image

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open_binary(path) as fh, Image.open(fh) as im:
            return "scopefx" in getattr(im, "text", {})
    except (OSError, ValueError, ScopefxError):
        return False
