"""KL redundancy scores between adjacent layer-attention units.

See ``docs/method.md``. For adjacent units ``a`` then ``b`` with attention
distributions ``A_a`` ([N, G, S_a]) and ``A_b`` ([N, G, S_b]), ``A_a`` is
zero-padded at the end to ``S_b`` (``P_a``; the extra slots are ``b``'s own
memory entries) and the redundancy of ``b`` is ``KL(P_a || A_b)``, averaged
over samples, heads and scored batches. This module has no mmengine/mmdet
imports.
"""
from __future__ import annotations
from typing import Dict, Hashable, Iterable, List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['adjacent_kl', 'RedundancyAccumulator']


def adjacent_kl(prev_attn: Tensor, attn: Tensor, eps: float = 1e-12) -> Tensor:
    """KL divergence ``KL(P_a || A_b)`` per sample and head.

    Args:
        prev_attn: ``A_a``, attention of the earlier unit, shape [N, G, S_a].
        attn: ``A_b``, attention of the later unit, shape [N, G, S_b] with
            ``S_b >= S_a`` (normally ``S_b = S_a + 1``).
        eps: lower clamp applied to ``A_b`` before the log.

    Returns:
        Tensor of shape [N, G], dtype float64:
        ``sum_s xlogy(P, P) - P * log(clamp(A_b, eps))`` where ``P`` is
        ``prev_attn`` zero-padded at the end of the last dim to ``S_b``.
        Zero entries of ``P`` contribute exactly 0.

    Raises:
        ValueError: if the inputs are not 3-D, if N or G differ, or if
            ``S_b < S_a``.
    """
    if prev_attn.dim() != 3 or attn.dim() != 3:
        raise ValueError(
            'adjacent_kl expects prev_attn [N, G, S_a] and attn [N, G, S_b], '
            f'got shapes {tuple(prev_attn.shape)} and {tuple(attn.shape)}')
    n_a, g_a, s_a = prev_attn.shape
    n_b, g_b, s_b = attn.shape
    if n_a != n_b or g_a != g_b:
        raise ValueError(
            'adjacent_kl: prev_attn and attn must have the same N and G, got '
            f'{tuple(prev_attn.shape)} and {tuple(attn.shape)}')
    if s_b < s_a:
        raise ValueError(
            f'adjacent_kl: attn must have at least as many memory slots as '
            f'prev_attn (S_b >= S_a), got S_a={s_a}, S_b={s_b}')
    p = prev_attn.to(torch.float64)
    q = attn.to(device=p.device, dtype=torch.float64)
    if s_b > s_a:
        p = F.pad(p, (0, s_b - s_a))
    kl = torch.xlogy(p, p) - p * torch.log(q.clamp_min(eps))
    return kl.sum(dim=-1)


class RedundancyAccumulator:
    """Running sums of adjacent-unit KL divergences, one entry per key.

    Nothing is stored per batch: each :meth:`update` adds the sum of the
    [N, G] KL values to ``sums[k]`` and their number to ``counts[k]``. A sample
    whose KL is not finite for some head (NaN or inf attention, e.g. after an
    fp16 overflow) is left out whole and counted in ``skipped[k]``, so one bad
    sample never poisons a score. ``sums``, ``counts`` and ``skipped`` are the
    internal float64 tensors (not copies), so a caller may ``all_reduce`` them
    in place (SUM) across processes before calling :meth:`scores`.

    Args:
        keys: ordered, unique hashable keys, e.g. ``('backbone.layer2', 3)``.
        device: device of the ``sums``/``counts`` tensors (default CPU). Use a
            CUDA device when reducing with NCCL.
    """

    def __init__(self,
                 keys: Iterable[Hashable],
                 device: Optional[Union[str, torch.device]] = None) -> None:
        self._keys: List[Hashable] = list(keys)
        self._index: Dict[Hashable, int] = {}
        for i, key in enumerate(self._keys):
            if key in self._index:
                raise ValueError(
                    f'RedundancyAccumulator: duplicate key {key!r}')
            self._index[key] = i
        dev = torch.device('cpu') if device is None else torch.device(device)
        self._sums = torch.zeros(
            len(self._keys), dtype=torch.float64, device=dev)
        self._counts = torch.zeros(
            len(self._keys), dtype=torch.float64, device=dev)
        self._skipped = torch.zeros(
            len(self._keys), dtype=torch.float64, device=dev)

    @property
    def keys(self) -> List[Hashable]:
        """The keys, in construction order (a copy)."""
        return list(self._keys)

    @property
    def sums(self) -> Tensor:
        """Float64 tensor [K] of summed KL values (shared, reducible)."""
        return self._sums

    @property
    def counts(self) -> Tensor:
        """Float64 tensor [K] of how many KL values were summed (shared)."""
        return self._counts

    @property
    def skipped(self) -> Tensor:
        """Float64 tensor [K] of samples left out as non-finite (shared)."""
        return self._skipped

    def __len__(self) -> int:
        return len(self._keys)

    def _idx(self, key: Hashable) -> int:
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f'RedundancyAccumulator: unknown key {key!r}; '
                           f'known keys: {self._keys!r}') from None

    @torch.no_grad()
    def update(self, key: Hashable, prev_attn: Tensor, attn: Tensor) -> None:
        """Add the KL values of one batch for ``key``.

        Args:
            key: one of :attr:`keys`.
            prev_attn: [N, G, S_a] attention of the previous unit.
            attn: [N, G, S_b] attention of the unit named by ``key``.
        """
        i = self._idx(key)
        kl = adjacent_kl(prev_attn.detach(), attn.detach())  # [N, G]
        finite = torch.isfinite(kl).all(dim=1)  # [N], per sample
        # torch.where, not indexing: no host sync per batch on CUDA.
        kept = torch.where(finite[:, None], kl, torch.zeros_like(kl))
        dev = self._sums.device
        self._sums[i] += kept.sum().to(dev)
        self._counts[i] += (finite.sum() * kl.shape[1]).to(dev, torch.float64)
        self._skipped[i] += (~finite).sum().to(dev, torch.float64)

    def scores(self) -> Dict[Hashable, float]:
        """Mean KL per key (``sum / count``); NaN where nothing was counted."""
        sums = self._sums.detach().cpu().tolist()
        counts = self._counts.detach().cpu().tolist()
        return {
            k: (s / c if c > 0 else float('nan'))
            for k, s, c in zip(self._keys, sums, counts)
        }

    def reset(self) -> None:
        """Zero all sums, counts and skipped counts (in place)."""
        self._sums.zero_()
        self._counts.zero_()
        self._skipped.zero_()
