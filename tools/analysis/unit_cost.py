#!/usr/bin/env python
"""Time one stage's chain of layer-attention units alone, forward + backward.

Builds T units of C channels (output weights drawn at random, so the units
are not the identity) and runs them as a ResNet stage would: unit t's input
is a cheap function of unit t-1's output. Compares, interleaved round by
round, a chained memory (the backbone's: the values' gradients summed in
place) with an unchained one (the neck's: one fresh tensor per gradient
share, added by autograd). Medians and round-by-round ratios.

    python tools/analysis/unit_cost.py --channels 1024 --size 32 --units 6
    python tools/analysis/unit_cost.py --channels 512 --size 64 --units 4 \\
        --device cuda
"""
import argparse
import json
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from mmdet_ela.analysis.report import environment
from mmdet_ela.analysis.timing import (median_ms, paired_ratios,
                                       time_interleaved)
from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory


def build_units(channels: int, units: int, device: str) -> List[nn.Module]:
    """``units`` default units of ``channels`` with random output
    weights."""
    torch.manual_seed(0)
    chain = [LayerAttention(channels).to(device) for _ in range(units)]
    for unit in chain:
        nn.init.normal_(unit.norm.weight, std=0.1)
        nn.init.normal_(unit.norm.bias, std=0.1)
    return chain


def chain_step(chain: List[nn.Module], x: torch.Tensor,
               chained: bool) -> Callable[[], None]:
    """One forward and backward through the chain (``x``: [N, C, H, W])."""

    def step() -> None:
        memory = LayerAttentionMemory(chained=chained)
        out = x
        for unit in chain:
            out = unit(out * 0.5, memory)  # a block: t depends on t - 1
        out.float().sum().backward()
        x.grad = None
        for unit in chain:
            unit.zero_grad(set_to_none=True)

    return step


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Time both memories; returns the results (JSON-safe)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    chain = build_units(args.channels, args.units, args.device)
    shape = (args.batch_size, args.channels, args.size, args.size)
    x = torch.randn(shape, device=device, requires_grad=True)
    times = time_interleaved(
        {
            'unchained': chain_step(chain, x, False),
            'chained': chain_step(chain, x, True)
        }, args.warmup, args.repeats, device)
    ratio = paired_ratios(times, 'unchained', 'step')['chained']
    return dict(
        settings=vars(args),
        environment=environment(device),
        shape=list(shape),
        unchained_ms=median_ms(times['unchained']),
        chained_ms=median_ms(times['chained']),
        chained_to_unchained=ratio['step_round_ratio'],
        chained_to_unchained_iqr=ratio['step_round_ratio_iqr'],
        chained_to_unchained_ci=ratio['step_round_ratio_ci'])


def parse_args(argv: Optional[list] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--channels', type=int, default=1024)
    p.add_argument('--size', type=int, default=32, help='H = W')
    p.add_argument('--units', type=int, default=6)
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--warmup', type=int, default=4)
    p.add_argument('--repeats', type=int, default=30)
    p.add_argument(
        '--threads', type=int, default=None, help='torch threads (CPU)')
    p.add_argument('--out', default=None, help='write the results as JSON')
    args = p.parse_args(argv)
    for key in ('channels', 'size', 'units', 'batch_size', 'repeats'):
        if getattr(args, key) < 1:
            p.error(f'--{key.replace("_", "-")} must be >= 1')
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error('--warmup must be >= 0 and --threads >= 1')
    return args


def main(argv: Optional[list] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    res = run(args)
    low, high = res['chained_to_unchained_iqr']
    ci = res['chained_to_unchained_ci']
    ci_text = f', median 95% CI {ci[0]:.3f}-{ci[1]:.3f}' if ci else ''
    print(f'{args.units} units on {res["shape"]}, '
          f'{res["environment"]["device_name"]}, forward + backward: '
          f'unchained {res["unchained_ms"]:.1f} ms, chained '
          f'{res["chained_ms"]:.1f} ms; chained / unchained round by round '
          f'{res["chained_to_unchained"]:.3f} (quartiles {low:.3f}-'
          f'{high:.3f}{ci_text})')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == '__main__':
    main()
