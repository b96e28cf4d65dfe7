"""Resumable output: what a fusion has finished, recorded only after the data is durable.

While a write is under way, ``.scopefx/`` inside the output folder holds:

* ``plan.json`` — the fingerprint of everything that determines the output's bytes (tiles,
  transforms, parameters, flat-field), written before any pixel. A resume with a different
  fingerprint is refused: mixing two plans would corrupt the mosaic silently.
* ``done/<level>/<i>.<j>[.<k>]`` — one empty marker per finished chunk, created atomically
  (write, fsync, rename) *after* the chunk's file was fsync'd. Marker files, not an appended
  log, so that workers on other nodes of a shared filesystem never interleave writes.

When every chunk is done, the fingerprint and the run's summary go into the root group's
attributes (``"scopefx"``) and ``.scopefx/`` is removed, so the finished output is a clean
Zarr hierarchy (Zarr warns about folders it does not know when listing a group).

A chunk whose marker is missing is simply computed and written again; chunk writes are
idempotent (same bytes), so a kill at any moment, including half-way through a chunk file,
is repaired by the resume. A resume first removes, under the store's exclusive lock (no other
job writing), the temporary files of writes that a kill caught before they were published, and
so does the finish (a worker killed mid-write whose chunk another worker then wrote).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .._checks import json_safe
from ..errors import ConfigError
from ..io.confined import open_dir, read_bytes, remove_partials, remove_tree, write_file

__all__ = ["Progress"]

STATE_DIR = ".scopefx"
#: What ``plan.json`` and the finished attributes say this store is; ``overwrite`` removes
#: only a store of this kind.
KIND = "fusion"
_META_LIMIT = 16 * 2**20


def unfinished(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a mosaic store that scopefx started and did not finish (killed, or
    stopped by an error): ``resume`` finishes it with the same tiles and options, and
    ``overwrite`` starts it over.

    Examples
    --------
    >>> unfinished("no/such/mosaic.ome.zarr")
    False
    """
    state = Path(path, STATE_DIR)
    return not Path(path).is_symlink() and state.is_dir() and (state / "plan.json").is_file()


def _atomic_write(path: Path, text: str) -> None:
    """Write ``path`` (inside an output store) atomically, never following a link."""
    write_file(path.parent, path.name, text.encode())


def _read_json(path: Path) -> Any:
    return json.loads(read_bytes(path, limit=_META_LIMIT))


def _differences(before: Any, now: dict[str, Any]) -> str:
    """What differs between a store's recorded fingerprint parts and this job's, in words:
    each differing part by name, a blending parameter with both values (empty when the store
    recorded none: written by an older scopefx)."""
    if not isinstance(before, dict) or not before:
        return ""
    out = []
    for name, value in now.items():
        old = before.get(name)
        if old == value:
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            keys = sorted(k for k in set(value) | set(old) if old.get(k) != value.get(k))
            out += [f"{k} ({_value(old.get(k))}, now {_value(value.get(k))})" for k in keys]
        else:
            out.append(name)
    return ", ".join(out)


def _value(v: Any) -> str:
    return "the default" if v is None else repr(v)


class Progress:
    """The completion record of one output (see the module docs)."""

    def __init__(
        self, out: str | os.PathLike[str], fingerprint: str, parts: dict[str, Any] | None = None
    ) -> None:
        self.out = Path(out)
        self.fingerprint = fingerprint
        # what went into the fingerprint, by name (digests, and the blending parameters as
        # they are): a refused resume names what differs
        self.parts = dict(parts or {})
        self.dir = self.out / STATE_DIR

    # -- life cycle ---------------------------------------------------------------------------

    def begin(self, *, resume: bool, overwrite: bool, protect: Sequence[str] = ()) -> str:
        """Prepare the output folder. Returns ``"new"``, ``"resume"`` or ``"complete"``.

        The output is claimed by creating ``.scopefx/plan.json`` exclusively, so of two jobs
        started on one output at once exactly one goes on; ``overwrite`` removes only a
        scopefx store of the same kind that no job is writing.

        Raises
        ------
        ConfigError
            The path holds something else, or a different plan, and ``overwrite`` is not set;
            ``overwrite`` would delete one of the ``protect`` paths (the tiles), or something
            scopefx did not write, or a store another job is writing.
        """
        out = self.out
        if out.is_symlink():
            raise ConfigError(
                f"output {out} is a symbolic link; scopefx writes only to folders it creates"
            )
        if out.exists() and overwrite:
            self._check_protect(protect)
            if self.kind() != KIND:
                raise ConfigError(
                    f"--overwrite refused: {out} is not a scopefx mosaic (it holds something "
                    "scopefx did not write); overwrite replaces only a mosaic scopefx wrote. "
                    "Choose another output path"
                )
            with self.hold(exclusive=True):
                remove_tree(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output {out} is a file; remove it or choose another path")
        if out.exists() and any(out.iterdir()):
            return self._existing(resume)
        try:
            write_file(
                self.dir,
                "plan.json",
                json.dumps(
                    {"fingerprint": self.fingerprint, "kind": KIND, "parts": self.parts},
                    allow_nan=False,
                ).encode(),
                exclusive=True,
            )
        except FileExistsError:  # another job claimed it between our look and our claim
            return self._existing(resume)
        os.close(open_dir(self.dir / "done", create=True))
        return "new"

    def _existing(self, resume: bool) -> str:
        out = self.out
        plan_file = self.dir / "plan.json"
        finished = self._finished()
        record: dict[str, Any] = {}
        if finished is not None:
            record = finished
        elif plan_file.is_file():
            record = _read_json(plan_file)
        elif self.dir.is_dir():
            raise ConfigError(
                f"output {out} is being started by another job, or a run was stopped before "
                "it recorded its plan; choose another output path, or once no job writes it, "
                "pass --overwrite to start over"
            )
        else:
            raise ConfigError(
                f"output {out} already holds something that scopefx did not write; "
                "choose another path"
            )
        started = record.get("fingerprint")
        if started != self.fingerprint:
            differs = _differences(record.get("parts"), self.parts)
            what = (f"different: {differs}" if differs
                    else f"plan {started}, this job {self.fingerprint}")  # fmt: skip
            if finished is None:  # a run that failed leaves the same as one under way
                raise ConfigError(
                    f"output {out} holds an unfinished mosaic of other tiles or parameters "
                    f"({what}): another job is making it, or an earlier run stopped; choose "
                    "another output path, or once no job writes it, pass --overwrite to start "
                    "over (--resume continues only the same tiles and options)"
                )
            raise ConfigError(
                f"output {out} was made by another job, with other tiles or parameters "
                f"({what}); choose another output path, or pass --overwrite to replace it"
            )
        if not resume:
            state = "complete" if self.is_complete() else "unfinished"
            raise ConfigError(
                f"output {out} exists ({state}); pass --resume to finish it or "
                "--overwrite to start over"
            )
        if finished is not None:
            if self.dir.is_dir():
                with self.hold(exclusive=True):
                    remove_tree(self.dir)  # killed while tidying up
            return "complete"
        with self.hold(exclusive=True):  # no job writes: what a killed one left half-written
            remove_partials(out)
        return "resume"

    def kind(self) -> str | None:
        """``"fusion"`` for a store scopefx wrote (finished or not), else ``None``."""
        if self.out.is_symlink() or not self.out.is_dir():
            return None
        finished = self._finished()
        if finished is not None:
            return str(finished.get("kind", KIND))
        try:
            plan = _read_json(self.dir / "plan.json")
        except FileNotFoundError:  # stopped between making its state folder and its plan
            return KIND if self._half_started() else None
        except (OSError, ValueError):
            return None
        return str(plan.get("kind", KIND)) if "fingerprint" in plan else None

    def _half_started(self) -> bool:
        """The output holds only a state folder, of nothing but what :meth:`begin` makes
        before the plan (its lock, the ``done`` folder): a run stopped at once left it."""
        try:
            return (os.listdir(self.out) == [STATE_DIR] and self.dir.is_dir()
                    and not self.dir.is_symlink()
                    and set(os.listdir(self.dir)) <= {"lock", "done"})  # fmt: skip
        except OSError:
            return False

    @contextlib.contextmanager
    def hold(self, *, exclusive: bool = False) -> Iterator[None]:
        """Hold the store's lock (``.scopefx/lock``): shared while writing chunks, exclusive to
        remove the store. Refused at once (ConfigError) when another job holds it otherwise;
        a store without a state folder (finished) has nothing to lock."""
        import fcntl

        try:
            dfd = open_dir(self.dir)
        except FileNotFoundError:
            yield
            return
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open("lock", flags, 0o666, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise ConfigError(
                    f"output {self.out} is being written by another job; wait for it to end "
                    "or choose another output path"
                ) from None
            yield
        finally:
            os.close(fd)

    def check_owner(self) -> None:
        """Refuse to go on when the store's claim is not this job's (taken over meanwhile)."""
        try:
            started = _read_json(self.dir / "plan.json").get("fingerprint")
        except FileNotFoundError:
            started = (self._finished() or {}).get("fingerprint")
        if started != self.fingerprint:
            raise ConfigError(
                f"output {self.out} now belongs to another job (plan {started}, this job "
                f"{self.fingerprint}); nothing more was written or recorded"
            )

    def _check_protect(self, protect: Sequence[str]) -> None:
        out = self.out.resolve()
        for ref in protect:
            p = Path(ref.partition("::")[0]).resolve()
            if p == out or out in p.parents:
                raise ConfigError(
                    f"--overwrite would delete {out}, which holds the tile {ref}; choose "
                    "another output path"
                )

    def _finished(self) -> dict[str, Any] | None:
        """The ``scopefx`` attributes of a finished output, else ``None``."""
        for name in (".zattrs", "zarr.json"):
            meta = self.out / name
            if meta.is_file():
                attrs = _read_json(meta)
                attrs = attrs.get("attributes", {}) if name == "zarr.json" else attrs
                done = attrs.get("scopefx", {})
                return done if "fingerprint" in done else None
        return None

    def is_complete(self) -> bool:
        return self._finished() is not None

    def finish(self, summary: dict[str, Any]) -> None:
        """Record completion in the group's attributes, then drop the markers."""
        import zarr

        from ..io.confined import open_store

        with self.hold():
            self.check_owner()
            group = zarr.open_group(store=open_store(self.out, mode="r+", fsync=True), mode="r+")
            group.attrs["scopefx"] = json_safe({"fingerprint": self.fingerprint, "kind": KIND,
                                                "parts": self.parts, **summary})  # fmt: skip
        with contextlib.suppress(ConfigError), self.hold(exclusive=True):
            remove_partials(self.out)  # of a worker killed mid-write, whose chunk was redone
            remove_tree(self.dir)

    # -- chunks -------------------------------------------------------------------------------

    def _marker(self, level: int, index: Sequence[int]) -> Path:
        return self.dir / "done" / str(level) / ".".join(str(int(i)) for i in index)

    def is_done(self, level: int, index: Sequence[int]) -> bool:
        return self._marker(level, index).exists()

    def mark(self, level: int, index: Sequence[int]) -> None:
        """Record a chunk as finished; call only after its data is durable."""
        marker = self._marker(level, index)
        write_file(self.dir, os.path.relpath(marker, self.dir).replace(os.sep, "/"), b"")
