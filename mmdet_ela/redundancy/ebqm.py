"""Enhanced Beta Quantile Mapping (EBQM): choosing redundant units to prune.

This is **our definition** of EBQM (see ``docs/method.md``). The paper that
names it (arXiv 2503.06473) only publishes an abstract, so this is not the
paper's algorithm, only a procedure chosen to be faithful to that abstract:

1. Candidates' redundancy scores are min-max scaled to [0, 1] over all groups
   together and moved off the boundary with the Smithson-Verkuilen correction.
2. A Beta(alpha, beta) is fitted (MLE, then moments, then Beta(1, 1)).
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
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats

from .decisions import (EBQMResult, UnitDecision, apply_safeguards,
                        check_selection_args, enumerate_candidates)

__all__ = [
    'smithson_verkuilen', 'fit_beta', 'UnitDecision', 'EBQMResult',
    'ebqm_select'
]


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
        ``(alpha, beta, method)``, method in ``{'mle', 'moments', 'uniform'}``.

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


def _validate(scores: Mapping[str, Sequence[Optional[float]]],
              mask: Mapping[str, Sequence[bool]], quantile: float,
              max_prune_ratio: float, min_keep: int) -> None:

    def _num(x: Any) -> bool:
        return isinstance(x, (int, float, np.integer, np.floating)) and \
            not isinstance(x, bool)

    if not _num(quantile) or not 0.0 < float(quantile) < 1.0:
        raise ValueError(f'quantile must be in the open interval (0, 1), '
                         f'got {quantile!r}')
    check_selection_args(mask, max_prune_ratio, min_keep)
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
    decisions, cands = enumerate_candidates(mask, scores)
    group_rank = {g: r for r, g in enumerate(mask)}
    alpha = beta = float('nan')
    fit_method = 'none'
    redundant: List[Tuple[float, int, int, str]] = []
    if cands:
        vals = np.array([decisions[k].score for k in cands], dtype=np.float64)
        lo, hi = float(vals.min()), float(vals.max())
        if hi - lo <= 1e-12 * max(1.0, abs(hi)):
            for k in cands:
                decisions[k].reason = 'no spread in scores'
        else:
            z = smithson_verkuilen((vals - lo) / (hi - lo))
            alpha, beta, fit_method = fit_beta(z)
            cdf = stats.beta.cdf(z, alpha, beta)
            for (g, i), zi, p in zip(cands, z, cdf):
                d = decisions[(g, i)]
                d.cdf, d.scaled = float(p), float(zi)
                if p < quantile:
                    d.redundant = True
                    redundant.append((float(p), group_rank[g], i, g))
                else:
                    d.reason = 'above quantile'
    order = [(g, i) for _, _, i, g in sorted(redundant)]
    result = apply_safeguards(order, decisions, mask, max_prune_ratio,
                              min_keep)
    result.alpha, result.beta, result.fit_method = alpha, beta, fit_method
    return result
