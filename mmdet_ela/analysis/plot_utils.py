"""Shared pieces of the analysis figures: colours, saving, names, axes."""
import os
import os.path as osp
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    'KEPT_COLOR', 'PRUNED_NOW_COLOR', 'PRUNED_BEFORE_COLOR', 'REDUNDANT_COLOR',
    'EMPTY_COLOR', 'save_figure', 'short_name', 'stack_grid', 'colormap',
    'new_axes', 'row_of_axes', 'annotate_grid'
]

KEPT_COLOR = '#4c72b0'
PRUNED_NOW_COLOR = '#dd4444'
PRUNED_BEFORE_COLOR = '#999999'
REDUNDANT_COLOR = '#f0a030'
EMPTY_COLOR = '#f4f4f4'
#: (width, height) in inches.
FigSize = Tuple[float, float]


def save_figure(fig: Figure, path: str, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` (PNG by extension), creating the folder."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def short_name(group: str) -> str:
    """``'backbone.layer2.attn'`` -> ``'backbone.layer2'`` (drop ``.attn``)."""
    return group[:-len('.attn')] if group.endswith('.attn') else group


def _to_float(v: Any) -> float:
    return float('nan') if v is None else float(v)


def stack_grid(
    values: Mapping[str, Sequence[Optional[float]]]
) -> Tuple[np.ndarray, List[str]]:
    """Pad per-stack rows to one [num_stacks, max_units] array (NaN = none).

    Args:
        values: ``{stack: [v_0, v_1, ...]}``; None entries become NaN.

    Returns:
        (grid [S, T_max] float64, row labels)
    """
    names = list(values)
    width = max((len(v) for v in values.values()), default=0)
    grid = np.full((len(names), max(width, 1)), np.nan)
    for r, name in enumerate(names):
        row = [_to_float(v) for v in values[name]]
        grid[r, :len(row)] = row
    return grid, [short_name(n) for n in names]


def new_axes(ax: Optional[Axes], figsize: FigSize) -> Tuple[Figure, Axes]:
    """``ax`` and its figure, or a new figure of ``figsize`` with one axes."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout='constrained')
    return fig, fig.add_subplot()


def annotate_grid(ax: Axes,
                  grid: np.ndarray,
                  fmt: str,
                  max_cells: int = 200,
                  fontsize: float = 7) -> None:
    """Write each finite value of ``grid`` [R, C] in its cell (small grids)."""
    if grid.size > max_cells:
        return
    finite = grid[np.isfinite(grid)]
    mid = float(np.nanmean(finite)) if finite.size else 0.0
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(
                c,
                r,
                format(v, fmt),
                ha='center',
                va='center',
                fontsize=fontsize,
                color='white' if v < mid else 'black')


def colormap(name: str):
    """A copy of matplotlib's colormap ``name`` (safe to modify)."""
    import matplotlib
    return matplotlib.colormaps[name].copy()


def row_of_axes(n: int,
                width: float,
                height: float,
                axes: Optional[Sequence[Axes]] = None):
    """``(figure, axes)``: the given axes, or a new figure with n in a row."""
    if axes is not None:
        return axes[0].figure, axes
    fig = Figure(figsize=(width * max(n, 1), height), layout='constrained')
    return fig, [fig.add_subplot(1, max(n, 1), i + 1) for i in range(n)]
