"""Pairwise KL and mean attention of every stack, gathered during scoring.

:func:`mmdet_ela.pruning.score_model` runs the one scoring loop (recording on,
the adjacent-unit scorer after each forward). :class:`AttentionStats` rides on
that loop: a forward hook on the model reads the attention that every unit
recorded in the pass, so the redundancy analysis needs no loop of its own::

    stats = AttentionStats(model)
    with stats.attached():
        scores, info = score_model(model, batches)
"""
import contextlib
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
from torch import Tensor, nn

from mmdet_ela.pruning import attention_stacks, unwrap
from mmdet_ela.redundancy import adjacent_kl

__all__ = ['StackStats', 'AttentionStats', 'beta_fit_inputs', 'json_matrix']


class StackStats:
    """Sums over batches for one stack of K kept units.

    Args:
        units (Sequence[int]): unit index of each kept unit (row / slot k).

    Attributes:
        attn_sum (ndarray): [K, K]; row b sums unit b's attention over
            samples and heads (slots 0..b); ``attn_count[b]`` counts the
            distributions added.
        pair_sum, pair_count (ndarray): [K, K]; sums of KL(P_a || A_b) over
            samples and heads for a < b, and their counts.
    """

    def __init__(self, units: Sequence[int]) -> None:
        k = len(units)
        self.units = list(units)
        self.attn_sum = np.zeros((k, k))
        self.attn_count = np.zeros(k)
        self.pair_sum = np.zeros((k, k))
        self.pair_count = np.zeros((k, k))

    def update(self, attns: Sequence[Tensor]) -> None:
        """Add one batch: ``attns[b]`` is unit b's attention [N, G, S_b]."""
        for b, attn in enumerate(attns):
            a = attn.double()
            self.attn_sum[b, :a.shape[-1]] += a.sum(dim=(0, 1)).cpu().numpy()
            self.attn_count[b] += a.shape[0] * a.shape[1]
            for prev in range(b):
                kl = adjacent_kl(attns[prev], attn)
                self.pair_sum[prev, b] += float(kl.sum())
                self.pair_count[prev, b] += kl.numel()

    def mean_attention(self) -> np.ndarray:
        """[K, K]: row b is unit b's mean distribution; NaN above it."""
        k = len(self.units)
        out = np.full((k, k), np.nan)
        for b in range(k):
            if self.attn_count[b] > 0:
                out[b, :b + 1] = self.attn_sum[b, :b + 1] / self.attn_count[b]
        return out

    def pairwise_kl(self) -> np.ndarray:
        """[K, K]: ``M[a, b] = KL(P_a || A_b)`` for a < b, NaN elsewhere."""
        with np.errstate(invalid='ignore', divide='ignore'):
            out = self.pair_sum / self.pair_count
        out[self.pair_count == 0] = np.nan
        return out


class AttentionStats:
    """:class:`StackStats` of every stack, fed after each model forward.

    Args:
        model (nn.Module): the model (wrappers are looked through); its
            units must record attention during the forward passes (as
            :func:`score_model` arranges).

    Attributes:
        stacks (dict[str, StackStats]): by stack name.
        images (int): images seen (first dimension of ``inputs``).
        input_shape (list[int], optional): shape of the first ``inputs``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap(model)
        self._stacks = attention_stacks(self.model)
        if not self._stacks:
            raise ValueError('the model has no layer-attention units (is it '
                             'an ELA model?)')
        self.stacks = {
            name: StackStats([i for i, _ in s.kept_units()])
            for name, s in self._stacks.items()
        }
        self.images = 0
        self.input_shape: Optional[List[int]] = None

    def update(self) -> None:
        """Add the attention that the units recorded in the last forward."""
        for name, stack in self._stacks.items():
            attns = [u.attention for _, u in stack.kept_units()]
            if attns and all(a is not None for a in attns):
                self.stacks[name].update(attns)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict,
              output: Any) -> None:
        inputs = kwargs.get('inputs', args[0] if args else None)
        if isinstance(inputs, Tensor):
            self.images += inputs.shape[0]
            self.input_shape = self.input_shape or list(inputs.shape)
        self.update()

    @contextlib.contextmanager
    def attached(self) -> Iterator['AttentionStats']:
        """Call :meth:`update` after every forward of the model, inside."""
        handle = self.model.register_forward_hook(self._hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()


def _stack_label(group: str) -> str:
    """A stack's label in the Beta-fit plot.

    ``'backbone.layer3.attn'`` -> ``'layer3'``, ``'neck.attn'`` -> ``'neck'``.
    """
    if group.endswith('.attn'):
        group = group[:-len('.attn')]
    return group.split('.')[-1]


def beta_fit_inputs(record: Mapping[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of ``plot_beta_fit`` from an EBQM record.

    Uses the scaled scores z' and CDF values that EBQM stored on its
    candidates (nothing is recomputed here).

    Args:
        record (Mapping): ``EBQMResult.to_dict()`` or a hook round record.
    """
    fitted = record.get('fit_method') not in (None, 'none', 'random')
    cands = [
        d for d in record.get('decisions', [])
        if fitted and d.get('candidate') and d.get('scaled') is not None
    ]
    return dict(
        z=[d['scaled'] for d in cands],
        cdf=[d['cdf'] for d in cands],
        pruned=[d['pruned'] for d in cands],
        labels=[f'{_stack_label(d["group"])}.{d["index"]}' for d in cands],
        alpha=record.get('alpha'),
        beta=record.get('beta'),
        fit_method=record.get('fit_method') or '')


def json_matrix(m: np.ndarray) -> List[List[Optional[float]]]:
    """A float matrix as nested lists, NaN / inf as None (JSON-safe)."""
    return [[None if not np.isfinite(v) else float(v) for v in row]
            for row in m]
