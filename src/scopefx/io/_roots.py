"""Data roots: the folders an endpoint lets remote callers read and write.

Remote functions receive references (paths on the endpoint's filesystem, ``store.zarr::array``
for an array inside a Zarr store). An endpoint confines them to the folders named in
``SCOPEFX_DATA_ROOTS`` (a list separated by ``os.pathsep``, set by the endpoint's
``worker_init``). With the variable unset (the local default) references are used as given,
with the caller's own file permissions.

When roots are set, a reference is refused, per item, when

* it contains a ``..`` component (in the path or in the array path), whatever it resolves to;
* it uses a URL scheme other than ``file://`` (``s3://``, ``http://``...);
* it is absolute and not inside a root;
* it resolves, after following symbolic links, to a place outside every root.

A relative reference is looked up in each root in turn; the first root where it exists wins
(for outputs that do not exist yet: the first root).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import AccessDeniedError, ConfigError
from ._refs import ZARR_SEP, split_ref

__all__ = ["DATA_ROOTS_ENV", "DataRoots"]

#: Environment variable that names the data roots (``os.pathsep``-separated).
DATA_ROOTS_ENV = "SCOPEFX_DATA_ROOTS"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class DataRoots:
    """The folders references may resolve into; ``roots=None`` allows everything.

    Examples
    --------
    >>> roots = DataRoots(("/data/instrument",))
    >>> roots.resolve("run1/s001.tif", must_exist=False)
    '/data/instrument/run1/s001.tif'
    >>> roots.resolve("/etc/passwd")
    Traceback (most recent call last):
    ...
    scopefx.errors.AccessDeniedError: '/etc/passwd' is outside the data roots ...
    """

    roots: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.roots is None:
            return
        if isinstance(self.roots, (str, os.PathLike)):
            raise ConfigError(
                f"roots must be a sequence of folders, got the single path {self.roots!r}"
            )
        clean = []
        for root in self.roots:
            text = os.fspath(root)
            if not text or not os.path.isabs(text):
                raise ConfigError(
                    f"data root {text!r} is not an absolute path; {DATA_ROOTS_ENV} lists "
                    f"absolute folders separated by {os.pathsep!r}"
                )
            clean.append(os.path.realpath(text))
        object.__setattr__(self, "roots", tuple(clean))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DataRoots:
        """The roots named by ``SCOPEFX_DATA_ROOTS``; unrestricted when it is unset or empty."""
        value = (os.environ if environ is None else environ).get(DATA_ROOTS_ENV, "")
        parts = [p for p in value.split(os.pathsep) if p.strip()]
        return cls(tuple(p.strip() for p in parts) if parts else None)

    @property
    def restricted(self) -> bool:
        return self.roots is not None

    def describe(self) -> list[str] | None:
        """JSON-able list of the roots (``None``: unrestricted)."""
        return None if self.roots is None else list(self.roots)

    def resolve(self, ref: str | os.PathLike[str], *, must_exist: bool = True) -> str:
        """Check one reference and return it as an absolute reference string.

        Parameters
        ----------
        ref : str or path-like
            ``path``, ``store.zarr::array/path`` or a ``file://`` URL.
        must_exist : bool
            For inputs: look a relative reference up in each root. For outputs (``False``)
            the path may not exist yet; its existing parent folders are checked.

        Raises
        ------
        AccessDeniedError
            ``..`` in the reference, an absolute path outside the roots, or a symbolic link
            that leads outside them.
        UnsupportedFormatError
            A URL scheme other than ``file://``, or an empty reference.
        """
        text = os.fsdecode(os.fspath(ref))
        path, array = split_ref(text)  # refuses unsupported schemes and empty references
        if self.roots is None:
            full = os.path.abspath(path)
            return full if array is None else f"{full}{ZARR_SEP}{array}"
        for part, what in ((str(path), "path"), (array or "", "array path")):
            if ".." in PurePosixPath(part.replace("\\", "/")).parts:
                raise AccessDeniedError(
                    f"{text!r} is refused: '..' in the {what} is not allowed on this endpoint; "
                    f"pass a path inside the data roots ({self._listed()})"
                )
        if path.is_absolute():
            full = os.path.normpath(path)
            if not any(_inside(full, r) for r in self.roots) and not any(
                _inside(os.path.realpath(full), r) for r in self.roots
            ):
                raise AccessDeniedError(
                    f"{text!r} is outside the data roots of this endpoint ({self._listed()}); "
                    "pass a path inside them, or a path relative to them"
                )
        else:
            candidates = [os.path.join(r, path) for r in self.roots]
            existing = [c for c in candidates if os.path.lexists(c)]
            full = existing[0] if existing else candidates[0]
        self.check(full if array is None else os.path.join(full, array), text)
        return full if array is None else f"{full}{ZARR_SEP}{array}"

    def check(self, path: str | os.PathLike[str], ref: str | None = None) -> None:
        """Refuse ``path`` when, symbolic links followed, it lies outside every root."""
        if self.roots is None:
            return
        real = os.path.realpath(path)
        if not any(_inside(real, r) for r in self.roots):
            shown = ref if ref is not None else os.fspath(path)
            raise AccessDeniedError(
                f"{shown!r} is refused: it resolves to {real!r}, outside the data roots of "
                f"this endpoint ({self._listed()}); a symbolic link may lead out of them"
            )

    def check_all(self, refs: Sequence[str]) -> None:
        """:meth:`check` every reference of a list (e.g. the tiles a table names)."""
        for ref in refs:
            path, array = split_ref(ref)
            self.check(path if array is None else Path(path) / array, ref)

    def _listed(self) -> str:
        return os.pathsep.join(self.roots or ())
