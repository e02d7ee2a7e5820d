"""The main job: a small ELA detector trained and pruned on CPU, on a dataset
we make.

1. Makes the synthetic shapes dataset under ``data/shapes`` if it is missing.
2. Trains a small ELA RetinaNet (ELA-ResNet-18 at half width + ELA FPN) with
   ``ELAPruneHook``: after epoch 6 it scores layer-attention redundancy on the
   validation round, prints the pruning table, prunes, and training goes on.
3. Evaluates with the real COCO metric (pycocotools) and prints a summary.

    python tools/demo.py [--epochs 30] [--work-dir work_dirs/demo]
"""
import argparse
import json
import os.path as osp
import time

from mmengine.config import Config
from mmengine.runner import Runner

import mmdet_ela  # noqa: F401
from mmdet_ela.datasets import make_shapes_dataset
from mmdet_ela.pruning import count_units, load_records, unwrap

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'configs', 'shapes',
                  'retinanet_ela-r18_ela-fpn_shapes.py')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--config', default=CONFIG)
    p.add_argument('--work-dir', default=osp.join(ROOT, 'work_dirs', 'demo'))
    p.add_argument('--data-root', default=osp.join(ROOT, 'data', 'shapes'))
    p.add_argument('--num-train', type=int, default=400)
    p.add_argument('--num-val', type=int, default=100)
    p.add_argument('--img-size', type=int, default=160)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument(
        '--epochs',
        type=int,
        default=None,
        help='default: the config\'s max_epochs')
    p.add_argument(
        '--prune-after',
        type=int,
        default=None,
        help='epoch after which the hook scores (default: config)')
    p.add_argument('--val-interval', type=int, default=None)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    cfg = Config.fromfile(args.config)
    cfg.work_dir = args.work_dir
    cfg.launcher = 'none'
    root = osp.abspath(args.data_root) + '/'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
    for ev in ('val_evaluator', 'test_evaluator'):
        cfg[ev].ann_file = root + 'annotations/instances_val.json'
    if args.epochs is not None:
        cfg.train_cfg.max_epochs = args.epochs
        for s in cfg.param_scheduler:
            if s.type == 'CosineAnnealingLR':
                s.T_max = s.end = args.epochs
    if args.val_interval is not None:
        cfg.train_cfg.val_interval = args.val_interval
    if args.prune_after is not None:
        for h in cfg.custom_hooks:
            if h.type == 'ELAPruneHook':
                h.begin = args.prune_after
    return cfg


def run_demo(args: argparse.Namespace) -> dict:
    start = time.time()
    make_shapes_dataset(
        args.data_root,
        args.num_train,
        args.num_val,
        args.img_size,
        args.seed,
        progress=True)
    cfg = build_config(args)
    runner = Runner.from_cfg(cfg)
    model = unwrap(runner.model)
    dense_params = sum(p.numel() for p in model.parameters())
    runner.train()
    metrics = runner.test()
    units = count_units(model)
    record_dir = osp.join(args.work_dir, 'ela_prune')
    records = load_records(record_dir) if osp.isdir(record_dir) else []
    pruned = [
        f'{d["group"]}.{d["index"]}' for record in records
        if not record.get('dry_run') for d in record['decisions']
        if d['pruned']
    ]
    with open(osp.join(args.work_dir, 'last_checkpoint')) as f:
        last = f.read().strip()
    summary = dict(
        bbox_mAP=metrics.get('coco/bbox_mAP'),
        bbox_mAP_50=metrics.get('coco/bbox_mAP_50'),
        units_total=units['total'],
        units_pruned=units['pruned'],
        pruned_units=pruned,
        params_dense=dense_params,
        params_final=sum(p.numel() for p in model.parameters()),
        checkpoint=_relative(last),
        log_dir=_relative(runner.log_dir),
        prune_records=_relative(record_dir),
        minutes=round((time.time() - start) / 60, 1))
    with open(osp.join(args.work_dir, 'demo_summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    return summary


def _relative(path: str) -> str:
    """``path`` relative to the working directory, as a user would type it."""
    return osp.relpath(path)


def main(argv=None) -> None:
    args = parse_args(argv)
    s = run_demo(args)
    print('\n' + '=' * 72)
    print('mmdet-ela demo summary (CPU, synthetic shapes dataset)')
    print(f'  bbox mAP          {s["bbox_mAP"]:.3f}   '
          f'(mAP@0.5 {s["bbox_mAP_50"]:.3f}, COCO metric, '
          f'{args.num_val} val images)')
    print(f'  units pruned      {s["units_pruned"]}/{s["units_total"]}: '
          f'{", ".join(s["pruned_units"]) or "none"}')
    print(f'  parameters        {s["params_dense"]:,} dense -> '
          f'{s["params_final"]:,} after pruning')
    print(f'  checkpoint        {s["checkpoint"]}')
    print(f'  logs              {s["log_dir"]}')
    print(f'  pruning records   {s["prune_records"]}')
    print(f'  wall time         {s["minutes"]} min')
    print('=' * 72)


if __name__ == '__main__':
    main()
