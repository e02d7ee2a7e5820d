#!/usr/bin/env python
"""Analyse layer-attention redundancy: KL, EBQM fit, mask, attention maps.

Usage::

    # a trained (possibly pruned) model
    python tools/analysis/analyze_redundancy.py CONFIG CHECKPOINT --out-dir DIR
    # a config alone: random initialisation (no pretrained download)
    python tools/analysis/analyze_redundancy.py CONFIG --out-dir DIR
    # how the pruning hook's scores and decisions evolved during training
    python tools/analysis/analyze_redundancy.py --records WORK_DIR/ela_prune \\
        --out-dir DIR

With a config, the model is scored on ``--num-batches`` batches by the same
loop as ``ELAPruneHook`` (``mmdet_ela.pruning.score_model``): images from the
config's ``val_dataloader`` when it loads, otherwise random ``--img-size``
images (``--random-data`` forces that). Besides the adjacent-unit KL (the
pruning score) it gathers the pairwise KL of every pair of kept units and the
mean attention distribution of every unit, runs EBQM on the scores
(``--quantile`` / ``--max-prune-ratio`` / ``--min-keep``; defaults: the
config's ``ELAPruneHook``, else EBQM's own), prints the decision table and
writes to ``--out-dir``:

``kl_adjacent.png``   (a) heatmap of the adjacent-unit KL by stack and unit
``kl_pairwise.png``   pairwise KL matrices per stack
``ebqm_beta_fit.png`` (b) fitted Beta CDF, candidates' scaled scores, quantile
``mask.png``          (c) kept / pruned grid after EBQM on these scores
``attention.png``     (d) mean attention distribution of every unit
``overview.png``      (a)-(d) on one page
``summary.json``      all numbers above and the EBQM decisions

With ``--records DIR`` (the hook's ``ela_prune`` folder, or a work dir holding
one) it prints every round's table and writes ``records.png`` and a
``records`` entry in ``summary.json``. A config is then optional.

On a randomly initialised model the scores reflect random weights, not learned
redundancy; the figures then show the machinery, not a result.
"""
import argparse
import itertools
import json
import os
import os.path as osp
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch
from mmengine.config import DictAction
from torch import nn

from mmdet_ela.analysis.attention_stats import (AttentionStats,
                                                beta_fit_inputs, json_matrix)
from mmdet_ela.analysis.settings import (add_ebqm_arguments, ebqm_selector,
                                         load_config)
from mmdet_ela.analysis.variants import (BackboneModel, build_model,
                                         drop_pretrained, quiet_logs)
from mmdet_ela.analysis.workload import synthetic_batch
from mmdet_ela.pruning import (format_table, get_masks, load_records,
                               make_record, score_model)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Layer-attention redundancy analysis (KL, EBQM, masks, '
        'attention maps) of an ELA model, or of the pruning hook records.')
    p.add_argument('config', nargs='?', help='model config file')
    p.add_argument(
        'checkpoint',
        nargs='?',
        help='checkpoint (default: random initialisation)')
    p.add_argument('--out-dir', default='work_dirs/ela_analysis')
    p.add_argument('--num-batches', type=int, default=4)
    p.add_argument(
        '--batch-size',
        type=int,
        default=2,
        help='batch size of the random inputs')
    p.add_argument(
        '--img-size', type=int, default=224, help='size of the random inputs')
    p.add_argument(
        '--random-data',
        action='store_true',
        help='use random inputs even if the val dataloader builds')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0)
    add_ebqm_arguments(p)
    p.add_argument(
        '--records',
        default=None,
        help='folder with the hook\'s round_*.json files (or a '
        'work dir with ela_prune/)')
    p.add_argument('--title', default=None, help='title of overview.png')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    args = p.parse_args(argv)
    if args.config is None and args.records is None:
        p.error('give a config (and optionally a checkpoint), --records, '
                'or both')
    if args.num_batches < 1 or args.batch_size < 1 or args.img_size < 1:
        p.error('--num-batches, --batch-size and --img-size must be >= 1')
    return args


def build(cfg, args: argparse.Namespace) -> nn.Module:
    """The config's model: random initialisation, then the checkpoint if any.

    A bare backbone config is wrapped in ``BackboneModel``; its checkpoint
    keys then get the ``backbone.`` prefix.
    """
    model_cfg, _ = drop_pretrained(cfg.model)
    model = build_model(model_cfg, args.seed)
    if args.checkpoint is not None:
        from mmengine.runner import load_checkpoint
        revise = [(r'^module\.', '')]
        if isinstance(model, BackboneModel):
            revise.append((r'^(?!backbone\.)', 'backbone.'))
        with quiet_logs():
            load_checkpoint(
                model, args.checkpoint, map_location='cpu', revise_keys=revise)
    return model.to(args.device).eval()


def input_batches(cfg, model: nn.Module,
                  args: argparse.Namespace) -> Tuple[Iterable, str]:
    """Data batches for :func:`score_model`, and where they come from."""
    reason = 'forced by --random-data'
    if not args.random_data:
        if 'val_dataloader' not in cfg:
            reason = 'the config has no val_dataloader'
        else:
            try:
                from mmengine.runner import Runner
                loader_cfg = cfg.val_dataloader.copy()
                loader_cfg.update(num_workers=0, persistent_workers=False)
                batches = iter(
                    Runner.build_dataloader(loader_cfg, seed=args.seed))
                first = next(batches)  # fails here if the data is missing
                return itertools.chain([first], batches), 'val_dataloader'
            except Exception as e:  # noqa: BLE001 - any failure -> random
                reason = f'the val dataloader did not load ({e!r:.200})'
    print(f'using random {args.img_size}x{args.img_size} inputs: {reason}')
    size = (args.img_size, args.img_size)
    return [
        synthetic_batch(model, args.batch_size, size, args.seed + 1 + b)
        for b in range(args.num_batches)
    ], f'random ({reason})'


def save_figures(out: str, record: dict, stats: AttentionStats, scores: dict,
                 title: str) -> Dict[str, str]:
    """Figures (a)-(d), the pairwise KL and the overview; their paths."""
    from mmdet_ela.analysis import plots
    mean_attn = {n: s.mean_attention() for n, s in stats.stacks.items()}
    units = {n: s.units for n, s in stats.stacks.items()}
    newly = [tuple(k) for k in record['newly_pruned']]
    fit = dict(beta_fit_inputs(record), quantile=record['quantile'])
    figs = dict(
        kl_adjacent=plots.plot_kl_heatmap(scores),
        kl_pairwise=plots.plot_pairwise_kl(
            {
                n: s.pairwise_kl()
                for n, s in stats.stacks.items()
            }, units),
        ebqm_beta_fit=plots.plot_beta_fit(**fit),
        mask=plots.plot_mask(
            record['mask'], newly, title='EBQM on these scores'),
        attention=plots.plot_attention(mean_attn, units),
        overview=plots.plot_overview(
            scores, record['mask'], mean_attn, fit, newly, units, title=title))
    return {
        name: plots.save_figure(fig, osp.join(out, f'{name}.png'))
        for name, fig in figs.items()
    }


def analyse_model(args: argparse.Namespace, summary: Dict[str, Any],
                  figures: Dict[str, str]) -> None:
    """Score the model, decide with EBQM, print the table, draw (a)-(d)."""
    cfg = load_config(args.config, args.cfg_options)
    model = build(cfg, args)
    batches, source = input_batches(cfg, model, args)
    stats = AttentionStats(model)
    with stats.attached():
        scores, info = score_model(model, batches, args.num_batches)
    selector = ebqm_selector(
        cfg,
        quantile=args.quantile,
        max_prune_ratio=args.max_prune_ratio,
        min_keep=args.min_keep)
    masks = get_masks(model)
    record = make_record(
        selector.select(scores, masks),
        1,
        scored_batches=info['batches'],
        skipped_samples=info['skipped'],
        dry_run=True,
        **selector.settings())
    print(format_table(record))
    init = 'checkpoint' if args.checkpoint else 'random initialisation'
    title = args.title or (f'{osp.basename(args.config)} ({init}, '
                           f'{info["batches"]} batches, '
                           f'{source.split(" ")[0]} data)')
    figures.update(save_figures(args.out_dir, record, stats, scores, title))
    summary.update(
        config=args.config,
        checkpoint=args.checkpoint,
        init=init,
        data=source,
        num_batches=info['batches'],
        images=stats.images,
        input_shape=stats.input_shape,
        ebqm_settings=selector.settings(),
        stacks={
            name:
            dict(
                units=s.units,
                mask=masks[name],
                adjacent_kl=scores[name],
                pairwise_kl=json_matrix(s.pairwise_kl()),
                mean_attention=json_matrix(s.mean_attention()))
            for name, s in stats.stacks.items()
        },
        ebqm=record)
    if args.checkpoint is None:
        summary['note'] = ('random initialisation: the scores reflect random '
                           'weights, not learned redundancy')


def analyse_records(args: argparse.Namespace, summary: Dict[str, Any],
                    figures: Dict[str, str]) -> None:
    """Print every round's table and plot how the rounds went."""
    from mmdet_ela.analysis.plot_records import plot_records
    from mmdet_ela.analysis.plots import save_figure
    records = load_records(args.records)
    for record in records:
        print(format_table(record))
    figures['records'] = save_figure(
        plot_records(records), osp.join(args.out_dir, 'records.png'))
    keys = ('round', 'progress', 'fit_method', 'alpha', 'beta', 'num_pruned',
            'num_pruned_now', 'newly_pruned', 'note')
    summary['records'] = [{k: r.get(k) for k in keys} for r in records]


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the summary dict (also for tests)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    summary: Dict[str, Any] = {}
    figures: Dict[str, str] = {}
    if args.config is not None:
        analyse_model(args, summary, figures)
    if args.records is not None:
        analyse_records(args, summary, figures)
    summary['figures'] = figures
    path = osp.join(args.out_dir, 'summary.json')
    with open(path, 'w') as f:
        json.dump(summary, f, indent=2)
    for fig in figures.values():
        print(f'wrote {fig}')
    print(f'wrote {path}')
    return summary


if __name__ == '__main__':
    main()
