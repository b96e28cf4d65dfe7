"""Reading microscopy images and their metadata: TIFF, PNG/JPEG/BMP/GIF, ``.npy`` and Zarr.

High-level API: :func:`read_image` (pixels as stored), :func:`read_metadata` (geometry, pixel
size, Zeiss ATLAS / Fibics fields, without reading pixels) and :func:`find_images` (expand
files, directories and globs). An image reference is a local path, or ``store.zarr::array``
for an array inside a Zarr store (:func:`split_ref`).
"""

from ._metadata import ImageMetadata, read_metadata
from ._read import read_image
from ._refs import IMAGE_SUFFIXES, find_images, split_ref

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageMetadata",
    "find_images",
    "read_image",
    "read_metadata",
    "split_ref",
]
