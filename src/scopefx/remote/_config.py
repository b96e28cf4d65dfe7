"""The user's endpoint configuration: which endpoint does which kind of work.

A TOML file, by default ``$SCOPEFX_CONFIG`` or ``~/.config/scopefx/endpoints.toml``
(``$XDG_CONFIG_HOME`` respected)::

    # optional: function UUIDs from `scopefx register` (default: the manifest for this version)
    manifest = "~/.config/scopefx/functions-0.2.json"
    batch_size = 64        # references per task (default: chosen per run)
    max_retries = 2        # resubmissions of a failed task

    [endpoints.edge]       # a GPU workstation beside the microscope
    id = "2f8c...-uuid"
    roles = ["focus"]

    [endpoints.facility]   # the facility's multi-user endpoint (endpoints/facility-multiuser)
    id = "7a1d...-uuid"
    roles = ["fusion"]
    # options its user_config_schema.json allows; single-user endpoints take none
    user_endpoint_config = { provider = "slurm", account = "lab42", walltime = "01:00:00" }

Roles are ``focus`` (:meth:`Client.score_focus`) and ``fusion`` (:meth:`Client.fuse`); a role
no endpoint takes runs locally. Instead of ``id`` an endpoint may name ``factory =
"package.module:callable"``, a function that returns any ``concurrent.futures.Executor``
(a process pool, a dask ``distributed`` executor, a test harness).
"""

from __future__ import annotations

import os
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["ROLES", "ClientConfig", "EndpointSpec", "default_config_path"]

#: Kinds of work an endpoint can be given.
ROLES = ("focus", "fusion")

_TOP_KEYS = {"manifest", "batch_size", "max_retries", "endpoints"}
_ENDPOINT_KEYS = {"id", "factory", "roles", "user_endpoint_config", "description"}


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "scopefx"


def default_config_path() -> Path:
    """``$SCOPEFX_CONFIG``, else ``~/.config/scopefx/endpoints.toml``."""
    env = os.environ.get("SCOPEFX_CONFIG")
    return Path(env).expanduser() if env else config_dir() / "endpoints.toml"


@dataclass(frozen=True)
class EndpointSpec:
    """One configured endpoint."""

    name: str
    id: str | None = None
    factory: str | None = None
    roles: tuple[str, ...] = ()
    user_endpoint_config: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        where = f"endpoint {self.name!r}"
        if (self.id is None) == (self.factory is None):
            raise ConfigError(f"{where} needs exactly one of 'id' (a UUID) or 'factory'")
        if self.id is not None:
            try:
                uuid.UUID(str(self.id))
            except ValueError:
                raise ConfigError(f"{where}: id must be a UUID, got {self.id!r}") from None
        if self.factory is not None and ":" not in self.factory:
            raise ConfigError(
                f"{where}: factory must be 'package.module:callable', got {self.factory!r}"
            )
        bad = [r for r in self.roles if r not in ROLES]
        if bad:
            raise ConfigError(f"{where}: unknown role(s) {bad}; roles are {list(ROLES)}")

    def make_executor(self) -> Any:
        """A new executor for this endpoint (a Globus Compute ``Executor`` for an ``id``)."""
        if self.factory is not None:
            import importlib

            module, _, name = self.factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(
                    f"endpoint {self.name!r}: cannot load factory {self.factory!r}: {exc}"
                ) from None
            return factory()
        try:
            from globus_compute_sdk import Executor
        except ImportError:
            raise ConfigError(
                f"endpoint {self.name!r} needs globus-compute-sdk: pip install 'scopefx[endpoint]'"
            ) from None
        return Executor(endpoint_id=self.id, user_endpoint_config=self.user_endpoint_config or None)


@dataclass(frozen=True)
class ClientConfig:
    """The parsed configuration file (see the module docs)."""

    endpoints: dict[str, EndpointSpec] = field(default_factory=dict)
    manifest: str | None = None
    batch_size: int | None = None
    max_retries: int = 2
    path: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> ClientConfig:
        """Read the file; a missing default file means "everything local".

        Raises
        ------
        ConfigError
            An explicitly named file is missing, or the file is not valid TOML or has
            unknown keys, bad UUIDs or unknown roles.
        """
        explicit = path is not None
        file = Path(path).expanduser() if path is not None else default_config_path()
        if not file.is_file():
            if explicit:
                raise ConfigError(f"endpoint configuration {str(file)!r} does not exist")
            return cls()
        try:
            data = tomllib.loads(file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read endpoint configuration {str(file)!r}: {exc}") from None
        return cls.from_dict(data, path=str(file))

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, path: str | None = None) -> ClientConfig:
        where = f"endpoint configuration {path!r}" if path else "endpoint configuration"
        unknown = sorted(set(data) - _TOP_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; expected {sorted(_TOP_KEYS)}")
        endpoints = {}
        for name, spec in (data.get("endpoints") or {}).items():
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: [endpoints.{name}] must be a table")
            bad = sorted(set(spec) - _ENDPOINT_KEYS)
            if bad:
                raise ConfigError(
                    f"{where}: [endpoints.{name}] has unknown key(s) {bad}; "
                    f"expected {sorted(_ENDPOINT_KEYS)}"
                )
            endpoints[name] = EndpointSpec(
                name=name,
                id=spec.get("id"),
                factory=spec.get("factory"),
                roles=tuple(spec.get("roles", ())),
                user_endpoint_config=dict(spec.get("user_endpoint_config", {})),
                description=str(spec.get("description", "")),
            )
        taken: dict[str, str] = {}
        for spec in endpoints.values():
            for role in spec.roles:
                if role in taken:
                    raise ConfigError(
                        f"{where}: role {role!r} is given to both {taken[role]!r} and "
                        f"{spec.name!r}; give each role to one endpoint"
                    )
                taken[role] = spec.name
        batch_size = data.get("batch_size")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"{where}: batch_size must be an integer >= 1, got {batch_size!r}")
        retries = data.get("max_retries", 2)
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"{where}: max_retries must be an integer >= 0, got {retries!r}")
        manifest = data.get("manifest")
        return cls(
            endpoints=endpoints,
            manifest=None if manifest is None else os.path.expanduser(str(manifest)),
            batch_size=batch_size,
            max_retries=retries,
            path=path,
        )

    def for_role(self, role: str) -> EndpointSpec | None:
        for spec in self.endpoints.values():
            if role in spec.roles:
                return spec
        return None
