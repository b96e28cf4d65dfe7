"""Where work runs: the registered function suite, the thin client, and registration.

* :mod:`scopefx.remote.functions` — what endpoints run (``score_focus``, ``fuse_mosaic``,
  ``plan_mosaic``, ``fuse_region``, ``finish_mosaic``, ``endpoint_info``).
* :class:`Client` — batches references, submits them to any ``concurrent.futures.Executor``
  (a Globus Compute ``Executor``, or the embedded local default), gathers the results.
* :class:`EngineExecutor` — a real Globus Compute endpoint engine in this process, as an
  Executor (offline use, tests; ``factory = "scopefx.remote:EngineExecutor"`` in an
  endpoint configuration).
* :func:`register_functions` / :class:`Manifest` — registration with Globus Compute, and
  the name -> UUID manifest that clients and endpoint configurations use.
* :mod:`scopefx.remote.serializers` — the serializers the endpoint templates allow, by these
  names; the endpoint importing it refuses tasks whose arguments are not data. Not imported
  here: only an endpoint imports it.
"""

from ._config import ROLES, ClientConfig, EndpointSpec, default_config_path
from ._engine import EngineExecutor
from ._manifest import FUNCTION_NAMES, Manifest, fill_allowed_functions, register_functions
from .client import PAYLOAD_LIMIT_BYTES, Client

__all__ = [  # noqa: RUF022 (the high-level API first, then sorted)
    "Client",
    "ClientConfig",
    "EndpointSpec",
    "EngineExecutor",
    "FUNCTION_NAMES",
    "Manifest",
    "PAYLOAD_LIMIT_BYTES",
    "ROLES",
    "default_config_path",
    "fill_allowed_functions",
    "register_functions",
]
