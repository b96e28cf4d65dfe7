"""Helpers of the security tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

from _ome_helpers import plant_ome_reference  # noqa: F401 (re-exported for the tests)

#: Peak memory a refused bomb may cost the worker (the process's own imports included).
RSS_BUDGET_MIB = 1024

SECRET = 4242  # pixel value of every file an attacker must not get

#: A program that flips a file (argv: its path, the real file, the secret outside the roots)
#: between a link out of the roots and a hard link to the real file, as fast as it can.
FLIP = """
import os, sys
name, real, secret = sys.argv[1:4]
tmp = name + ".tmp"
while True:
    os.symlink(secret, tmp)
    os.replace(tmp, name)
    os.link(real, tmp)
    os.replace(tmp, name)
"""


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (to prove nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run_measured(code: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh Python (scopefx importable); it leaves its answer in ``result``.

    Returns ``{"result": ..., "error": (type name, message) or None, "peak_rss_mib": ...}``,
    the peak the child's own program reached (``VmHWM``; not the pytest worker it was forked
    from, whose size ``ru_maxrss`` keeps across exec).
    The child's address space is capped at 6 GiB, so a regression fails the test with a
    MemoryError instead of exhausting a shared machine; ``timeout`` only guards against a hang.
    """
    body = textwrap.indent(textwrap.dedent(code), "    ")
    script = (
        "import json, resource, sys\n"
        "result, error = None, None\n"
        "try:\n"
        f"{body}\n"
        "except BaseException as exc:\n"
        "    error = [type(exc).__name__, str(exc)[:2000]]\n"
        # VmHWM: this program's own peak. ru_maxrss would also hold the peak of the process
        # it was forked from (Linux keeps it across exec): a pytest worker of 700 MiB, in CI
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "try:\n"
        "    with open('/proc/self/status') as fh:\n"
        "        hwm = [ln for ln in fh if ln.startswith('VmHWM:')]\n"
        "    peak = int(hwm[0].split()[1]) / 1024 if hwm else peak\n"
        "except OSError:\n"
        "    pass\n"
        "print('@@' + json.dumps({'result': result, 'error': error, 'peak_rss_mib': peak}))\n"
    )

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))

    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=full_env,
        preexec_fn=cap, timeout=timeout,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    assert lines, f"child failed (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(lines[-1][2:])
