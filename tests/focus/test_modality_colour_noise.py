"""Modality presets, colour input, the signal-dependent noise model and noise_limited."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import tifffile

import scopefx
from scopefx import FocusParams, samples, score_files
from scopefx._backend import get_backend
from scopefx.errors import ConfigError
from scopefx.focus._noise import estimate_noise_model, local_means
from scopefx.focus._params import PRESETS


def _image(name="camera", amount=0.0, size=256, seed=1):
    blurred = samples.defocus(samples.bundled_image(name, size=size), amount)
    return samples.acquire(blurred, photons=500.0, read_noise=1.5, dtype=np.uint8, seed=seed)


@pytest.mark.parametrize("modality", sorted(PRESETS))
def test_preset_fills_only_fields_left_at_none(modality):
    p = FocusParams(modality=modality)
    preset = PRESETS[modality]
    resolved = (
        p.resolved_polarity,
        p.resolved_noise_model,
        p.resolved_threshold_k,
        p.resolved_scale_weight,
        p.resolved_band_ratio,
    )
    assert resolved == (
        preset.polarity,
        preset.noise_model,
        preset.threshold_k,
        preset.scale_weight,
        preset.band_ratio,
    )
    explicit = FocusParams(
        modality=modality,
        polarity="both",
        threshold_k=2.5,
        noise_model="global",
        scale_weight=0.5,
        band_ratio=2.0,
    )
    assert explicit.resolved_polarity == "both"
    assert explicit.resolved_threshold_k == 2.5
    assert explicit.resolved_noise_model == "global"
    assert explicit.resolved_scale_weight == 0.5
    assert explicit.resolved_band_ratio == 2.0
    assert explicit.resolved() == explicit.replace(modality=modality)


def test_em_default_is_the_papers_setting():
    p = FocusParams()
    assert p.modality == "em"
    assert (
        p.resolved_polarity,
        p.resolved_noise_model,
        p.resolved_threshold_k,
        p.resolved_scale_weight,
        p.resolved_band_ratio,
    ) == ("dark", "global", 4.0, 0.0, 0.0)


def test_params_round_trip_through_plain_json():
    p = FocusParams(modality="fluorescence", channel=1)
    data = json.loads(json.dumps(p.to_dict()))
    assert data["polarity"] is None and data["modality"] == "fluorescence"
    assert FocusParams.from_dict(data) == p


def test_changing_modality_changes_the_preset_not_explicit_fields():
    p = FocusParams(threshold_k=5.0).replace(modality="brightfield")
    assert p.resolved_threshold_k == 5.0
    assert p.resolved_noise_model == PRESETS["brightfield"].noise_model


def test_colour_is_scored_on_luma_and_recorded():
    grey = _image()
    rgb = np.stack([grey] * 3, axis=-1)
    from_grey = scopefx.focus_score(grey)
    from_rgb = scopefx.focus_score(rgb)
    assert from_rgb.colour == "luma709" and from_grey.colour == "grey"
    assert from_rgb.features == from_grey.features  # the BT.709 weights sum to one
    rgba = np.concatenate([rgb, np.full_like(grey, 255)[..., None]], axis=-1)
    assert scopefx.focus_score(rgba).features == from_grey.features  # alpha ignored


def _padded(rgb, *, left=0, right=0, top=0):
    """``rgb`` inside a transparent padding (alpha 0, black under it), as an RGBA export."""
    h, w = rgb.shape[:2]
    out = np.zeros((h + top, w + left + right, 4), np.uint8)
    out[top:, left : left + w, :3] = rgb
    out[top:, left : left + w, 3] = 255
    return out


@pytest.mark.parametrize("blur", [0.0, 2.0])
def test_transparent_padding_is_no_data(blur):
    """An RGBA export padded with transparent black: the padding's edge was counted as
    features and its area diluted the density (blurred immunohistochemistry: 657 features
    instead of 577, density -15 %). The opaque box is scored: the very same features, at
    their place in the whole image, and the density per opaque megapixel."""
    from scipy import ndimage

    from scopefx.samples import bundled_image

    grey = bundled_image("immunohistochemistry", size=(384, 320)).astype(np.float64)
    rgb = np.stack([ndimage.gaussian_filter(grey * k, blur) for k in (1.0, 0.8, 0.6)], -1)
    rgb = np.clip(rgb * 255 / rgb.max(), 0, 255).astype(np.uint8)
    plain = scopefx.focus_score(rgb, modality="brightfield")
    padded = scopefx.focus_score(_padded(rgb, left=150, right=40, top=30), modality="brightfield")
    assert padded.features == plain.features > 50
    assert padded.density_per_mpx == pytest.approx(plain.density_per_mpx)
    assert padded.opaque_px == 384 * 320 and padded.shape == (414, 510)
    np.testing.assert_array_equal(padded.positions, plain.positions + np.array([30, 150]))
    assert padded.focus_map.shape == (2, 2) and (padded.focus_map > 0).all()  # each has data
    response, _ = scopefx.focus_response(_padded(rgb, left=150, top=30))
    assert response.shape == (414, 470) and not response[:, :150].any()


def test_transparent_holes_count_no_features_and_are_not_in_the_density():
    """Transparent pixels inside the opaque box are filled from their nearest opaque pixel
    (no edge to count) and no feature lies on them."""
    grey = _image()
    rgba = _padded(np.stack([grey] * 3, axis=-1))
    rgba[:60, -80:, 3] = 0  # a transparent notch in a corner, black under it
    rgba[:60, -80:, :3] = 0
    result = scopefx.focus_score(rgba)
    alpha = rgba[..., 3] > 0
    assert result.opaque_px == int(alpha.sum())
    assert alpha[result.positions[:, 0], result.positions[:, 1]].all()
    cut = scopefx.focus_score(grey[60:])  # the same content without the notch's rows
    assert result.density_per_mpx == pytest.approx(cut.density_per_mpx, rel=0.1)


@pytest.mark.parametrize("shape", ["disk", "ring"])
def test_transparent_pixels_set_no_noise_level(shape):
    """The filled transparent pixels copy their nearest opaque pixel without its noise: they
    were measured with the rest, pulled the noise level down and let noise pass as features
    (pure noise, no specimen: 5 features opaque everywhere, 75 in a round field of view,
    1,833 in a 50 px ring). Only opaque pixels set the noise level and the saturation."""
    rng = np.random.default_rng(0)
    grey = np.clip(100 + rng.normal(0, 3, (512, 512)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:512, :512]
    r = np.hypot(yy - 256, xx - 256)
    opaque = r < 256 if shape == "disk" else np.abs(r - 200) < 25
    rgba = np.dstack([grey, grey, grey, np.where(opaque, 255, 0).astype(np.uint8)])
    plain = scopefx.focus_score(grey)
    masked = scopefx.focus_score(rgba)
    assert masked.opaque_px == int(opaque.sum())
    assert plain.density_per_mpx < 50
    assert masked.density_per_mpx < 2 * plain.density_per_mpx + 50


def test_transparent_pixels_leave_the_features_of_the_opaque_part_alone():
    """Real content in a round field of view: the features inside it are those of the
    unmasked image there (the filled pixels had moved the threshold: +31 %)."""
    grey = _image(size=512)
    yy, xx = np.mgrid[:512, :512]
    opaque = np.hypot(yy - 256, xx - 256) < 256
    rgba = np.dstack([grey, grey, grey, np.where(opaque, 255, 0).astype(np.uint8)])
    plain, masked = scopefx.focus_score(grey), scopefx.focus_score(rgba)
    inner = np.hypot(yy - 256, xx - 256) < 240  # away from the rim, where the fill differs
    count = [int(inner[p[:, 0], p[:, 1]].sum()) for p in (plain.positions, masked.positions)]
    assert count[0] > 100
    assert count[1] == pytest.approx(count[0], rel=0.1)


def test_an_image_with_no_opaque_pixel_is_refused():
    rgba = np.zeros((64, 64, 4), np.uint8)
    with pytest.raises(scopefx.errors.InvalidImageError, match=r"every pixel .* transparent") as e:
        scopefx.focus_score(rgba)
    assert e.value.status == "transparent"


def test_focus_map_cells_without_data_are_null_in_json(tmp_path):
    import imageio.v3 as iio

    rgba = _padded(np.stack([_image()] * 3, axis=-1), left=300)
    path = tmp_path / "export.png"
    iio.imwrite(path, rgba)
    (record,) = list(score_files([path], cell_px=128))
    assert record.ok
    out = json.loads(json.dumps(record.to_dict(), allow_nan=False))
    assert out["focus_map"][0][0] is None and out["focus_map"][0][-1] > 0


def test_a_chosen_channel_is_scored_alone():
    grey = _image()
    rgb = np.stack([np.zeros_like(grey), grey, np.zeros_like(grey)], axis=-1)
    result = scopefx.focus_score(rgb, channel=1)
    assert result.colour == "channel 1"
    assert result.features == scopefx.focus_score(grey).features
    with pytest.raises(ConfigError, match=r"channel must be None .* got 3"):
        scopefx.focus_score(rgb, channel=3)
    # a grey image has channel 0 only: channel 7 was ignored and the image scored "ok"
    assert scopefx.focus_score(grey, channel=0).features == scopefx.focus_score(grey).features
    with pytest.raises(ConfigError, match=r"channel 7: a grey image .* has one channel, 0"):
        scopefx.focus_score(grey, channel=7)


def test_colour_file_gives_a_record_with_its_conversion(tmp_path):
    import imageio.v3 as iio

    path = tmp_path / "slide.png"
    iio.imwrite(path, np.stack([_image()] * 3, axis=-1))
    (record,) = list(score_files([path]))
    assert record.ok and record.features > 0
    out = record.to_dict()
    assert out["colour"] == "luma709" and out["noise_limited"] is False
    assert out["modality"] == "em"


def _sparse_blobs(blur_px, *, seed=0):
    """Isolated Gaussian blobs (sd 1.5 px, peak about 600 photons) on a 100-photon
    background, blurred by ``blur_px``, with shot and read noise: a sparse fluorescence
    frame."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    points = np.zeros((512, 512))
    rows, cols = rng.integers(24, 488, (2, 60))
    points[rows, cols] = 2 * np.pi * 1.5**2 * 600
    signal = ndimage.gaussian_filter(points, np.hypot(1.5, blur_px))
    counts = rng.poisson(100 + signal) + rng.normal(0, 2, signal.shape)
    return np.clip(counts, 0, 65535).astype(np.uint16)


def test_scale_weight_makes_the_score_follow_blur_of_isolated_blobs():
    """Blur widens an isolated blob instead of removing it: the plain count stays put while
    the area-weighted score falls (the reason for the fluorescence preset's weight)."""
    options = {"polarity": "bright", "noise_model": "signal", "threshold_k": 6.0}
    sharp, blurred = _sparse_blobs(0.0), _sparse_blobs(3.0)
    plain = [scopefx.focus_score(im, scale_weight=0.0, **options) for im in (sharp, blurred)]
    weighted = [scopefx.focus_score(im, scale_weight=2.0, **options) for im in (sharp, blurred)]
    assert plain[1].features >= 0.9 * plain[0].features > 40
    assert weighted[1].score < 0.3 * weighted[0].score
    # the weight changes the score, not what is detected
    assert [r.features for r in weighted] == [r.features for r in plain]


def test_score_is_the_count_without_weight_and_the_map_carries_the_weights():
    image = _image(size=256)
    plain = scopefx.focus_score(image, cell_px=128)
    assert plain.params.resolved_scale_weight == 0
    assert plain.score == plain.features
    assert plain.density_per_mpx == pytest.approx(plain.features * 1e6 / 256**2)
    weighted = scopefx.focus_score(image, cell_px=128, scale_weight=1.0)
    assert weighted.features == plain.features
    expected = float(np.sum(weighted.params.sigmas_px[0] / weighted.sigmas_px.astype(float)))
    assert weighted.score == pytest.approx(expected, rel=1e-5)
    assert weighted.score < plain.score
    assert weighted.focus_map.sum() * 128 * 128 / 1e6 == pytest.approx(weighted.score, rel=1e-5)
    assert weighted.summary()["score"] == weighted.score


def test_noise_model_recovers_a_poisson_gaussian_level_function():
    rng = np.random.default_rng(3)
    ramp = np.tile(np.linspace(0.05, 0.95, 512, dtype=np.float32), (512, 1))
    a, b = 2e-3, 1e-4
    noisy = (ramp + rng.normal(size=ramp.shape) * np.sqrt(a * ramp + b)).astype(np.float32)
    model, means = estimate_noise_model(noisy, 0.0, kind="signal", backend=get_backend(noisy))
    assert model.kind == "signal"
    assert model.gain == pytest.approx(a, rel=0.15)
    assert model.sigma_at(0.9) == pytest.approx(np.sqrt(a * 0.9 + b), rel=0.1)
    assert model.sigma_at(0.1) == pytest.approx(np.sqrt(a * 0.1 + b), rel=0.15)
    mu = local_means(
        means, np.array([[100, 10], [100, 500]]), np.array([4.0, 4.0]), get_backend(means)
    )
    assert mu[0] == pytest.approx(ramp[100, 10], abs=0.02)
    assert mu[1] == pytest.approx(ramp[100, 500], abs=0.02)


def test_local_means_are_the_box_means_of_the_grid_edges_included():
    """Exact against a direct box mean for every scale and at the grid's edges, where the box
    is cut short (the summed-area table's rows are added in turn on NumPy)."""
    rng = np.random.default_rng(3)
    means = rng.random((37, 53)).astype(np.float32)
    h, w = means.shape
    positions = np.array([[1, 1], [0, 0], [73, 105], [40, 60], [2 * h, 2 * w], [11, 100]])
    for scale in (1.0, 2.0, 4.0, 9.0, 30.0):
        got = local_means(means, positions, np.full(len(positions), scale), get_backend(means))
        half = max(1, round(scale / 2))
        for (y, x), value in zip(positions, got, strict=True):
            row, col = min(max((y - 1) // 2, 0), h - 1), min(max((x - 1) // 2, 0), w - 1)
            box = means[max(row - half, 0) : row + half + 1, max(col - half, 0) : col + half + 1]
            assert value == pytest.approx(float(box.astype(np.float64).mean()), rel=1e-12)


def test_global_model_of_float_input_is_the_plain_immerkaer_median():
    image = np.asarray(_image(), np.float32) / 255
    model, means = estimate_noise_model(image, 0.0, kind="global", backend=get_backend(image))
    assert means is None and model.gain == 0
    rows = image[0:-2:2] - 2 * image[1:-1:2] + image[2::2]
    both = rows[:, 0:-2:2] - 2 * rows[:, 1:-1:2] + rows[:, 2::2]
    assert model.sigma == pytest.approx(float(np.median(np.abs(both))) * 1.4826 / 6, rel=1e-5)


def test_integer_noise_estimate_moves_smoothly_with_the_noise():
    """Residuals of integer images are whole grey levels: their plain median moved in steps of
    a sixth at 1.5 levels of noise, the grouped median follows the noise."""
    from scopefx.focus._noise import estimate_noise

    rng = np.random.default_rng(3)
    base = rng.standard_normal((512, 512))
    estimates = []
    for sigma in np.linspace(1.2, 1.6, 9):
        image = np.clip(np.rint(128 + sigma * base), 0, 255).astype(np.float32) / 255
        estimates.append(estimate_noise(image, get_backend(image), 1 / 255) * 255)
        # quantisation adds 1/12 of a level squared to the variance
        assert estimates[-1] == pytest.approx(np.sqrt(sigma**2 + 1 / 12), rel=0.06)
    assert all(b > a for a, b in itertools.pairwise(estimates)), estimates


def test_signal_model_ignores_shot_noise_in_bright_haze():
    """Bright, smooth haze with shot noise: one global level (set by the dark background)
    counts its noise peaks as features; the signal-dependent model does not."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    haze = 100 + 900 * np.exp(-((yy - 256) ** 2 + (xx - 256) ** 2) / (2 * 80.0**2))
    photons = rng.poisson(haze).astype(np.float64) + rng.normal(0, 2, haze.shape)
    image = np.clip(photons, 0, 65535).astype(np.uint16)
    global_count = scopefx.focus_score(image, noise_model="global", threshold_k=4).features
    signal = scopefx.focus_score(image, noise_model="signal", threshold_k=4)
    assert signal.features < 0.2 * global_count
    assert signal.noise_model is not None and signal.noise_model.gain > 0


def test_noise_limited_flags_pure_noise_not_a_sharp_image():
    rng = np.random.default_rng(0)
    noise = rng.poisson(100, (256, 256)).astype(np.uint16)
    assert scopefx.focus_score(noise).noise_limited
    sharp = scopefx.focus_score(_image())
    assert not sharp.noise_limited
    assert sharp.features_clear <= sharp.features
    assert sharp.summary()["noise_limited"] is False


def test_baseline_doubts_name_what_is_suspicious():
    from scopefx.focus._plausibility import baseline_doubts

    steady = [1000.0] * 20
    assert baseline_doubts(steady, modality="em") == []
    starts_blurred = [200.0] * 5 + [1000.0] * 15
    assert baseline_doubts(starts_blurred, modality="em") == [
        "low_for_modality",
        "rises_after_warmup",
    ]
    assert baseline_doubts(
        [500.0] * 10, modality="fluorescence", noise_limited=[True] * 5 + [False] * 5
    ) == ["noise_limited_warmup"]
    assert baseline_doubts([1.0, 2.0], modality="em") == []  # too short to judge


def test_a_calibration_from_before_presets_still_applies_to_the_em_default():
    import dataclasses

    from scopefx import Calibration
    from scopefx.errors import CalibrationError

    old = {
        "n_scales": 16,
        "min_sigma_px": 1.0,
        "max_sigma_px": 30.0,
        "saturation_pct": 0.175,
        "polarity": "dark",
        "threshold": None,
        "threshold_k": 4.0,
        "mode": "exact",
        "target_px": None,
        "cell_px": 256,
    }
    cal = dataclasses.replace(Calibration.fit([0, 1, 2, 3], [1e3, 500, 250, 125]), params=old)
    cal.check_params(FocusParams())
    cal.check_params(FocusParams(polarity="dark", threshold_k=4.0))
    with pytest.raises(CalibrationError, match="modality"):
        cal.check_params(FocusParams(modality="fluorescence"))


def test_a_fluorescence_calibration_from_an_earlier_preset_is_refused():
    """Calibrations made on another score must not apply to this one: one saved before
    band_ratio existed (plain or weighted counts, no band ratio) and one of the earlier
    fluorescence preset (every field recorded: scale_weight 2 at 9 sigma)."""
    import dataclasses

    from scopefx import Calibration
    from scopefx.errors import CalibrationError

    fit = Calibration.fit([0, 1, 2, 3], [1e3, 500, 250, 125])
    before = {**FocusParams(modality="fluorescence").to_dict()}
    del before["band_ratio"]
    with pytest.raises(CalibrationError, match=r"band_ratio: calibrated 0\.0, now 1\.0"):
        dataclasses.replace(fit, params=before).check_params(FocusParams(modality="fluorescence"))
    earlier = FocusParams(modality="fluorescence", threshold_k=9.0, scale_weight=2.0,
                          band_ratio=0.0).resolved().to_dict()  # fmt: skip
    with pytest.raises(CalibrationError, match=r"threshold_k: calibrated 9\.0, now 6\.0"):
        dataclasses.replace(fit, params=earlier).check_params(FocusParams(modality="fluorescence"))


def test_a_calibration_records_the_resolved_preset():
    from scopefx import Calibration

    params = FocusParams(modality="fluorescence")
    cal = Calibration.fit([0, 1, 2, 3], [100, 50, 25, 12.5], params=params)
    assert cal.params["scale_weight"] == PRESETS["fluorescence"].scale_weight
    assert cal.params["band_ratio"] == PRESETS["fluorescence"].band_ratio
    assert cal.params["threshold_k"] == PRESETS["fluorescence"].threshold_k
    cal.check_params(params)
    cal.check_params(params.resolved())


@pytest.mark.parametrize("kind", ["png", "tif", "npy"])
def test_grey_alpha_file_is_one_image_not_a_stack_of_columns(tmp_path, kind):
    """(H, W, 2) is grey + alpha (or two channels): one record, on the first channel; it was
    taken for H pages of shape (W, 2), each refused as too small."""
    import imageio.v3 as iio

    grey = _image()
    two = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    path = tmp_path / f"section.{kind}"
    if kind == "png":
        iio.imwrite(path, two)  # Pillow's "LA"
    elif kind == "tif":
        tifffile.imwrite(path, two, photometric="minisblack", extrasamples=["unassalpha"])
    else:
        np.save(path, two)
    (record,) = list(score_files([path]))
    assert record.ok and record.page is None and record.colour == "channel 0"
    assert record.features == scopefx.focus_score(grey).features
    (alpha,) = list(score_files([path], channel=1))
    assert alpha.ok and alpha.colour == "channel 1" and alpha.features == 0  # constant alpha
    (bad,) = list(score_files([path], channel=2))
    assert bad.status == "config" and "0 or 1" in bad.error


def test_planar_rgb_tiff_is_one_colour_image_not_three_pages(tmp_path):
    """A TIFF with its RGB samples in separate planes reads as (3, H, W): it was scored as a
    stack of three pages, one record per colour; a z stack of three pages still is one."""
    grey = _image()
    rgb = np.stack([grey, grey // 2, grey // 3], axis=-1)
    tifffile.imwrite(tmp_path / "chunky.tif", rgb, photometric="rgb")
    tifffile.imwrite(
        tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate"
    )
    tifffile.imwrite(tmp_path / "stack.tif", np.moveaxis(rgb, -1, 0), photometric="minisblack")
    chunky, planar, *stack = score_files(
        [tmp_path / "chunky.tif", tmp_path / "planar.tif", tmp_path / "stack.tif"]
    )
    assert planar.page is None and planar.colour == "luma709"
    assert planar.features == chunky.features
    # focus_score on the path too (it was refused: "must be 2-D, got (3, H, W)")
    assert scopefx.focus_score(tmp_path / "planar.tif").features == chunky.features
    assert [r.page for r in stack] == [0, 1, 2]


def test_grey_alpha_file_leaves_its_transparent_pixels_out(tmp_path):
    """A grey + alpha file (the TIFF marks its extra sample as alpha) is scored like the grey
    image without its transparent padding; the same pixels in a two-channel TIFF (the second
    sample not marked as alpha) are two channels, and the first is scored as it is."""
    grey = _image()
    h, w = grey.shape
    pixels = np.zeros((h, w + 150, 2), grey.dtype)
    pixels[:, 150:, 0] = grey
    pixels[:, 150:, 1] = np.iinfo(grey.dtype).max
    marked, unmarked = tmp_path / "grey_alpha.tif", tmp_path / "two_channels.tif"
    tifffile.imwrite(marked, pixels, photometric="minisblack", planarconfig="contig",
                     extrasamples=[2])  # fmt: skip
    tifffile.imwrite(unmarked, pixels, photometric="minisblack", planarconfig="contig")
    plain = scopefx.focus_score(grey)
    from_file = scopefx.focus_score(marked)
    assert from_file.features == plain.features and from_file.colour == "channel 0"
    assert from_file.density_per_mpx == pytest.approx(plain.density_per_mpx)
    (record,) = list(score_files([marked]))
    assert record.features == plain.features and record.colour == "channel 0"
    other = scopefx.focus_score(unmarked)
    # scored as it is: the edge of its zero padding counts (the padding itself, flat, holds
    # no noise and no data: it is left out of the area, not as transparent pixels)
    assert other.features != plain.features and other.colour == "channel 0"
    # the same written planar, (2, H, W) as read: its alpha was ignored in score_files
    planar = tmp_path / "grey_alpha_planar.tif"
    tifffile.imwrite(planar, np.moveaxis(pixels, -1, 0), photometric="minisblack",
                     planarconfig="separate", extrasamples=[2])  # fmt: skip
    (record,) = list(score_files([planar]))
    assert record.features == plain.features and record.colour == "channel 0"
    assert scopefx.focus_score(planar).features == plain.features


def test_padding_changes_no_downsampling():
    """``target_px`` is met by the opaque part: a padded export is downsampled as the image
    itself (the padding had taken 2048 px wide to 2300, a factor 3 instead of 2)."""
    grey = np.kron(_image()[:256, :256], np.ones((8, 8), np.uint8))  # 2048 px
    rgba = _padded(np.stack([grey] * 3, axis=-1), left=252)
    plain = scopefx.focus_score(grey, target_px=1024)
    padded = scopefx.focus_score(rgba, target_px=1024)
    assert padded.downsample == plain.downsample == 2
    assert padded.features == plain.features
    assert padded.density_per_mpx == pytest.approx(plain.density_per_mpx)
