"""The stitching QC report: what registration measured and decided, and how well the tiles agree
where they overlap at their final positions.

:func:`registration_report` builds it (a JSON-able dict), :func:`write_report` writes it beside
an output as ``<name>.qc.json`` and ``<name>.qc.png`` (the tile graph coloured by residual),
:func:`report_summary` gives its one-line summary, and :func:`qc_only` registers and writes the
report without fusing (``scopefx fuse --qc``). :func:`overlap_agreement` scores any layout,
registered or not, so layouts of other tools can be compared on the same tiles.

Every coordinate in the report is ``x, y[, z]`` (mosaic pixels), as in the tile tables.
"""

from __future__ import annotations

import collections
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, RegistrationError, ScopefxError
from ..io import TaskClock, TileTable, layout_problems, open_binary
from ._blend import read_opaque
from ._correlate import STRONG_MATCH, Plan, cut, plan_pair, prepare
from ._overlaps import _footprints, _shapes_array, overlapping_pairs
from ._register import read_as_fused, register_from
from ._regparams import RegistrationParams
from ._regresult import STATUSES, Registration, unmatched_note

__all__ = [
    "overlap_agreement",
    "qc_only",
    "registration_report",
    "report_summary",
    "write_report",
]

REPORT_VERSION = 1
_CMAP_MAX_PX = 2.0  # residuals at or above this are drawn in the colour map's last colour


def _ncc(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    keep = np.isfinite(a) & np.isfinite(b)
    x, y = a[keep].astype(np.float64), b[keep].astype(np.float64)
    if x.size < 16:
        return math.nan, int(x.size)
    x -= x.mean()
    y -= y.mean()
    den = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    return (float(np.dot(x, y)) / den if den > 0 else math.nan), int(x.size)


def _tile_shapes(table: TileTable, shapes: Any, read: Callable[[str], Any] | None) -> np.ndarray:
    if shapes is not None:
        return _shapes_array(table, shapes)
    nd = table.ndim
    if read is None:  # from the headers, colour tiles as fusion reads them
        return _shapes_array(table, read_as_fused(table)[1])
    return _shapes_array(table, [np.shape(read(r))[-nd:] for r in table.refs])


def overlap_agreement(
    table: TileTable,
    *,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    flatfield: Any = None,
    workers: int = 1,
) -> tuple[float, list[tuple[int, int, float, int]]]:
    """Area-weighted NCC of every two overlapping tiles at their positions in ``table``.

    Parameters
    ----------
    table : TileTable
        Tiles at the positions to score (registered, stage, or another tool's).
    read, shapes, flatfield, workers
        As :func:`scopefx.fusion.register`; the flat field corrects tiles before comparing.

    Returns
    -------
    agreement : float
        ``sum(ncc * pixels) / sum(pixels)`` over the overlapping pairs (NaN when none): 1 is
        perfect agreement; misplaced tiles lower it. Raw pixels (no band-pass), so it is what a
        viewer of the fused mosaic sees in the overlaps.
    pairs : list of (i, j, ncc, pixels)

    Notes
    -----
    Each pair is compared in the frame of its first tile, placed on whole pixels: the second
    is resampled at its exact position relative to the first (linear interpolation). So
    sub-pixel differences between layouts count, and a shift common to all tiles does not
    (resampling both tiles of a pair smooths their noise, which raised the NCC of a layout
    that merely sat half a pixel off the grid).
    """
    return _agreements([table], read=read, shapes=shapes, flatfield=flatfield,
                       workers=workers)[0]  # fmt: skip


def _agreements(
    tables: list[TileTable], *, read: Callable[[str], Any] | None, shapes: Any, flatfield: Any,
    workers: int, started: float | None = None,
) -> list[tuple[float, list[tuple[int, int, float, int]]]]:  # fmt: skip
    """:func:`overlap_agreement` of several layouts of the same tiles, each tile read once
    and at most ``workers`` (plus the crops waiting for their partner) in memory at once.

    The endpoint's task time, counted from ``started`` (:func:`time.monotonic`; default:
    now), is checked before each tile is read (:class:`~scopefx.io.TaskClock`)."""
    clock = TaskClock("the overlap agreement of the QC report", start=started)
    first = tables[0]
    if read is None:  # colour tiles as fusion reads them
        read, from_headers = read_as_fused(first)
        shapes = from_headers if shapes is None else shapes
    reader = read
    shape_arr = _tile_shapes(first, shapes, reader)
    plans: list[list[Plan]] = []
    by_tile: dict[int, list[tuple[int, int, int]]] = collections.defaultdict(list)
    for t, table in enumerate(tables):
        feet = _footprints(table, shape_arr)
        # resampled at their exact relative positions (linear interpolation, see anchored),
        # so a layout is not scored on how its positions happen to round
        geometry = overlapping_pairs(table, shape_arr, min_overlap_px=1.0)
        plans.append([plan_pair(table, shape_arr, feet, i, j, 0.0)._replace(sliced=False)
                      for i, j, _, _ in geometry])  # fmt: skip
        for p, plan in enumerate(plans[t]):
            by_tile[plan.i].append((t, p, 0))
            by_tile[plan.j].append((t, p, 1))

    nd = first.ndim

    def anchored(t: int, p: int, k: int) -> np.ndarray:
        """Tile ``k``'s affine in pair ``p`` of layout ``t``, both tiles of the pair moved by
        the sub-pixel part of its first tile's position: that one lies on whole pixels, the
        other at its position relative to it. Resampling both smooths their noise and raised
        the NCC of a layout for sitting half a pixel off the grid (Leica 4x3 scan: 0.394 on
        whole pixels, 0.456 with every tile moved by half a pixel)."""
        affine = tables[t][k].affine.copy()
        lead = tables[t][plans[t][p].i].affine[:nd, nd]
        affine[:nd, nd] -= lead - np.round(lead)
        return affine

    def load(k: int) -> list[tuple[int, int, int, np.ndarray]]:
        data, opaque = read_opaque(reader, first[k].ref, first.ndim)
        plane, _ = prepare(data, first.ndim, flatfield, 0.0, opaque)
        return [(t, p, side, cut(plane, anchored(t, p, k), plans[t][p]))
                for t, p, side in by_tile[k]]  # fmt: skip

    crops: dict[tuple[int, int], list[np.ndarray | None]] = {}
    scores: dict[tuple[int, int], tuple[float, int]] = {}
    loads: collections.deque[Future[list[tuple[int, int, int, np.ndarray]]]]
    loads = collections.deque()

    def drain() -> None:
        for t, p, side, crop in loads.popleft().result():
            slot = crops.setdefault((t, p), [None, None])
            slot[side] = crop
            if slot[0] is not None and slot[1] is not None:
                scores[t, p] = _ncc(slot[0], slot[1])
                del crops[t, p]

    tiles = sorted(by_tile)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for n_read, k in enumerate(tiles):
            if clock.over():
                for future in loads:
                    future.cancel()
                raise clock.error(
                    f"{n_read - len(loads):,} of {len(tiles):,} tiles were compared (the "
                    "registration is done; its tables are not written). Register fewer tiles "
                    "at once, or ask the endpoint's operator for a longer limit"
                )
            loads.append(pool.submit(load, k))
            while len(loads) > workers:
                drain()
        while loads:
            drain()
    out = []
    for t in range(len(tables)):
        pairs = [(pl.i, pl.j, *scores[t, p]) for p, pl in enumerate(plans[t])]
        valid = [(c, n) for _, _, c, n in pairs if math.isfinite(c)]
        total = sum(n for _, n in valid)
        out.append((float(sum(c * n for c, n in valid) / total) if total else math.nan, pairs))
    return out


def _num(v: float, digits: int = 4) -> float | None:
    return None if not math.isfinite(v) else round(float(v), digits)


def registration_report(
    reg: Registration,
    *,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    flatfield: Any = None,
    workers: int = 1,
    started: float | None = None,
    refused: str | None = None,
) -> dict[str, Any]:
    """The QC report of a registration, JSON-able.

    Parameters
    ----------
    reg : Registration
        From :func:`scopefx.fusion.register` (its ``stage_table`` is the layout before).
    read, shapes, flatfield, workers, started
        As for :func:`register`: tiles are read again to score the overlap agreement, and
        the endpoint's task time (counted from ``started``) is checked before each read.
    refused : str, optional
        Why registration was refused (the message of the
        :class:`~scopefx.errors.RegistrationError` whose ``registration`` is ``reg``): the
        report then says so (``refused``), and its positions are those ``allow_partial``
        would give, not applied.

    Returns
    -------
    dict
        ``version``; ``params`` (the registration settings); ``summary`` (pair counts by
        status, ``rms_residual_px``, ``max_residual_px``, ``mean_tile_shift_px``,
        ``max_tile_shift_px``, ``overlap_agreement`` at the registered positions and
        ``overlap_agreement_stage`` at the stage positions, ``tiles_unmatched``: how many
        tiles have measured pairs but no used one; ``pairs_unchecked``: used pairs that no
        loop of used pairs checks, whose residual is 0 whatever their error, see
        :meth:`Registration.unchecked_pairs`, and ``pairs_unchecked_weak``: those of NCC under
        0.8); ``layout_problems``; ``pairs`` (per pair: tiles, measured ``shift`` x, y,
        ``quality``, ``runner_up``, ``status``, ``used``, ``weight``, ``residual_px``,
        ``loop_checked``, ``modelled`` shift, ``overlap_px``, ``agreement`` NCC at the final
        positions); ``tiles`` (per tile: ``ref``, ``stage`` and ``position`` x, y,
        ``shift`` x, y and its length ``shift_px``, ``size``, ``pairs_used`` and
        ``placed_by``: ``"registration"``, ``"stage model"`` or ``"stage position"``, see
        :meth:`Registration.placed_by`, and ``unmatched``: measured pairs, none used);
        ``refused``: None, or why registration was refused; ``plan_refused``: None, or why a
        fusion's planning refused the registered layout (no mosaic was made from it).
    """
    table, nd = reg.table, reg.table.ndim
    stage = reg.stage_table or reg.table
    shape_arr = _tile_shapes(table, shapes, read)
    (after, after_pairs), (before, _) = _agreements(
        [table, stage],
        read=read,
        shapes=shape_arr,
        flatfield=flatfield,
        workers=workers,
        started=started,
    )
    agreement = {(i, j): c for i, j, c, _ in after_pairs}
    pos, pos0 = table.affines[:, :nd, nd], stage.affines[:, :nd, nd]
    shift = pos - pos0
    counts = collections.Counter(p.status for p in reg.pairs)
    res = [p.residual_px for p in reg.pairs if p.used]
    lengths = np.linalg.norm(shift, axis=1)
    used_by_tile, placed_by = reg.pairs_used_per_tile(), reg.placed_by()
    unmatched = set(reg.unmatched_tiles())
    unchecked = set(reg.unchecked_pairs())
    # on the report's own (rounded) NCC, as report_summary names them
    weak = [k for k in sorted(unchecked) if (_num(reg.pairs[k].quality) or 0.0) < STRONG_MATCH]
    summary = {
        "tiles": len(table),
        "pairs": len(reg.pairs),
        **{f"pairs_{s}": counts.get(s, 0) for s in STATUSES},
        # unusable pairs the stage model set (a used ridge it drew is counted by its status)
        "pairs_modelled": sum(p.modelled_px is not None and not p.used for p in reg.pairs),
        "rms_residual_px": _num(reg.rms_residual_px),
        "max_residual_px": _num(max(res)) if res else None,
        "mean_tile_shift_px": _num(float(lengths.mean())),
        "max_tile_shift_px": _num(float(lengths.max())),
        "overlap_agreement": _num(after),
        "overlap_agreement_stage": _num(before),
        "tiles_unmatched": len(unmatched),
        # used pairs no loop checks (residual 0 whatever their error), and those weak ones
        "pairs_unchecked": len(unchecked),
        "pairs_unchecked_weak": len(weak),
        # of those, the ones the layout's loops could have confirmed: not counted as usable
        # by the refusal (min_usable_fraction)
        "pairs_unconfirmed_weak": len(reg.unconfirmed_weak_pairs()),
        "flatfield": reg.flatfield,
        "banding": reg.banding,
    }
    pairs = []
    for k, p in enumerate(reg.pairs):
        pairs.append(
            {
                "i": p.i,
                "j": p.j,
                "ref_i": table.refs[p.i],
                "ref_j": table.refs[p.j],
                "shift": [_num(v) for v in p.shift_px[::-1]],
                "quality": _num(p.quality),
                "runner_up": _num(p.runner_up),
                "status": p.status,
                "used": p.used,
                "weight": _num(p.weight),
                "residual_px": _num(p.residual_px),
                "loop_checked": p.used and k not in unchecked,
                "modelled": None
                if p.modelled_px is None
                else [_num(v) for v in p.modelled_px[::-1]],
                "overlap_px": list(p.overlap_px[::-1]),
                "agreement": _num(agreement.get((p.i, p.j), math.nan)),
            }
        )
    tiles = [
        {
            "index": k,
            "ref": ref,
            "stage": [_num(v) for v in pos0[k][::-1]],
            "position": [_num(v) for v in pos[k][::-1]],
            "shift": [_num(v) for v in shift[k][::-1]],
            "shift_px": _num(float(lengths[k])),
            "size": [int(v) for v in shape_arr[k][::-1]],
            "pairs_used": int(used_by_tile[k]),
            "placed_by": placed_by[k],
            "unmatched": k in unmatched,
        }
        for k, ref in enumerate(table.refs)
    ]
    return {
        "version": REPORT_VERSION,
        "refused": refused,
        "plan_refused": None,  # set where a fusion's planning then refused this layout
        "params": reg.params.to_dict(),
        "summary": summary,
        "layout_problems": layout_problems(stage, shape_arr),
        "pairs": pairs,
        "tiles": tiles,
    }


def report_summary(report: dict[str, Any]) -> str:
    """One line for the CLI, e.g. ``registration: 17 of 17 side pairs used, 12 corner pairs
    not measured, rms residual 0.41 px, tiles moved 1.1 px on average (max 2.6), overlap
    agreement 0.83 (stage 0.79)``, naming the tiles no used pair placed (``1 tile placed by
    the stage model alone: tile_r1_c1.tif``)."""
    s = report["summary"]
    side = s["pairs"] - s["pairs_corner"]
    if report.get("refused"):  # what was measured; the positions were not applied
        weak = s.get("pairs_unconfirmed_weak", 0)
        note = (f", {weak} weak used one{'s' if weak != 1 else ''} that no loop confirms not "
                "counted" if weak else "")  # fmt: skip
        return (f"registration refused: {s['pairs_used'] - weak} of {side} side pairs gave a "
                f"usable match{note} (the report's positions are what "
                "--allow-partial-registration would give, not applied)")  # fmt: skip
    if s["pairs"] == 0 and len(report.get("tiles", [])) == 1:
        return "registration: one tile, nothing to register (placed at its stage position)"
    parts = [f"registration: {s['pairs_used']} of {side} side pairs used"]
    rejected = [f"{s[f'pairs_{k}']} {k.replace('_', ' ')}" for k in
                ("outlier", "low_quality", "ambiguous", "blank") if s[f"pairs_{k}"]]  # fmt: skip
    if rejected:
        parts[0] += f" ({', '.join(rejected)}; {s['pairs_modelled']} set by the stage model)"
    if s["pairs_corner"]:
        parts[0] += f", {s['pairs_corner']} corner pairs not measured"

    def px(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    parts.append(_rms_phrase(s["rms_residual_px"]))
    mean, top = px(s["mean_tile_shift_px"]), px(s["max_tile_shift_px"])
    parts.append(f"tiles moved {mean} px on average (max {top})")
    parts.append(
        f"overlap agreement {px(s['overlap_agreement'])} (stage {px(s['overlap_agreement_stage'])})"
    )
    line = ", ".join(parts)
    lone = [t for t in report.get("tiles", []) if t.get("unmatched")]
    if lone:  # every measured pair of theirs failed: where the stage put them, however far off
        line += "; " + unmatched_note([t["ref"] for t in lone], [t["placed_by"] for t in lone])
    weak = [p for p in report.get("pairs", []) if p["used"] and not p.get("loop_checked", True)
            and p["quality"] is not None and p["quality"] < STRONG_MATCH]  # fmt: skip
    if weak:  # the likeliest wrong placements, and their residual cannot show it
        line += "; " + unchecked_note([(p["ref_i"], p["ref_j"]) for p in weak])
    if s.get("flatfield") == "estimated":
        line += "; tiles correlated through a flat field estimated from them"
    if s.get("banding") == "removed":
        line += "; row and column banding shared by the tiles taken out before correlation"
    if report.get("layout_problems"):
        line += "; layout: " + "; ".join(report["layout_problems"])
    return line


def unchecked_note(pairs: list[tuple[str, str]], *, shown: int = 3) -> str:
    """``"2 used pairs rest on a weak match (NCC under 0.8) that no loop checks (their
    residuals cannot show an error): a.tif-b.tif, c.tif-d.tif"``: the pairs (their tiles'
    references), the first ``shown`` named, the rest counted."""
    n = len(pairs)
    names = ", ".join(f"{a}-{b}" for a, b in pairs[:shown]) + (
        f" and {n - shown} more" if n > shown else ""
    )
    which = ("1 used pair rests", "its residual cannot") if n == 1 else (
        f"{n} used pairs rest", "their residuals cannot")  # fmt: skip
    return (f"{which[0]} on a weak match (NCC under {STRONG_MATCH:g}) that no loop checks "
            f"({which[1]} show an error): {names}")  # fmt: skip


def sidecar(out: str | os.PathLike[str], suffix: str) -> Path:
    """``mosaic.ome.zarr`` (or ``mosaic.tif``) -> ``mosaic<suffix>`` beside it."""
    out = Path(out)
    name = out.name
    for ext in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return out.with_name(name + suffix)


def write_report(
    report: dict[str, Any],
    out: str | os.PathLike[str],
    *,
    stage_shapes: Any = None,
    replace: bool = False,
) -> tuple[Path, Path]:
    """Write ``<name>.qc.json`` and ``<name>.qc.png`` beside ``out`` (the mosaic's path),
    created exclusively (``replace``: over a previous run's regular files; never through a
    link, :func:`scopefx.fusion._publish.publish`).

    Returns
    -------
    (json_path, png_path)
    """
    from ._publish import publish

    js, png = sidecar(out, ".qc.json"), sidecar(out, ".qc.png")
    text = json.dumps(report, indent=1, allow_nan=False)
    publish(js, lambda tmp: tmp.write_text(text), replace=replace)
    publish(png, lambda tmp: _plot_graph(report, tmp), replace=replace)
    return js, png


def _plot_graph(report: dict[str, Any], path: Path) -> None:
    """Tiles as outlines at their registered positions, pairs as lines between tile centres
    coloured by residual (pink dotted: used but no loop checks it, its residual 0 whatever
    its error; grey dashed: not used; red: outlier), arrows for the shifts; a tile
    that no used pair placed (``unmatched``) outlined in red and hatched."""
    # on a Figure of its own, never through pyplot: pyplot's global state is the caller's (a
    # notebook's inline backend was switched to Agg here, and its later plots not shown)
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    tiles, pairs = report["tiles"], report["pairs"]
    pos = np.array([t["position"][:2] for t in tiles], dtype=float)
    shift = np.array([t["shift"][:2] for t in tiles], dtype=float)
    half = np.array([t["size"][:2] for t in tiles], dtype=float) / 2
    centre = pos + half
    span = np.ptp(centre, axis=0) + 2 * half.max(axis=0)
    fig = Figure(figsize=(8, float(np.clip(8 * span[1] / span[0], 2.5, 12))))
    ax = fig.subplots()
    cmap, norm = colormaps["viridis"], Normalize(0, _CMAP_MAX_PX)
    lone = [k for k, t in enumerate(tiles) if t.get("unmatched")]
    for p0, h in zip(pos, half, strict=True):
        ax.add_patch(Rectangle(tuple(p0), *(2 * h), fill=False, lw=0.5, ec="0.75"))
    for k in lone:  # drawn over the other outlines
        ax.add_patch(Rectangle(tuple(pos[k]), *(2 * half[k]), fill=False, lw=1.5, ec="red",
                               hatch="//", zorder=2))  # fmt: skip
    for p in pairs:
        a, b = centre[p["i"]], centre[p["j"]]
        if p["status"] == "corner":
            continue
        if p["used"] and not p.get("loop_checked", True):  # residual 0 says nothing here
            ax.plot(*zip(a, b, strict=True), color="deeppink", lw=3, ls=":")
        elif p["used"] and p["residual_px"] is not None:
            ax.plot(*zip(a, b, strict=True), color=cmap(norm(p["residual_px"])), lw=3)
        else:
            colour = "red" if p["status"] == "outlier" else "0.6"
            ax.plot(*zip(a, b, strict=True), color=colour, lw=1.5, ls="--")
    ax.scatter(centre[:, 0], centre[:, 1], s=12, color="k", zorder=3)
    ax.quiver(centre[:, 0], centre[:, 1], shift[:, 0], shift[:, 1], angles="xy",
              scale_units="xy", scale=0.1, color="tab:orange", width=0.004, zorder=4)  # fmt: skip
    for k, c in enumerate(centre):
        ax.annotate(str(k), c, textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    s = report["summary"]
    placed = sorted({tiles[k].get("placed_by", "stage position") for k in lone})
    how = " or ".join("by the stage model alone" if p == "stage model" else "at the stage position"
                      for p in placed)  # fmt: skip
    marked = f"\nhatched red: tiles with no used pair ({len(lone)}), placed {how}"
    head = ("REFUSED (too few usable pairs): positions as --allow-partial-registration would "
            "give, not applied\n" if report.get("refused") else "")  # fmt: skip
    if report.get("plan_refused"):
        head += "NOT FUSED: planning refused this layout (the report's plan_refused says why)\n"
    agreement = s["overlap_agreement"]
    ax.set_title(
        head + f"{s['pairs_used']} pairs used, {_rms_phrase(s['rms_residual_px'])}; "
        f"overlap agreement {'none measured' if agreement is None else agreement}\n"
        "lines: residual (colour), dotted pink: used, no loop checks it, dashed grey: not "
        "used, red: outlier; arrows: shift x10" + (marked if lone else ""),
        fontsize=8,
    )
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="residual (px)", shrink=0.6)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def qc_only(
    table: TileTable,
    out: str | os.PathLike[str],
    *,
    params: RegistrationParams | None = None,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    flatfield: Any = None,
    workers: int = 1,
    replace: bool = False,
) -> tuple[Registration, dict[str, Any], tuple[Path, Path]]:
    """Register and write the QC report beside ``out`` without fusing (``scopefx fuse --qc``).

    Also writes ``<name>.registered.csv`` (the refined table) and ``<name>.pairs.csv``. Every
    file is created exclusively (``replace``: over a previous run's regular files).

    Returns
    -------
    (Registration, report, (json_path, png_path))

    Raises
    ------
    RegistrationError
        As :func:`register` (too few usable pairs without ``allow_partial``).
    """
    reg, report, write = registered_report(table, out, params=params, read=read, shapes=shapes,
                                           flatfield=flatfield, workers=workers,
                                           replace=replace)  # fmt: skip
    return reg, report, write()


def registered_report(
    table: TileTable,
    out: str | os.PathLike[str],
    *,
    params: RegistrationParams | None = None,
    read: Callable[[str], Any] | None = None,
    shapes: Any = None,
    flatfield: Any = None,
    workers: int = 1,
    replace: bool = False,
) -> tuple[Registration, dict[str, Any], Callable[..., tuple[Path, Path]]]:
    """:func:`qc_only` with the side files checked but not yet written: the registration, its
    report, and the call that writes them (returning the QC report's paths; given
    ``plan_refused``, why planning refused the registered layout, the report says so and
    the next run replaces its files). A fusion writes them once its output is claimed, so
    that a run refused there (``--overwrite`` of what scopefx did not write, a ``--resume``
    of another plan) leaves no report beside a mosaic it does not describe. A refused
    registration writes its evidence at once, as :func:`qc_only` does."""
    from ._publish import publish

    started = time.monotonic()  # one task clock for the registration and its report
    shape_arr = _tile_shapes(table, shapes, read)
    try:
        reg = register_from(started, table, params=params, read=read, shapes=shape_arr,
                            flatfield=flatfield, workers=workers)  # fmt: skip
    except RegistrationError as exc:
        if exc.registration is None:
            raise
        raise _refused_report(exc, out, read, shape_arr, flatfield, workers, started,
                              replace) from None  # fmt: skip
    report = registration_report(reg, read=read, shapes=shape_arr, flatfield=flatfield,
                                 workers=workers, started=started)  # fmt: skip
    _may_write(
        out, _SIDE_FILES, replace=replace, refused=False, source=table.source
    )  # all checked, then written

    def write(plan_refused: str | None = None) -> tuple[Path, Path]:
        if plan_refused is not None:  # no mosaic will describe them: the next run replaces them
            report["plan_refused"] = plan_refused
        publish(sidecar(out, ".registered.csv"), reg.table.to_csv, replace=True)
        publish(sidecar(out, ".pairs.csv"), reg.pairs_to_csv, replace=True)
        return write_report(report, out, replace=True)

    return reg, report, write


#: The side files of a registration: suffix and what scopefx writes there.
_SIDE_FILES = (
    (".registered.csv", "table"), (".pairs.csv", "pairs"), (".qc.json", "json"),
    (".qc.png", "png"),
)  # fmt: skip
#: How much of a side file is read to tell whether scopefx wrote it (a QC report of a large
#: mosaic is a few MiB).
_SNIFF_BYTES = 256 << 20


def _scopefx_report(path: Path) -> dict[str, Any] | None:
    """The QC report scopefx wrote at ``path`` (a regular file, JSON with its ``version``,
    ``summary`` and ``pairs``), parsed; None for anything else."""
    if path.is_symlink() or not path.is_file():
        return None
    try:  # confined, no FIFO waited on (a swap after the check above)
        with open_binary(path) as fh:
            doc = json.loads(fh.read(_SNIFF_BYTES))
    except (OSError, ScopefxError, ValueError, RecursionError):  # unreadable, not JSON, deep
        return None
    ok = isinstance(doc, dict) and {"version", "summary", "pairs"} <= set(doc)
    return doc if ok else None


def _written_by_scopefx(path: Path, kind: str) -> bool:
    """Whether the regular file at ``path`` is a side file of this kind (``"pairs"``,
    ``"table"``, ``"png"``) that scopefx wrote: a pairs table or a refined tile table by their
    headers, a QC picture by matplotlib's PNG signature (QC reports: :func:`_scopefx_report`)."""
    try:
        with open_binary(path) as fh:
            head = fh.read(4096)
    except (OSError, ScopefxError):  # unreadable, outside the roots, not a regular file
        return False
    if kind == "pairs":
        return head.startswith(b"i,j,ref_i,ref_j,")
    if kind == "table":
        return head.startswith(b"path,")
    return head.startswith(b"\x89PNG") and b"matplotlib" in head.lower()


def _may_write(
    out: str | os.PathLike[str], files: Any, *, replace: bool, refused: bool,
    source: str | None = None,
) -> None:  # fmt: skip
    """Check every side file before any is written, so that a run writes all of them or none:
    where one exists it must be a regular file scopefx wrote (never a link, never someone
    else's file, even with ``replace``). The evidence of a refused registration (its report,
    picture and pairs) is replaced by any later run without ``replace``: the retry its message
    suggests (``--allow-partial-registration``, a wider search) just works. Other files need
    ``replace``; and a refused run (``refused``) replaces none of a run that registered,
    whose mosaic is beside them (where no mosaic is, a ``--qc`` run's, ``replace`` lets it).
    The files of a run whose registered layout planning refused (the report's
    ``plan_refused``; no mosaic made) are replaced alike, the refined table among them.
    No side file may be the run's input table."""
    report = _scopefx_report(sidecar(out, ".qc.json"))  # read once, whatever else is asked
    prior_refusal = bool(report and report.get("refused"))
    # a registered layout planning refused: no mosaic was made from its refined table either
    prior_plan = bool(report and report.get("plan_refused")) and not os.path.lexists(out)
    for suffix, kind in files:
        path = sidecar(out, suffix)
        if not os.path.lexists(path):
            continue
        if source and os.path.exists(source) and os.path.samefile(path, source):
            raise ConfigError(f"{path} is the tile table this run reads; scopefx will not "
                              "write over it: choose another output")  # fmt: skip
        if path.is_symlink() or not path.is_file():
            raise ConfigError(f"{path} is a link or not a regular file; scopefx will not "
                              "replace it: move it, or choose another output")  # fmt: skip
        ours = report is not None if kind == "json" else _written_by_scopefx(path, kind)
        if not ours:
            raise ConfigError(f"{path} exists and is not a file scopefx wrote; scopefx will not "
                              "replace it: move it, or choose another output")  # fmt: skip
        if prior_plan or (prior_refusal and suffix != ".registered.csv"):
            continue  # a refusal's evidence: the next run's to replace
        if refused and os.path.lexists(out):
            raise ConfigError(f"{path} is the report of a run that registered, beside its "
                              "mosaic; a refused registration does not replace it (choose "
                              "another output for this run's report)")  # fmt: skip
        if not replace:
            raise ConfigError(f"{path} exists; scopefx creates its side files only where "
                              "nothing is (pass --overwrite or --resume to replace a previous "
                              "run's), or choose another output")  # fmt: skip


def _refused_report(
    exc: RegistrationError, out: str | os.PathLike[str], read: Callable[[str], Any] | None,
    shapes: np.ndarray, flatfield: Any, workers: int, started: float, replace: bool,
) -> RegistrationError:  # fmt: skip
    """The QC report and the pairs table of a refused registration written beside ``out``
    (no refined table: nothing was registered), and the error to raise, its message naming
    them: a refusal is when the pairs' evidence is needed most (which failed, how, where).
    A report that cannot be written (a previous run's, without ``replace``; a full disk; the
    task's time spent) is said so, and never hides the refusal."""
    from ._publish import publish

    reg, why = exc.registration, str(exc)
    try:
        report = registration_report(reg, read=read, shapes=shapes, flatfield=flatfield,
                                     workers=workers, started=started, refused=why)  # fmt: skip
        pairs = sidecar(out, ".pairs.csv")
        _may_write(out, _SIDE_FILES[1:], replace=replace, refused=True, source=reg.table.source)
        publish(pairs, reg.pairs_to_csv, replace=True)
        js, png = write_report(report, out, replace=True)
    except (ScopefxError, OSError) as err:  # exists, disk full, out of task time, ...
        return RegistrationError(f"{why}. The stitching QC report was not written: {err}",
                                 registration=reg)  # fmt: skip
    return RegistrationError(
        f"{why}. Each pair as measured is in the stitching QC report {js} ({png.name}, "
        f"{pairs.name}); the next run to the same output replaces it",
        registration=reg,
    )


def _rms_phrase(rms: float | None) -> str:
    """The residual's words in the summary line and the picture's title: with no used pair
    there is none (it read 'rms residual None px' there, 'n/a px' here)."""
    return "no residual (no pair used)" if rms is None else f"rms residual {rms:.2f} px"
