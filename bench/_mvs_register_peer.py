"""Register and fuse a real tile set with multiview-stitcher (the peer side of tiles_real.py).

Run with the interpreter of the isolated environment made by ``bench/setup_peer.sh``; this
script must not import scopefx::

    bench/.venv-mvs/bin/python bench/_mvs_register_peer.py stage.csv OUT.json [--threads N]
    bench/.venv-mvs/bin/python bench/_mvs_register_peer.py --no-fuse A.csv A.json B.csv B.json ...

``stage.csv`` has the header ``path,x,y`` (mosaic pixels, x = column; where the tile's pixel
(0, 0) lands). Every tile is read into memory (TIFF with tifffile, PNG with imageio), summed
over colour channels, and becomes a multiview-stitcher image with unit spacing and its stage
position as a translation under the transform key ``stage``. Registration is
``multiview_stitcher.registration.register`` with the package's defaults (phase correlation
pairwise, its default pruning of pairs and global optimisation), then
``multiview_stitcher.fusion.fuse`` with its defaults, computed in memory.

``OUT.json`` gets ``positions`` (per tile, the registered position ``[x, y]`` of its pixel
(0, 0)), ``wall_s`` (reading, registration and fusion), ``register_s``, ``peak_rss_mb``
(``VmHWM``), ``fused_shape`` and ``mvs_version``. ``--no-fuse`` registers only (``wall_s``
then covers reading and registration; register_synthetic.py uses it); several sets in one call
share the import cost, and a set that fails gets ``error`` without stopping the others.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from _peer_io import proc_status_mb, read_grey, read_tiles


def _register(stage_csv: Path, threads: int, fuse: bool) -> dict:
    rows = read_tiles(stage_csv)

    import dask
    import numpy as np
    from multiview_stitcher import __version__ as mvs_version
    from multiview_stitcher import fusion, msi_utils, registration
    from multiview_stitcher import spatial_image_utils as si_utils

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr), dask.config.set(num_workers=threads):
        msims = []
        for path, x, y in rows:
            data = read_grey(path)
            sim = si_utils.get_sim_from_array(
                data, dims=["y", "x"], scale={"y": 1.0, "x": 1.0},
                translation={"y": y, "x": x}, transform_key="stage",
            )  # fmt: skip
            msims.append(msi_utils.get_msim_from_sim(sim, scale_factors=[]))
        t1 = time.perf_counter()
        params = registration.register(
            msims, transform_key="stage", new_transform_key="registered", reg_channel_index=0
        )
        t2 = time.perf_counter()
        fused_shape = None
        if fuse:
            sims = [msi_utils.get_sim_from_msim(m) for m in msims]
            fused_shape = list(np.shape(fusion.fuse(sims, transform_key="registered").compute()))
        wall = time.perf_counter() - t0
    positions = []
    for (_, x, y), p in zip(rows, params, strict=True):
        a = np.asarray(p).reshape(-1, 3, 3)[0]  # (y, x) homogeneous, world from stage world
        yy, xx = (a @ np.array([y, x, 1.0]))[:2]
        positions.append([float(xx), float(yy)])
    return {
        "positions": positions,
        "wall_s": wall,
        "read_s": t1 - t0,
        "register_s": t2 - t1,
        "peak_rss_mb": proc_status_mb("VmHWM"),
        "fused_shape": fused_shape,
        "mvs_version": mvs_version,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="stage.csv OUT.json, repeated")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-fuse", action="store_true", help="register only")
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give stage.csv and OUT.json in pairs")
    for stage_csv, out_json in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        try:
            out = _register(Path(stage_csv), args.threads, fuse=not args.no_fuse)
        except Exception as exc:  # one set's failure is its result; the others still run
            out = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        Path(out_json).write_text(json.dumps(out))
        print(json.dumps({k: v for k, v in out.items() if k != "positions"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
