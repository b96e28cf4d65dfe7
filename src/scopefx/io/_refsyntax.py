"""The syntax of an image reference: a local path, or ``store.zarr::array`` (a leaf module:
the roots, the readers and the tile tables all parse references, and none may import another
for it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UnsupportedFormatError

__all__ = ["ZARR_SEP", "split_ref"]

#: Separator between a Zarr store and the path of an array inside it.
ZARR_SEP = "::"

# A URL scheme: at least two letters so that Windows drive letters ("C:\\") are not one.
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")


def split_ref(ref: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """Split an image reference into a local path and the array path inside a Zarr store.

    Parameters
    ----------
    ref : str or path-like
        ``path/to/image.tif``, ``path/to/store.zarr`` or ``path/to/store.zarr::array/path``.
        ``file://`` URLs are accepted and turned into local paths.

    Returns
    -------
    path : pathlib.Path
        The file or the Zarr store, as given (not made absolute).
    array : str or None
        The array path inside the store, without leading or trailing ``/``; ``None`` when the
        reference has no ``::`` part or it is empty.

    Raises
    ------
    UnsupportedFormatError
        The reference is empty or is a URL other than ``file://`` (``s3://``, ``http://``...):
        only local paths are read.

    Examples
    --------
    >>> split_ref("run.zarr::raw/0")
    (PosixPath('run.zarr'), 'raw/0')
    >>> split_ref("tile_001.tif")
    (PosixPath('tile_001.tif'), None)
    """
    text = os.fsdecode(os.fspath(ref))
    if not text.strip():
        raise UnsupportedFormatError(
            f"empty image reference {text!r}: expected a file path or 'store.zarr::array/path'"
        )
    if "\x00" in text:
        raise UnsupportedFormatError(
            f"image reference {text!r} holds a NUL byte (\\x00), which no file name can "
            "contain; check how the list of references was built"
        )
    text = local_text(text)
    store, sep, array = text.partition(ZARR_SEP)
    if not sep:
        return Path(text), None
    if not store:
        raise UnsupportedFormatError(
            f"image reference {text!r} has no store before '::': expected 'store.zarr::array/path'"
        )
    return Path(store), (array.strip("/") or None)


def local_text(text: str) -> str:
    """``text`` as a local path: a ``file://`` URL's path, anything else as it is.

    Raises
    ------
    UnsupportedFormatError
        A URL other than ``file://`` (``s3://``, ``https://``...): only local paths are read
        (as a path, ``s3://b/t.csv`` would be looked for as the folder ``s3:`` here).
    """
    match = _SCHEME_RE.match(text)
    if not match:
        return text
    scheme = match.group(1).lower()
    if scheme != "file":
        raise UnsupportedFormatError(
            f"cannot read {text!r}: {scheme}:// references are not supported, scopefx reads "
            "local paths only; copy or mount the data locally and pass the local path"
        )
    text = text[match.end() :]
    return text[len("localhost") :] if text.startswith("localhost/") else text
