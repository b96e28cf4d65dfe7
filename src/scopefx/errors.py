"""The errors scopefx raises.

Every error derives from :class:`ScopefxError` *and* from the built-in it refines, so callers can
catch either (``except FileNotFoundError`` works for a missing image). Each class carries a
short machine-readable ``status`` (``"missing"``, ``"corrupt"``, ...) that batch operations put in
their per-item records instead of raising.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "AccessDeniedError",
    "CalibrationError",
    "ConfigError",
    "CorruptImageError",
    "DeviceUnavailableError",
    "DiskFullError",
    "EmptyFileError",
    "EndpointError",
    "ImageNotFoundError",
    "InvalidImageError",
    "RegistrationError",
    "RemoteTaskError",
    "ResourceLimitError",
    "ScopefxError",
    "UnsupportedFormatError",
]


class ScopefxError(Exception):
    """Base class of every error scopefx raises on purpose."""

    #: Short machine-readable kind, used as the ``status`` of a failed item in batch results.
    status: str = "error"


class ConfigError(ScopefxError, ValueError):
    """A parameter or configuration value is out of its allowed range."""

    status = "config"


class DeviceUnavailableError(ScopefxError, RuntimeError):
    """A GPU was asked for but CuPy or a CUDA device is not available."""

    status = "device"


class ImageNotFoundError(ScopefxError, FileNotFoundError):
    """An image reference points at nothing."""

    status = "missing"


class EmptyFileError(ScopefxError, OSError):
    """An image file exists but holds zero bytes (often: still being written)."""

    status = "empty"


class CorruptImageError(ScopefxError, OSError):
    """An image file exists but cannot be decoded (truncated, damaged, wrong extension)."""

    status = "corrupt"


class UnsupportedFormatError(ScopefxError, ValueError):
    """The file type or reference scheme is not one scopefx reads."""

    status = "unsupported"


class InvalidImageError(ScopefxError, ValueError):
    """The pixels were read but cannot be scored as they are.

    ``status`` names the problem: ``"rgb"`` (colour image), ``"ndim"`` (wrong number of
    dimensions), ``"too_small"`` (smaller than the scale space needs), ``"invalid_values"``
    (NaN or infinity), ``"dtype"`` (not a real number type), ``"transparent"`` (an RGBA
    image with no opaque pixel).
    """

    def __init__(self, message: str, *, status: str = "invalid") -> None:
        super().__init__(message)
        self.status = status


class CalibrationError(ScopefxError, ValueError):
    """A calibration cannot be fitted, loaded, or applied to these results."""

    status = "calibration"


class AccessDeniedError(ScopefxError, PermissionError):
    """A reference resolves outside the data roots this process may read and write.

    Raised on endpoints, where every reference must lie inside ``SCOPEFX_DATA_ROOTS``
    (see :class:`scopefx.io.DataRoots`): ``..`` components, symbolic links that lead out,
    and absolute paths elsewhere are refused.
    """

    status = "denied"


class EndpointError(ScopefxError, RuntimeError):
    """An endpoint cannot take scopefx work: wrong scopefx version, or it is unreachable."""

    status = "endpoint"


class RegistrationError(ScopefxError, ValueError):
    """Tiles cannot be registered from their overlaps as asked.

    Raised when too few neighbouring tiles give a usable match (fewer than half, by default),
    or when no two tiles overlap at their stage positions; the message says which and why.
    ``RegistrationParams(allow_partial=True)`` registers what can be registered instead.

    Attributes
    ----------
    registration : Registration or None
        For too few usable pairs: the evidence, every pair as measured and classified, and
        the layout ``allow_partial=True`` would give (not applied; what the stitching QC
        report of a refused run shows). None when nothing was measured.
    """

    status = "registration"

    def __init__(self, message: str, *, registration: Any = None) -> None:
        super().__init__(message)
        self.registration = registration


class RemoteTaskError(ScopefxError, RuntimeError):
    """A task failed where it ran (an endpoint engine); the message is that side's formatted
    traceback, as ``globus_compute_sdk.errors.TaskExecutionFailed`` carries it. Whether it may
    succeed when sent again depends on that text (a lost worker, or a scopefx error that would
    only repeat): see :func:`scopefx.remote.client.is_transient`."""

    status = "remote"

    def cause(self) -> tuple[type[ScopefxError], str] | None:
        """The scopefx error the endpoint's traceback ends in, and its message, so a caller
        can answer as it would to that error raised here (the command line's exit code and
        message); None when the task ended in anything else (a lost worker, a bug, an error
        raised while handling a scopefx one). Only the last traceback counts (engine retries
        send one per attempt), and in it the exception line after the frames, whatever the
        message's own lines hold. What the error carried beyond its text (a refused
        registration's evidence) does not cross as text."""
        text = str(self)
        last = text.rsplit("Traceback (most recent call last):", 1)[-1]
        lines = last.split("\n")
        at = 0
        if len(lines) > 1 and "Traceback (most recent call last):" in text:
            at = 1  # past the header's line end: the frames, indented, come first
            while at < len(lines) and (not lines[at] or lines[at].startswith(" ")):
                at += 1
        if at >= len(lines):
            return None
        m = re.match(r"scopefx\.errors\.(\w+): ", lines[at])
        if m is None or m.group(1) not in __all__ or m.group(1) == "RemoteTaskError":
            return None
        message = "\n".join([lines[at][m.end() :], *lines[at + 1 :]]).rstrip("\n")
        return globals()[m.group(1)], message


class ResourceLimitError(ScopefxError, ValueError):
    """The work asked for is over a limit of this process (:class:`scopefx.io.EndpointLimits`):
    an image or chunk larger than the decoding budget, a mosaic with too many or too large
    chunks. Not transient: retrying gives the same answer."""

    status = "limit"


class DiskFullError(ScopefxError, OSError):
    """An output could not be written because its file system is full (or over quota)."""

    status = "disk_full"
