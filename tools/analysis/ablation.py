#!/usr/bin/env python
"""Train a grid of ELA variants over seeds; tabulate and plot mAP vs cost.

Usage::

    # the CPU default: the shapes set, 6 variants x 3 seeds, a short schedule
    python tools/analysis/ablation.py
    # the harder synthetic task (context, clutter, occlusion), same preset
    python tools/analysis/ablation.py \\
        configs/shapes/retinanet_ela-r18_ela-fpn_shapes-context.py
    # any config (e.g. COCO with 8 GPUs per run), chosen variants, 3 seeds
    python tools/analysis/ablation.py CONFIG --variants plain ela ela+hook \\
        --seeds 3 --gpus 8 --work-dir work_dirs/ablation_coco
    # the accuracy/cost curve of the hook's settings
    python tools/analysis/ablation.py --variants curve
    python tools/analysis/ablation.py --list

Every run trains with ``tools/train.py`` (``tools/dist_train.sh`` with
``--gpus N > 1``) in ``WORK_DIR/runs/<variant>/seed<k>/``, which keeps its
config, log and checkpoints. Finished runs (a ``result.json``) are skipped
when the command runs again; an interrupted run resumes. Writes
``WORK_DIR/ablation.json`` (every run), ``ablation.md`` (mean ± std over seeds
per variant) and ``ablation.png`` (mAP against train-step time).
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

from mmengine.config import Config, DictAction

from mmdet_ela.analysis.ablation import (GROUPS, VARIANTS, aggregate,
                                         format_round_table, format_table,
                                         plan_runs, resolve_variants, run_grid,
                                         scale_schedule)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SHAPES_CONFIG = osp.join(ROOT, 'configs', 'shapes',
                         'retinanet_ela-r18_ela-fpn_shapes.py')
# The CPU preset of the synthetic configs (their data: `synthetic_data`, 400
# / 100 images of 160 px): 12 epochs instead of 30, so that 6 variants x 3
# seeds fit in about 80 minutes on 2 cores (about 4.5 minutes a run). The
# hook's `begin` scales with the epochs (6 -> 2); validating every 2 epochs
# lets it prune after epoch 2.
SYNTHETIC_EPOCHS = 12
SYNTHETIC_VAL_INTERVAL = 2


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        'config',
        nargs='?',
        default=None,
        help='config (default: the shapes config; synthetic configs get '
        'the CPU preset)')
    p.add_argument(
        '--variants',
        nargs='+',
        default=['default'],
        help=f'variants or groups ({", ".join(GROUPS)}); '
        'see --list. Default: default')
    p.add_argument(
        '--seeds',
        type=int,
        default=3,
        help='seeds 0 .. N-1 per variant. Default: 3')
    p.add_argument(
        '--work-dir',
        default=None,
        help='default: work_dirs/ablation/<config name>')
    p.add_argument(
        '--epochs',
        type=int,
        default=None,
        help='train epochs; scheduler bounds and the hook\'s '
        f'begin scale along (default: the config\'s; '
        f'{SYNTHETIC_EPOCHS} for synthetic configs)')
    p.add_argument(
        '--hook-options',
        nargs='+',
        action=DictAction,
        default={},
        help='ELAPruneHook options for every hook '
        'variant, key=value (e.g. quantile=0.4)')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    p.add_argument(
        '--gpus',
        type=int,
        default=1,
        help='processes per run; > 1 uses tools/dist_train.sh')
    p.add_argument(
        '--threads',
        type=int,
        default=None,
        help='OMP/MKL threads of each run (default: unchanged)')
    p.add_argument(
        '--keep-freed-memory',
        action='store_true',
        help='CPU runs: train.py --keep-freed-memory (glibc keeps freed '
        'memory; faster steps, same results; recorded in result.json)')
    p.add_argument(
        '--skip-iters',
        type=int,
        default=20,
        help='leave the first iterations out of the step time')
    p.add_argument(
        '--list',
        action='store_true',
        help='print the variants and groups, and exit')
    args = p.parse_args(argv)
    if args.seeds < 1 or args.gpus < 1:
        p.error('--seeds and --gpus must be >= 1')
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def list_variants() -> str:
    lines = ['variants:']
    lines += [f'  {v.name:<24}{v.doc}' for v in VARIANTS.values()]
    lines += ['groups:']
    lines += [f'  {g:<24}{" ".join(names)}' for g, names in GROUPS.items()]
    return '\n'.join(lines)


def set_data_root(cfg: Config, root: str) -> None:
    """Point the dataloaders and the COCO evaluators at ``root``."""
    root = root.rstrip('/') + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(loader):
            cfg[loader].dataset.data_root = root
    for ev in ('val_evaluator', 'test_evaluator'):
        if cfg.get(ev) and cfg[ev].get('ann_file'):
            cfg[ev].ann_file = root + 'annotations/instances_val.json'


def make_synthetic_data(cfg: Config) -> None:
    """Make a synthetic config's dataset from its ``synthetic_data`` key (the
    arguments of ``make_shapes_dataset``, which does nothing when the data is
    there with the same parameters).

    The key is removed from ``cfg``: it is the tool's, not the training's.
    """
    spec = cfg.pop('synthetic_data', None)
    if spec is not None:
        from mmdet_ela.datasets import make_shapes_dataset
        make_shapes_dataset(
            cfg.train_dataloader.dataset.data_root.rstrip('/'),
            progress=True,
            **spec)


def base_config(args: argparse.Namespace) -> Config:
    """The config every run starts from: options merged, schedule scaled.

    Synthetic configs (the shapes ones, with a ``synthetic_data`` key) get
    the CPU preset: their data under the repository's ``data/``, validation
    every ``SYNTHETIC_VAL_INTERVAL`` epochs and ``SYNTHETIC_EPOCHS`` epochs
    unless ``--epochs`` says otherwise.
    """
    cfg = Config.fromfile(args.config or SHAPES_CONFIG)
    preset = 'synthetic_data' in cfg
    if preset:
        root = cfg.train_dataloader.dataset.data_root
        set_data_root(cfg, osp.join(ROOT, root))
        cfg.train_cfg.val_interval = SYNTHETIC_VAL_INTERVAL
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    epochs = args.epochs
    if epochs is None and preset:
        epochs = SYNTHETIC_EPOCHS
    if epochs is not None:
        scale_schedule(cfg, epochs)
    make_synthetic_data(cfg)
    return cfg


def write_outputs(work_dir: str, args: argparse.Namespace, names: List[str],
                  outcome: dict, cfg: Config) -> List[str]:
    """Write ``ablation.json``, ``.md`` and ``.png``; return the paths."""
    from mmdet_ela.analysis.ablation.plot import plot_ablation
    from mmdet_ela.analysis.plots import save_figure
    results = [r for r in outcome['results'] if r['variant'] in names]
    rows = aggregate(results)
    command = ' '.join(['python tools/analysis/ablation.py'] + args.argv)
    data = dict(
        config=args.config or SHAPES_CONFIG,
        command=command,
        variants=names,
        seeds=list(range(args.seeds)),
        epochs=cfg.train_cfg.get('max_epochs'),
        hook_options=args.hook_options,
        runs=results,
        summary=rows,
        failed=outcome['failed'])
    paths = [
        osp.join(work_dir, f'ablation.{ext}') for ext in ('json', 'md', 'png')
    ]
    with open(paths[0], 'w') as f:
        json.dump(data, f, indent=2)
    docs = {n: VARIANTS[n].doc for n in names}
    title = (f'{osp.basename(data["config"])}: {data["epochs"]} epochs, '
             f'{args.seeds} seed(s)')
    with open(paths[1], 'w') as f:
        f.write(f'# Ablation: {title}\n\n`{command}`\n\n')
        f.write(format_table(rows, docs))
        f.write('\nmean ± std over seeds (sample std); train step: median '
                'of the logged per-iteration time of each run, first '
                f'{args.skip_iters} iterations left out.\n')
        f.write('\n## Mean bbox mAP at each validation round (rank)\n\n')
        f.write(format_round_table(results))
        kept = {str(r.get('keep_freed_memory', False)) for r in results}
        if len(kept) > 1:
            f.write(
                '\nThe runs mix allocator settings (`--keep-freed-memory`: '
                f'{", ".join(sorted(kept))}; see `ablation.json`): their '
                'step times do not compare.\n')
        if outcome['failed']:
            f.write('\nFailed runs: ' +
                    ', '.join(label for label, _ in outcome['failed']) + '\n')
    save_figure(plot_ablation(rows, title=title), paths[2])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.list:
        print(list_variants())
        return 0
    variants = resolve_variants(args.variants)
    cfg = base_config(args)
    name = osp.splitext(osp.basename(args.config or SHAPES_CONFIG))[0]
    work_dir = osp.abspath(
        args.work_dir or osp.join('work_dirs', 'ablation', name))
    os.makedirs(work_dir, exist_ok=True)
    specs = plan_runs(variants, range(args.seeds), work_dir)
    print(f'ablation: {len(variants)} variants x {args.seeds} seeds = '
          f'{len(specs)} runs of {cfg.train_cfg.get("max_epochs")} epochs '
          f'in {work_dir}')
    outcome = run_grid(
        specs,
        cfg,
        args.hook_options,
        args.gpus,
        args.threads,
        args.skip_iters,
        keep_freed_memory=args.keep_freed_memory)
    names = [v.name for v in variants]
    paths = write_outputs(work_dir, args, names, outcome, cfg)
    with open(paths[1]) as f:
        print('\n' + f.read())
    for path in paths:
        print(f'wrote {path}')
    for label, message in outcome['failed']:
        print(f'FAILED {label}: {message.splitlines()[0]}')
    return 1 if outcome['failed'] else 0


if __name__ == '__main__':
    sys.exit(main())
