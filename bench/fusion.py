"""Mosaic fusion benchmark: ``scopefx fuse`` next to multiview-stitcher, same tiles, same run.

Cases (the issue's):

* ``4k``: 8 x 8 tiles of 512^2 uint16, 10 % overlap, +-4 px sub-pixel jitter.
* ``16k``: 16 x 16 tiles of 1024^2, same overlap and jitter.

Data (regenerable, nothing downloaded): the ground truth is scikit-image's bundled ``retina``
image, grey, smoothed by a Gaussian of sigma 1 px (so that sub-pixel resampling is defined),
mirror-tiled without bound; it is never held whole: each tile and each comparison window is
computed from it on demand. Tiles are cut at their true (jittered, fractional) positions with
a cubic spline shift and quantised to uint16; the tile table holds those true positions.

Both tools stream to OME-Zarr on disk with a 1024 px chunk, linear interpolation and their
default blending (scopefx: feathered ``linear``; multiview-stitcher: its weighted average with
smooth blending weights), with all cores. Each runs in its own process; peak memory is that
process's peak RSS. Times are the fusion and write, excluding interpreter start-up and imports
(scopefx: ``FusionResult.seconds``, which includes reading tile headers and planning;
multiview-stitcher: its script's ``wall_s``). Both write a pyramid. scopefx is also run with
cubic interpolation (``--order 3``) for its time and RMSE. RMSE is against the ground
truth over the region every tile row and column covers (no fill at the edges), in grey levels.

Also timed: planning 10,000 tiles (pure geometry, no I/O; target < 5 s).

Usage::

    bash bench/setup_peer.sh             # once: multiview-stitcher in bench/.venv-mvs
    python bench/fusion.py               # both cases
    python bench/fusion.py --quick       # a 3x3 smoke case (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import Report, environment_lines, fmt, pass_fail, progress, table  # noqa: E402

PEER_PYTHON = HERE / ".venv-mvs" / "bin" / "python"
CASES = {
    "quick": {"grid": 3, "tile": 256, "target_speed": None},
    "4k": {"grid": 8, "tile": 512, "target_speed": 8.0},
    "16k": {"grid": 16, "tile": 1024, "target_speed": 25.0},
}
OVERLAP, JITTER, LEVELS = 0.10, 4.0, 65000.0


class Truth:
    """Windows of the unbounded, mirror-tiled, smoothed ``retina`` image (float64)."""

    def __init__(self) -> None:
        from scipy import ndimage
        from skimage import color, data, util

        img = util.img_as_float64(color.rgb2gray(data.retina()[..., :3]))
        self.base = ndimage.gaussian_filter(img, 1.0, mode="reflect")

    def window(self, y0: int, x0: int, h: int, w: int) -> object:
        import numpy as np

        def mirror(start: int, n: int, size: int) -> np.ndarray:
            i = np.arange(start, start + n) % (2 * size)
            return np.where(i < size, i, 2 * size - 1 - i)

        rows = mirror(y0, h, self.base.shape[0])
        cols = mirror(x0, w, self.base.shape[1])
        return self.base[np.ix_(rows, cols)] * LEVELS


def make_tiles(folder: Path, grid: int, tile: int, truth: Truth) -> tuple[Path, list]:
    """Cut ``grid x grid`` tiles at jittered sub-pixel positions; write TIFFs and a table."""
    import numpy as np
    import tifffile
    from scipy import ndimage

    rng = np.random.default_rng(0)
    step = round(tile * (1 - OVERLAP))
    pad = 8
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in range(grid):
        for c in range(grid):
            y, x = np.array([r * step, c * step]) + JITTER + rng.uniform(-JITTER, JITTER, 2)
            iy, ix = math.floor(y), math.floor(x)
            win = truth.window(iy - pad, ix - pad, tile + 2 * pad, tile + 2 * pad)
            shifted = ndimage.shift(win, (-(y - iy), -(x - ix)), order=3, mode="nearest")
            pixels = np.clip(np.rint(shifted[pad:-pad, pad:-pad]), 0, 65535).astype(np.uint16)
            name = f"tile_{r:02d}_{c:02d}.tif"
            tifffile.imwrite(folder / name, pixels)
            rows.append((name, float(x), float(y)))
    csv_path = folder / "tiles.csv"
    csv_path.write_text("path,x,y\n" + "".join(f"{n},{x!r},{y!r}\n" for n, x, y in rows))
    return csv_path, rows


def run_measured(cmd: list[str], timeout: float) -> tuple[str, float]:
    """Run ``cmd`` in a fresh launcher process; its stdout and the child's peak RSS (MiB)."""
    launcher = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(p.stderr)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'stdout': p.stdout, 'rss_mb': rss}))\n"
    )
    res = subprocess.run([sys.executable, "-c", launcher, *cmd], capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if info["rc"] != 0:
        raise RuntimeError(f"{cmd[0]} ... failed ({info['rc']}):\n{res.stderr[-3000:]}")
    return info["stdout"], info["rss_mb"]


def rmse(level0: str, origin_yx: tuple[float, float], region: tuple[int, int, int, int],
         truth: Truth) -> float:  # fmt: skip
    """RMSE (grey levels) of a fused array against the truth over ``region`` (mosaic px)."""
    import numpy as np
    import zarr

    arr = zarr.open_array(level0, mode="r")
    y0, x0, y1, x1 = region
    oy, ox = (round(v) for v in origin_yx)
    total, count = 0.0, 0
    for ys in range(y0, y1, 1024):
        ye = min(ys + 1024, y1)
        got = np.asarray(
            arr[(0,) * (arr.ndim - 2) + (slice(ys - oy, ye - oy), slice(x0 - ox, x1 - ox))]
        )
        diff = got.astype(np.float64) - truth.window(ys, x0, ye - ys, x1 - x0)
        total += float(np.sum(diff**2))
        count += diff.size
    return math.sqrt(total / count)


def plan_10k() -> float:
    import numpy as np

    from scopefx.fusion import FusionParams, TileTable, make_plan

    n, step, tile = 100, 922, 1024
    rng = np.random.default_rng(0)
    pos = [(c * step + rng.uniform(-4, 4), r * step + rng.uniform(-4, 4))
           for r in range(n) for c in range(n)]  # fmt: skip
    t0 = time.perf_counter()
    tt = TileTable.from_positions([f"t{i}.tif" for i in range(n * n)], pos)
    make_plan(tt, np.full((n * n, 2), tile), params=FusionParams(), force=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 3x3 smoke case only")
    ap.add_argument("--cases", default="4k,16k", help="comma list of: quick, 4k, 16k")
    ap.add_argument("--workdir", help="where tiles and outputs go (default: a temp folder)")
    ap.add_argument("--no-peer", action="store_true", help="skip multiview-stitcher")
    ap.add_argument("--out", help="also write the summary here")
    args = ap.parse_args(argv)
    cases = ["quick"] if args.quick else args.cases.split(",")
    peer = PEER_PYTHON.exists() and not args.no_peer
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scopefx-bench-"))
    truth = Truth()
    rep = Report()
    rep.add("# Mosaic fusion: scopefx fuse vs multiview-stitcher (same tiles, same run)", "")
    rep.add(*environment_lines(), "")
    rows = []
    extra_rows: list[list[str]] = []
    memory = {}
    for name in cases:
        case = CASES[name]
        grid, tile = case["grid"], case["tile"]
        folder = work / name
        csv_path = folder / "tiles" / "tiles.csv"
        if not csv_path.exists():  # tiles are kept in a --workdir between runs
            progress(f"[{name}] making {grid}x{grid} tiles of {tile}^2 ...")
            csv_path, _ = make_tiles(folder / "tiles", grid, tile, truth)
        step = round(tile * (1 - OVERLAP))
        region = (int(2 * JITTER) + 1, int(2 * JITTER) + 1,
                  (grid - 1) * step + tile, (grid - 1) * step + tile)  # fmt: skip
        out = folder / "scopefx.ome.zarr"
        shutil.rmtree(out, ignore_errors=True)
        progress(f"[{name}] scopefx fuse ...")
        t0 = time.perf_counter()
        _, ours_rss = run_measured(
            [sys.executable, "-m", "scopefx", "fuse", str(csv_path), "-o", str(out), "--chunk",
             "1024", "--order", "1", "-q", "--json", str(folder / "scopefx.json")],
            timeout=3600,
        )  # fmt: skip
        ours_wall = time.perf_counter() - t0
        result = json.loads((folder / "scopefx.json").read_text())
        ours_s = result["seconds"]
        origin = (result["origin_px"][0], result["origin_px"][1])
        ours_rmse = rmse(str(out / "0"), origin, region, truth)
        memory[name] = ours_rss
        progress(f"[{name}] scopefx fuse --order 3 ...")
        shutil.rmtree(out, ignore_errors=True)
        run_measured(
            [sys.executable, "-m", "scopefx", "fuse", str(csv_path), "-o", str(out), "--chunk",
             "1024", "--order", "3", "-q", "--json", str(folder / "cubic.json")],
            timeout=3600,
        )  # fmt: skip
        cubic = json.loads((folder / "cubic.json").read_text())
        cubic_rmse = rmse(str(out / "0"), origin, region, truth)
        extra_rows.append([name, fmt(cubic["seconds"], 2), fmt(cubic_rmse, 1)])
        row = [name, f"{grid}x{grid}x{tile}^2", fmt(ours_s, 2), fmt(ours_wall, 1),
               f"{ours_rss:.0f}", fmt(ours_rmse, 1)]  # fmt: skip
        if peer:
            progress(f"[{name}] multiview-stitcher ...")
            mvs_out = folder / "mvs.ome.zarr"
            shutil.rmtree(mvs_out, ignore_errors=True)
            stdout, mvs_rss = run_measured(
                [str(PEER_PYTHON), str(HERE / "_mvs_peer.py"), str(csv_path), str(mvs_out),
                 "--chunk", "1024", "--threads", str(os.cpu_count() or 1)],
                timeout=7200,
            )  # fmt: skip
            info = json.loads(stdout.strip().splitlines()[-1])
            mvs_rmse = rmse(info["zarr"], tuple(info["origin_yx"]), region, truth)
            ratio = info["wall_s"] / ours_s
            target = case["target_speed"]
            verdict = "" if target is None else f" {pass_fail(ratio >= target)} (>= {target:g}x)"
            row += [fmt(info["wall_s"], 2), f"{max(mvs_rss, info['peak_rss_mb']):.0f}",
                    fmt(mvs_rmse, 1), f"{ratio:.1f}x{verdict}",
                    pass_fail(ours_rmse <= mvs_rmse)]  # fmt: skip
        rows.append(row)
        for done in ("scopefx.ome.zarr", "mvs.ome.zarr"):
            shutil.rmtree(folder / done, ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(folder, ignore_errors=True)
    head = ["case", "tiles", "scopefx s", "CLI wall s", "peak MiB", "RMSE"]
    if peer:
        head += ["mvs s", "mvs peak MiB", "mvs RMSE", "speed-up", "RMSE <= mvs"]
    rep.add(*table(head, rows), "")
    rep.add("scopefx with cubic interpolation (--order 3), same tiles:")
    rep.add(*table(["case", "scopefx s", "RMSE"], extra_rows), "")
    if not peer:
        rep.add("multiview-stitcher: not run (bash bench/setup_peer.sh installs it)", "")
    if "16k" in memory:
        rep.add(f"peak memory at 16k: {memory['16k']:.0f} MiB, "
                f"{pass_fail(memory['16k'] < 600)} (< 600 MB)")  # fmt: skip
    if "4k" in memory and "16k" in memory:
        growth = memory["16k"] / memory["4k"]
        rep.add(f"memory growth 4k -> 16k (16x the pixels): {growth:.2f}x")
    seconds = plan_10k()
    rep.add(f"plan 10,000 tiles (no I/O): {seconds:.2f} s, {pass_fail(seconds < 5)} (< 5 s)")
    rep.emit(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
