"""Registration: the suite's functions registered with Globus Compute, and the manifest.

``scopefx register`` registers every function of :mod:`scopefx.remote.functions` once per
scopefx version and writes a manifest (JSON: function name -> UUID). Clients then submit by
UUID (``submit_to_registered_function``), and ``scopefx endpoint-config`` writes those UUIDs
into an endpoint configuration's ``allowed_functions``, so the endpoint runs these functions
and nothing else.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import ConfigError
from ._config import config_dir
from ._names import FUNCTION_NAMES

__all__ = ["FUNCTION_NAMES", "Manifest", "fill_allowed_functions", "register_functions"]


def major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


@dataclass(frozen=True)
class Manifest:
    """Function name -> registered UUID, for one scopefx version."""

    scopefx_version: str
    functions: dict[str, str] = field(default_factory=dict)
    registered: str = ""
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name, fid in self.functions.items():
            try:
                uuid.UUID(str(fid))
            except ValueError:
                raise ConfigError(
                    f"manifest {self.path or ''}: function {name!r} has id {fid!r}, not a UUID"
                ) from None

    @staticmethod
    def default_path(version: str = __version__) -> Path:
        """``~/.config/scopefx/functions-<major.minor>.json``."""
        return config_dir() / f"functions-{'.'.join(major_minor(version))}.json"

    def function_id(self, name: str) -> str | None:
        return self.functions.get(name)

    def matches_installed(self) -> bool:
        return major_minor(self.scopefx_version) == major_minor(__version__)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scopefx_manifest": 1,
            "scopefx_version": self.scopefx_version,
            "registered": self.registered,
            "functions": dict(self.functions),
        }

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        target = Path(path) if path is not None else self.default_path(self.scopefx_version)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, target)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a manifest written by :meth:`save`.

        Raises
        ------
        ConfigError
            Missing file, not JSON, or not a scopefx manifest.
        """
        file = Path(path).expanduser()
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"function manifest {str(file)!r} does not exist; run `scopefx register` first"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"function manifest {str(file)!r} is not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("scopefx_manifest") != 1:
            raise ConfigError(f"{str(file)!r} is not a scopefx function manifest")
        return cls(
            scopefx_version=str(data.get("scopefx_version", "")),
            functions={str(k): str(v) for k, v in (data.get("functions") or {}).items()},
            registered=str(data.get("registered", "")),
            path=str(file),
        )

    @classmethod
    def find(cls, path: str | os.PathLike[str] | None = None) -> Manifest | None:
        """The manifest at ``path``, else the default one for this version if it exists."""
        if path is not None:
            return cls.load(path)
        default = cls.default_path()
        return cls.load(default) if default.is_file() else None


def register_functions(
    client: Any = None,
    *,
    names: Sequence[str] = FUNCTION_NAMES,
    public: bool = False,
    group: str | None = None,
) -> Manifest:
    """Register the suite's functions with Globus Compute and return their manifest.

    Parameters
    ----------
    client : globus_compute_sdk.Client, optional
        Made with default arguments (which logs in) when not given.
    names : sequence of str
        Which functions (default: all of :data:`FUNCTION_NAMES`).
    public, group
        Share the functions with everyone, or with a Globus group (UUID).

    Returns
    -------
    Manifest
        Not yet saved: call :meth:`Manifest.save`.
    """
    from . import functions

    unknown = [n for n in names if n not in FUNCTION_NAMES]
    if unknown:
        raise ConfigError(f"unknown function(s) {unknown}; the suite has {list(FUNCTION_NAMES)}")
    ids = {}
    try:
        if client is None:
            try:
                from globus_compute_sdk import Client
            except ImportError:
                raise ConfigError(
                    "registering needs globus-compute-sdk: pip install 'scopefx[endpoint]'"
                ) from None
            client = Client(app=_globus_app())
        for name in names:
            fn = getattr(functions, name)
            summary = (fn.__doc__ or name).strip().splitlines()[0]
            ids[name] = str(
                client.register_function(
                    fn, description=f"scopefx {__version__}: {summary}", public=public, group=group
                )
            )
    except Exception as exc:
        if (problem := _login_problem(exc)) is None:
            raise
        raise ConfigError(problem) from exc
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Manifest(scopefx_version=__version__, functions=ids, registered=now)


_LOGIN_HINT = (
    "run `scopefx register` in a terminal to log in, or without one set "
    "GLOBUS_COMPUTE_CLIENT_ID and GLOBUS_COMPUTE_CLIENT_SECRET to a Globus client credential"
)


def _globus_app() -> Any:
    """The SDK's login (its own choice: client credentials from the environment, else the
    stored user login), refused with one line where it would prompt without a terminal."""
    import sys

    from globus_compute_sdk.sdk.auth.globus_app import get_globus_app
    from globus_sdk import UserApp

    try:
        app = get_globus_app()
    except ValueError as exc:  # e.g. a secret without a client id
        raise ConfigError(f"{exc}") from None
    interactive = sys.stdin is not None and sys.stdin.isatty()
    if isinstance(app, UserApp) and not interactive and app.login_required():
        raise ConfigError(f"not logged in to Globus Compute, and no terminal: {_LOGIN_HINT}")
    return app


def _login_problem(exc: BaseException) -> str | None:
    """One actionable line for a failed login to (or call of) Globus Compute, or None when
    ``exc`` is not one (the Globus SDK's own errors are tracebacks dozens of lines long)."""
    module = type(exc).__module__
    if not (isinstance(exc, EOFError) or module.startswith(("globus_sdk", "globus_compute_sdk"))):
        return None
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if "Network" in type(exc).__name__ or "Connection" in type(exc).__name__:
        return f"could not reach Globus Compute ({what}); check the network and try again"
    return f"could not log in to Globus Compute ({what}); {_LOGIN_HINT}"


_ALLOWED_RE = re.compile(r"^allowed_functions\s*:.*$")


def fill_allowed_functions(config_text: str, manifest: Manifest) -> str:
    """The endpoint configuration ``config_text`` (YAML) with ``allowed_functions`` set to
    the manifest's UUIDs; comments and everything else are kept as they are.

    Raises
    ------
    ConfigError
        The manifest is empty, or the result is not the YAML it should be.
    """
    import yaml

    if not manifest.functions:
        raise ConfigError("the manifest lists no functions; run `scopefx register` first")
    block = [f"allowed_functions:  # scopefx {manifest.scopefx_version} (scopefx endpoint-config)"]
    block += [f"  - {fid}  # {name}" for name, fid in manifest.functions.items()]
    lines = config_text.splitlines()
    out: list[str] = []
    i, replaced = 0, False
    while i < len(lines):
        if _ALLOWED_RE.match(lines[i]):
            i += 1
            # drop the old list: indented items and blank lines up to the next top-level key
            while i < len(lines) and (not lines[i].strip() or lines[i][:1] in (" ", "\t", "-")):
                i += 1
            out.extend(block)
            replaced = True
            continue
        out.append(lines[i])
        i += 1
    if not replaced:
        out.extend(["", *block])
    text = "\n".join(out) + "\n"
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the endpoint configuration is not valid YAML: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("allowed_functions") != list(
        manifest.functions.values()
    ):
        raise ConfigError("could not set allowed_functions in the endpoint configuration")
    return text
