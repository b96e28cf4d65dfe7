"""Reading pixels, as stored, from TIFF, PNG/JPEG/BMP/GIF, ``.npy`` and Zarr references."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    ConfigError,
    CorruptImageError,
    ImageNotFoundError,
    ScopefxError,
    UnsupportedFormatError,
)
from ._refs import ResolvedRef, resolve_ref, zarr_node_type

__all__ = ["read_image"]

logger = logging.getLogger(__name__)

_FORMAT = {"tiff": "TIFF", "pillow": "image", "npy": "NumPy .npy", "zarr": "Zarr"}

# What tifffile logs (instead of raising) when it meets a damaged file: a broken IFD chain
# drops the pages after the break, and a stack then silently reads as fewer pages.
_TIFF_DAMAGE = (
    "invalid page offset",
    "invalid offset to page",
    "invalid next page",
    "circular reference",
    "failed to reshape",
    "corrupted",
    "missing data",
)


@contextlib.contextmanager
def decoding(ref: str, kind: str) -> Iterator[None]:
    """Turn any third-party exception raised while decoding ``ref`` into CorruptImageError."""
    try:
        yield
    except (ScopefxError, MemoryError, PermissionError, Warning):
        raise
    except FileNotFoundError as exc:
        raise ImageNotFoundError(f"'{ref}' disappeared while being read ({exc})") from exc
    except Exception as exc:
        what = _FORMAT.get(kind, kind)
        if kind == "zarr":
            hint = "its metadata or a chunk is damaged or was written incompletely; write it again"
        else:
            hint = (
                f"the file is truncated, damaged, or not really {what} data (wrong extension?); "
                "copy or export it again"
            )
        raise CorruptImageError(
            f"cannot decode {what} '{ref}' ({type(exc).__name__}: {exc}): {hint}"
        ) from exc


class _ThreadLog(logging.Handler):
    """Collects ERROR records emitted by the current thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def tiff_damage(ref: str) -> Iterator[None]:
    """Raise CorruptImageError when tifffile logs damage while the block runs."""
    handler = _ThreadLog()
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(handler)
    try:
        yield
    finally:
        tiff_logger.removeHandler(handler)
    damage = [m for m in handler.messages if any(key in m for key in _TIFF_DAMAGE)]
    for message in handler.messages:
        if message not in damage:
            logger.warning("%s: tifffile: %s", ref, message)
    if damage:
        raise CorruptImageError(
            f"TIFF '{ref}' is damaged (tifffile: {'; '.join(damage)[:300]}): it is probably "
            "truncated, with pages missing; copy or export it again"
        )


def n_planes(shape: Sequence[int]) -> int:
    """Pages of an array image: axis 0 of a 3D+ array, unless it is one (H, W, 3|4) colour image."""
    if len(shape) >= 3 and not (len(shape) == 3 and shape[-1] in (3, 4)):
        return int(shape[0])
    return 1


def check_page(page: Any, n: int, ref: str) -> int:
    """Validate ``page`` against ``n`` pages; return it as an int."""
    if isinstance(page, bool) or not isinstance(page, (int, np.integer)):
        raise ConfigError(f"page must be an integer or None, got {page!r}")
    if not 0 <= page < n:
        raise ConfigError(
            f"page {page} is out of range for '{ref}', which has {n} page(s): expected 0 to {n - 1}"
        )
    return int(page)


def _read_tiff(r: ResolvedRef, page: int | None) -> np.ndarray:
    import tifffile

    with tiff_damage(r.ref), decoding(r.ref, r.kind), tifffile.TiffFile(r.path) as tif:
        if not tif.series:
            raise CorruptImageError(f"TIFF '{r.ref}' holds no image data; export it again")
        series = tif.series[0]
        n = len(series)
        if page is not None:
            return np.asarray(tif.asarray(key=check_page(page, n, r.ref), series=0))
        data = np.asarray(series.asarray())
        page_shape = tuple(series.keyframe.shape)
        if n > 1 and data.size == n * int(np.prod(page_shape)):
            data = data.reshape((n, *page_shape))  # (T, Z, ...) stacks -> (pages, ...)
        return data


def _read_pillow(r: ResolvedRef, page: int | None) -> np.ndarray:
    import imageio.v3 as iio

    with decoding(r.ref, r.kind):
        data = np.asarray(iio.imread(r.path, plugin="pillow"))
    if r.path.suffix.lower() == ".gif":  # frames come stacked, (frames, H, W, C)
        if page is not None:
            return data[check_page(page, data.shape[0], r.ref)]
        return data[0] if data.shape[0] == 1 else data
    if page is not None:
        check_page(page, 1, r.ref)
    return data


def _read_npy(r: ResolvedRef, page: int | None) -> np.ndarray:
    with decoding(r.ref, r.kind):
        loaded = np.load(r.path, mmap_mode=None if page is None else "r", allow_pickle=False)
        if not isinstance(loaded, np.ndarray):  # an .npz archive behind an .npy name
            loaded.close()
            raise UnsupportedFormatError(
                f"'{r.ref}' is an .npz archive, not a single .npy array; save one array with "
                "numpy.save() or rename the file to .npz and extract the array first"
            )
        if page is None:
            return loaded
        data = np.array(loaded[check_page(page, n_planes(loaded.shape), r.ref)])
        del loaded  # closes the memory map
        return data


def _list_arrays(store: Path, *, limit: int = 12) -> list[str]:
    """Paths of the arrays in a local Zarr store, found from its metadata files."""
    names: list[str] = []
    for root, dirs, _files in os.walk(store):
        node = Path(root)
        if zarr_node_type(node) == "array":
            names.append(node.relative_to(store).as_posix())
            dirs.clear()  # the rest is chunks
        dirs.sort()
        if len(names) >= limit:
            break
    return names


def _arrays_hint(store: Path) -> str:
    names = _list_arrays(store)
    if not names:
        return "the store holds no arrays"
    shown = ", ".join(f"'{store}::{n}'" if n != "." else f"'{store}'" for n in names)
    return f"arrays there: {shown}"


def open_zarr_array(r: ResolvedRef) -> Any:
    """Open the Zarr array a reference names, read-only; clear errors for groups and typos."""
    node = r.path / r.array if r.array else r.path
    node_type = zarr_node_type(node) if node.is_dir() else None
    if node_type is None and r.array is not None:
        raise ImageNotFoundError(
            f"no Zarr array '{r.array}' in store '{r.path}' (from {r.ref!r}); "
            f"{_arrays_hint(r.path)}"
        )
    if node_type is None:
        raise UnsupportedFormatError(
            f"'{r.path}' is not a Zarr store (no .zarray, .zgroup or zarr.json inside): pass "
            "image files, or a Zarr v2/v3 store as 'store.zarr::array/path'"
        )
    if node_type == "group":
        where = f"'{r.array}' in store '{r.path}'" if r.array else f"'{r.path}'"
        raise UnsupportedFormatError(
            f"{where} is a Zarr group, not an array: name the array to read as "
            f"'store.zarr::array/path'; {_arrays_hint(r.path)}"
        )
    import zarr

    with decoding(r.ref, r.kind):
        if r.array:
            return zarr.open_array(str(r.path), path=r.array, mode="r")
        return zarr.open_array(str(r.path), mode="r")


def _read_zarr(r: ResolvedRef, page: int | None) -> np.ndarray:
    array = open_zarr_array(r)
    with decoding(r.ref, r.kind):
        if page is None:
            return np.asarray(array[...])
        return np.asarray(array[check_page(page, n_planes(array.shape), r.ref)])


def _read_vendor(r: ResolvedRef, page: int | None) -> np.ndarray:
    from ._vendor import read_vendor_tile

    return read_vendor_tile(r.path, r.array, r.ref, page)


_READERS: dict[str, Callable[[ResolvedRef, int | None], np.ndarray]] = {
    "vendor": _read_vendor,
    "tiff": _read_tiff,
    "pillow": _read_pillow,
    "npy": _read_npy,
    "zarr": _read_zarr,
}


def read_image(ref: str | os.PathLike[str], *, page: int | None = None) -> np.ndarray:
    """Read an image's pixels as stored: no change of dtype, colour or orientation.

    Parameters
    ----------
    ref : str or path-like
        A local file (``.tif``/``.tiff``, ``.png``, ``.jpg``/``.jpeg``, ``.bmp``, ``.gif``,
        ``.npy``), a Zarr store holding an array at its root, or ``store.zarr::array/path`` for
        an array inside a Zarr v2 or v3 store.
    page : int, optional
        Read only this page (0-based) of a multi-page TIFF, animated GIF, or 3D+ array (axis 0).
        ``None`` (default) reads everything.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` for a grey image, ``(H, W, C)`` for colour; a multi-page TIFF gives
        ``(pages, H, W[, C])`` (several leading axes, e.g. ImageJ ``TZ``, are flattened into
        one), and ``.npy``/Zarr arrays come with their stored shape.

    Raises
    ------
    ImageNotFoundError
        The file, store, or array inside the store does not exist.
    EmptyFileError
        The file holds zero bytes.
    CorruptImageError
        The file cannot be decoded: truncated (including TIFF stacks whose later pages were
        cut off), damaged, or not of the type its extension says.
    UnsupportedFormatError
        Unknown extension, URL, plain directory, or a Zarr group where an array is needed.
    ConfigError
        ``page`` is not an integer or is out of range.
    PermissionError
        The file cannot be opened for reading.

    Notes
    -----
    TIFF is read with tifffile (compressed files through imagecodecs, BigTIFF included),
    PNG/JPEG/BMP/GIF with imageio's Pillow plugin (palette GIFs come out as RGB), ``.npy``
    with ``numpy.load(allow_pickle=False)``, and Zarr with ``zarr.open_array(mode="r")``.
    A TIFF is read from its first series; pages of another size form other series and are not
    returned.

    Examples
    --------
    >>> tile = read_image("run/section_2.tif")  # doctest: +SKIP
    >>> plane = read_image("run.zarr::raw/0", page=3)  # doctest: +SKIP
    """
    r = resolve_ref(ref)
    if page is not None and (isinstance(page, bool) or not isinstance(page, (int, np.integer))):
        raise ConfigError(f"page must be an integer or None, got {page!r}")
    data = _READERS[r.kind](r, page)
    logger.debug("read %s: shape %s, dtype %s", r.ref, data.shape, data.dtype)
    return data
