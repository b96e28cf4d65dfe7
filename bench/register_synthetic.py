"""Registration against exact ground truth: synthetic mosaics cut from every bundled image.

::

    python bench/register_synthetic.py                   # the full sweep (a few minutes)
    python bench/register_synthetic.py --images cell --out bench/results/register_synthetic.txt
    python bench/register_synthetic.py --grid 5x5 --overlaps 0.06    # larger grids (with loops)
    python bench/register_synthetic.py --grid 5x5 --overlaps 0.06 --seed 1 2 3 4 5  # 150 cases
    python bench/register_synthetic.py --peers          # and ASHLAR, multiview-stitcher
    python bench/register_synthetic.py --grid 8x8 --overlaps 0.1 --jitter 5 \
        --conditions vignetted+noise --photons 300 --images retina cell moon --seed 0 1 2 3

Each case is a 3x3 mosaic (``--grid`` for others) of 256 px tiles from
:func:`scopefx.samples.make_mosaic` with sub-pixel true positions jittered by up to 15 px (6 %
of a tile; ``--seed``: one draw or several); the stage positions are the nominal grid, so
each tile starts up to 15 px off (``--jitter`` for another bound).
Overlaps 5 to 45 % (``--overlaps`` for others), three conditions:
``clean``; ``vignetted`` (``1 - 0.5 r^2`` fall-off, no flat field); ``vignetted+noise``
(the same and shot noise at 1000 photons full scale, ``--photons`` for another level, plus 2
grey levels of read noise); ``--conditions`` picks some of them.
Registration runs with the default :class:`~scopefx.fusion.RegistrationParams`. The error
is ``|placed - true|`` per tile after removing the mean offset (registration fixes positions
up to one common shift). The script exits 0 whatever the figures; the summary names the
cases above 1 px mean. ``--peers`` also registers every case with ASHLAR and
multiview-stitcher (``bench/.venv-mvs``, ``bench/setup_peer.sh``) from the same tiles and
stage positions, written as TIFF files (:mod:`_peer_register`), and prints their errors and how
often scopefx is closer to the truth.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, fmt, progress, table

OVERLAPS = (0.05, 0.1, 0.2, 0.3, 0.45)
CONDITIONS = {
    "clean": {"vignetting": 0.0, "photons": None},
    "vignetted": {"vignetting": 0.5, "photons": None},
    "vignetted+noise": {"vignetting": 0.5, "photons": 1000.0},
}
TILE, GRID, JITTER = 256, (3, 3), 15.0


def _mosaic(
    name: str, overlap: float, condition: str, seed: int, grid: tuple[int, int],
    jitter: float = JITTER, photons: float | None = None,
) -> tuple[list, list[tuple[float, float]], np.ndarray]:  # fmt: skip
    """The case's tiles, their stage positions ``(x, y)`` and true positions ``(y, x)``
    (``photons``: in place of the condition's, where it has noise)."""

    from scopefx.samples import make_mosaic

    c = CONDITIONS[condition]
    light = c["photons"] if photons is None or c["photons"] is None else photons
    m = make_mosaic(name, grid=grid, tile_px=TILE, overlap=overlap, jitter_px=jitter,
                    subpixel=True, vignetting=c["vignetting"], photons=light,
                    read_noise=2.0 if light else 0.0, seed=seed)  # fmt: skip
    true = m.affines[:, :2, 2]
    step = round(TILE * (1 - overlap))
    nominal = np.array([(r, k) for r in range(grid[0]) for k in range(grid[1])], float) * step
    stage = nominal + (true - nominal).mean(axis=0)
    return list(m.tiles), [(float(x), float(y)) for y, x in stage], true


def _error(placed_yx: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Mean and max ``|placed - true|`` over tiles after removing the mean offset."""

    err = np.asarray(placed_yx, dtype=float) - true
    d = np.linalg.norm(err - err.mean(axis=0), axis=1)
    return float(d.mean()), float(d.max())


def _placed(
    tiles: list, stage: list[tuple[float, float]], params: Any = None
) -> tuple[np.ndarray | None, str]:
    """Register one case (``params``: a RegistrationParams, default its defaults): the placed
    positions ``(y, x)`` (None when refused) and a note (pairs used, or the refusal)."""
    from scopefx.fusion import RegistrationParams, register
    from scopefx.io import TileTable

    refs = [f"tile_{k}" for k in range(len(tiles))]
    by_ref = dict(zip(refs, tiles, strict=True))
    try:
        reg = register(TileTable.from_positions(refs, stage), read=by_ref.__getitem__,
                       shapes=[np.shape(t) for t in tiles],
                       params=params or RegistrationParams())  # fmt: skip
    except Exception as exc:  # a refusal is a result too
        return None, type(exc).__name__
    used = sum(p.used for p in reg.pairs)
    sides = sum(p.status != "corner" for p in reg.pairs)
    return reg.table.affines[:, :2, 2], f"{used}/{sides} pairs"


def _case(
    tiles: list, stage: list[tuple[float, float]], true: np.ndarray, params: Any = None
) -> tuple[float, float, str]:
    """Register one case (:func:`_placed`): mean and max position error (NaN when refused)
    and a note (pairs used, or the refusal)."""
    placed, note = _placed(tiles, stage, params)
    if placed is None:
        return float("nan"), float("nan"), note
    return (*_error(placed, true), note)


def _tally(
    result: tuple[float, float, str], what: str, cells: list[str], means: list[float],
    bad: list[str],
) -> None:  # fmt: skip
    """One case's result into its table cell, the figures over all cases and the list of
    cases above 1 px."""
    mean, top, note = result
    cells.append(f"{fmt(mean, 2)} / {fmt(top, 2)}" if mean == mean else note)
    means.append(mean)
    if not mean <= 1.0:
        bad.append(f"{what}: {fmt(mean, 2)} px ({note})")


PEER_NOTE = (
    "bench/_ashlar_peer.py: ASHLAR EdgeAligner, max_shift 40 px (its default 15 cannot "
    "reach a pair correction of up to 30 px); bench/_mvs_register_peer.py --no-fuse: "
    "multiview-stitcher's registration at its defaults"
)
PEER_FLAGS = {"ashlar": ("--max-shift", "40")}


def _run_peers(
    name: str, peers: list[str], sets: list, truths: list, labels: list,
    peer_means: dict[str, list[float]], peer_rows: list[list[str]],
) -> None:  # fmt: skip
    """Register one image's cases with every peer (one call each) and add their errors."""
    import _peer_register

    cells: dict[str, list[str]] = {}
    for peer in peers:
        progress(f"{name}: {peer}")
        results = _peer_register.register_sets(peer, sets, PEER_FLAGS.get(peer, ()))
        cells[peer] = []
        for r, true in zip(results, truths, strict=True):
            if "positions" in r:
                mean, top = _error(np.asarray(r["positions"])[:, ::-1], true)
                peer_means[peer].append(mean)
                cells[peer].append(f"{fmt(mean, 2)} / {fmt(top, 2)}")
            else:
                peer_means[peer].append(float("nan"))
                cells[peer].append("failed")
    for k, (condition, overlap, own) in enumerate(labels):
        peer_rows.append([name, condition, overlap, fmt(own, 2),
                          *(cells[p][k] for p in peers)])  # fmt: skip


def summarise(
    report: Report, means: list[float], bad: list[str], peer_means: dict[str, list[float]],
    peer_rows: list[list[str]], first: list[str],
) -> None:  # fmt: skip
    """Add the figures over all cases and, with peers, their table, summary and head-to-head
    counts (``first``: the names of the peer rows' leading columns). Shared with
    ``register_real_cut.py``."""
    v = np.asarray(means, dtype=float)
    report.add(f"mean over cases: {fmt(float(np.nanmean(v)), 3)} px; median "
               f"{fmt(float(np.nanmedian(v)), 3)} px; cases under 1 px mean: "
               f"{int(np.sum(v <= 1.0))} of {len(v)}", "")  # fmt: skip
    report.add("above 1 px mean (or refused):", *(f"  {b}" for b in bad or ["none"]))
    if not peer_means:
        return
    peers = list(peer_means)
    report.add("", f"Peers on the same cases ({PEER_NOTE}): mean / max px per case",
               *table([*first, "overlap", "scopefx mean", *peers], peer_rows),
               "", "Summary over cases (a refusal or a failure is not under 1 px)")  # fmt: skip
    summary = []
    for tool, values in [("scopefx", means), *peer_means.items()]:
        w = np.asarray(values, dtype=float)
        summary.append([tool, str(int(np.sum(w <= 1.0))), str(int(np.sum(w <= 0.5))),
                        fmt(float(np.nanmean(w)), 3), fmt(float(np.nanmedian(w)), 3),
                        str(int(np.sum(~np.isfinite(w))))])  # fmt: skip
    report.add(*table(["tool", "under 1 px", "under 0.5 px", "mean px", "median px",
                       "refused/failed"], summary))  # fmt: skip
    for tool, values in peer_means.items():
        w = np.asarray(values, dtype=float)
        better = np.sum(np.nan_to_num(v, nan=np.inf) < np.nan_to_num(w, nan=np.inf))
        report.add(f"scopefx closer to the truth than {tool} in {int(better)} of {len(w)} cases")


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
    parser.add_argument("--seed", type=int, nargs="+", default=[1],
                        help="jitter draws (several: one column per seed and overlap)")  # fmt: skip
    parser.add_argument("--grid", type=_grid, default=GRID, help="rows x columns, e.g. 5x5")
    parser.add_argument("--overlaps", nargs="*", type=float, default=list(OVERLAPS),
                        help="fractions of a tile, e.g. 0.06")  # fmt: skip
    parser.add_argument("--conditions", nargs="*", choices=list(CONDITIONS),
                        default=list(CONDITIONS))  # fmt: skip
    parser.add_argument("--jitter", type=float, default=JITTER,
                        help=f"true positions up to this many px off ({JITTER:g})")  # fmt: skip
    parser.add_argument("--photons", type=float, default=None,
                        help="photons at full scale of the noisy condition (1000)")  # fmt: skip
    parser.add_argument("--peers", action="store_true",
                        help="also ASHLAR and multiview-stitcher from bench/.venv-mvs")  # fmt: skip
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    peers: list[str] = []
    if args.peers:
        import _peer_register

        peers = _peer_register.available()
    report = Report()
    rows_, cols_ = args.grid
    seeds = list(args.seed)
    light = f", noise at {args.photons:g} photons" if args.photons is not None else ""
    setup = (f"{rows_}x{cols_} tiles of {TILE} px, stage up to {args.jitter:g} px off{light}, "
             f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}")  # fmt: skip

    def tag(seed: int) -> str:  # a case's seed, where there are several
        return f" s{seed}" if len(seeds) > 1 else ""

    report.add("# Registration against exact ground truth (synthetic mosaics), defaults",
               *environment_lines(), setup, "")  # fmt: skip
    rows, means, bad = [], [], []
    peer_means: dict[str, list[float]] = {p: [] for p in peers}
    peer_rows: list[list[str]] = []
    for name in args.images:
        sets, truths, labels = [], [], []
        for condition in args.conditions:
            cells = [name, condition]
            for overlap, seed in itertools.product(args.overlaps, seeds):
                what = f"{name} {condition} {overlap:.0%}{tag(seed)}"
                progress(what)
                tiles, stage, true = _mosaic(name, overlap, condition, seed, args.grid,
                                             args.jitter, args.photons)  # fmt: skip
                result = _case(tiles, stage, true)
                _tally(result, what, cells, means, bad)
                if peers:
                    sets.append((tiles, stage))
                    truths.append(true)
                    labels.append((condition, f"{overlap:.0%}{tag(seed)}", result[0]))
            rows.append(cells)
        if peers:
            _run_peers(name, peers, sets, truths, labels, peer_means, peer_rows)
    head = [
        "image",
        "condition",
        *(f"{o:.0%}{tag(k)} mean / max px" for o, k in itertools.product(args.overlaps, seeds)),
    ]
    report.add(*table(head, rows), "")

    summarise(report, means, bad, peer_means, peer_rows, ["image", "condition"])
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
