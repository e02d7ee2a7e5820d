"""The models a benchmark compares: plain, dense ELA, and pruned ELA.

:func:`plain_model_cfg` turns an ELA model config into its plain counterpart
(``ELAResNet`` -> mmdet ``ResNet``, ``ELAFPN`` -> ``FPN``, same arguments minus
the ELA-only ones), so that the residual path has the same modules and
state_dict keys. :func:`drop_pretrained` removes ``Pretrained`` initialisation
(it downloads), :func:`build_model` builds a config with a fixed seed, and
:class:`BackboneModel` gives a bare backbone the mmengine model interface
(data preprocessor, ``mode='loss' | 'tensor' | 'predict'``) so that one code
path trains, times, counts and scores backbones and detectors alike.
"""
import contextlib
import copy
import logging
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import torch
from mmengine.model import BaseModel
from torch import Tensor, nn

__all__ = [
    'PLAIN_TYPES', 'ELA_ONLY_ARGS', 'plain_model_cfg', 'drop_pretrained',
    'quiet_logs', 'build_model', 'BackboneModel', 'fit_backbone_masks'
]

#: ELA module type -> the mmdet module it extends.
PLAIN_TYPES = {'ELAResNet': 'ResNet', 'ELAFPN': 'FPN'}
#: Arguments that only the ELA modules take.
ELA_ONLY_ARGS = ('dim_per_head', 'stage_with_attention', 'drop_path_rate',
                 'attn_norm_cfg', 'attn_value_conv', 'attn_value_stride',
                 'attn_compile', 'attn_recompute_values',
                 'attn_recompute_outputs')


def _to_dict(cfg: Any) -> Any:
    """A plain, deep copy of a (nested) ``ConfigDict`` / dict / list."""
    if hasattr(cfg, 'to_dict'):
        cfg = cfg.to_dict()
    return copy.deepcopy(cfg)


def _plain(cfg: Any) -> Any:
    if isinstance(cfg, dict):
        out = {k: _plain(v) for k, v in cfg.items()}
        kind = str(out.get('type', '')).split('.')[-1]
        if kind in PLAIN_TYPES:
            out['type'] = PLAIN_TYPES[kind]
            for key in ELA_ONLY_ARGS:
                out.pop(key, None)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_plain(v) for v in cfg)
    return cfg


def plain_model_cfg(model_cfg: Mapping) -> Dict[str, Any]:
    """The plain counterpart of an ELA model config.

    Every module config (at any depth: the model itself, its backbone, its
    neck, a list of necks) of type ``ELAResNet`` or ``ELAFPN`` (also with a
    scope prefix such as ``mmdet_ela.ELAResNet``) becomes ``ResNet`` / ``FPN``
    without :data:`ELA_ONLY_ARGS`; everything else is kept. A config without
    ELA modules comes back unchanged.

    Args:
        model_cfg (Mapping): a model config, e.g. ``cfg.model``.

    Returns:
        dict: a new plain dict; ``model_cfg`` is not changed.

    Example:
        >>> plain_model_cfg(dict(type='ELAResNet', depth=18, dim_per_head=16))
        {'type': 'ResNet', 'depth': 18}
    """
    if not isinstance(model_cfg, Mapping):
        raise TypeError(f'plain_model_cfg: model_cfg must be a dict or '
                        f'ConfigDict, got {type(model_cfg).__name__}')
    return _plain(_to_dict(model_cfg))


def _drop(cfg: Any, path: str, dropped: List[str]) -> Any:
    if isinstance(cfg, dict):
        out = {}
        for key, value in cfg.items():
            where = f'{path}.{key}' if path else str(key)
            if key == 'init_cfg' and isinstance(value, dict) and \
                    value.get('type') == 'Pretrained':
                dropped.append(f'{where} ({value.get("checkpoint")})')
                out[key] = None
            else:
                out[key] = _drop(value, where, dropped)
        return out
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_drop(v, f'{path}[{i}]', dropped)
                         for i, v in enumerate(cfg))
    return cfg


def drop_pretrained(cfg: Mapping) -> Tuple[Dict[str, Any], List[str]]:
    """Remove ``init_cfg=dict(type='Pretrained', ...)`` at any depth.

    Args:
        cfg (Mapping): a model config.

    Returns:
        tuple[dict, list[str]]: a plain copy with those ``init_cfg`` set to
        None, and where they were (e.g. ``'backbone.init_cfg
        (torchvision://resnet50)'``).
    """
    dropped: List[str] = []
    return _drop(_to_dict(cfg), '', dropped), dropped


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence mmengine's INFO logs (e.g. the per-parameter init report)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class BackboneModel(BaseModel):
    """A backbone with the mmengine model interface, for benchmarks.

    ``mode='loss'`` returns ``{'loss': sum_i mean(out_i)}`` over the stage
    outputs (a stand-in loss that touches every output); ``'tensor'`` and
    ``'predict'`` return the outputs. The default
    ``BaseDataPreprocessor`` only moves ``inputs`` [N, 3, H, W] to the device.

    Args:
        backbone (dict): the backbone's config.
    """

    def __init__(self, backbone: dict) -> None:
        super().__init__()
        from mmdet.registry import MODELS
        self.backbone = MODELS.build(backbone)

    def forward(self,
                inputs: Tensor,
                data_samples: Optional[list] = None,
                mode: str = 'tensor') -> Any:
        outs = self.backbone(inputs)
        if mode == 'loss':
            return dict(loss=sum(o.float().mean() for o in outs))
        if mode in ('tensor', 'predict'):
            return outs
        raise ValueError(f'BackboneModel: mode={mode!r} is not one of '
                         "'loss', 'tensor', 'predict'")


def build_model(model_cfg: Mapping, seed: int = 0) -> nn.Module:
    """Build a model config with mmdet's registry, seeded, and initialise it.

    A config of a backbone (a type in mmdet's registry that is not an
    mmengine ``BaseModel``) is wrapped in :class:`BackboneModel`.

    Args:
        model_cfg (Mapping): the model (or backbone) config.
        seed (int): torch seed before building. Default: 0.
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmdet_ela  # noqa: F401  (registers ELAResNet, ELAFPN)
    register_all_modules(init_default_scope=True)
    from mmengine.config import ConfigDict
    torch.manual_seed(seed)
    # mmdet's heads read their train/test cfg by attribute: a ConfigDict
    cfg = ConfigDict(_to_dict(model_cfg))
    model_cls = MODELS.get(cfg['type'])
    if model_cls is None:
        raise ValueError(f'build_model: type={cfg["type"]!r} is not in '
                         "mmdet's model registry")
    if issubclass(model_cls, BaseModel):
        model = MODELS.build(cfg)
    else:
        model = BackboneModel(cfg)
    with quiet_logs():
        model.init_weights()
    return model


def fit_backbone_masks(
    masks: Mapping[str,
                   List[bool]]) -> Tuple[Dict[str, List[bool]], List[str]]:
    """Name a mask's stacks as a :class:`BackboneModel` names them.

    Detector names (``backbone.layer1.attn``) stay; bare backbone names
    (``layer1.attn``) get the ``backbone.`` prefix; entries of other parts of
    a detector (``neck.attn``) are left out.

    Returns:
        tuple[dict, list[str]]: the renamed masks, and a note per entry left
        out.
    """
    fitted: Dict[str, List[bool]] = {}
    notes = []
    for name, kept in masks.items():
        head = name.split('.')[0]
        if head == 'backbone':
            fitted[name] = list(kept)
        elif head.startswith('layer'):
            fitted[f'backbone.{name}'] = list(kept)
        else:
            notes.append(f'mask entry {name} left out (not in a backbone)')
    return fitted, notes
