"""Figures: the ablation (mAP against step time) and the pruning-choice check.

matplotlib's object-oriented API only (no ``pyplot``): no display needed, the
global backend is left alone; :func:`mmdet_ela.analysis.plots.save_figure`
writes the PNG through the Agg canvas.
"""
from typing import Any, Dict, Sequence

import matplotlib
from matplotlib.figure import Figure

__all__ = ['plot_ablation', 'plot_pruning_choice']


def _err(stat: Dict[str, Any], scale: float = 1.0) -> float:
    return 0.0 if stat['std'] is None else stat['std'] * scale


def plot_ablation(rows: Sequence[Dict[str, Any]],
                  metric: str = 'final_mAP',
                  title: str = '') -> Figure:
    """bbox mAP against train-step time: a point per variant, bars = std.

    Args:
        rows (list[dict]): from :func:`aggregate.aggregate`.
        metric (str): the mAP key on the y axis. Default: 'final_mAP'.
        title (str): the figure title. Default: ''.
    """
    fig = Figure(figsize=(6.4, 4.6), layout='constrained')
    ax = fig.add_subplot()
    # matplotlib's default cycle repeats after 10: tab20 for larger grids
    tab20 = matplotlib.colormaps['tab20'] if len(rows) > 10 else None
    for k, row in enumerate(rows):
        t, m = row['step_time'], row[metric]
        if t['mean'] is None or m['mean'] is None:
            continue
        color = f'C{k}' if tab20 is None else tab20(k % 20)
        ax.errorbar(
            t['mean'] * 1000,
            m['mean'],
            xerr=_err(t, 1000),
            yerr=_err(m),
            fmt='o',
            color=color,
            capsize=3,
            label=f'{row["variant"]} (n={m["n"]})')
        ax.annotate(
            row['variant'], (t['mean'] * 1000, m['mean']),
            textcoords='offset points',
            xytext=(5, 5),
            fontsize=8,
            color=color)
    ax.set_xlabel('train step time (ms, median per run; mean ± std)')
    ax.set_ylabel(f'bbox mAP ({metric.replace("_", " ")}; mean ± std)')
    ax.set_title(title or 'ablation: accuracy against training cost')
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=7, loc='best')
    return fig


def plot_pruning_choice(summary: Dict[str, Any], title: str = '') -> Figure:
    """mAP drop from the unpruned model per selection, per stage.

    Args:
        summary (dict): the pruning-choice result: ``stages`` maps
            ``'no fine-tune'`` / ``'fine-tuned'`` to ``{selection: mAP}``;
            random selections are named ``random-K`` and drawn as a
            distribution (points and their mean).
        title (str): the figure title. Default: ''.
    """
    stages = summary['stages']
    fig = Figure(
        figsize=(4.2 * max(len(stages), 1), 4.2), layout='constrained')
    axes = fig.subplots(1, max(len(stages), 1), squeeze=False)[0]
    for ax, (stage, maps) in zip(axes, stages.items()):
        base = maps.get('none')
        fixed = [k for k in maps if k != 'none' and not k.startswith('random')]
        rand = [
            maps[k] - base for k in maps if k.startswith('random')
            and maps[k] is not None and base is not None
        ]
        names = fixed + (['random'] if rand else [])
        for x, name in enumerate(fixed):
            if maps[name] is not None and base is not None:
                ax.bar(x, maps[name] - base, color=f'C{x}', width=0.6)
        if rand:
            x = len(fixed)
            ax.scatter(
                [x] * len(rand),
                rand,
                color='0.3',
                zorder=3,
                label=f'{len(rand)} random sets')
            ax.bar(x, sum(rand) / len(rand), color='0.8', width=0.6)
            ax.legend(fontsize=8)
        ax.axhline(0, color='k', lw=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel('bbox mAP - unpruned mAP')
        ax.set_title(stage)
        ax.grid(axis='y', alpha=0.3)
    fig.suptitle(title or 'which units to remove: mAP drop per selection')
    return fig
