import itertools
import json
import tracemalloc

import numpy as np
import pytest

import scopefx
from scopefx import samples
from scopefx._backend import get_backend
from scopefx.errors import InvalidImageError
from scopefx.focus._noise import estimate_noise
from scopefx.focus.reference import reference_features, reference_response

IMAGES = ["immunohistochemistry", "moon", "brick", "hubble_deep_field"]


def _acquired(name, amount, *, size=384, dtype=np.uint8, photons=500.0, read_noise=1.5, seed=1):
    blurred = samples.defocus(samples.bundled_image(name, size=size), amount)
    if dtype == np.float32:
        return (
            samples.acquire(
                blurred, photons=photons, read_noise=read_noise, dtype=np.uint16, seed=seed
            ).astype(np.float32)
            / 65535
        )
    return samples.acquire(blurred, photons=photons, read_noise=read_noise, dtype=dtype, seed=seed)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("name", IMAGES)
def test_score_falls_monotonically_with_blur(name, dtype):
    counts = [
        scopefx.focus_score(_acquired(name, d, dtype=dtype)).features for d in (0, 1, 2, 4, 6)
    ]
    assert all(a > b for a, b in itertools.pairwise(counts)), counts
    assert counts[0] > 3 * counts[-1]


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("amount", [0, 2])
def test_exact_matches_float64_reference_within_one_percent(name, amount):
    image = _acquired(name, amount, size=384)
    fast_count = scopefx.focus_score(image).features
    ref_count, ref_threshold = reference_features(image)
    assert ref_count >= 50  # enough features for a 1 % comparison to mean something
    assert abs(fast_count - ref_count) <= max(1, 0.01 * ref_count)
    assert scopefx.focus_score(image).threshold == pytest.approx(ref_threshold, rel=1e-4)


@pytest.mark.parametrize("polarity", ["dark", "bright", "both"])
def test_response_matches_reference_everywhere_including_borders(polarity):
    image = _acquired("brick", 1, size=200)
    params = scopefx.FocusParams(polarity=polarity)
    fast, _ = scopefx.focus_response(image, params=params)
    ref, _ = reference_response(image, params)
    scale = np.abs(ref).max()
    assert np.abs(fast - ref).max() < 2e-3 * scale
    border = np.r_[0:3, -3:0]
    assert np.abs(fast[border] - ref[border]).max() < 2e-3 * scale


def test_large_gaussians_do_not_wrap_around():
    image = np.full((128, 128), 200, np.uint8)
    image[50:70, 2:10] = 20  # a dark feature touching the left border only
    response, _ = scopefx.focus_response(image)
    assert response[:, :20].max() > 0.05
    assert np.abs(response[:, -20:]).max() < 1e-3 * response[:, :20].max()


@pytest.mark.parametrize("name", IMAGES)
def test_fast_mode_within_three_percent_in_focus_at_good_snr(name):
    image = _acquired(name, 0, size=512)
    exact = scopefx.focus_score(image).features
    fast = scopefx.focus_score(image, mode="fast").features
    assert abs(fast - exact) <= 0.03 * exact


def test_fast_mode_keeps_the_ordering_with_defocus():
    counts = [
        scopefx.focus_score(_acquired("immunohistochemistry", d, size=512), mode="fast").features
        for d in (0, 1, 2, 4, 6)
    ]
    assert all(a > b for a, b in itertools.pairwise(counts)), counts


def test_polarity_dark_on_image_equals_bright_on_inverted():
    image = _acquired("moon", 1, size=256)
    inverted = 255 - image
    dark = scopefx.focus_score(image, polarity="dark", threshold=0.02).features
    bright = scopefx.focus_score(inverted, polarity="bright", threshold=0.02).features
    assert dark == bright
    assert scopefx.focus_score(image, polarity="bright", threshold=0.02).features != dark


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_constant_image_scores_zero(dtype):
    result = scopefx.focus_score(np.full((64, 80), 7, dtype))
    assert result.features == 0
    assert result.focus_map.shape == (1, 1)


@pytest.mark.parametrize("modality", ["em", "fluorescence", "brightfield"])
def test_the_same_picture_in_any_dtype_scores_the_same(modality):
    """uint8, uint16 scaled by 257 or shifted into the top bits (a 12-bit camera), float
    divided by 255: one picture, one grey level each, one count. The quantisation floor
    applied to uint8 only, and the others counted up to 4 % more (review 42, F7)."""
    picture = samples.acquire(samples.bundled_image("cell", size=256), seed=1)
    assert picture.dtype == np.uint8
    stored = [
        picture,
        picture.astype(np.uint16) * 257,
        picture.astype(np.uint16) << 4,
        picture.astype(np.float32) / 255,
        picture.astype(np.float64),
        picture.astype(np.int32) * 16,
    ]
    counts = [scopefx.focus_score(a, modality=modality).features for a in stored]
    assert counts == [counts[0]] * len(stored) and counts[0] > 0
    # continuous data keeps no floor; a mask's two levels are no grey level either
    from scopefx.focus._normalize import normalize

    numpy = get_backend("numpy")
    noisy = picture / 255 + np.random.default_rng(3).normal(0, 1e-3, picture.shape)
    assert normalize(noisy.astype(np.float32), 0.175, numpy)[1] == 0.0
    mask = (picture > 128).astype(np.float32) * 200
    assert normalize(mask, 0.175, numpy)[1] == 0.0
    assert normalize(picture.astype(np.uint16) * 257, 0.175, numpy)[1] == pytest.approx(
        normalize(picture, 0.175, numpy)[1]
    )


def test_threshold_is_in_real_units_independent_of_image_size():
    small = _acquired("gravel", 1, size=256)
    large = np.pad(small, ((0, 256), (0, 256)), mode="symmetric")  # same content, 4x the area
    a, b = scopefx.focus_score(small), scopefx.focus_score(large)
    assert a.threshold == pytest.approx(b.threshold, rel=0.05)
    assert a.density_per_mpx == pytest.approx(b.density_per_mpx, rel=0.1)


def test_automatic_threshold_follows_noise():
    # not "moon": its pixels carry an 8-pixel JPEG grid, which 1 grey level of added noise
    # leaves visible, so its noise is (rightly) measured at the block scale
    quiet = scopefx.focus_score(_acquired("camera", 0, photons=None, read_noise=1.0))
    noisy = scopefx.focus_score(_acquired("camera", 0, photons=None, read_noise=8.0))
    assert noisy.threshold > 3 * quiet.threshold


def test_noise_estimate_is_robust_to_content():
    rng = np.random.default_rng(0)
    smooth = samples.defocus(samples.bundled_image("camera", size=512), 2)
    noisy = (smooth + rng.normal(0, 0.02, smooth.shape)).astype(np.float32)
    assert estimate_noise(noisy, get_backend(noisy)) == pytest.approx(0.02, rel=0.1)


def test_focus_map_catches_a_partly_defocused_section():
    image = samples.bundled_image("immunohistochemistry", size=512)
    partial = samples.acquire(samples.partial_defocus(image, 5.0, fraction=0.5), seed=3)
    result = scopefx.focus_score(partial, cell_px=128)
    assert result.focus_map.shape == (4, 4)
    left, right = result.focus_map[:, :2].mean(), result.focus_map[:, 2:].mean()
    assert right < 0.5 * left
    assert result.focus_map.sum() * 128 * 128 / 1e6 == pytest.approx(result.features)


def test_result_fields_and_downsampling():
    image = _acquired("grass", 1, size=512)
    result = scopefx.focus_score(image, target_px=256)
    assert result.shape == (256, 256)
    assert result.downsample == 2
    assert result.positions.shape == (result.features, 2)
    assert result.sigmas_px.shape == (result.features,)
    assert set(np.unique(result.sigmas_px)) <= set(np.float32(result.params.sigmas_px))
    summary = result.summary()
    assert summary["features"] == result.features and "positions" not in summary
    json.dumps(summary, allow_nan=False)  # plain JSON: the band ratio not computed is null
    assert summary["band_ratio"] is None
    fluo = scopefx.focus_score(image, target_px=256, modality="fluorescence").summary()
    assert 0 < fluo["band_ratio"] < 10 and json.dumps(fluo, allow_nan=False)


def test_streaming_does_not_hold_a_stack_of_planes():
    image = _acquired("brick", 0, size=1024)
    scopefx.focus_score(image)  # warm the caches
    tracemalloc.start()
    scopefx.focus_score(image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    plane = 1024 * 1024 * 4
    assert peak < 9 * plane  # a stack of 17 Gaussian levels alone would be 17 planes


def test_every_integer_type_and_offset_scores_like_the_8_bit_image():
    """Integers are scored exactly whatever their width and offset (a uint32 frame with an
    offset of 3e9 had its noise rounded away in float32: noise 0, 2.8 times the features)."""
    image = _acquired("brick", 1, size=256)
    want = scopefx.focus_score(image)
    for shifted in (
        image.astype(np.uint32) + np.uint32(3_000_000_000),
        image.astype(np.int64) + 10**12,
        image.astype(np.int16) - 1000,
        image.astype(np.int32) - 2**30,
    ):
        got = scopefx.focus_score(shifted)
        assert (got.features, got.threshold) == (want.features, want.threshold), shifted.dtype
    for scale in (1e-45, 1e9):  # float64 beyond float32's resolution or range of offsets
        scaled = scopefx.focus_score(image.astype(np.float64) * scale + scale)
        plain = scopefx.focus_score(image.astype(np.float64))
        assert scaled.features == pytest.approx(plain.features, rel=0.01)


def test_a_64_bit_integer_offset_costs_no_precision(xp):
    """64-bit integers were cast to float64 (53 bits) before their offset was removed: with
    an offset of 2^62, or near the top of uint64, every grey level rounded to one value and
    the image scored 0 features, without a word. The offset is removed in integers first, on
    every backend; an int64 image spanning its whole range (a difference over int64's) too."""
    image = _acquired("brick", 1, size=256)
    want = scopefx.focus_score(image).features
    for shifted in (
        image.astype(np.uint64) + np.uint64(2**64 - 512),
        image.astype(np.int64) + np.int64(2**62),
        image.astype(np.int64) - np.int64(2**63 - 1),
        (image.astype(np.int64) - 128) * np.int64(2**56),  # -2^63 to 0.99 x 2^63
    ):
        got = scopefx.focus_score(xp.asarray(shifted)).features
        assert abs(got - want) <= 0.01 * want, (shifted.dtype, got, want)


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float64, 1e-311), (np.float64, 1e-320), (np.float32, 1e-42)]
)
def test_an_image_of_subnormal_numbers_scores_like_the_image_it_scales(dtype, scale):
    """Values under the smallest normal float (2.2e-308 in float64, 1.2e-38 in float32) have a
    range whose inverse overflows: 0 x inf made NaN, and scoring ended in a raw ValueError
    ('list' argument must have no negative elements). They are scaled by division."""
    image = _acquired("brick", 1, size=256)
    want = scopefx.focus_score(image).features
    got = scopefx.focus_score((image.astype(np.float64) * scale).astype(dtype)).features
    assert got == pytest.approx(want, rel=0.02)


def test_flat_padding_holds_no_data_for_the_density():
    """An aligned section's zero fill (flat, without noise) counted in the density's area, so
    the same section scored lower the more padding it had."""
    image = _acquired("brick", 0, size=256)
    bare = scopefx.focus_score(image)
    padded = np.zeros((456, 456), image.dtype)
    padded[100:356, 100:356] = image
    framed = scopefx.focus_score(padded)
    assert framed.density_per_mpx == pytest.approx(bare.density_per_mpx, rel=0.05)
    assert framed.opaque_px == pytest.approx(256 * 256, rel=0.15)  # to the 16 px blocks
    assert bare.opaque_px is None  # no flat block: every pixel is data


def test_nan_pixels_are_no_data_and_infinity_is_refused():
    """A registered or deconvolved float frame fills what it does not cover with NaN: the
    whole image was refused ('holds NaN'). NaN pixels are scored around, like the transparent
    pixels of an RGBA image; infinity (an overflow) and an image of nothing but NaN still are
    refused."""
    image = _acquired("brick", 1, size=256).astype(np.float32)
    bare = scopefx.focus_score(image)
    padded = np.full((356, 380), np.nan, np.float32)
    padded[50:306, 70:326] = image
    padded[60, 100] = np.nan  # a hole inside: filled, no feature counted on it
    scored = scopefx.focus_score(padded)
    assert scored.features == pytest.approx(bare.features, rel=0.01)
    assert scored.density_per_mpx == pytest.approx(bare.density_per_mpx, rel=0.01)
    assert scored.opaque_px == 256 * 256 - 1
    for bad in (np.where(np.isnan(padded), np.inf, padded), np.full((64, 64), np.nan)):
        with pytest.raises(InvalidImageError) as info:
            scopefx.focus_score(bad)
        assert info.value.status == "invalid_values"


@pytest.mark.parametrize(
    ("image", "status", "match"),
    [
        (np.zeros((2, 3, 64, 64), np.uint8), "ndim", "must be 2-D"),
        (np.zeros((4, 64), np.uint8), "too_small", "too small"),
        (np.full((64, 64), np.nan, np.float32), "invalid_values", "NaN"),
        # finite, but beyond float32: was 'holds NaN or infinite values', after a warning
        (np.linspace(0, 1e300, 64 * 64).reshape(64, 64), "invalid_values", r"reach 1e\+300"),
        (np.zeros((64, 64), bool), "dtype", "dtype"),
    ],
)
def test_bad_images_raise_with_a_status(image, status, match):
    with pytest.raises(InvalidImageError, match=match) as info:
        scopefx.focus_score(image)
    assert info.value.status == status


def test_an_image_too_small_once_downsampled_says_so():
    """A 40 x 400 px strip at target_px=16 was 'image of shape (1, 16) is too small ...
    (lower min_sigma_px ...)': a shape it was never given, and not the option that made it."""
    from scopefx.focus import FocusParams

    strip = np.random.default_rng(0).random((40, 400))
    with pytest.raises(InvalidImageError, match=r"the 400 x 40 px image, downsampled 25x for "
                       r"target_px=16 \(--target-px\) to 16 x 1 px") as info:  # fmt: skip
        scopefx.focus_score(strip, params=FocusParams(target_px=16))
    assert info.value.status == "too_small"
    assert scopefx.focus_score(strip, params=FocusParams(target_px=256)).features >= 0


def test_every_backend_matches_the_reference(xp):
    image = _acquired("immunohistochemistry", 1, size=256)
    on_backend = scopefx.focus_score(xp.asarray(image))
    reference, _ = reference_features(image)
    assert reference >= 100
    assert abs(on_backend.features - reference) <= 0.01 * reference
    assert isinstance(on_backend.positions, np.ndarray)  # results come back as NumPy


def test_the_map_of_a_thin_image_with_transparent_pixels_needs_no_padded_mask():
    """The opaque area per cell came from a mask padded to whole cells: a 4 x 2^22 px RGBA
    strip (within the pixel budget; 2^26 px wide is too) asked for 1 GiB at the default
    256 px cells (16 GiB at 2^26). Same map, from the mask itself."""
    from scopefx.focus._score import focus_map_from_positions

    rng = np.random.default_rng(1)
    for shape, cell in (((300, 517), 64), ((1000, 37), 8), ((5, 9), 8)):
        opaque = rng.random(shape) > 0.3
        positions = np.argwhere(rng.random(shape) > 0.99)
        got = focus_map_from_positions(positions, shape, cell, opaque=opaque)
        rows, cols = -(-shape[0] // cell), -(-shape[1] // cell)
        area = np.zeros((rows, cols))
        for r, c in itertools.product(range(rows), range(cols)):
            area[r, c] = opaque[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].sum()
        cells = (positions[:, 0] // cell) * cols + positions[:, 1] // cell
        counts = np.bincount(cells, minlength=rows * cols).reshape(rows, cols)
        with np.errstate(invalid="ignore", divide="ignore"):
            want = np.where(area > 0, counts * 1e6 / area, np.nan).astype(np.float32)
        np.testing.assert_array_equal(got, want)
    strip = np.ones((4, 2**22), bool)
    strip[:, :9] = False
    tracemalloc.start()
    try:
        focus_map = focus_map_from_positions(
            np.zeros((0, 2), np.intp), strip.shape, 256, opaque=strip
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert focus_map.shape == (1, 2**14) and peak < 256 * 2**20, peak / 2**20
