"""``scopefx endpoints``, ``scopefx register``, ``scopefx endpoint-config``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

from ._common import printable

__all__ = ["add_parsers", "cmd_endpoint_config", "cmd_endpoints", "cmd_register"]


def add_parsers(sub: Any) -> None:
    ep = sub.add_parser(
        "endpoints",
        help="list the configured endpoints, their roles, status and versions",
        description="List the endpoints of the endpoint configuration; unless --no-check, ask "
        "each for its endpoint_info (scopefx version, backend, GPUs, data roots).",
    )
    ep.add_argument("--config", metavar="ENDPOINTS.toml", help="endpoint configuration")
    ep.add_argument("--no-check", action="store_true", help="do not contact the endpoints")
    ep.add_argument("--json", action="store_true", help="print JSON")
    ep.set_defaults(func=cmd_endpoints)

    reg = sub.add_parser(
        "register",
        help="register the function suite with Globus Compute and write the manifest",
        description="Register scopefx's remote functions with Globus Compute (logs in) and "
        "write a manifest of function name -> UUID for this scopefx version.",
    )
    reg.add_argument(
        "-o", "--manifest", metavar="OUT.json", help="default: ~/.config/scopefx/functions-X.Y.json"
    )
    reg.add_argument("--public", action="store_true", help="let anyone run the functions")
    reg.add_argument("--group", metavar="UUID", help="share the functions with a Globus group")
    reg.set_defaults(func=cmd_register)

    cfg = sub.add_parser(
        "endpoint-config",
        help="fill allowed_functions of an endpoint config.yaml from the manifest",
        description="Write CONFIG with allowed_functions set to the manifest's function UUIDs "
        "(comments and other settings kept), so the endpoint runs the suite and nothing else.",
    )
    cfg.add_argument("config_yaml", metavar="CONFIG.yaml", help="an endpoint config.yaml")
    cfg.add_argument("--manifest", metavar="MANIFEST.json", help="default: this version's")
    cfg.add_argument("-o", "--output", metavar="OUT.yaml", help="default: print to stdout")
    cfg.set_defaults(func=cmd_endpoint_config)


def cmd_endpoints(args: argparse.Namespace, out: TextIO) -> int:
    from ..errors import ConfigError, EndpointError
    from ..remote import ROLES, Client, ClientConfig

    config = ClientConfig.load(args.config)
    rows: list[dict[str, Any]] = []
    local_roles = [r for r in ROLES if config.for_role(r) is None]
    entries: list[tuple[str, Any]] = [(name, spec) for name, spec in config.endpoints.items()]
    if local_roles or not entries:
        entries.insert(0, ("local", None))
    for name, spec in entries:
        row: dict[str, Any] = {
            "name": name,
            "id": None if spec is None else (spec.id or spec.factory),
            "roles": local_roles if spec is None else list(spec.roles),
        }
        if not args.no_check:
            try:
                with Client.from_config(
                    args.config, endpoint=name, progress=False, check_version=False
                ) as client:
                    info = client.info("focus")  # its answer, whatever its version
                    client.check_version = True
                    try:
                        client.info("focus")  # the same answer, its version checked
                    except EndpointError as exc:  # reached, but another major.minor
                        row.update(status="incompatible", info=info, error=str(exc))
                    else:
                        row.update(status="ok", info=info)
            except ConfigError as exc:  # nothing was sent: this side cannot reach it as set up
                row.update(status="not_configured", error=str(exc))
            except Exception as exc:  # report and go on to the next endpoint
                row.update(status="error", error=f"{type(exc).__name__}: {exc}")
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1), file=out)
        return 0
    where = config.path or "no configuration file: everything runs locally"
    print(f"endpoints ({where}):", file=out)
    for row in rows:
        roles = ",".join(row["roles"]) or "-"
        line = f"  {printable(row['name']):<12} roles={roles:<13} {printable(row['id'] or '')}"
        if row.get("status") == "ok":
            info = row["info"]
            gpus = len(info.get("gpus") or [])
            roots = info.get("data_roots")
            device = f" on {info['device']}" if info.get("device") else ""
            if info.get("device_error"):
                device += f" (unavailable: {info['device_error']})"
            answer = (  # the endpoint's own words: shown, never obeyed as terminal codes
                f"scopefx {info['scopefx']}, {info['backend']}{device}, {gpus} GPU(s), "
                f"host {info.get('host')}, data roots: "
                f"{', '.join(map(str, roots)) if roots else 'unrestricted (local default)'}"
            )
            line += f"\n      ok: {printable(answer)}"
        elif row.get("status") == "incompatible":
            line += f"\n      answered, incompatible: {printable(row['error'])}"
        elif row.get("status") == "not_configured":
            line += f"\n      not tried, configuration: {printable(row['error'])}"
        elif row.get("status") == "error":
            line += f"\n      unreachable: {printable(row['error'])}"
        print(line, file=out)
    return 0


def cmd_register(args: argparse.Namespace, out: TextIO) -> int:
    from ..remote import register_functions

    manifest = register_functions(public=args.public, group=args.group)
    path = manifest.save(args.manifest)
    for name, fid in manifest.functions.items():
        print(f"  {name:<14} {fid}", file=out)
    print(f"wrote {path}", file=out)
    return 0


def cmd_endpoint_config(args: argparse.Namespace, out: TextIO) -> int:
    from ..errors import ConfigError
    from ..remote import Manifest, fill_allowed_functions

    manifest = Manifest.find(args.manifest)
    if manifest is None:
        raise ConfigError(
            f"no function manifest at {Manifest.default_path()}; run `scopefx register` first "
            "or pass --manifest"
        )
    try:
        text = Path(args.config_yaml).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read endpoint config {args.config_yaml!r}: {exc}") from None
    filled = fill_allowed_functions(text, manifest)
    if args.output:
        try:
            _replace(args.output, filled)
        except OSError as exc:
            why = exc.strerror or str(exc)
            if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
                why = (
                    "its folder does not exist; create the endpoint first "
                    "(`globus-compute-endpoint configure NAME` makes ~/.globus_compute/NAME/)"
                )
            raise ConfigError(f"cannot write {args.output!r}: {why}") from None
        print(
            f"wrote {args.output}: allowed_functions = {len(manifest.functions)} scopefx "
            f"{manifest.scopefx_version} functions",
            file=sys.stderr,
        )
    else:
        out.write(filled)
    return 0


def _replace(path: str, text: str) -> None:
    """Write ``text`` to ``path`` in one step (a file beside it, then renamed over it): the
    target may be a live endpoint's config.yaml, which must never be seen half written. An
    existing file keeps its permissions; a symbolic link is followed."""
    target = os.path.realpath(path)
    tmp = f"{target}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if os.path.exists(target):
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
