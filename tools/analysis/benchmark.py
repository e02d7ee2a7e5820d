#!/usr/bin/env python
"""Benchmark an ELA config against its plain counterpart, dense and pruned.

    # a config's detector: train step (config's optimizer) and inference
    python tools/analysis/benchmark.py \\
        configs/retinanet/retinanet_ela-r50_fpn_1x_coco.py \\
        --img-size 800 1333 --batch-size 2 --device cuda --amp --out bench.json
    # a bare ELA-ResNet backbone
    python tools/analysis/benchmark.py --model backbone --depth 50 \\
        --batch-size 4

Variants: ``plain`` (ELAResNet -> ResNet, ELAFPN -> FPN), ``dense``, ``pruned``
(EBQM on scores from a few forward passes of random data) and, with
``--mask FILE`` (JSON mask, hook record, records dir or checkpoint), ``mask``.
Medians of interleaved repeats, ratios to plain, peak memory, FLOPs per image;
see ``mmdet_ela.analysis.benchmark``. Pretrained ``init_cfg`` is dropped
(random weights are fine for timing).
"""
import argparse
import json
import os
import os.path as osp
from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.config import DictAction

from mmdet_ela.analysis.benchmark import (VARIANTS, BenchmarkSettings,
                                          run_benchmark)
from mmdet_ela.analysis.report import available_cores, format_results
from mmdet_ela.analysis.settings import add_ebqm_arguments

DEFAULT_IMG_SIZE = dict(backbone=224, detector=512)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Time, memory and FLOPs of an ELA model against its '
        'plain counterpart, dense and pruned.')
    p.add_argument('config', nargs='?', help='model config (ELA model)')
    p.add_argument(
        '--model',
        choices=['detector', 'backbone'],
        default=None,
        help='the config\'s model or its backbone alone (default: '
        'detector with a config, else an ELAResNet backbone)')
    p.add_argument(
        '--depth',
        type=int,
        default=50,
        choices=[18, 34, 50, 101, 152],
        help='ELAResNet depth without a config')
    p.add_argument(
        '--dim-per-head',
        type=int,
        default=32,
        help='ELAResNet dim_per_head without a config')
    p.add_argument(
        '--img-size',
        type=int,
        nargs='+',
        metavar=('H', 'W'),
        help='synthetic image size, H [W] (default: 224 '
        'backbone, 512 detector)')
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument(
        '--amp',
        action='store_true',
        help='AmpOptimWrapper train step, autocast inference')
    p.add_argument(
        '--repeats',
        type=int,
        default=10,
        help='timed rounds per variant (median reported)')
    p.add_argument(
        '--warmup',
        type=int,
        default=2,
        help='untimed rounds per variant first')
    p.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch threads (default: all cores available)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument(
        '--lr',
        type=float,
        default=None,
        help='override the optimizer\'s learning rate')
    p.add_argument(
        '--num-boxes', type=int, default=2, help='random gt boxes per image')
    p.add_argument(
        '--mask',
        default=None,
        help='JSON mask, hook record, records dir or checkpoint '
        'for the "mask" variant')
    p.add_argument(
        '--variants',
        nargs='+',
        choices=VARIANTS,
        default=None,
        help='default: plain dense pruned (+ alt with --alt-options, + mask '
        'with --mask)')
    p.add_argument(
        '--score-batches',
        type=int,
        default=2,
        help='random batches scored for the EBQM variant')
    add_ebqm_arguments(p)
    p.add_argument(
        '--memory',
        default='auto',
        choices=['auto', 'subprocess', 'allocated', 'cuda', 'none'],
        help='auto = cuda on CUDA, a process per variant on CPU (peak RSS); '
        'allocated = CPU: the most tensor memory a train step holds at once '
        '(the counterpart of CUDA\'s max_memory_allocated)')
    p.add_argument('--no-flops', action='store_true', help='skip FLOPs')
    p.add_argument(
        '--keep-freed-memory',
        action='store_true',
        help='CPU: set glibc\'s malloc to keep freed memory in the process '
        '(fewer page faults per step; every variant alike, memory '
        'subprocesses too)')
    p.add_argument(
        '--op-costs',
        type=int,
        default=0,
        metavar='ROUNDS',
        help='then time ROUNDS more train steps per variant op by op, and '
        'list the ops that grew most against plain (where the extra time '
        'goes; default: 0, none)')
    p.add_argument(
        '--kernel-time',
        type=int,
        default=0,
        metavar='ROUNDS',
        help='then run ROUNDS more train steps per variant under the '
        'profiler: on CUDA the time the device was busy with kernels beside '
        'the wall time (does the step wait for the kernels or for the host?)'
        ', and the kernels that grew most against plain; default: 0, none')
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config settings, key=value')
    p.add_argument(
        '--alt-options',
        nargs='+',
        action=DictAction,
        help='the "alt" variant: the dense model with these further '
        'overrides (same syntax as --cfg-options), timed side by side, e.g. '
        'model.backbone.attn_value_stride=1')
    p.add_argument('--out', default=None, help='write the results as JSON')
    p.add_argument('--plot', default=None, help='write a bar chart PNG')
    args = p.parse_args(argv)
    _check(p, args)
    return args


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill the defaults that depend on other options; reject bad values."""
    args.model = args.model or ('detector' if args.config else 'backbone')
    if args.model == 'detector' and not args.config:
        p.error('--model detector needs a CONFIG')
    size = args.img_size or [DEFAULT_IMG_SIZE[args.model]]
    if len(size) > 2:
        p.error(f'--img-size takes H [W], got {size}')
    args.img_size = (size[0], size[-1])
    args.threads = args.threads or available_cores()
    if args.variants is None:
        args.variants = ['plain', 'dense'
                         ] + (['alt'] if args.alt_options else []) + [
                             'pruned'
                         ] + (['mask'] if args.mask else [])
    if ('alt' in args.variants) != bool(args.alt_options):
        p.error('--variants alt and --alt-options go together')
    if 'mask' in args.variants and not args.mask:
        p.error('--variants mask needs --mask FILE')
    if 'plain' not in args.variants:
        p.error('--variants must include plain (the ratios\' baseline)')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: CUDA is not available')
    if args.amp and args.device != 'cuda':
        p.error('--amp needs --device cuda (mmengine\'s AmpOptimWrapper)')
    for name in ('batch_size', 'repeats', 'threads', 'score_batches'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if min(args.img_size) < 1 or args.warmup < 0 or min(
            args.op_costs, args.kernel_time) < 0:
        p.error('--img-size must be >= 1, --warmup, --op-costs and '
                '--kernel-time >= 0')
    if args.memory == 'auto':
        args.memory = 'cuda' if args.device == 'cuda' else 'subprocess'
    if args.memory == 'cuda' and args.device != 'cuda':
        p.error('--memory cuda needs --device cuda')
    if args.memory == 'allocated' and args.device != 'cpu':
        p.error('--memory allocated is for --device cpu (on CUDA use cuda)')


def settings_of(args: argparse.Namespace) -> BenchmarkSettings:
    """The package's settings from the parsed arguments."""
    return BenchmarkSettings(
        config=args.config,
        cfg_options=args.cfg_options,
        alt_options=args.alt_options,
        model=args.model,
        depth=args.depth,
        dim_per_head=args.dim_per_head,
        img_size=args.img_size,
        batch_size=args.batch_size,
        device=args.device,
        amp=args.amp,
        seed=args.seed,
        threads=args.threads,
        warmup=args.warmup,
        repeats=args.repeats,
        lr=args.lr,
        num_boxes=args.num_boxes,
        score_batches=args.score_batches,
        quantile=args.quantile,
        max_prune_ratio=args.max_prune_ratio,
        min_keep=args.min_keep,
        mask=args.mask,
        variants=tuple(args.variants),
        memory=args.memory,
        flops=not args.no_flops,
        op_costs=args.op_costs,
        kernel_time=args.kernel_time,
        keep_freed_memory=args.keep_freed_memory)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the results dict (also for tests)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run_benchmark(settings_of(args))
    print(format_results(results))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
        print(f'wrote {args.out}')
    if args.plot:
        from mmdet_ela.analysis.plot_benchmark import plot_benchmark
        from mmdet_ela.analysis.plots import save_figure
        save_figure(plot_benchmark(results), args.plot)
        print(f'wrote {args.plot}')
    return results


if __name__ == '__main__':
    main()
