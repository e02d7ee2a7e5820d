"""Where a variant's extra time goes: its train step, op by op, against plain.

:class:`OpCosts` times every aten op that a call dispatches (forward,
backward and the optimizer step) and counts the minor page faults inside it,
keyed by the op and the shape of its first tensor argument. :func:`op_costs`
runs the variants' train steps round-robin under it, as
:func:`.timing.time_interleaved` does, and :func:`op_deltas` lists the ops
whose time grew most against the baseline.

Timing ops one by one from Python slows small ops down (each op pays for the
dispatch to this mode); compare the variants' rows with each other, not with
the benchmark's step times. On CUDA each op is synchronised before and after.
"""
import time
from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .timing import minor_faults, synchronize

__all__ = ['OpCosts', 'op_costs', 'op_deltas']

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
