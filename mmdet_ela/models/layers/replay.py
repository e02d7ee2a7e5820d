"""A unit's output computed again in backward instead of being kept.

In a ResNet stage, unit b's output Z_b is the input of block b + 1, whose
first convolution keeps it for its weight gradient until backward. Z_b sits
beside the block output X_b, which the block's ReLU and the unit keep anyway:
one full-size tensor more per unit than the plain stage holds. An
:class:`OutputReplay` takes Z_b's place among the tensors that block b + 1
saves (``torch.autograd.graph.saved_tensors_hooks``), and backward computes
Z_b again from X_b, the memory's values and the mixing weights that the
unit's forward hands the replay (``weights``: [N, C, S] and the bias, small):
the same op on the same inputs, so the same values bit for bit. Only the
weighted sum runs again (one pass per value), not the attention: a few ops
per unit. The unit's own value is the one
forward made (kept, or made again once for every unit that reads it,
:class:`~.ops.RecomputedValues`).
"""
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.graph import saved_tensors_hooks

from .ops import RecomputedValues, resize_values

if TYPE_CHECKING:
    from .layer_attention import LayerAttentionMemory


def _signature(t: Tensor) -> tuple:
    """What identifies a tensor's contents without holding it: where they
    lie, their layout and their version (a change in place moves it)."""
    return (t.data_ptr(), t.shape, t.stride(), t.dtype, t.device, t._version)


class OutputReplay:
    """Unit ``unit``'s output, computed again in backward.

    Holds the unit's input, the values it read, its own value V_b (see
    :meth:`bind`) and its mixing weights, all detached (the backward graph
    holds this object, and a graph reachable from here would be a reference
    cycle that Python's garbage collector cannot see), never the output
    itself.

    Args:
        unit (LayerAttention): the unit (affine output, no active drop
            path: its forward is deterministic).
        x (Tensor): its input X_b, [N, C, H, W].
        values (list[Tensor], optional): the memory's values before the unit
            (kept from forward anyway); None where ``recomputed`` makes them
            again.
        recomputed (RecomputedValues, optional): the memory's values made
            again in backward.
        sizes (list[torch.Size]): the values' (H, W).

    Attributes:
        weights (tuple): the affine output's mixing weights (coef [N, C, S],
            bias [B, C]; detached), set by the unit's forward (the replay is
            passed to it).
    """

    def __init__(self, unit, x: Tensor, values: Optional[List[Tensor]],
                 recomputed: Optional[RecomputedValues],
                 sizes: List[torch.Size]) -> None:
        self.unit = unit
        self.x = x.detach()
        self.values = None if values is None else [v.detach() for v in values]
        self.recomputed = recomputed
        self.sizes = sizes
        # what is refused in backward if changed in place since
        self.checked = [self.x] + (self.values or [])
        self.versions = [t._version for t in self.checked]
        device = x.device.type
        self.autocast = (device, torch.get_autocast_dtype(device),
                         torch.is_autocast_enabled(device))
        self.signature: Optional[tuple] = None
        # the unit's own value V_b, made by its value convolution in forward:
        # kept (detached), or made again (its index in ``recomputed``)
        self.own_value: Optional[Tensor] = None
        self.own_value_size: Optional[torch.Size] = None
        self.reads = len(sizes)  # values read from ``recomputed``, if any
        self.weights: Optional[Tuple[Tensor, Tensor]] = None

    def bind(self, z: Tensor, memory: 'LayerAttentionMemory') -> None:
        """Record which tensor is the output (without holding it), and the
        unit's own value (``memory``'s last, appended by the unit's
        forward). A tensor saved later is replaced only if it has the
        output's contents: the same memory and layout, not changed in place
        since."""
        self.signature = _signature(z)
        own = len(self.sizes)
        if self.unit.value is None:
            return  # V_b = X (or pooled X): nothing to save
        # defensive: the stage's forward appends exactly V_b, and makes
        # values again for every unit or for none
        if len(memory) != own + 1:
            return
        value = memory.values[own]
        if self.recomputed is None:
            self.own_value = value.detach()
            self.checked.append(self.own_value)
            self.versions.append(value._version)
        elif self.recomputed.covers(own + 1):
            self.own_value_size = value.shape[-2:]
            self.reads = own + 1

    @contextmanager
    def replacing(self) -> Iterator[None]:
        """Within: the output, where an op saves it for backward, is saved
        as this replay."""

        def pack(t: Tensor):
            if self.signature is not None and _signature(t) == self.signature:
                if self.recomputed is not None:  # one more reader per save
                    self.recomputed.read(self.reads)
                return self
            return t

        def unpack(saved):
            return self.compute() if saved is self else saved

        with saved_tensors_hooks(pack, unpack):
            yield

    def compute(self) -> Tensor:
        """The output again, [N, C, H, W], as forward computed it.

        Raises:
            RuntimeError: the unit's input or a kept value was modified in
                place since (as autograd refuses a saved tensor that was), or
                the unit's forward was not handed this replay.
        """
        if self.weights is None:
            raise RuntimeError(
                'ELA: an output replay without the mixing weights: pass it '
                'to the unit\'s forward, unit(x, memory, replay)')
        if [t._version for t in self.checked] != self.versions:
            raise RuntimeError(
                'ELA: a block output or a stored value was modified in place '
                'after a unit read it, so backward cannot compute the unit\'s '
                'output again; do not modify it in place, or build the model '
                'with attn_recompute_outputs=False')
        values, value = self.values, self.own_value
        if values is None:
            values = [
                self.recomputed.get(s, size)
                for s, size in enumerate(self.sizes)
            ]
        if self.own_value_size is not None:
            value = self.recomputed.get(len(self.sizes), self.own_value_size)
        device, dtype, enabled = self.autocast
        with torch.no_grad(), torch.autocast(device, dtype, enabled):
            if value is None:  # V_b = X (or pooled X)
                value = self.unit._value(self.x)
            values = resize_values(values, value.shape[-2:]) + [value]
            return self.unit._mix(self.x, *self.weights, values)
