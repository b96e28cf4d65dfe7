"""Endpoint limits: how much work one task may cause, set by whoever runs the process.

A remote caller chooses references and job options; it never chooses these. They are read from
the environment of the process (an endpoint's ``worker_init`` exports them), so a job cannot lift
them: ``force`` and ``FusionParams.max_output_gib`` only move the caller's own, softer limit,
which stays under :attr:`EndpointLimits.max_output_gib`.

Every budget is checked from headers (TIFF tags, PNG/GIF headers, ``.npy`` headers, Zarr
metadata) before any pixel is decoded, so a small file that declares a huge image costs a few
kilobytes of memory, not the declared size.

=============================  ==================================  ==========================
variable                       field                               default
=============================  ==================================  ==========================
``SCOPEFX_MAX_IMAGE_PX``       :attr:`~EndpointLimits.max_image_px`       ``2**28`` (16384^2)
``SCOPEFX_MAX_IMAGE_BYTES``    :attr:`~EndpointLimits.max_image_bytes`    1 GiB
``SCOPEFX_MAX_CHUNK_BYTES``    :attr:`~EndpointLimits.max_chunk_bytes`    256 MiB
``SCOPEFX_MAX_META_BYTES``     :attr:`~EndpointLimits.max_meta_bytes`     16 MiB
``SCOPEFX_MAX_CHUNKS``         :attr:`~EndpointLimits.max_chunks`         250000
``SCOPEFX_MAX_CHUNK_PX``       :attr:`~EndpointLimits.max_chunk_px`       ``4096**2``
``SCOPEFX_MAX_OUTPUT_GIB``     :attr:`~EndpointLimits.max_output_gib`     1024
``SCOPEFX_MAX_SEARCH_BYTES``   :attr:`~EndpointLimits.max_search_bytes`   4 GiB
``SCOPEFX_MAX_FOCUS_BYTES``    :attr:`~EndpointLimits.max_focus_bytes`    16 GiB
``SCOPEFX_MAX_PAGES``          :attr:`~EndpointLimits.max_pages`          4096
``SCOPEFX_TASK_TIMEOUT_S``     :attr:`~EndpointLimits.task_timeout_s`     unset (no limit)
=============================  ==================================  ==========================
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import ConfigError, ResourceLimitError

__all__ = ["LIMIT_ENV", "EndpointLimits", "TaskClock", "size_text"]

#: Environment variable of each field.
LIMIT_ENV: dict[str, str] = {
    "max_image_px": "SCOPEFX_MAX_IMAGE_PX",
    "max_image_bytes": "SCOPEFX_MAX_IMAGE_BYTES",
    "max_chunk_bytes": "SCOPEFX_MAX_CHUNK_BYTES",
    "max_meta_bytes": "SCOPEFX_MAX_META_BYTES",
    "max_chunks": "SCOPEFX_MAX_CHUNKS",
    "max_chunk_px": "SCOPEFX_MAX_CHUNK_PX",
    "max_output_gib": "SCOPEFX_MAX_OUTPUT_GIB",
    "max_search_bytes": "SCOPEFX_MAX_SEARCH_BYTES",
    "max_focus_bytes": "SCOPEFX_MAX_FOCUS_BYTES",
    "max_pages": "SCOPEFX_MAX_PAGES",
    "task_timeout_s": "SCOPEFX_TASK_TIMEOUT_S",
}


def size_text(n: float) -> str:
    """A byte count for messages: GiB from 1 GiB up, else MiB."""
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


@dataclass(frozen=True)
class EndpointLimits:
    """Hard limits on one task's work; see the module docs for the variables that set them.

    Parameters
    ----------
    max_image_px : int
        Pixels (all pages and channels) one image read may decode.
    max_image_bytes : int
        Decoded bytes of one image read.
    max_chunk_bytes : int
        Decoded bytes of one stored chunk of a Zarr input (and of one TIFF tile or strip).
    max_meta_bytes : int
        Size of one metadata file (``zarr.json``, ``.zarray``...), read before anything else.
    max_chunks : int
        Level-0 chunks of one fusion (its dask graph has this many tasks).
    max_chunk_px : int
        Pixels of one fusion output chunk (memory per fusion task is about 20 bytes each).
    max_output_gib : float
        Size of a fused mosaic; ``force`` does not lift it.
    max_search_bytes : int
        Working memory of one pair's registration search (its crops enlarged by the search
        range, estimated from the geometry before any tile is read). A search the registration
        chose itself is narrowed to fit, with a warning; one the caller asked for
        (``max_shift_px``) is refused, naming the largest that fits.
    max_focus_bytes : int
        Working memory of scoring one image plane for focus, estimated from its size and the
        focus parameters (the scale space's filters grow with ``n_scales``: 256 scales took
        1 KiB per pixel) before the scale space is built. The default covers the largest image
        ``max_image_px`` allows at the default parameters.
    max_pages : int
        Pages of one stack (one reference) a focus task scores; the pages after them are
        reported not scored, naming the setting. Each page is a record of its own (about
        600 bytes plus its focus map), and the pixel budget alone lets a stack of tiny pages
        hold millions of them.
    task_timeout_s : float or None
        Wall-clock limit of one remote task. The remote functions check it between items
        (focus: between references and between the pages of a stack) and between chunks
        (fusion) and stop with a :class:`ResourceLimitError` naming it, keeping what finished:
        the items scored come back, the rest carry ``status="limit"``; the chunks written stay
        recorded for a resume. Set it a little under the template's ``GC_TASK_TIMEOUT``,
        which stops only what can be interrupted.
    """

    max_image_px: int = 2**28
    max_image_bytes: int = 2**30
    max_chunk_bytes: int = 256 * 2**20
    max_meta_bytes: int = 16 * 2**20
    max_chunks: int = 250_000
    max_chunk_px: int = 4096**2
    max_output_gib: float = 1024.0
    max_search_bytes: int = 4 * 2**30
    max_focus_bytes: int = 16 * 2**30
    max_pages: int = 4096
    task_timeout_s: float | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "task_timeout_s" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(
                    f"endpoint limit {f.name} ({LIMIT_ENV[f.name]}) must be a number > 0, "
                    f"got {value!r}"
                )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EndpointLimits:
        """The limits named by the ``SCOPEFX_MAX_*`` variables; defaults for those unset."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            text = env.get(LIMIT_ENV[f.name], "").strip()
            if not text:
                continue
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(
                    f"{LIMIT_ENV[f.name]}={text!r} is not a number; set it to a positive number "
                    "in the endpoint's worker_init"
                ) from None
            integral = f.name not in ("max_output_gib", "task_timeout_s")
            values[f.name] = int(number) if integral and math.isfinite(number) else number
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # -- checks -------------------------------------------------------------------------------

    def check_image(self, shape: Sequence[int], dtype: Any, ref: str) -> None:
        """Refuse decoding an image of ``shape`` and ``dtype`` over the pixel or byte budget."""
        px = math.prod(int(s) for s in shape)
        nbytes = px * np.dtype(dtype).itemsize
        if px > self.max_image_px or nbytes > self.max_image_bytes:
            raise ResourceLimitError(
                f"'{ref}' declares a {'x'.join(str(int(s)) for s in shape)} {np.dtype(dtype)} "
                f"image ({px:,} px, {size_text(nbytes)} decoded), over this process's limit of "
                f"{self.max_image_px:,} px and {size_text(self.max_image_bytes)} "
                f"({LIMIT_ENV['max_image_px']}, {LIMIT_ENV['max_image_bytes']}); it was not "
                "decoded. Split the image, or ask the endpoint's operator to raise the limit"
            )

    def check_chunk(self, shape: Sequence[int], dtype: Any, ref: str) -> None:
        """Refuse a stored chunk (or TIFF tile/strip) larger than ``max_chunk_bytes``."""
        nbytes = math.prod(int(s) for s in shape) * np.dtype(dtype).itemsize
        if nbytes > self.max_chunk_bytes:
            raise ResourceLimitError(
                f"'{ref}' is stored in chunks of {'x'.join(str(int(s)) for s in shape)} "
                f"({size_text(nbytes)} each decoded), over the limit of "
                f"{size_text(self.max_chunk_bytes)} ({LIMIT_ENV['max_chunk_bytes']}); it was not "
                "read. Rechunk it smaller"
            )


class TaskClock:
    """The endpoint's task time limit (``SCOPEFX_TASK_TIMEOUT_S``,
    :attr:`EndpointLimits.task_timeout_s`), for the loops of one task to check between their
    steps (items, the pages of a stack, chunks, tile pairs).

    The engine's ``GC_TASK_TIMEOUT`` ends a task only where the worker can be interrupted;
    this check stops scopefx's own loops at the next step, keeping what finished.

    Parameters
    ----------
    what : str
        The work, for the message (``"score_focus"``, ``"registration"``).
    start : float, optional
        When the task started (:func:`time.monotonic`); default: now.
    """

    def __init__(self, what: str, start: float | None = None) -> None:
        self.what = what
        self.limit_s = EndpointLimits.from_env().task_timeout_s
        self.start = time.monotonic() if start is None else start

    def over(self) -> bool:
        return self.limit_s is not None and time.monotonic() - self.start > self.limit_s

    def error(self, kept: str) -> ResourceLimitError:
        """The error to stop with; ``kept`` says what is kept and what to do."""
        return ResourceLimitError(
            f"{self.what} stopped after {time.monotonic() - self.start:.3g} s, over this "
            f"endpoint's task time limit of {self.limit_s:g} s "
            f"({LIMIT_ENV['task_timeout_s']}); {kept}"
        )
