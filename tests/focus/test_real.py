"""Focus scores on real through-focus series (``../shared/data/focus_real``, beside the repo).

The acceptance figures of ``bench/focus_real.py`` with a margin: each series scored with its
matching ``modality`` must follow |defocus| and separate in- from out-of-focus frames.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import scopefx

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "focus_real"
MODALITY = {"LSFM": "fluorescence", "brightfield": "brightfield"}
#: Worst acceptable Pearson r of log(density) vs |defocus| per series (measured in
#: bench/results/focus_real.txt: mito -0.89, microtubules -0.80, bright field -0.97).
MAX_R = {"lsfm_dfnn_mito_stack": -0.85, "lsfm_dfnn_mt_stack": -0.75, "bf_sephace_set1": -0.93}

pytestmark = pytest.mark.skipif(
    not (DATA / "manifest.csv").is_file(),
    reason=f"real focus series not found at {DATA} (shared data folder absent)",
)


def _pearson(x, y):
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def _auc(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


@pytest.fixture(scope="module")
def scored():
    """Per series: (modality, |defocus|, label, density, noise_limited) of every image."""
    import tifffile

    with open(DATA / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out: dict[str, list[tuple[str, float, str, float, bool]]] = {}
    for row in rows:
        modality = MODALITY[row["modality"]]
        result = scopefx.focus_score(tifffile.imread(DATA / row["file"]), modality=modality)
        out.setdefault(row["series"], []).append(
            (
                modality,
                abs(float(row["defocus_um"])),
                row["label"],
                result.density_per_mpx,
                result.noise_limited,
            )
        )
    return out


def test_every_series_is_known(scored):
    assert set(scored) >= set(MAX_R), sorted(scored)


@pytest.mark.parametrize("series", sorted(MAX_R))
def test_log_density_falls_with_defocus(scored, series):
    _, d, labels, density, _ = zip(*scored[series], strict=True)
    r = _pearson(np.log(density), d)
    assert r <= MAX_R[series], f"{series}: r = {r:.3f}, want <= {MAX_R[series]}"
    labels, density = np.array(labels), np.array(density)
    within = _auc(density[labels == "in_focus"], density[labels == "out_of_focus"])
    assert within >= 0.85, f"{series}: in/out AUC {within:.2f}"


@pytest.mark.parametrize("modality", sorted(set(MODALITY.values())))
def test_pooled_auc_per_modality(scored, modality):
    images = [i for s in scored.values() for i in s if i[0] == modality]
    inside = [i[3] for i in images if i[2] == "in_focus"]
    outside = [i[3] for i in images if i[2] == "out_of_focus"]
    value = _auc(inside, outside)
    assert value >= 0.90, f"{modality}: pooled AUC {value:.3f}"


def test_in_focus_frames_are_not_noise_limited(scored):
    flagged = [s for s, images in scored.items() for i in images if i[2] == "in_focus" and i[4]]
    assert not flagged


def test_fluorescence_preset_beats_the_em_default_on_light_sheet(scored):
    """The reason for the preset: with the em default the light-sheet counts hardly fall."""
    import tifffile

    series = "lsfm_dfnn_mt_stack"
    with open(DATA / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["series"] == series]
    em = [scopefx.focus_score(tifffile.imread(DATA / r["file"])).features for r in rows[::3]]
    d = [abs(float(r["defocus_um"])) for r in rows[::3]]
    preset = [i[3] for i in scored[series][::3]]
    assert _pearson(np.log(preset), d) < _pearson(np.log(np.maximum(em, 1)), d) - 0.3
    assert not math.isnan(_pearson(np.log(preset), d))
