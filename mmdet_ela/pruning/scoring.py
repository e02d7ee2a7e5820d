"""Adjacent-unit redundancy scores of a model: the one scoring loop that the
hook and every tool use."""
import math
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmengine import dist

from ..redundancy import RedundancyAccumulator
from .masks import attention_stacks, record_attention, unwrap

__all__ = ['AdjacentUnitScorer', 'score_model']


class AdjacentUnitScorer:
    """Accumulates D_b = KL(P_a || A_b) of every kept unit b against its kept
    predecessor a, over the batches of one scoring round.

    The (stack, previous unit, unit) pairs are found once, at construction:
    build one scorer per round, after any pruning. Turn recording on
    (:func:`record_attention`) and call :meth:`update` after each forward; it
    reads ``unit.attention`` ([N, G, S]). Samples with non-finite KL are left
    out and counted (:attr:`skipped`). Nothing is kept per batch but sums.

    Args:
        model (nn.Module): the model (wrappers are looked through).
        device (str | torch.device, optional): where the sums live; use the
            model's device for NCCL reductions. Default: the device of the
            model's first parameter (CPU if it has none).
    """

    def __init__(self,
                 model: nn.Module,
                 device: Optional[Union[str, torch.device]] = None) -> None:
        stacks = attention_stacks(model)
        self._num_units = {n: s.num_units for n, s in stacks.items()}
        self._pairs: List[Tuple[Tuple[str, int], nn.Module, nn.Module]] = []
        for name, stack in stacks.items():
            units = stack.kept_units()
            for (_, prev), (i, unit) in zip(units, units[1:]):
                self._pairs.append(((name, i), prev, unit))
        if device is None:
            param = next(unwrap(model).parameters(), None)
            device = param.device if param is not None else 'cpu'
        self.acc = RedundancyAccumulator([k for k, _, _ in self._pairs],
                                         device=device)
        self.batches = 0

    def update(self) -> None:
        """Add the attention recorded by the last forward pass.

        A pair whose units recorded nothing (a stack that did not run) is left
        out for this batch.
        """
        for key, prev, unit in self._pairs:
            if prev.attention is not None and unit.attention is not None:
                self.acc.update(key, prev.attention, unit.attention)
        self.batches += 1

    def reduce(self) -> None:
        """Sum the sums, counts and skipped counts over all processes."""
        for t in (self.acc.sums, self.acc.counts, self.acc.skipped):
            dist.all_reduce(t, op='sum')

    @property
    def skipped(self) -> int:
        """How many samples were left out as non-finite, over all pairs."""
        return int(self.acc.skipped.sum().item())

    def scores(self) -> Dict[str, List[Optional[float]]]:
        """Per stack, one entry per unit: the mean KL, or None (not scored:
        the first kept unit, a pruned unit, or no finite sample)."""
        raw = self.acc.scores()
        out: Dict[str, List[Optional[float]]] = {}
        for name, num in self._num_units.items():
            row = [raw.get((name, i)) for i in range(num)]
            out[name] = [
                v if v is not None and math.isfinite(v) else None for v in row
            ]
        return out


def score_model(
    model: nn.Module,
    data_batches: Iterable,
    num_batches: Optional[int] = None
) -> Tuple[Dict[str, List[Optional[float]]], dict]:
    """Score a detector on mmdet data batches (for tools).

    Runs ``model.test_step`` (``val_step`` if it has none) with recording on
    and no gradients, then reduces across processes.

    Args:
        model (nn.Module): an mmengine model (``BaseModel``) or its wrapper.
        data_batches (Iterable): e.g. a val dataloader's batches.
        num_batches (int, optional): score at most this many. Default: all.

    Returns:
        tuple: (scores as :meth:`AdjacentUnitScorer.scores`, ``dict(
        batches=..., skipped=...)``).
    """
    scorer = AdjacentUnitScorer(model)
    step = getattr(model, 'test_step', None) or model.val_step
    with torch.no_grad(), record_attention(model):
        for k, batch in enumerate(data_batches):
            if num_batches is not None and k >= num_batches:
                break
            step(batch)
            scorer.update()
    scorer.reduce()
    return scorer.scores(), dict(
        batches=scorer.batches, skipped=scorer.skipped)
