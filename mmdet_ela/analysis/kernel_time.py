"""Whether a train step waits for its GPU kernels or for the host.

On a GPU, a step's wall time is set either by the kernels (the device is
busy) or by the host that dispatches and launches them (the device waits).
:func:`kernel_times` runs each variant's train step under
``torch.profiler`` and reports both: the step's wall time and the time the
device was busy with its kernels (the union of their intervals, copies and
fills included), per kernel name too. :func:`kernel_deltas` lists the kernels
whose device time grew most against the baseline.

If a variant's extra wall time over plain is much larger than its extra
device time, its extra cost is the host's (the ops it dispatches, see
:mod:`.op_costs`); if the two are close, it is its kernels. The profiler
slows the host down a little: compare the variants' rows with each other,
not with the benchmark's step times. Without CUDA there are no device
events: the device figures are None.
"""
from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch.profiler import ProfilerActivity, profile

from .timing import synchronize

__all__ = ['busy_us', 'kernel_times', 'kernel_deltas', 'summary_line']


def busy_us(intervals: List[Tuple[float, float]]) -> float:
    """The length of the union of ``intervals`` (start, end), in their
    unit: kernels of several streams that overlap count once."""
    total, end = 0.0, float('-inf')
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def _device_events(prof) -> list:
    """The kernels, copies and fills that ran on the GPU (no annotations)."""
    return [
        e for e in prof.events() if e.device_type.name == 'CUDA'
        and not getattr(e, 'is_user_annotation', False)
    ]


def kernel_times(fns: Mapping[str, Callable[[], None]], rounds: int,
                 device: torch.device) -> Dict[str, dict]:
    """Run each call ``rounds`` times, round-robin, each under the
    profiler; per call, its wall time and its device time.

    Args:
        fns (dict): name -> a call (e.g. a train step), already warmed up.
        rounds (int): >= 1.
        device (torch.device): the calls' device; kernels only on CUDA.

    Returns:
        dict: name -> ``dict(wall_ms, busy_ms, kernel_calls, kernels)`` per
        call: ``busy_ms`` the device's busy time (None without CUDA),
        ``kernels`` kernel name -> ``dict(ms, calls)`` (empty without CUDA).
    """
    if rounds < 1:
        raise ValueError(f'kernel_times: rounds={rounds} must be >= 1')
    device = torch.device(device)
    cuda = device.type == 'cuda'
    activities = [ProfilerActivity.CPU
                  ] + ([ProfilerActivity.CUDA] if cuda else [])
    wall: Dict[str, float] = defaultdict(float)
    busy: Dict[str, float] = defaultdict(float)
    kernels: Dict[str, Dict[str, List[float]]] = {
        name: defaultdict(lambda: [0.0, 0])
        for name in fns
    }
    for _ in range(rounds):
        for name, fn in fns.items():
            synchronize(device)
            with profile(activities=activities) as prof:
                with torch.profiler.record_function('ela_step'):
                    fn()
                    synchronize(device)
            step = [e for e in prof.events() if e.name == 'ela_step']
            wall[name] += step[0].time_range.elapsed_us()
            events = _device_events(prof)
            busy[name] += busy_us([(e.time_range.start, e.time_range.end)
                                   for e in events])
            for e in events:
                entry = kernels[name][e.name]
                entry[0] += e.time_range.elapsed_us()
                entry[1] += 1
    return {
        name:
        dict(
            wall_ms=wall[name] / 1e3 / rounds,
            busy_ms=busy[name] / 1e3 / rounds if cuda else None,
            kernel_calls=sum(c for _, c in kernels[name].values()) / rounds,
            kernels={
                k: dict(ms=us / 1e3 / rounds, calls=c / rounds)
                for k, (us, c) in kernels[name].items()
            })
        for name in fns
    }


def kernel_deltas(times: Dict[str, dict],
                  name: str,
                  base: str = 'plain',
                  top: int = 10) -> List[dict]:
    """The ``top`` kernels whose device time per call of ``name`` grew most
    over ``base``'s.

    Returns:
        list[dict]: ``kernel``, ``extra_ms``, ``ms``, ``base_ms``,
        ``extra_calls``; largest ``extra_ms`` first. A kernel that ``base``
        never runs counts from zero.
    """
    zero = dict(ms=0.0, calls=0.0)
    rows = []
    for kernel, c in times[name]['kernels'].items():
        b = times[base]['kernels'].get(kernel, zero)
        rows.append(
            dict(
                kernel=kernel,
                extra_ms=c['ms'] - b['ms'],
                ms=c['ms'],
                base_ms=b['ms'],
                extra_calls=c['calls'] - b['calls']))
    rows.sort(key=lambda r: -r['extra_ms'])
    return rows[:top]


def summary_line(times: Dict[str, dict],
                 name: str,
                 base: str = 'plain') -> Optional[str]:
    """One line: ``name``'s extra wall time and extra device time over
    ``base``'s, per step (None without device times)."""
    t, b = times[name], times[base]
    if t['busy_ms'] is None or b['busy_ms'] is None:
        return None
    return (f'wall {t["wall_ms"]:.1f} ms ({t["wall_ms"] - b["wall_ms"]:+.1f}),'
            f' device busy {t["busy_ms"]:.1f} ms '
            f'({t["busy_ms"] - b["busy_ms"]:+.1f}), '
            f'{t["kernel_calls"]:.0f} kernels '
            f'({t["kernel_calls"] - b["kernel_calls"]:+.0f})')
