"""Read one finished run: its scalar log, pruning records and model size.

Everything here reads what a normal ``tools/train.py`` run leaves in its work
dir: mmengine's ``<timestamp>/vis_data/scalars.json`` (one JSON object per
line: training entries carry ``loss``, ``lr`` and ``time``, validation entries
``coco/bbox_mAP``...) and ``ELAPruneHook``'s ``ela_prune/round_K.json``.
"""
import glob
import json
import os.path as osp
import statistics
from typing import Any, Dict, List, Optional, Sequence

__all__ = [
    'read_scalars', 'step_time', 'val_metrics', 'read_records', 'model_size',
    'summarise_run'
]


def read_scalars(work_dir: str) -> List[dict]:
    """Every entry of the run's ``scalars.json`` logs, oldest log first.

    A resumed run has one log folder per start; all are read, in time order.

    Raises:
        FileNotFoundError: no ``*/vis_data/scalars.json`` under ``work_dir``
            (the config needs mmengine's ``LocalVisBackend``).
    """
    files = sorted(
        glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not files:
        raise FileNotFoundError(
            f'no */vis_data/scalars.json under {work_dir}: the config\'s '
            'visualizer needs a LocalVisBackend')
    entries = []
    for path in files:
        with open(path) as f:
            entries += [json.loads(line) for line in f if line.strip()]
    return entries


def step_time(entries: Sequence[dict],
              skip_iters: int = 20,
              after: Optional[int] = None) -> Optional[float]:
    """Median of the logged per-iteration training ``time`` (seconds).

    Args:
        entries (list[dict]): from :func:`read_scalars`.
        skip_iters (int): leave out entries logged at iteration
            ``<= skip_iters`` (start-up: workers, allocator, caches). When
            that leaves nothing, the later half of the entries is used.
            Default: 20.
        after (int, optional): only entries after this iteration (e.g. the
            pruning round's). Default: None.

    Returns:
        float or None: None when nothing was logged.
    """
    train = [e for e in entries if 'time' in e and 'loss' in e]
    if after is not None:
        train = [e for e in train if e['step'] > after]
    kept = [e for e in train if e['step'] > skip_iters]
    if not kept:
        kept = train[len(train) // 2:]
    return statistics.median(e['time'] for e in kept) if kept else None


def val_metrics(entries: Sequence[dict],
                key: str = 'coco/bbox_mAP') -> List[dict]:
    """The validation entries that hold ``key``, one per step, in order."""
    by_step = {e['step']: e for e in entries if key in e}
    return [by_step[s] for s in sorted(by_step)]


def read_records(work_dir: str) -> List[dict]:
    """``ELAPruneHook``'s round records of the run, in order ([] if none)."""
    from mmdet_ela.pruning import load_records
    folder = osp.join(work_dir, 'ela_prune')
    try:
        return list(load_records(folder)) if osp.isdir(folder) else []
    except FileNotFoundError:
        return []


def model_size(model_cfg: dict,
               mask: Optional[Dict[str, List[bool]]]) -> Dict[str, int]:
    """Parameters and units of ``model_cfg`` built, then pruned to ``mask``.

    Args:
        model_cfg (dict): a detector config (``cfg.model``); no weights load.
        mask (dict, optional): ``{stack: [kept, ...]}``; None = dense.

    Returns:
        dict: ``params_dense``, ``params``, ``units_total``, ``units_kept``.
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmdet_ela  # noqa: F401  (registers the ELA modules)
    from mmdet_ela.pruning import apply_masks, count_units
    register_all_modules(init_default_scope=False)
    model = MODELS.build(model_cfg)
    dense = sum(p.numel() for p in model.parameters())
    if mask:
        apply_masks(model, mask)
    units = count_units(model)
    return dict(
        params_dense=dense,
        params=sum(p.numel() for p in model.parameters()),
        units_total=units['total'],
        units_kept=units['kept'])


def _prune_iter(entries: Sequence[dict], epoch: int) -> Optional[int]:
    """The last training iteration logged in ``epoch`` (or before)."""
    steps = [
        e['step'] for e in entries
        if 'loss' in e and e.get('epoch', 0) <= epoch
    ]
    return max(steps) if steps else None


def summarise_run(work_dir: str,
                  model_cfg: dict,
                  skip_iters: int = 20) -> Dict[str, Any]:
    """The numbers the ablation records for one finished run.

    Returns:
        dict: ``final_mAP``, ``best_mAP``, ``best_step``, ``final_mAP_50``,
        ``best_mAP_50``, ``step_time``, ``step_time_after_prune``,
        ``prune_epoch``, ``pruned_units``, parameters and units (see
        :func:`model_size`).
    """
    entries = read_scalars(work_dir)
    vals = val_metrics(entries)
    if not vals:
        raise ValueError(f'{work_dir}: the log holds no coco/bbox_mAP; did '
                         'the run validate?')
    best = max(vals, key=lambda e: e['coco/bbox_mAP'])
    records = [r for r in read_records(work_dir) if not r.get('dry_run')]
    pruned = [f'{g}.{i}' for r in records for g, i in r['newly_pruned']]
    first = next((r for r in records if r['newly_pruned']), None)
    prune_epoch = None if first is None else int(first['progress'])
    after = None if first is None else _prune_iter(entries, prune_epoch)
    out = dict(
        final_mAP=vals[-1]['coco/bbox_mAP'],
        final_mAP_50=vals[-1].get('coco/bbox_mAP_50'),
        best_mAP=best['coco/bbox_mAP'],
        best_mAP_50=best.get('coco/bbox_mAP_50'),
        best_step=best['step'],
        val_mAP=[[e['step'], e['coco/bbox_mAP']] for e in vals],
        step_time=step_time(entries, skip_iters),
        step_time_after_prune=None if after is None else step_time(
            entries, skip_iters, after=after),
        prune_epoch=prune_epoch,
        pruned_units=pruned)
    out.update(model_size(model_cfg, records[-1]['mask'] if records else None))
    out['units_pruned'] = out['units_total'] - out['units_kept']
    return out
