"""Per-unit decisions shared by EBQM and the random control: candidates and
safeguards.

A candidate is a kept unit after the first kept unit of its group whose
predecessor and successor (if any) are kept. A selection walks the chosen
candidates in its own order and prunes one only while the safeguards hold: its
predecessor stays kept, it is not next to a unit pruned in the same round, its
group keeps at least ``min_keep`` units, and the total pruned stays within
``floor(max_prune_ratio * total units)``.
No mmengine/mmdet imports here.
"""
from __future__ import annotations
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'UnitDecision', 'EBQMResult', 'check_selection_args',
    'enumerate_candidates', 'apply_safeguards'
]

Key = Tuple[str, int]


@dataclass
class UnitDecision:
    """The decision for one unit.

    ``score`` is the input score (None if none was given), ``cdf`` the Beta CDF
    value ``p`` and ``scaled`` the candidate's scaled score ``z'`` (min-max,
    then Smithson-Verkuilen); both None for non-candidates and when no Beta was
    fitted.
    """
    group: str
    index: int
    score: Optional[float]
    cdf: Optional[float]
    candidate: bool
    redundant: bool
    pruned: bool
    reason: str
    scaled: Optional[float] = None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


@dataclass
class EBQMResult:
    """Outcome of :func:`ebqm_select` or :func:`random_select`.

    ``decisions`` holds one entry per unit (group order, then index). ``mask``
    is the updated keep-mask (newly pruned units set False). ``alpha``,
    ``beta`` and ``fit_method`` describe the Beta fit; ``fit_method`` is
    ``'none'`` (alpha = beta = NaN) when there was nothing to fit (no
    candidates or no spread) and ``'random'`` for :func:`random_select`.
    ``num_pruned`` counts all pruned units after this round (earlier rounds
    included), ``num_units`` all units.
    """
    decisions: List[UnitDecision]
    mask: Dict[str, List[bool]]
    alpha: float
    beta: float
    fit_method: str
    num_pruned: int
    num_units: int
    newly_pruned: List[Key] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable dict (NaN / inf become None)."""
        d = asdict(self)
        d['newly_pruned'] = [[g, i] for g, i in self.newly_pruned]
        return _json_safe(d)


def check_selection_args(mask: Mapping[str, Sequence[bool]],
                         max_prune_ratio: float, min_keep: int) -> None:
    """Refuse a bad ``max_prune_ratio``, ``min_keep`` or ``mask`` type."""
    if isinstance(max_prune_ratio, bool) or not isinstance(
            max_prune_ratio, (int, float, np.integer, np.floating)) or \
            not 0.0 <= float(max_prune_ratio) < 1.0:
        raise ValueError(f'max_prune_ratio must be in [0, 1), '
                         f'got {max_prune_ratio!r}')
    if not isinstance(min_keep, (int, np.integer)) or isinstance(
            min_keep, bool) or min_keep < 1:
        raise ValueError(f'min_keep must be an int >= 1, got {min_keep!r}')
    if not isinstance(mask, Mapping):
        raise TypeError(f'mask must be a mapping {{group: [kept, ...]}}, '
                        f'got {type(mask).__name__}')


def enumerate_candidates(
        mask: Mapping[str, Sequence[bool]],
        scores: Optional[Mapping[str, Sequence[Optional[float]]]] = None,
        need_score: bool = True) -> Tuple[Dict[Key, UnitDecision], List[Key]]:
    """One decision per unit and the candidates, in group then index order.

    Args:
        mask (Mapping[str, Sequence[bool]]): True while a unit exists.
        scores (Mapping, optional): ``scores[group][i]`` or None per unit.
        need_score (bool): a candidate needs a finite score. Default: True.

    Returns:
        tuple: (decisions by (group, index), candidate keys). Non-candidates
        carry their reason: 'already pruned', 'first unit', 'predecessor
        pruned', 'neighbour pruned' or 'invalid score'.
    """
    decisions: Dict[Key, UnitDecision] = {}
    cands: List[Key] = []
    for g, m in mask.items():
        m = [bool(k) for k in m]
        first_kept = next((i for i, k in enumerate(m) if k), None)
        for i, kept in enumerate(m):
            raw = None if scores is None else scores[g][i]
            score = None if raw is None else float(raw)
            finite = score is not None and math.isfinite(score)
            reason = None
            if not kept:
                reason = 'already pruned'
            elif i == first_kept:
                reason = 'first unit'
            elif not m[i - 1]:
                reason = 'predecessor pruned'
            elif i + 1 < len(m) and not m[i + 1]:
                reason = 'neighbour pruned'
            elif need_score and not finite:
                reason = 'invalid score'
            decisions[(g, i)] = UnitDecision(
                group=g,
                index=i,
                score=score,
                cdf=None,
                candidate=reason is None,
                redundant=False,
                pruned=False,
                reason=reason or '')
            if reason is None:
                cands.append((g, i))
    return decisions, cands


def apply_safeguards(order: Sequence[Key],
                     decisions: Dict[Key, UnitDecision],
                     mask: Mapping[str, Sequence[bool]],
                     max_prune_ratio: float,
                     min_keep: int,
                     limit: Optional[int] = None) -> EBQMResult:
    """Walk ``order`` and prune each unit the safeguards allow.

    Args:
        order (Sequence[tuple]): (group, index) keys, most redundant first.
        decisions (dict): from :func:`enumerate_candidates`; updated in place.
        mask (Mapping[str, Sequence[bool]]): the mask before this round.
        max_prune_ratio (float): total budget, as a share of all units.
        min_keep (int): units every group keeps.
        limit (int, optional): prune at most this many now. Default: None.

    Returns:
        EBQMResult: with alpha = beta = NaN and fit_method 'none' (callers
        that fit a Beta fill those in).
    """
    new_mask = {g: [bool(k) for k in m] for g, m in mask.items()}
    num_units = sum(len(m) for m in new_mask.values())
    budget = math.floor(max_prune_ratio * num_units + 1e-9)
    num_pruned = sum(not k for m in new_mask.values() for k in m)
    kept_count = {g: sum(m) for g, m in new_mask.items()}
    newly: List[Key] = []
    for g, i in order:
        d, m = decisions[(g, i)], new_mask[g]
        if limit is not None and len(newly) >= limit:
            d.reason = 'limit reached'
        elif not m[i - 1]:
            d.reason = 'predecessor pruned'
        elif i + 1 < len(m) and not m[i + 1]:
            d.reason = 'neighbour pruned'
        elif kept_count[g] - 1 < min_keep:
            d.reason = 'min_keep'
        elif num_pruned + 1 > budget:
            d.reason = 'max_prune_ratio'
        else:
            m[i] = False
            kept_count[g] -= 1
            num_pruned += 1
            d.pruned, d.reason = True, 'pruned'
            newly.append((g, i))
    ordered = [
        decisions[(g, i)] for g in new_mask for i in range(len(new_mask[g]))
    ]
    return EBQMResult(
        decisions=ordered,
        mask=new_mask,
        alpha=float('nan'),
        beta=float('nan'),
        fit_method='none',
        num_pruned=num_pruned,
        num_units=num_units,
        newly_pruned=newly)
