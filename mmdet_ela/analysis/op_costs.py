"""Where a variant's extra time goes: its train step, op by op, against plain.

:class:`OpCosts` times every aten op that a call dispatches (forward,
backward and the optimizer step) and counts the minor page faults inside it,
keyed by the op and the shape of its first tensor argument. :func:`op_costs`
runs the variants' train steps round-robin under it, as
:func:`.timing.time_interleaved` does, :func:`op_deltas` lists the ops
whose time grew most against the baseline, and :func:`op_split` splits the
extra time into the calls that the baseline does not make and the calls of
both that got slower (e.g. by faulting in fresh pages).

Timing ops one by one from Python slows small ops down (each op pays for the
dispatch to this mode); compare the variants' rows with each other, not with
the benchmark's step times. On CUDA each op is synchronised before and after.
``torch.compile``'d code does not run under a dispatch mode: compiled units
run (and are counted) as eager ones here.
"""
import time
from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .timing import minor_faults, synchronize

__all__ = ['OpCosts', 'op_costs', 'op_deltas', 'op_split']

#: An op's key: (aten op name, shape of its first tensor argument).
OpKey = Tuple[str, Tuple[int, ...]]


def _first_shape(args: tuple) -> Tuple[int, ...]:
    """The shape of the first tensor in ``args`` (also inside lists)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return tuple(a.shape)
        if isinstance(a,
                      (list, tuple)) and a and isinstance(a[0], torch.Tensor):
            return tuple(a[0].shape)
    return ()


class OpCosts(TorchDispatchMode):
    """Seconds, calls and minor page faults per op while it is active.

    Args:
        device (torch.device): synchronised around each op on CUDA.

    Attributes:
        seconds, calls, faults (dict): totals per :data:`OpKey`.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.seconds: Dict[OpKey, float] = defaultdict(float)
        self.calls: Dict[OpKey, int] = defaultdict(int)
        self.faults: Dict[OpKey, int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        key = (str(func), _first_shape(args))  # e.g. 'aten.mul.Tensor'
        synchronize(self.device)
        faults = minor_faults() or 0
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        synchronize(self.device)
        self.seconds[key] += time.perf_counter() - start
        self.faults[key] += (minor_faults() or 0) - faults
        self.calls[key] += 1
        return out


def op_costs(fns: Mapping[str, Callable[[], None]], rounds: int,
             device: torch.device) -> Dict[str, Dict[OpKey, dict]]:
    """Run each call ``rounds`` times, round-robin, under :class:`OpCosts`.

    Args:
        fns (dict): name -> a call (e.g. a train step), already warmed up.
        rounds (int): >= 1.
        device (torch.device): the calls' device.

    Returns:
        dict: name -> op key -> ``dict(ms, calls, faults)`` per call of
        ``fns[name]`` (totals divided by ``rounds``).
    """
    if rounds < 1:
        raise ValueError(f'op_costs: rounds={rounds} must be >= 1')
    modes = {name: OpCosts(device) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            with modes[name]:
                fn()
    return {
        name: {
            key:
            dict(
                ms=m.seconds[key] * 1e3 / rounds,
                calls=m.calls[key] / rounds,
                faults=m.faults[key] / rounds)
            for key in m.seconds
        }
        for name, m in modes.items()
    }


def op_deltas(costs: Dict[str, Dict[OpKey, dict]],
              name: str,
              base: str = 'plain',
              top: int = 15) -> List[dict]:
    """The ``top`` ops whose time per call of ``name`` grew most over
    ``base``'s.

    Returns:
        list[dict]: ``op``, ``shape``, ``extra_ms``, ``ms``, ``base_ms``,
        ``extra_calls``, ``extra_faults``; sorted by ``extra_ms``, largest
        first. An op that ``base`` never runs counts from zero.
    """
    zero = dict(ms=0.0, calls=0.0, faults=0.0)
    rows = []
    for key, c in costs[name].items():
        b = costs[base].get(key, zero)
        rows.append(
            dict(
                op=key[0],
                shape=list(key[1]),
                extra_ms=c['ms'] - b['ms'],
                ms=c['ms'],
                base_ms=b['ms'],
                extra_calls=c['calls'] - b['calls'],
                extra_faults=c['faults'] - b['faults']))
    rows.sort(key=lambda r: -r['extra_ms'])
    return rows[:top]


def op_split(costs: Dict[str, Dict[OpKey, dict]],
             name: str,
             base: str = 'plain') -> Dict[str, float]:
    """Split ``name``'s extra op time per call over ``base``'s in two.

    Per op key with c calls in ``name`` (t ms) and b in ``base``: the
    ``max(c - b, 0)`` extra calls cost their share of t, less ``base``'s
    share for its ``max(b - c, 0)`` calls that ``name`` does not make
    (``extra_calls_ms``); the other ``min(b, c)`` calls cost their share of
    t minus ``base``'s share for them (``slower_ms``, negative where they got
    faster).

    Returns:
        dict: ``extra_calls_ms``, ``slower_ms``; their sum is the difference
        of the two calls' op times.
    """
    zero = dict(ms=0.0, calls=0.0)
    extra = slower = 0.0
    for key in set(costs[name]) | set(costs[base]):
        c = costs[name].get(key, zero)
        b = costs[base].get(key, zero)
        per_call = c['ms'] / c['calls'] if c['calls'] else 0.0
        shared = min(b['calls'], c['calls'])
        extra += per_call * max(c['calls'] - b['calls'], 0)
        slower += per_call * shared - b['ms'] * (
            shared / b['calls'] if b['calls'] else 0.0)
        if b['calls'] > c['calls']:
            extra -= b['ms'] * (b['calls'] - c['calls']) / b['calls']
    return dict(extra_calls_ms=extra, slower_ms=slower)
