"""What the samples of a TIFF page are (:attr:`~scopefx.io.ImageMetadata.samples`), from its
tags alone: a leaf module, so the plain-TIFF and the OME-TIFF (vendor) readers share it without
importing each other."""

from __future__ import annotations

from typing import Any

__all__ = ["tiff_samples"]

#: TIFF photometric interpretations whose samples are no RGB (ImageMetadata.samples).
_TIFF_MODELS = {5: "cmyk", 6: "ycbcr", 8: "lab", 9: "lab", 10: "lab"}


def tiff_samples(page: Any) -> str | None:
    """:attr:`ImageMetadata.samples` of a TIFF page, from its photometric interpretation and
    extra samples. JPEG-compressed YCbCr is decoded to RGB."""
    n = int(page.samplesperpixel)
    if n == 1:
        return None
    photometric = int(page.photometric)
    extras = [int(e) for e in page.extrasamples]
    alpha = extras[:1] in ([1], [2])  # associated or unassociated alpha
    if photometric == 6 and n == 3 and int(page.compression) == 7:
        photometric = 2
    if photometric == 2:  # RGB
        return "rgb" if n == 3 else "rgba" if n == 4 and alpha else "channels"
    if photometric in (0, 1):  # grey
        return "grey+alpha" if n == 2 and alpha else "channels"
    return _TIFF_MODELS.get(photometric, "other")
