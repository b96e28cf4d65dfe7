"""How well focus scores follow defocus, on defocus series of real images.

What it measures
----------------
For every (image, PSF, noise level) *series*, each focus method scores the images at defocus
``d = 0, 0.5, ..., 6`` (default), and the benchmark reports

* the Pearson correlation ``r`` of ``log(max(score, floor))`` with ``|d|`` (``floor`` 1, one
  feature, except for ``mhfd-fluo`` and ``mhfd-ratio``, whose score's floor is what one
  feature of that image adds: its weight at the coarsest band times the image's band energy
  ratio, see :func:`one_feature`) (MHFD's claim: the log of the feature count falls linearly
  with absolute defocus), and Spearman's ``rho``
  (monotonicity only); per (method, noise level) the mean and the worst (largest) value over
  the series, and which series is worst;
* the AUC of in-focus (``d <= 1``) against out-of-focus (``d >= 3``) images, pooled across all
  images and PSFs of a noise level: the probability that an in-focus image scores higher than
  an out-of-focus one (Mann-Whitney U / (n_in n_out), ties count one half). Pooling across
  images asks whether one threshold on the score separates good from bad images whatever
  their content.

Methods, all measured on the same images in the same run:

* ``mhfd-auto``: ``scopefx.focus_score(image, mode="exact")``, automatic threshold (default);
* ``mhfd-signal``: ``scopefx.focus_score(image, mode="exact", noise_model="signal")``: the
  default with the signal-dependent noise model (one threshold per feature at the noise of
  its local intensity) instead of one global noise level;
* ``mhfd-fluo``: ``scopefx.focus_score(image, mode="exact", modality="fluorescence")``, its
  ``score`` (the count at 6 sigma times the image's band energy ratio R): the fluorescence
  preset, checked here on content it was not chosen on;
* ``mhfd-ratio``: ``scopefx.focus_score(image, mode="exact", band_ratio=1)``, its ``score``:
  the default (``em``) count times R, a candidate for the pooled AUC that a count alone cannot
  reach (R does not grow with the specimen's amount of structure); not a preset;
* ``mhfd-fast``: ``scopefx.focus_score(image, mode="fast")``; its count is also compared with
  ``mhfd-auto``'s image by image (|relative difference|, documented to stay within 3 %);
* ``mhfd-fixed``: ``scopefx.focus_score(image, threshold=T)``, one threshold for every image.
  ``T`` is the median automatic threshold of the in-focus (``d = 0``) high-SNR images of the
  run: the threshold the automatic rule would pick for good images, hence the fairest fixed
  value (a fixed threshold cannot follow the noise, which is what the automatic one is for);
* ``tenengrad``: mean squared Sobel gradient magnitude (``scipy.ndimage.sobel``, mirror
  boundaries) of the 8-bit image in grey levels.

How the data are made (``scopefx.samples``, nothing is downloaded)
------------------------------------------------------------------
1. ``bundled_image(name, size=...)``: an image shipped inside scikit-image, grey, mirror-tiled
   or centre-cropped to ``--size`` (1024 x 1024 by default). All of ``BUNDLED_IMAGES`` by
   default.
2. ``defocus(image, d, psf=...)``: Gaussian PSF with ``sigma = d`` px, or disk (pillbox) PSF
   with ``radius = d`` px (``blur_per_unit = 1``: the blur width is ``d`` pixels).
3. ``acquire(...)``: Poisson shot noise and Gaussian read noise, quantised to 8 bits, at two
   noise levels:

   * high SNR: ``photons=1000`` at full scale, ``read_noise=1`` grey level (a well-exposed
     camera frame: SNR about 30 at full scale, about 20 at mid grey);
   * low SNR: ``photons=50``, ``read_noise=4`` (a short exposure: SNR about 7 at full scale,
     about 5 at mid grey).

   Each acquisition has its own seed, derived from ``--seed``, the image's index in
   ``BUNDLED_IMAGES``, the PSF, the noise level and ``d``; a run is deterministic, and an image
   gets the same noise whichever subset of images or defocus steps is chosen.

Run
---
``python bench/focus_accuracy.py`` (full: 10 images x 13 defocus values x 2 PSFs x 2 noise
levels = 520 images at 1024 px, each scored 6 ways: about 10 minutes on 2 shared cores);
``--quick`` (3 images, 512 px, 7 defocus values: about 10 s). Progress goes to stderr, the
summary to stdout (and to ``--out``); ``--csv`` writes one row per (method, series) with its
scores. The exit code is 0 whatever the figures: targets are printed with PASS/FAIL.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

import scopefx
from _common import Report, Stopwatch, environment_lines, fmt, pass_fail, progress, table
from scopefx import samples

#: name: (photons at full scale, read noise in grey levels).
NOISE_LEVELS = {"high": (1000.0, 1.0), "low": (50.0, 4.0)}
PSFS = ("gaussian", "disk")
METHODS = (
    "mhfd-auto",
    "mhfd-signal",
    "mhfd-fluo",
    "mhfd-ratio",
    "mhfd-fast",
    "mhfd-fixed",
    "tenengrad",
)
#: Methods whose score's floor is what one feature of the image scores (:func:`one_feature`)
WEIGHTED = ("mhfd-fluo", "mhfd-ratio")
QUICK_IMAGES = ("immunohistochemistry", "camera", "gravel")

IN_FOCUS_MAX_D = 1.0
OUT_OF_FOCUS_MIN_D = 3.0
TARGET_MEAN_R = -0.97
TARGET_WORST_R = -0.90
TARGET_AUC = 0.95
FAST_TOLERANCE = 0.03

Series = tuple[str, str, str]  # (image, psf, noise)
PerSeries = dict[str, dict[Series, float]]  # method -> series -> figure


@dataclass
class Results:
    """Scores of every method, per series, in the order of the defocus values."""

    defocus: np.ndarray
    scores: dict[str, dict[Series, list[float]]] = field(
        default_factory=lambda: {m: {} for m in METHODS}
    )
    auto_thresholds: dict[Series, list[float]] = field(default_factory=dict)
    #: the score of one feature, per method of ``WEIGHTED`` and image (it depends on the
    #: image: see :func:`one_feature`)
    floors: dict[str, dict[Series, list[float]]] = field(
        default_factory=lambda: {m: {} for m in WEIGHTED}
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Correlation of focus scores with defocus, and in/out-of-focus AUC, on "
        "defocus series of scikit-image's bundled images (MHFD auto/fast/fixed, Tenengrad).",
    )
    parser.add_argument(
        "--images",
        nargs="+",
        choices=samples.BUNDLED_IMAGES,
        metavar="NAME",
        help=f"bundled images to use (default: all; --quick: {' '.join(QUICK_IMAGES)}). "
        f"Choices: {' '.join(samples.BUNDLED_IMAGES)}",
    )
    parser.add_argument("--size", type=int, help="image side in px (default 1024; --quick: 512)")
    parser.add_argument(
        "--defocus-max", type=float, default=6.0, help="largest |defocus| d (blur width, px)"
    )
    parser.add_argument(
        "--defocus-step", type=float, help="step of d from 0 (default 0.5; --quick: 1.0)"
    )
    parser.add_argument(
        "--psfs", nargs="+", choices=PSFS, default=list(PSFS), help="point-spread functions"
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed of the noise (default 0)")
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--out", metavar="FILE", help="also write the summary to FILE")
    parser.add_argument("--csv", metavar="FILE", help="write per-series rows (with scores)")
    args = parser.parse_args(argv)
    if args.images is None:
        args.images = list(QUICK_IMAGES if args.quick else samples.BUNDLED_IMAGES)
    if args.size is None:
        args.size = 512 if args.quick else 1024
    if args.defocus_step is None:
        args.defocus_step = 1.0 if args.quick else 0.5
    if args.defocus_step <= 0 or args.defocus_max < 0:
        parser.error("--defocus-step must be > 0 and --defocus-max >= 0")
    return args


def defocus_values(maximum: float, step: float) -> np.ndarray:
    count = math.floor(maximum / step + 1e-9) + 1
    return np.round(np.arange(count) * step, 6)


def acquisition_seed(base: int, image: str, psf: str, noise: str, d: float) -> int:
    """A seed that depends only on what the acquisition is, not on the run's other choices."""
    key = [
        base,
        samples.BUNDLED_IMAGES.index(image),
        PSFS.index(psf),
        list(NOISE_LEVELS).index(noise),
        round(d * 1000),
    ]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def acquire(
    blurred: np.ndarray, image: str, psf: str, noise: str, d: float, seed: int
) -> np.ndarray:
    photons, read_noise = NOISE_LEVELS[noise]
    return samples.acquire(
        blurred,
        photons=photons,
        read_noise=read_noise,
        dtype=np.uint8,
        seed=acquisition_seed(seed, image, psf, noise, d),
    )


def tenengrad(image: np.ndarray) -> float:
    """Mean squared Sobel gradient magnitude, in grey levels squared."""
    grey = image.astype(np.float64)
    gx = ndimage.sobel(grey, axis=1, mode="reflect")
    gy = ndimage.sobel(grey, axis=0, mode="reflect")
    return float(np.mean(gx * gx + gy * gy))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], values.size]
    ranks = np.empty(values.size)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy) / denominator if denominator > 0 else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(average_ranks(x), average_ranks(y))


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(positive score > negative score) + P(tie) / 2, by the Mann-Whitney U statistic."""
    n_pos, n_neg = len(positive), len(negative)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = average_ranks(np.concatenate([positive, negative]))
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def one_feature(result: scopefx.focus.FocusResult) -> float:
    """The score one feature adds to ``result``: its weight at the coarsest band,
    ``(t_1 / t_n)^scale_weight``, times the image's band energy ratio ``R^band_ratio`` (the
    fluorescence preset multiplies every weight by it: one feature of an image with R = 0.04
    scores 0.04, and a floor of 1 would have clipped its 25 features)."""
    params = result.params.resolved()
    sigmas = params.sigmas_px
    weight = float((sigmas[0] / sigmas[-2]) ** params.resolved_scale_weight)
    if params.resolved_band_ratio > 0 and math.isfinite(result.band_ratio):
        weight *= result.band_ratio**params.resolved_band_ratio
    return weight


def log_score(scores: Sequence[float], floor: float | Sequence[float] = 1.0) -> np.ndarray:
    return np.log(np.maximum(np.asarray(scores, np.float64), np.asarray(floor, np.float64)))


def fixed_threshold(args: argparse.Namespace) -> float:
    """Median automatic threshold of the run's in-focus (d = 0) high-SNR images."""
    thresholds = []
    for name in args.images:
        sharp = samples.bundled_image(name, size=args.size)
        for psf in args.psfs:
            pixels = acquire(
                samples.defocus(sharp, 0.0, psf=psf), name, psf, "high", 0.0, args.seed
            )
            thresholds.append(scopefx.focus_score(pixels, mode="exact").threshold)
    return float(np.median(thresholds))


def run(args: argparse.Namespace, threshold: float) -> Results:
    results = Results(defocus=defocus_values(args.defocus_max, args.defocus_step))
    total = len(args.images) * len(args.psfs)
    clock = Stopwatch()
    done = 0
    for name in args.images:
        sharp = samples.bundled_image(name, size=args.size)
        for psf in args.psfs:
            keys = {noise: (name, psf, noise) for noise in NOISE_LEVELS}
            for key in keys.values():
                for method in METHODS:
                    results.scores[method][key] = []
                results.auto_thresholds[key] = []
                for method in WEIGHTED:
                    results.floors[method][key] = []
            for d in results.defocus:
                blurred = samples.defocus(sharp, float(d), psf=psf)
                for noise, key in keys.items():
                    pixels = acquire(blurred, name, psf, noise, float(d), args.seed)
                    exact = scopefx.focus_score(pixels, mode="exact")
                    signal = scopefx.focus_score(pixels, mode="exact", noise_model="signal")
                    fluo = scopefx.focus_score(pixels, mode="exact", modality="fluorescence")
                    ratio = scopefx.focus_score(pixels, mode="exact", band_ratio=1.0)
                    fast = scopefx.focus_score(pixels, mode="fast")
                    fixed = scopefx.focus_score(pixels, mode="exact", threshold=threshold)
                    results.scores["mhfd-auto"][key].append(exact.features)
                    results.scores["mhfd-signal"][key].append(signal.features)
                    results.scores["mhfd-fluo"][key].append(fluo.score)
                    results.scores["mhfd-ratio"][key].append(ratio.score)
                    for method, result in zip(WEIGHTED, (fluo, ratio), strict=True):
                        results.floors[method][key].append(one_feature(result))
                    results.scores["mhfd-fast"][key].append(fast.features)
                    results.scores["mhfd-fixed"][key].append(fixed.features)
                    results.scores["tenengrad"][key].append(tenengrad(pixels))
                    results.auto_thresholds[key].append(exact.threshold)
            done += 1
            progress(
                f"[{done}/{total}] {name}/{psf}: elapsed {clock.elapsed:.0f} s, "
                f"about {clock.eta(done, total):.0f} s left"
            )
    return results


def series_name(key: Series) -> str:
    return f"{key[0]}/{key[1]}"


def worst(values: dict[Series, float]) -> tuple[float, Series]:
    """The largest (least negative) value; NaN counts as the worst of all."""
    key = max(values, key=lambda k: math.inf if math.isnan(values[k]) else values[k])
    return values[key], key


@dataclass(frozen=True)
class Stats:
    """Figures of one method at one noise level, over its series."""

    method: str
    noise: str
    series: int
    mean_r: float
    worst_r: tuple[float, Series]
    mean_rho: float
    worst_rho: tuple[float, Series]
    auc: float
    series_auc: float

    def row(self) -> list[object]:
        return [
            self.method,
            self.noise,
            self.series,
            fmt(self.mean_r),
            fmt(self.worst_r[0]),
            series_name(self.worst_r[1]),
            fmt(self.mean_rho),
            fmt(self.worst_rho[0]),
            series_name(self.worst_rho[1]),
            fmt(self.auc),
            fmt(self.series_auc),
        ]


def correlations(results: Results) -> tuple[PerSeries, PerSeries]:
    """Pearson r of log(max(score, floor)) and Spearman rho of the score, with |d|, per
    series."""
    d = results.defocus
    pearson_r = {
        m: {
            k: pearson(log_score(s, results.floors[m][k] if m in WEIGHTED else 1.0), d)
            for k, s in series.items()
        }
        for m, series in results.scores.items()
    }
    spearman_rho = {
        m: {k: spearman(s, d) for k, s in series.items()} for m, series in results.scores.items()
    }
    return pearson_r, spearman_rho


def statistics(results: Results, pearson_r: PerSeries, spearman_rho: PerSeries) -> list[Stats]:
    in_focus = results.defocus <= IN_FOCUS_MAX_D
    out_focus = results.defocus >= OUT_OF_FOCUS_MIN_D
    stats = []
    for method in METHODS:
        for noise in NOISE_LEVELS:
            keys = [k for k in results.scores[method] if k[2] == noise]
            r = {k: pearson_r[method][k] for k in keys}
            rho = {k: spearman_rho[method][k] for k in keys}
            series = np.array([results.scores[method][k] for k in keys], np.float64)
            stats.append(
                Stats(
                    method=method,
                    noise=noise,
                    series=len(keys),
                    mean_r=float(np.mean(list(r.values()))),
                    worst_r=worst(r),
                    mean_rho=float(np.mean(list(rho.values()))),
                    worst_rho=worst(rho),
                    auc=auc(series[:, in_focus].ravel(), series[:, out_focus].ravel()),
                    series_auc=float(
                        np.mean([auc(row[in_focus], row[out_focus]) for row in series])
                    ),
                )
            )
    return stats


def target_rows(stats: list[Stats]) -> list[list[object]]:
    auto = next(s for s in stats if s.method == "mhfd-auto" and s.noise == "high")
    worst_r, worst_key = auto.worst_r
    return [
        [
            "mean r",
            f"<= {TARGET_MEAN_R:.2f}",
            fmt(auto.mean_r),
            pass_fail(auto.mean_r <= TARGET_MEAN_R),
        ],
        [
            "worst r",
            f"<= {TARGET_WORST_R:.2f}",
            f"{fmt(worst_r)} ({series_name(worst_key)})",
            pass_fail(worst_r <= TARGET_WORST_R),
        ],
        ["pooled AUC", f">= {TARGET_AUC:.2f}", fmt(auto.auc), pass_fail(auto.auc >= TARGET_AUC)],
    ]


def summarise(
    args: argparse.Namespace,
    results: Results,
    stats: list[Stats],
    pearson_r: PerSeries,
    threshold: float,
) -> Report:
    d = results.defocus
    report = Report()
    report.add(
        "Focus accuracy: log(max(score, floor)) vs |defocus| per series (floor: one feature); "
        "AUC in vs out of focus",
        *environment_lines(),
        f"images ({len(args.images)}): {' '.join(args.images)}",
        f"size {args.size} x {args.size} px, 8-bit; PSFs: {' '.join(args.psfs)}; "
        f"defocus d = {' '.join(f'{v:g}' for v in d)} (blur width d px)",
        "noise: "
        + "; ".join(f"{n} SNR photons={p:g} read_noise={r:g}" for n, (p, r) in NOISE_LEVELS.items())
        + f"; seed {args.seed}",
        f"AUC: d <= {IN_FOCUS_MAX_D:g} (in focus, {int((d <= IN_FOCUS_MAX_D).sum())} per series) "
        f"vs d >= {OUT_OF_FOCUS_MIN_D:g} (out of focus, {int((d >= OUT_OF_FOCUS_MIN_D).sum())} "
        "per series), pooled over images and PSFs",
        f"mhfd-fixed threshold T = {threshold:.5f} (median automatic threshold of the "
        f"{len(args.images) * len(args.psfs)} in-focus d=0 high-SNR images of this run)",
        "",
        "Summary (r: Pearson, rho: Spearman; worst = largest over the series; AUC: pooled over "
        "images and PSFs; series AUC: mean of the AUCs within each series, for context)",
        *table(
            [
                "method",
                "noise",
                "series",
                "mean r",
                "worst r",
                "worst r series",
                "mean rho",
                "worst rho",
                "worst rho series",
                "AUC",
                "series AUC",
            ],
            [s.row() for s in stats],
        ),
        "",
        "Targets (mhfd-auto, high SNR)",
        *table(["figure", "target", "value", "result"], target_rows(stats)),
        "",
        *fast_vs_exact(results),
        "",
        *threshold_drift(results, threshold),
        "",
        "Pearson r per series",
        *per_series_table(pearson_r),
        "",
        "mhfd-auto feature count at d = 0 and at d = max, per series",
        *count_table(results),
    )
    return report


def fast_vs_exact(results: Results) -> list[str]:
    """|fast - exact| / exact over all images, where it is largest, and its trend with d."""
    keys = list(results.scores["mhfd-auto"])
    exact = np.array([results.scores["mhfd-auto"][k] for k in keys], np.float64)
    fast = np.array([results.scores["mhfd-fast"][k] for k in keys], np.float64)
    signed = (fast - exact) / np.maximum(exact, 1.0)  # (series, defocus)
    relative = np.abs(signed)
    over = relative > FAST_TOLERANCE

    def largest(mask: np.ndarray) -> str:
        s, j = np.unravel_index(np.argmax(np.where(mask, relative, -1.0)), relative.shape)
        (name, psf, noise), d = keys[s], results.defocus[j]
        return (
            f"max {100 * relative[s, j]:.2f} % ({name}/{psf}/{noise} SNR, d={d:g}: "
            f"exact {exact[s, j]:.0f}, fast {fast[s, j]:.0f})"
        )

    tolerance = f"{100 * FAST_TOLERANCE:.0f} %"
    lines = [
        f"mhfd-fast vs mhfd-auto (exact): |fast - exact| / max(exact, 1) over {relative.size} "
        f"images: median {100 * np.median(relative):.2f} %, {largest(relative >= 0)}; "
        f"{int(over.sum())} image(s) over {tolerance}",
    ]
    large = exact >= 100
    if large.any() and not large.all():
        lines.append(
            f"  images with exact >= 100 features ({int(large.sum())}): median "
            f"{100 * np.median(relative[large]):.2f} %, {largest(large)}; "
            f"{int(over[large].sum())} over {tolerance}"
        )
    lines.append(
        f"  signed: mean {100 * signed.mean():+.2f} %; fast > exact in "
        f"{int((fast > exact).sum())} images, fast < exact in {int((fast < exact).sum())}"
    )
    rows = []
    for noise in NOISE_LEVELS:
        rows_of = np.array([k[2] == noise for k in keys])
        rows.append(
            [
                f"{noise}: median signed %",
                *(f"{v:+.1f}" for v in 100 * np.median(signed[rows_of], 0)),
            ]
        )
        rows.append([f"{noise}: share > {tolerance}", *(f"{v:.2f}" for v in over[rows_of].mean(0))])
    lines += ["  by defocus:", *table(["", *(f"d={v:g}" for v in results.defocus)], rows, indent=4)]
    return lines


def threshold_drift(results: Results, threshold: float) -> list[str]:
    """How the automatic threshold moves with defocus, per noise level, relative to T."""
    lines = ["mhfd-auto automatic threshold / T, median over series, by defocus"]
    rows = []
    for noise in NOISE_LEVELS:
        per_d = np.array([t for k, t in results.auto_thresholds.items() if k[2] == noise])
        rows.append([noise, *(f"{v:.2f}" for v in np.median(per_d, axis=0) / threshold)])
    lines += table(["noise", *(f"d={v:g}" for v in results.defocus)], rows)
    return lines


def per_series_table(pearson_r: PerSeries) -> list[str]:
    keys = sorted({(k[0], k[1]) for k in pearson_r["mhfd-auto"]})
    headers = ["series"] + [f"{m} {n}" for m in METHODS for n in NOISE_LEVELS]
    rows = [
        [f"{i}/{p}", *(fmt(pearson_r[m][(i, p, n)]) for m in METHODS for n in NOISE_LEVELS)]
        for i, p in keys
    ]
    return table(headers, rows)


def count_table(results: Results) -> list[str]:
    scores = results.scores["mhfd-auto"]
    keys = sorted({(k[0], k[1]) for k in scores})
    headers = ["series"] + [f"{n} SNR d=0 -> d=max" for n in NOISE_LEVELS]
    rows = [
        [f"{i}/{p}", *(f"{scores[(i, p, n)][0]} -> {scores[(i, p, n)][-1]}" for n in NOISE_LEVELS)]
        for i, p in keys
    ]
    return table(headers, rows)


def write_csv(path: str, results: Results, pearson_r: PerSeries, spearman_rho: PerSeries) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "method",
                "noise",
                "image",
                "psf",
                "points",
                "pearson_r",
                "spearman_rho",
                "defocus",
                "scores",
            ]
        )
        for method in METHODS:
            for key, scores in results.scores[method].items():
                writer.writerow(
                    [
                        method,
                        key[2],
                        key[0],
                        key[1],
                        len(scores),
                        f"{pearson_r[method][key]:.6f}",
                        f"{spearman_rho[method][key]:.6f}",
                        " ".join(f"{v:g}" for v in results.defocus),
                        " ".join(f"{v:.6g}" for v in scores),
                    ]
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    clock = Stopwatch()
    n_images = len(args.images) * len(args.psfs) * len(NOISE_LEVELS)
    n_images *= len(defocus_values(args.defocus_max, args.defocus_step))
    progress(
        f"focus_accuracy: {n_images} images of {args.size} px, 5 scores each "
        f"(full default run: about 4 minutes on 2 cores)"
    )
    threshold = fixed_threshold(args)
    progress(f"fixed threshold T = {threshold:.5f}")
    results = run(args, threshold)
    in_focus = [t[0] for k, t in results.auto_thresholds.items() if k[2] == "high"]
    if results.defocus[0] != 0 or not math.isclose(float(np.median(in_focus)), threshold):
        progress("warning: T differs from the median d=0 high-SNR threshold of the main pass")
    pearson_r, spearman_rho = correlations(results)
    stats = statistics(results, pearson_r, spearman_rho)
    report = summarise(args, results, stats, pearson_r, threshold)
    report.add("", f"run time {clock.elapsed:.0f} s")
    report.emit(args.out)
    if args.csv:
        write_csv(args.csv, results, pearson_r, spearman_rho)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
