"""Registration and fusion of the real tile sets in ``../shared/data/tiles_real/``, against
multiview-stitcher (and ASHLAR and m2stitch where they run) in the same run.

::

    python bench/tiles_real.py                      # every set, all peers found
    python bench/tiles_real.py --sets leica_tma4x3 --out bench/results/tiles_real.txt

Each tool runs in its own process on the set's ``stage.csv`` with its default settings:

* **scopefx**: ``scopefx.fuse(stage.csv, OUT.ome.zarr, options=FuseOptions(register=True))``
  (the CLI's ``scopefx fuse --register``; registration with ``RegistrationParams()``), level 0
  and the pyramid written to a temporary OME-Zarr;
* **mvs**: ``bench/_mvs_register_peer.py`` in ``bench/.venv-mvs`` (``bench/setup_peer.sh``):
  ``registration.register`` then ``fusion.fuse`` in memory, package defaults;
* **ashlar**: ``bench/_ashlar_peer.py`` in the same environment when ``ashlar`` imports there:
  ``EdgeAligner`` at its defaults on the stage positions, pixel size 1 um (so its 15 um
  ``max_shift`` is 15 px); registration only;
* **m2stitch**: ``bench/_m2stitch_peer.py`` in the same environment when ``m2stitch`` imports
  there (registration only: it has no fusion); its failures are reported as such.

Measured per set and tool: **position error** against the set's ``reference.csv`` (mean and
max over tiles of ``|p - p_ref|`` after removing the mean offset, px); **overlap agreement**,
the area-weighted NCC of every two overlapping tiles at the tool's positions on the raw pixels
(:func:`scopefx.fusion._qc.overlap_agreement`; the same code scores every layout, the stage
layout included); **whole-process wall time** and **peak RSS** (``VmHWM``) of the tool's
process, with scopefx / peer ratios. Targets (issue 16): starrynight within 1.5 px mean and 3 px
max of Fiji's layout; Leica overlap agreement at least the best peer's; every set registered
without hand-tuned options. The script exits 0 whatever the figures; PASS/FAIL is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Report, environment_lines, fmt, pass_fail, table

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / ".." / "shared" / "data" / "tiles_real"
PEER_PY = HERE / ".venv-mvs" / "bin" / "python"
REGISTER_ONLY = ("ashlar", "m2stitch")  # peers that do not fuse: their time is not comparable

_SCOPEFX_SIDE = """
import json, sys, time
t0 = time.perf_counter()
from scopefx.fusion import FuseOptions, fuse
from scopefx.io import read_tile_table
stage, out, js = sys.argv[1:4]
result = fuse(stage, out, options=FuseOptions(register=True, overwrite=True))
wall = time.perf_counter() - t0
table = read_tile_table(result.extra["registration"]["table"])
pos = [[float(a[1, 2]), float(a[0, 2])] for a in table.affines]
hwm = None
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) * 1024 / 1e6
json.dump({"positions": pos, "wall_s": wall, "peak_rss_mb": hwm,
           "registration": result.extra["registration"]}, open(js, "w"))
"""


def _run(cmd: list[str], js: Path, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    if proc.returncode != 0 or not js.is_file():
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(js.read_text())


def _errors(positions: list[list[float]], reference: list[list[float]]) -> tuple[float, float]:
    import numpy as np

    err = np.asarray(positions) - np.asarray(reference)
    d = np.linalg.norm(err - err.mean(axis=0), axis=1)
    return float(d.mean()), float(d.max())


def _agreement(stage_csv: Path, positions: list[list[float]]) -> float:
    from scopefx.fusion._qc import overlap_agreement
    from scopefx.io import TileTable, read_tile_table

    stage = read_tile_table(stage_csv)
    return overlap_agreement(TileTable.from_positions(stage.refs, positions), workers=2)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="*", default=None, help="set names (default: all)")
    parser.add_argument("--out", default=None, help="also write the summary to this file")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"tiles_real: {DATA} is absent; nothing to measure")
        return 0
    from scopefx.io import read_tile_table

    names = args.sets or sorted(p.name for p in DATA.iterdir() if (p / "stage.csv").is_file())
    peers = {}
    if PEER_PY.is_file():
        peers["mvs"] = HERE / "_mvs_register_peer.py"
        for module in ("ashlar", "m2stitch"):
            probe = subprocess.run([str(PEER_PY), "-c", f"import {module}"], capture_output=True)
            if probe.returncode == 0:
                peers[module] = HERE / f"_{module}_peer.py"
    report = Report()
    report.add("# Real tile sets: scopefx fuse --register against peers, defaults everywhere",
               *environment_lines(), "")  # fmt: skip
    if not peers:
        report.add("(no peer environment: run bench/setup_peer.sh for multiview-stitcher)", "")
    rows, targets, failures = [], [], []
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    with tempfile.TemporaryDirectory(prefix="tiles-real-") as tmp:
        for name in names:
            folder = DATA / name
            stage_csv = folder / "stage.csv"
            stage = read_tile_table(stage_csv)
            stage_xy = [[float(a[1, 2]), float(a[0, 2])] for a in stage.affines]
            ref_xy = None
            if (folder / "reference.csv").is_file():
                ref = read_tile_table(folder / "reference.csv")
                by = {Path(r).name: [float(a[1, 2]), float(a[0, 2])]
                      for r, a in zip(ref.refs, ref.affines, strict=True)}  # fmt: skip
                ref_xy = [by[Path(r).name] for r in stage.refs]
            results = {"stage": {"positions": stage_xy}}
            if ref_xy:
                results["reference"] = {"positions": ref_xy}
            js = Path(tmp) / f"{name}.scopefx.json"
            zarr = str(Path(tmp) / f"{name}.ome.zarr")
            cmd = [sys.executable, "-c", _SCOPEFX_SIDE, str(stage_csv), zarr, str(js)]
            results["scopefx"] = _run(cmd, js, env)
            for peer, script in peers.items():
                pj = Path(tmp) / f"{name}.{peer}.json"
                results[peer] = _run([str(PEER_PY), str(script), str(stage_csv), str(pj)], pj)
            base = results["scopefx"]
            for tool, r in results.items():
                if "positions" not in r:
                    rows.append([name, tool, "failed", *[""] * 6])
                    failures.append(f"{name} {tool}: {r.get('error', '?')}")
                    continue
                mean, top = _errors(r["positions"], ref_xy) if ref_xy else (float("nan"),) * 2
                r["agreement"] = _agreement(stage_csv, r["positions"])
                t_ratio = m_ratio = ""
                if tool != "scopefx" and "wall_s" in base and r.get("wall_s"):
                    if tool not in REGISTER_ONLY:  # a time ratio of like with like only
                        t_ratio = fmt(base["wall_s"] / r["wall_s"], 2)
                    if base.get("peak_rss_mb") and r.get("peak_rss_mb"):
                        m_ratio = fmt(base["peak_rss_mb"] / r["peak_rss_mb"], 2)
                wall = fmt(r["wall_s"], 1) if "wall_s" in r else ""
                rss = fmt(r["peak_rss_mb"], 0) if r.get("peak_rss_mb") else ""
                rows.append([name, tool, fmt(mean, 2), fmt(top, 2), fmt(r["agreement"], 3),
                             wall, rss, t_ratio, m_ratio])  # fmt: skip
            ok_reg = "positions" in base
            targets.append((f"{name}: registered with default settings", ok_reg))
            if name.startswith("starrynight") and ok_reg and ref_xy:
                mean, top = _errors(base["positions"], ref_xy)
                text = f"within 1.5 px mean / 3 px max of Fiji ({fmt(mean, 2)} / {fmt(top, 2)})"
                targets.append((f"{name}: {text}", mean <= 1.5 and top <= 3))
            if name.startswith("leica") and ok_reg:
                own_rows = ("stage", "reference", "scopefx")
                peer_scores = [r["agreement"] for t, r in results.items()
                               if t not in own_rows and "agreement" in r]  # fmt: skip
                if peer_scores:
                    best, own = max(peer_scores), base["agreement"]
                    text = f"overlap agreement {fmt(own, 3)} >= best peer {fmt(best, 3)}"
                    targets.append((f"{name}: {text}", own >= best))
    report.add(*table(["set", "tool", "err mean px", "err max px", "overlap NCC", "wall s",
                       "peak MB", "time ratio", "mem ratio"], rows))  # fmt: skip
    report.add("", "reference: the set's reference layout scored like the tools (starrynight: "
               "Fiji's registered layout)",
               "error: against reference.csv after removing the mean offset (leica: the "
               "published regular grid; starrynight: Fiji's registered layout; zeiss: none)",
               "ratios: scopefx / peer (below 1: scopefx faster or smaller); ashlar and "
               "m2stitch register only (no time ratio)", "")  # fmt: skip
    report.add("failures (default settings):", *(f"  {f}" for f in failures), "")
    report.add("targets:", *(f"  {pass_fail(ok)}  {text}" for text, ok in targets))
    report.emit(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
