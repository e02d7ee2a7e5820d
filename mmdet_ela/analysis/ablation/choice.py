"""The pruning-choice check: prune one checkpoint several ways, evaluate.

Does EBQM remove the units whose removal hurts least? From one checkpoint:
score every unit over the validation set (:func:`score_model`), choose the
sets (:func:`choose_selections`), write one pruned checkpoint per set (the
mask travels with the weights) and evaluate each with mmengine's Runner, with
no training, then after a short fine-tune (``load_from`` the pruned
checkpoint).
"""
import copy
import os
import os.path as osp
import time
from typing import Any, Dict, List, Optional

import torch
from mmengine.config import Config

from ..settings import ebqm_settings
from .selection import choose_selections, mean_score

__all__ = [
    'load_model', 'score_checkpoint', 'save_pruned', 'eval_config', 'evaluate',
    'run_pruning_choice'
]

HOOK = 'ELAPruneHook'


def load_model(cfg: Config, checkpoint: str) -> torch.nn.Module:
    """Build ``cfg.model`` and load ``checkpoint`` into it (CPU, eval mode)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import load_checkpoint

    import mmdet_ela  # noqa: F401  (registers the ELA modules)
    register_all_modules(init_default_scope=True)
    model = MODELS.build(copy.deepcopy(cfg.model))
    load_checkpoint(model, checkpoint, map_location='cpu', logger='silent')
    return model.eval()


def score_checkpoint(cfg: Config,
                     model: torch.nn.Module,
                     num_batches: Optional[int] = None,
                     seed: int = 0):
    """KL scores of every unit over ``cfg.val_dataloader``.

    Returns:
        tuple: (scores, info) from :func:`mmdet_ela.pruning.score_model`.
    """
    from mmengine.runner import Runner

    from mmdet_ela.pruning.scoring import score_model
    loader_cfg = copy.deepcopy(cfg.val_dataloader)
    loader_cfg['persistent_workers'] = False
    loader = Runner.build_dataloader(loader_cfg, seed=seed)
    return score_model(model, loader, num_batches)


def save_pruned(model: torch.nn.Module, mask: Optional[Dict[str, List[bool]]],
                path: str) -> str:
    """Save ``model`` pruned to ``mask`` (None: as is); return the path."""
    from mmdet_ela.pruning.masks import apply_masks
    pruned = copy.deepcopy(model)
    if mask is not None:
        apply_masks(pruned, mask)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    torch.save(
        dict(state_dict=pruned.state_dict(), meta=dict(mask=mask)), path)
    return path


def eval_config(cfg: Config,
                checkpoint: str,
                work_dir: str,
                finetune_epochs: int = 0,
                lr_factor: float = 0.1,
                seed: int = 0) -> Config:
    """A config that loads ``checkpoint`` and evaluates it.

    With ``finetune_epochs`` > 0 it trains that many epochs first.

    The pruning hook prunes nothing more. A fine-tune keeps the config's
    optimizer with its learning rate times ``lr_factor``, constant (no
    scheduler), no validation and no checkpoints while it trains.
    """
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.launcher = 'none'
    cfg.experiment_name = osp.basename(work_dir.rstrip('/'))
    # The hook never scores here (max_rounds=0); it only makes the optimizer
    # drop the parameters that loading the pruned checkpoint removed (the
    # Runner builds the optimizer before it loads the weights).
    cfg.custom_hooks = [
        h for h in cfg.get('custom_hooks') or [] if h.get('type') != HOOK
    ]
    cfg.custom_hooks.append(dict(type=HOOK, max_rounds=0))
    cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
    if finetune_epochs:
        cfg.train_cfg = dict(
            type='EpochBasedTrainLoop',
            max_epochs=finetune_epochs,
            val_begin=finetune_epochs + 1)
        cfg.param_scheduler = None
        optimizer = cfg.optim_wrapper.get('optimizer')
        if optimizer is not None and 'lr' in optimizer:
            optimizer['lr'] = optimizer['lr'] * lr_factor
        cfg.default_hooks.checkpoint = dict(
            type='CheckpointHook', interval=-1, save_last=False)
    return cfg


def evaluate(cfg: Config, finetune: bool = False) -> Dict[str, float]:
    """Validate with mmengine's Runner (after training, if ``finetune``).

    Args:
        cfg (Config): from :func:`eval_config`.
        finetune (bool): train first (``cfg.train_cfg``). Default: False.

    Returns:
        dict: the val evaluator's metrics, e.g. ``coco/bbox_mAP``.
    """
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    if finetune:
        runner.train()
    return runner.val()


def _selection_record(result) -> Dict[str, Any]:
    return dict(
        units=[f'{g}.{i}' for g, i in result.newly_pruned],
        num_units=len(result.newly_pruned),
        mean_score=mean_score(result),
        mask=result.mask)


def run_pruning_choice(cfg: Config,
                       checkpoint: str,
                       out_dir: str,
                       random_sets: int = 5,
                       finetune_epochs: int = 1,
                       lr_factor: float = 0.1,
                       num_batches: Optional[int] = None,
                       seed: int = 0,
                       settings: Optional[dict] = None,
                       echo=print) -> Dict[str, Any]:
    """The whole check; returns the summary (the tool writes it as JSON).

    Args:
        cfg (Config): the config the checkpoint was trained with.
        checkpoint (str): a trained checkpoint (dense, or already pruned).
        out_dir (str): pruned checkpoints and evaluation work dirs go here.
        random_sets (int): random sets of EBQM's size. Default: 5.
        finetune_epochs (int): epochs of the fine-tune; 0 skips it.
            Default: 1.
        lr_factor (float): fine-tune learning rate / the config's.
            Default: 0.1.
        num_batches (int, optional): validation batches to score; None = all.
        seed (int): seed of the first random set and of the fine-tunes.
        settings (dict, optional): EBQM ``quantile``, ``max_prune_ratio``,
            ``min_keep``; default
            :func:`mmdet_ela.analysis.settings.ebqm_settings`.
    """
    from mmdet_ela.pruning.masks import count_units, get_masks
    settings = settings or ebqm_settings(cfg)
    model = load_model(cfg, checkpoint)
    if not get_masks(model):
        raise ValueError(f'{checkpoint}: the model has no layer-attention '
                         'units; the check needs an ELA model')
    echo('scoring units over the validation set ...')
    scores, info = score_checkpoint(cfg, model, num_batches, seed)
    mask = get_masks(model)
    chosen = choose_selections(
        scores, mask, random_sets=random_sets, seed=seed, **settings)
    summary: Dict[str, Any] = dict(
        config=cfg.filename,
        checkpoint=checkpoint,
        settings=settings,
        units=count_units(model),
        scoring=info,
        scores=scores,
        random_sets=random_sets,
        finetune_epochs=finetune_epochs,
        lr_factor=lr_factor,
        selections={
            k: _selection_record(r)
            for k, r in chosen.items()
        },
        stages={},
        metrics={})
    ckpts = {
        'none': save_pruned(model, None, osp.join(out_dir, 'ckpt', 'none.pth'))
    }
    for name, r in chosen.items():
        ckpts[name] = save_pruned(model, r.mask,
                                  osp.join(out_dir, 'ckpt', f'{name}.pth'))
    stages = [('no fine-tune', 0)]
    if finetune_epochs:
        stages.append(('fine-tuned', finetune_epochs))
    jobs = [(s, e, n) for s, e in stages for n in ckpts]
    start = time.time()
    for k, (stage, epochs, name) in enumerate(jobs, 1):
        echo(f'[{k}/{len(jobs)}] {stage}: {name} '
             f'({summary["selections"].get(name, {}).get("num_units", 0)} '
             f'units removed; {time.time() - start:.0f} s so far)')
        work = osp.join(out_dir, 'ft' if epochs else 'eval', name)
        metrics = evaluate(
            eval_config(cfg, ckpts[name], work, epochs, lr_factor, seed),
            bool(epochs))
        summary['metrics'].setdefault(stage, {})[name] = metrics
        summary['stages'].setdefault(stage,
                                     {})[name] = metrics.get('coco/bbox_mAP')
    return summary
