"""Self-check of ``bench/_mvs_peer.py``: fuse cut-out mosaics and compare with the ground truth.

Run with the interpreter of the isolated environment (``bench/setup_peer.sh``)::

    bench/.venv-mvs/bin/python bench/_mvs_selfcheck.py [--big] [--threads N] [--chunk PX]
        [--tile-backend dask|zarr] [--keep DIR]

Cases (every tile is cut from one ground-truth image, so wherever tiles overlap they agree
exactly and the fused mosaic should equal the ground truth up to interpolation and rounding):

* ``camera-int``: 3x3 tiles of 256x256 cut from ``skimage.data.camera()`` (scaled to uint16,
  upsampled to 720x720), 10% overlap, integer positions, the whole grid shifted by (+7, +5) so the
  output origin is not (0, 0);
* ``camera-neg``: the same with a (-13, -29) shift (negative mosaic coordinates);
* ``camera-frac``: tiles cut at integer positions jittered by +-4 px but listed in the CSV at
  those positions plus (3.5, 2.5), i.e. half-pixel fractional: the fused output (integer grid)
  must then equal the ground truth resampled half a pixel off (the mean of 2x2 neighbours, which
  is what linear interpolation gives), so fractional positions are honoured, not rounded;
* ``--big``: 8x8 tiles of 512x512 uint16, 10% overlap, +-4 px integer jitter (timing and memory).

For each case the script runs the peer as a subprocess, reads level 0 with ``zarr.open_array``,
aligns it using ``origin_yx`` and reports the RMSE over the region covered by tiles. It also
checks that a deliberately transposed reading (x and y swapped) is much worse, so the axis order
is really verified. Exit code 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tifffile
import zarr

PEER = Path(__file__).with_name("_mvs_peer.py")


def camera_u16(size: int) -> np.ndarray:
    """``skimage.data.camera()`` resized to ``size`` x ``size``, scaled to the uint16 range."""
    from skimage import data, transform

    img = data.camera().astype(np.float64) / 255.0
    img = transform.resize(img, (size, size), order=3, anti_aliasing=False)
    return np.clip(np.rint(img * 60000 + 1000), 0, 65535).astype(np.uint16)


def textured_u16(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Smooth random texture plus ``camera`` features, uint16 (ground truth for the big case)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3.0)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-12)
    cam = np.tile(camera_u16(512).astype(np.float64) / 65535.0, (shape[0] // 512 + 1,) * 2)
    img = 0.6 * noise + 0.4 * cam[: shape[0], : shape[1]]
    return np.clip(np.rint(img * 60000 + 1000), 0, 65535).astype(np.uint16)


def grid_positions(
    n: int, tile: int, overlap: float, jitter: int, seed: int
) -> list[tuple[int, int]]:
    """Top-left ``(y, x)`` of an n x n grid with the given overlap and integer jitter."""
    step = round(tile * (1.0 - overlap))
    rng = np.random.default_rng(seed)
    pos = []
    for r in range(n):
        for c in range(n):
            dy, dx = rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0)
            pos.append((r * step + jitter + int(dy), c * step + jitter + int(dx)))
    return pos


def write_mosaic(
    folder: Path,
    truth: np.ndarray,
    positions: list[tuple[int, int]],
    tile: int,
    offset_yx: tuple[float, float],
) -> Path:
    """Cut tiles at ``positions`` (truth coordinates) and list them at ``positions + offset``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,x,y"]
    for i, (y, x) in enumerate(positions):
        name = f"tile_{i:03d}.tif"
        tifffile.imwrite(folder / name, truth[y : y + tile, x : x + tile])
        lines.append(f"{name},{x + offset_yx[1]!r},{y + offset_yx[0]!r}")
    csv_path = folder / "tiles.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    return csv_path


def run_peer(csv_path: Path, out: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(PEER), str(csv_path), str(out), "--chunk", str(args.chunk)]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    if args.tile_backend is not None:
        cmd += ["--tile-backend", args.tile_backend]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"peer failed with exit code {proc.returncode}")
    lines = proc.stdout.strip().splitlines()
    if len(lines) != 1:
        raise SystemExit(f"peer printed {len(lines)} lines to stdout, expected 1:\n{proc.stdout}")
    return json.loads(lines[0])


def fused_in_truth_frame(
    result: dict, truth_shape: tuple[int, int], offset_yx: tuple[float, float], transpose: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Fused level 0 pasted into the ground truth's frame, and the mask of pasted pixels."""
    arr = np.asarray(zarr.open_array(result["zarr"], mode="r")[...])
    axes = result["axes"]
    assert axes[-2:] == ["y", "x"], axes
    img = arr.reshape(arr.shape[-2:]).astype(np.float64)
    if transpose:
        img = img.T
    # output index (i, j) <-> mosaic pixel origin + (i, j) <-> truth pixel origin - offset + (i, j)
    oy = result["origin_yx"][0] - offset_yx[0]
    ox = result["origin_yx"][1] - offset_yx[1]
    if abs(oy - round(oy)) > 1e-9 or abs(ox - round(ox)) > 1e-9:
        raise SystemExit(f"origin {result['origin_yx']} is not on the integer grid")
    oy, ox = round(oy), round(ox)
    canvas = np.full(truth_shape, np.nan)
    y0, x0 = max(oy, 0), max(ox, 0)
    y1 = min(oy + img.shape[0], truth_shape[0])
    x1 = min(ox + img.shape[1], truth_shape[1])
    canvas[y0:y1, x0:x1] = img[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
    return canvas, ~np.isnan(canvas)


def covered_mask(
    truth_shape: tuple[int, int], positions: list[tuple[int, int]], tile: int, margin: int
) -> np.ndarray:
    mask = np.zeros(truth_shape, bool)
    for y, x in positions:
        mask[y + margin : y + tile - margin, x + margin : x + tile - margin] = True
    return mask


def check_case(
    name: str,
    root: Path,
    truth: np.ndarray,
    positions: list[tuple[int, int]],
    tile: int,
    offset_yx: tuple[float, float],
    args: argparse.Namespace,
    shifted_truth: np.ndarray | None = None,
    margin: int = 0,
    max_rmse: float = 1.0,
) -> bool:
    csv_path = write_mosaic(root / name, truth, positions, tile, offset_yx)
    out = root / f"{name}.ome.zarr"
    result = run_peer(csv_path, out, args)
    # fractional offsets: compare with the truth resampled on the fused (integer) grid
    ref = truth if shifted_truth is None else shifted_truth
    int_offset = (float(np.floor(offset_yx[0])), float(np.floor(offset_yx[1])))
    fused, pasted = fused_in_truth_frame(result, ref.shape, int_offset, transpose=False)
    mask = covered_mask(ref.shape, positions, tile, margin) & pasted
    diff = fused[mask] - ref[mask].astype(np.float64)
    rmse = float(np.sqrt(np.mean(diff**2)))
    max_abs = float(np.max(np.abs(diff)))
    # the same comparison with x and y swapped must be far off (the axis order is not symmetric)
    fused_t, pasted_t = fused_in_truth_frame(result, ref.shape, int_offset, transpose=True)
    mask_t = covered_mask(ref.shape, positions, tile, margin) & pasted_t
    rmse_t = float(np.sqrt(np.mean((fused_t[mask_t] - ref[mask_t].astype(np.float64)) ** 2)))
    # expected output extent: the union of the tiles in mosaic coordinates
    ys = [p[0] + offset_yx[0] for p in positions]
    xs = [p[1] + offset_yx[1] for p in positions]
    exp_origin = [float(np.floor(min(ys))), float(np.floor(min(xs)))]
    ok = (
        rmse <= max_rmse
        and rmse_t > 50 * max(rmse, 1.0)
        and result["origin_yx"] == exp_origin
        and mask.sum() == covered_mask(ref.shape, positions, tile, margin).sum()
    )
    print(
        f"{name:12s} {'PASS' if ok else 'FAIL'}  rmse={rmse:.3f} max|d|={max_abs:.0f} "
        f"(x/y swapped: rmse={rmse_t:.0f})  origin_yx={result['origin_yx']} "
        f"(expected {exp_origin})  shape={result['shape']}  "
        f"wall={result['wall_s']:.2f}s (fuse {result['fuse_s']:.2f}s, pyramid "
        f"{result['pyramid_s']:.2f}s)  peak_rss={result['peak_rss_mb']:.0f} MB "
        f"(raw ru_maxrss {result['ru_maxrss_mb']:.0f} MB)  threads={result['threads']}  "
        f"tiles via {result['tile_backend']}  mvs {result['mvs_version']}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--big", action="store_true", help="also run 8x8 tiles of 512x512")
    parser.add_argument("--threads", type=int, default=None, help="passed to the peer")
    parser.add_argument("--chunk", type=int, default=512, help="passed to the peer (512)")
    parser.add_argument(
        "--tile-backend", choices=("dask", "zarr"), default=None, help="passed to the peer"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep")
    args = parser.parse_args(argv)

    root = args.keep or Path(tempfile.mkdtemp(prefix="mvs-selfcheck-"))
    ok = True
    try:
        tile = 256
        truth = camera_u16(720)
        pos = grid_positions(3, tile, 0.10, 0, seed=0)  # step 230 -> 3 tiles span 716 px
        ok &= check_case("camera-int", root, truth, pos, tile, (7.0, 5.0), args)
        ok &= check_case("camera-neg", root, truth, pos, tile, (-13.0, -29.0), args)

        # Fractional positions: tiles cut at integer jittered positions p, listed at p + 0.5.
        # Output pixel k (mosaic coordinate floor(min) + k) then samples truth at k - 0.5, the
        # mean of two neighbours for linear interpolation: compare with that.
        jpos = grid_positions(3, tile, 0.10, 4, seed=1)
        half = np.asarray(truth, np.float64)
        shifted = half.copy()
        shifted[1:, 1:] = 0.25 * (half[1:, 1:] + half[:-1, 1:] + half[1:, :-1] + half[:-1, :-1])
        ok &= check_case(
            "camera-frac",
            root,
            truth,
            jpos,
            tile,
            (3.5, 2.5),
            args,
            shifted_truth=shifted,
            margin=2,
        )

        if args.big:
            tile = 512
            step = round(tile * 0.9)
            size = 7 * step + tile + 8
            big = textured_u16((size, size))
            bpos = grid_positions(8, tile, 0.10, 4, seed=2)
            ok &= check_case("8x8x512", root, big, bpos, tile, (0.0, 0.0), args)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print("ALL PASS" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
