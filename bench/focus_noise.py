"""Focus scores of the real light-sheet series with added camera noise.

What it measures
----------------
How focus scoring holds up on a noisier camera. Every frame of a series gets independent
Gaussian noise of ``k`` times the frame's own noise level ``sigma`` (``--multiples``, default
0, 1, 2 and 3: 1, 2, 5 and 10 times the frame's noise variance), where ``sigma`` is the
robust spread of the horizontal neighbour differences over sqrt(2),
``1.4826 * median(|d - median(d)|) / sqrt(2)`` with ``d = diff(frame, axis=1)`` (as
``noise_level`` in ``register_real_cut.py``). The noisy frame is ``frame + k * sigma * z``
in float32, clipped at 0; ``z`` is one standard normal field per frame drawn with
``numpy.random.default_rng(1000 * s + i)`` (``s`` the series' index among the light-sheet
series in manifest order, ``i`` the frame's index in its series), the same ``z`` for every
``k``, so the conditions of a frame differ only in the amplitude of the noise and a run is
reproducible. The ``stored`` condition is the frame as stored (uint16), so ``stored`` against
``0`` shows what the float32 conversion alone changes (scopefx takes one grey level of
integer input as a quantisation floor; float input has none).

Each frame of each condition is scored by

* ``scopefx``: ``focus_score(frame, modality=M)``, ``M`` the series' modality as in
  ``focus_real.py`` (``fluorescence``), defaults otherwise, its ``score``;
* ``tenengrad``, ``normvar``, ``varlap``: the peers of ``focus_real.py``.

and per series and condition the bench reports:

* ``r``: Pearson r of ``log(max(score, 1e-12))`` against ``|defocus|`` within the series (the
  convention of ``focus_real.py``);
* ``AUC``: in-focus against out-of-focus frames of the series (Mann-Whitney; frames labelled
  between are left out);
* ``limited``: the share of frames whose ``FocusResult.noise_limited`` is set (scopefx);
* ``errors``: frames whose scopefx scoring raised (left out of its figures).

then per condition the mean and worst (largest) r over the light-sheet series, per method.

Series: the light-sheet (``LSFM``, scored as ``fluorescence``) series of
``../shared/data/focus_real/manifest.csv`` (``--data``). The bright-field series is left out:
its 8-bit frames are not a light-sheet camera's, and it has 6 frames.

Run
---
``python bench/focus_noise.py`` (65 frames, 5 conditions, about 1 minute on 2 shared cores);
``--out FILE`` writes the summary. The exit code is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from _common import Report, Stopwatch, environment_lines, fmt, progress, table
from focus_accuracy import auc, pearson
from focus_jpeg import real_series, score
from focus_real import DEFAULT_DATA, normvar, tenengrad, varlap
from register_real_cut import noise_level

MODALITY = "fluorescence"
METHODS = ("scopefx", "tenengrad", "normvar", "varlap")
PEERS = {"tenengrad": tenengrad, "normvar": normvar, "varlap": varlap}
STORED = "stored"


def noisy(frame: np.ndarray, noise: float, z: np.ndarray) -> np.ndarray:
    """``frame + noise * z`` in float32, clipped at 0."""
    out = frame.astype(np.float32) + np.float32(noise) * z
    return np.maximum(out, np.float32(0))


def figures(scores: np.ndarray, defocus: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(r of log score against |defocus|, in/out AUC), NaN scores left out."""
    good = ~np.isnan(scores)
    scores, defocus, labels = scores[good], defocus[good], labels[good]
    if scores.size < 2:
        return math.nan, math.nan
    r = pearson(np.log(np.maximum(scores, 1e-12)), defocus)
    return r, auc(scores[labels == 1], scores[labels == 0])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="focus_real folder")
    parser.add_argument(
        "--multiples",
        type=float,
        nargs="+",
        default=[0.0, 1.0, 2.0, 3.0],
        help="added noise, in units of each frame's own noise level",
    )
    parser.add_argument("--out", metavar="FILE", help="also write the summary to FILE")
    args = parser.parse_args(argv)
    clock = Stopwatch()
    report = Report()
    report.add("Focus scores of the real light-sheet series with added Gaussian noise")
    report.add(*environment_lines())
    if not (args.data / "manifest.csv").is_file():
        progress(f"no real data at {args.data}: nothing to measure")
        report.add("", f"no real data at {args.data}", "", f"run time {clock.elapsed:.0f} s")
        report.emit(args.out)
        return 0
    series = [s for s in real_series(args.data) if s[1] == MODALITY]
    conditions = [STORED, *(f"{k:g}" for k in args.multiples)]
    report.add(
        "",
        f"added noise: k x the frame's own noise level (total variance 1 + k^2 times); "
        f"conditions {', '.join(conditions)}; scopefx modality {MODALITY}",
    )
    rows = []
    levels = []
    summary: dict[str, dict[str, list[float]]] = {c: {m: [] for m in METHODS} for c in conditions}
    for s, (name, modality, defocus, labels, frames) in enumerate(series):
        progress(f"{name} ({len(frames)} frames)")
        zs = [
            np.random.default_rng(1000 * s + i).standard_normal(f.shape, dtype=np.float32)
            for i, f in enumerate(frames)
        ]
        sigmas = [noise_level(f) for f in frames]
        levels.append(
            [name, fmt(float(np.median(sigmas)), 2), fmt(min(sigmas), 2), fmt(max(sigmas), 2)]
        )
        for condition in conditions:
            if condition == STORED:
                images = frames
            else:
                k = float(condition)
                images = [noisy(f, k * sigma, z) for f, sigma, z in zip(frames, sigmas, zs,
                                                                        strict=True)]  # fmt: skip
            results = [score(im, modality) for im in images]
            ok = [r for r in results if r is not None]
            scores = {"scopefx": np.array([math.nan if r is None else r.score for r in results])}
            scores |= {m: np.array([fn(im) for im in images]) for m, fn in PEERS.items()}
            row = [f"{name} ({len(frames)})", condition]
            for m in METHODS:
                r, area = figures(scores[m], defocus, labels)
                summary[condition][m].append(r)
                row += [fmt(r), fmt(area, 2)]
            limited = np.mean([r.noise_limited for r in ok]) if ok else math.nan
            rows.append([*row, fmt(limited, 2), len(results) - len(ok)])
            progress(f"  {condition}: scopefx r {row[2]}, elapsed {clock.elapsed:.0f} s")
    report.add("", "Own noise level per series (grey levels): median, smallest, largest frame")
    report.add(*table(["series", "median", "min", "max"], levels))
    report.add(
        "",
        "Per series and condition: r of log(max(score, 1e-12)) vs |defocus|, in/out AUC; "
        "scopefx noise_limited share",
    )
    headers = ["series (frames)", "noise k"]
    for m in METHODS:
        headers += [f"{m} r", "AUC"]
    report.add(*table([*headers, "limited", "errors"], rows))
    report.add("", f"Mean / worst r over the {len(series)} light-sheet series, per condition")
    srows = []
    for condition in conditions:
        row = [condition]
        for m in METHODS:
            values = [r for r in summary[condition][m] if not math.isnan(r)]
            mean = float(np.mean(values)) if values else math.nan
            worst = max(values) if values else math.nan
            row.append(f"{fmt(mean)} / {fmt(worst)}")
        srows.append(row)
    report.add(*table(["noise k", *(f"{m} mean / worst" for m in METHODS)], srows))
    report.add("", f"run time {clock.elapsed:.0f} s")
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
