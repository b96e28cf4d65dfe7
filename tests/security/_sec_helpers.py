"""Helpers of the security tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import tifffile

#: Peak memory a refused bomb may cost the worker (the process's own imports included).
RSS_BUDGET_MIB = 1024

SECRET = 4242  # pixel value of every file an attacker must not get


def tree(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes (to prove nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def run_measured(code: str, *, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh Python (scopefx importable); it leaves its answer in ``result``.

    Returns ``{"result": ..., "error": (type name, message) or None, "peak_rss_mib": ...}``.
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
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
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


def plant_ome_reference(path: Path, other: str) -> None:
    """Write a one-plane OME-TIFF at ``path`` (pixels 1) that names ``other`` for plane 2."""
    own, foreign = uuid.uuid4(), uuid.uuid4()
    tifffile.imwrite(path, np.ones((16, 16), np.uint16), ome=True)
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{own}">
<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="16"
 SizeY="16" SizeZ="2" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>
<TiffData FirstZ="0" IFD="0" PlaneCount="1"><UUID FileName="{path.name}">urn:uuid:{own}</UUID>
</TiffData>
<TiffData FirstZ="1" IFD="0" PlaneCount="1"><UUID FileName="{other}">urn:uuid:{foreign}</UUID>
</TiffData></Pixels></Image></OME>"""
    tifffile.tiffcomment(path, comment=xml.encode())
