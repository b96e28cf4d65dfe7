"""Confined file access, for every layer that reads or writes on an endpoint.

Each function opens first and then checks what was opened (a regular file or folder whose real
path lies inside the caller's roots, :class:`scopefx.io.DataRoots`), never following a link out
of them, so a path swapped for a link between a check and a read is refused. Writes go only
under the output roots, created exclusively or over what scopefx wrote. Zarr stores are opened
through :class:`ConfinedStore`, which applies the same checks to every chunk.
"""

from ._confine import (
    _DIR as DIR_FLAGS,
)
from ._confine import (
    _NOFOLLOW as NOFOLLOW,
)
from ._confine import (
    check_name,
    created,
    current_roots,
    open_binary,
    open_dir,
    open_read,
    read_bytes,
    remove_file,
    remove_partials,
    remove_tree,
    write_file,
)
from ._limits import LIMIT_ENV, size_text
from ._npz import read_npz
from ._zarrstore import ConfinedStore, open_store

__all__ = [
    "DIR_FLAGS",
    "LIMIT_ENV",
    "NOFOLLOW",
    "ConfinedStore",
    "check_name",
    "created",
    "current_roots",
    "open_binary",
    "open_dir",
    "open_read",
    "open_store",
    "read_bytes",
    "read_npz",
    "remove_file",
    "remove_partials",
    "remove_tree",
    "size_text",
    "write_file",
]
