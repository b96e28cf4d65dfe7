"""Which refused matches registration admits, and which used one it drops, by what the pairs'
loops say: a match that lands where the used pairs predict it (:func:`_confirmed`), two that
agree between the same two groups of tiles (:func:`_agreeing_joins`), the same over the other
peaks of each pair's NCC (:func:`_other_peaks`), a bridge outvoted by the pairs across its cut
(:func:`_outvoted_bridge`), a group's clearly best join (:func:`_lone_best`); and the graph
helpers they share (:func:`_components`, :func:`_bridges`), with :func:`_place_components`,
which moves groups left apart to fit the stage model."""

from __future__ import annotations

import collections

import numpy as np

from ._lsq import _solve


def _confirmed(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, residual: np.ndarray,
    tolerance: float,
) -> np.ndarray:  # fmt: skip
    """Candidate pairs (refused as weak or ambiguous) whose shift agrees within ``tolerance``
    with what the used pairs already predict for them (both tiles joined by used pairs).

    Over the whole search a weak match may be chance; landing within ``tolerance`` of an
    independent prediction by chance is about ``pi tolerance^2 / shifts searched`` (0.1 % for
    a 1.5 px tolerance in a +-38 px search), so such a match is confirmed by its loop.
    """
    label = _components(n, ij[used])[1]
    joined = label[ij[:, 0]] == label[ij[:, 1]]
    ok = candidate & joined & (np.nan_to_num(residual, nan=np.inf) <= tolerance)
    return np.flatnonzero(ok)


def _agreeing_joins(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, shifts: np.ndarray,
    quality: np.ndarray, c: np.ndarray, tolerance: float, owner: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """Refused matches (``candidate``) that join two groups of tiles left apart by the used
    pairs and agree with each other: for each candidate between two groups (best NCC first),
    the group of its tile ``j`` moved as a whole to fit it, the other candidates between the
    same two groups that then land within ``tolerance`` of their shift. Two routes that agree
    confirm each other as a loop does (by chance: about ``pi tolerance^2 / shifts searched``).
    Returns the first such set (the caller re-solves and looks again). ``owner``: the pair
    each row measures, when a pair has several rows (candidate shifts): rows of one pair never
    confirm each other."""
    owner = np.arange(len(ij)) if owner is None else owner
    n_comp, label = _components(n, ij[used])
    if n_comp == 1:
        return np.zeros(0, dtype=int)
    li, lj = label[ij[:, 0]], label[ij[:, 1]]
    across = np.flatnonzero(candidate & (li != lj))
    order = across[np.argsort(-quality[across], kind="stable")].tolist()
    routes: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
    for k in order:  # the candidates between each two groups
        routes[(min(li[k], lj[k]), max(li[k], lj[k]))].append(k)
    base = c[ij[:, 1]] - c[ij[:, 0]]  # what the current solve gives each pair
    for k in order:
        others = np.array(routes[(min(li[k], lj[k]), max(li[k], lj[k]))])
        if len(others) < 2:
            continue
        move = shifts[k] - base[k]  # moves the group of tile j (lj[k]) to fit pair k
        sign = (lj[others] == lj[k]).astype(float) - (li[others] == lj[k]).astype(float)
        d = base[others] + sign[:, None] * move - shifts[others]
        agree = others[(owner[others] != owner[k]) & (np.linalg.norm(d, axis=1) <= tolerance)]
        if len(agree):
            return np.array([k, *agree.tolist()], dtype=int)
    return np.zeros(0, dtype=int)


def _other_peaks(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, shifts: np.ndarray,
    quality: np.ndarray, others: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    c: np.ndarray, tolerance: float,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`_confirmed` and :func:`_agreeing_joins` over the other local maxima of the
    pairs not used (``others``: each one's pair, shift, NCC, and whether it is still open),
    beside the best peaks of the ``candidate`` pairs. A chance match can beat the true shift
    (a thin true common part, noise); the true shift is then usually among the next few peaks,
    and a loop tells which: landing within ``tolerance`` of an independent prediction by
    chance is about ``peaks pi tolerance^2 / shifts searched`` per pair.

    Returns the pairs to use and, for each, which of ``others`` it takes (its shift replaces
    the best peak's), -1 for a best peak (chosen by agreement with another pair's peak).
    """
    of, alt_shift, alt_quality, still = others
    m, k = len(ij), len(of)
    owner = np.concatenate([np.arange(m), of])
    every = np.concatenate([shifts, alt_shift])
    used_rows = np.concatenate([used, np.zeros(k, dtype=bool)])
    off = np.linalg.norm(c[ij[owner, 1]] - c[ij[owner, 0]] - every, axis=1)
    alt_rows = np.concatenate([np.zeros(m, dtype=bool), still])
    entry = _confirmed(n, ij[owner], used_rows, alt_rows, off, tolerance)
    if not len(entry):
        open_ = alt_rows | np.concatenate([candidate, np.zeros(k, dtype=bool)])
        q_rows = np.concatenate([quality, alt_quality])
        entry = _agreeing_joins(n, ij[owner], used_rows, open_, every, q_rows, c, tolerance,
                                owner)  # fmt: skip
    entry = _one_per_pair(entry, owner, off)
    mains = entry[entry < m]
    picked = entry[entry >= m] - m
    return np.concatenate([mains, of[picked]]), np.concatenate([
        np.full(len(mains), -1), picked])  # fmt: skip


def _bridges(n: int, links: np.ndarray) -> list[int]:
    """Indices of the ``links`` (shape (m, 2)) whose removal splits a group of the ``n``
    tiles: no loop runs through them (Tarjan's low-link, iterative)."""
    adjacency: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for e, (a, b) in enumerate(links.tolist()):
        adjacency[a].append((b, e))
        adjacency[b].append((a, e))
    order, low = np.full(n, -1), np.zeros(n, dtype=int)
    found, clock = [], 0
    for root in range(n):
        if order[root] >= 0:
            continue
        order[root] = low[root] = clock
        clock += 1
        stack = [(root, -1, iter(adjacency[root]))]
        while stack:
            node, via, edges = stack[-1]
            step = next(edges, None)
            if step is None:
                stack.pop()
                if stack:
                    parent = stack[-1][0]
                    low[parent] = min(low[parent], low[node])
                    if low[node] > order[parent]:
                        found.append(via)
                continue
            nxt, e = step
            if e == via:
                continue
            if order[nxt] < 0:
                order[nxt] = low[nxt] = clock
                clock += 1
                stack.append((nxt, e, iter(adjacency[nxt])))
            else:
                low[node] = min(low[node], order[nxt])
    return found


def _outvoted_bridge(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, shifts: np.ndarray,
    quality: np.ndarray, others: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    c: np.ndarray, tolerance: float, strength: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:  # fmt: skip
    """A used pair that no loop confirms (a bridge: without it its group splits in two),
    outvoted by the pairs across the same cut: two or more of them (by their best peak when
    a ``candidate``, else by one of their other peaks, ``others``: pair, shift, NCC, still
    open, as for :func:`_other_peaks`) agree on one placement of the two sides, the bridge's
    own best peak on another that no other pair supports. A chance match that is the only
    link between two groups is so replaced by the placement the other links agree on (the
    bridge's own other peak among them, where it agrees).

    Other peaks alone do not outvote a bridge whose NCC (``quality``) is above each of theirs:
    they are their pairs' lesser matches, and across a cut of many pairs some two of them
    agree by chance (noisy ``retina``, 5x5 at 6 %, draw 2: a true bridge of NCC 0.86 dropped
    for two other peaks of 0.70 and 0.58 that agreed 43 px off, 21.8 px mean error). Best
    peaks among the voters keep their say (noisy ``moon``, draw 1: a chance bridge of 0.85
    outvoted by two true best peaks of 0.77 and 0.73).

    Returns the bridge (-1: none), the pairs to use and, for each, which of ``others`` it
    takes (-1: its best peak).
    """
    of, alt_shift, alt_quality, still = others
    links = np.flatnonzero(used)
    nothing = (-1, np.zeros(0, dtype=int), np.zeros(0, dtype=int))
    base = c[ij[:, 1]] - c[ij[:, 0]]
    bridges = links[_bridges(n, ij[links])]
    for k in bridges[np.argsort(strength[bridges], kind="stable")].tolist():
        keep = used.copy()
        keep[k] = False
        label = _components(n, ij[keep])[1]
        side_b = label[ij[k, 1]]
        li, lj = label[ij[:, 0]], label[ij[:, 1]]
        across = ((li == side_b) ^ (lj == side_b)) & (
            (li == label[ij[k, 0]]) | (lj == label[ij[k, 0]])
        )
        mains = np.flatnonzero(across & candidate & ~used)
        alts = np.flatnonzero(still & across[of] & (~used[of] | (of == k)))
        owner = np.concatenate([mains, of[alts]])
        if len(np.unique(owner[owner != k])) < 2:
            continue
        row_shift = np.concatenate([shifts[mains], alt_shift[alts]])
        sign = np.where(lj[owner] == side_b, 1.0, -1.0)
        move = sign[:, None] * (row_shift - base[owner])  # moves side b to fit each row
        best, support = None, 1  # the bridge's own placement: move 0, its own vote
        # its own other peaks do not vote against it (periodic content repeats in them): two
        # other pairs at least must agree
        for r in range(len(owner)):
            near = np.linalg.norm(move - move[r], axis=1) <= tolerance
            voters = set(owner[near].tolist())
            if np.linalg.norm(move[r]) > tolerance and len(voters - {k}) > max(support, 1):
                best, support = near, len(voters - {k})
        if best is None:
            continue
        voting = best & (owner != k)  # other peaks alone, each weaker: chance agreement
        alone = not voting[: len(mains)].any()
        if alone and float(alt_quality[alts][voting[len(mains) :]].max()) < quality[k]:
            continue
        rows = np.flatnonzero(best)
        rows = _one_per_pair(rows, owner, np.linalg.norm(move - move[rows[0]], axis=1))
        picked = np.full(len(rows), -1, dtype=int)
        other = rows >= len(mains)  # rows of other peaks (none where every voter is a best peak)
        picked[other] = alts[rows[other] - len(mains)]
        return k, owner[rows], picked
    return nothing


def _one_per_pair(entry: np.ndarray, owner: np.ndarray, off: np.ndarray) -> np.ndarray:
    """Of the rows ``entry``, one per pair (``owner``): the one nearest the prediction."""
    best: dict[int, int] = {}
    for e in entry.tolist():
        k = int(owner[e])
        if k not in best or off[e] < off[best[k]]:
            best[k] = e
    return np.array(sorted(best.values()), dtype=int)


def _lone_best(
    n: int, ij: np.ndarray, used: np.ndarray, candidate: np.ndarray, quality: np.ndarray,
    margin: float,
) -> np.ndarray:  # fmt: skip
    """For each group of tiles that the used pairs leave apart from the largest group (which
    must hold more than half of the tiles): the best candidate joining the two, when it beats
    every other candidate touching the group by ``margin`` (one pair per group; the caller
    re-solves and looks again). Otherwise the stage model places such a group: at most the
    stage error off, where a chance match may be off by the whole search."""
    n_comp, label = _components(n, ij[used])
    if n_comp == 1:
        return np.zeros(0, dtype=int)
    sizes = np.bincount(label)
    main = int(np.argmax(sizes))
    if 2 * sizes[main] <= n:
        return np.zeros(0, dtype=int)
    li, lj = label[ij[:, 0]], label[ij[:, 1]]
    across = candidate & (li != lj)
    chosen = []
    for comp in range(n_comp):
        touch = np.flatnonzero(across & ((li == comp) | (lj == comp)))
        if comp == main or not len(touch):
            continue
        order = touch[np.argsort(-quality[touch])]
        joins_main = {int(li[order[0]]), int(lj[order[0]])} == {comp, main}
        if joins_main and (len(order) == 1 or quality[order[0]] - quality[order[1]] >= margin):
            chosen.append(int(order[0]))
    return np.array(chosen, dtype=int)


def _components(n: int, links: np.ndarray) -> tuple[int, np.ndarray]:
    """Groups of the ``n`` tiles joined by the pairs ``links`` (shape (m, 2)): their number
    and each tile's label."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(links)), (links[:, 0], links[:, 1])), shape=(n, n))
    n_comp, label = connected_components(graph, directed=False)
    return int(n_comp), label


def _place_components(
    n: int, ij: np.ndarray, used: np.ndarray, model: dict[int, np.ndarray], c: np.ndarray
) -> np.ndarray:
    """Offsets that move each group of tiles joined by used pairs as one, so that the stage
    model's pairs between groups hold (least squares); the largest group stays put. Model
    pairs never bend the measured geometry inside a group."""
    n_comp, label = _components(n, ij[used])
    if n_comp == 1 or not model:
        return np.zeros_like(c)
    keys = [k for k in sorted(model) if label[ij[k, 0]] != label[ij[k, 1]]]
    if not keys:
        return np.zeros_like(c)
    pairs = np.array([(label[ij[k, 0]], label[ij[k, 1]]) for k in keys], dtype=int)
    target = np.array([model[k] - (c[ij[k, 1]] - c[ij[k, 0]]) for k in keys])
    offset = _solve(n_comp, pairs, target, np.ones(len(keys)), 1e-6)
    main = int(np.argmax(np.bincount(label)))
    offset -= offset[main]
    return offset[label]
