"""The ablation variants: one table of named config changes, and their use.

A variant says which backbone and neck the detector gets (the config's ELA
types, or mmdet's plain ``ResNet`` / ``FPN`` with the same arguments), and
whether ``ELAPruneHook`` runs, with which options. ``random`` variants prune,
with the hook's ``strategy='random'``, as many units as their EBQM
counterpart removed (same seed), at the same epoch and under the same
safeguards.
"""
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from mmengine.config import Config

from ...models.layers import DEFAULT_NORM_CFG, DEFAULT_VALUE_STRIDE
from ..variants import PLAIN_TYPES, plain_model_cfg

__all__ = [
    'Variant', 'VARIANTS', 'GROUPS', 'resolve_variants', 'variant_config',
    'scale_schedule', 'ela_model_cfg', 'random_hook_options'
]

HOOK = 'ELAPruneHook'
ELA_TYPES = {v: k for k, v in PLAIN_TYPES.items()}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation grid.

    Args:
        name (str): the name users pass to ``--variants``.
        doc (str): one line for ``--list`` and the table.
        backbone (str): ``'ela'`` or ``'plain'``.
        neck (str): ``'ela'`` or ``'plain'``.
        hook (dict, optional): ``ELAPruneHook`` options over the config's
            hook (or the hook's defaults); None runs no hook. Default: None.
        random_of (str, optional): the EBQM variant whose pruning (number of
            units, epoch) this random-pruning control copies. Default: None.
        cfg_options (dict, optional): config changes, as ``--cfg-options``
            gives them (``'a.b': value``). Default: None.
    """
    name: str
    doc: str
    backbone: str = 'ela'
    neck: str = 'ela'
    hook: Optional[Dict[str, Any]] = field(default=None, hash=False)
    random_of: Optional[str] = None
    cfg_options: Optional[Dict[str, Any]] = field(default=None, hash=False)

    def overrides(self) -> Dict[str, Any]:
        """What this variant changes, for the JSON record."""
        return dict(
            backbone=self.backbone,
            neck=self.neck,
            hook=None if self.hook is None else dict(self.hook),
            random_of=self.random_of,
            cfg_options=self.cfg_options)


def unit_options(**options) -> Dict[str, Any]:
    """``cfg_options`` that set the same arguments on the backbone and the
    neck (e.g. ``attn_value_conv=False``)."""
    return {
        f'model.{part}.{key}': value
        for part in ('backbone', 'neck')
        for key, value in options.items()
    }


# The cheap unit (see LayerAttention), in the backbone and the neck: values
# are the block outputs (the default affine output norm).
LITE_UNIT = unit_options(attn_value_conv=False)
# Values, weighted sum and output at half the features' resolution (a
# stride-2 value convolution), the output upsampled.
HALF_RES_UNIT = unit_options(attn_value_stride=2)
# The unit of mmdet-ela 0.1: a batch norm on the output.
BN_UNIT = unit_options(attn_norm_cfg=dict(type='BN'))


def unit_optim_options(**options) -> Dict[str, Any]:
    """``cfg_options`` that set optimizer options (``lr_mult``,
    ``decay_mult``...) for the attention units' parameters only."""
    return {
        'optim_wrapper.paramwise_cfg':
        dict(custom_keys={'.attn.': dict(options)})
    }


# The one table of variants. Hook settings other than the defaults draw the
# accuracy/cost curve (more pruning: a higher quantile, a larger budget, more
# rounds).
_TABLE = (
    Variant(
        'plain',
        'mmdet ResNet + FPN, same arguments',
        backbone='plain',
        neck='plain'),
    Variant('ela-backbone', 'ELA backbone + plain FPN, dense', neck='plain'),
    Variant('ela', 'ELA backbone + ELA FPN, dense'),
    Variant(
        'ela-backbone+hook',
        'ELA backbone + FPN, ELAPruneHook defaults',
        neck='plain',
        hook={}),
    Variant(
        'ela+hook', 'ELA backbone + ELA FPN, ELAPruneHook defaults', hook={}),
    Variant(
        'random', 'as ela+hook, but prunes as many random units at the '
        'same epoch',
        hook={},
        random_of='ela+hook'),
    Variant(
        'ela+hook-q0.15',
        'ela+hook with quantile=0.15 (prunes less)',
        hook=dict(quantile=0.15)),
    Variant(
        'ela+hook-q0.5',
        'ela+hook with quantile=0.5 (prunes more)',
        hook=dict(quantile=0.5)),
    Variant(
        'ela+hook-q0.5-r0.5-x2', 'ela+hook with quantile=0.5, '
        'max_prune_ratio=0.5, max_rounds=2 (prunes most)',
        hook=dict(quantile=0.5, max_prune_ratio=0.5, max_rounds=2)),
    Variant(
        'ela-no-attn-decay',
        'ela without weight decay on the attention units (their zero-init '
        'norms are not pulled back to zero)',
        cfg_options=unit_optim_options(decay_mult=0.0)),
    Variant(
        'ela-attn-lr5',
        'ela with 5x the learning rate on the attention units (new, '
        'zero-initialised layers)',
        cfg_options=unit_optim_options(lr_mult=5.0)),
    Variant(
        'ela-drop-path', 'ela with stochastic depth on the attention branches '
        '(drop_path_rate=0.1, rising along the units)',
        cfg_options=unit_options(drop_path_rate=0.1)),
    Variant(
        'ela-bn-norm',
        'ela with the output norm of mmdet-ela 0.1: BN instead of the '
        'per-channel affine',
        cfg_options=BN_UNIT),
    Variant(
        'ela-bn-norm-attn-lr5',
        'ela-bn-norm with 5x the learning rate on the attention units',
        cfg_options={
            **BN_UNIT,
            **unit_optim_options(lr_mult=5.0)
        }),
    Variant(
        'ela-lite',
        'ela with the cheap unit: values are the block outputs (no value '
        'conv)',
        cfg_options=LITE_UNIT),
    Variant(
        'ela-lite+hook',
        'ela-lite with ELAPruneHook defaults',
        hook={},
        cfg_options=LITE_UNIT),
    Variant(
        'ela-lite-attn-lr5',
        'ela-lite with 5x the learning rate on the attention units',
        cfg_options={
            **LITE_UNIT,
            **unit_optim_options(lr_mult=5.0)
        }),
    Variant(
        'ela-value-stride2',
        'ela with the units at half resolution: a stride-2 value conv, the '
        'output upsampled by 2x2 blocks (attn_value_stride=2)',
        cfg_options=HALF_RES_UNIT),
    Variant(
        'ela-value-stride2-attn-lr5',
        'ela-value-stride2 with 5x the learning rate on the attention units',
        cfg_options={
            **HALF_RES_UNIT,
            **unit_optim_options(lr_mult=5.0)
        }),
)
VARIANTS: Dict[str, Variant] = {v.name: v for v in _TABLE}

GROUPS: Dict[str, List[str]] = dict(
    default=[
        'plain', 'ela-backbone', 'ela', 'ela-backbone+hook', 'ela+hook',
        'random'
    ],
    curve=[
        'ela', 'ela+hook-q0.15', 'ela+hook', 'ela+hook-q0.5',
        'ela+hook-q0.5-r0.5-x2'
    ],
    why=[
        'ela', 'ela-no-attn-decay', 'ela-attn-lr5', 'ela-drop-path',
        'ela-bn-norm'
    ],
    lite=['ela', 'ela-lite', 'ela-bn-norm', 'ela+hook', 'ela-lite+hook'],
    cost=[
        'plain', 'ela', 'ela-value-stride2', 'ela-lite', 'ela-lite-attn-lr5'
    ],
    all=list(VARIANTS))


def resolve_variants(names: Sequence[str]) -> List[Variant]:
    """Variants for ``names`` (variant or group names), in run order.

    Duplicates are dropped; a ``random`` variant's EBQM counterpart is added
    (before it) when missing, since the control reads that run's record.

    Raises:
        ValueError: an unknown name.
    """
    out: List[str] = []
    for name in names:
        if name in GROUPS:
            todo = GROUPS[name]
        elif name in VARIANTS:
            todo = [name]
        else:
            raise ValueError(
                f'--variants: unknown variant {name!r}; variants: '
                f'{list(VARIANTS)}, groups: {list(GROUPS)}')
        for n in todo:
            counterpart = VARIANTS[n].random_of
            if counterpart is not None and counterpart not in out:
                out.append(counterpart)
            if n not in out:
                out.append(n)
    return [VARIANTS[n] for n in out]


# ------------------------------------------------------------ model configs
def _convert(part: Optional[dict], types: Mapping[str, str]) -> Optional[dict]:
    if part is None or part.get('type') not in types:
        return part
    part = copy.deepcopy(part)
    part['type'] = types[part['type']]
    return part


def ela_model_cfg(model_cfg: Mapping) -> dict:
    """``model_cfg`` with ResNet -> ELAResNet and FPN -> ELAFPN, same args.

    A converted neck takes the backbone's ``dim_per_head`` when it has one.
    """
    model = copy.deepcopy(dict(model_cfg))
    backbone, neck = model.get('backbone'), model.get('neck')
    if isinstance(backbone, dict):
        model['backbone'] = _convert(backbone, ELA_TYPES)
    if isinstance(neck, dict) and neck.get('type') in ELA_TYPES:
        model['neck'] = _convert(neck, ELA_TYPES)
        if isinstance(backbone, dict) and 'dim_per_head' in backbone:
            model['neck'].setdefault('dim_per_head', backbone['dim_per_head'])
    return model


def _model_for(model_cfg: Mapping, variant: Variant) -> dict:
    plain, ela = plain_model_cfg(model_cfg), ela_model_cfg(model_cfg)
    model = copy.deepcopy(dict(model_cfg))
    for key in ('backbone', 'neck'):
        choice = getattr(variant, key)
        if choice not in ('ela', 'plain'):
            raise ValueError(f'variant {variant.name!r}: {key}={choice!r} '
                             "must be 'ela' or 'plain'")
        model[key] = (ela if choice == 'ela' else plain).get(key)
        if choice == 'ela' and isinstance(model[key], dict):
            # Explicit, so a run of another default unit is never reused.
            model[key].setdefault('attn_norm_cfg', dict(DEFAULT_NORM_CFG))
            model[key].setdefault('attn_value_stride', DEFAULT_VALUE_STRIDE)
    for key, types in (('backbone', ('ResNet', 'ELAResNet')),
                       ('neck', ('FPN', 'ELAFPN'))):
        if getattr(variant, key) == 'ela' and isinstance(model.get(key), dict):
            if model[key].get('type') not in types:
                raise ValueError(
                    f'variant {variant.name!r} needs an ELA {key}, but the '
                    f'config\'s {key} type is {model[key].get("type")!r}; '
                    f'convertible types: {list(types)}')
    return model


# ------------------------------------------------------------ schedule, hook
def _scale(value: Any, ratio: float, old: int, new: int) -> Any:
    if isinstance(value, (list, tuple)):
        return type(value)(_scale(v, ratio, old, new) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return new if value == old else max(0, int(round(value * ratio)))


def scale_schedule(cfg: Config, epochs: int) -> None:
    """Train ``epochs``; epoch-based scheduler bounds and ``begin`` follow.

    Args:
        cfg (Config): an epoch-based config, changed in place.
        epochs (int): the new ``train_cfg.max_epochs``.

    Raises:
        ValueError: ``epochs < 1`` or an iteration-based config.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f'--epochs={epochs!r} must be an integer >= 1')
    old = cfg.train_cfg.get('max_epochs')
    if old is None:
        raise ValueError(
            f'--epochs needs an epoch-based train_cfg, got '
            f'type={cfg.train_cfg.get("type")!r} without max_epochs')
    ratio = epochs / old
    cfg.train_cfg.max_epochs = epochs
    schedulers = cfg.get('param_scheduler') or []
    if isinstance(schedulers, dict):
        schedulers = [schedulers]
    for s in schedulers:
        if s.get('by_epoch', True):
            for key in ('begin', 'end', 'T_max', 'milestones', 'step_size'):
                if key in s:
                    s[key] = _scale(s[key], ratio, old, epochs)
    for hook in cfg.get('custom_hooks') or []:
        if hook.get('type') == HOOK and hook.get('begin'):
            hook['begin'] = max(1, int(round(hook['begin'] * ratio)))


def random_hook_options(records: Sequence[dict], seed: int) -> Dict[str, Any]:
    """Hook options that prune, at random, what an EBQM run's records removed.

    Args:
        records (list[dict]): the EBQM run's round records, in round order.
        seed (int): the random selection's seed.

    Returns:
        dict: ``strategy='random'``, ``random_units``, ``seed``, ``begin``
        (the epoch of the EBQM pruning round) and ``max_rounds=1``; or
        ``{'random_units': 0}`` when the EBQM run pruned nothing.

    Raises:
        ValueError: the EBQM run pruned in more than one round.
    """
    pruning = [
        r for r in records if r.get('newly_pruned') and not r.get('dry_run')
    ]
    if not pruning:
        return dict(random_units=0)
    if len(pruning) > 1:
        raise ValueError(
            'the random-pruning control copies one pruning round, but the '
            f'EBQM run pruned in rounds {[r.get("round") for r in pruning]}; '
            'run its counterpart with max_rounds=1')
    rec = pruning[0]
    return dict(
        strategy='random',
        random_units=len(rec['newly_pruned']),
        seed=int(seed),
        begin=int(rec['progress']),
        interval=1,
        max_rounds=1)


def _set_hook(cfg: Config, options: Optional[Dict[str, Any]]) -> None:
    hooks = [dict(h) for h in cfg.get('custom_hooks') or []]
    found = [h for h in hooks if h.get('type') == HOOK]
    others = [h for h in hooks if h.get('type') != HOOK]
    if options is not None:
        hook = found[-1] if found else dict(type=HOOK)
        hook.update(options)
        others.append(hook)
    cfg.custom_hooks = others


def variant_config(
        base: Config,
        variant: Variant,
        seed: int,
        hook_options: Optional[Mapping[str, Any]] = None,
        random_options: Optional[Mapping[str, Any]] = None) -> Config:
    """The config of one run: ``base`` with the variant's changes and the seed.

    Args:
        base (Config): the (already scaled) config; not changed.
        variant (Variant): the variant.
        seed (int): ``randomness.seed``.
        hook_options (dict, optional): user hook overrides, over the variant's.
            Default: None.
        random_options (dict, optional): for ``random_of`` variants, from
            :func:`random_hook_options`. Default: None.

    Returns:
        Config: a new config.
    """
    cfg = copy.deepcopy(base)
    cfg.model = _model_for(cfg.model, variant)
    hook = None
    if variant.hook is not None:
        hook = dict(variant.hook, **(hook_options or {}))
        if variant.random_of is not None:
            if random_options is None:
                raise ValueError(f'variant {variant.name!r} needs the round '
                                 f'records of its {variant.random_of!r} run')
            hook.update(random_options)
            if not hook.get('random_units'):
                hook = None  # EBQM pruned nothing: neither does the control
    _set_hook(cfg, hook)
    if variant.cfg_options:
        cfg.merge_from_dict(copy.deepcopy(variant.cfg_options))
    randomness = dict(cfg.get('randomness') or {})
    randomness['seed'] = int(seed)
    cfg.randomness = randomness
    return cfg
