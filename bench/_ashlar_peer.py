"""Register tile sets with ASHLAR's ``EdgeAligner``, as a peer of tiles_real.py and
register_synthetic.py.

Run with the interpreter of ``bench/.venv-mvs`` (``bench/setup_peer.sh`` pins ASHLAR there);
this script must not import scopefx::

    bench/.venv-mvs/bin/python bench/_ashlar_peer.py [--max-shift PX] A.csv A.json [B.csv ...]

Each ``stage.csv`` (``path,x,y``: where the tile's pixel (0, 0) lands, px) is one set. Its tiles
are read into memory (summed over colour channels) behind a minimal ASHLAR reader whose stage
positions are those of the table and whose pixel size is 1 um, so ASHLAR's default
``max_shift`` of 15 um is 15 px (``--max-shift`` sets another). Everything else is ASHLAR's
default (``EdgeAligner`` with ``alpha=0.01``, ``filter_sigma=0``), except the thumbnail coarse
alignment, which needs Bio-Formats metadata and is off. ASHLAR needs tiles of one size: a set
with mixed sizes is reported as its failure. Registration only (its mosaic assembly is not
timed). Each ``OUT.json`` gets ``positions`` (``[x, y]`` of each tile's pixel (0, 0), in the
table's frame up to one common shift), ``wall_s`` (reading and registration), ``peak_rss_mb``
(``VmHWM`` of the process so far) and ``error`` when ASHLAR refuses or fails the set. Several
sets in one call share the import cost; ``wall_s`` is per set.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

from _peer_io import proc_status_mb, read_grey, read_tiles


def _register(stage_csv: Path, max_shift: float | None) -> dict:
    import numpy as np
    from ashlar import reg

    t0 = time.perf_counter()
    rows = read_tiles(stage_csv)
    images = [read_grey(p) for p, _, _ in rows]
    yx = np.array([(y, x) for _, x, y in rows], dtype=float)

    class Metadata(reg.Metadata):
        _num_images = len(images)
        num_channels = 1
        pixel_size = 1.0
        pixel_dtype = np.dtype(np.float32)

        def tile_position(self, i):
            return yx[i]

        def tile_size(self, i):
            return np.array(images[i].shape, dtype=int)

    class Reader(reg.Reader):
        metadata = Metadata()

        def read(self, series, c):
            return images[series]

    out: dict = {}
    try:
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = {} if max_shift is None else {"max_shift": max_shift}  # um = px here
            aligner = reg.EdgeAligner(Reader(), channel=0, do_make_thumbnail=False, **kw)
            aligner.run()
        placed = aligner.positions + aligner.origin  # undo ASHLAR's move of the origin to 0
        out["positions"] = [[float(x), float(y)] for y, x in placed]
    except Exception as exc:  # the peer's failure is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"[:300]
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = proc_status_mb("VmHWM")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="+", help="stage.csv OUT.json, repeated")
    parser.add_argument("--max-shift", type=float, default=None,
                        help="ASHLAR's max_shift in px (default: its own, 15)")  # fmt: skip
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        parser.error("give stage.csv and OUT.json in pairs")
    for stage_csv, out_json in zip(args.pairs[::2], args.pairs[1::2], strict=True):
        out = _register(Path(stage_csv), args.max_shift)
        Path(out_json).write_text(json.dumps(out))
        print(json.dumps({k: v for k, v in out.items() if k != "positions"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
