"""Measure what ELAPruneHook's scoring adds to a validation round.

Runs the real validation loop (model forward + COCO evaluation) of a config through an
mmengine Runner, alternating rounds with scoring on (recording + KL accumulation +
all-reduce + EBQM + table, as a dry run so nothing is pruned) and off, and reports the
median of each and their ratio. Also times the model forward alone over the same
batches, with recording and accumulation on and off.

    python tools/analysis/hook_overhead.py configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py \
        --data-root data/shapes --repeats 5
"""
import argparse
import json
import os.path as osp
import statistics
import sys
import time

import torch
from mmengine.config import Config
from mmengine.runner import Runner

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmdet_ela  # noqa: E402,F401
from mmdet_ela.engine.hooks import ELAPruneHook  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('--checkpoint', default=None)
    p.add_argument('--data-root', default=None,
                   help='override the dataset root (shapes configs)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--work-dir', default='work_dirs/hook_overhead')
    p.add_argument('--out', default=None, help='write the figures as JSON')
    return p.parse_args(argv)


def build_runner(args) -> Runner:
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

    def val_round(scoring: bool) -> float:
        hook._in_training = scoring  # scoring rounds happen during training
        hook.rounds = 0
        hook.max_rounds = 1 if scoring else 0
        start = time.perf_counter()
        runner.val_loop.run()
        return time.perf_counter() - start

    on, off = [], []
    for _ in range(args.repeats):  # interleaved, so noise hits both
        off.append(val_round(False))
        on.append(val_round(True))
    hook._in_training = False
    result = dict(
        val_round_off_s=statistics.median(off),
        val_round_on_s=statistics.median(on),
        ratio=statistics.median(on) / statistics.median(off),
        repeats=args.repeats,
        threads=torch.get_num_threads(),
        device='cpu' if not torch.cuda.is_available() else 'cuda')
    print(f'validation round, scoring off: {result["val_round_off_s"]:.3f} s'
          f' (median of {args.repeats})')
    print(f'validation round, scoring on:  {result["val_round_on_s"]:.3f} s')
    print(f'ratio on/off: {result["ratio"]:.3f}  (target <= 1.05)')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
