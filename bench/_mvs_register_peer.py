"""Register and fuse a real tile set with multiview-stitcher (the peer side of tiles_real.py).

Run with the interpreter of the isolated environment made by ``bench/setup_peer.sh``; this
script must not import scopefx::

    bench/.venv-mvs/bin/python bench/_mvs_register_peer.py stage.csv OUT.json [--threads N]

``stage.csv`` has the header ``path,x,y`` (mosaic pixels, x = column; where the tile's pixel
(0, 0) lands). Every tile is read into memory (TIFF with tifffile, PNG with imageio), summed
over colour channels, and becomes a multiview-stitcher image with unit spacing and its stage
position as a translation under the transform key ``stage``. Registration is
``multiview_stitcher.registration.register`` with the package's defaults (phase correlation
pairwise, its default pruning of pairs and global optimisation), then
``multiview_stitcher.fusion.fuse`` with its defaults, computed in memory.

``OUT.json`` gets ``positions`` (per tile, the registered position ``[x, y]`` of its pixel
(0, 0)), ``wall_s`` (reading, registration and fusion), ``register_s``, ``peak_rss_mb``
(``VmHWM``), ``fused_shape`` and ``mvs_version``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from pathlib import Path


def _vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tiles", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    rows = []
    with args.tiles.open(newline="") as fh:
        for row in csv.DictReader(fh):
            path = Path(row["path"])
            rows.append((path if path.is_absolute() else args.tiles.parent / path,
                         float(row["x"]), float(row["y"])))  # fmt: skip

    import dask
    import numpy as np
    from multiview_stitcher import __version__ as mvs_version
    from multiview_stitcher import fusion, msi_utils, registration
    from multiview_stitcher import spatial_image_utils as si_utils

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr), dask.config.set(num_workers=args.threads):
        msims = []
        for path, x, y in rows:
            if path.suffix.lower() in (".tif", ".tiff"):
                import tifffile

                data = tifffile.imread(path)
            else:
                import imageio.v3 as iio

                data = iio.imread(path)
            data = np.asarray(data, dtype=np.float32)
            if data.ndim == 3:
                data = data.sum(axis=-1) if data.shape[-1] <= 4 else data.sum(axis=0)
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
        sims = [msi_utils.get_sim_from_msim(m) for m in msims]
        fused = fusion.fuse(sims, transform_key="registered").compute()
        wall = time.perf_counter() - t0
    positions = []
    for (_, x, y), p in zip(rows, params, strict=True):
        a = np.asarray(p).reshape(-1, 3, 3)[0]  # (y, x) homogeneous, world from stage world
        yy, xx = (a @ np.array([y, x, 1.0]))[:2]
        positions.append([float(xx), float(yy)])
    out = {
        "positions": positions,
        "wall_s": wall,
        "read_s": t1 - t0,
        "register_s": t2 - t1,
        "peak_rss_mb": _vm_hwm_mb(),
        "fused_shape": list(np.shape(fused)),
        "mvs_version": mvs_version,
    }
    args.out.write_text(json.dumps(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
