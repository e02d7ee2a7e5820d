"""Wall-clock timing of several workloads, interleaved so noise hits all alike.

A benchmark of variants that runs them one after the other lets a slow phase
of the machine (another job, thermal throttling) land on one variant only.
:func:`time_interleaved` runs them round-robin instead, rotating the variant
that goes first every round, and returns every repeat; :func:`summarize`
reduces them to medians and :func:`add_ratios` to ratios against a baseline.
:func:`paired_ratios` divides each call by the baseline's call of the same
round instead: a slow phase that lasts a round cancels out, and the spread of
those ratios shows how far a single median ratio can be trusted;
:func:`median_interval` gives a confidence interval of their median.

On CPU, a step's time also depends on how many fresh memory pages it touches:
the C allocator hands large freed blocks back to the operating system, and
using them again costs a page fault per page. :func:`time_interleaved` can
count those minor page faults per call (:func:`minor_faults`), so a slow
variant shows whether it computed more or faulted more.
"""
import statistics
import time
from typing import (Callable, Dict, List, Mapping, MutableMapping, Optional,
                    Sequence)

import torch
from scipy import stats

__all__ = [
    'RATIO_FIELDS', 'synchronize', 'minor_faults', 'time_interleaved',
    'median_ms', 'summarize', 'add_ratios', 'median_interval', 'paired_ratios'
]

#: Confidence level of :func:`median_interval` in :func:`paired_ratios`.
CONFIDENCE = 0.95

#: ``(field, ratio field)`` pairs that :func:`add_ratios` divides by the
#: baseline's field.
RATIO_FIELDS = (('train_ms', 'train_ratio'), ('infer_ms', 'infer_ratio'),
                ('peak_mem_mb', 'peak_mem_ratio'), ('step_rss_mb',
                                                    'step_rss_ratio'),
                ('flops', 'flops_ratio'), ('params', 'params_ratio'))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); a no-op on CPU."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


#: Minor page faults of every timed call, by workload name.
FaultCounts = Dict[str, List[int]]


def minor_faults() -> Optional[int]:
    """Minor page faults of this process so far (``getrusage``); None where
    the platform does not count them."""
    try:
        import resource
    except ImportError:  # not a Unix
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(
        fns: Mapping[str, Callable[[], None]],
        warmup: int,
        repeats: int,
        device: torch.device,
        faults: Optional[FaultCounts] = None) -> Dict[str, List[float]]:
    """Time every function ``repeats`` times, round-robin.

    In round r (warm-up rounds included) the functions run in their dict
    order rotated by r, so no function always runs first (after a pause) or
    last.

    Args:
        fns (Mapping[str, Callable]): the workloads, by name.
        warmup (int): untimed rounds first (>= 0).
        repeats (int): timed rounds (>= 1).
        device (torch.device): synchronised around every call.
        faults (dict, optional): if given, the minor page faults of every
            timed call are appended to ``faults[name]`` (nothing where
            :func:`minor_faults` is None). Default: None.

    Returns:
        dict[str, list[float]]: seconds of every timed call, by name.
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f'time_interleaved: warmup={warmup!r} must be >= 0 '
                         f'and repeats={repeats!r} >= 1')
    names = list(fns)
    for r in range(warmup):
        for k in range(len(names)):
            fns[names[(r + k) % len(names)]]()
    synchronize(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    count = faults is not None and minor_faults() is not None
    for r in range(warmup, warmup + repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            synchronize(device)
            before = minor_faults() if count else 0
            start = time.perf_counter()
            fns[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if count:
                faults.setdefault(name, []).append(minor_faults() - before)
    return times


def median_ms(seconds: Sequence[float]) -> float:
    """The median of ``seconds``, in milliseconds."""
    return statistics.median(seconds) * 1e3


def summarize(times: Mapping[str, Sequence[float]],
              prefix: str) -> Dict[str, Dict[str, object]]:
    """``{name: {prefix_ms: median, prefix_ms_all: [every repeat]}}`` in ms.

    Args:
        times (Mapping[str, Sequence[float]]): seconds per call, by name, as
            :func:`time_interleaved` returns them.
        prefix (str): field prefix, e.g. ``'train'``.
    """
    return {
        name: {
            f'{prefix}_ms': median_ms(values),
            f'{prefix}_ms_all': [v * 1e3 for v in values]
        }
        for name, values in times.items()
    }


def add_ratios(variants: MutableMapping[str, MutableMapping[str, object]],
               base: str,
               fields: Sequence = RATIO_FIELDS) -> None:
    """Add ``ratio field = field / variants[base][field]`` to every variant.

    Fields missing (or None) on a variant or zero on the baseline get no
    ratio.

    Args:
        variants (MutableMapping): per-variant result dicts, changed in place.
        base (str): the baseline variant's name (e.g. ``'plain'``).
        fields (Sequence): ``(field, ratio field)`` pairs.
            Default: :data:`RATIO_FIELDS`.
    """
    if base not in variants:
        raise ValueError(f'add_ratios: base={base!r} is not one of the '
                         f'variants {list(variants)}')
    reference = variants[base]
    for info in variants.values():
        for field, ratio in fields:
            if info.get(field) is not None and reference.get(field):
                info[ratio] = info[field] / reference[field]


def median_interval(values: Sequence[float],
                    confidence: float = CONFIDENCE) -> Optional[List[float]]:
    """A distribution-free confidence interval of the median of ``values``.

    Two order statistics of the values, chosen by the binomial distribution
    (``scipy.stats.quantile_test``): it assumes the values are independent
    draws of one distribution, not that it is normal. With
    ``confidence=0.95`` 6 values are the fewest that give one; with 10 it
    runs from the 2nd to the 9th smallest, with 30 from the 10th to the
    21st.

    Args:
        values (Sequence[float]): e.g. the ratios of interleaved rounds.
        confidence (float): in (0, 1). Default: 0.95.

    Returns:
        list[float] | None: ``[low, high]``, or None where there are too few
        values for that confidence.
    """
    if not 0 < confidence < 1:
        raise ValueError(f'median_interval: confidence={confidence!r} must '
                         'be in (0, 1)')
    if len(values) < 2:
        return None
    interval = stats.quantile_test(
        list(values), q=statistics.median(values),
        p=0.5).confidence_interval(confidence)
    if any(v != v for v in interval):  # NaN: too few values
        return None
    return [float(interval.low), float(interval.high)]


def paired_ratios(times: Mapping[str, Sequence[float]], base: str,
                  prefix: str) -> Dict[str, Dict[str, object]]:
    """Per-round ratios to ``base`` and their median and quartiles.

    Round r of every workload is divided by round r of ``base`` (the calls
    ran minutes apart at most, in the same round of
    :func:`time_interleaved`).

    Args:
        times (Mapping[str, Sequence[float]]): seconds per call, by name,
            as :func:`time_interleaved` returns them (equal lengths).
        base (str): the baseline's name.
        prefix (str): field prefix, e.g. ``'train'``.

    Returns:
        dict: ``{name: {prefix_round_ratio: median, prefix_round_ratio_iqr:
        [q1, q3], prefix_round_ratio_ci: [low, high] or None,
        prefix_round_ratio_all: [every round]}}`` for every name but
        ``base``; with fewer than two rounds the quartiles are the one
        ratio. ``_ci`` is the 95% confidence interval of the median
        (:func:`median_interval`; None with fewer than 6 rounds).
    """
    if base not in times:
        raise ValueError(f'paired_ratios: base={base!r} is not one of '
                         f'{list(times)}')
    reference = times[base]
    out: Dict[str, Dict[str, object]] = {}
    for name, values in times.items():
        if name == base:
            continue
        if len(values) != len(reference):
            raise ValueError(f'paired_ratios: {name!r} has {len(values)} '
                             f'rounds, {base!r} {len(reference)}')
        ratios = [v / r for v, r in zip(values, reference)]
        quartiles = statistics.quantiles(ratios, n=4, method='inclusive') \
            if len(ratios) > 1 else [ratios[0]] * 3
        out[name] = {
            f'{prefix}_round_ratio': statistics.median(ratios),
            f'{prefix}_round_ratio_iqr': [quartiles[0], quartiles[2]],
            f'{prefix}_round_ratio_ci': median_interval(ratios),
            f'{prefix}_round_ratio_all': ratios
        }
    return out
