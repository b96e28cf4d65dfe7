"""What the peer scripts share: reading a ``path,x,y`` tile table and its tiles, and this
process's memory from ``/proc``. Standard library plus NumPy (and tifffile / imageio where a
tile needs them), so it runs in the peers' own environment; it must not import scopefx."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def read_tiles(csv_path: Path) -> list[tuple[Path, float, float]]:
    """``(tile path, x, y)`` for every row of the tile table (paths relative to its folder)."""
    rows: list[tuple[Path, float, float]] = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "x", "y"} - set(reader.fieldnames or ())
        if missing:
            raise SystemExit(f"{csv_path}: missing column(s) {sorted(missing)}")
        for row in reader:
            path = Path(row["path"])
            if not path.is_absolute():
                path = csv_path.parent / path
            rows.append((path, float(row["x"]), float(row["y"])))
    if not rows:
        raise SystemExit(f"{csv_path}: no tiles")
    return rows


def read_grey(path: Path) -> Any:
    """A tile as a float32 2D array: TIFF with tifffile, anything else with imageio; colour
    summed over its channels (samples last, or channels first when more than 4)."""
    import numpy as np

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        data = tifffile.imread(path)
    else:
        import imageio.v3 as iio

        data = iio.imread(path)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 3:
        data = data.sum(axis=-1) if data.shape[-1] <= 4 else data.sum(axis=0)
    return data


def proc_status_mb(field: str) -> float | None:
    """A memory field of this process from ``/proc/self/status`` (``VmHWM``: peak RSS,
    ``VmRSS``: current RSS) in MB; None where /proc is unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None
