"""How many references go in one focus task: enough to amortise the per-task cost, spread
over the endpoint's workers, and always far below Globus Compute's payload limit
(docs/limits.md)."""

from __future__ import annotations

import math
import os

__all__ = ["PAYLOAD_LIMIT_BYTES", "batch_size"]

#: Globus Compute's limit on a task's arguments and on its result.
PAYLOAD_LIMIT_BYTES = 10 * 2**20
#: What one batch may use of it (arguments or estimated result), to stay far below.
_BATCH_BUDGET_BYTES = PAYLOAD_LIMIT_BYTES // 10
#: Upper estimate of one focus record's size in the result (a record with its focus map).
_RECORD_BYTES = 4096
#: Largest automatic batch: enough to amortise the per-task cost (see bench/remote.py).
_MAX_AUTO_BATCH = 64


def batch_size(refs: list[str], *, requested: int | None, workers: int) -> int:
    """References per task for ``refs``: ``requested``, else ``ceil(len(refs) / (4 x
    workers))`` between 1 and 64 (``workers``: the endpoint's); either way lowered to what
    keeps a task's arguments and estimated result within a tenth of the payload limit."""
    if requested is not None:
        size = requested
    else:
        size = max(1, min(_MAX_AUTO_BATCH, math.ceil(len(refs) / (4 * workers))))
    longest = max((len(os.fsencode(r)) for r in refs), default=1) + 8  # a non-UTF-8 name too
    return max(1, min(size, _BATCH_BUDGET_BYTES // max(longest, _RECORD_BYTES)))
