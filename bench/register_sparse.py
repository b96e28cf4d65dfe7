"""Registration of sparse specimens against exact ground truth: one real frame set in a flat
surround, as a section or a colony lies on empty glass, and cut into a mosaic.

::

    python bench/register_sparse.py                        # every source, 5x5 tiles of 384 px
    python bench/register_sparse.py --seeds 8 --allow-partial \
        --out bench/results/register_sparse.txt

Sources as in ``register_real_cut.py`` (read from ``../shared/data``, never copied): each
source's first frame, smoothed (a Gaussian of 1.5 px, so that its own noise is not shared by
the overlaps), is set in the middle of a flat surround at its 5th percentile, large enough for
the grid (``--grid``, ``--tile``, ``--overlap``). Each tile is cut at its true position (the
nominal grid plus up to ``--jitter`` of a tile per axis, sub-pixel: a cubic spline shift of
the crop) and gets independent Gaussian noise of the frame's own level. Most overlaps then
hold only the surround's noise, and the specimen's straight edge crosses some of them. The
stage positions are the nominal grid. Registration runs with the default
:class:`~scopefx.fusion.RegistrationParams` (``--allow-partial`` to register what can be where
the default refuses). The error is ``|placed - true|`` per tile, after removing the mean
offset, over the tiles that hold the specimen over a quarter of their area or more; each cell
also gives it over every tile (a tile of the surround alone can only be placed by the stage
model, as well as the stage is right). No peers: their errors would be over other tiles. The
script exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, progress, table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
MARGIN = 20  # px of surround around the grid
SPECIMEN_SHARE = 0.25  # of a tile's area: a tile that holds this much specimen can be placed


def sparse_mosaic(
    frame: np.ndarray, grid: tuple[int, int], tile: int, overlap: float, jitter: float,
    seed: int,
) -> tuple[list[np.ndarray], list[tuple[float, float]], np.ndarray, np.ndarray]:  # fmt: skip
    """Tiles cut from ``frame`` set in a flat surround, their stage positions ``(x, y)``,
    their true positions ``(y, x)`` and which of them hold the specimen over at least
    ``SPECIMEN_SHARE`` of their area."""
    from scipy import ndimage

    from register_real_cut import DENOISE_PX, noise_level

    rows, cols = grid
    step = round(tile * (1 - overlap))
    shape = ((rows - 1) * step + tile + 2 * MARGIN, (cols - 1) * step + tile + 2 * MARGIN)
    sigma = noise_level(frame)
    smooth = ndimage.gaussian_filter(frame.astype(np.float64), DENOISE_PX)
    canvas = np.full(shape, float(np.percentile(smooth, 5)))
    h, w = (min(a, b) for a, b in zip(smooth.shape, shape, strict=True))
    fy, fx = (smooth.shape[0] - h) // 2, (smooth.shape[1] - w) // 2
    cy, cx = (shape[0] - h) // 2, (shape[1] - w) // 2
    canvas[cy : cy + h, cx : cx + w] = smooth[fy : fy + h, fx : fx + w]
    rng = np.random.default_rng(seed)
    reach = jitter * tile
    nominal = np.array([(r, c) for r in range(rows) for c in range(cols)], float) * step + MARGIN
    true = np.empty_like(nominal)
    tiles = []
    for k, at in enumerate(nominal):  # tile by tile: its position, then its noise
        true[k] = at + rng.uniform(-reach, reach, 2)
        corner = np.floor(true[k]).astype(int)
        crop = canvas[corner[0] : corner[0] + tile + 2, corner[1] : corner[1] + tile + 2]
        out = ndimage.shift(crop, corner - true[k], order=3)[:tile, :tile]  # sub-pixel
        tiles.append((out + rng.normal(0, sigma, out.shape)).astype(np.float32))
    stage = nominal  # the nominal grid, whole pixels
    inside = np.zeros(shape, bool)
    inside[cy : cy + h, cx : cx + w] = True
    share = np.array([inside[int(y) : int(y) + tile, int(x) : int(x) + tile].mean()
                      for y, x in true])  # fmt: skip
    return tiles, [(float(x), float(y)) for y, x in stage], true, share >= SPECIMEN_SHARE


def _register(
    tiles: list[np.ndarray], stage: list[tuple[float, float]], true: np.ndarray,
    holds: np.ndarray, params: object,
) -> tuple[tuple[float, float, str], str]:  # fmt: skip
    """Register one case: the mean and max error over the tiles that hold the specimen (the
    mean offset of those removed; NaN when refused) with a note, and the same over every tile
    as text."""
    from register_synthetic import _error, _placed

    placed, note = _placed(tiles, stage, params)
    if placed is None:
        return (float("nan"), float("nan"), note), "-"
    every = _error(placed, true)
    return (*_error(placed[holds], true[holds]), note), f"all {every[0]:.2f} / {every[1]:.2f}"


def main(argv: list[str] | None = None) -> int:
    from register_real_cut import _grey, chosen_sources, noise_level
    from register_synthetic import _grid, _tally, summarise
    from scopefx.fusion import RegistrationParams
    from scopefx.io import read_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    parser.add_argument("--sources", nargs="*", default=None, help="names to run (default all)")
    parser.add_argument("--grid", type=_grid, default=(5, 5), help="rows x columns, e.g. 5x5")
    parser.add_argument("--tile", type=int, default=384, help="tile size, px")
    parser.add_argument("--overlap", type=float, default=0.1, help="share of a tile")
    parser.add_argument("--jitter", type=float, default=0.03,
                        help="true positions up to this share of a tile off, per axis")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=2, help="jitter draws per source")
    parser.add_argument("--allow-partial", action="store_true",
                        help="register what can be (RegistrationParams.allow_partial)")  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    found, names = chosen_sources(parser, args.data, args.sources)
    rows_, cols_ = args.grid
    report = Report()
    report.add("# Registration of sparse specimens: a real frame in a flat surround, cut into a "
               "mosaic (exact ground truth)", *environment_lines(), f"data: {args.data}",
               f"{rows_}x{cols_} tiles of {args.tile} px, {args.overlap:.0%} overlap, true "
               f"positions on the grid plus up to {args.jitter:.0%} of a tile (sub-pixel), "
               f"stage on the nominal grid; seeds 1..{args.seeds}; "
               f"allow_partial={args.allow_partial}", "")  # fmt: skip
    params = RegistrationParams(allow_partial=args.allow_partial)
    rows, means, bad, info = [], [], [], []
    for name in names:
        paths, what = found[name]
        frame = _grey(read_image(paths[0]))
        cells = [name]
        for seed in range(1, args.seeds + 1):
            progress(f"{name} seed {seed}")
            tiles, stage, true, holds = sparse_mosaic(frame, args.grid, args.tile,
                                                      args.overlap, args.jitter, seed)  # fmt: skip
            result, placed = _register(tiles, stage, true, holds, params)
            _tally(result, f"{name} seed {seed}", cells, means, bad)
            cells[-1] += f" ({placed})"
        info.append([name, what, f"{frame.shape[0]} x {frame.shape[1]}",
                     f"{noise_level(frame):.1f}"])  # fmt: skip
        rows.append(cells)
    report.add(*table(["source", "what", "frame", "noise added (sd)"], info), "")
    head = ["source", *(f"s{s} mean / max px (every tile)" for s in range(1, args.seeds + 1))]
    report.add(*table(head, rows), "")
    summarise(report, means, bad, {}, [], ["source", "case"])
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
