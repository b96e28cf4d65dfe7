"""Registration against exact ground truth: synthetic mosaics cut from every bundled image.

::

    python bench/register_synthetic.py                   # the full sweep (a few minutes)
    python bench/register_synthetic.py --images cell --out bench/results/register_synthetic.txt
    python bench/register_synthetic.py --grid 5x5 --overlaps 0.06    # larger grids (with loops)

Each case is a 3x3 mosaic (``--grid`` for others) of 256 px tiles from
:func:`scopefx.samples.make_mosaic` with sub-pixel true positions jittered by up to 15 px (6 %
of a tile); the stage positions are the nominal grid, so each tile starts up to 15 px off.
Overlaps 5 to 45 % (``--overlaps`` for others), three conditions:
``clean``; ``vignetted`` (``1 - 0.5 r^2`` fall-off, no flat field); ``vignetted+noise``
(the same and shot noise at 1000 photons full scale plus 2 grey levels of read noise).
Registration runs with the default :class:`~scopefx.fusion.RegistrationParams`. The error
is ``|placed - true|`` per tile after removing the mean offset (registration fixes positions
up to one common shift). The script exits 0 whatever the figures; the summary names the
cases above 1 px mean.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, fmt, progress, table

OVERLAPS = (0.05, 0.1, 0.2, 0.3, 0.45)
CONDITIONS = {
    "clean": {"vignetting": 0.0, "photons": None},
    "vignetted": {"vignetting": 0.5, "photons": None},
    "vignetted+noise": {"vignetting": 0.5, "photons": 1000.0},
}
TILE, GRID, JITTER = 256, (3, 3), 15.0


def _case(
    name: str, overlap: float, condition: str, seed: int, grid: tuple[int, int] = GRID
) -> tuple[float, float, str]:
    import numpy as np

    from scopefx.fusion import RegistrationParams, register
    from scopefx.io import TileTable
    from scopefx.samples import make_mosaic

    c = CONDITIONS[condition]
    m = make_mosaic(name, grid=grid, tile_px=TILE, overlap=overlap, jitter_px=JITTER,
                    subpixel=True, vignetting=c["vignetting"], photons=c["photons"],
                    read_noise=2.0 if c["photons"] else 0.0, seed=seed)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(TILE * (1 - overlap))
    nominal = np.array([(r, k) for r in range(grid[0]) for k in range(grid[1])], float) * step
    stage = nominal + (true - nominal).mean(axis=0)
    refs = [f"tile_{k}" for k in range(len(true))]
    tiles = dict(zip(refs, m.tiles, strict=True))
    try:
        reg = register(TileTable.from_positions(refs, stage[:, ::-1]), read=tiles.__getitem__,
                       shapes=[(TILE, TILE)] * len(refs), params=RegistrationParams())  # fmt: skip
    except Exception as exc:  # a refusal is a result too
        return float("nan"), float("nan"), type(exc).__name__
    err = reg.table.affines[:, :2, 2] - true
    d = np.linalg.norm(err - err.mean(axis=0), axis=1)
    used = sum(p.used for p in reg.pairs)
    sides = sum(p.status != "corner" for p in reg.pairs)
    return float(d.mean()), float(d.max()), f"{used}/{sides} pairs"


def _grid(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ROWSxCOLUMNS such as 5x5, got {text!r}"
        ) from None
    if rows < 1 or cols < 1 or rows * cols < 2:
        raise argparse.ArgumentTypeError(f"a grid needs at least 2 tiles, got {text!r}")
    return rows, cols


def main(argv: list[str] | None = None) -> int:
    from scopefx.samples import BUNDLED_IMAGES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="*", default=list(BUNDLED_IMAGES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--grid", type=_grid, default=GRID, help="rows x columns, e.g. 5x5")
    parser.add_argument("--overlaps", nargs="*", type=float, default=list(OVERLAPS),
                        help="fractions of a tile, e.g. 0.06")  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    report = Report()
    rows_, cols_ = args.grid
    setup = f"{rows_}x{cols_} tiles of {TILE} px, stage up to {JITTER:g} px off, seed {args.seed}"
    report.add("# Registration against exact ground truth (synthetic mosaics), defaults",
               *environment_lines(), setup, "")  # fmt: skip
    rows, means, bad = [], [], []
    for name in args.images:
        for condition in CONDITIONS:
            cells = [name, condition]
            for overlap in args.overlaps:
                progress(f"{name} {condition} {overlap:.0%}")
                mean, top, note = _case(name, overlap, condition, args.seed, args.grid)
                cells.append(f"{fmt(mean, 2)} / {fmt(top, 2)}" if mean == mean else note)
                means.append(mean)
                if not mean <= 1.0:
                    bad.append(f"{name} {condition} {overlap:.0%}: {fmt(mean, 2)} px ({note})")
            rows.append(cells)
    head = ["image", "condition", *(f"{o:.0%} mean / max px" for o in args.overlaps)]
    report.add(*table(head, rows), "")
    import numpy as np

    finite = np.asarray(means, dtype=float)
    report.add(f"mean over cases: {fmt(float(np.nanmean(finite)), 3)} px; median "
               f"{fmt(float(np.nanmedian(finite)), 3)} px; cases under 1 px mean: "
               f"{int(np.sum(finite <= 1.0))} of {len(finite)}", "")  # fmt: skip
    report.add("above 1 px mean (or refused):", *(f"  {b}" for b in bad or ["none"]))
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
