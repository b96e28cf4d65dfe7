"""How well is each overlap of the starrynight strip defined? Fiji's layout against scopefx's.

::

    python bench/starrynight_overlaps.py --out bench/results/starrynight_overlaps.txt

Issue 16 asks for scopefx within 1.5 px mean / 3 px max of Fiji's registered layout of
``../shared/data/tiles_real/starrynight_strip10`` (graph paper photographed by a camera, a 1x10
strip). This script asks whether the tiles define their steps that closely. For each pair of
neighbours it scores the step that Fiji chose and the step that scopefx's default registration
(``register(read_tile_table("stage.csv"))``, as ``scopefx fuse --register``) chose, by the NCC of
the overlap on high-passed pixels (each tile minus its Gaussian of 8 px: the ruled lines and
digits, not the illumination), and it finds the best integer step of each quarter of the
overlap's height on its own (search: both steps +-8 px in x, dy -10..4). If the tiles were
related by a translation, the quarters would agree to a pixel and the high-passed NCC at the
right step would be high. A second, one-dimensional check: the ruled lines that run down the
paper. Each tile's column profile (the median of every column, less its Gaussian of 20 px) is
correlated with its neighbour's over x steps of both steps -20..+20 px; the best step and the
profiles' NCC at Fiji's and at scopefx's step are printed (no y step, no 2D noise: a line is
where it is whatever the rows). The script exits 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, table

HERE = Path(__file__).resolve().parent
SET = HERE.parent / ".." / "shared" / "data" / "tiles_real" / "starrynight_strip10"
BANDS = 4
HIGHPASS_PX = 8.0
PROFILE_PX = 20.0  # the column profile less its Gaussian of this width: the ruled lines


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _overlap(a: np.ndarray, b: np.ndarray, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixels of ``a`` and ``b`` that coincide when ``b``'s origin is at ``(dx, dy)`` in
    ``a``'s frame."""
    h, w = a.shape
    y0, y1, x0, x1 = max(0, dy), min(h, h + dy), max(0, dx), min(w, w + dx)
    return a[y0:y1, x0:x1], b[y0 - dy : y1 - dy, x0 - dx : x1 - dx]


def _positions(path: Path) -> dict[str, tuple[float, float]]:
    with path.open(newline="") as f:
        return {Path(r["path"]).name: (float(r["x"]), float(r["y"])) for r in csv.DictReader(f)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SET)
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)

    from scipy import ndimage

    from scopefx.fusion import register
    from scopefx.io import read_image, read_tile_table

    stage_csv = args.data / "stage.csv"
    reg = register(read_tile_table(stage_csv))
    ours = {Path(e.ref).name: (float(e.affine[1, 2]), float(e.affine[0, 2])) for e in reg.table}
    fiji = _positions(args.data / "reference.csv")
    names = list(_positions(stage_csv))
    tiles = {n: np.asarray(read_image(str(args.data / "tiles" / n)), dtype=np.float64)
             for n in names}  # fmt: skip
    high = {n: t - ndimage.gaussian_filter(t, HIGHPASS_PX) for n, t in tiles.items()}
    profile = {}
    for n, t in tiles.items():
        column = np.median(t, axis=0)
        profile[n] = column - ndimage.gaussian_filter1d(column, PROFILE_PX)

    rows = [["pair", "Fiji step", "NCC hp", "scopefx step", "NCC hp",
             *(f"quarter {k + 1} best" for k in range(BANDS)), "x spread",
             "lines best x", "lines NCC Fiji / scopefx"]]  # fmt: skip
    spreads, fiji_in, ours_in = [], 0, 0
    for a, b in itertools.pairwise(names):
        steps = {}
        for label, pos in (("fiji", fiji), ("ours", ours)):
            steps[label] = (pos[b][0] - pos[a][0], pos[b][1] - pos[a][1])
        scored = []
        for dx, dy in steps.values():
            x, y = _overlap(high[a], high[b], round(dx), round(dy))
            scored.append(_ncc(x, y))
        lo = round(min(steps["fiji"][0], steps["ours"][0])) - 8
        hi = round(max(steps["fiji"][0], steps["ours"][0])) + 8
        height = high[a].shape[0]
        best = []
        for k in range(BANDS):
            r0, r1 = k * height // BANDS, (k + 1) * height // BANDS
            top = (-2.0, 0, 0)
            for dx in range(lo, hi + 1):
                for dy in range(-10, 5):
                    x, y = _overlap(high[a], high[b], dx, dy)
                    s0, s1 = max(r0 - max(0, dy), 0), r1 - max(0, dy)
                    top = max(top, (_ncc(x[s0:s1], y[s0:s1]), dx, dy))
            best.append(top)
        lines = {}
        for dx in range(lo - 12, hi + 13):
            lines[dx] = _ncc(profile[a][dx:], profile[b][: len(profile[b]) - dx])
        line_best = max(lines, key=lines.__getitem__)
        xs = [t[1] for t in best]
        spread = max(xs) - min(xs)
        spreads.append(spread)
        fiji_in += min(xs) - 1 <= steps["fiji"][0] <= max(xs) + 1
        ours_in += min(xs) - 1 <= steps["ours"][0] <= max(xs) + 1
        rows.append([
            f"{Path(a).stem}-{Path(b).stem}",
            f"{steps['fiji'][0]:.0f}, {steps['fiji'][1]:.0f}", f"{scored[0]:.3f}",
            f"{steps['ours'][0]:.1f}, {steps['ours'][1]:.1f}", f"{scored[1]:.3f}",
            *(f"{dx}, {dy} ({s:.2f})" for s, dx, dy in best), f"{spread} px",
            f"{line_best} ({lines[line_best]:.2f})",
            f"{lines[round(steps['fiji'][0])]:.2f} / {lines[round(steps['ours'][0])]:.2f}",
        ])  # fmt: skip

    report = Report()
    report.add("# starrynight strip: how well each overlap defines its step (Fiji vs scopefx)")
    report.add(*environment_lines(), f"data: {args.data.resolve()}", "")
    report.add(*table(rows[0], rows[1:]), "")
    report.add(
        "steps: x, y px from tile i's origin to tile i+1's; NCC hp: NCC of the overlap after a "
        f"{HIGHPASS_PX:.0f} px Gaussian high-pass; quarter k best: the integer step that best "
        "aligns that quarter of the overlap's rows alone (its NCC hp in brackets); lines: the "
        "x step that best aligns the two tiles' column profiles (the ruled lines down the "
        f"paper: median of each column less its {PROFILE_PX:.0f} px Gaussian), its NCC, and "
        "the profiles' NCC at Fiji's and scopefx's x step",
        f"median spread of the quarters' best x step: {float(np.median(spreads)):.0f} px "
        f"(max {max(spreads)} px); steps within the quarters' range +-1 px: Fiji "
        f"{fiji_in} of {len(spreads)}, scopefx {ours_in} of {len(spreads)}",
    )
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
