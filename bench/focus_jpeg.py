"""Focus scores of JPEG-compressed images against the same images stored losslessly.

What it measures
----------------
Slide scanners and many public through-focus sets store JPEG (or JPEG in TIFF, SVS). Each
image is scored as stored losslessly and after a JPEG round trip (Pillow, quality 95, 75 and
50; baseline 4:2:0 is irrelevant for grey images), and per series and condition the bench
reports:

* ``r``: Pearson r of ``log(max(score, 1))`` against ``|defocus|`` within the series;
* ``AUC``: in-focus against out-of-focus images of the series (Mann-Whitney);
* ``ratio``: geometric mean over the series of the JPEG score over the lossless score of the
  same image (1: a calibration made on lossless images still applies), and the smallest and
  largest of those ratios;
* ``coded``: the share of images ``FocusResult.block_coded`` flags;
* ``errors``: images whose scoring raised (left out of the other figures).

Series:

* real: every series of ``../shared/data/focus_real/manifest.csv`` (``--data``), scored with
  its modality as in ``focus_real.py``; 16-bit light-sheet frames are stretched to 8 bits
  (0.01 and 99.99 percentiles of the whole series, one linear map) before the JPEG round
  trip, and that 8-bit image, stored losslessly, is its ``8-bit`` condition;
* synthetic: bundled images (``--images``, default those of ``focus_accuracy.py --quick``) at
  ``--size`` px, Gaussian defocus ``d = 0..6`` px, shot and read noise at
  ``focus_accuracy.py``'s two levels, 8 bits; in focus ``d <= 1``, out ``d >= 3``; scored with
  the default (``em``).

Run
---
``python bench/focus_jpeg.py`` (about 1 minute on 2 shared cores); ``--out FILE`` writes the
summary. The exit code is 0 whatever the figures.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

import scopefx
from _common import Report, Stopwatch, environment_lines, fmt, progress, table
from focus_accuracy import NOISE_LEVELS, QUICK_IMAGES, auc, pearson
from focus_real import DEFAULT_DATA, scopefx_modality
from scopefx import samples

QUALITIES = (95, 75, 50)
DEFOCUS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The 8-bit image after a JPEG round trip at ``quality``."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return np.asarray(Image.open(buffer))


def to_8bit(frames: list[np.ndarray]) -> list[np.ndarray]:
    """One linear map of a series to 8 bits (0.01 / 99.99 percentiles of all its frames)."""
    lo, hi = np.percentile(np.concatenate([f.ravel() for f in frames]), [0.01, 99.99])
    scale = 255.0 / max(float(hi - lo), 1.0)
    return [np.clip((f - lo) * scale + 0.5, 0, 255).astype(np.uint8) for f in frames]


def real_series(data: Path) -> list[tuple[str, str, np.ndarray, np.ndarray, list[np.ndarray]]]:
    """(series, modality, |defocus|, labels (1 in, 0 out, -1 between), frames) per series."""
    with open(data / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = []
    for name in dict.fromkeys(r["series"] for r in rows):
        mine = [r for r in rows if r["series"] == name]
        labels = [{"in_focus": 1, "out_of_focus": 0}.get(r["label"], -1) for r in mine]
        out.append(
            (
                name,
                scopefx_modality(mine[0]["modality"]),
                np.array([abs(float(r["defocus_um"])) for r in mine]),
                np.array(labels),
                [tifffile.imread(data / r["file"]) for r in mine],
            )
        )
    return out


def synthetic_series(
    images: Sequence[str], size: int
) -> list[tuple[str, str, np.ndarray, np.ndarray, list[np.ndarray]]]:
    out = []
    defocus = np.array(DEFOCUS)
    labels = np.where(defocus <= 1, 1, np.where(defocus >= 3, 0, -1))
    for index, name in enumerate(images):
        sharp = samples.bundled_image(name, size=size)
        for noise, (photons, read_noise) in NOISE_LEVELS.items():
            frames = [
                samples.acquire(
                    samples.defocus(sharp, d),
                    photons=photons,
                    read_noise=read_noise,
                    dtype=np.uint8,
                    seed=1000 * index + int(d * 10),
                )
                for d in DEFOCUS
            ]
            out.append((f"{name} {noise}", "em", defocus, labels, frames))
    return out


def score(image: np.ndarray, modality: str) -> scopefx.FocusResult | None:
    """The result, or ``None`` where scoring raised (counted in the ``errors`` column)."""
    try:
        return scopefx.focus_score(image, modality=modality)
    except Exception as exc:  # a failure is a figure here
        progress(f"  error: {type(exc).__name__}: {exc}")
        return None


def figures(
    scores: np.ndarray, lossless: np.ndarray, defocus: np.ndarray, labels: np.ndarray
) -> list[str]:
    good = ~np.isnan(scores) & ~np.isnan(lossless)
    scores, lossless, defocus, labels = scores[good], lossless[good], defocus[good], labels[good]
    if scores.size < 2:
        return ["nan", "nan", "nan"]
    logs = np.log(np.maximum(scores, 1.0))
    ratios = np.maximum(scores, 1.0) / np.maximum(lossless, 1.0)
    return [
        fmt(pearson(logs, defocus)),
        fmt(auc(scores[labels == 1], scores[labels == 0]), 2),
        f"{math.exp(float(np.mean(np.log(ratios)))):.2f} ({ratios.min():.2f}..{ratios.max():.2f})",
    ]


def run_group(series: list, report: Report, title: str) -> list[tuple[str, float]]:
    rows = []
    summary = []
    for name, modality, defocus, labels, frames in series:
        progress(f"{name} ({len(frames)} images)")
        conditions: list[tuple[str, list[np.ndarray]]] = [("lossless", frames)]
        eight = frames if frames[0].dtype == np.uint8 else to_8bit(frames)
        if eight is not frames:
            conditions.append(("8-bit", eight))
        conditions += [(f"q{q}", [jpeg(f, q) for f in eight]) for q in QUALITIES]
        lossless = None
        for label, images in conditions:
            results = [score(f, modality) for f in images]
            ok = [r for r in results if r is not None]
            scores = np.array([math.nan if r is None else r.score for r in results])
            if lossless is None:
                lossless = scores
            coded = np.mean([getattr(r, "block_coded", False) for r in ok]) if ok else math.nan
            r, area, ratio = figures(scores, lossless, defocus, labels)
            errors = len(results) - len(ok)
            rows.append([f"{name} ({modality})", label, r, area, ratio, fmt(coded, 2), errors])
            summary.append((label, float(r) if r != "nan" else math.nan))
    report.add("", title)
    report.add(
        *table(
            ["series", "stored as", "r", "AUC", "score / lossless (range)", "coded", "errors"], rows
        )
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="focus_real folder")
    parser.add_argument("--images", nargs="+", default=list(QUICK_IMAGES))
    parser.add_argument("--size", type=int, default=512, help="synthetic image side (px)")
    parser.add_argument("--out", metavar="FILE", help="also write the summary to FILE")
    args = parser.parse_args(argv)
    clock = Stopwatch()
    report = Report()
    report.add("Focus scores of JPEG round trips against the lossless images")
    report.add(*environment_lines())
    summary = []
    if (args.data / "manifest.csv").is_file():
        summary += run_group(real_series(args.data), report, "Real series (focus_real)")
    else:
        progress(f"no real data at {args.data}: synthetic series only")
    summary += run_group(
        synthetic_series(args.images, args.size),
        report,
        f"Synthetic series ({args.size} px, Gaussian d = 0..6, em)",
    )
    rows = []
    for label in dict.fromkeys(label for label, _ in summary):
        values = [r for lab, r in summary if lab == label and not math.isnan(r)]
        rows.append([label, fmt(float(np.mean(values))), fmt(float(np.max(values)))])
    report.add("", "Mean / worst r over all series, per storage")
    report.add(*table(["stored as", "mean r", "worst r"], rows))
    report.add("", f"run time {clock.elapsed:.0f} s")
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
