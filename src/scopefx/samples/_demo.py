"""The sample data of ``scopefx demo``: a sectioned run with planted faults, and a tile mosaic."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ._images import acquire, bundled_image, defocus, partial_defocus, write_defocus_series
from ._mosaic import make_mosaic, write_mosaic

__all__ = ["make_demo_mosaic", "make_demo_run"]

#: Sections of the demo run that are planted out of focus (|defocus| in blur px), and partial.
_PLANTED_OOF = {7: 4.0, 15: 3.0, 19: 5.0}
_PLANTED_PARTIAL = 11
_PLANTED_CORRUPT = 22


def make_demo_run(
    folder: str | os.PathLike[str], *, size: int = 512, sections: int = 24, seed: int = 0
) -> dict[str, Path]:
    """Write a through-focus series and an acquisition run of 8-bit TIFFs under ``folder``.

    The run is ``sections`` serial sections of scikit-image's bundled immunohistochemistry
    image (a histology section), each shifted a little and acquired with shot and read noise,
    mostly in focus (|defocus| <= 0.5), with sections 7, 15 and 19 out of focus, section 11 half
    out of focus (as a wrinkle or tilt would do) and section 22 a truncated file.

    Returns
    -------
    dict
        ``"through_focus"``: the series' defocus table (``path,defocus``), ``"run"``: the run's
        folder, ``"planted"``: a CSV of each section's planted truth (``path,planted``).
    """
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    through = folder / "through-focus"
    table = write_defocus_series(through, np.arange(-6, 6.5, 1.0), size=size, seed=seed)
    run = folder / "run"
    run.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    base = bundled_image("immunohistochemistry", size=size + 64)
    truth = []
    for i in range(sections):
        dy, dx = rng.integers(0, 64, size=2)
        section = base[dy : dy + size, dx : dx + size]
        amount = _PLANTED_OOF.get(i, float(rng.uniform(-0.5, 0.5)))
        if i == _PLANTED_PARTIAL:
            blurred, kind = partial_defocus(section, 5.0, fraction=0.5), "partial"
        else:
            blurred, kind = (
                defocus(section, amount),
                "out_of_focus" if i in _PLANTED_OOF else "in_focus",
            )
        path = run / f"section_{i:04d}.tif"
        tifffile.imwrite(path, acquire(blurred, photons=200, read_noise=2, seed=seed + 100 + i))
        if i == _PLANTED_CORRUPT:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 3])
            kind = "corrupt"
        truth.append((path.name, kind))
    with (folder / "planted.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("path", "planted"), *truth])
    return {"through_focus": table, "run": run, "planted": folder / "planted.csv"}


def make_demo_mosaic(folder: str | os.PathLike[str], *, tile_px: int = 384) -> Path:
    """A 4x4 mosaic cut from a bundled image at jittered sub-pixel positions, with detector
    noise; tile 5 is blurred (out of focus). Returns the tile table."""
    from scipy import ndimage

    m = make_mosaic(
        "immunohistochemistry", grid=(4, 4), tile_px=tile_px, overlap=0.15, jitter_px=3.0,
        subpixel=True, photons=400.0, read_noise=200.0, seed=7,
    )  # fmt: skip
    blurred = ndimage.gaussian_filter(m.tiles[5].astype(np.float32), 3.0)
    m.tiles[5] = np.rint(blurred).astype(m.tiles[5].dtype)
    return write_mosaic(Path(folder), m)
