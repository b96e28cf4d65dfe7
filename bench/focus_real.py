"""How well focus scores follow defocus on real through-focus series from real instruments.

What it measures
----------------
Every image listed in ``../shared/data/focus_real/manifest.csv`` (relative to the repository
root; ``--data`` to point elsewhere) is scored, in the same run, by

* ``scopefx``: ``focus_score(image, modality=M)`` with the modality matching the series
  (``LSFM`` -> ``fluorescence``, ``brightfield`` -> ``brightfield``, ``SEM``/``EM`` -> ``em``);
* ``scopefx-em``: ``focus_score(image)``, the default (``em``) whatever the series;
* ``mhfd-0.1``: ``focus_score(image, threshold=0.1, noise_model="global")``: the paper's
  fixed threshold, 0.1 of the normalised [0, 1] intensity, with its dark polarity;
* ``tenengrad``: mean squared Sobel gradient magnitude;
* ``normvar``: normalised variance, ``var / mean`` of the grey levels;
* ``varlap``: variance of ``scipy.ndimage.laplace``;
* ``blob_dog``: ``len(skimage.feature.blob_dog(rescale_intensity(img_as_float(image)),
  min_sigma=1, max_sigma=30, threshold=0.1))``, the scikit-image detector over the same
  scales, on the image stretched to [0, 1] (without the stretch a 16-bit frame whose values
  sit near 100 of 65535 has no blob at all).

and reported per series: Pearson ``r`` of ``log(max(score, 1e-12))`` with ``|defocus|``,
Spearman ``rho``, the in/out AUC (``label`` ``in_focus`` against ``out_of_focus`` in the
manifest); per modality: mean and worst ``r`` over its series and the AUC pooled over them
(MHFD counts as densities per megapixel, so image size does not matter).

Verdicts (``scopefx`` only):

* calibration transfer: ``Calibration.fit`` on the other series of the same modality (on the
  series itself when it is alone: marked ``self``), ``max_defocus`` halfway between the
  in-focus and out-of-focus label limits; accuracy on the labelled images;
* run baseline: the product's ``FocusRun`` with the series' modality (its default baseline
  ratio, warm-up 5, its doubts) fed the series in acquisition order,
  warm-up sections re-judged at the end; sensitivity (out-of-focus flagged) and false flags
  (in-focus flagged).

``--sweep`` also scores every modality with polarity x noise model x threshold_k, the grid
the polarity and noise model of the presets in ``FocusParams`` were chosen from; and, with
those (``dark``, ``signal``), ``scale_weight`` x ``threshold_k``, the grid the weight and k of
the presets were chosen from: per modality the mean r over its series, that mean averaged
over k - 1..k + 1 (the rule reads this one: a single series' r moves by a few hundredths
between neighbouring k, which is count noise), and the pooled AUC.

Run
---
``python bench/focus_real.py`` (71 images, about 3 minutes on 2 cores, most of it blob_dog);
``--sweep`` adds about 4 minutes (kept in ``results/focus_real_sweep.txt``). ``--out FILE``
writes the summary. The exit code is 0 whatever the figures: targets are printed with
PASS/FAIL.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage
from skimage.exposure import rescale_intensity
from skimage.feature import blob_dog
from skimage.util import img_as_float

import scopefx
from _common import Report, Stopwatch, environment_lines, fmt, pass_fail, progress, table
from focus_accuracy import auc, pearson, spearman
from scopefx.errors import CalibrationError

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "focus_real"
MODALITY = {"lsfm": "fluorescence", "brightfield": "brightfield", "sem": "em", "em": "em"}
PEERS = ("mhfd-0.1", "tenengrad", "normvar", "varlap", "blob_dog")
METHODS = ("scopefx", "scopefx-em", *PEERS)
TARGET_MEAN_R, TARGET_WORST_R, TARGET_PEER_GAP, TARGET_AUC = -0.90, -0.75, 0.05, 0.90


@dataclass
class Image:
    series: str
    modality: str  # the scopefx modality
    path: Path
    defocus: float
    label: str
    pixels: np.ndarray


def scopefx_modality(manifest_modality: str) -> str:
    return MODALITY.get(manifest_modality.lower(), "em")


def load(data: Path) -> list[Image]:
    with open(data / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        Image(
            series=row["series"],
            modality=scopefx_modality(row["modality"]),
            path=data / row["file"],
            defocus=abs(float(row["defocus_um"])),
            label=row["label"],
            pixels=tifffile.imread(data / row["file"]),
        )
        for row in rows
    ]


def density(result: scopefx.FocusResult) -> float:
    return result.density_per_mpx


def tenengrad(image: np.ndarray) -> float:
    grey = image.astype(np.float64)
    gx, gy = ndimage.sobel(grey, axis=1), ndimage.sobel(grey, axis=0)
    return float(np.mean(gx * gx + gy * gy))


def normvar(image: np.ndarray) -> float:
    grey = image.astype(np.float64)
    return float(grey.var() / grey.mean())


def varlap(image: np.ndarray) -> float:
    return float(ndimage.laplace(image.astype(np.float64)).var())


def blob_count(image: np.ndarray) -> float:
    stretched = rescale_intensity(img_as_float(image), out_range=(0.0, 1.0))
    return float(len(blob_dog(stretched, min_sigma=1, max_sigma=30, threshold=0.1)))


def method_functions() -> dict[str, Callable[[Image], float]]:
    return {
        "scopefx": lambda im: density(scopefx.focus_score(im.pixels, modality=im.modality)),
        "noise_limited": lambda im: float(
            scopefx.focus_score(im.pixels, modality=im.modality).noise_limited
        ),
        "scopefx-em": lambda im: density(scopefx.focus_score(im.pixels)),
        "mhfd-0.1": lambda im: density(
            scopefx.focus_score(im.pixels, threshold=0.1, noise_model="global")
        ),
        "tenengrad": lambda im: tenengrad(im.pixels),
        "normvar": lambda im: normvar(im.pixels),
        "varlap": lambda im: varlap(im.pixels),
        "blob_dog": lambda im: blob_count(im.pixels),
    }


@dataclass(frozen=True)
class SeriesFigures:
    r: float
    rho: float
    auc: float


def figures(images: Sequence[Image], scores: Sequence[float]) -> SeriesFigures:
    d = np.array([im.defocus for im in images])
    s = np.asarray(scores, np.float64)
    labels = np.array([im.label for im in images])
    return SeriesFigures(
        r=pearson(np.log(np.maximum(s, 1e-12)), d),
        rho=spearman(s, d),
        auc=auc(s[labels == "in_focus"], s[labels == "out_of_focus"]),
    )


def by_series(images: Sequence[Image]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, im in enumerate(images):
        out.setdefault(im.series, []).append(i)
    return out


def score_all(images: Sequence[Image], methods: Sequence[str]) -> dict[str, np.ndarray]:
    functions = method_functions()
    scores = {m: np.zeros(len(images)) for m in methods}
    clock = Stopwatch()
    for i, im in enumerate(images):
        for m in methods:
            scores[m][i] = functions[m](im)
        if (i + 1) % 10 == 0 or i + 1 == len(images):
            progress(f"[{i + 1}/{len(images)}] elapsed {clock.elapsed:.0f} s")
    return scores


def label_limits(images: Sequence[Image]) -> tuple[float, float]:
    inside = max(im.defocus for im in images if im.label == "in_focus")
    outside = min(im.defocus for im in images if im.label == "out_of_focus")
    return inside, outside


def calibration_transfer(
    images: Sequence[Image], scores: np.ndarray
) -> list[tuple[str, str, str, float]]:
    """Per series: (series, calibrated on, status, accuracy on labelled images)."""
    groups = by_series(images)
    out = []
    for series, idx in groups.items():
        modality = images[idx[0]].modality
        others = [
            j
            for s, js in groups.items()
            if s != series
            for j in js
            if images[j].modality == modality
        ]
        source = "others" if others else "self"
        fit_on = others or idx
        inside, outside = label_limits([images[j] for j in idx])
        params = scopefx.FocusParams(modality=modality)
        try:
            cal = scopefx.Calibration.fit(
                [images[j].defocus for j in fit_on],
                [scores[j] for j in fit_on],
                params=params,
                max_defocus=(inside + outside) / 2,
            )
        except CalibrationError as exc:
            out.append((series, source, f"refused: {exc}", math.nan))
            continue
        labelled = [j for j in idx if images[j].label in ("in_focus", "out_of_focus")]
        right = [
            (cal.verdict(scores[j]).status == "in_focus") == (images[j].label == "in_focus")
            for j in labelled
        ]
        out.append((series, source, "ok", float(np.mean(right))))
    return out


def run_baseline(
    images: Sequence[Image], scores: np.ndarray, limited: np.ndarray
) -> list[tuple[str, float, float, float]]:
    """Per series, judged by the product's verdict policy (``FocusRun`` with the series'
    modality: its default baseline ratio and its doubts), fed in acquisition order and
    settled at the end: (series, share of out-of-focus flagged, share of in-focus flagged,
    share unverifiable)."""
    from scopefx.focus import FocusRecord

    out = []
    for series, idx in by_series(images).items():
        run = scopefx.FocusRun(params=scopefx.FocusParams(modality=images[idx[0]].modality))
        records = [
            run.judge(FocusRecord(path=str(images[j].path), features=1,
                                  density_per_mpx=float(scores[j]),
                                  noise_limited=bool(limited[j])))
            for j in idx
        ]  # fmt: skip
        run.settle()
        verdicts = [r.verdict for r in records]
        labels = [images[j].label for j in idx]
        flagged = [v in scopefx.focus.FLAGGED for v in verdicts]
        outs = [f for f, lab in zip(flagged, labels, strict=True) if lab == "out_of_focus"]
        ins = [f for f, lab in zip(flagged, labels, strict=True) if lab == "in_focus"]
        unverifiable = float(np.mean([v == "unverifiable" for v in verdicts]))
        out.append((series, float(np.mean(outs)), float(np.mean(ins)), unverifiable))
    return out


def summarise(
    images: Sequence[Image],
    scores: dict[str, np.ndarray],
    limited: np.ndarray,
    report: Report,
) -> None:
    groups = by_series(images)
    per = {
        m: {s: figures([images[j] for j in idx], s_[idx]) for s, idx in groups.items()}
        for m, s_ in scores.items()
    }
    rows = []
    for series, idx in groups.items():
        best_peer = min(per[p][series].r for p in PEERS)
        rows.append(
            [
                f"{series} ({images[idx[0]].modality}, {len(idx)})",
                *(fmt(per[m][series].r) for m in METHODS),
                fmt(per["scopefx"][series].r - best_peer),
            ]
        )
    report.add(
        "", "Pearson r of log(score) vs |defocus|, per series (scopefx - best peer: > 0 is worse)"
    )
    report.add(*table(["series (modality, images)", *METHODS, "gap"], rows))
    report.add("", "Spearman rho and in/out AUC per series")
    report.add(
        *table(
            ["series", *(f"{m} rho/AUC" for m in METHODS)],
            [
                [s, *(f"{fmt(per[m][s].rho, 2)}/{fmt(per[m][s].auc, 2)}" for m in METHODS)]
                for s in groups
            ],
        )
    )
    modalities = sorted({im.modality for im in images})
    report.add("", "Per modality: mean / worst r over series, AUC pooled over series")
    mrows = []
    targets = []
    for modality in modalities:
        series = [s for s, idx in groups.items() if images[idx[0]].modality == modality]
        idx = [j for s in series for j in groups[s]]
        labels = np.array([images[j].label for j in idx])
        row = [f"{modality} ({len(series)})"]
        for m in METHODS:
            rs = [per[m][s].r for s in series]
            pooled = auc(
                scores[m][idx][labels == "in_focus"], scores[m][idx][labels == "out_of_focus"]
            )
            row.append(f"{fmt(float(np.mean(rs)), 2)}/{fmt(max(rs), 2)}/{fmt(pooled, 2)}")
            if m == "scopefx":
                targets.append((modality, float(np.mean(rs)), max(rs), pooled))
        mrows.append(row)
    report.add(*table(["modality (series)", *(f"{m} mean/worst/AUC" for m in METHODS)], mrows))
    all_r = [per["scopefx"][s].r for s in groups]
    gaps = [per["scopefx"][s].r - min(per[p][s].r for p in PEERS) for s in groups]
    trows = [
        [
            "mean r, all series",
            f"<= {TARGET_MEAN_R}",
            fmt(float(np.mean(all_r))),
            pass_fail(float(np.mean(all_r)) <= TARGET_MEAN_R),
        ],
        [
            "worst r",
            f"<= {TARGET_WORST_R}",
            fmt(max(all_r)),
            pass_fail(max(all_r) <= TARGET_WORST_R),
        ],
        [
            "largest gap to best peer",
            f"<= {TARGET_PEER_GAP}",
            fmt(max(gaps)),
            pass_fail(max(gaps) <= TARGET_PEER_GAP),
        ],
    ]
    for modality, _, _, pooled in targets:
        trows.append(
            [
                f"pooled AUC {modality}",
                f">= {TARGET_AUC}",
                fmt(pooled),
                pass_fail(pooled >= TARGET_AUC),
            ]
        )
    report.add("", "Targets (scopefx with the matching modality)")
    report.add(*table(["figure", "target", "value", "result"], trows))
    report.add("", "Verdicts (scopefx, matching modality)")
    report.add(
        *table(
            ["series", "calibrated on", "status", "accuracy"],
            [
                [s, src, st[:70], fmt(a, 2)]
                for s, src, st, a in calibration_transfer(images, scores["scopefx"])
            ],
        )
    )
    report.add(
        *table(
            [
                "series",
                "FocusRun baseline (modality defaults): out-of-focus flagged",
                "in-focus flagged",
                "unverifiable",
            ],
            [
                [s, fmt(a, 2), fmt(b, 2), fmt(u, 2)]
                for s, a, b, u in run_baseline(images, scores["scopefx"], limited)
            ],
        )
    )
    report.add(
        "",
        "scopefx density per Mpx (matching modality): in-focus median, out-of-focus median",
    )
    drows = []
    for series, idx in groups.items():
        lab = np.array([images[j].label for j in idx])
        sc = scores["scopefx"][idx]
        drows.append(
            [
                series,
                fmt(float(np.median(sc[lab == "in_focus"])), 0),
                fmt(float(np.median(sc[lab == "out_of_focus"])), 0),
            ]
        )
    report.add(*table(["series", "in focus", "out of focus"], drows))
    report.add(
        "",
        "Run baseline from in-focus frames (reference = median in-focus density): "
        "density / reference; share flagged at ratio 0.5 / 0.7 / 0.8 (out-of-focus frames: "
        "sensitivity; in-focus frames: false flags); noise-limited frames",
    )
    rrows = []
    for series, idx in groups.items():
        lab = np.array([images[j].label for j in idx])
        sc = scores["scopefx"][idx]
        ratios = sc / float(np.median(sc[lab == "in_focus"]))
        out_r, in_r = ratios[lab == "out_of_focus"], ratios[lab == "in_focus"]
        rrows.append(
            [
                series,
                f"{fmt(float(in_r.min()), 2)}",
                f"{fmt(float(out_r.min()), 2)}..{fmt(float(out_r.max()), 2)}",
                " / ".join(fmt(float(np.mean(out_r < c)), 2) for c in (0.5, 0.7, 0.8)),
                " / ".join(fmt(float(np.mean(in_r < c)), 2) for c in (0.5, 0.7, 0.8)),
                str(int(sum(limited[j] for j in idx))),
            ]
        )
    report.add(
        *table(
            [
                "series",
                "in-focus min",
                "out-of-focus range",
                "sensitivity",
                "false flags",
                "noise-limited",
            ],
            rrows,
        )
    )


def sweep(images: Sequence[Image], report: Report) -> None:
    groups = by_series(images)
    report.add("", "Sweep: r per series (and AUC) by polarity, noise model, threshold_k")
    rows = []
    for polarity in ("dark", "bright", "both"):
        for noise in ("global", "signal"):
            for k in (3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0):
                s = np.array(
                    [
                        density(
                            scopefx.focus_score(
                                im.pixels, polarity=polarity, noise_model=noise, threshold_k=k
                            )
                        )
                        for im in images
                    ]
                )
                row = [f"{polarity} {noise} k={k:g}"]
                for idx in groups.values():
                    f = figures([images[j] for j in idx], s[idx])
                    row.append(f"{fmt(f.r)}/{fmt(f.auc, 2)}")
                rows.append(row)
            progress(f"sweep {polarity} {noise} done")
    report.add(*table(["setting", *(f"{s} r/AUC" for s in groups)], rows))


WEIGHT_SWEEP_WEIGHTS = (0.0, 1.0, 2.0)
WEIGHT_SWEEP_KS = tuple(float(k) for k in range(4, 14))


def weight_sweep(images: Sequence[Image], report: Report) -> None:
    """scale_weight x threshold_k with the light-sheet polarity and noise model."""
    groups = by_series(images)
    modalities = sorted({im.modality for im in images})
    labels = np.array([im.label for im in images])
    rows: dict[tuple[float, float], list[float]] = {}
    pooled: dict[tuple[float, float], dict[str, float]] = {}
    for weight in WEIGHT_SWEEP_WEIGHTS:
        for k in WEIGHT_SWEEP_KS:
            s = np.array(
                [
                    density(
                        scopefx.focus_score(
                            im.pixels,
                            polarity="dark",
                            noise_model="signal",
                            threshold_k=k,
                            scale_weight=weight,
                        )
                    )
                    for im in images
                ]
            )
            rows[weight, k] = [
                figures([images[j] for j in idx], s[idx]).r for idx in groups.values()
            ]
            pooled[weight, k] = {}
            for modality in modalities:
                mask = np.array([im.modality == modality for im in images])
                pooled[weight, k][modality] = auc(
                    s[mask & (labels == "in_focus")], s[mask & (labels == "out_of_focus")]
                )
        progress(f"weight sweep scale_weight={weight:g} done")
    series_modality = [images[idx[0]].modality for idx in groups.values()]
    report.add(
        "",
        "Sweep: scale_weight x threshold_k (dark, signal): r per series; per modality mean r, "
        "mean r averaged over k-1..k+1 (smoothed), pooled AUC",
    )
    out = []
    for (weight, k), rs in rows.items():
        row = [f"w={weight:g} k={k:g}", *(fmt(r) for r in rs)]
        for modality in modalities:
            mine = [r for r, m in zip(rs, series_modality, strict=True) if m == modality]
            near = [
                float(np.mean([r for r, m in zip(rows[weight, kk], series_modality, strict=True)
                               if m == modality]))
                for kk in (k - 1, k, k + 1)
                if (weight, kk) in rows
            ]  # fmt: skip
            row += [
                fmt(float(np.mean(mine))),
                fmt(float(np.mean(near))),
                fmt(pooled[weight, k][modality], 2),
            ]
        out.append(row)
    headers = ["setting", *groups]
    for modality in modalities:
        headers += [f"{modality} mean", "smoothed", "AUC"]
    report.add(*table(headers, out))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="focus_real folder")
    parser.add_argument("--sweep", action="store_true", help="also the preset grid")
    parser.add_argument("--no-blob-dog", action="store_true", help="skip the slow blob_dog")
    parser.add_argument("--out", metavar="FILE", help="also write the summary to FILE")
    args = parser.parse_args(argv)
    if not (args.data / "manifest.csv").is_file():
        progress(f"no real data at {args.data}: nothing to do")
        return 0
    clock = Stopwatch()
    images = load(args.data)
    methods = [m for m in METHODS if not (args.no_blob_dog and m == "blob_dog")]
    report = Report()
    report.add("Focus on real through-focus series: log(score) vs |defocus|, in/out AUC")
    report.add(*environment_lines())
    report.add(f"data: {args.data} ({len(images)} images, {len(by_series(images))} series)")
    scores = score_all(images, [*methods, "noise_limited"])
    limited = scores.pop("noise_limited").astype(bool)
    if args.no_blob_dog:
        scores["blob_dog"] = np.full(len(images), np.nan)
    summarise(images, scores, limited, report)
    if args.sweep:
        sweep(images, report)
        weight_sweep(images, report)
    report.add("", f"run time {clock.elapsed:.0f} s")
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
