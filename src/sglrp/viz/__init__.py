"""Figures for relevance maps: display maps, rendering, comparison grids and curve plots.

Every function accepts torch tensors (any device, with or without grad) and numpy arrays.
Nothing here touches ``matplotlib.pyplot``: figures are plain ``matplotlib.figure.Figure``
objects drawn with the Agg canvas, so no global matplotlib state is changed and no figure is
kept alive by a registry. Files are written atomically with :func:`sglrp.atomic.atomic_path`.

Display conventions (as in the SGLRP paper, Figs. 6-7):

- :func:`positive_map` keeps positive relevance only, summed over colour channels and divided
  by the largest channel-summed magnitude, so a map that is mostly negative shows up dark.
- :func:`signed_map` sums over channels and divides by ``max|.|``; it is rendered with a
  diverging colour map whose neutral colour sits exactly at zero (red = positive,
  blue = negative for ``"bwr"``).

Grid size rule (:func:`comparison_grid`): with ``n`` rows, ``m`` methods and cell size ``s``
inches, the figure is ``(m + 1) * s + CBAR_IN`` inches wide (the colour bar band only when
``colorbar=True``) and ``HEADER_IN + n * (s + ROW_TITLE_IN)`` inches high (the row title band
only when ``row_titles`` are given). The PNG is ``round(inches * dpi)`` pixels each way.
"""

from .curves import plot_curves
from .grid import CBAR_IN, HEADER_IN, ROW_TITLE_IN, comparison_grid, grid_size_px
from .maps import (
    denormalize,
    overlay,
    positive_map,
    render_positive,
    render_signed,
    save_figure,
    save_map_png,
    signed_map,
    to_image,
)
from .neurons import draw_graph, error_curves, neuron_grid, path_figure

__all__ = [
    "CBAR_IN",
    "HEADER_IN",
    "ROW_TITLE_IN",
    "comparison_grid",
    "denormalize",
    "draw_graph",
    "error_curves",
    "grid_size_px",
    "neuron_grid",
    "overlay",
    "path_figure",
    "plot_curves",
    "positive_map",
    "render_positive",
    "render_signed",
    "save_figure",
    "save_map_png",
    "signed_map",
    "to_image",
]
