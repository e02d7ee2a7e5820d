"""Where does the ELA backbone's extra train-step time go? (torch.profiler, CPU or CUDA)

Profiles a few train steps (forward + backward + SGD) of ResNet and of the dense
ELAResNet with the same input, and prints the self time of the top operators of each
and their difference, so the cost of the attention units shows by operator.

    python tools/analysis/profile_attention.py --depth 50 --batch-size 4 --img-size 224
"""
import argparse
from collections import Counter

import torch
from mmdet.models.backbones import ResNet
from torch.profiler import ProfilerActivity, profile

import mmdet_ela  # noqa: F401
from mmdet_ela.models import ELAResNet


def op_times(model, x, steps: int, device: str) -> Counter:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def step():
        opt.zero_grad()
        sum(o.mean() for o in model(x)).backward()
        opt.step()

    for _ in range(2):
        step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                     if device == 'cuda' else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if device == 'cuda':
            torch.cuda.synchronize()
    key = 'self_device_time_total' if device == 'cuda' else \
        'self_cpu_time_total'
    return Counter({e.key: getattr(e, key) / 1e3 / steps
                    for e in prof.key_averages()})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--depth', type=int, default=50)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--top', type=int, default=12)
    p.add_argument('--device', default='cpu')
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.img_size, args.img_size,
                   device=args.device)
    plain = ResNet(depth=args.depth).to(args.device)
    ela = ELAResNet(depth=args.depth).to(args.device)
    ela.init_weights()
    plain.train()  # mmdet's ResNet.train() returns None
    ela.train()
    base = op_times(plain, x, args.steps, args.device)
    extra = op_times(ela, x, args.steps, args.device)
    total_base, total_ela = sum(base.values()), sum(extra.values())
    print(f'self time per train step: ResNet {total_base:.1f} ms, '
          f'ELA dense {total_ela:.1f} ms (x{total_ela / total_base:.3f})')
    diff = Counter({k: extra[k] - base.get(k, 0.0) for k in extra})
    print(f'{"operator":<44}{"ELA ms":>10}{"ResNet ms":>11}{"extra ms":>10}')
    for op, d in diff.most_common(args.top):
        print(f'{op:<44}{extra[op]:>10.1f}{base.get(op, 0.0):>11.1f}'
              f'{d:>10.1f}')


if __name__ == '__main__':
    main()
