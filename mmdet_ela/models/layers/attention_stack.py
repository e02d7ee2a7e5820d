"""A sequence of layer-attention units, with a pruning mask that travels in the
state_dict."""
from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule, ModuleDict
from torch import Tensor

from .layer_attention import (DEFAULT_NORM_CFG, DEFAULT_VALUE_STRIDE,
                              LayerAttention, LayerAttentionMemory)
from .replay import OutputReplay


class LayerAttentionStack(BaseModule):
    """The layer-attention units of one sequence (a backbone stage, the neck).

    Unit ``i`` follows block ``i`` (or pyramid level ``i``). Pruning deletes a
    unit's modules; its block then passes its output through unchanged and
    later units retrieve only from the units that remain.

    The buffer ``mask`` ([T], uint8, 1 = kept) is saved with the weights.
    Loading a state_dict with a mask into this module prunes it to that mask
    first, so a pruned checkpoint loads strictly into a freshly built dense
    model. Masks are checked (finite 0/1 values, length, no revived unit)
    before anything is pruned.

    Args:
        channels (Sequence[int]): the channels of each unit (length T).
        dim_per_head (int): channels per attention head.
        norm_cfg (dict): config of each unit's output norm.
        drop_path_rates (Sequence[float]): per-unit stochastic depth.
        value_conv (bool): each unit's value convolution (False: V = X).
        value_stride (int): each unit's values at 1/value_stride of the
            resolution (see :class:`LayerAttention`).
        with_cp (bool): gradient checkpointing of the units.
        compiled (bool): the units through ``torch.compile`` (affine
            output only; see :class:`LayerAttention`).
        recompute_values (bool, optional): the units make their values
            again in backward (None: on CUDA only).
    """

    def __init__(self,
                 channels: Sequence[int],
                 dim_per_head: int = 32,
                 norm_cfg: dict = DEFAULT_NORM_CFG,
                 drop_path_rates: Optional[Sequence[float]] = None,
                 value_conv: bool = True,
                 value_stride: int = DEFAULT_VALUE_STRIDE,
                 with_cp: bool = False,
                 compiled: bool = False,
                 recompute_values: Optional[bool] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        num_units = len(channels)
        if drop_path_rates is None:
            drop_path_rates = [0.0] * num_units
        self.units = ModuleDict({
            str(i):
            LayerAttention(
                channels=c,
                dim_per_head=dim_per_head,
                norm_cfg=norm_cfg,
                drop_path_rate=rate,
                value_conv=value_conv,
                value_stride=value_stride,
                with_cp=with_cp,
                compiled=compiled,
                recompute_values=recompute_values)
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

    def extra_repr(self) -> str:
        return f'kept={sum(self.kept)}/{self.num_units}'

    def kept_units(self) -> List[Tuple[int, LayerAttention]]:
        """(index, unit) of the remaining units, in sequence order."""
        return [(int(k), u) for k, u in self.units.items()]

    def forward(self,
                index: int,
                x: Tensor,
                memory: LayerAttentionMemory,
                replay: Optional[OutputReplay] = None) -> Tensor:
        """Apply unit ``index`` to x ([N, C, H, W]); identity if pruned.
        ``replay``: the unit's :meth:`output_replay`, if any."""
        key = str(index)
        if key not in self.units:
            return x
        return self.units[key](x, memory, replay)

    def output_replay(self, index: int, x: Tensor,
                      memory: LayerAttentionMemory) -> Optional[OutputReplay]:
        """Unit ``index``'s :meth:`LayerAttention.output_replay`; None if
        it is pruned."""
        key = str(index)
        return self.units[key].output_replay(x, memory) \
            if key in self.units else None

    def prune(self, indices: Iterable[int]) -> List[int]:
        """Delete the given units. Returns the indices removed now."""
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

    def check_mask(self, mask, name: str = '') -> List[bool]:
        """``mask`` as a list of bools, if this stack can be pruned to it.

        Nothing is pruned here: callers validate every stack first, then prune.

        Args:
            mask (Sequence | Tensor): one 0/1 (or bool) entry per unit,
                1 = kept.
            name (str): the mask's name (e.g. its state_dict key), for errors.
                Default: ''.

        Raises:
            ValueError: a non-finite or non-binary value, a wrong length, or a
                unit kept that this stack already pruned.
        """
        where = f' for {name}' if name else ''
        mask = binary_mask(mask, name)
        if len(mask) != self.num_units:
            raise ValueError(
                f'pruning mask{where} has {len(mask)} entries, but the model '
                f'has {self.num_units} layer-attention units there '
                f'(expected a mask of length {self.num_units}, 1 = kept)')
        revived = [
            i for i, (m, k) in enumerate(zip(mask, self.kept)) if m and not k
        ]
        if revived:
            raise ValueError(
                f'pruning mask{where} keeps units {revived}, which this model '
                'has already pruned; pruned units cannot be restored')
        return mask

    def set_mask(self, mask, name: str = '') -> List[int]:
        """Prune to ``mask`` (True/1 = kept). A pruned unit cannot come back.

        Returns:
            list[int]: the unit indices removed now.
        """
        mask = self.check_mask(mask, name)
        return self.prune(i for i, m in enumerate(mask) if not m)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # Runs before the children are loaded: prune to the saved mask first,
        # so the remaining keys match the remaining units exactly. A model
        # holding several stacks validates all of them before this runs
        # (see guard_mask_loading), so a bad mask prunes nothing.
        key = prefix + 'mask'
        if key in state_dict:
            self.set_mask(state_dict[key], name=key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)


def binary_mask(value, name: str = '') -> List[bool]:
    """Read a pruning mask: finite 0/1 (or bool) values only.

    Args:
        value (Sequence | Tensor): the mask, any shape (flattened).
        name (str): its name (e.g. a state_dict key), for errors. Default: ''.

    Returns:
        list[bool]: True = kept.

    Raises:
        ValueError: naming ``name``, for values that are not 0 or 1.
    """
    where = f' {name}' if name else ''
    try:
        t = torch.as_tensor(value).detach().flatten().to(torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f'pruning mask{where} is not a sequence of 0/1 '
                         f'values: {value!r} ({err})') from None
    bad = t[~((t == 0) | (t == 1))]  # NaN and inf included
    if bad.numel():
        raise ValueError(
            f'pruning mask{where} holds {sorted(set(bad.tolist()), key=str)}'
            '; allowed values are 0 and 1 (or False/True), 1 = kept')
    return [bool(v) for v in t.tolist()]


def guard_mask_loading(module: nn.Module) -> None:
    """Make ``module.load_state_dict`` all-or-nothing for pruning masks.

    Registers a load_state_dict pre-hook that checks the mask of every
    :class:`LayerAttentionStack` inside ``module`` against the incoming
    state_dict before any stack prunes itself (torch and mmengine both load a
    parent before its children). Idempotent.

    Args:
        module (nn.Module): a module holding stacks (a backbone, a neck, a
            detector).
    """
    if getattr(module, '_ela_mask_guard', False):
        return
    module._ela_mask_guard = True
    module.register_load_state_dict_pre_hook(_check_state_dict_masks)


def _check_state_dict_masks(module: nn.Module, state_dict, prefix: str,
                            *args) -> None:
    for name, stack in module.named_modules():
        if isinstance(stack, LayerAttentionStack):
            key = prefix + (name + '.' if name else '') + 'mask'
            if key in state_dict:
                stack.check_mask(state_dict[key], name=key)
