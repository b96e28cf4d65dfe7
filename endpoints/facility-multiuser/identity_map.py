#!/usr/bin/env python3
"""scopefx facility endpoint: map a Globus identity to a local account, refusing system accounts.

An external identity mapping program (Globus Connect Server identity mapping protocol,
``external_identity_mapping#1.0.0``), named by identity_mapping.json. The endpoint runs it as
root with the identities on stdin::

    {"DATA_TYPE": "identity_mapping_input#1.0.0", "identities": [{"id": ..., "username": ...}]}

and reads the mappings it prints::

    {"DATA_TYPE": "identity_mapping_output#1.0.0", "result": [{"id": ..., "output": "alice"}]}

An identity ``NAME@facility.example.org`` maps to the local account ``NAME`` only when that
account exists and is an ordinary user: uid from MIN_UID to MAX_UID (not root, ``daemon``,
``slurm``, ``munge``, ``nobody``...), and a login shell. Everything else maps to nothing, and
the endpoint refuses the identity. Globus's expression mappings cannot say this: they match
names, they cannot look up the account.

Standard library only, so that it runs with the system's python3; install it root-owned and
not writable by users, beside identity_mapping.json (/opt/scopefx/endpoint/). Edit DOMAIN,
MIN_UID and MAX_UID for your site (MIN_UID/MAX_UID: UID_MIN/UID_MAX of /etc/login.defs).
Exit status 0 with an empty result means "no mapping"; anything else is an error the
endpoint logs.
"""

from __future__ import annotations

import json
import pwd
import re
import sys

#: The facility's identity provider domain: only its identities map.
DOMAIN = "facility.example.org"
#: Ordinary accounts: uids from MIN_UID to MAX_UID inclusive.
MIN_UID = 1000
MAX_UID = 60000
#: Shells of accounts that must not log in (and so must not run tasks either).
NO_LOGIN_SHELLS = ("nologin", "false", "sync", "halt", "shutdown")
#: POSIX portable user names (no leading dash, at most 32 characters).
NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def local_account(username: str) -> str | None:
    """The local account ``username`` (a Globus identity's username) maps to, or None."""
    name, at, domain = username.rpartition("@")
    if not at or domain.lower() != DOMAIN or not NAME_RE.fullmatch(name):
        return None
    try:
        record = pwd.getpwnam(name)
    except KeyError:
        return None
    if not MIN_UID <= record.pw_uid <= MAX_UID:
        return None
    if not record.pw_shell or record.pw_shell.rsplit("/", 1)[-1] in NO_LOGIN_SHELLS:
        return None
    return record.pw_name


def main(argv: list[str]) -> int:
    try:
        document = json.load(sys.stdin)
        identities = document["identities"]
    except (ValueError, KeyError, TypeError) as exc:
        print(f"identity_map.py: invalid input: {exc}", file=sys.stderr)
        return 1
    every = "-a" in argv  # all mappings of the set, not only the first
    result = []
    for identity in identities:
        account = local_account(str(identity.get("username", "")))
        if account is not None:
            result.append({"id": identity["id"], "output": account})
            if not every:
                break
    json.dump({"DATA_TYPE": "identity_mapping_output#1.0.0", "result": result}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
