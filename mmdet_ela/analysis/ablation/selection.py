"""Units to remove for the pruning-choice check: EBQM, random, top scores.

Pure functions over ``{stack: [score or None, ...]}`` and
``{stack: [kept, ...]}`` (no mmengine/mmdet). Every selection prunes under
the same safeguards as EBQM (predecessor kept, no two adjacent units in one
round, ``min_keep``, ``max_prune_ratio``); the random and top-score sets take
EBQM's size.
"""
import math
from typing import Dict, Mapping, Optional, Sequence

from mmdet_ela.redundancy import EBQMResult, ebqm_select, random_select
from mmdet_ela.redundancy.decisions import (apply_safeguards,
                                            enumerate_candidates)

__all__ = ['top_select', 'choose_selections']

Scores = Mapping[str, Sequence[Optional[float]]]
Mask = Mapping[str, Sequence[bool]]


def top_select(scores: Scores,
               mask: Mask,
               num_units: int,
               min_keep: int = 1,
               max_prune_ratio: float = 0.3) -> EBQMResult:
    """Prune up to ``num_units`` highest-scoring (least redundant) units.

    EBQM removes the lowest KL scores; this removes the highest, under the
    same candidates and safeguards: the "worst choice" arm of the check.
    Candidates are walked in descending score (ties: group order, index).

    Args:
        scores (Mapping[str, Sequence[float | None]]): per-unit KL scores.
        mask (Mapping[str, Sequence[bool]]): True while a unit exists.
        num_units (int): how many to prune now, >= 0.
        min_keep (int): units every group keeps. Default: 1.
        max_prune_ratio (float): budget over all rounds, in [0, 1).
            Default: 0.3.

    Returns:
        EBQMResult: ``fit_method='top'``; candidates not reached have reason
        'limit reached'.

    Raises:
        ValueError: a bad ``num_units``, or groups that differ between
            ``scores`` and ``mask``.
    """
    if isinstance(num_units, bool) or not isinstance(num_units, int) \
            or num_units < 0:
        raise ValueError(f'num_units must be an int >= 0, got {num_units!r}')
    if set(scores) != set(mask):
        raise ValueError(f'scores name groups {list(scores)!r}, the mask '
                         f'{list(mask)!r}')
    decisions, cands = enumerate_candidates(mask, scores, need_score=True)
    rank = {g: r for r, g in enumerate(mask)}
    order = sorted(
        cands, key=lambda k: (-decisions[k].score, rank[k[0]], k[1]))
    result = apply_safeguards(
        order, decisions, mask, max_prune_ratio, min_keep, limit=num_units)
    result.fit_method = 'top'
    return result


def choose_selections(scores: Scores,
                      mask: Mask,
                      quantile: float = 0.3,
                      max_prune_ratio: float = 0.3,
                      min_keep: int = 1,
                      random_sets: int = 5,
                      seed: int = 0) -> Dict[str, EBQMResult]:
    """EBQM's choice, the top-score set and random sets of the same size.

    Args:
        scores (Mapping): per-unit KL scores.
        mask (Mapping): the current keep-mask.
        quantile (float): EBQM's quantile. Default: 0.3.
        max_prune_ratio (float): budget over all rounds. Default: 0.3.
        min_keep (int): units every group keeps. Default: 1.
        random_sets (int): how many random sets (seeds ``seed + k``).
            Default: 5.
        seed (int): the first random set's seed. Default: 0.

    Returns:
        dict: ``'ebqm'``, ``'top'``, ``'random-0'``... to their results.
    """
    if isinstance(random_sets, bool) or not isinstance(random_sets, int) \
            or random_sets < 0:
        raise ValueError(f'random_sets must be an int >= 0, got '
                         f'{random_sets!r}')
    out = dict(
        ebqm=ebqm_select(scores, mask, quantile, max_prune_ratio, min_keep))
    size = len(out['ebqm'].newly_pruned)
    out['top'] = top_select(scores, mask, size, min_keep, max_prune_ratio)
    for k in range(random_sets):
        out[f'random-{k}'] = random_select(
            mask, size, seed + k, min_keep, max_prune_ratio, scores=scores)
    return out


def mean_score(result: EBQMResult) -> Optional[float]:
    """Mean KL score of the units a selection pruned (None if none)."""
    vals = [
        d.score for d in result.decisions
        if d.pruned and d.score is not None and math.isfinite(d.score)
    ]
    return sum(vals) / len(vals) if vals else None
