#!/usr/bin/env python
"""Does EBQM remove the units whose removal hurts least? Prune, evaluate.

Usage::

    python tools/analysis/pruning_choice.py CONFIG CHECKPOINT \\
        [--random-sets 5] [--finetune-epochs 1] [--out-dir DIR]

From one trained dense checkpoint: score every layer-attention unit over the
validation set (the KL score the hook uses), then evaluate with mmengine's
Runner (COCO metric on the val set), without training, the model

* as it is (``none``);
* without EBQM's chosen units (``ebqm``; the config's hook settings, or
  ``--quantile`` / ``--max-prune-ratio`` / ``--min-keep``);
* without the same number of highest-scoring units (``top``: the least
  redundant ones);
* without ``--random-sets`` random sets of that size (``random-K``);

all under the same safeguards; then the same after a ``--finetune-epochs``
fine-tune of each. Writes ``pruning_choice.json``, ``pruning_choice.md`` and
``pruning_choice.png`` (mAP drop per selection, random as a distribution) to
``--out-dir``, with the pruned checkpoints and each evaluation's work dir.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from mmengine.config import Config, DictAction

from mmdet_ela.analysis.ablation.aggregate import format_choice_table
from mmdet_ela.analysis.ablation.choice import run_pruning_choice
from mmdet_ela.analysis.settings import add_ebqm_arguments, ebqm_settings


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='the config the checkpoint was trained with')
    p.add_argument('checkpoint', help='a trained dense checkpoint')
    p.add_argument(
        '--out-dir',
        default=None,
        help='default: work_dirs/pruning_choice/<config name>')
    p.add_argument(
        '--random-sets',
        type=int,
        default=5,
        help='random sets of EBQM\'s size. Default: 5')
    p.add_argument(
        '--finetune-epochs',
        type=int,
        default=1,
        help='epochs of the fine-tune; 0 skips it. Default: 1')
    p.add_argument(
        '--lr-factor',
        type=float,
        default=0.1,
        help='fine-tune learning rate / the config\'s (constant)')
    p.add_argument(
        '--num-batches',
        type=int,
        default=None,
        help='validation batches to score (default: all)')
    add_ebqm_arguments(p)
    p.add_argument(
        '--seed',
        type=int,
        default=0,
        help='seed of the first random set and the fine-tunes')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    args = p.parse_args(argv)
    if args.random_sets < 0 or args.finetune_epochs < 0:
        p.error('--random-sets and --finetune-epochs must be >= 0')
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    from mmdet_ela.analysis.ablation.plot import plot_pruning_choice
    from mmdet_ela.analysis.plots import save_figure
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    name = osp.splitext(osp.basename(args.config))[0]
    out_dir = osp.abspath(
        args.out_dir or osp.join('work_dirs', 'pruning_choice', name))
    os.makedirs(out_dir, exist_ok=True)
    settings = ebqm_settings(
        cfg,
        quantile=args.quantile,
        max_prune_ratio=args.max_prune_ratio,
        min_keep=args.min_keep)
    summary = run_pruning_choice(
        cfg,
        args.checkpoint,
        out_dir,
        random_sets=args.random_sets,
        finetune_epochs=args.finetune_epochs,
        lr_factor=args.lr_factor,
        num_batches=args.num_batches,
        seed=args.seed,
        settings=settings)
    summary['command'] = ' '.join(['python tools/analysis/pruning_choice.py'] +
                                  args.argv)
    paths = [
        osp.join(out_dir, f'pruning_choice.{ext}')
        for ext in ('json', 'md', 'png')
    ]
    with open(paths[0], 'w') as f:
        json.dump(summary, f, indent=2)
    table = format_choice_table(summary)
    ebqm_units = summary['selections']['ebqm']['units']
    with open(paths[1], 'w') as f:
        f.write(f'# Pruning choice: {name}\n\n`{summary["command"]}`\n\n'
                f'EBQM settings: {settings}; '
                f'{summary["units"]["total"]} units, '
                f'{summary["selections"]["ebqm"]["num_units"]} removed by '
                f'EBQM: {", ".join(ebqm_units) or "none"}'
                f'\n\n{table}\nbbox mAP on the val set; drop = mAP - the '
                'unpruned model\'s mAP at the same stage; random: mean ± '
                'std over the sets [min, max].\n')
    save_figure(plot_pruning_choice(summary, title=name), paths[2])
    print('\n' + table)
    for path in paths:
        print(f'wrote {path}')
    return summary


if __name__ == '__main__':
    main()
