"""A sequence of layer-attention units with a pruning mask that travels in the state_dict."""
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
from mmengine.model import BaseModule, ModuleDict
from torch import Tensor

from .layer_attention import LayerAttention, LayerAttentionMemory


class LayerAttentionStack(BaseModule):
    """The layer-attention units of one sequence (a backbone stage or the neck).

    Unit ``i`` follows block ``i`` (or pyramid level ``i``). Pruning deletes a unit's
    modules; its block then passes its output through unchanged and later units
    retrieve only from the units that remain.

    The buffer ``mask`` ([T], uint8, 1 = kept) is saved with the weights. Loading a
    state_dict with a mask into this module prunes it to that mask first, so a pruned
    checkpoint loads strictly into a freshly built dense model.

    Args:
        channels (Sequence[int]): the channels of each unit (length T).
        dim_per_head (int): channels per attention head.
        norm_cfg (dict): config of each unit's output norm.
        drop_path_rates (Sequence[float]): per-unit stochastic depth.
        with_cp (bool): gradient checkpointing of the units.
    """

    def __init__(self,
                 channels: Sequence[int],
                 dim_per_head: int = 32,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 drop_path_rates: Optional[Sequence[float]] = None,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        num_units = len(channels)
        if drop_path_rates is None:
            drop_path_rates = [0.0] * num_units
        self.units = ModuleDict({
            str(i): LayerAttention(c, dim_per_head, norm_cfg, rate, with_cp)
            for i, (c, rate) in enumerate(zip(channels, drop_path_rates))
        })
        self.register_buffer(
            'mask', torch.ones(num_units, dtype=torch.uint8), persistent=True)

    @property
    def num_units(self) -> int:
        return self.mask.numel()

    @property
    def kept(self) -> List[bool]:
        return [bool(m) for m in self.mask.tolist()]

    def kept_units(self) -> List[Tuple[int, LayerAttention]]:
        """(index, unit) of the remaining units, in sequence order."""
        return [(int(k), u) for k, u in self.units.items()]

    def forward(self, index: int, x: Tensor,
                memory: LayerAttentionMemory) -> Tensor:
        """Apply unit ``index`` to x ([N, C, H, W]); identity if it was pruned."""
        key = str(index)
        if key not in self.units:
            return x
        return self.units[key](x, memory)

    def prune(self, indices: Iterable[int]) -> List[int]:
        """Delete the given units. Returns the indices that were removed now."""
        removed = []
        for i in sorted(set(int(i) for i in indices)):
            if not 0 <= i < self.num_units:
                raise ValueError(f'unit index {i} is out of range: this '
                                 f'sequence has {self.num_units} units')
            if str(i) in self.units:
                del self.units[str(i)]
                self.mask[i] = 0
                removed.append(i)
        return removed

    def set_mask(self, mask: Sequence[bool], name: str = '') -> List[int]:
        """Prune to ``mask`` (True/1 = kept). A pruned unit cannot come back."""
        mask = [bool(m) for m in torch.as_tensor(mask).flatten().tolist()]
        where = f' for {name}' if name else ''
        if len(mask) != self.num_units:
            raise ValueError(
                f'pruning mask{where} has {len(mask)} entries, but the model '
                f'has {self.num_units} layer-attention units there '
                f'(expected a mask of length {self.num_units}, 1 = kept)')
        revived = [i for i, (m, k) in enumerate(zip(mask, self.kept))
                   if m and not k]
        if revived:
            raise ValueError(
                f'pruning mask{where} keeps units {revived}, which this model '
                'has already pruned; pruned units cannot be restored')
        return self.prune(i for i, m in enumerate(mask) if not m)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # Runs before the children are loaded: prune to the saved mask first,
        # so the remaining keys match the remaining units exactly.
        key = prefix + 'mask'
        if key in state_dict:
            self.set_mask(state_dict[key], name=prefix.rstrip('.'))
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)
