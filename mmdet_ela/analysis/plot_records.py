"""How the pruning hook's scores and decisions evolve over its rounds.

Takes the hook's round records (``load_records``) as plain dicts; see
:mod:`mmdet_ela.analysis.plots` for the conventions.
"""
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .plot_utils import (EMPTY_COLOR, KEPT_COLOR, PRUNED_BEFORE_COLOR,
                         PRUNED_NOW_COLOR, colormap, short_name)

__all__ = ['plot_records']


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
    xlabels = [
        f'r{r}\n@{rec.get("progress", "?")}'
        for r, rec in zip(rounds, records)
    ]
    fig = Figure(
        figsize=(max(6.0, 1.2 * len(records) + 4), 3.0 + 0.16 * len(units)),
        layout='constrained')
    gs = fig.add_gridspec(2, 1, height_ratios=[1.0, 0.25 + 0.04 * len(units)])
    ax_s = fig.add_subplot(gs[0])
    ax_m = fig.add_subplot(gs[1])

    state = np.full((len(units), len(records)), 3.0)
    by_group: Dict[str, List[int]] = {}
    for k, (g, i) in enumerate(units):
        by_group.setdefault(g, []).append(k)
    cmap = colormap('tab10')
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
                ax_s.plot(
                    xs,
                    ys,
                    '-o',
                    color=color,
                    ms=3,
                    lw=1,
                    alpha=0.8,
                    label=short_name(g) if k == ks[0] else None)
            if px:
                ax_s.scatter(
                    px, py, marker='x', s=50, color=PRUNED_NOW_COLOR, zorder=4)
    ax_s.set_xticks(range(len(records)), xlabels, fontsize=7)
    ax_s.set_ylabel('redundancy score D_b')
    ax_s.set_yscale('symlog', linthresh=1e-3)
    ax_s.set_title('Scores per round (x = pruned in that round)', fontsize=10)
    if by_group:
        ax_s.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1.0))

    cmap_m = ListedColormap(
        [KEPT_COLOR, PRUNED_NOW_COLOR, PRUNED_BEFORE_COLOR, EMPTY_COLOR])
    ax_m.imshow(
        state.T,
        cmap=cmap_m,
        vmin=-0.5,
        vmax=3.5,
        aspect='auto',
        interpolation='nearest')
    ax_m.set_yticks(range(len(records)), [f'r{r}' for r in rounds], fontsize=7)
    step = max(1, len(units) // 40)
    ax_m.set_xticks(
        range(0, len(units), step),
        [f'{short_name(g).split(".")[-1]}.{i}' for g, i in units][::step],
        rotation=90,
        fontsize=6)
    ax_m.set_title('Decisions per round', fontsize=10)
    ax_m.legend(
        handles=[
            Patch(color=KEPT_COLOR, label='kept'),
            Patch(color=PRUNED_NOW_COLOR, label='pruned now'),
            Patch(color=PRUNED_BEFORE_COLOR, label='pruned earlier')
        ],
        fontsize=7,
        loc='upper left',
        bbox_to_anchor=(1.01, 1.0))
    return fig
