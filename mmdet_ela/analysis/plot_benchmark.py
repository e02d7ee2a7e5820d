"""Bar charts of a benchmark's results (``tools/analysis/benchmark.py``)."""
import math
import textwrap
from typing import Any, Mapping

from matplotlib.figure import Figure

__all__ = ['plot_benchmark']


def plot_benchmark(results: Mapping[str, Any]) -> Figure:
    """Bar charts of a benchmark's results: time, memory, FLOPs, parameters.

    Args:
        results (Mapping): the JSON dict that
            ``tools/analysis/benchmark.py`` writes; uses
            ``results['variants'][name]`` fields ``label``, ``train_ms``,
            ``infer_ms``, ``peak_mem_mb`` (or, when present, ``step_rss_mb``),
            ``flops``, ``params`` and the ``*_ratio`` fields (ratios to the
            plain variant), and ``settings`` / ``environment`` for the
            title.
    """
    variants = results['variants']
    names = list(variants)
    labels = [
        textwrap.fill(
            variants[n].get('label', n),
            12,
            break_long_words=False,
            break_on_hyphens=False) for n in names
    ]
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
    # leave out what was not measured (--memory none, --no-flops)
    panels = [
        p for p in panels if any(
            v.get(p[0]) is not None for v in variants.values())
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
        bars = ax.bar(
            range(len(names)),
            vals,
            color=colors[:len(names)] if len(names) <= 5 else None)
        for b, n, v in zip(bars, names, vals):
            ratio = variants[n].get(ratio_field)
            if math.isfinite(v):
                text = f'{v:.3g}' + (f'\n{ratio:.2f}x'
                                     if ratio is not None else '')
                ax.text(
                    b.get_x() + b.get_width() / 2,
                    v,
                    text,
                    ha='center',
                    va='bottom',
                    fontsize=7)
        ax.set_xticks(range(len(names)), labels, fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.2)
    fig.suptitle(_title(results), fontsize=9)
    return fig


def _title(results: Mapping[str, Any]) -> str:
    """What was benchmarked, on what, from ``settings`` / ``environment``."""
    settings = results.get('settings', {})
    env = results.get('environment', {})
    what = settings.get('config') or f'ELAResNet-{settings.get("depth", "")}'
    size = 'x'.join(str(v) for v in settings.get('img_size', ()))
    return (f'{what} ({settings.get("model", "")}), {size}px, batch '
            f'{settings.get("batch_size", "")}, '
            f'{env.get("device_name", settings.get("device", ""))}, '
            f'{env.get("torch_threads", "")} threads (ratio = x plain)')
