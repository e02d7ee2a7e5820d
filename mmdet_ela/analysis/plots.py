"""Plotting helpers for ``tools/analysis/benchmark.py`` and ``analyze_redundancy.py``.

Every function takes plain Python / numpy data (dicts keyed by stack name, lists,
arrays) and returns a :class:`matplotlib.figure.Figure`. They use matplotlib's
object-oriented API only (no ``pyplot``), so they need no display and leave the
global backend alone; :func:`save_figure` writes a PNG through the Agg canvas.

Most functions accept an optional ``ax`` (or ``axes``) to draw into an existing
figure; :func:`plot_overview` uses that to put four panels on one page.

Stacks ("groups") are named as in the model, e.g. ``'backbone.layer2.attn'``; rows
of the grids follow the order of the dicts passed in.
"""
import math
import os
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    'save_figure', 'short_name', 'stack_grid', 'plot_kl_heatmap',
    'plot_pairwise_kl', 'plot_beta_fit', 'plot_mask', 'plot_attention',
    'plot_records', 'plot_overview', 'plot_benchmark'
]

KEPT_COLOR = '#4c72b0'
PRUNED_NOW_COLOR = '#dd4444'
PRUNED_BEFORE_COLOR = '#999999'
REDUNDANT_COLOR = '#f0a030'
EMPTY_COLOR = '#f4f4f4'


def save_figure(fig: Figure, path: str, dpi: int = 120) -> str:
    """Write ``fig`` to ``path`` (PNG by extension), creating the folder."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def short_name(group: str) -> str:
    """``'backbone.layer2.attn'`` -> ``'backbone.layer2'`` (drop a final ``.attn``)."""
    return group[:-len('.attn')] if group.endswith('.attn') else group


def _to_float(v: Any) -> float:
    return float('nan') if v is None else float(v)


def stack_grid(values: Mapping[str, Sequence[Optional[float]]]
               ) -> Tuple[np.ndarray, List[str]]:
    """Pad per-stack rows to one [num_stacks, max_units] array (NaN = no value).

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


def _new_axes(ax: Optional[Axes], figsize: Tuple[float, float]
              ) -> Tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout='constrained')
    return fig, fig.add_subplot()


def _annotate_grid(ax: Axes, grid: np.ndarray, fmt: str, max_cells: int = 200,
                   fontsize: float = 7) -> None:
    if grid.size > max_cells:
        return
    finite = grid[np.isfinite(grid)]
    mid = float(np.nanmean(finite)) if finite.size else 0.0
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(c, r, format(v, fmt), ha='center', va='center',
                    fontsize=fontsize,
                    color='white' if v < mid else 'black')


def plot_kl_heatmap(scores: Mapping[str, Sequence[Optional[float]]],
                    ax: Optional[Axes] = None,
                    title: str = 'Adjacent-unit KL (low = redundant)'
                    ) -> Figure:
    """Heatmap of the redundancy scores D_b, one row per stack, one column per unit.

    Args:
        scores: ``{stack: [D_0, D_1, ...]}`` with None (blank cell) for units
            without a score: the first unit of a stack and pruned units.
    """
    grid, labels = stack_grid(scores)
    fig, ax = _new_axes(ax, (1.2 + 0.55 * grid.shape[1],
                             1.2 + 0.45 * grid.shape[0]))
    masked = np.ma.masked_invalid(grid)
    cmap = _cmap('viridis').with_extremes(bad=EMPTY_COLOR)
    im = ax.imshow(masked, cmap=cmap, aspect='auto', interpolation='nearest')
    _annotate_grid(ax, grid, '.2g')
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xlabel('unit (block / level) index')
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label='KL(P_prev || A_b)', shrink=0.8)
    return fig


def _cmap(name: str):
    import matplotlib
    return matplotlib.colormaps[name].copy()


def _row_of_axes(n: int, width: float, height: float,
                 axes: Optional[Sequence[Axes]] = None):
    """``(figure, axes)``: the given axes, or a new figure with n side by side."""
    if axes is not None:
        return axes[0].figure, axes
    fig = Figure(figsize=(width * max(n, 1), height), layout='constrained')
    return fig, [fig.add_subplot(1, max(n, 1), i + 1) for i in range(n)]


def plot_pairwise_kl(matrices: Mapping[str, np.ndarray],
                     units: Optional[Mapping[str, Sequence[int]]] = None,
                     axes: Optional[Sequence[Axes]] = None) -> Figure:
    """Per stack, the matrix ``M[a, b] = KL(P_a || A_b)`` between kept units a < b.

    Args:
        matrices: ``{stack: [K, K] array}`` (K kept units); entries with a >= b
            are NaN and drawn blank.
        units: ``{stack: [unit index of row/column k]}``; default 0..K-1.
        axes: one Axes per stack to draw into; default a new figure.
    """
    names = list(matrices)
    fig, axes = _row_of_axes(len(names), 3.2, 3.2, axes)
    cmap = _cmap('magma').with_extremes(bad=EMPTY_COLOR)
    for ax, name in zip(axes, names):
        m = np.asarray(matrices[name], dtype=np.float64)
        ticks = list(units[name]) if units is not None else list(
            range(m.shape[0]))
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap,
                       interpolation='nearest')
        _annotate_grid(ax, m, '.2g', max_cells=64, fontsize=6)
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
    """The fitted Beta CDF, the candidates' scaled scores and the quantile line.

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
    fig, ax = _new_axes(ax, (5.5, 3.8))
    z = np.asarray(z, dtype=np.float64)
    cdf = np.asarray(cdf, dtype=np.float64)
    fitted = alpha is not None and beta is not None and \
        math.isfinite(alpha) and math.isfinite(beta)
    if fitted:
        xs = np.linspace(1e-4, 1 - 1e-4, 400)
        ax.plot(xs, stats.beta.cdf(xs, alpha, beta), color='black', lw=1.5,
                label=f'Beta CDF (a={alpha:.3g}, b={beta:.3g}'
                f'{", " + fit_method if fit_method else ""})')
    ax.axhline(quantile, color=PRUNED_NOW_COLOR, ls='--', lw=1,
               label=f'quantile {quantile:g}')
    if z.size:
        is_pruned = np.zeros(z.size, bool) if pruned is None else \
            np.asarray(pruned, bool)
        redundant = cdf < quantile
        colors = np.where(is_pruned, PRUNED_NOW_COLOR,
                          np.where(redundant, REDUNDANT_COLOR, KEPT_COLOR))
        ax.scatter(z, cdf, c=list(colors), s=28, zorder=3,
                   edgecolors='black', linewidths=0.4)
        if labels is not None and z.size <= 40:
            order = np.argsort(z)
            for rank, k in enumerate(order):
                # alternate below / above the point so neighbours do not overlap
                dy = -9 if rank % 2 == 0 else 4
                ax.annotate(labels[k], (z[k], cdf[k]), xytext=(4, dy),
                            textcoords='offset points', fontsize=6)
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
    fig, ax = _new_axes(ax, (1.2 + 0.5 * grid.shape[1],
                             1.0 + 0.45 * grid.shape[0]))
    cmap = ListedColormap(
        [KEPT_COLOR, PRUNED_NOW_COLOR, PRUNED_BEFORE_COLOR, EMPTY_COLOR])
    ax.imshow(grid, cmap=cmap, vmin=-0.5, vmax=3.5, aspect='auto',
              interpolation='nearest')
    ax.set_xticks(np.arange(-0.5, grid.shape[1], 1), minor=True)
    ax.set_yticks(np.arange(-0.5, grid.shape[0], 1), minor=True)
    ax.grid(which='minor', color='white', lw=1.5)
    ax.tick_params(which='minor', length=0)
    ax.set_yticks(range(len(names)), [short_name(n) for n in names],
                  fontsize=8)
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
    ax.legend(handles=handles, fontsize=7, loc='upper left',
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
    fig, axes = _row_of_axes(len(names), 3.0, 3.1, axes)
    cmap = _cmap('Blues').with_extremes(bad=EMPTY_COLOR)
    im = None
    for ax, name in zip(axes, names):
        m = np.asarray(mean_attn[name], dtype=np.float64)
        ticks = list(units[name]) if units is not None else list(
            range(m.shape[0]))
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=0, vmax=1,
                       interpolation='nearest')
        if m.size <= 64:
            for (r, c), v in np.ndenumerate(m):
                if np.isfinite(v):
                    ax.text(c, r, f'{v:.2f}', ha='center', va='center',
                            fontsize=6, color='white' if v > 0.5 else 'black')
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_yticks(range(len(ticks)), ticks, fontsize=7)
        ax.set_xlabel('memory slot (unit)', fontsize=8)
        ax.set_ylabel('unit', fontsize=8)
        ax.set_title(short_name(name), fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.7, label='mean attention')
    return fig


def _record_units(records: Sequence[Mapping]) -> List[Tuple[str, int]]:
    seen: Dict[Tuple[str, int], None] = {}
    for rec in records:
        for d in rec.get('decisions', []):
            seen[(d['group'], int(d['index']))] = None
    return list(seen)


def plot_records(records: Sequence[Mapping]) -> Figure:
    """How the hook's scores and decisions evolve over its rounds.

    Args:
        records: the hook's ``round_K.json`` dicts (fields ``round``,
            ``progress``, ``decisions`` with ``group``, ``index``, ``score``,
            ``cdf``, ``pruned``), in round order.

    Top: each unit's score per round (a cross where it was pruned). Bottom: the
    mask after each round (kept / pruned in that round / pruned earlier).
    """
    records = list(records)
    units = _record_units(records)
    rounds = [int(r.get('round', i + 1)) for i, r in enumerate(records)]
    xlabels = [f'r{r}\n@{rec.get("progress", "?")}'
               for r, rec in zip(rounds, records)]
    fig = Figure(figsize=(max(6.0, 1.2 * len(records) + 4),
                          3.0 + 0.16 * len(units)), layout='constrained')
    gs = fig.add_gridspec(2, 1, height_ratios=[1.0, 0.25 + 0.04 * len(units)])
    ax_s = fig.add_subplot(gs[0])
    ax_m = fig.add_subplot(gs[1])

    state = np.full((len(units), len(records)), 3.0)
    by_group: Dict[str, List[int]] = {}
    for k, (g, i) in enumerate(units):
        by_group.setdefault(g, []).append(k)
    cmap = _cmap('tab10')
    for gi, (g, ks) in enumerate(by_group.items()):
        color = cmap(gi % 10)
        for k in ks:
            i = units[k][1]
            ys, xs, px, py = [], [], [], []
            for c, rec in enumerate(records):
                d = next((d for d in rec.get('decisions', [])
                          if d['group'] == g and int(d['index']) == i), None)
                if d is None:
                    continue
                state[k, c] = 1.0 if d.get('pruned') else (
                    2.0 if d.get('reason') == 'already pruned' else 0.0)
                if d.get('score') is not None:
                    xs.append(c)
                    ys.append(d['score'])
                    if d.get('pruned'):
                        px.append(c)
                        py.append(d['score'])
            if xs:
                ax_s.plot(xs, ys, '-o', color=color, ms=3, lw=1, alpha=0.8,
                          label=short_name(g) if k == ks[0] else None)
            if px:
                ax_s.scatter(px, py, marker='x', s=50, color=PRUNED_NOW_COLOR,
                             zorder=4)
    ax_s.set_xticks(range(len(records)), xlabels, fontsize=7)
    ax_s.set_ylabel('redundancy score D_b')
    ax_s.set_yscale('symlog', linthresh=1e-3)
    ax_s.set_title('Scores per round (x = pruned in that round)', fontsize=10)
    if by_group:
        ax_s.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))

    cmap_m = ListedColormap(
        [KEPT_COLOR, PRUNED_NOW_COLOR, PRUNED_BEFORE_COLOR, EMPTY_COLOR])
    ax_m.imshow(state.T, cmap=cmap_m, vmin=-0.5, vmax=3.5, aspect='auto',
                interpolation='nearest')
    ax_m.set_yticks(range(len(records)), [f'r{r}' for r in rounds],
                    fontsize=7)
    step = max(1, len(units) // 40)
    ax_m.set_xticks(range(0, len(units), step),
                    [f'{short_name(g).split(".")[-1]}.{i}'
                     for g, i in units][::step], rotation=90, fontsize=6)
    ax_m.set_title('Decisions per round', fontsize=10)
    ax_m.legend(handles=[Patch(color=KEPT_COLOR, label='kept'),
                         Patch(color=PRUNED_NOW_COLOR, label='pruned now'),
                         Patch(color=PRUNED_BEFORE_COLOR,
                               label='pruned earlier')],
                fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_overview(scores: Mapping[str, Sequence[Optional[float]]],
                  mask: Mapping[str, Sequence[bool]],
                  mean_attn: Mapping[str, np.ndarray],
                  beta_fit: Mapping[str, Any],
                  newly_pruned: Optional[Sequence[Tuple[str, int]]] = None,
                  units: Optional[Mapping[str, Sequence[int]]] = None,
                  title: str = '') -> Figure:
    """One page with the KL heatmap, the Beta fit, the mask and the attention maps.

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
    plot_attention(mean_attn, units,
                   axes=[fig.add_subplot(bottom[i]) for i in range(n)])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def plot_benchmark(results: Mapping[str, Any]) -> Figure:
    """Bar charts of a ``benchmark.py`` result: time, memory, FLOPs, parameters.

    Args:
        results: the JSON dict written by ``tools/analysis/benchmark.py``; uses
            ``results['variants'][name]`` fields ``label``, ``train_ms``,
            ``infer_ms``, ``peak_mem_mb`` (or, when present, ``step_rss_mb``),
            ``flops``, ``params`` and the ``*_ratio`` fields (ratios to the
            plain ResNet).
    """
    variants = results['variants']
    names = list(variants)
    labels = [variants[n].get('label', n).replace(' (', '\n(') for n in names]
    settings = results.get('settings', {})
    # On CPU the process peak RSS is mostly libraries: show the step's share.
    if any(v.get('step_rss_mb') is not None for v in variants.values()):
        memory = ('step_rss_mb', 'train-step RSS growth (MB)',
                  'step_rss_ratio')
    else:
        memory = ('peak_mem_mb', 'train-step peak memory (MB)',
                  'peak_mem_ratio')
    panels = [
        ('train_ms', 'train step (ms, median)', 'train_ratio'),
        ('infer_ms', 'inference (ms, median)', 'infer_ratio'),
        memory,
        ('flops', 'GFLOPs per image', 'flops_ratio'),
        ('params', 'parameters (M)', 'params_ratio'),
    ]
    fig = Figure(figsize=(3.0 * len(panels), 3.8), layout='constrained')
    colors = ['#777777', '#4c72b0', '#55a868', '#c44e52', '#8172b2']
    for k, (field, title, ratio_field) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        vals = []
        for n in names:
            v = variants[n].get(field)
            if v is not None and field == 'flops':
                v = v / 1e9
            elif v is not None and field == 'params':
                v = v / 1e6
            vals.append(float('nan') if v is None else float(v))
        bars = ax.bar(range(len(names)), vals,
                      color=colors[:len(names)] if len(names) <= 5 else None)
        for b, n, v in zip(bars, names, vals):
            ratio = variants[n].get(ratio_field)
            if math.isfinite(v):
                text = f'{v:.3g}' + (f'\n{ratio:.2f}x' if ratio is not None
                                     else '')
                ax.text(b.get_x() + b.get_width() / 2, v, text,
                        ha='center', va='bottom', fontsize=7)
        ax.set_xticks(range(len(names)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.2)
    fig.suptitle(
        f'{settings.get("model", "")} R-{settings.get("depth", "")}, '
        f'{settings.get("img_size", "")}px, batch {settings.get("batch_size", "")}, '
        f'{settings.get("device_name", settings.get("device", ""))}, '
        f'{settings.get("threads", "")} threads (ratio = x plain ResNet)',
        fontsize=9)
    return fig
