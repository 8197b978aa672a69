"""Figures of the reports, drawn without a display (matplotlib's Agg canvas)."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def figure(size: tuple[float, float]) -> Figure:
    """A figure of ``size`` inches on an Agg canvas: no window, no global pyplot state."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig
