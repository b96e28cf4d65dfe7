"""The scale space's inner kernels against their plain definitions: the running maximum with
its band index, and the cubic interpolation of the fast mode's decimated bands."""

from __future__ import annotations

import numpy as np
import pytest

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
