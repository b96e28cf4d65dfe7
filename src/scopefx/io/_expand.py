"""Take what a caller gave as "the images" and make it a list of references, refusing the
one mistake that otherwise goes unnoticed: a single string where a list was expected (it would
be iterated character by character)."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable

from ..errors import ConfigError, ImageNotFoundError
from ._refs import find_images

__all__ = ["as_image_refs"]

log = logging.getLogger(__name__)


def as_image_refs(
    refs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], *, what: str = "refs"
) -> list[str]:
    """A list of image references from ``refs``.

    A list (or any iterable) of strings or paths is taken as it is. A single string or path is
    expanded when it is a folder that exists here or a glob pattern (with
    :func:`find_images`, not recursive), and refused otherwise: a single file must be given
    as a one-item list, so that a typo never turns into a batch of one-character references.

    Raises
    ------
    ConfigError
        A single string that is neither a folder here nor a glob, bytes, or items that are
        not strings or paths (named with their position).
    ImageNotFoundError
        A single folder or glob in which there is no image (as ``scopefx focus`` says): a
        typo in a pattern must not read as "scored everything, nothing to report". An empty
        list stays an empty list.
    """
    if isinstance(refs, bytes):
        raise ConfigError(f"{what} must be a list of image references, got bytes {refs!r}")
    if isinstance(refs, (str, os.PathLike)):
        text = os.fspath(refs)
        if os.path.isdir(text) or glob.has_magic(text):
            found = find_images([text])
            log.info("expanded %s to %d image(s)", text, len(found))
            if not found:
                raise ImageNotFoundError(f"{what}: no images found in {text!r}")
            return found
        raise ConfigError(
            f"{what} must be a list of image references, got the single string {text!r}; pass "
            f"[{text!r}] for one image, or a folder (or glob) to score every image in it"
        )
    out = []
    for i, item in enumerate(refs):
        if not isinstance(item, (str, os.PathLike)):
            raise ConfigError(
                f"{what}[{i}] must be a string or path, got {type(item).__name__}: {item!r}"
            )
        out.append(os.fspath(item))
    return out
