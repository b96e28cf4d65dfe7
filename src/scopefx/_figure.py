"""Matplotlib figures that show themselves in Jupyter, with or without ``%matplotlib inline``.

scopefx draws on :class:`matplotlib.figure.Figure` objects, never through pyplot, so plotting
has no global state and needs no display. IPython shows a plain ``Figure`` as an image only once
pyplot's inline backend has been loaded (``%matplotlib inline``, or ``import
matplotlib.pyplot``); in a fresh kernel it shows ``<Figure size 640x480 with 1 Axes>``.
:class:`NotebookFigure` adds ``_repr_png_``, which IPython uses when no other formatter claims
the figure, so the figure a plot function returns is shown either way (and once).
"""

from __future__ import annotations

import io
from typing import Any

from matplotlib.figure import Figure

__all__ = ["NotebookFigure", "new_figure"]


class NotebookFigure(Figure):
    """A :class:`~matplotlib.figure.Figure` that IPython displays as a PNG."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


def new_figure(**kwargs: Any) -> NotebookFigure:
    """A new figure (``kwargs`` as for :class:`~matplotlib.figure.Figure`)."""
    return NotebookFigure(**kwargs)
