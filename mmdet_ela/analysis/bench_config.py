"""What a benchmark builds: settings, model configs, variants, workloads.

:class:`BenchmarkSettings` is JSON-serialisable, so that a memory subprocess
(:mod:`.memory_child`) rebuilds exactly the parent's variant.
"""
import copy
import dataclasses
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.config import Config
from torch import nn

from mmdet_ela.pruning import Selector, apply_masks, count_units
from .settings import ebqm_selector, load_config
from .variants import build_model, drop_pretrained, plain_model_cfg
from .workload import Workload, synthetic_batch

__all__ = [
    'VARIANTS', 'LABELS', 'BACKBONE_OPTIM_WRAPPER', 'BATCH_SEED', 'SCORE_SEED',
    'BenchmarkSettings', 'ModelSetup', 'model_setup', 'build_variant',
    'build_workload'
]

VARIANTS = ('plain', 'dense', 'alt', 'pruned', 'mask')
LABELS = dict(
    plain='plain (ResNet/FPN)',
    dense='ELA dense',
    alt='ELA dense, --alt-options',
    pruned='ELA pruned (EBQM)',
    mask='ELA pruned (--mask)')
#: The optimizer of a bare backbone (no config): a small SGD step.
BACKBONE_OPTIM_WRAPPER = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=1e-4))
#: Seeds of the timed batch and of the EBQM scoring batches, past ``seed``.
BATCH_SEED, SCORE_SEED = 1, 100


@dataclasses.dataclass
class BenchmarkSettings:
    """What to benchmark and how; JSON-serialisable (memory subprocesses).

    Attributes:
        config (str, optional): a model config; None = an ``ELAResNet`` of
            ``depth`` (with ``model='backbone'``).
        cfg_options (dict, optional): overrides merged into the config (into
            the ``ELAResNet`` arguments without a config).
        alt_options (dict, optional): further overrides for the ``alt``
            variant only (e.g. another unit), timed side by side with the
            others.
        model (str): ``'detector'`` (the config's model) or ``'backbone'``
            (its backbone, or ``ELAResNet(depth)`` without a config).
        img_size (tuple[int, int]): (H, W) of the synthetic images.
        amp (bool): train with mmengine's ``AmpOptimWrapper`` and infer under
            autocast (CUDA).
        lr (float, optional): override the optimizer's learning rate.
        score_batches (int): random batches scored for the EBQM variant.
        quantile, max_prune_ratio, min_keep: EBQM settings; None = the
            config's ``ELAPruneHook``, else its defaults.
        mask (str, optional): the ``mask`` variant's source.
        variants (tuple[str]): which of :data:`VARIANTS` to run.
        memory (str): ``'cuda'``, ``'subprocess'`` (CPU: peak RSS of a
            process per variant), ``'allocated'`` (CPU: peak of allocated
            tensors, :func:`~.memory.cpu_step_peak_mb`) or ``'none'``.
        op_costs (int): rounds of train steps timed op by op
            (:mod:`.op_costs`); 0 = none.
        kernel_time (int): rounds of train steps under the profiler, for
            the device's busy time against the wall time
            (:mod:`.kernel_time`; device figures on CUDA only); 0 = none.
        keep_freed_memory (bool): set glibc's malloc to keep freed memory
            in the process, and in the memory subprocesses
            (:func:`~mmdet_ela.utils.keep_freed_memory`), for every variant.
    """
    config: Optional[str] = None
    cfg_options: Optional[dict] = None
    alt_options: Optional[dict] = None
    model: str = 'detector'
    depth: int = 50
    dim_per_head: int = 32
    img_size: Tuple[int, int] = (224, 224)
    batch_size: int = 2
    device: str = 'cpu'
    amp: bool = False
    seed: int = 0
    threads: int = 1
    warmup: int = 2
    repeats: int = 10
    lr: Optional[float] = None
    num_boxes: int = 2
    score_batches: int = 2
    quantile: Optional[float] = None
    max_prune_ratio: Optional[float] = None
    min_keep: Optional[int] = None
    mask: Optional[str] = None
    variants: Tuple[str, ...] = ('plain', 'dense', 'pruned')
    memory: str = 'none'
    flops: bool = True
    op_costs: int = 0
    kernel_time: int = 0
    keep_freed_memory: bool = False


@dataclasses.dataclass
class ModelSetup:
    """What :func:`model_setup` read from the config.

    Attributes:
        model_cfg (dict): the ELA model's config, Pretrained init dropped.
        alt_model_cfg (dict, optional): the same with ``alt_options``.
        optim_wrapper (dict): the optimizer wrapper's config.
        selector (Selector): EBQM's settings for the ``pruned`` variant.
        notes (list[str]): what was changed, for the output.
    """
    model_cfg: dict
    optim_wrapper: dict
    selector: Selector
    notes: List[str]
    alt_model_cfg: Optional[dict] = None


def _model_cfg(s: BenchmarkSettings, options: Optional[dict]) -> tuple:
    """(config or None, model config) with ``options`` merged."""
    if s.config is not None:
        cfg = load_config(s.config, options)
        return cfg, (
            cfg.model if s.model == 'detector' else cfg.model.backbone)
    model_cfg = dict(
        type='ELAResNet', depth=s.depth, dim_per_head=s.dim_per_head)
    if options:  # keys are the backbone's own: attn_value_conv=...
        backbone = Config(model_cfg)
        backbone.merge_from_dict(options)
        model_cfg = backbone.to_dict()
    return None, model_cfg


def model_setup(s: BenchmarkSettings) -> ModelSetup:
    """Read the config (or make a backbone config) for the benchmark."""
    notes = []
    cfg, model_cfg = _model_cfg(s, s.cfg_options)
    optim = cfg.get('optim_wrapper') if cfg is not None else None
    optim = optim or BACKBONE_OPTIM_WRAPPER
    alt_model_cfg = None
    if s.alt_options:
        alt_options = {**(s.cfg_options or {}), **s.alt_options}
        alt_model_cfg, _ = drop_pretrained(_model_cfg(s, alt_options)[1])
    model_cfg, dropped = drop_pretrained(model_cfg)
    if dropped:
        notes.append('init_cfg Pretrained dropped (no download; random '
                     f'weights are fine for timing): {", ".join(dropped)}')
    optim = copy.deepcopy(
        optim.to_dict() if hasattr(optim, 'to_dict') else dict(optim))
    if s.amp:
        optim['type'] = 'AmpOptimWrapper'
    if s.lr is not None:
        optim['optimizer']['lr'] = s.lr
    selector = ebqm_selector(
        cfg,
        quantile=s.quantile,
        max_prune_ratio=s.max_prune_ratio,
        min_keep=s.min_keep)
    return ModelSetup(model_cfg, optim, selector, notes, alt_model_cfg)


def build_variant(setup: ModelSetup,
                  name: str,
                  seed: int,
                  mask: Optional[Dict[str, List[bool]]] = None) -> nn.Module:
    """Build variant ``name`` (:data:`VARIANTS`), pruned to ``mask`` if given.

    Every variant holds the same weights: the ELA ones are built with the
    same seed, and ``plain`` gets the ELA model's residual-path weights. At
    initialisation ELA computes exactly what the plain model computes, so
    all variants see the same proposals and targets, and differ only by the
    work of their attention units.

    Raises:
        ValueError: ``mask`` does not fit the model (names its stacks).
    """
    if name == 'alt':
        if setup.alt_model_cfg is None:
            raise ValueError("the 'alt' variant needs alt_options "
                             '(--alt-options)')
        return build_model(setup.alt_model_cfg, seed)
    model = build_model(setup.model_cfg, seed)
    if not count_units(model)['total']:
        raise ValueError('the benchmarked model has no layer-attention units '
                         '(no ELAResNet / ELAFPN in it): nothing to compare')
    if name == 'plain':
        plain = build_model(plain_model_cfg(setup.model_cfg), seed)
        ela_state = model.state_dict()
        plain.load_state_dict({k: ela_state[k] for k in plain.state_dict()})
        return plain
    if mask is not None:
        apply_masks(model, mask)
    return model


def build_workload(s: BenchmarkSettings, setup: ModelSetup,
                   model: nn.Module) -> Workload:
    """A :class:`Workload` of ``model`` on the benchmark's synthetic batch."""
    device = torch.device(s.device)
    model.to(device)
    batch = synthetic_batch(model, s.batch_size, s.img_size,
                            s.seed + BATCH_SEED, s.num_boxes)
    return Workload(model, setup.optim_wrapper, batch, device, s.amp)
