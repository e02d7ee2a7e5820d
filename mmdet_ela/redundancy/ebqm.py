"""Enhanced Beta Quantile Mapping (EBQM): choosing redundant units to prune.

This is **our definition** of EBQM (DESIGN.md section 4). The paper that names
it (arXiv 2503.06473) only publishes an abstract, so this is not the paper's
algorithm, only a procedure chosen to be faithful to that abstract:

1. Candidates' redundancy scores are min-max scaled to [0, 1] over all groups
   together and moved off the boundary with the Smithson-Verkuilen correction.
2. A Beta(alpha, beta) is fitted (MLE, then method of moments, then Beta(1, 1)).
3. A candidate whose Beta CDF value ``p`` is below ``quantile`` is redundant.
4. Safeguards (the "enhanced" part): redundant candidates are walked in
   ascending ``(p, group order, index)``; a unit is pruned only while its
   predecessor stays kept, never next to a unit pruned in the same round, while
   its group keeps at least ``min_keep`` units and while the total number of
   pruned units stays within ``floor(max_prune_ratio * total units)``.

The result is a pure function of its inputs, hence identical on every rank.
No mmengine/mmdet imports here.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

__all__ = ['smithson_verkuilen', 'fit_beta', 'UnitDecision', 'EBQMResult',
           'ebqm_select']


def smithson_verkuilen(z: np.ndarray) -> np.ndarray:
    """Move values in [0, 1] into (0, 1): ``z' = (z (n - 1) + 0.5) / n``.

    Args:
        z: array of n values in [0, 1] (any shape; n = ``z.size``).

    Returns:
        Float64 array of the same shape.
    """
    z = np.asarray(z, dtype=np.float64)
    n = z.size
    if n == 0:
        return z.copy()
    return (z * (n - 1) + 0.5) / n


def fit_beta(z: np.ndarray) -> Tuple[float, float, str]:
    """Fit a Beta distribution on [0, 1] to ``z``.

    Tries maximum likelihood (``scipy.stats.beta.fit`` with loc 0, scale 1),
    then the method of moments, then falls back to Beta(1, 1). Fewer than 3
    values or zero variance (spread ``max - min <= 1e-12``) give Beta(1, 1)
    directly.

    Args:
        z: 1-D array of finite values in [0, 1] (normally already passed
            through :func:`smithson_verkuilen`).

    Returns:
        ``(alpha, beta, method)`` with method in ``{'mle', 'moments', 'uniform'}``.

    Raises:
        ValueError: if ``z`` holds non-finite values or values outside [0, 1].
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    if not np.all(np.isfinite(z)) or np.any(z < 0) or np.any(z > 1):
        raise ValueError('fit_beta: z must contain finite values in [0, 1]')
    if z.size < 3:
        return 1.0, 1.0, 'uniform'
    var = float(np.var(z))
    # treat rounding-level spread (e.g. var([0.4] * 3) ~ 1e-33) as no variance
    if not var > 0 or float(np.ptp(z)) <= 1e-12:
        return 1.0, 1.0, 'uniform'

    try:
        with warnings.catch_warnings(), np.errstate(all='ignore'):
            warnings.simplefilter('ignore')
            a, b, _, _ = stats.beta.fit(z, floc=0, fscale=1)
        a, b = float(a), float(b)
        if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0:
            return a, b, 'mle'
    except Exception:  # noqa: BLE001 - any optimiser failure -> fallback
        pass

    mean = float(np.mean(z))
    common = mean * (1.0 - mean) / var - 1.0
    a, b = mean * common, (1.0 - mean) * common
    if math.isfinite(a) and math.isfinite(b) and a > 0 and b > 0:
        return a, b, 'moments'
    return 1.0, 1.0, 'uniform'


@dataclass
class UnitDecision:
    """EBQM decision for one unit.

    ``score`` is the input score (None if none was given), ``cdf`` the Beta CDF
    value ``p`` (None for non-candidates and when no fit was made).
    """
    group: str
    index: int
    score: Optional[float]
    cdf: Optional[float]
    candidate: bool
    redundant: bool
    pruned: bool
    reason: str


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
    """Outcome of :func:`ebqm_select`.

    ``decisions`` holds one entry per unit (group order, then index). ``mask``
    is the updated keep-mask (newly pruned units set False). ``alpha``,
    ``beta`` and ``fit_method`` describe the Beta fit; ``fit_method`` is
    ``'none'`` (alpha = beta = NaN) when there was nothing to fit (no
    candidates or no spread). ``num_pruned`` counts all pruned units after this
    round (earlier rounds included), ``num_units`` all units.
    """
    decisions: List[UnitDecision]
    mask: Dict[str, List[bool]]
    alpha: float
    beta: float
    fit_method: str
    num_pruned: int
    num_units: int
    newly_pruned: List[Tuple[str, int]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable dict (NaN / inf become None)."""
        d = asdict(self)
        d['newly_pruned'] = [[g, i] for g, i in self.newly_pruned]
        return _json_safe(d)


def _validate(scores: Mapping[str, Sequence[Optional[float]]],
              mask: Mapping[str, Sequence[bool]], quantile: float,
              max_prune_ratio: float, min_keep: int) -> None:
    def _num(x: Any) -> bool:
        return isinstance(x, (int, float, np.integer, np.floating)) and \
            not isinstance(x, bool)

    if not _num(quantile) or not 0.0 < float(quantile) < 1.0:
        raise ValueError(f'quantile must be in the open interval (0, 1), '
                         f'got {quantile!r}')
    if not _num(max_prune_ratio) or not 0.0 <= float(max_prune_ratio) < 1.0:
        raise ValueError(f'max_prune_ratio must be in [0, 1), '
                         f'got {max_prune_ratio!r}')
    if not isinstance(min_keep, (int, np.integer)) or isinstance(min_keep, bool) \
            or min_keep < 1:
        raise ValueError(f'min_keep must be an int >= 1, got {min_keep!r}')
    if set(scores.keys()) != set(mask.keys()):
        raise ValueError(
            'scores and mask must have the same groups: expected the mask '
            f'groups {list(mask.keys())!r}, got score groups '
            f'{list(scores.keys())!r}')
    for g in mask:
        if len(scores[g]) != len(mask[g]):
            raise ValueError(
                f'scores[{g!r}] must have one entry per unit: expected '
                f'{len(mask[g])} (len(mask[{g!r}])), got {len(scores[g])}')


def ebqm_select(scores: Mapping[str, Sequence[Optional[float]]],
                mask: Mapping[str, Sequence[bool]],
                quantile: float = 0.3,
                max_prune_ratio: float = 0.3,
                min_keep: int = 1) -> EBQMResult:
    """Select redundant units to prune with EBQM (our definition).

    Args:
        scores: ``scores[group][i]`` is unit i's mean KL score D_i, or None
            (the first kept unit of a group and pruned units have none).
        mask: ``mask[group][i]`` is True while unit i exists, False when it
            was pruned in an earlier round. Group order is the dict order of
            ``mask``; it breaks ties.
        quantile: a candidate with Beta CDF ``p < quantile`` is redundant;
            in the open interval (0, 1).
        max_prune_ratio: total pruned units (all rounds, all groups) stay
            ``<= floor(max_prune_ratio * total units)`` (the product gets a
            1e-9 allowance so that e.g. 0.29 * 100 gives 29); in [0, 1).
        min_keep: every group keeps at least this many units; int >= 1.

    Candidates are kept units after the first kept unit of their group whose
    predecessor ``i-1`` and successor ``i+1`` (if any) are kept and whose
    score is finite. If the candidates' scores have no spread
    (``max - min <= 1e-12 * max(1, |max|)``, including a single candidate),
    no unit is redundant (reason ``'no spread in scores'``) and nothing is
    pruned.

    Returns:
        :class:`EBQMResult` with one :class:`UnitDecision` per unit. Reasons:
        'pruned', 'above quantile', 'predecessor pruned', 'neighbour pruned',
        'min_keep', 'max_prune_ratio', 'first unit', 'already pruned',
        'invalid score', 'no spread in scores'.

    Raises:
        ValueError: on bad ``quantile``, ``max_prune_ratio`` or ``min_keep``,
            or when ``scores`` and ``mask`` differ in groups or lengths.
    """
    _validate(scores, mask, quantile, max_prune_ratio, min_keep)
    groups = list(mask.keys())
    group_rank = {g: r for r, g in enumerate(groups)}
    old_mask = {g: [bool(m) for m in mask[g]] for g in groups}
    new_mask = {g: list(old_mask[g]) for g in groups}

    decisions: Dict[Tuple[str, int], UnitDecision] = {}
    cands: List[Tuple[str, int, float]] = []
    for g in groups:
        m = old_mask[g]
        first_kept = next((i for i, k in enumerate(m) if k), None)
        for i, kept in enumerate(m):
            raw = scores[g][i]
            score = None if raw is None else float(raw)
            reason = None
            if not kept:
                reason = 'already pruned'
            elif i == first_kept:
                reason = 'first unit'
            elif not m[i - 1]:
                reason = 'predecessor pruned'
            elif i + 1 < len(m) and not m[i + 1]:
                reason = 'neighbour pruned'
            elif score is None or not math.isfinite(score):
                reason = 'invalid score'
            decisions[(g, i)] = UnitDecision(
                group=g, index=i, score=score, cdf=None,
                candidate=reason is None, redundant=False, pruned=False,
                reason=reason or '')
            if reason is None:
                cands.append((g, i, score))

    alpha = beta = float('nan')
    fit_method = 'none'
    redundant: List[Tuple[float, int, int, str]] = []
    if cands:
        vals = np.array([s for _, _, s in cands], dtype=np.float64)
        lo, hi = float(vals.min()), float(vals.max())
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            for g, i, _ in cands:
                decisions[(g, i)].reason = 'no spread in scores'
        else:
            z = smithson_verkuilen((vals - lo) / (hi - lo))
            alpha, beta, fit_method = fit_beta(z)
            cdf = stats.beta.cdf(z, alpha, beta)
            for (g, i, _), p in zip(cands, cdf):
                d = decisions[(g, i)]
                d.cdf = float(p)
                if p < quantile:
                    d.redundant = True
                    redundant.append((float(p), group_rank[g], i, g))
                else:
                    d.reason = 'above quantile'

    num_units = sum(len(m) for m in old_mask.values())
    budget = math.floor(max_prune_ratio * num_units + 1e-9)
    num_pruned = sum(not k for m in old_mask.values() for k in m)
    kept_count = {g: sum(old_mask[g]) for g in groups}
    newly: List[Tuple[str, int]] = []
    for _, _, i, g in sorted(redundant):
        d = decisions[(g, i)]
        m = new_mask[g]
        if not m[i - 1]:
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
            d.pruned = True
            d.reason = 'pruned'
            newly.append((g, i))

    ordered = [decisions[(g, i)] for g in groups for i in range(len(old_mask[g]))]
    return EBQMResult(decisions=ordered, mask=new_mask, alpha=alpha, beta=beta,
                      fit_method=fit_method, num_pruned=num_pruned,
                      num_units=num_units, newly_pruned=newly)
