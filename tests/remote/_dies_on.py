"""Test-only stand-in for ``scopefx.remote.functions.score_focus`` that really kills its worker.

Imported by the workers of an engine started with this folder on ``PYTHONPATH`` (see
``tests/remote/test_engine.py``): a batch that holds the reference named by
``SCOPEFX_TEST_DIES_ON`` ends its worker process with ``os._exit`` before scoring anything, as
a segfault or the kernel's OOM killer would; any other batch is scored by the real function.
"""

from __future__ import annotations

import os
import time
from typing import Any

DIES_ON_ENV = "SCOPEFX_TEST_DIES_ON"


def score_focus(refs: list[str], *args: Any, **kwargs: Any) -> Any:
    from scopefx.remote import functions

    if os.environ.get(DIES_ON_ENV) in refs:
        # A moment first: the worker's feeder thread may still be writing the result of the
        # task before, and a process that dies in that write leaves the pool's result queue
        # locked for good (docs/security.md; it hung this test in 1 run of 17 here). That
        # lock is Parsl's and not recovered; this test is about the client's isolation.
        # 2 s: 0.5 s was a guess that a starved CI machine may outlast.
        time.sleep(2.0)
        os._exit(137)  # the worker process dies mid-task: no result, no exception
    return functions.score_focus(refs, *args, **kwargs)
