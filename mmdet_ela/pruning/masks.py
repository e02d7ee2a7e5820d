"""Find the attention stacks of a model; read, validate and apply pruning
masks; switch attention recording; load masks from files, records or
checkpoints."""
import json
import os.path as osp
from contextlib import contextmanager
from typing import Dict, Iterator, List, Mapping

import torch.nn as nn
from mmengine.model import is_model_wrapper

from ..models.layers.attention_stack import (LayerAttentionStack, binary_mask,
                                             guard_mask_loading)

__all__ = [
    'unwrap', 'attention_stacks', 'get_masks', 'validate_masks', 'apply_masks',
    'masks_from_state_dict', 'count_units', 'set_recording',
    'record_attention', 'load_masks', 'guard_mask_loading'
]

CHECKPOINT_SUFFIXES = ('.pth', '.pt', '.ckpt')


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside mmengine/torch model wrappers (DDP, FSDP, ...)."""
    while is_model_wrapper(model):
        model = model.module
    return model


def attention_stacks(model: nn.Module) -> Dict[str, LayerAttentionStack]:
    """Every :class:`LayerAttentionStack` of the model, by name, in order.

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


def validate_masks(model: nn.Module,
                   masks: Mapping[str, object]) -> Dict[str, List[bool]]:
    """Check that ``masks`` fit the model, without pruning anything.

    Args:
        model (nn.Module): the model (wrappers are looked through).
        masks (Mapping[str, Sequence | Tensor]): one mask per stack, by the
            names of :func:`attention_stacks`; finite 0/1 values, 1 = kept.

    Returns:
        dict[str, list[bool]]: the masks as bools, in model order.

    Raises:
        ValueError: naming the stack, for a missing or unknown stack name, a
            non-binary or non-finite value, a wrong length or a revived unit.
    """
    stacks = attention_stacks(model)
    missing = [n for n in stacks if n not in masks]
    unknown = [n for n in masks if n not in stacks]
    if missing or unknown:
        expected = {n: s.num_units for n, s in stacks.items()}
        raise ValueError(
            f'pruning mask does not fit the model: it lacks stacks {missing} '
            f'and names unknown stacks {unknown}; the model has '
            f'{len(stacks)} layer-attention stacks with these unit counts: '
            f'{expected}')
    return {n: s.check_mask(masks[n], name=n) for n, s in stacks.items()}


def apply_masks(model: nn.Module,
                masks: Mapping[str, object]) -> Dict[str, List[int]]:
    """Prune the model to ``masks``, all or nothing.

    Every stack's mask is validated (:func:`validate_masks`) before any unit
    is pruned, so a mask that does not fit leaves the model unchanged.

    Returns:
        dict[str, list[int]]: the unit indices removed now, per stack.
    """
    checked = validate_masks(model, masks)
    stacks = attention_stacks(model)
    return {n: stacks[n].set_mask(m, name=n) for n, m in checked.items()}


def masks_from_state_dict(model: nn.Module,
                          state_dict: Mapping) -> Dict[str, List[bool]]:
    """The mask of every stack as ``state_dict`` holds it, validated.

    A stack whose ``'<name>.mask'`` (or ``'module.<name>.mask'``) key is absent
    keeps its current mask.

    Raises:
        ValueError: as :func:`validate_masks`, naming the state_dict key.
    """
    masks = {}
    for name, stack in attention_stacks(model).items():
        key = f'{name}.mask'
        key = key if key in state_dict else 'module.' + key
        masks[name] = stack.check_mask(state_dict[key], name=key) \
            if key in state_dict else stack.kept
    return masks


def count_units(model: nn.Module) -> Dict[str, int]:
    """``{'total': ..., 'kept': ..., 'pruned': ...}`` over all stacks."""
    masks = get_masks(model).values()
    total = sum(len(m) for m in masks)
    kept = sum(sum(m) for m in masks)
    return dict(total=total, kept=kept, pruned=total - kept)


def set_recording(model: nn.Module, enabled: bool) -> None:
    """Make every unit store (or stop storing) its attention map [N, G, S].

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


def load_masks(source: str) -> Dict[str, List[bool]]:
    """Read pruning masks ``{stack name: [kept, ...]}`` from ``source``.

    Args:
        source (str): one of

            - a JSON mask file ``{name: [0/1, ...]}``;
            - a hook round record ``round_K.json`` (its ``'mask'``);
            - a directory of round records, or a work dir holding
              ``ela_prune/`` (the latest round's mask);
            - a checkpoint (``.pth``, ``.pt``, ``.ckpt``): the ``*.attn.mask``
              buffers of its state_dict, loaded through mmengine's
              ``CheckpointLoader`` (so safe loading applies).

    Raises:
        ValueError: no mask in ``source``, or a non-binary / non-finite
            value (naming its key).
    """
    if osp.isdir(source):
        from .records import load_records
        return _mask_of(load_records(source)[-1], source)
    if source.endswith(CHECKPOINT_SUFFIXES):
        return _checkpoint_masks(source)
    with open(source) as f:
        return _mask_of(json.load(f), source)


def _mask_of(data, source: str) -> Dict[str, List[bool]]:
    if isinstance(data, dict) and isinstance(data.get('mask'), dict):
        data = data['mask']  # a hook round record
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, list) for v in data.values()):
        raise ValueError(f'{source}: expected {{stack_name: [0/1, ...]}} or '
                         'a hook round record with a "mask" field')
    return {k: binary_mask(v, f'{k} in {source}') for k, v in data.items()}


def _checkpoint_masks(path: str) -> Dict[str, List[bool]]:
    from mmengine.runner import CheckpointLoader
    ckpt = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    masks = {}
    for key, value in state.items():
        if key.endswith('attn.mask'):
            name = key[:-len('.mask')]
            name = name[len('module.'):] if name.startswith('module.') \
                else name
            masks[name] = binary_mask(value, f'{key} in {path}')
    if not masks:
        raise ValueError(f'{path}: no "*.attn.mask" buffers in the '
                         'checkpoint; is it an ELA model?')
    return masks
