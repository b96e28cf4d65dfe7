"""Reproducible sample data from real images bundled with scikit-image.

Nothing is downloaded: the images ship inside the installed ``scikit-image`` package. Each
synthetic step is documented and seeded so every test, benchmark and figure can be
regenerated:

1. :func:`bundled_image` reads a bundled image, converts colour to grey and mirror-tiles it
   (``numpy.pad(mode="symmetric")``) to the requested size, so its native pixel texture is kept.
2. :func:`defocus` blurs it with a Gaussian (``sigma = blur_per_unit * |defocus|``) or a disk
   (pillbox, ``radius = blur_per_unit * |defocus|``) point-spread function.
3. :func:`acquire` applies shot noise (Poisson, ``photons`` at full scale) and read noise
   (Gaussian, ``read_noise`` in grey levels) and quantises to uint8 or uint16.

Mosaics for fusion (:func:`make_mosaic`, :func:`write_mosaic`) cut overlapping tiles from such
an image at known (jittered, sub-pixel, rotated) positions; their steps are listed in
:mod:`scopefx.samples._mosaic`. The data of ``scopefx demo`` (:func:`make_demo_run`,
:func:`make_demo_mosaic`) are made from these steps, with planted faults.

Examples
--------
>>> from scopefx.samples import make_demo_run
>>> made = make_demo_run("demo")                   # doctest: +SKIP
>>> sorted(made)                                   # doctest: +SKIP
['planted', 'run', 'through_focus']
"""

from ._demo import make_demo_mosaic, make_demo_run
from ._images import (
    BUNDLED_IMAGES,
    acquire,
    bundled_image,
    defocus,
    partial_defocus,
    write_defocus_series,
)
from ._mosaic import SyntheticMosaic, make_mosaic, write_mosaic

__all__ = [
    "BUNDLED_IMAGES",
    "SyntheticMosaic",
    "acquire",
    "bundled_image",
    "defocus",
    "make_demo_mosaic",
    "make_demo_run",
    "make_mosaic",
    "partial_defocus",
    "write_defocus_series",
    "write_mosaic",
]
