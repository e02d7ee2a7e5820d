"""Model-level helpers: find the attention stacks, read and apply pruning masks,
and switch attention recording on and off."""
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping, Sequence

import torch.nn as nn

from .layers import LayerAttentionStack


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP/DataParallel/mmengine wrapper, or the model itself."""
    while hasattr(model, 'module') and isinstance(model.module, nn.Module):
        model = model.module
    return model


def attention_stacks(model: nn.Module) -> Dict[str, LayerAttentionStack]:
    """Every :class:`LayerAttentionStack` of the model, by module name, in model order.

    Names are relative to the unwrapped model, e.g. ``'backbone.layer3.attn'``.
    """
    return {
        name: m
        for name, m in unwrap(model).named_modules()
        if isinstance(m, LayerAttentionStack)
    }


def get_masks(model: nn.Module) -> Dict[str, List[bool]]:
    """The current mask of every stack: ``{name: [kept, ...]}``."""
    return {name: s.kept for name, s in attention_stacks(model).items()}


def apply_masks(model: nn.Module,
                masks: Mapping[str, Sequence[bool]]) -> Dict[str, List[int]]:
    """Prune the model to ``masks``; refuse masks that do not fit the model.

    Returns:
        dict: the unit indices removed now, per stack.
    """
    stacks = attention_stacks(model)
    if set(masks) != set(stacks):
        expected = {n: s.num_units for n, s in stacks.items()}
        raise ValueError(
            f'pruning mask does not fit the model: it names stacks '
            f'{sorted(masks)}, but the model has {len(stacks)} layer-attention '
            f'stacks with these unit counts: {expected}')
    return {n: stacks[n].set_mask(masks[n], name=n) for n in stacks}


def count_units(model: nn.Module) -> Dict[str, int]:
    """``{'total': ..., 'kept': ..., 'pruned': ...}`` over all stacks."""
    masks = get_masks(model).values()
    total = sum(len(m) for m in masks)
    kept = sum(sum(m) for m in masks)
    return dict(total=total, kept=kept, pruned=total - kept)


def set_recording(model: nn.Module, enabled: bool) -> None:
    """Make every unit store (or stop storing) its last attention map [N, G, S].

    Recording off (the default state) costs one boolean test per unit.
    """
    for stack in attention_stacks(model).values():
        for _, unit in stack.kept_units():
            unit.recording = enabled
            unit.attention = None


@contextmanager
def record_attention(model: nn.Module) -> Iterator[None]:
    """Context manager form of :func:`set_recording`."""
    set_recording(model, True)
    try:
        yield
    finally:
        set_recording(model, False)
