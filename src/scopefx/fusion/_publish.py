"""Side files published safely: written in a private folder, then created at their place
exclusively, or over a regular file scopefx wrote (never through a link). Used for the
preview, the TIFF mosaic and registration's sidecars."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DiskFullError
from ..io import created, open_binary
from ._plan import FusionPlan

__all__ = ["disk_full", "publish", "publish_preview"]


def publish(path: Path, write: Callable[[Path], Any], *, replace: bool) -> None:
    """Write a side file through ``write(tmp_path)`` in a private folder, then publish it at
    ``path``: created exclusively, or with ``replace`` over a regular file (never through a
    link). ``ENOSPC`` becomes DiskFullError."""
    import shutil
    import tempfile

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
    with tempfile.TemporaryDirectory(prefix="scopefx-") as private:
        tmp = Path(private) / path.name
        try:
            write(tmp)
        except OSError as exc:
            raise disk_full(tmp, exc) if exc.errno in _FULL else exc from None
        try:
            with created(path, replace=replace) as dst, open(tmp, "rb") as src:
                shutil.copyfileobj(src, dst)
        except FileExistsError:
            raise ConfigError(
                f"{path} appeared while being written; choose another output"
            ) from None


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

    def render(tmp: Path) -> None:
        png = tmp.with_name("render.png")
        write_preview(png, mosaic, plan)
        info = PngImagePlugin.PngInfo()
        info.add_text("scopefx", f"preview of {mosaic.name}")
        with Image.open(png) as im:
            im.save(tmp, format="PNG", pnginfo=info)

    replace = False
    if path.is_file() and not path.is_symlink():
        try:
            with open_binary(path) as fh, Image.open(fh) as im:
                replace = "scopefx" in getattr(im, "text", {})
        except (OSError, ValueError):
            replace = False
    publish(path, render, replace=replace)
