"""Reading microscopy images and their metadata: TIFF, PNG/JPEG/BMP/GIF, ``.npy`` and Zarr.

High-level API: :func:`read_image` (pixels as stored), :func:`read_metadata` (geometry, pixel
size, Zeiss ATLAS / Fibics fields, without reading pixels) and :func:`find_images` (expand
files, directories and globs). An image reference is a local path, or ``store.zarr::array``
for an array inside a Zarr store (:func:`split_ref`).

Mosaics: :func:`read_tile_table` (CSV, Fiji ``TileConfiguration.txt``, or an instrument file
with stage positions), :func:`grid_tile_table` (tiles named by their place in a grid, with the
nominal overlap), :func:`flatten_z` (one plane per z-stack tile of an instrument file) and
OME-Zarr multiscale writing (:class:`OmeZarrSpec`, :func:`create_ome_zarr`).

On endpoints, :class:`DataRoots` confines references to the configured data roots (read only)
and outputs to the output roots, and :class:`EndpointLimits` bounds the work of one task.
"""

from ._confine import created, open_binary, read_bytes
from ._expand import as_image_refs
from ._grid import GRID_ORDERS, GRID_STARTS, grid_tile_table
from ._layout import layout_problems
from ._limits import EndpointLimits, TaskClock
from ._metadata import ImageMetadata, read_metadata
from ._omezarr import OmeZarrSpec, chunk_file, create_ome_zarr, fsync_file, multiscales_metadata
from ._read import SAMPLES_LAST, read_image
from ._refs import IMAGE_SUFFIXES, find_images, natural_key, split_ref
from ._roots import DATA_ROOTS_ENV, OUTPUT_ROOTS_ENV, DataRoots
from ._tablefiles import read_tile_table
from ._texttable import TextTable, parse_text_table, read_table_text
from ._tiles import (
    Tile,
    TileTable,
    flatten_z,
    translation,
)
from ._units import same_pixel_size

__all__ = [
    "DATA_ROOTS_ENV",
    "GRID_ORDERS",
    "GRID_STARTS",
    "IMAGE_SUFFIXES",
    "OUTPUT_ROOTS_ENV",
    "SAMPLES_LAST",
    "DataRoots",
    "EndpointLimits",
    "ImageMetadata",
    "OmeZarrSpec",
    "TaskClock",
    "TextTable",
    "Tile",
    "TileTable",
    "as_image_refs",
    "chunk_file",
    "create_ome_zarr",
    "created",
    "find_images",
    "flatten_z",
    "fsync_file",
    "grid_tile_table",
    "layout_problems",
    "multiscales_metadata",
    "natural_key",
    "open_binary",
    "parse_text_table",
    "read_bytes",
    "read_image",
    "read_metadata",
    "read_table_text",
    "read_tile_table",
    "same_pixel_size",
    "split_ref",
    "translation",
]
