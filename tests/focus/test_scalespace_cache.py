"""The band-plan cache: reused per size, bounded in bytes, keyed by device."""

from __future__ import annotations

import numpy as np

from scopefx import focus_score
from scopefx._backend import get_backend
from scopefx.focus import _scalespace as ss


def test_plans_are_reused_and_the_cache_stays_within_its_budget(monkeypatch):
    monkeypatch.setattr(ss, "_plans", type(ss._plans)())
    backend = get_backend(device="cpu")
    sigmas = (1.0, 2.0, 4.0, 8.0)
    first = ss._plan((256, 256), sigmas, -1.0, "exact", backend)
    assert ss._plan((256, 256), sigmas, -1.0, "exact", backend) is first
    one = 4 * sum(ry * rx for _, ry, rx in ss._band_sizes((256, 256), sigmas, "exact"))
    monkeypatch.setattr(ss, "_CACHE_BYTES", 2 * one + one // 2)  # room for two such plans
    for n in (256, 264, 272, 280):
        ss._plan((n, n), sigmas, -1.0, "exact", backend)
    assert sum(b for b, _ in ss._plans.values()) <= ss._CACHE_BYTES
    assert [k[0] for k in ss._plans] == [(272, 272), (280, 280)]  # least recent out first
    assert all(k[-1] == -1 for k in ss._plans)  # host memory: no CUDA device in the key


def test_scores_do_not_depend_on_the_cache(monkeypatch):
    image = (np.random.default_rng(0).random((200, 220)) * 255).astype(np.uint8)
    cached = focus_score(image).features
    monkeypatch.setattr(ss, "_CACHE_BYTES", 0)  # every plan rebuilt
    monkeypatch.setattr(ss, "_plans", type(ss._plans)())
    assert focus_score(image).features == cached
    assert not ss._plans
