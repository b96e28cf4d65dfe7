"""Reading pixels, as stored, from TIFF, PNG/JPEG/BMP/GIF, ``.npy`` and Zarr references."""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import (
    ConfigError,
    CorruptImageError,
    ImageNotFoundError,
    ResourceLimitError,
    ScopefxError,
    UnsupportedFormatError,
)
from ._confine import open_binary
from ._limits import LIMIT_ENV, EndpointLimits
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


#: Sizes of a last axis that holds an image's samples, not its columns: (H, W, 2) grey + alpha
#: (or two channels), (H, W, 3) RGB, (H, W, 4) RGBA.
SAMPLES_LAST = (2, 3, 4)


def n_planes(shape: Sequence[int]) -> int:
    """Pages of an array image: axis 0 of a 3D+ array, unless it is one image with its samples
    last (:data:`SAMPLES_LAST`): (H, W, 3|4) colour, or (H, W, 2) grey + alpha or two
    channels."""
    if len(shape) >= 3 and not (len(shape) == 3 and shape[-1] in SAMPLES_LAST):
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


@contextlib.contextmanager
def open_tiff(r: ResolvedRef) -> Iterator[Any]:
    """A ``tifffile.TiffFile`` over the confined file of ``r`` (both closed on exit).

    OME multi-file series are not followed (tifffile's ``_multifile=False``): another file
    named in the OME-XML (``/abs/outside.ome.tif``, ``../../x``) is never opened, and the file
    reads as its own pages.
    """
    import tifffile

    with (
        open_binary(r.path, ref=r.ref) as fh,
        tifffile.TiffFile(fh, name=r.path.name, _multifile=False) as tif,
    ):
        yield tif


def check_tiff_budget(tif: Any, series: Any, page: int | None, ref: str) -> None:
    """Refuse, from the headers, a TIFF whose pixels or tiles/strips are over the budget."""
    limits = EndpointLimits.from_env()
    keyframe = series.keyframe
    shape = tuple(keyframe.shape) if page is not None else tuple(series.shape)
    limits.check_image(shape, series.dtype, ref)
    if keyframe.compression == 1:  # uncompressed: read in place, no decoding buffer per segment
        return
    segment = (
        (keyframe.tilelength or 1, keyframe.tilewidth or 1)
        if keyframe.is_tiled
        else (min(keyframe.rowsperstrip or 1, keyframe.imagelength), keyframe.imagewidth)
    )
    limits.check_chunk((*segment, keyframe.samplesperpixel), series.dtype, ref)


def image_series(tif: Any, ref: str) -> tuple[int, Any]:
    """``(index, series)`` of the series a TIFF is read as: the first, unless it is a
    reduced-resolution image (NewSubfileType 1: a thumbnail written before the image) and a
    full-resolution series follows."""
    if not tif.series:
        raise CorruptImageError(f"TIFF '{ref}' holds no image data; export it again")
    full = [i for i, s in enumerate(tif.series) if not s.keyframe.is_reduced]
    index = full[0] if full else 0
    return index, tif.series[index]


#: TIFF PhotometricInterpretation SEPARATED: ink samples (InkSet 1, the default: CMYK).
_SEPARATED = 5


def cmyk_as_rgb(data: np.ndarray, axis: int, ref: str) -> np.ndarray:
    """RGB of CMYK ink samples (C, M, Y, K along ``axis``), in the dtype's range:
    ``R = (1 - C)(1 - K)``, ``G = (1 - M)(1 - K)``, ``B = (1 - Y)(1 - K)``, computed exactly in
    integers of twice the width and rounded.

    Taken as they are, C, M, Y were scored as R, G, B and K as alpha: a grey image printed as
    black ink scored 0 features. Only unsigned integers up to 32 bits have a known range to
    convert in; other dtypes (and anything but four inks) raise UnsupportedFormatError.
    """
    if data.dtype not in (np.uint8, np.uint16, np.uint32) or data.shape[axis] != 4:
        raise UnsupportedFormatError(
            f"'{ref}' holds {data.shape[axis]} {data.dtype} ink samples (photometric "
            "separated): scopefx converts CMYK to RGB for 4 samples of uint8, uint16 or uint32 "
            "only; export the image as RGB or grey"
        )
    wide = np.dtype(f"u{2 * data.dtype.itemsize}")
    top = wide.type(np.iinfo(data.dtype).max)
    inks = np.moveaxis(data, axis, 0)
    white = top - inks[3].astype(wide)  # (1 - K), times top
    rgb = np.empty((3, *inks.shape[1:]), dtype=data.dtype)
    for c in range(3):
        rgb[c] = ((top - inks[c].astype(wide)) * white + top // 2) // top
    return np.ascontiguousarray(np.moveaxis(rgb, 0, axis))


def _separated_as_rgb(data: np.ndarray, keyframe: Any, ref: str) -> np.ndarray:
    """A TIFF's pixels as RGB when its photometric interpretation is SEPARATED (CMYK inks;
    :func:`cmyk_as_rgb`), else unchanged. The samples axis is the page's ``S``, the data's
    last axes being those of one page."""
    if int(keyframe.photometric) != _SEPARATED:
        return data
    inkset = keyframe.tags.valueof(332, 1)  # InkSet: 1 CMYK, 2 other inks
    axes = str(keyframe.axes)
    if inkset != 1 or "S" not in axes or data.shape[-len(axes) :] != tuple(keyframe.shape):
        raise UnsupportedFormatError(
            f"'{ref}' holds ink samples (photometric separated, inkset {inkset}) that are "
            "not plain CMYK; export the image as RGB or grey"
        )
    return cmyk_as_rgb(data, data.ndim - len(axes) + axes.index("S"), ref)


def _read_tiff(r: ResolvedRef, page: int | None) -> np.ndarray:
    with tiff_damage(r.ref), decoding(r.ref, r.kind), open_tiff(r) as tif:
        index, series = image_series(tif, r.ref)
        n = len(series)
        check_tiff_budget(tif, series, page, r.ref)
        if page is not None:
            data = np.asarray(tif.asarray(key=check_page(page, n, r.ref), series=index))
            return _separated_as_rgb(data, series.keyframe, r.ref)
        data = np.asarray(series.asarray())
        page_shape = tuple(series.keyframe.shape)
        if n > 1 and data.size == n * int(np.prod(page_shape)):
            data = data.reshape((n, *page_shape))  # (T, Z, ...) stacks -> (pages, ...)
        return _separated_as_rgb(data, series.keyframe, r.ref)


#: PNG colour types of more than one sample a pixel, and their samples.
_PNG_SAMPLES = {2: 3, 4: 2, 6: 4}


def png_colour16(fh: Any) -> tuple[int, int, int] | None:
    """``(height, width, samples)`` of a 16-bit colour PNG (RGB, RGBA, grey + alpha), which
    Pillow would decode to 8 bits; ``None`` for any other file. The handle is rewound."""
    head = fh.read(26)
    fh.seek(0)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    samples = _PNG_SAMPLES.get(colour)
    return (height, width, samples) if depth == 16 and samples else None


def _read_pillow(r: ResolvedRef, page: int | None) -> np.ndarray:
    import imageio.v3 as iio

    with decoding(r.ref, r.kind), open_binary(r.path, ref=r.ref) as fh:
        wide = png_colour16(fh)
        if wide is not None:  # imagecodecs keeps the 16 bits
            import imagecodecs

            EndpointLimits.from_env().check_image(wide, np.uint16, r.ref)
            cap = 2 * int(np.prod(wide)) * 2 + 2**20  # deflate never doubles; chunks are small
            blob = fh.read(cap + 1)
            if len(blob) > cap:
                raise ResourceLimitError(
                    f"{r.ref}: a {wide[1]}x{wide[0]} 16-bit PNG of more than {cap} bytes: "
                    "not a plain image; refused before decoding"
                )
            data = np.asarray(imagecodecs.png_decode(blob))
        else:
            with pillow_pixel_limit(EndpointLimits.from_env().max_image_px):
                # grey palette as grey, transparency as alpha, CMYK as RGB
                mode = check_pillow_header(fh, r.ref)
                data = np.asarray(
                    iio.imread(fh, plugin="pillow", extension=r.path.suffix.lower(), mode=mode)
                )
    if r.path.suffix.lower() == ".gif":  # frames come stacked, (frames, H, W, C)
        if page is not None:
            return data[check_page(page, data.shape[0], r.ref)]
        return data[0] if data.shape[0] == 1 else data
    if page is not None:
        check_page(page, 1, r.ref)
    return data


#: What Pillow modes decode to, where it is not one byte per band (besides 16-bit "I;16*"),
#: for the budget.
_PILLOW_DTYPES: dict[str, Any] = {"I": np.int32, "F": np.float32}


def _is_grey_palette(im: Any) -> bool:
    """An open Pillow image of palette indices into grey levels only (every entry
    ``r == g == b``, no transparency), as some tools save 8-bit grey images: such an image
    is read as grey (H, W), not as the RGB its palette would give."""
    if im.mode != "P" or "transparency" in im.info:
        return False
    palette = im.getpalette() or []
    entries = np.asarray(palette[: len(palette) // 3 * 3], dtype=np.int64).reshape(-1, 3)
    return bool(len(entries)) and bool(np.all(entries == entries[:, :1]))


def pillow_read_mode(im: Any) -> str | None:
    """The Pillow mode an open image is read in: ``"L"`` for a grey palette
    (:func:`_is_grey_palette`), ``"RGBA"`` for a colour palette with a transparent entry (its
    transparency kept as alpha), else None (its own)."""
    if _is_grey_palette(im):
        return "L"
    return "RGBA" if im.mode == "P" and "transparency" in im.info else None


#: Pillow modes of colour models other than RGB, decoded to RGB (:func:`check_pillow_header`):
#: a CMYK JPEG read as stored had C, M, Y scored as R, G, B and its K taken as alpha.
_AS_RGB = ("CMYK", "YCbCr", "LAB")

_pillow_limit_lock = threading.Lock()
#: Reads inside :func:`pillow_pixel_limit` now, and Pillow's own limit before the first.
_pillow_limit_state: dict[str, Any] = {"readers": 0, "saved": None}


@contextlib.contextmanager
def pillow_pixel_limit(max_px: int) -> Iterator[None]:
    """Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 px:
    a warning above it, ``DecompressionBombError`` above twice it) lifted to ``max_px`` (this
    process's pixel budget) while the block runs; never lowered.

    Pillow's limit refused a valid 196 Mpx PNG within scopefx's budget as corrupt; the
    budget is checked from the header (:func:`check_pillow_header`) before anything is
    decoded. The setting is one for the whole process: the first read in lifts it, the last
    out puts back what it was.
    """
    from PIL import Image

    state = _pillow_limit_state
    with _pillow_limit_lock:
        if state["readers"] == 0:
            state["saved"] = Image.MAX_IMAGE_PIXELS
        state["readers"] += 1
        if Image.MAX_IMAGE_PIXELS is not None:  # None: the user turned it off
            Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, int(max_px))
    try:
        yield
    finally:
        with _pillow_limit_lock:
            state["readers"] -= 1
            if state["readers"] == 0:
                Image.MAX_IMAGE_PIXELS = state["saved"]


def check_pillow_header(fh: Any, ref: str) -> str | None:
    """Refuse, from its header, a PNG/JPEG/BMP/GIF over the pixel budget (all frames); the
    Pillow mode to read it in (:func:`pillow_read_mode`; ``"RGB"`` for CMYK, YCbCr and LAB).
    The handle is rewound.

    Run inside :func:`pillow_pixel_limit`: what Pillow's own limit then still refuses is over
    the budget too, and is refused as such (ResourceLimitError), not as a damaged file.
    """
    from PIL import Image

    limits = EndpointLimits.from_env()
    try:
        with Image.open(fh) as im:  # n_frames checks each GIF frame's size too
            width, height = im.size
            frames = int(getattr(im, "n_frames", 1))
            mode = pillow_read_mode(im) or ("RGB" if im.mode in _AS_RGB else None)
            bands = len(im.getbands())
            if mode is not None:
                bands = Image.getmodebands(mode)
            elif im.mode in ("P", "PA"):  # decoded to RGB(A), not to the indices
                bands = 4 if im.mode == "PA" else 3
            wide = im.mode.startswith("I;16")
            dtype = np.uint16 if wide else _PILLOW_DTYPES.get(im.mode, np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # the warning arrives as an exception only where warnings are errors
        raise ResourceLimitError(
            f"'{ref}' declares an image over this process's limit of {limits.max_image_px:,} "
            f"px ({LIMIT_ENV['max_image_px']}; Pillow: {exc}); it was not decoded. Split the "
            "image, or ask the endpoint's operator to raise the limit"
        ) from exc
    limits.check_image((frames, height, width, bands), dtype, ref)
    fh.seek(0)
    return mode


def npy_header(fh: Any) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """``(shape, fortran_order, dtype)`` of an ``.npy`` file; the handle is left at the data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    return tuple(shape), fortran, dtype


def _read_npy(r: ResolvedRef, page: int | None) -> np.ndarray:
    with decoding(r.ref, r.kind), open_binary(r.path, ref=r.ref) as fh:
        if fh.read(2) == b"PK":  # an .npz archive behind an .npy name
            raise UnsupportedFormatError(
                f"'{r.ref}' is an .npz archive, not a single .npy array; save one array with "
                "numpy.save() or rename the file to .npz and extract the array first"
            )
        fh.seek(0)
        shape, fortran, dtype = npy_header(fh)
        if dtype.hasobject:
            raise CorruptImageError(
                f"cannot decode NumPy .npy '{r.ref}': it holds Python objects, which are never "
                "unpickled (allow_pickle=False); save an array of numbers"
            )
        planes = n_planes(shape)
        want = shape if page is None else shape[1:] if planes > 1 else shape
        EndpointLimits.from_env().check_image(want, dtype, r.ref)
        order: Literal["C", "F"] = "F" if fortran else "C"
        if page is None:
            count = int(np.prod(shape, dtype=np.int64))
            data = np.fromfile(fh, dtype=dtype, count=count)
            if data.size != count:
                raise CorruptImageError(
                    f".npy '{r.ref}' is truncated: {data.size} of {count} values; save it again"
                )
            return data.reshape(shape, order=order)
        loaded = np.memmap(fh, dtype=dtype, mode="r", offset=fh.tell(), shape=shape, order=order)
        index = check_page(page, planes, r.ref)
        data = np.array(loaded[index] if planes > 1 else loaded)  # one image: page 0 is all
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

    from ._zarrstore import open_store

    with decoding(r.ref, r.kind):
        store = open_store(r.path)
        if r.array:
            array = zarr.open_array(store=store, path=r.array, mode="r")
        else:
            array = zarr.open_array(store=store, mode="r")
    EndpointLimits.from_env().check_chunk(array.chunks, array.dtype, r.ref)
    return array


def _read_zarr(r: ResolvedRef, page: int | None) -> np.ndarray:
    array = open_zarr_array(r)
    shape = tuple(array.shape)
    limits = EndpointLimits.from_env()
    if page is None:
        limits.check_image(shape, array.dtype, r.ref)
    else:
        limits.check_image(shape[1:] if n_planes(shape) > 1 else shape, array.dtype, r.ref)
    with decoding(r.ref, r.kind):
        if page is None:
            return np.asarray(array[...])
        planes = n_planes(array.shape)
        index = check_page(page, planes, r.ref)
        return np.asarray(array[index] if planes > 1 else array[...])  # one image: all of it


def _read_vendor(r: ResolvedRef, page: int | None) -> np.ndarray:
    from ._vendor import format_name, read_vendor_tile

    with decoding(r.ref, format_name(r.path)):  # a damaged file: said, not a traceback
        return read_vendor_tile(r.path, r.array, r.ref, page)


_READERS: dict[str, Callable[[ResolvedRef, int | None], np.ndarray]] = {
    "vendor": _read_vendor,
    "tiff": _read_tiff,
    "pillow": _read_pillow,
    "npy": _read_npy,
    "zarr": _read_zarr,
}


def read_image(ref: str | os.PathLike[str], *, page: int | None = None) -> np.ndarray:
    """Read an image's pixels as stored: no change of dtype, colour or orientation (but for
    colour models other than RGB, see Notes).

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
        Unknown extension, URL, plain directory, a Zarr group where an array is needed, or
        a TIFF of inks that are not CMYK, or CMYK of a dtype with no known range.
    ConfigError
        ``page`` is not an integer or is out of range.
    PermissionError
        The file cannot be opened for reading; AccessDeniedError (a subclass) when it lies
        outside the roots of this endpoint.
    ResourceLimitError
        The image (or one of its chunks, tiles or strips) is over the decoding budget.

    Notes
    -----
    TIFF is read with tifffile (compressed files through imagecodecs, BigTIFF included),
    PNG/JPEG/BMP/GIF with imageio's Pillow plugin (a 16-bit colour PNG, which Pillow would
    cut to 8 bits, with imagecodecs; palette images come out as RGB, as RGBA
    when the palette has a transparent entry, and as grey when every palette entry is a grey
    level, see :func:`pillow_read_mode`; CMYK, YCbCr and LAB come out as RGB), ``.npy``
    from its header then ``numpy.fromfile`` (never unpickled), and Zarr with
    ``zarr.open_array(mode="r")`` over a :class:`~scopefx.io._zarrstore.ConfinedStore`.
    Every file is opened through :mod:`scopefx.io._confine` (regular files inside the roots
    only), and the pixel and byte budgets of :class:`~scopefx.io.EndpointLimits` are checked
    from the headers before decoding.
    A TIFF is read from its first series (the first full-resolution one, when a thumbnail flagged
    as a reduced-resolution image comes first); pages of another size form other series and
    are not returned. A TIFF of CMYK inks (photometric separated) is read as RGB
    (:func:`cmyk_as_rgb`; refused where its dtype has no known range), never with K as alpha.
    Pillow's own decompression-bomb limit is lifted to the pixel budget while a file is read
    (:func:`pillow_pixel_limit`).

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
