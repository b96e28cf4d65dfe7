"""Register a real tile set with m2stitch (a MIST re-implementation), as a peer of tiles_real.py.

Run with an interpreter that has m2stitch (``bench/.venv-mvs`` after
``bench/.venv-mvs/bin/pip install m2stitch``); this script must not import scopefx::

    bench/.venv-mvs/bin/python bench/_m2stitch_peer.py stage.csv OUT.json

Tiles are read into memory (summed over colour channels); rows and columns come from the stage
positions divided by the median step; ``position_initial_guess`` is the stage position;
everything else is m2stitch's default. m2stitch registers only (it has no fusion), so
``wall_s`` covers reading and registration. ``OUT.json`` gets ``positions`` (``[x, y]`` of
each tile's pixel (0, 0)), ``wall_s``, ``peak_rss_mb`` (``VmHWM``) and ``error`` when m2stitch
refuses the set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from _peer_io import proc_status_mb, read_grey, read_tiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tiles", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    rows = read_tiles(args.tiles)

    import numpy as np

    t0 = time.perf_counter()
    images = [read_grey(path) for path, _, _ in rows]
    xy = np.array([(x, y) for _, x, y in rows])
    steps = []
    for ax in (0, 1):
        d = np.diff(np.unique(np.round(xy[:, ax])))
        steps.append(float(np.median(d)) if len(d) else 1.0)
    col = np.round((xy[:, 0] - xy[:, 0].min()) / steps[0]).astype(int)
    row = np.round((xy[:, 1] - xy[:, 1].min()) / steps[1]).astype(int)
    out: dict = {}
    try:
        import m2stitch

        with contextlib.redirect_stdout(sys.stderr):
            result, _ = m2stitch.stitch_images(
                np.stack(images), rows=list(row), cols=list(col),
                position_initial_guess=xy[:, ::-1].copy(), row_col_transpose=False,
            )  # fmt: skip
        out["positions"] = [[float(x), float(y)] for y, x in
                            zip(result["y_pos"], result["x_pos"], strict=True)]  # fmt: skip
    except Exception as exc:  # the peer's failure is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = proc_status_mb("VmHWM")
    args.out.write_text(json.dumps(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
