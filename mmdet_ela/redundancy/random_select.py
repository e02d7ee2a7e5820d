"""Random pruning under EBQM's safeguards: the control arm of an ablation.

No mmengine/mmdet imports here.
"""
from __future__ import annotations
from typing import Mapping, Optional, Sequence

import numpy as np

from .decisions import (EBQMResult, apply_safeguards, check_selection_args,
                        enumerate_candidates)

__all__ = ['random_select']


def random_select(
    mask: Mapping[str, Sequence[bool]],
    num_units: int,
    seed: int,
    min_keep: int = 1,
    max_prune_ratio: float = 0.3,
    scores: Optional[Mapping[str, Sequence[Optional[float]]]] = None
) -> EBQMResult:
    """Prune up to ``num_units`` units drawn at random, with EBQM's safeguards.

    The candidates are those of :func:`ebqm_select` without the need for a
    score (the first kept unit of a group never is one, nor a unit whose
    predecessor or successor was pruned). They are shuffled with
    ``numpy.random.default_rng(seed)`` and walked in that order under the same
    safeguards (predecessor kept, no two adjacent units, ``min_keep``,
    ``max_prune_ratio`` over all rounds), until ``num_units`` are pruned. The
    result is a pure function of its inputs, hence identical on every rank.

    Args:
        mask (Mapping[str, Sequence[bool]]): True while a unit exists.
        num_units (int): how many units to prune now, >= 0.
        seed (int): seed of the draw.
        min_keep (int): every group keeps at least this many units.
            Default: 1.
        max_prune_ratio (float): budget over all rounds, in [0, 1).
            Default: 0.3.
        scores (Mapping, optional): per-unit scores, only copied into the
            decisions for the record. Default: None.

    Returns:
        EBQMResult: ``fit_method='random'``, alpha = beta = NaN; candidates
        not reached have reason 'limit reached'.

    Raises:
        ValueError: on a bad ``num_units``, ``seed``, ``min_keep`` or
            ``max_prune_ratio``.
    """
    check_selection_args(mask, max_prune_ratio, min_keep)
    for name, value in (('num_units', num_units), ('seed', seed)):
        is_int = isinstance(value, (int, np.integer)) and \
            not isinstance(value, bool)
        if not is_int or value < 0:
            raise ValueError(f'{name} must be an int >= 0, got {value!r}')
    if scores is not None and set(scores) != set(mask):
        raise ValueError(f'scores name groups {list(scores)!r}, the mask '
                         f'{list(mask)!r}')
    decisions, cands = enumerate_candidates(mask, scores, need_score=False)
    rng = np.random.default_rng(int(seed))
    order = [cands[j] for j in rng.permutation(len(cands))]
    result = apply_safeguards(
        order,
        decisions,
        mask,
        max_prune_ratio,
        min_keep,
        limit=int(num_units))
    result.fit_method = 'random'
    return result
