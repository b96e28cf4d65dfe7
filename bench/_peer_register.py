"""Run the registration peers (ASHLAR, multiview-stitcher) on in-memory tile sets.

Used by register_synthetic.py ``--peers``. Each set is written to a temporary folder as
uncompressed TIFF tiles and a ``stage.csv`` (``path,x,y``), then each peer registers every set in
one call of its script in ``bench/.venv-mvs`` (``bench/setup_peer.sh``), so its import cost is
paid once. A peer's refusal or failure of one set is that set's result, not the sweep's.
"""

from __future__ import annotations

import csv
import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER_PY = HERE / ".venv-mvs" / "bin" / "python"
SCRIPTS = {
    "ashlar": (HERE / "_ashlar_peer.py", [], "ashlar"),
    "mvs": (HERE / "_mvs_register_peer.py", ["--no-fuse", "--threads", "2"], "multiview_stitcher"),
}


def available() -> list[str]:
    """The peers whose package imports in the peer environment."""
    if not PEER_PY.is_file():
        return []
    found = []
    for name, (_, _, module) in SCRIPTS.items():
        probe = subprocess.run([str(PEER_PY), "-c", f"import {module}"], capture_output=True)
        if probe.returncode == 0:
            found.append(name)
    return found


def register_sets(
    peer: str, sets: list[tuple[list, list[tuple[float, float]]]], flags: tuple[str, ...] = ()
) -> list[dict]:
    """``sets``: per set, the tiles (2D arrays) and their stage positions ``(x, y)``; ``flags``:
    more options for the peer's script. Returns per set the peer's JSON result: ``positions``
    (``[x, y]`` per tile) or ``error``."""
    import tifffile

    script, fixed, _ = SCRIPTS[peer]
    with tempfile.TemporaryDirectory(prefix=f"peer-{peer}-") as tmp:
        pairs = []
        for k, (tiles, stage) in enumerate(sets):
            folder = Path(tmp) / f"set{k:04d}"
            folder.mkdir()
            with (folder / "stage.csv").open("w", newline="") as fh:
                out = csv.writer(fh)
                out.writerow(["path", "x", "y"])
                for t, (tile, (x, y)) in enumerate(zip(tiles, stage, strict=True)):
                    tifffile.imwrite(folder / f"tile_{t}.tif", tile)
                    out.writerow([f"tile_{t}.tif", repr(float(x)), repr(float(y))])
            pairs += [str(folder / "stage.csv"), str(folder / "out.json")]
        proc = subprocess.run([str(PEER_PY), str(script), *fixed, *flags, *pairs],
                              capture_output=True, text=True, timeout=7200)  # fmt: skip
        results = []
        for k in range(len(sets)):
            js = Path(tmp) / f"set{k:04d}" / "out.json"
            if js.is_file():
                results.append(json.loads(js.read_text()))
            else:
                tail = (proc.stderr.strip().splitlines() or ["no result"])[-1]
                results.append({"error": tail[:300]})
        return results
