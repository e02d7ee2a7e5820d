#!/usr/bin/env python
"""Measure what ELAPruneHook's scoring adds to a validation round.

Runs the real validation loop (model forward + COCO evaluation) of a config
through an mmengine Runner, interleaving rounds with scoring on (recording + KL
accumulation + all-reduce + EBQM + table, as a dry run so nothing is pruned)
and off, and reports the median of each and their ratio.

    python tools/analysis/hook_overhead.py \\
        configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py \\
        --data-root data/shapes --repeats 5
"""
import argparse
import json
import os.path as osp

import torch
from mmengine.config import Config
from mmengine.runner import Runner

import mmdet_ela  # noqa: F401  (registers the hook)
from mmdet_ela.analysis.timing import median_ms, time_interleaved
from mmdet_ela.engine.hooks import ELAPruneHook


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', default=None)
    p.add_argument(
        '--data-root',
        default=None,
        help='override the dataset root (shapes configs)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--work-dir', default='work_dirs/hook_overhead')
    p.add_argument('--out', default=None, help='write the figures as JSON')
    return p.parse_args(argv)


def build_runner(args: argparse.Namespace) -> Runner:
    """The config's Runner with a dry-run ELAPruneHook scoring from epoch 0."""
    cfg = Config.fromfile(args.config)
    cfg.work_dir = args.work_dir
    cfg.launcher = 'none'
    cfg.load_from = args.checkpoint
    if args.data_root:
        root = osp.abspath(args.data_root) + '/'
        for loader in ('train_dataloader', 'val_dataloader',
                       'test_dataloader'):
            cfg[loader].dataset.data_root = root
            cfg[loader].num_workers = 0
            cfg[loader].persistent_workers = False
        for ev in ('val_evaluator', 'test_evaluator'):
            cfg[ev].ann_file = root + 'annotations/instances_val.json'
    cfg.custom_hooks = [dict(type='ELAPruneHook', begin=0, dry_run=True)]
    cfg.default_hooks.logger.interval = 10**6
    return Runner.from_cfg(cfg)


def main(argv=None) -> dict:
    args = parse_args(argv)
    runner = build_runner(args)
    hook = next(h for h in runner.hooks if isinstance(h, ELAPruneHook))
    runner.val()  # warm-up: builds the loop and loads the checkpoint
    hook.before_train(runner)  # the hook scores only while training

    def val_round(scoring: bool) -> None:
        hook.rounds, hook.last_scored, hook.history = 0, None, []
        hook.max_rounds = 1 if scoring else 0
        runner.val_loop.run()

    times = time_interleaved(
        dict(off=lambda: val_round(False), on=lambda: val_round(True)), 0,
        args.repeats,
        next(runner.model.parameters()).device)
    hook.after_train(runner)
    off, on = median_ms(times['off']) / 1e3, median_ms(times['on']) / 1e3
    result = dict(
        val_round_off_s=off,
        val_round_on_s=on,
        ratio=on / off,
        repeats=args.repeats,
        threads=torch.get_num_threads(),
        device='cuda' if torch.cuda.is_available() else 'cpu')
    print(f'validation round, scoring off: {off:.3f} s (median of '
          f'{args.repeats}, interleaved)')
    print(f'validation round, scoring on:  {on:.3f} s')
    print(f'ratio on/off: {result["ratio"]:.3f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
