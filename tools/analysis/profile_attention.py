#!/usr/bin/env python
"""Where does ELA's extra train-step time go? (torch.profiler, CPU or CUDA)

Profiles a few train steps (the benchmark's: forward, loss, backward,
optimizer step) of the plain model and of the dense ELA model on the same
synthetic batch, and prints the self time of the top operators of each and
their difference, so the cost of the attention units shows by operator.

    python tools/analysis/profile_attention.py --depth 50 --batch-size 4 \\
        --img-size 224
    python tools/analysis/profile_attention.py \\
        configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py --img-size 160
"""
import argparse
from collections import Counter

import torch
from mmengine.config import DictAction
from torch.profiler import ProfilerActivity, profile

from mmdet_ela.analysis.bench_config import (BenchmarkSettings, build_variant,
                                             build_workload, model_setup)
from mmdet_ela.analysis.workload import Workload

#: Untimed steps before profiling.
WARMUP_STEPS = 2


def op_times(work: Workload, steps: int, device: str) -> Counter:
    """Self time per train step (ms) of every operator."""
    for _ in range(WARMUP_STEPS):
        work.train_step()
    acts = [ProfilerActivity.CPU
            ] + ([ProfilerActivity.CUDA] if device == 'cuda' else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            work.train_step()
        if device == 'cuda':
            torch.cuda.synchronize()
    key = 'self_device_time_total' if device == 'cuda' else \
        'self_cpu_time_total'
    return Counter(
        {e.key: getattr(e, key) / 1e3 / steps
         for e in prof.key_averages()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        'config',
        nargs='?',
        help='ELA model config (default: '
        'an ELAResNet backbone of --depth)')
    p.add_argument('--model', choices=['detector', 'backbone'], default=None)
    p.add_argument('--depth', type=int, default=50)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--top', type=int, default=12)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='overrides of the ELA config (or of the backbone without one), '
        'e.g. model.backbone.attn_value_stride=2')
    args = p.parse_args()
    s = BenchmarkSettings(
        config=args.config,
        model=args.model or ('detector' if args.config else 'backbone'),
        depth=args.depth,
        img_size=(args.img_size, args.img_size),
        batch_size=args.batch_size,
        device=args.device,
        cfg_options=args.cfg_options)
    setup = model_setup(s)
    base, extra = (
        op_times(
            build_workload(s, setup, build_variant(setup, name, s.seed)),
            args.steps, args.device) for name in ('plain', 'dense'))
    total_base, total_ela = sum(base.values()), sum(extra.values())
    print(f'self time per train step: plain {total_base:.1f} ms, '
          f'ELA dense {total_ela:.1f} ms (x{total_ela / total_base:.3f})')
    diff = Counter({k: extra[k] - base.get(k, 0.0) for k in extra})
    print(f'{"operator":<44}{"ELA ms":>10}{"plain ms":>11}{"extra ms":>10}')
    for op, d in diff.most_common(args.top):
        print(f'{op:<44}{extra[op]:>10.1f}{base.get(op, 0.0):>11.1f}'
              f'{d:>10.1f}')


if __name__ == '__main__':
    main()
