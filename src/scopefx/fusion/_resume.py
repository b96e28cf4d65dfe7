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
is repaired by the resume.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["Progress"]

STATE_DIR = ".scopefx"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Progress:
    """The completion record of one output (see the module docs)."""

    def __init__(self, out: str | os.PathLike[str], fingerprint: str) -> None:
        self.out = Path(out)
        self.fingerprint = fingerprint
        self.dir = self.out / STATE_DIR

    # -- life cycle ---------------------------------------------------------------------------

    def begin(self, *, resume: bool, overwrite: bool, protect: Sequence[str] = ()) -> str:
        """Prepare the output folder. Returns ``"new"``, ``"resume"`` or ``"complete"``.

        Raises
        ------
        ConfigError
            The path holds something else, or a different plan, and ``overwrite`` is not set;
            or ``overwrite`` would delete one of the ``protect`` paths (the tiles).
        """
        out = self.out
        if out.exists() and overwrite:
            self._check_protect(protect)
            if out.is_dir() and not out.is_symlink():
                shutil.rmtree(out)
            else:
                out.unlink()
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output {out} is a file; remove it or pass --overwrite")
        if out.exists() and any(out.iterdir()):
            plan_file = self.dir / "plan.json"
            finished = self._finished()
            if finished is not None:
                started = finished.get("fingerprint")
            elif plan_file.is_file():
                started = json.loads(plan_file.read_text()).get("fingerprint")
            else:
                raise ConfigError(
                    f"output {out} already holds something that scopefx did not write; "
                    "choose another path or pass --overwrite to replace it"
                )
            if started != self.fingerprint:
                raise ConfigError(
                    f"output {out} was started with other tiles or parameters (plan "
                    f"{started}, now {self.fingerprint}); pass --overwrite to start over"
                )
            if not resume:
                state = "complete" if self.is_complete() else "unfinished"
                raise ConfigError(
                    f"output {out} exists ({state}); pass --resume to finish it or "
                    "--overwrite to start over"
                )
            if finished is not None:
                shutil.rmtree(self.dir, ignore_errors=True)  # killed while tidying up
                return "complete"
            return "resume"
        (self.dir / "done").mkdir(parents=True, exist_ok=True)
        _atomic_write(self.dir / "plan.json", json.dumps({"fingerprint": self.fingerprint}))
        return "new"

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
                attrs = json.loads(meta.read_text())
                attrs = attrs.get("attributes", {}) if name == "zarr.json" else attrs
                done = attrs.get("scopefx", {})
                return done if "fingerprint" in done else None
        return None

    def is_complete(self) -> bool:
        return self._finished() is not None

    def finish(self, summary: dict[str, Any]) -> None:
        """Record completion in the group's attributes, then drop the markers."""
        import zarr

        group = zarr.open_group(os.fspath(self.out), mode="r+")
        group.attrs["scopefx"] = {"fingerprint": self.fingerprint, **summary}
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- chunks -------------------------------------------------------------------------------

    def _marker(self, level: int, index: Sequence[int]) -> Path:
        return self.dir / "done" / str(level) / ".".join(str(int(i)) for i in index)

    def is_done(self, level: int, index: Sequence[int]) -> bool:
        return self._marker(level, index).exists()

    def mark(self, level: int, index: Sequence[int]) -> None:
        """Record a chunk as finished; call only after its data is durable."""
        marker = self._marker(level, index)
        marker.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(marker, "")
