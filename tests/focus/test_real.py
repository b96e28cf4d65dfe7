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
#: bench/results/focus_real.txt: mito -0.965, microtubules -0.831, bright field -0.971).
MAX_R = {"lsfm_dfnn_mito_stack": -0.93, "lsfm_dfnn_mt_stack": -0.78, "bf_sephace_set1": -0.93}
#: The issue's targets over the series: mean r, and the largest lead of Tenengrad (the best
#: peer on mitochondria in bench/results/focus_real.txt) over scopefx (measured -0.922, 0.022).
MAX_MEAN_R, MAX_GAP_TO_TENENGRAD = -0.90, 0.05

pytestmark = pytest.mark.skipif(
    not (DATA / "manifest.csv").is_file(),
    reason=f"real focus series not found at {DATA} (shared data folder absent)",
)


def _pearson(x, y):
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def _auc(pos, neg):
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def _tenengrad(image):
    from scipy import ndimage

    grey = image.astype(np.float64)
    return float(np.mean(ndimage.sobel(grey, axis=0) ** 2 + ndimage.sobel(grey, axis=1) ** 2))


@pytest.fixture(scope="module")
def scored():
    """Per series: (modality, |defocus|, label, density, noise_limited, tenengrad) of every
    image."""
    import tifffile

    with open(DATA / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    out: dict[str, list[tuple[str, float, str, float, bool, float]]] = {}
    for row in rows:
        modality = MODALITY[row["modality"]]
        pixels = tifffile.imread(DATA / row["file"])
        result = scopefx.focus_score(pixels, modality=modality)
        out.setdefault(row["series"], []).append(
            (
                modality,
                abs(float(row["defocus_um"])),
                row["label"],
                result.density_per_mpx,
                result.noise_limited,
                _tenengrad(pixels),
            )
        )
    return out


def _r(images, column=3):
    d = [i[1] for i in images]
    return _pearson(np.log([i[column] for i in images]), d)


def test_every_series_is_known(scored):
    assert set(scored) >= set(MAX_R), sorted(scored)


@pytest.mark.parametrize("series", sorted(MAX_R))
def test_log_density_falls_with_defocus(scored, series):
    _, _, labels, density, _, _ = zip(*scored[series], strict=True)
    r = _r(scored[series])
    assert r <= MAX_R[series], f"{series}: r = {r:.3f}, want <= {MAX_R[series]}"
    labels, density = np.array(labels), np.array(density)
    within = _auc(density[labels == "in_focus"], density[labels == "out_of_focus"])
    # 0.90, the pooled target: the microtubule stack's frames 0.3-0.45 um out keep
    # about as much fine structure as its best frames (Tenengrad r -0.66 there): 0.94
    assert within >= 0.90, f"{series}: in/out AUC {within:.2f}"


def test_mean_r_and_gap_to_tenengrad_meet_the_targets(scored):
    rs = {s: _r(images) for s, images in scored.items()}
    assert np.mean(list(rs.values())) <= MAX_MEAN_R, rs
    gaps = {s: rs[s] - _r(images, column=5) for s, images in scored.items()}
    assert max(gaps.values()) <= MAX_GAP_TO_TENENGRAD, gaps


@pytest.mark.parametrize("modality", ["brightfield", "fluorescence"])
def test_pooled_auc_per_modality(scored, modality):
    images = [i for s in scored.values() for i in s if i[0] == modality]
    inside = [i[3] for i in images if i[2] == "in_focus"]
    outside = [i[3] for i in images if i[2] == "out_of_focus"]
    value = _auc(inside, outside)
    assert value >= 0.90, f"{modality}: pooled AUC {value:.3f}"


def test_in_focus_frames_are_not_noise_limited(scored):
    flagged = [s for s, images in scored.items() for i in images if i[2] == "in_focus" and i[4]]
    assert not flagged


def test_a_noisier_camera_does_not_make_in_focus_frames_noise_limited():
    """Twice the noise variance (Gaussian noise of the frame's own level added) is a plainer
    camera, not a count made of noise: at the fluorescence preset's k = 9 no noise peak reaches
    the threshold. The flag compared the count with the features clearing 2k = 18 sigma, and
    flagged 25 of the 31 microtubule frames (the r of the series stayed -0.82); it now asks
    for 4 sigma above the threshold (0 of 31 flagged; at ten times the variance, where r
    falls to -0.5, half are). The test takes the series' in-focus frames."""
    import tifffile

    series = "lsfm_dfnn_mt_stack"
    with open(DATA / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle)
                if r["series"] == series and r["label"] == "in_focus"]  # fmt: skip
    rng = np.random.default_rng(1)
    flagged = []
    for row in rows:
        frame = tifffile.imread(DATA / row["file"]).astype(np.float64)
        level = np.std(np.diff(frame, axis=1)) / math.sqrt(2)
        noisier = frame + rng.normal(0.0, level, frame.shape)
        result = scopefx.focus_score(noisier, modality="fluorescence")
        assert 0 < result.features_clear <= result.features
        if result.noise_limited:
            flagged.append(row["file"])
    assert rows and not flagged, flagged


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


@pytest.mark.parametrize("series", ["lsfm_dfnn_mito_stack", "lsfm_dfnn_mt_stack"])
def test_run_baseline_flags_light_sheet_defocus_without_false_flags(scored, series):
    """A run with no calibration, fed in acquisition order (it starts out of focus, at the far
    end of the stack): measured 48 % and 75 % of the out-of-focus frames flagged, none of the
    in-focus ones (bench/results/focus_real.txt; 22 % and 30 % before the weighted score)."""
    from scopefx.focus import FLAGGED, FocusRecord

    images = scored[series]
    run = scopefx.FocusRun(params=scopefx.FocusParams(modality=images[0][0]))
    records = [
        run.judge(FocusRecord(path=str(j), features=1, density_per_mpx=i[3], noise_limited=i[4]))
        for j, i in enumerate(images)
    ]
    run.settle()
    flagged = {label: [] for label in ("in_focus", "out_of_focus", "between")}
    for record, image in zip(records, images, strict=True):
        flagged[image[2]].append(record.verdict in FLAGGED)
    assert not any(flagged["in_focus"])
    assert np.mean(flagged["out_of_focus"]) >= 0.4
    assert not any(r.verdict == "unverifiable" for r in records)


@pytest.mark.parametrize("quality", [95, 75])
def test_bright_field_jpeg_scores_like_lossless(quality):
    """JPEG copies of the bright-field series keep its ordering and its score level (measured
    in bench/results/focus_jpeg.txt: r -0.972 / -0.975, score / lossless 1.01 / 0.99; before,
    the 24.4 um JPEG scored 4x the lossless in-focus image)."""
    import imagecodecs
    import tifffile

    with open(DATA / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["series"] == "bf_sephace_set1"]
    defocus, lossless, coded = [], [], []
    for row in rows:
        pixels = tifffile.imread(DATA / row["file"])
        jpeg = imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(pixels, level=quality))
        defocus.append(abs(float(row["defocus_um"])))
        lossless.append(scopefx.focus_score(pixels, modality="brightfield").score)
        coded.append(scopefx.focus_score(jpeg, modality="brightfield"))
    scores = [result.score for result in coded]
    assert _pearson(np.log(scores), defocus) < -0.93
    ratios = np.asarray(scores) / np.asarray(lossless)
    assert np.all((ratios > 0.5) & (ratios < 2.0)), ratios
    assert all(result.block_coded for result in coded)


def test_padding_without_noise_does_not_lower_the_noise_estimate():
    """A black border (an aligned stack's zero fill, a scanner's margin) holds no noise: counted
    in, it pulled the median residual down, and a bright-field frame 24 um out of focus went
    from 387 to 10,288 features with a 100 px border."""
    import tifffile

    from scopefx._backend import get_backend
    from scopefx.focus._normalize import normalize

    frame = tifffile.imread(DATA / "bf_sephace_set1" / "00_d-24.400um.tif")
    padded = np.zeros((frame.shape[0] + 200, frame.shape[1] + 200), frame.dtype)
    padded[100:-100, 100:-100] = frame
    bare, framed = scopefx.focus_score(frame), scopefx.focus_score(padded)
    # the same noise in grey levels (normalised units differ: the border widens the range)
    grey = [
        result.noise_sigma / normalize(pixels, 0.175, get_backend(pixels))[1]
        for result, pixels in ((bare, frame), (framed, padded))
    ]
    assert grey[1] == pytest.approx(grey[0], rel=0.1)
    assert framed.features < 1.5 * bare.features, (bare.features, framed.features)


def _calibrated_run(scored, calibrate_on, judge):
    """A FocusRun judging the densities of ``judge`` with a calibration fitted on the whole
    series ``calibrate_on`` (fluorescence preset), as `scopefx calibrate` would fit it."""
    fit = scored[calibrate_on]
    calibration = scopefx.Calibration.fit(
        [i[1] for i in fit],
        [i[3] for i in fit],
        params=scopefx.FocusParams(modality="fluorescence"),
    )
    run = scopefx.FocusRun(
        calibration=calibration, params=scopefx.FocusParams(modality="fluorescence")
    )
    for image in judge:
        run.judge(scopefx.focus.FocusRecord(path="s", features=1, density_per_mpx=image[3]))
    return run


def test_a_calibration_from_one_light_sheet_specimen_fits_the_other(scored):
    """The density of the count alone depended on the specimen's brightness against its noise:
    in-focus microtubules scored 29 per Mpx, defocused mitochondria 48, so a calibration from
    one specimen called every frame of the other out of focus (or in focus), and the run said
    only that the calibration did not fit. With the band energy ratio the two specimens
    share a scale: a calibration from either judges the other without a doubt, and
    its verdicts on the other's labelled frames are right (measured: 0.84 and 1.00)."""
    mito, mt = scored["lsfm_dfnn_mito_stack"], scored["lsfm_dfnn_mt_stack"]
    for calibrate_on, judge in (("lsfm_dfnn_mito_stack", mt), ("lsfm_dfnn_mt_stack", mito)):
        run = _calibrated_run(scored, calibrate_on, [])
        verdicts = [
            run.judge(scopefx.focus.FocusRecord(path="s", features=1, density_per_mpx=i[3]))
            for i in judge
        ]
        assert run.doubts() == [], calibrate_on
        right = [(v.verdict == "in_focus") == (i[2] == "in_focus")
                 for v, i in zip(verdicts, judge, strict=True) if i[2] != "between"]  # fmt: skip
        assert np.mean(right) >= 0.8, (calibrate_on, np.mean(right))
    for series in scored:  # its own calibration fits each series, through-focus and near
        if scored[series][0][0] == "fluorescence":
            own = scored[series]
            assert _calibrated_run(scored, series, own).doubts() == []
            near = [i for i in own if i[1] <= 0.25]
            assert _calibrated_run(scored, series, near).doubts() == []
