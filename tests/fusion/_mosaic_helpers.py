"""Helpers for fusion tests: synthetic mosaics from a bundled image, and coverage masks."""

from __future__ import annotations

import dataclasses

import numpy as np

from scopefx.fusion import FusionPlan, fuse_lazy


def coverage(plan: FusionPlan) -> np.ndarray:
    """Boolean map of the output pixels some tile covers (fusing tiles of ones)."""
    probe = dataclasses.replace(
        plan,
        dtype="float32",
        params=plan.params.replace(fill=np.nan, blend="mean"),
        samples_last=0,  # the probe reader gives ones channels first, whatever the tiles hold
    )
    shape = (*plan.channel_shape, *(int(v) for v in plan.tile_shapes[0]))
    ones = fuse_lazy(probe, read=lambda ref: np.ones(shape, np.float32)).compute()
    return np.isfinite(ones)


def truth_view(truth: np.ndarray, plan: FusionPlan) -> np.ndarray:
    """The part of the ground truth the fused output covers (output index 0 = plan.origin)."""
    sl = tuple(slice(int(o), int(o) + s) for o, s in zip(plan.origin, plan.shape, strict=True))
    return truth[(Ellipsis, *sl)]
