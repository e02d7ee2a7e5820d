#!/usr/bin/env python
"""Does a detector read the context task's key? mAP with and without keys.

Usage::

    # every finished run of an ablation grid on the context config
    python tools/analysis/ablation.py \\
        configs/shapes/retinanet_ela-r18_ela-fpn_shapes-context.py \\
        --variants plain ela ela+hook random --work-dir work_dirs/ablation/ctx
    python tools/analysis/context_eval.py work_dirs/ablation/ctx
    # one checkpoint
    python tools/analysis/context_eval.py --config CONFIG --checkpoint CKPT

Evaluates each run's last checkpoint on the validation set of the context
task (``configs/shapes/retinanet_ela-r18_ela-fpn_shapes-context.py``) with
mmengine's Runner, dumps the detections, and scores them twice with
pycocotools (``mmdet_ela.analysis.context_eval``): ``mAP`` as labelled (shape
and key) and ``shape_mAP`` with each shape's keys merged. ``key_gap`` is the
difference: what not reading the key costs. ``key_accuracy``: how often the
best detection of an object's shape has the right key (0.5 is chance).
Writes ``context_eval.json`` and ``context_eval.md`` (mean ± std over seeds
per variant) to ``--out-dir``.
"""
import argparse
import glob
import json
import os
import os.path as osp
import pickle
import re
import sys
from typing import Dict, List, Optional, Sequence

from mmengine.config import Config

from mmdet_ela.analysis.ablation.aggregate import aggregate, format_mean_std
from mmdet_ela.analysis.context_eval import context_maps

METRICS = ('mAP', 'shape_mAP', 'key_gap', 'key_accuracy', 'found')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        'ablation_dir',
        nargs='?',
        help='an ablation work dir: every runs/<variant>/seed<k>/')
    p.add_argument('--config', help='one config (with --checkpoint)')
    p.add_argument('--checkpoint', help='one checkpoint (with --config)')
    p.add_argument(
        '--out-dir',
        default=None,
        help='default: ABLATION_DIR/context_eval, or '
        'work_dirs/context_eval')
    args = p.parse_args(argv)
    if bool(args.config) != bool(args.checkpoint) or (bool(args.ablation_dir)
                                                      == bool(args.config)):
        p.error('give an ablation dir, or --config and --checkpoint')
    return args


def last_checkpoint(run_dir: str) -> Optional[str]:
    """The checkpoint named in the run's ``last_checkpoint`` file."""
    path = osp.join(run_dir, 'last_checkpoint')
    if not osp.isfile(path):
        return None
    with open(path) as f:
        ckpt = f.read().strip()
    if not osp.isfile(ckpt):  # the run dir moved: same name, here
        ckpt = osp.join(run_dir, osp.basename(ckpt))
    return ckpt if osp.isfile(ckpt) else None


def find_runs(ablation_dir: str) -> List[Dict[str, str]]:
    """``variant``, ``seed``, ``config``, ``checkpoint`` of every finished
    run (one with a ``result.json``) in an ablation work dir, in the grid's
    variant order (its ``ablation.json``) where there is one."""
    runs = []
    pattern = osp.join(ablation_dir, 'runs', '*', 'seed*', 'result.json')
    for result in sorted(glob.glob(pattern)):
        run_dir = osp.dirname(result)
        seed = re.fullmatch(r'seed(\d+)', osp.basename(run_dir))
        ckpt = last_checkpoint(run_dir)
        if seed is None or ckpt is None:
            continue
        runs.append(
            dict(
                variant=osp.basename(osp.dirname(run_dir)),
                seed=int(seed.group(1)),
                config=osp.join(run_dir, 'config.py'),
                checkpoint=ckpt))
    order: List[str] = []
    summary = osp.join(ablation_dir, 'ablation.json')
    if osp.isfile(summary):
        with open(summary) as f:
            order = json.load(f).get('variants', [])
    rank = {v: k for k, v in enumerate(order)}
    return sorted(
        runs, key=lambda r: (rank.get(r['variant'], len(rank)), r['seed']))


def evaluate_run(config: str, checkpoint: str, work_dir: str) -> dict:
    """Test ``checkpoint`` with the Runner, dump its detections, score them."""
    from mmdet.evaluation import DumpDetResults
    from mmengine.runner import Runner

    import mmdet_ela  # noqa: F401  (registers the ELA modules)
    from mmdet_ela.utils import check_checkpoint_file
    check_checkpoint_file(checkpoint)
    cfg = Config.fromfile(config)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.launcher = 'none'
    cfg.test_dataloader.persistent_workers = False
    runner = Runner.from_cfg(cfg)
    dump = osp.join(work_dir, 'detections.pkl')
    runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=dump))
    metrics = runner.test()
    with open(dump, 'rb') as f:
        detections = pickle.load(f)
    maps = context_maps(cfg.test_evaluator.ann_file, detections,
                        cfg.test_dataloader.dataset.metainfo.classes)
    # the same detections, the same COCO evaluation: a check of the dump
    if abs(maps['mAP'] - metrics['coco/bbox_mAP']) > 1e-3:
        raise RuntimeError(f'{checkpoint}: mAP {maps["mAP"]:.4f} from the '
                           'dumped detections differs from the runner\'s '
                           f'{metrics["coco/bbox_mAP"]:.4f}')
    return maps


def format_table(rows: List[dict]) -> str:
    """Mean ± std over seeds per variant (rows of ``aggregate``)."""
    lines = [
        '| variant | seeds | mAP (shape and key) | shape mAP (keys merged) '
        '| key gap | key accuracy | objects found |',
        '|---|---|---|---|---|---|---|'
    ]
    for row in rows:
        cells = [f'`{row["variant"]}`', str(len(row['seeds']))]
        cells += [format_mean_std(row[k]) for k in METRICS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.ablation_dir:
        runs = find_runs(args.ablation_dir)
        if not runs:
            print(f'no finished runs with a checkpoint under '
                  f'{args.ablation_dir}/runs')
            return 1
        out_dir = args.out_dir or osp.join(args.ablation_dir, 'context_eval')
    else:
        runs = [
            dict(
                variant='model',
                seed=0,
                config=args.config,
                checkpoint=args.checkpoint)
        ]
        out_dir = args.out_dir or osp.join('work_dirs', 'context_eval')
    os.makedirs(out_dir, exist_ok=True)
    results = []
    for k, run in enumerate(runs, 1):
        print(f'[{k}/{len(runs)}] {run["variant"]} seed={run["seed"]}: '
              f'{run["checkpoint"]}')
        work = osp.join(out_dir, run['variant'], f'seed{run["seed"]}')
        results.append(
            dict(run, **evaluate_run(run['config'], run['checkpoint'], work)))
    rows = aggregate(results, metrics=METRICS)
    table = format_table(rows)
    with open(osp.join(out_dir, 'context_eval.json'), 'w') as f:
        json.dump(dict(runs=results, summary=rows), f, indent=2)
    command = ' '.join(['python tools/analysis/context_eval.py'] +
                       list(sys.argv[1:] if argv is None else argv))
    with open(osp.join(out_dir, 'context_eval.md'), 'w') as f:
        f.write(f'# Context task: mAP with and without the key\n\n'
                f'`{command}`\n\n{table}\nmean ± std over seeds; key gap = '
                'shape mAP - mAP; key accuracy: the best detection of each '
                'found object\'s shape has its key (0.5 is chance).\n')
    print('\n' + table)
    print(f'wrote {out_dir}/context_eval.json and context_eval.md')
    return 0


if __name__ == '__main__':
    sys.exit(main())
