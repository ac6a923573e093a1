"""Figures as PNG bytes with matplotlib's Agg canvas: no pyplot, so nothing global to switch
or close, and no display needed. Low in the import order, for training and evaluation alike."""

from __future__ import annotations

import io
from typing import Any


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure of `width` x `height` inches at 100 dpi, drawn by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def to_png(figure: Any, laid_out: bool = False) -> bytes:
    """The figure, laid out tightly (unless the caller has `laid_out` it), as PNG bytes."""
    if not laid_out:
        figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
