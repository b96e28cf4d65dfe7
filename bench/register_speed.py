"""Registration time per overlap as tiles grow, next to ASHLAR in the same run.

::

    python bench/register_speed.py                  # 512, 1024 and 2048 px tiles
    python bench/register_speed.py --sizes 512 --out bench/results/register_speed.txt

Each case is a 3x3 mosaic (``--grid``) cut by :func:`scopefx.samples.make_mosaic` from the bundled
``retina`` image (mirror-extended to the mosaic's size), 20 % overlap, true positions up to
``--jitter`` px (sub-pixel) off the nominal grid, shot noise (20,000 photons at full scale) and
read noise; the stage positions are the nominal grid. (At 10 % overlap, or at 2,000 photons,
ASHLAR refuses every pair of these mosaics and leaves the tiles at their stage positions, so
its time would not be a registration's.)

Timed, each in this process on one thread, tiles held in memory:

* ``scopefx``: :func:`scopefx.fusion.register` with its defaults (search range 15 % of a tile,
  the flat-field estimate from the tiles included);
* ``scopefx-fft``: the same with every masked sum of the search by FFT (the general path, taken
  for crops with transparent, clipped or resampled-away pixels; before the box sums, every
  crop's), so the ratio is what the box sums save;
* ``ashlar`` (``--peers``; ``bench/setup_peer.sh``): ASHLAR's ``EdgeAligner`` in its own
  process (``bench/_ashlar_peer.py``: its default ``max_shift`` of 15 px, a far smaller search
  than scopefx's 15 % of a tile; its time includes reading the TIFF tiles).

Each time is the best of ``--repeat`` runs; the error (mean px over tiles against the truth, the
mean offset removed) shows that the runs registered. Ratios are the tool's time over scopefx's:
above 1, scopefx is faster. The exit code is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, fmt, progress, table

OVERLAP = 0.2
PHOTONS = 20000.0  # at full scale (shot noise), plus 2 grey levels of read noise


def _case(
    tile: int, grid: tuple[int, int], jitter: float, seed: int
) -> tuple[list, list, np.ndarray]:
    """Tiles, their stage positions ``(x, y)`` (the nominal grid) and true ``(y, x)``."""
    from scopefx.samples import make_mosaic

    m = make_mosaic("retina", grid=grid, tile_px=tile, overlap=OVERLAP, jitter_px=jitter,
                    subpixel=True, photons=PHOTONS, read_noise=2.0, seed=seed)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(tile * (1 - OVERLAP))
    nominal = np.array([(r, k) for r in range(grid[0]) for k in range(grid[1])], float) * step
    stage = nominal + (true - nominal).mean(axis=0)
    return list(m.tiles), [(float(x), float(y)) for y, x in stage], true


def _error(placed_yx: np.ndarray, true: np.ndarray) -> float:
    d = placed_yx - true
    d -= d.mean(axis=0)
    return float(np.linalg.norm(d, axis=1).mean())


def _scopefx(tiles: list, stage: list, fft_only: bool, repeat: int) -> tuple[float, float, int]:
    """Best wall time of ``register``, its error source (placed ``(y, x)``) and pairs used."""
    from scopefx.fusion import _correlate, register
    from scopefx.io import TileTable

    refs = [f"t{k}" for k in range(len(tiles))]
    by = dict(zip(refs, tiles, strict=True))
    table = TileTable.from_positions(refs, stage)
    box = _correlate._box
    best, reg = np.inf, None
    try:
        if fft_only:
            _correlate._box = lambda valid: None  # type: ignore[assignment]
        for _ in range(repeat):
            t0 = time.perf_counter()
            reg = register(table, read=by.__getitem__, shapes=[t.shape for t in tiles])
            best = min(best, time.perf_counter() - t0)
    finally:
        _correlate._box = box  # type: ignore[assignment]
    assert reg is not None
    used = sum(p.status == "used" for p in reg.pairs)
    return best, reg.table.affines[:, :2, 2], used


def main(argv: list[str] | None = None) -> int:
    from register_synthetic import _grid

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[512, 1024, 2048])
    parser.add_argument("--grid", type=_grid, default=(3, 3), help="rows x columns, e.g. 3x3")
    parser.add_argument("--jitter", type=float, default=6.0, help="true positions off, px")
    parser.add_argument("--repeat", type=int, default=2, help="runs per tool and case (best)")
    parser.add_argument("--peers", action="store_true", help="also ASHLAR (bench/.venv-mvs)")
    parser.add_argument("--quick", action="store_true", help="256 px tiles, one run (smoke)")
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.repeat = [256], 1
    peers: list[str] = []
    if args.peers:
        import _peer_register

        peers = [p for p in _peer_register.available() if p == "ashlar"]
    report = Report()
    report.add("# Registration time per overlap, scopefx next to its FFT-only path and ASHLAR",
               *environment_lines(),
               f"{args.grid[0]}x{args.grid[1]} tiles of retina, {OVERLAP:.0%} overlap, true "
               f"positions up to {args.jitter:g} px off the stage grid; one thread; best of "
               f"{args.repeat}", "")  # fmt: skip
    rows = []
    for size in args.sizes:
        progress(f"{size} px")
        tiles, stage, true = _case(size, args.grid, args.jitter, seed=1)
        pairs = (args.grid[0] - 1) * args.grid[1] + args.grid[0] * (args.grid[1] - 1)
        ours, placed, used = _scopefx(tiles, stage, False, args.repeat)
        fft, placed_fft, _ = _scopefx(tiles, stage, True, args.repeat)
        row = [f"{size}", f"{used}/{pairs}", fmt(ours, 2), fmt(ours / pairs, 3),
               fmt(_error(placed, true), 3), fmt(fft, 2), f"{fft / ours:.2f}",
               fmt(_error(placed_fft, true), 3)]  # fmt: skip
        if peers:
            import _peer_register

            runs = [_peer_register.register_sets("ashlar", [(tiles, stage)])[0]
                    for _ in range(args.repeat)]  # fmt: skip
            ok = [r for r in runs if "positions" in r]
            if ok:
                wall = min(r["wall_s"] for r in ok)
                xy = np.array(ok[0]["positions"], float)
                row += [fmt(wall, 2), f"{wall / ours:.2f}", fmt(_error(xy[:, ::-1], true), 3)]
            else:
                row += [runs[0].get("error", "failed")[:40], "", ""]
        rows.append(row)
    head = ["tile px", "pairs used", "scopefx s", "s / pair", "err px", "fft-only s",
            "fft / scopefx", "err px"]  # fmt: skip
    if peers:
        head += ["ashlar s", "ashlar / scopefx", "err px"]
    report.add(*table(head, rows), "")
    report.add("ratios: the tool's time over scopefx's (above 1: scopefx faster)")
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
