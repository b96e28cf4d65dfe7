"""The scale space's inner kernels against their plain definitions: the running maximum with
its band index, and the cubic interpolation of the fast mode's decimated bands."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.fft

from scopefx._backend import get_backend
from scopefx.focus import _scalespace as ss

BACKEND = get_backend(device="cpu")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_fold_is_a_running_argmax_that_keeps_the_earlier_band_on_ties(dtype):
    rng = np.random.default_rng(0)
    shape = (37, 53)
    planes = [rng.integers(0, 4, shape).astype(np.float32) for _ in range(6)]  # many ties
    bands = [0, 3, 250, 251, 300, 7] if dtype == np.uint16 else [0, 3, 250, 251, 200, 7]
    best, index = planes[0].copy(), np.full(shape, bands[0], dtype=dtype)
    scratch = np.empty(shape, dtype=bool)
    for plane, band in zip(planes[1:], bands[1:], strict=True):
        ss._fold(best, index, plane, dtype(band), scratch, BACKEND)
    stack = np.stack(planes)
    np.testing.assert_array_equal(best, stack.max(axis=0))
    # argmax returns the first of equal maxima: the band that reached the maximum first
    np.testing.assert_array_equal(index, np.asarray(bands, dtype=dtype)[stack.argmax(axis=0)])


def test_fold_takes_an_array_of_band_indices():
    best = np.array([[1.0, 5.0, 2.0]], np.float32)
    index = np.array([[9, 9, 9]], np.uint8)
    ss._fold(best, index, np.array([[3.0, 4.0, 2.0]], np.float32),
             np.array([[1, 2, 3]], np.uint8), np.empty((1, 3), bool), BACKEND)  # fmt: skip
    np.testing.assert_array_equal(index, [[1, 9, 9]])
    np.testing.assert_array_equal(best, [[3.0, 5.0, 2.0]])


def _gathered(coarse, index, shape):
    """The interpolation by its definition: four gathered taps per axis, added in order."""
    (h, w), (mh, mw) = shape, coarse.shape
    ty, wy, ny = ss._cubic_weights(h, mh)
    tx, wx, nx = ss._cubic_weights(w, mw)
    cols = np.take(coarse, tx[0], axis=1) * wx[0]
    for k in range(1, 4):
        cols += np.take(coarse, tx[k], axis=1) * wx[k]
    out = cols[ty[0]] * wy[0][:, None]
    for k in range(1, 4):
        out += cols[ty[k]] * wy[k][:, None]
    return out, np.take(index, nx, axis=1)[ny]


@pytest.mark.parametrize(
    ("coarse", "fine"),
    [
        ((512, 512), (1024, 1024)),  # doubling on both axes, rows in several blocks
        ((4, 5), (8, 10)),  # the smallest doubled axis
        ((3, 3), (6, 6)),  # too short to double from slices: gathered
        ((7, 9), (13, 18)),  # one axis doubles, the other does not
        ((125, 251), (250, 501)),
        ((64, 64), (256, 256)),  # two levels apart
    ],
)
def test_upsampling_equals_the_gathered_interpolation_bit_for_bit(coarse, fine):
    rng = np.random.default_rng(1)
    values = rng.standard_normal(coarse).astype(np.float32)
    bands = rng.integers(0, 16, coarse).astype(np.uint8)
    got, got_index = ss._upsample(values, bands, fine, BACKEND)
    want, want_index = _gathered(values, bands, fine)
    assert got.dtype == np.float32 and got.shape == fine
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_index, want_index)


@pytest.mark.parametrize("shape", [(96, 128), (75, 64)])
def test_band_energy_ratio_is_the_ratio_of_the_bands_mean_squares(shape):
    """R from the DCT spectrum by Parseval (one matrix product, no inverse transform) equals
    the mean square of DoG_1 over that of the reference band, both computed directly with
    Gaussian filters on the mirrored image (the DCT's boundary); white noise of variance v
    adds v times each band's noise gain, which R takes out."""
    from scipy import fft, ndimage

    backend = get_backend("numpy")
    rng = np.random.default_rng(4)
    image = ndimage.gaussian_filter(rng.normal(0, 1, shape), 1.5).astype(np.float32)
    sigmas = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    ref = next(i for i, t in enumerate(sigmas[:-1]) if t >= ss.REFERENCE_SCALE_RATIO * sigmas[0])

    def band(i: int, x: np.ndarray) -> np.ndarray:
        fine, coarse = (ndimage.gaussian_filter(x.astype(np.float64), s, mode="reflect",
                                                truncate=8) for s in sigmas[i : i + 2])  # fmt: skip
        return sigmas[i] * (coarse - fine)

    direct = np.mean(band(0, image) ** 2) / np.mean(band(ref, image) ** 2)
    spectrum = fft.dctn(image, type=2)
    assert ss.band_energy_ratio(spectrum, sigmas, 0.0, backend) == pytest.approx(direct, rel=2e-3)
    # noise of known variance on top: the ratio of the noisy image, its noise taken out, is
    # the clean image's (within the noise's own sampling spread)
    v = 0.15**2
    noisy = image + rng.normal(0, 0.15, shape).astype(np.float32)
    corrected = ss.band_energy_ratio(fft.dctn(noisy, type=2), sigmas, v, backend)
    raw = ss.band_energy_ratio(fft.dctn(noisy, type=2), sigmas, 0.0, backend)
    assert corrected == pytest.approx(direct, rel=0.05) and raw > 1.1 * direct


def test_band_energy_ratio_stays_finite_on_a_degenerate_frame():
    """A noiseless frame whose reference band holds no energy at all (all of it at the
    highest frequency, where that band's transfer underflows): the ratio is bounded, so that
    the score's ``R ** band_ratio`` (up to the 8th power) stays a finite number."""
    backend = get_backend("numpy")
    sigmas = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    spectrum = np.zeros((64, 64), np.float32)
    spectrum[-1, -1] = 1e13
    r = ss.band_energy_ratio(spectrum, sigmas, 0.0, backend)
    assert r == ss.RATIO_RANGE[1]
    assert math.isfinite(r**8)
    flat = np.zeros((64, 64), np.float32)  # nothing in either band
    assert ss.band_energy_ratio(flat, sigmas, 0.0, backend) == 1.0


@pytest.mark.parametrize(
    ("ry", "rx", "out_h", "out_w"),
    [(64, 64, 64, 64), (30, 20, 97, 64), (64, 40, 64, 128), (1, 3, 5, 8)],
)
def test_the_matrix_inverse_is_the_inverse_dct(ry, rx, out_h, out_w):
    """The GPU's inverse by two products with DCT-III matrices (either order) is SciPy's
    ``idct(type=2)`` of the spectrum zero-padded to the output size."""
    rng = np.random.default_rng(ry * rx)
    product = rng.standard_normal((ry, rx)).astype(np.float32)
    by_matrix = ss._inverse(product, out_h, out_w, BACKEND, matrix=True)
    padded = np.zeros((out_h, out_w), np.float64)
    padded[:ry, :rx] = product
    want = scipy.fft.idctn(padded, type=2)
    assert by_matrix.dtype == np.float32 and by_matrix.shape == (out_h, out_w)
    np.testing.assert_allclose(by_matrix, want, atol=2e-6 * np.abs(want).max())
    by_dct = ss._inverse(product, out_h, out_w, BACKEND, matrix=False)
    np.testing.assert_allclose(by_dct, want, atol=2e-6 * np.abs(want).max())


def test_the_matrix_inverse_is_chosen_on_a_gpu_up_to_its_size_limit():
    gpu_like = dataclasses.replace(BACKEND, name="cupy")
    assert not ss._uses_matrix(BACKEND, 1024, 1024)  # the CPU keeps the DCTs
    assert ss._uses_matrix(gpu_like, ss.MATRIX_MAX_SIDE, 16)
    assert not ss._uses_matrix(gpu_like, 16, ss.MATRIX_MAX_SIDE + 1)


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("modality", ["em", "fluorescence"])
def test_scores_by_matrix_inverse_equal_those_by_dct(monkeypatch, mode, modality):
    """What the GPU computes, computed here: the same features, the same score."""
    import scopefx
    from scopefx import samples

    images = [
        samples.acquire(samples.bundled_image(name, size=256), photons=1000, seed=i)
        for i, name in enumerate(("immunohistochemistry", "coins"))
    ]
    by_dct = [scopefx.focus_score(im, mode=mode, modality=modality) for im in images]
    monkeypatch.setattr(ss, "_uses_matrix", lambda backend, h, w: True)
    by_matrix = [scopefx.focus_score(im, mode=mode, modality=modality) for im in images]
    for a, b in zip(by_dct, by_matrix, strict=True):
        assert a.features == b.features > 100
        assert b.score == pytest.approx(a.score, rel=1e-6)


def test_the_matrices_of_a_non_square_fast_score_stay_cached(monkeypatch):
    """Fast mode on a non-square frame needs a matrix per decimated length (8 at 1536 x 2048):
    a cache of 6 entries rebuilt all of them on every call. Bounded by bytes, they stay."""
    monkeypatch.setattr(ss, "_matrices", type(ss._matrices)())
    monkeypatch.setattr(ss, "_uses_matrix", lambda backend, h, w: True)
    built = []
    table = ss._idct_table
    monkeypatch.setattr(ss, "_idct_table", lambda n: built.append(n) or table(n))
    image = np.random.default_rng(2).random((96, 136)).astype(np.float32)
    sigmas = tuple(float(s) for s in np.geomspace(1, 30, 17))
    first = ss.response_max(image, sigmas, polarity="dark", mode="fast", backend=BACKEND)
    assert len(set(built)) == len(built) > 6  # 96, 136, 48, 68, 24, 34, 12, 17
    n_built = len(built)
    again = ss.response_max(image, sigmas, polarity="dark", mode="fast", backend=BACKEND)
    assert len(built) == n_built  # nothing rebuilt
    np.testing.assert_array_equal(first[0], again[0])
    monkeypatch.setattr(ss, "_uses_matrix", lambda backend, h, w: False)
    by_dct = ss.response_max(image, sigmas, polarity="dark", mode="fast", backend=BACKEND)
    np.testing.assert_allclose(first[0], by_dct[0], atol=1e-5 * float(np.abs(by_dct[0]).max()))
    np.testing.assert_array_equal(first[1], by_dct[1])


def test_the_matrix_cache_is_bounded_in_bytes(monkeypatch):
    monkeypatch.setattr(ss, "_matrices", type(ss._matrices)())
    monkeypatch.setattr(ss, "_MATRIX_CACHE_BYTES", 3 * 4 * 64 * 64)
    for n in (64, 64, 32, 64, 48, 16):
        ss._idct_matrix(n, BACKEND)
    assert sum(m.nbytes for m in ss._matrices.values()) <= ss._MATRIX_CACHE_BYTES
    assert [k[0] for k in ss._matrices] == [32, 64, 48, 16]  # least recently used out first


def test_dropping_the_device_caches_keeps_the_host_s(monkeypatch):
    """After the GPU runs out of memory its plans and matrices go; the CPU's stay."""
    plans, matrices = type(ss._plans)(), type(ss._matrices)()
    plans[("shape", "sigmas", 1.0, "exact", "numpy", -1)] = (1, ())
    plans[("shape", "sigmas", 1.0, "exact", "cupy", 0)] = (1, ())
    matrices[(64, "numpy", -1)] = np.zeros(1)
    matrices[(64, "cupy", 1)] = np.zeros(1)
    monkeypatch.setattr(ss, "_plans", plans)
    monkeypatch.setattr(ss, "_matrices", matrices)
    ss.drop_device_caches()
    assert [k[-1] for k in ss._plans] == [-1] and [k[-1] for k in ss._matrices] == [-1]
