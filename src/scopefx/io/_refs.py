"""Image references: parsing, checking, and expanding CLI-style lists of them.

An image reference is a local filesystem path (``tile_001.tif``) or ``store::array`` for an
array inside a Zarr store (``run.zarr::raw/0``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..errors import EmptyFileError, ImageNotFoundError, ScopefxError, UnsupportedFormatError
from ._confine import _kind
from ._refsyntax import ZARR_SEP, split_ref
from ._roots import check_length

__all__ = ["IMAGE_SUFFIXES", "ResolvedRef", "find_images", "resolve_ref", "split_ref"]

logger = logging.getLogger(__name__)


#: Reader used for each file extension (lower case).
_KIND_BY_SUFFIX = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".btf": "tiff",  # BigTIFF, as bfconvert and QuPath name it (also .tf2, .tf8)
    ".tf2": "tiff",
    ".tf8": "tiff",
    ".png": "pillow",
    ".jpg": "pillow",
    ".jpeg": "pillow",
    ".bmp": "pillow",
    ".gif": "pillow",
    ".npy": "npy",
    ".zarr": "zarr",
}

#: Extensions :func:`find_images` treats as images (lower case). ``.zarr`` names a store
#: directory; a directory scan lists it only when it holds an array at its root.
IMAGE_SUFFIXES: tuple[str, ...] = tuple(_KIND_BY_SUFFIX)

_GLOB_CHARS = re.compile(r"[*?\[]")
_DIGITS = re.compile(r"(\d+)")


class ResolvedRef(NamedTuple):
    """A checked image reference (see :func:`resolve_ref`)."""

    ref: str
    """The reference as given, for messages."""
    path: Path
    """The file, or the Zarr store directory."""
    array: str | None
    """Path of the array inside the Zarr store; ``None`` for files and root arrays."""
    kind: str
    """Reader: ``"tiff"``, ``"pillow"``, ``"npy"``, ``"zarr"`` or ``"vendor"`` (a tile inside
    an OME-TIFF/CZI/ND2/LIF file, ``file::tile/N``; see :mod:`scopefx.io._vendor`)."""


def _supported() -> str:
    files = ", ".join(s for s in IMAGE_SUFFIXES if s != ".zarr")
    return f"{files} files and Zarr store directories ('store.zarr', 'store.zarr::array/path')"


def zarr_node_type(path: Path) -> str | None:
    """``"array"`` or ``"group"`` for a Zarr v2/v3 node directory, else ``None``.

    Reads only the node's metadata file (confined, bounded: :mod:`._confine`); Zarr itself is
    not imported.
    """
    if (path / ".zarray").is_file():
        return "array"
    if (path / ".zgroup").is_file():
        return "group"
    meta = path / "zarr.json"
    if meta.is_file():
        from ._confine import read_bytes
        from ._limits import EndpointLimits

        limit = EndpointLimits.from_env().max_meta_bytes
        try:
            node_type = json.loads(read_bytes(meta, limit=limit)).get("node_type")
        except ScopefxError:
            raise
        except (OSError, ValueError, AttributeError):
            return None
        return node_type if node_type in ("array", "group") else None
    return None


def resolve_ref(ref: str | os.PathLike[str]) -> ResolvedRef:
    """Check an image reference and choose its reader, before any decoding.

    Raises
    ------
    ImageNotFoundError
        The file or Zarr store does not exist.
    UnsupportedFormatError
        URL reference, unknown extension, a plain directory, ``::`` after something that is
        not a Zarr store directory, or a reference too long to name a file
        (:func:`~scopefx.io._roots.check_length`).
    EmptyFileError
        The file holds zero bytes.
    """
    text = os.fsdecode(os.fspath(ref))
    path, array = split_ref(text)
    check_length(os.path.join(path, array or ""), text)
    zarr_like = array is not None or path.suffix.lower() == ".zarr"
    if not path.exists():
        what = "Zarr store" if zarr_like else "image file"
        where = "" if path.is_absolute() else f" (relative paths start at {os.getcwd()})"
        if os.path.islink(path):  # a dangling link, or links in a loop (listed, not dropped)
            raise ImageNotFoundError(
                f"{what} not found: '{path}' is a symbolic link that leads nowhere (its target "
                "is missing, or the links form a loop)"
            )
        raise ImageNotFoundError(
            f"{what} not found: '{path}' (from {text!r}) does not exist; check the path{where}"
        )
    if path.is_dir():
        if array is not None or zarr_like or zarr_node_type(path) is not None:
            return ResolvedRef(text, path, array, "zarr")
        raise UnsupportedFormatError(
            f"'{path}' is a directory, not an image: pass the image files inside it, or expand "
            "it with scopefx.io.find_images() (the CLI does this for directories and globs)"
        )
    if array is not None:
        from ._vendor import is_vendor_file  # 'experiment.czi::tile/3': a tile inside the file

        if is_vendor_file(path):
            return ResolvedRef(text, path, array, "vendor")
        raise UnsupportedFormatError(
            f"{text!r} names array {array!r} inside '{path}', which is a file, not a Zarr store "
            "directory: use 'store.zarr::array/path' with a directory store"
        )
    kind = _KIND_BY_SUFFIX.get(path.suffix.lower())
    if kind == "zarr":
        raise UnsupportedFormatError(
            f"'{path}' is a file, but Zarr stores are read from directories only (zip stores "
            "are not supported); unzip it and pass the store directory"
        )
    if kind is None:
        suffix = path.suffix or "(no extension)"
        raise UnsupportedFormatError(
            f"unsupported image format {suffix!r} for '{path}': scopefx reads {_supported()}; "
            "convert the file, or rename it if its extension is wrong"
        )
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageNotFoundError(f"image file '{path}' disappeared while being read") from None
    if not stat.S_ISREG(st.st_mode):  # a FIFO read as 0 bytes: "still being written"
        raise UnsupportedFormatError(
            f"'{path}' is {_kind(st.st_mode)}, not a regular file; scopefx reads images from "
            "regular files only"
        )
    if st.st_size == 0:
        raise EmptyFileError(
            f"image file '{path}' is empty (0 bytes): it may still be being written or its copy "
            "failed; wait for the acquisition to finish or copy it again"
        )
    return ResolvedRef(text, path, None, kind)


def natural_key(text: str) -> tuple[list[str | int], str]:
    """Sort key that orders embedded numbers by value (``section_2`` before ``section_10``)."""
    parts: list[str | int] = [
        int(part) if i % 2 else part.lower() for i, part in enumerate(_DIGITS.split(text))
    ]
    return parts, text


def _inside_zarr_store(path: Path) -> bool:
    return any(part.lower().endswith(".zarr") for part in path.parts[:-1])


def _scan_dir(directory: Path, *, recursive: bool, found: set[str], seen: set[str]) -> None:
    real = os.path.realpath(directory)
    if real in seen:  # a symlink loop, or a directory reached twice
        return
    seen.add(real)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        logger.warning("cannot list directory %s: %s", directory, exc)
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        suffix = os.path.splitext(entry.name)[1].lower()
        try:
            is_dir = entry.is_dir()
        except OSError:  # a link loop (ELOOP): listed, so that its record says so
            is_dir = False
        if is_dir:
            if suffix == ".zarr":
                # a store is one image when it holds an array at its root; never descend into it
                if zarr_node_type(Path(entry.path)) == "array":
                    found.add(os.path.abspath(entry.path))
                else:
                    logger.debug("skipping Zarr store %s: not an array at its root", entry.path)
            elif recursive:
                _scan_dir(Path(entry.path), recursive=True, found=found, seen=seen)
        elif suffix in IMAGE_SUFFIXES:
            found.add(os.path.abspath(entry.path))


def _expand_glob(pattern: str, *, recursive: bool, found: set[str], seen: set[str]) -> None:
    for match in glob.glob(pattern, recursive=True):
        path = Path(match)
        if _inside_zarr_store(path):
            continue
        if path.is_dir():
            if path.suffix.lower() == ".zarr":
                found.add(os.path.abspath(match))
            else:
                _scan_dir(path, recursive=recursive, found=found, seen=seen)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            found.add(os.path.abspath(match))
        else:
            logger.debug("glob %r: skipping %s (not an image extension)", pattern, match)


def find_images(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], *, recursive: bool = False
) -> list[str]:
    """Expand files, directories and glob patterns into a sorted list of image references.

    Parameters
    ----------
    paths : iterable of str or path-like
        What a user typed: image files, ``store.zarr::array`` references, directories, and glob
        patterns (``*.tif``, ``runs/**/*.tif``; ``**`` always matches across folders). A single
        string or path is taken as a one-item list.
    recursive : bool
        Also list images in the subfolders of the directories given (or matched by a glob).

    Returns
    -------
    list of str
        Absolute references without duplicates, in natural order (``section_2`` before
        ``section_10``). A directory contributes its files whose extension is in
        :data:`IMAGE_SUFFIXES` (hidden files skipped) and its ``*.zarr`` stores that hold an
        array at their root (never their insides). A glob contributes its matches that have an
        image extension; matched directories are scanned as above. Items named explicitly are
        kept even when they do not exist or have an unsupported extension, so that the caller
        can report each one (:func:`read_image` raises the matching error). URLs are kept as
        given. A directory or glob that matches nothing contributes nothing.

    Examples
    --------
    >>> find_images(["run/", "extra/tile_7.tif"], recursive=True)  # doctest: +SKIP
    ['/data/run/section_2.tif', '/data/run/section_10.tif', '/data/extra/tile_7.tif']
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: set[str] = set()
    seen: set[str] = set()
    for item in paths:
        text = os.fsdecode(os.fspath(item))
        try:
            store, array = split_ref(text)
        except UnsupportedFormatError:
            found.add(text)  # a URL or an empty string: the reader reports it
            continue
        if array is not None:
            found.add(f"{os.path.abspath(store)}{ZARR_SEP}{array}")
            continue
        if ZARR_SEP in text:  # 'store.zarr::' names the array at the store's root
            found.add(os.path.abspath(store))
            continue
        if store.is_dir() and store.suffix.lower() != ".zarr":
            _scan_dir(store, recursive=recursive, found=found, seen=seen)
        elif store.exists() or not _GLOB_CHARS.search(text):
            found.add(os.path.abspath(store))  # a file, a store, or a missing item to report
        else:
            before = len(found)
            _expand_glob(text, recursive=recursive, found=found, seen=seen)
            if len(found) == before:
                logger.debug("glob %r matched no image", text)
    return sorted(found, key=natural_key)
