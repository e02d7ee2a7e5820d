"""Figures of the redundancy analysis (``analyze_redundancy.py``).

Every function takes plain Python / numpy data (dicts keyed by stack name,
lists, arrays) and returns a :class:`matplotlib.figure.Figure`. They use
matplotlib's object-oriented API only (no ``pyplot``), so they need no display
and leave the global backend alone; :func:`save_figure` writes a PNG through
the Agg canvas.

Shared pieces (colours, :func:`save_figure`, :func:`short_name`) live in
:mod:`.plot_utils` and are re-exported here. Most functions accept an optional
``ax`` (or ``axes``) to draw into an existing figure; :func:`plot_overview`
uses that to put four panels on one page.

Stacks ("groups") are named as in the model, e.g. ``'backbone.layer2.attn'``;
rows of the grids follow the order of the dicts passed in.
"""
import math
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .plot_utils import (EMPTY_COLOR, KEPT_COLOR, PRUNED_BEFORE_COLOR,
                         PRUNED_NOW_COLOR, REDUNDANT_COLOR, annotate_grid,
                         colormap, new_axes, row_of_axes, save_figure,
                         short_name, stack_grid)

__all__ = [
    'save_figure', 'short_name', 'colormap', 'stack_grid', 'plot_kl_heatmap',
    'plot_pairwise_kl', 'plot_beta_fit', 'plot_mask', 'plot_attention',
    'plot_overview'
]


def plot_kl_heatmap(
        scores: Mapping[str, Sequence[Optional[float]]],
        ax: Optional[Axes] = None,
        title: str = 'Adjacent-unit KL (low = redundant)') -> Figure:
    """Heatmap of the redundancy scores D_b: rows = stacks, columns = units.

    Args:
        scores: ``{stack: [D_0, D_1, ...]}`` with None (blank cell) for units
            without a score: the first unit of a stack and pruned units.
    """
    grid, labels = stack_grid(scores)
    fig, ax = new_axes(
        ax, (1.2 + 0.55 * grid.shape[1], 1.2 + 0.45 * grid.shape[0]))
    masked = np.ma.masked_invalid(grid)
    cmap = colormap('viridis').with_extremes(bad=EMPTY_COLOR)
    im = ax.imshow(masked, cmap=cmap, aspect='auto', interpolation='nearest')
    annotate_grid(ax, grid, '.2g')
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xlabel('unit (block / level) index')
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label='KL(P_prev || A_b)', shrink=0.8)
    return fig


def plot_pairwise_kl(matrices: Mapping[str, np.ndarray],
                     units: Optional[Mapping[str, Sequence[int]]] = None,
                     axes: Optional[Sequence[Axes]] = None) -> Figure:
    """Per stack, the matrix ``M[a, b] = KL(P_a || A_b)`` of kept units a < b.

    Args:
        matrices: ``{stack: [K, K] array}`` (K kept units); entries with a >= b
            are NaN and drawn blank.
        units: ``{stack: [unit index of row/column k]}``; default 0..K-1.
        axes: one Axes per stack to draw into; default a new figure.
    """
    names = list(matrices)
    fig, axes = row_of_axes(len(names), 3.2, 3.2, axes)
    cmap = colormap('magma').with_extremes(bad=EMPTY_COLOR)
    for ax, name in zip(axes, names):
        m = np.asarray(matrices[name], dtype=np.float64)
        ticks = list(units[name]) if units is not None else list(
            range(m.shape[0]))
        im = ax.imshow(
            np.ma.masked_invalid(m), cmap=cmap, interpolation='nearest')
        annotate_grid(ax, m, '.2g', max_cells=64, fontsize=6)
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel('later unit b', fontsize=8)
        ax.set_ylabel('earlier unit a', fontsize=8)
        ax.set_title(short_name(name), fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.7)
    return fig


def plot_beta_fit(z: Sequence[float],
                  cdf: Sequence[float],
                  alpha: Optional[float],
                  beta: Optional[float],
                  quantile: float,
                  pruned: Optional[Sequence[bool]] = None,
                  labels: Optional[Sequence[str]] = None,
                  fit_method: str = '',
                  ax: Optional[Axes] = None) -> Figure:
    """The fitted Beta CDF, the candidates' scaled scores, the quantile line.

    Args:
        z: the candidates' scaled scores z' in (0, 1) (min-max scaled, then the
            Smithson-Verkuilen correction), one per candidate.
        cdf: the Beta CDF value p of each candidate.
        alpha, beta: the fitted Beta parameters (None/NaN = no fit).
        quantile: EBQM's quantile; candidates below it are redundant.
        pruned: per candidate, whether EBQM pruned it.
        labels: per candidate, a short label such as ``'layer3.4'``.
    """
    from scipy import stats
    fig, ax = new_axes(ax, (5.5, 3.8))
    z = np.asarray(z, dtype=np.float64)
    cdf = np.asarray(cdf, dtype=np.float64)
    fitted = alpha is not None and beta is not None and \
        math.isfinite(alpha) and math.isfinite(beta)
    if fitted:
        xs = np.linspace(1e-4, 1 - 1e-4, 400)
        ax.plot(
            xs,
            stats.beta.cdf(xs, alpha, beta),
            color='black',
            lw=1.5,
            label=f'Beta CDF (a={alpha:.3g}, b={beta:.3g}'
            f'{", " + fit_method if fit_method else ""})')
    ax.axhline(
        quantile,
        color=PRUNED_NOW_COLOR,
        ls='--',
        lw=1,
        label=f'quantile {quantile:g}')
    if z.size:
        is_pruned = np.zeros(z.size, bool) if pruned is None else \
            np.asarray(pruned, bool)
        redundant = cdf < quantile
        colors = np.where(is_pruned, PRUNED_NOW_COLOR,
                          np.where(redundant, REDUNDANT_COLOR, KEPT_COLOR))
        ax.scatter(
            z,
            cdf,
            c=list(colors),
            s=28,
            zorder=3,
            edgecolors='black',
            linewidths=0.4)
        if labels is not None and z.size <= 40:
            order = np.argsort(z)
            for rank, k in enumerate(order):
                # alternate below / above the point: neighbours do not overlap
                dy = -9 if rank % 2 == 0 else 4
                ax.annotate(
                    labels[k], (z[k], cdf[k]),
                    xytext=(4, dy),
                    textcoords='offset points',
                    fontsize=6)
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color=PRUNED_NOW_COLOR, label='pruned'),
        Patch(color=REDUNDANT_COLOR, label='redundant, kept by a safeguard'),
        Patch(color=KEPT_COLOR, label='kept (above quantile)')
    ]
    ax.legend(handles=handles, fontsize=7, loc='lower right')
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("scaled score z'")
    ax.set_ylabel('Beta CDF p')
    ax.set_title('EBQM: Beta fit of the candidates', fontsize=10)
    return fig


def plot_mask(mask: Mapping[str, Sequence[bool]],
              newly_pruned: Optional[Sequence[Tuple[str, int]]] = None,
              ax: Optional[Axes] = None,
              title: str = 'Layer-attention units') -> Figure:
    """Kept / pruned grid: one row per stack, one column per unit.

    Args:
        mask: ``{stack: [kept, ...]}``.
        newly_pruned: ``[(stack, index)]`` pruned in this round (drawn red);
            other pruned units are drawn grey.
    """
    names = list(mask)
    width = max((len(m) for m in mask.values()), default=1)
    grid = np.full((len(names), max(width, 1)), 3.0)  # 3 = no unit
    now = {(g, int(i)) for g, i in (newly_pruned or [])}
    for r, name in enumerate(names):
        for i, kept in enumerate(mask[name]):
            grid[r, i] = 0.0 if kept else (1.0 if (name, i) in now else 2.0)
    fig, ax = new_axes(ax,
                       (1.2 + 0.5 * grid.shape[1], 1.0 + 0.45 * grid.shape[0]))
    cmap = ListedColormap(
        [KEPT_COLOR, PRUNED_NOW_COLOR, PRUNED_BEFORE_COLOR, EMPTY_COLOR])
    ax.imshow(
        grid,
        cmap=cmap,
        vmin=-0.5,
        vmax=3.5,
        aspect='auto',
        interpolation='nearest')
    ax.set_xticks(np.arange(-0.5, grid.shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, grid.shape[0], 1), minor=True)
    ax.grid(which='minor', color='white', lw=1.5)
    ax.tick_params(which='minor', length=0)
    ax.set_yticks(
        range(len(names)), [short_name(n) for n in names], fontsize=8)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xlabel('unit index')
    kept = int(sum(sum(bool(k) for k in m) for m in mask.values()))
    total = int(sum(len(m) for m in mask.values()))
    ax.set_title(f'{title}: {kept}/{total} kept', fontsize=10)
    handles = [Patch(color=KEPT_COLOR, label='kept')]
    if now:
        handles.append(Patch(color=PRUNED_NOW_COLOR, label='pruned now'))
    if any(v == 2.0 for v in grid.ravel()):
        handles.append(Patch(color=PRUNED_BEFORE_COLOR, label='pruned'))
    ax.legend(
        handles=handles,
        fontsize=7,
        loc='upper left',
        bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_attention(mean_attn: Mapping[str, np.ndarray],
                   units: Optional[Mapping[str, Sequence[int]]] = None,
                   axes: Optional[Sequence[Axes]] = None) -> Figure:
    """Mean attention distribution of every unit over its memory.

    Args:
        mean_attn: ``{stack: [K, K] array}``; row k is the mean (over samples,
            heads and batches) of unit k's distribution A over memory slots
            0..k (the kept units up to and including itself); NaN above the
            diagonal.
        units: ``{stack: [unit index of slot k]}``; default 0..K-1.
        axes: one Axes per stack; default a new figure.
    """
    names = list(mean_attn)
    fig, axes = row_of_axes(len(names), 3.0, 3.1, axes)
    cmap = colormap('Blues').with_extremes(bad=EMPTY_COLOR)
    im = None
    for ax, name in zip(axes, names):
        m = np.asarray(mean_attn[name], dtype=np.float64)
        ticks = list(units[name]) if units is not None else list(
            range(m.shape[0]))
        im = ax.imshow(
            np.ma.masked_invalid(m),
            cmap=cmap,
            vmin=0,
            vmax=1,
            interpolation='nearest')
        if m.size <= 64:
            for (r, c), v in np.ndenumerate(m):
                if np.isfinite(v):
                    ax.text(
                        c,
                        r,
                        f'{v:.2f}',
                        ha='center',
                        va='center',
                        fontsize=6,
                        color='white' if v > 0.5 else 'black')
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel('memory slot (unit)', fontsize=8)
        ax.set_ylabel('unit', fontsize=8)
        ax.set_title(short_name(name), fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.7, label='mean attention')
    return fig


def plot_overview(scores: Mapping[str, Sequence[Optional[float]]],
                  mask: Mapping[str, Sequence[bool]],
                  mean_attn: Mapping[str, np.ndarray],
                  beta_fit: Mapping[str, Any],
                  newly_pruned: Optional[Sequence[Tuple[str, int]]] = None,
                  units: Optional[Mapping[str, Sequence[int]]] = None,
                  title: str = '') -> Figure:
    """One page: the KL heatmap, the Beta fit, the mask, the attention maps.

    Args:
        scores, mask, newly_pruned: as in :func:`plot_kl_heatmap` /
            :func:`plot_mask`.
        mean_attn, units: as in :func:`plot_attention`.
        beta_fit: keyword arguments of :func:`plot_beta_fit` (``z``, ``cdf``,
            ``alpha``, ``beta``, ``quantile``, optional ``pruned``, ``labels``,
            ``fit_method``).
    """
    n = max(len(mean_attn), 1)
    fig = Figure(figsize=(max(11.0, 2.9 * n), 9.0), layout='constrained')
    gs = fig.add_gridspec(2, 1, height_ratios=[1.15, 1.0])
    top = gs[0].subgridspec(1, 2, width_ratios=[1.0, 1.0])
    left = top[0].subgridspec(2, 1)
    plot_kl_heatmap(scores, ax=fig.add_subplot(left[0]))
    plot_mask(mask, newly_pruned, ax=fig.add_subplot(left[1]))
    plot_beta_fit(ax=fig.add_subplot(top[1]), **beta_fit)
    bottom = gs[1].subgridspec(1, n)
    plot_attention(
        mean_attn, units, axes=[fig.add_subplot(bottom[i]) for i in range(n)])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
