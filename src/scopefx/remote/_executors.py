"""Where each role runs: the client's executors, given or made from the configuration on
first use, else the embedded local default; and the wiring that makes a Globus Compute
executor send its arguments as JSON data."""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from ._config import ROLES

__all__ = ["Executors", "local_workers", "send_json"]


def local_workers() -> int:
    """The cores this process may use: the local default's threads."""
    return max(
        1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


class Executors:
    """The executor of each role: ``routes`` (given), then ``factories`` (made on first use,
    and then owned), then ``default`` (given), else the local default (a thread pool in
    this process, made on first use and owned). :meth:`close` shuts down the owned ones."""

    def __init__(self, default: cf.Executor | None, routes: Mapping[str, cf.Executor]) -> None:
        self.default = default
        self.routes: dict[str, Any] = dict(routes)
        self.factories: dict[str, Callable[[], cf.Executor]] = {}
        self.owned: list[cf.Executor] = []
        self.local: cf.Executor | None = None
        self._lock = threading.Lock()

    def for_role(self, role: str) -> cf.Executor:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles are {list(ROLES)}")
        with self._lock:
            if role in self.routes:
                return self.routes[role]
            if role in self.factories:
                ex = self.factories.pop(role)()
                self.routes[role] = ex
                if ex not in self.owned:
                    self.owned.append(ex)
                return ex
            if self.default is not None:
                return self.default
            if self.local is None:
                self.local = cf.ThreadPoolExecutor(
                    max_workers=local_workers(), thread_name_prefix="scopefx-local"
                )
                self.owned.append(self.local)
            return self.local

    def close(self) -> None:
        owned, self.owned = self.owned, []
        for ex in owned:
            ex.shutdown(wait=True, cancel_futures=True)
        self.local = None


def send_json(ex: Any) -> None:
    """Make a Globus Compute executor (anything with a ``ComputeSerializer`` as
    ``serializer``) send task arguments as JSON data (``JSONData``) instead of pickles.

    scopefx's arguments are references and plain dicts, so nothing is lost; and endpoints
    whose engine sets ``allowed_serializers`` (every shipped template) refuse pickled
    arguments, since un-pickling runs code before the function does. The function itself
    keeps the executor's code serializer.
    """
    serde = getattr(ex, "serializer", None)
    if serde is None:  # not a Globus Compute executor (the local default, a process pool)
        return
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData

    if not isinstance(serde, ComputeSerializer) or isinstance(serde.data_serializer, JSONData):
        return
    ex.serializer = ComputeSerializer(
        strategy_code=serde.code_serializer,
        strategy_data=JSONData(),
        allowed_deserializer_types=serde.allowed_deserializer_types or None,
    )
