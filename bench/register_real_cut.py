"""Registration against exact ground truth on real instruments' images: mosaics cut from one
real frame each, so the content, the noise and the shading are the instrument's own.

::

    python bench/register_real_cut.py                       # every source, 10 and 20 % overlap
    python bench/register_real_cut.py --overlaps 0.05 0.1 --subpixel
    python bench/register_real_cut.py --peers --out bench/results/register_real_cut.txt

Sources (read from ``../shared/data``, never copied; see its README): the light-sheet
fluorescence stacks of ``focus_real/`` (800 x 512 px, 16-bit), whose frames within 0.1 um of
focus are cut in turn, one per tile, so that neighbouring tiles carry independent real noise
(and the small differences of frames 0.05-0.2 um apart); the in-focus frame of its
bright-field set (1024 x 1344 px, 8-bit); one tile of each set in ``tiles_real/`` (Leica
tissue micro-array bright field, 512 px; the graph-paper strip, 929 x 594 px, a repeated
pattern; the Zeiss CZI's first tile, 624 x 924 px, 16-bit). Where one frame serves every tile,
it is smoothed (a Gaussian of 1.5 px: its own noise, which every overlap would share, drops
to a fifth) and each tile gets independent Gaussian noise of the frame's own level (its
robust spread of pixel differences), as no two exposures share their noise. Without that,
the frame's noise matched in overlaps of empty background (NCC 0.2-0.5 at the true shift). Each
source is cut into a 3x3 mosaic (``--grid``) of square tiles as large as fit, true positions
on the nominal grid plus a jitter of up to 4 % of a tile per axis, sub-pixel (cubic spline
shifts, before the noise is added; ``--whole-pixels`` for whole ones). The stage positions
are the nominal grid, so each tile starts up to 4 % of a tile off. Registration runs with the
default :class:`~scopefx.fusion.RegistrationParams`; the error is ``|placed - true|`` per tile
after removing the mean offset. ``--peers`` also registers every case with ASHLAR and
multiview-stitcher (``bench/setup_peer.sh``), as ``register_synthetic.py`` does. The script
exits 0 whatever the figures; the summary names the cases above 1 px mean.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, progress, table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
OVERLAPS = (0.1, 0.2)
JITTER_SHARE = 0.04  # of a tile, per axis
TILE_SETS = {
    "leica_tma": ("tiles_real/leica_tma4x3/tiles/r1-c1.png", "bright field (TMA), 8-bit"),
    "graph_paper": ("tiles_real/starrynight_strip10/tiles/5.tif", "graph paper, 8-bit"),
    "zeiss_czi": ("tiles_real/zeiss_czi2/tiles/tile_0.tif", "Zeiss CZI tile, 16-bit"),
}


NEAR_FOCUS_UM = 0.1  # frames of a stack this close to focus serve as tiles in turn
DENOISE_PX = 1.5  # Gaussian (sigma) over a lone frame before each tile gets its own noise


def sources(data: Path) -> dict[str, tuple[list[Path], str]]:
    """Name -> (frames, what they are): a stack's frames near focus, else one frame."""
    found: dict[str, tuple[list[Path], str]] = {}
    manifest = data / "focus_real" / "manifest.csv"
    if manifest.is_file():
        by_series: dict[str, list[dict[str, str]]] = {}
        with manifest.open(newline="") as fh:
            for row in csv.DictReader(fh):
                by_series.setdefault(row["series"], []).append(row)
        for series, frames in sorted(by_series.items()):
            frames.sort(key=lambda r: abs(float(r["defocus_um"])))
            near = [r for r in frames if abs(float(r["defocus_um"])) <= NEAR_FOCUS_UM + 1e-9]
            if len(near) < 3:
                near = frames[:1]  # a coarse series: its best frame, noise added per tile
            what = f"{frames[0]['modality']}, {len(near)} frame(s), {frames[0]['dtype']}"
            found[series] = ([data / "focus_real" / r["file"] for r in near], what)
    for name, (rel, what) in TILE_SETS.items():
        if (data / rel).is_file():
            found[name] = ([data / rel], what)
    return found


def _grey(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float32)
    if frame.ndim == 3:  # colour: what a grey camera would see
        frame = frame.mean(axis=-1 if frame.shape[-1] in (3, 4) else 0)
    return frame


def noise_level(frame: np.ndarray) -> float:
    """The frame's pixel noise: robust spread of horizontal neighbour differences / sqrt(2)."""
    d = np.diff(frame.astype(np.float64), axis=1)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))


def cut_mosaic(
    frames: list[np.ndarray], grid: tuple[int, int], overlap: float, seed: int, subpixel: bool
) -> tuple[list[np.ndarray], list[tuple[float, float]], np.ndarray, int]:
    """Tiles cut from ``frames`` (Y, X; tile k from frame k mod len), their stage positions
    ``(x, y)``, their true positions ``(y, x)`` and the tile size. With one frame, each tile
    gets independent noise of the frame's own level."""
    from scipy import ndimage

    rows, cols = grid
    h, w = frames[0].shape
    # the largest square tile for which the grid and its jitter fit in the frame
    size = 0
    for t in range(min(h, w), 15, -1):
        j = max(2, math.ceil(JITTER_SHARE * t))
        step = round(t * (1 - overlap))
        if (rows - 1) * step + t + 2 * j + 4 <= h and (cols - 1) * step + t + 2 * j + 4 <= w:
            size = t
            break
    if not size:
        raise ValueError(f"a {rows}x{cols} grid does not fit in {h} x {w} px")
    jitter = max(2, math.ceil(JITTER_SHARE * size))
    step = round(size * (1 - overlap))
    margin = jitter + 2
    rng = np.random.default_rng(seed)
    nominal = np.array([(r, k) for r in range(rows) for k in range(cols)], float) * step + margin
    offsets = rng.uniform(-jitter, jitter, nominal.shape)
    if not subpixel:
        offsets = np.round(offsets)
    true = nominal + offsets
    sigma = noise_level(frames[0]) if len(frames) == 1 else 0.0
    if sigma:  # the frame's own noise would be shared by every overlap: smooth it away first
        frames = [ndimage.gaussian_filter(frames[0], DENOISE_PX)]
    tiles = []
    for k, (y, x) in enumerate(true):
        data = frames[k % len(frames)]
        if subpixel:
            out = ndimage.affine_transform(data, np.eye(2), offset=(y, x), output_shape=(size,) * 2,
                                           order=3)  # fmt: skip
        else:
            out = data[int(y) : int(y) + size, int(x) : int(x) + size].copy()
        if sigma:
            out = out + rng.normal(0, sigma, out.shape).astype(np.float32)
        tiles.append(np.clip(out, 0, None).astype(np.float32))
    stage = nominal + (true - nominal).mean(axis=0)
    return tiles, [(float(x), float(y)) for y, x in stage], true, size


def add_banding(tiles: list[np.ndarray], level: float, seed: int = 7) -> list[np.ndarray]:
    """``tiles`` plus the same row and column offsets in every tile (a camera's fixed-pattern
    banding): independent Gaussian offsets of standard deviation ``level`` per row and per
    column, drawn once (``seed``)."""
    size = tiles[0].shape
    rng = np.random.default_rng(seed)
    pattern = rng.normal(0, level, (size[0], 1)) + rng.normal(0, level, (1, size[1]))
    return [(t + pattern).astype(np.float32) for t in tiles]


def chosen_sources(
    parser: argparse.ArgumentParser, data: Path, wanted: list[str] | None
) -> tuple[dict[str, tuple[list[Path], str]], list[str]]:
    """:func:`sources` under ``data`` and the names to run (``wanted``, default all); a name
    not found is a usage error."""
    found = sources(data)
    names = wanted or list(found)
    missing = [n for n in names if n not in found]
    if missing or not names:
        parser.error(f"no such source under {data}: {missing or 'none found'}; "
                     f"available: {sorted(found)}")  # fmt: skip
    return found, names


def main(argv: list[str] | None = None) -> int:
    from register_synthetic import _case, _grid, _run_peers, _tally, summarise
    from scopefx.fusion import BANDING_MODES, RegistrationParams
    from scopefx.io import read_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--sources", nargs="*", default=None, help="names to run (default all)")
    parser.add_argument("--grid", type=_grid, default=(3, 3), help="rows x columns, e.g. 3x3")
    parser.add_argument("--overlaps", nargs="*", type=float, default=list(OVERLAPS))
    parser.add_argument("--seeds", type=int, default=2, help="jitter draws per case")
    parser.add_argument("--whole-pixels", action="store_true",
                        help="whole-pixel true positions (default: sub-pixel)")  # fmt: skip
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="register what can be (RegistrationParams.allow_partial)",
    )
    parser.add_argument("--banding", type=float, default=0.0, metavar="X",
                        help="add the same row and column offsets to every tile, of X times "
                        "the frame's noise (a camera's banding; default 0: none)")  # fmt: skip
    parser.add_argument("--banding-mode", choices=BANDING_MODES, default="auto",
                        help="RegistrationParams.remove_banding (default: auto)")  # fmt: skip
    parser.add_argument("--peers", action="store_true",
                        help="also ASHLAR and multiview-stitcher from bench/.venv-mvs")  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    found, names = chosen_sources(parser, args.data, args.sources)
    peers: list[str] = []
    if args.peers:
        import _peer_register

        peers = _peer_register.available()
    rows_, cols_ = args.grid
    report = Report()
    report.add("# Registration against exact ground truth on real frames (mosaics cut from them)",
               *environment_lines(), f"data: {args.data}",
               f"{rows_}x{cols_} tiles, true positions on the grid plus up to "
               f"{JITTER_SHARE:.0%} of a tile ({'whole' if args.whole_pixels else 'sub-'}pixel), "
               f"stage on the nominal grid; seeds 1..{args.seeds}",
               f"banding: {args.banding:g} x the frame's noise, remove_banding={args.banding_mode}",
               "")  # fmt: skip
    params = RegistrationParams(allow_partial=args.allow_partial, remove_banding=args.banding_mode)
    rows, means, bad, info = [], [], [], []
    peer_means: dict[str, list[float]] = {p: [] for p in peers}
    peer_rows: list[list[str]] = []
    for name in names:
        paths, what = found[name]
        frames = [_grey(read_image(p)) for p in paths]
        cells = [name]
        sets, truths, labels = [], [], []
        for overlap in args.overlaps:
            for seed in range(1, args.seeds + 1):
                progress(f"{name} {overlap:.0%} seed {seed}")
                tiles, stage, true, size = cut_mosaic(frames, args.grid, overlap, seed,
                                                      not args.whole_pixels)  # fmt: skip
                if args.banding:
                    tiles = add_banding(tiles, args.banding * noise_level(frames[0]))
                result = _case(tiles, stage, true, params)
                _tally(result, f"{name} {overlap:.0%} seed {seed}", cells, means, bad)
                if peers:
                    sets.append((tiles, stage))
                    truths.append(true)
                    labels.append((f"seed {seed}", overlap, result[0]))
        noise = f"{noise_level(frames[0]):.1f}" if len(frames) == 1 else "own"
        info.append([name, what, f"{frames[0].shape[0]} x {frames[0].shape[1]}", f"{size} px",
                     noise])  # fmt: skip
        rows.append(cells)
        if peers:
            _run_peers(name, peers, sets, truths, labels, peer_means, peer_rows)
    report.add(*table(["source", "what", "frame", "tile", "noise added (sd)"], info), "")
    head = ["source", *(f"{o:.0%} s{s} mean / max px" for o in args.overlaps
                        for s in range(1, args.seeds + 1))]  # fmt: skip
    report.add(*table(head, rows), "")
    summarise(report, means, bad, peer_means, peer_rows, ["source", "case"])
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
