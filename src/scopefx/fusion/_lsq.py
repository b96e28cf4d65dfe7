"""Registration's global solve: the tiles' corrections from the pairs' shifts by sparse
weighted least squares (:func:`_solve`), and how far each used pair is from what the others
predict (:func:`_misfit`, from its leverage, :func:`_leverage`), which the outlier removal of
:func:`~._settle._settle` holds against ``outlier_px``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._regparams import RegistrationParams


def _per_axis(w: np.ndarray) -> bool:
    """Weights per pair and axis ``(m, nd)`` that differ between the axes (each axis is then
    solved on its own); else one weight per pair (:func:`_scalar`), and the axes share the
    normal matrix."""
    return w.ndim == 2 and not np.all(w == w[:, :1])


def _scalar(w: np.ndarray) -> np.ndarray:
    return w[:, 0] if w.ndim == 2 else w


def _normal_lu(n: int, ij: np.ndarray, w: np.ndarray, prior: float) -> Any:
    """Sparse LU of the solve's normal matrix ``A^T W A + prior I`` (``A``: the pairs'
    incidence rows); with weights that differ between the axes (see :func:`_per_axis`) a list,
    one per axis."""
    if _per_axis(w):
        return [_normal_lu(n, ij, w[:, a], prior) for a in range(w.shape[1])]
    w = _scalar(w)
    from scipy import sparse
    from scipy.sparse.linalg import splu

    i, j = ij[:, 0], ij[:, 1]
    rows = np.concatenate([i, j, i, j, np.arange(n)])
    cols = np.concatenate([i, j, j, i, np.arange(n)])
    vals = np.concatenate([w, w, -w, -w, np.full(n, prior)])
    return splu(sparse.csc_matrix((vals, (rows, cols)), shape=(n, n)))


def _solve(
    n: int, ij: np.ndarray, s: np.ndarray, w: np.ndarray, prior: float, lu: Any = None
) -> np.ndarray:
    """Minimise sum w (c_j - c_i - s)^2 + prior sum c^2 (normal equations, sparse LU; ``lu``:
    that of :func:`_normal_lu`, when already made). ``w``: a weight per pair, or per pair and
    axis ``(m, nd)`` (the axes are independent: each is solved with its own weights)."""
    if _per_axis(w):
        lus = _normal_lu(n, ij, w, prior) if lu is None else lu
        return np.concatenate([_solve(n, ij, s[:, a : a + 1], w[:, a], prior, lus[a])
                               for a in range(w.shape[1])], axis=1)  # fmt: skip
    w = _scalar(w)
    i, j = ij[:, 0], ij[:, 1]
    rhs = np.zeros((n, s.shape[1]))
    np.add.at(rhs, j, w[:, None] * s)
    np.add.at(rhs, i, -w[:, None] * s)
    lu = _normal_lu(n, ij, w, prior) if lu is None else lu
    return np.asarray(lu.solve(rhs)).reshape(n, -1)


def _misfit(
    n: int, ij: np.ndarray, used: np.ndarray, weight: np.ndarray, residual: np.ndarray,
    params: RegistrationParams, lu: Any = None, parts: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Each used pair's misfit, to hold against ``outlier_px``: its standardised residual
    ``residual / sqrt(1 - h)`` (``h``: :func:`_leverage`, the share of its own shift the
    solve gives back to it; Baarda's data snooping). The solve spreads one wrong shift over
    its loop, so that its own residual is a fraction of its error: a quarter in a loop of four
    (5.5 px off showed as 1.5 px, under ``outlier_px``, and half a sparse scan followed); the
    standardised residual is half of it there, the error against what the other pairs
    predict (``residual / (1 - h)``) scaled by ``sqrt(1 - h)``, so that of two pairs in series
    (one tile between them, both equally far from the rest's prediction) the weaker, which
    took more of the misfit, stands out. Half, not the whole: loops of true pairs of a real
    scan miss by 1-2 px (it is not rigid), and at the whole a true pair of the Leica scan was
    dropped. A bridge (``h`` about 1) is checked by nothing and keeps its residual (0).
    Pairs whose residual could not count unless ``h > 0.98`` are not looked at. With weights
    per axis (``parts``: the residual's components) each component is standardised by its
    own axis's leverage, and the misfit is their norm (the same as above when the axes'
    weights agree). A component along a pair's ridge counts in full, although the pair is
    known to be uncertain there: taking it in units of the pair's best axis (times
    ``sqrt(w_a / max w)``) kept such pairs, but on a 5x5 retina scan it let a chance link
    stay and dropped the true one across the same cut
    (``test_other_peaks_alone_do_not_outvote_a_stronger_lone_link``)."""
    out = np.where(used, residual, 0.0)
    look = np.flatnonzero(used & (residual > params.outlier_px / 7))
    if not len(look):
        return out
    links = np.flatnonzero(used)
    where = np.searchsorted(links, look)
    if lu is None:
        lu = _normal_lu(n, ij[links], weight[links], params.prior_weight)
    if _per_axis(weight[links]):
        if parts is None:
            raise ValueError("weights per axis need the residual's components (parts)")
        total = np.zeros(len(look))
        for a in range(weight.shape[1]):
            h = _leverage(lu[a], n, ij[links], weight[links, a], where)
            free = 1 - h
            total += np.nan_to_num(parts[look, a]) ** 2 / np.where(free > 1e-6, free, 1.0)
        out[look] = np.sqrt(total)
        return out
    weight = _scalar(weight)
    h = _leverage(lu, n, ij[links], weight[links], where)
    free = 1 - h
    out[look] = np.where(free > 1e-6, residual[look] / np.sqrt(np.maximum(free, 1e-6)),
                         residual[look])  # fmt: skip
    return out


def _leverage(lu: Any, n: int, ij: np.ndarray, w: np.ndarray, which: np.ndarray) -> np.ndarray:
    """For the pairs ``which`` (indices into ``ij``): how much of its own measurement the
    solve of :func:`_solve` gives back to each, ``h = w a^T (A^T W A + prior)^-1 a`` with ``a``
    the pair's row of the incidence matrix and ``lu`` :func:`_normal_lu` of the pairs (1: a
    bridge, no other path checks it; in a loop of four equal pairs 3/4, so a quarter of a
    misfit shows in the pair's own residual)."""
    i, j = ij[:, 0], ij[:, 1]
    out = np.zeros(len(which))
    for start in range(0, len(which), 256):
        part = which[start : start + 256]
        rhs = np.zeros((n, len(part)))
        cols_ = np.arange(len(part))
        rhs[j[part], cols_] += 1.0
        rhs[i[part], cols_] -= 1.0
        x = lu.solve(rhs)
        out[start : start + len(part)] = w[part] * (x[j[part], cols_] - x[i[part], cols_])
    return out
