"""The mosaic preview (``scopefx.fusion.plot``): the scale its title states, its interpolation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scopefx.fusion.plot import plot_mosaic


def _stated(title: str) -> float:
    """Mosaic pixels per pixel of the picture, as ``"mosaic, 1:2.4"`` / ``"2:1"`` state."""
    a, b = re.fullmatch(r"mosaic, ([\d.]+):([\d.]+)", title).groups()  # type: ignore[union-attr]
    return float(b) / float(a)


@pytest.mark.parametrize(("shape", "factor"), [((900, 1200), 1), ((600, 400), 4), ((90, 120), 1)])
def test_the_title_states_the_scale_the_mosaic_is_drawn_at(tmp_path: Path, shape, factor):
    """A 1200 px wide level was drawn about 744 px wide under the title 'mosaic, 1:1' (the
    level's factor, not the picture's scale; review 36, F8), by nearest neighbour."""
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    fig = plot_mosaic(image, factor=factor)
    ax = fig.axes[0]
    fig.savefig(tmp_path / "p.png", bbox_inches="tight", pad_inches=0)
    with Image.open(tmp_path / "p.png") as im:
        width = im.size[0]  # the picture's width: the title is narrower
    per_px = _stated(ax.get_title())
    assert factor * shape[1] / width == pytest.approx(per_px, rel=0.05)
    scaled_down = width < shape[1]
    assert ax.images[0].get_interpolation() == ("antialiased" if scaled_down else "nearest")
