"""Mean and spread over seeds per variant, and the markdown tables."""
import math
from typing import Any, Dict, List, Optional, Sequence

__all__ = [
    'mean_std', 'format_mean_std', 'aggregate', 'format_table',
    'format_round_table', 'format_choice_table'
]

METRICS = ('final_mAP', 'best_mAP', 'final_mAP_50', 'step_time',
           'step_time_after_prune', 'params', 'units_kept', 'units_pruned')


def mean_std(values: Sequence[Optional[float]]) -> Dict[str, Optional[float]]:
    """Mean and sample std (ddof=1) of the values that are not None.

    Returns:
        dict: ``mean``, ``std`` (None with fewer than 2 values) and ``n``.
    """
    vals = [float(v) for v in values if v is not None]
    n = len(vals)
    if n == 0:
        return dict(mean=None, std=None, n=0)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean)**2 for v in vals) / (n - 1)) \
        if n > 1 else None
    return dict(mean=mean, std=std, n=n)


def aggregate(results: Sequence[Dict[str, Any]],
              baseline: str = 'plain',
              metrics: Sequence[str] = METRICS) -> List[Dict[str, Any]]:
    """One row per variant (in first-seen order): statistics over its seeds.

    Args:
        results (list[dict]): run results (``variant``, ``seed`` and
            :data:`METRICS`).
        baseline (str): the variant whose mean step time is the unit of
            ``time_ratio``. Default: 'plain'.
        metrics (list[str]): the keys to summarise. Default: :data:`METRICS`.

    Returns:
        list[dict]: ``variant``, ``seeds``, one :func:`mean_std` dict per
        metric, and ``time_ratio`` (None without the baseline).
    """
    order: List[str] = []
    for r in results:
        if r['variant'] not in order:
            order.append(r['variant'])
    rows = []
    for name in order:
        runs = [r for r in results if r['variant'] == name]
        row: Dict[str, Any] = dict(
            variant=name, seeds=sorted(r['seed'] for r in runs))
        for key in metrics:
            row[key] = mean_std([r.get(key) for r in runs])
        rows.append(row)
    if 'step_time' not in metrics:
        return rows
    base = next((r for r in rows if r['variant'] == baseline), None)
    base_time = base['step_time']['mean'] if base else None
    for row in rows:
        t = row['step_time']['mean']
        row['time_ratio'] = t / base_time if t and base_time else None
    return rows


def format_mean_std(stat: Dict[str, Optional[float]],
                    fmt: str = '.3f',
                    scale: float = 1.0) -> str:
    """``mean ± std`` of a :func:`mean_std` dict (``-`` without values)."""
    if stat['mean'] is None:
        return '-'
    text = format(stat['mean'] * scale, fmt)
    if stat['std'] is not None:
        text += ' ± ' + format(stat['std'] * scale, fmt.lstrip('+'))
    return text


def format_table(rows: Sequence[Dict[str, Any]],
                 docs: Optional[Dict[str, str]] = None) -> str:
    """A markdown table of :func:`aggregate`'s rows: mean ± std over seeds.

    Args:
        rows (list[dict]): from :func:`aggregate`.
        docs (dict, optional): one-line description per variant. Default: None.
    """
    head = [
        'variant', 'seeds', 'final bbox mAP', 'best bbox mAP',
        'mAP@0.5 (final)', 'train step (ms)', 'time / plain',
        'step after pruning (ms)', 'params', 'units kept', 'units pruned'
    ]
    lines = [
        '| ' + ' | '.join(head) + ' |',
        '|' + '|'.join(['---'] * len(head)) + '|'
    ]
    for row in rows:
        ratio = row['time_ratio']
        cells = [
            f'`{row["variant"]}`',
            str(len(row['seeds'])),
            format_mean_std(row['final_mAP']),
            format_mean_std(row['best_mAP']),
            format_mean_std(row['final_mAP_50']),
            format_mean_std(row['step_time'], '.1f', 1000),
            '-' if ratio is None else f'{ratio:.2f}',
            format_mean_std(row['step_time_after_prune'], '.1f', 1000),
            format_mean_std(row['params'], ',.0f'),
            format_mean_std(row['units_kept'], '.1f'),
            format_mean_std(row['units_pruned'], '.1f')
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    if docs:
        lines.append('')
        lines += [
            f'- `{row["variant"]}`: {docs[row["variant"]]}' for row in rows
            if row['variant'] in docs
        ]
    return '\n'.join(lines) + '\n'


def format_round_table(results: Sequence[Dict[str, Any]]) -> str:
    """Mean mAP over seeds at every validation round, per variant, with the
    variant's rank at that round (1 = highest): how the order of the variants
    moves during training.

    Args:
        results (list[dict]): run results with ``val_mAP`` (``[[epoch, mAP],
            ...]``); a round counts only where every seed of the variant has
            it.
    """
    rows: Dict[str, Dict[int, List[float]]] = {}
    for r in results:
        per_round = rows.setdefault(r['variant'], {})
        for step, value in r.get('val_mAP') or []:
            per_round.setdefault(int(step), []).append(float(value))
    seeds = {v: sum(1 for r in results if r['variant'] == v) for v in rows}
    steps = sorted({s for per_round in rows.values() for s in per_round})
    means = {
        v: {
            s: sum(vals) / len(vals)
            for s, vals in per_round.items() if len(vals) == seeds[v]
        }
        for v, per_round in rows.items()
    }
    lines = [
        '| variant | ' + ' | '.join(f'epoch {s}' for s in steps) + ' |',
        '|' + '|'.join(['---'] * (len(steps) + 1)) + '|'
    ]
    for variant, by_step in means.items():
        cells = [f'`{variant}`']
        for s in steps:
            if s not in by_step:
                cells.append('-')
                continue
            rank = 1 + sum(
                1 for m in means.values() if m.get(s, -1.0) > by_step[s])
            cells.append(f'{by_step[s]:.3f} ({rank})')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def format_choice_table(summary: Dict[str, Any]) -> str:
    """A markdown table of the pruning-choice check: mAP and drop per set.

    Rows: the unpruned model, EBQM's set, the top-score set and the random
    sets (mean ± std over the sets, with their range).
    """
    stages = list(summary['stages'])
    sel = summary['selections']
    head = ['selection', 'units removed', 'mean KL of removed']
    for stage in stages:
        head += [f'mAP ({stage})', f'drop ({stage})']
    lines = [
        '| ' + ' | '.join(head) + ' |',
        '|' + '|'.join(['---'] * len(head)) + '|'
    ]
    rand = [k for k in sel if k.startswith('random')]
    groups = [('none', ['none']), ('ebqm', ['ebqm']), ('top', ['top'])]
    if rand:
        groups.append((f'random ({len(rand)} sets)', rand))
    for label, names in groups:
        recs = [sel.get(n, dict(num_units=0, mean_score=None)) for n in names]
        cells = [
            f'`{label}`',
            format_mean_std(mean_std([r['num_units'] for r in recs]), '.1f'),
            format_mean_std(mean_std([r['mean_score'] for r in recs]), '.4g')
        ]
        for stage in stages:
            maps = summary['stages'][stage]
            base = maps.get('none')
            vals = [maps.get(n) for n in names]
            drops = [
                None if v is None or base is None else v - base for v in vals
            ]
            span = ''
            if len(names) > 1 and None not in drops:
                span = f' [{min(drops):+.3f}, {max(drops):+.3f}]'
            cells += [
                format_mean_std(mean_std(vals)),
                format_mean_std(mean_std(drops), '+.3f') + span
            ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'
