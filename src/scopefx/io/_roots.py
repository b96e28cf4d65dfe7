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

A relative reference is looked up in each root in turn; the first root where it exists wins.
Roots or not, a reference too long to name a file (:func:`check_length`) is refused, per item,
before it is looked up.

Data roots are read-only to scopefx. Outputs go under the **output roots**, named by
``SCOPEFX_OUTPUT_ROOTS`` (same syntax; for a facility endpoint, per mapped user): see
:meth:`DataRoots.resolve_output`. With data roots set and no output roots, every output is
refused. Output roots are readable too (a planned mosaic is re-opened from there). Where the
two nest, the innermost root that holds a path decides (an output root inside a data root is
writable; a data root inside an output root is not).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import AccessDeniedError, ConfigError, ImageNotFoundError, UnsupportedFormatError
from ._refsyntax import ZARR_SEP, split_ref

__all__ = ["DATA_ROOTS_ENV", "OUTPUT_ROOTS_ENV", "DataRoots", "check_length", "shown_ref"]

#: Environment variable that names the data roots (``os.pathsep``-separated).
DATA_ROOTS_ENV = "SCOPEFX_DATA_ROOTS"
#: Environment variable that names the output roots (``os.pathsep``-separated).
OUTPUT_ROOTS_ENV = "SCOPEFX_OUTPUT_ROOTS"


#: Longest name of one file or folder, and longest path, in bytes: Linux's ``NAME_MAX`` and
#: ``PATH_MAX`` less its NUL (common file systems allow no longer names). The system refuses a
#: longer one with a bare ``OSError`` (``ENAMETOOLONG``).
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4095


def shown_ref(text: str, width: int = 100) -> str:
    """``text`` quoted for a message, its middle cut out when it is longer than ``width``."""
    if len(text) <= width:
        return repr(text)
    keep = width // 2
    return f"{text[:keep]!r}...{text[-keep // 2 :]!r} ({len(text):,} characters)"


def check_length(path: str, ref: str | None = None) -> None:
    """Refuse ``path`` when no file can have it: a name in it over :data:`NAME_MAX_BYTES` or
    the whole over :data:`PATH_MAX_BYTES`; the error names ``ref`` (default ``path``), cut.

    Raises
    ------
    UnsupportedFormatError
        The path is too long to name a file.
    """
    sep = os.fsencode(os.sep)
    data = os.fsencode(path).rstrip(sep) or sep  # "folder/" names "folder"
    longest = max(len(name) for name in data.split(sep))
    if longest <= NAME_MAX_BYTES and len(data) <= PATH_MAX_BYTES:
        return
    why = (
        f"a name in it is {longest:,} bytes, over the {NAME_MAX_BYTES} a file name may have"
        if longest > NAME_MAX_BYTES
        else f"its path is {len(data):,} bytes, over the {PATH_MAX_BYTES} a path may have"
    )
    raise UnsupportedFormatError(
        f"reference {shown_ref(ref if ref is not None else path)} is too long to name a file: "
        f"{why}; check how the list of references was built"
    )


def inside(path: str, root: str) -> bool:
    """Whether absolute ``path`` is ``root`` or below it (lexically)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


_inside = inside


def _clean(roots: Sequence[str | os.PathLike[str]], env: str) -> tuple[str, ...]:
    if isinstance(roots, (str, os.PathLike)):
        raise ConfigError(f"roots must be a sequence of folders, got the single path {roots!r}")
    clean = []
    for root in roots:
        text = os.fspath(root)
        if not text or not os.path.isabs(text):
            raise ConfigError(
                f"root {text!r} is not an absolute path; {env} lists absolute folders "
                f"separated by {os.pathsep!r}"
            )
        clean.append(os.path.realpath(text))
    return tuple(clean)


def _split_env(value: str) -> tuple[str, ...] | None:
    parts = [p.strip() for p in value.split(os.pathsep) if p.strip()]
    return tuple(parts) if parts else None


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
    outputs: tuple[str, ...] | None = None
    """Output roots (``SCOPEFX_OUTPUT_ROOTS``); ``None``: none configured."""

    def __post_init__(self) -> None:
        if self.roots is not None:
            object.__setattr__(self, "roots", _clean(self.roots, DATA_ROOTS_ENV))
        if self.outputs is not None:
            object.__setattr__(self, "outputs", _clean(self.outputs, OUTPUT_ROOTS_ENV))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DataRoots:
        """The roots named by ``SCOPEFX_DATA_ROOTS`` and ``SCOPEFX_OUTPUT_ROOTS``; unrestricted
        when the data roots are unset or empty."""
        env = os.environ if environ is None else environ
        return cls(
            _split_env(env.get(DATA_ROOTS_ENV, "")), _split_env(env.get(OUTPUT_ROOTS_ENV, ""))
        )

    @property
    def readable(self) -> tuple[str, ...] | None:
        """Folders files may be read from (data and output roots); ``None``: anywhere."""
        if self.roots is None:
            return None
        return self.roots + (self.outputs or ())

    @property
    def writable(self) -> tuple[str, ...] | None:
        """Output roots when restricted (``()`` when none are set); ``None``: anywhere."""
        if self.roots is None:
            return None
        return self.outputs or ()

    @property
    def restricted(self) -> bool:
        return self.roots is not None

    def describe(self) -> list[str] | None:
        """JSON-able list of the roots (``None``: unrestricted)."""
        return None if self.roots is None else list(self.roots)

    def describe_outputs(self) -> list[str] | None:
        """JSON-able list of the output roots (``None``: unrestricted)."""
        return None if self.roots is None else list(self.outputs or ())

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
            A URL scheme other than ``file://``, an empty reference, or one too long to name
            a file (with the root it lies in).
        """
        text = os.fsdecode(os.fspath(ref))
        path, array = split_ref(text)  # refuses unsupported schemes, empty and NUL references
        check_length(os.path.join(path, array or ""), text)  # before it is looked up
        if self.roots is None:
            full = os.path.abspath(path)
            check_length(os.path.join(full, array or ""), text)
            return full if array is None else f"{full}{ZARR_SEP}{array}"
        for part, what in ((str(path), "path"), (array or "", "array path")):
            if ".." in PurePosixPath(part.replace("\\", "/")).parts:
                raise AccessDeniedError(
                    f"{text!r} is refused: '..' in the {what} is not allowed on this endpoint; "
                    f"pass a path inside the data roots ({self._listed()})"
                )
        if path.is_absolute():
            full = os.path.normpath(path)
            readable = self.readable or ()
            if not any(_inside(full, r) for r in readable) and not any(
                _inside(os.path.realpath(full), r) for r in readable
            ):
                raise AccessDeniedError(
                    f"{text!r} is outside the data roots of this endpoint ({self._listed()}); "
                    "pass a path inside them, or a path relative to them"
                )
        else:
            candidates = [os.path.join(r, path) for r in self.readable or ()]
            existing = [c for c in candidates if os.path.lexists(c)]
            if must_exist and not existing and candidates:  # said "relative to the task's
                # working folder", where nothing was looked up
                raise ImageNotFoundError(
                    f"{text!r} does not exist in the data roots of this endpoint "
                    f"({self._listed()}), where a relative reference is looked up"
                )
            full = existing[0] if existing else candidates[0]
        check_length(os.path.join(full, array or ""), text)  # with the root it lies in
        self.check(full if array is None else os.path.join(full, array), text)
        return full if array is None else f"{full}{ZARR_SEP}{array}"

    def check(self, path: str | os.PathLike[str], ref: str | None = None) -> None:
        """Refuse ``path`` when, symbolic links followed, it lies outside every root."""
        if self.roots is None:
            return
        try:
            real = os.path.realpath(path)
        except OSError as exc:  # a component swapped between a link and a file meanwhile
            raise AccessDeniedError(
                f"{ref if ref is not None else os.fspath(path)!r} is refused: it changed while "
                f"being checked ({exc.strerror})"
            ) from None
        if not any(_inside(real, r) for r in self.readable or ()):
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
        return os.pathsep.join(self.readable or ())

    def is_writable(self, path: str) -> bool:
        """Whether absolute, resolved ``path`` may be written: the innermost root holding it
        is an output root, and no data root lies inside it (an output folder that holds a
        data root would take it along when replaced: ``overwrite`` removed one). Unrestricted:
        always."""
        if self.roots is None:
            return True
        outputs = self.outputs or ()
        if any(_inside(r, path) and r not in outputs for r in self.roots):
            return False
        holding = [(len(r), r in (self.outputs or ())) for r in self.roots + (self.outputs or ())
                   if _inside(path, r)]  # fmt: skip
        if not holding:
            return False
        depth = max(n for n, _ in holding)
        return all(out for n, out in holding if n == depth)

    def resolve_output(self, ref: str | os.PathLike[str]) -> str:
        """Check an output reference; return the absolute path to write.

        A relative reference resolves under the first output root; an absolute one must lie
        inside an output root (and not inside a data root nested in it). ``..`` is refused, and
        so is a link on the way that leads out of the output roots. Unrestricted (no data
        roots): the path as given, made absolute.

        Raises
        ------
        AccessDeniedError
            No output roots configured, ``..``, a path outside the output roots, a data root.
        UnsupportedFormatError
            The output is too long to name a file.
        """
        text = os.fsdecode(os.fspath(ref))
        path, array = split_ref(text)
        check_length(str(path), text)
        if array is not None:
            raise AccessDeniedError(
                f"output {text!r} names an array inside a store; an output is a file or a "
                "folder (e.g. 'run/mosaic.ome.zarr')"
            )
        if self.roots is None:
            full = os.path.abspath(path)
            check_length(full, text)
            return full
        if not self.outputs:
            raise AccessDeniedError(
                f"output {text!r} is refused: this endpoint sets no output roots "
                f"({OUTPUT_ROOTS_ENV}); its data roots are read-only. Ask its operator to "
                f"set {OUTPUT_ROOTS_ENV} in the endpoint's worker_init"
            )
        if ".." in PurePosixPath(str(path).replace("\\", "/")).parts:
            raise AccessDeniedError(
                f"output {text!r} is refused: '..' is not allowed on this endpoint; pass a path "
                f"inside the output roots ({os.pathsep.join(self.outputs)})"
            )
        full = os.path.normpath(path if path.is_absolute() else os.path.join(self.outputs[0], path))
        # resolve the part that exists (links there must stay inside), keep the rest as named
        head, tail = full, []
        while not os.path.lexists(head) and os.path.dirname(head) != head:
            head, name = os.path.split(head)
            tail.append(name)
        if os.path.islink(head) and not tail:
            raise AccessDeniedError(
                f"output {text!r} is refused: {head!r} is a symbolic link; scopefx writes "
                "outputs only to real folders and files it creates"
            )
        real = os.path.join(os.path.realpath(head), *reversed(tail))
        check_length(real, text)
        if real in self.outputs:
            raise AccessDeniedError(
                f"output {text!r} is refused: it is the output root {real!r} itself; name a "
                "file or folder inside it (e.g. 'run1/mosaic.ome.zarr')"
            )
        if not self.is_writable(real):
            held = [r for r in self.roots if _inside(r, real) and r not in self.outputs]
            if held:
                where = f"which holds the data root {held[0]!r} (read-only)"
            elif any(_inside(real, r) for r in self.roots):
                where = "in a data root (read-only)"
            else:
                where = "outside the output roots"
            raise AccessDeniedError(
                f"output {text!r} is refused: it resolves to {real!r}, {where}; outputs go "
                f"only under the output roots of this endpoint ({os.pathsep.join(self.outputs)})"
            )
        return real
