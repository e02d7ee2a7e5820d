#!/usr/bin/env python
"""Analyse layer-attention redundancy: KL matrices, EBQM fit, mask, attention maps.

Usage::

    # a trained (possibly pruned) model
    python tools/analysis/analyze_redundancy.py CONFIG CHECKPOINT --out-dir DIR
    # a config alone: random initialisation (no pretrained download)
    python tools/analysis/analyze_redundancy.py CONFIG --out-dir DIR
    # how the pruning hook's scores and decisions evolved during training
    python tools/analysis/analyze_redundancy.py --records WORK_DIR/ela_prune --out-dir DIR

With a config, the model runs ``--num-batches`` batches with attention recording on:
images from the config's ``val_dataloader`` when it can be built (and the model has a
data preprocessor), otherwise random ``--img-size`` tensors (``--random-data`` forces
that). For every stack of units (a backbone stage, the ELA neck) it accumulates

* the adjacent-unit KL ``D_b = KL(P_a || A_b)``: the redundancy score that
  ``ELAPruneHook`` uses (same accumulator, same definition, DESIGN.md section 4);
* the pairwise KL ``KL(P_a || A_b)`` for every pair of kept units ``a < b``;
* the mean attention distribution of every unit over its memory (mean over samples,
  heads and batches);

runs EBQM on the scores (``--quantile`` / ``--max-prune-ratio`` / ``--min-keep``;
defaults: the config's ``ELAPruneHook`` settings, else 0.3 / 0.3 / 1) and writes to
``--out-dir``:

``kl_adjacent.png``   (a) heatmap of D_b by stack and unit
``kl_pairwise.png``   pairwise KL matrices per stack
``ebqm_beta_fit.png`` (b) fitted Beta CDF, the candidates' scaled scores, the quantile
``mask.png``          (c) kept / pruned grid after the EBQM decision on these scores
``attention.png``     (d) mean attention distribution of every unit
``overview.png``      (a)-(d) on one page
``summary.json``      all numbers above and the EBQM decisions

With ``--records DIR`` (the hook's ``ela_prune`` folder, or a work dir holding one) it
also writes ``records.png`` (scores and decisions per round) and a ``records`` entry in
``summary.json``. A config is then optional.

On a randomly initialised model the scores reflect random weights, not learned
redundancy; the figures then show the machinery, not a result.
"""
import argparse
import glob
import json
import logging
import math
import os
import os.path as osp
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(
        description='Layer-attention redundancy analysis (KL, EBQM, masks, '
        'attention maps) of an ELA model, or of the pruning hook records.')
    p.add_argument('config', nargs='?', help='model config file')
    p.add_argument('checkpoint', nargs='?',
                   help='checkpoint (default: random initialisation)')
    p.add_argument('--out-dir', default='work_dirs/ela_analysis')
    p.add_argument('--num-batches', type=int, default=4)
    p.add_argument('--batch-size', type=int, default=2,
                   help='batch size of the random inputs')
    p.add_argument('--img-size', type=int, default=224,
                   help='size of the random inputs')
    p.add_argument('--random-data', action='store_true',
                   help='use random inputs even if the val dataloader builds')
    p.add_argument('--device', default='cpu')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--quantile', type=float, default=None)
    p.add_argument('--max-prune-ratio', type=float, default=None)
    p.add_argument('--min-keep', type=int, default=None)
    p.add_argument('--records', default=None,
                   help='folder with the hook\'s round_*.json files (or a '
                   'work dir with ela_prune/)')
    p.add_argument('--title', default=None, help='title of overview.png')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value')
    args = p.parse_args(argv)
    if args.config is None and args.records is None:
        p.error('give a config (and optionally a checkpoint), --records, '
                'or both')
    if args.num_batches < 1 or args.batch_size < 1 or args.img_size < 1:
        p.error('--num-batches, --batch-size and --img-size must be >= 1')
    return args


# ------------------------------------------------------------------ model
def _drop_pretrained(cfg: Any) -> Any:
    """A plain copy of ``cfg`` with ``init_cfg=dict(type='Pretrained')`` removed."""
    if hasattr(cfg, 'to_dict'):
        cfg = cfg.to_dict()
    if isinstance(cfg, dict):
        return {k: None if k == 'init_cfg' and isinstance(v, dict)
                and v.get('type') == 'Pretrained' else _drop_pretrained(v)
                for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return type(cfg)(_drop_pretrained(v) for v in cfg)
    return cfg


def load_config(args: argparse.Namespace):
    """The config with ``--cfg-options`` merged and its custom imports done."""
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    return cfg


def build_model(cfg, args: argparse.Namespace) -> nn.Module:
    """Build ``cfg.model``; load the checkpoint (pruning to its masks) or init randomly."""
    import mmdet_ela  # noqa: F401  (registers ELAResNet, ELAFPN, the hook)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.logging import MMLogger
    register_all_modules(init_default_scope=True)
    model_cfg = cfg.model
    if args.checkpoint is None:
        model_cfg = _drop_pretrained(model_cfg)
    torch.manual_seed(args.seed)
    model = MODELS.build(model_cfg)
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        if args.checkpoint is None:
            model.init_weights()
        else:
            from mmengine.runner import load_checkpoint
            load_checkpoint(model, args.checkpoint, map_location='cpu')
    finally:
        logger.setLevel(level)
    return model.to(args.device).eval()


def forward_tensors(model: nn.Module, images: Tensor) -> Any:
    """Backbone forward, or a detector's backbone + neck + head (no post-processing)."""
    if hasattr(model, 'extract_feat'):
        return model._forward(images)
    return model(images)


def input_batches(cfg, model: nn.Module, args: argparse.Namespace
                  ) -> Tuple[List[Tensor], str]:
    """``--num-batches`` input tensors [N, 3, H, W] and where they came from.

    Images come from the config's ``val_dataloader`` through the model's data
    preprocessor when both exist and the dataloader builds; else random tensors.
    """
    reason = 'forced by --random-data'
    if not args.random_data:
        if cfg is None or 'val_dataloader' not in cfg:
            reason = 'the config has no val_dataloader'
        elif not hasattr(model, 'data_preprocessor'):
            reason = 'the model has no data preprocessor'
        else:
            try:
                from mmengine.runner import Runner
                loader_cfg = cfg.val_dataloader.copy()
                loader_cfg['num_workers'] = 0
                loader_cfg['persistent_workers'] = False
                loader = Runner.build_dataloader(loader_cfg, seed=args.seed)
                batches = []
                with torch.no_grad():
                    for i, batch in enumerate(loader):
                        if i >= args.num_batches:
                            break
                        data = model.data_preprocessor(batch, False)
                        batches.append(data['inputs'].to(args.device))
                if batches:
                    return batches, 'val_dataloader'
                reason = 'the val dataloader is empty'
            except Exception as e:  # noqa: BLE001 - any failure -> random
                reason = f'the val dataloader did not build ({e!r:.200})'
    print(f'using random {args.img_size}x{args.img_size} inputs: {reason}')
    gen = torch.Generator().manual_seed(args.seed + 1)
    batches = [torch.randn(args.batch_size, 3, args.img_size, args.img_size,
                           generator=gen).to(args.device)
               for _ in range(args.num_batches)]
    return batches, f'random ({reason})'


# ------------------------------------------------------------------ statistics
class StackStats:
    """Sums over batches for one stack of K kept units.

    Attributes:
        units (list[int]): unit index of each kept unit (row / slot k).
        attn_sum (ndarray): [K, K]; row b sums unit b's A over samples and heads
            (slots 0..b), ``attn_count[b]`` how many distributions were added.
        pair_sum, pair_count (ndarray): [K, K]; KL(P_a || A_b) sums for a < b.
    """

    def __init__(self, units: Sequence[int]) -> None:
        k = len(units)
        self.units = list(units)
        self.attn_sum = np.zeros((k, k))
        self.attn_count = np.zeros(k)
        self.pair_sum = np.zeros((k, k))
        self.pair_count = np.zeros((k, k))

    def update(self, attns: Sequence[Tensor]) -> None:
        """Add one batch: ``attns[b]`` is unit b's attention [N, G, S_b]."""
        from mmdet_ela.redundancy import adjacent_kl
        for b, attn in enumerate(attns):
            a = attn.double()
            self.attn_sum[b, :a.shape[-1]] += a.sum(dim=(0, 1)).cpu().numpy()
            self.attn_count[b] += a.shape[0] * a.shape[1]
            for prev in range(b):
                kl = adjacent_kl(attns[prev], attn)
                self.pair_sum[prev, b] += float(kl.sum())
                self.pair_count[prev, b] += kl.numel()

    def mean_attention(self) -> np.ndarray:
        """[K, K], NaN above the diagonal."""
        k = len(self.units)
        out = np.full((k, k), np.nan)
        for b in range(k):
            if self.attn_count[b] > 0:
                out[b, :b + 1] = self.attn_sum[b, :b + 1] / self.attn_count[b]
        return out

    def pairwise_kl(self) -> np.ndarray:
        """[K, K], ``M[a, b] = KL(P_a || A_b)`` for a < b, NaN elsewhere."""
        with np.errstate(invalid='ignore', divide='ignore'):
            out = self.pair_sum / self.pair_count
        out[self.pair_count == 0] = np.nan
        return out


def collect(model: nn.Module, batches: Sequence[Tensor]
            ) -> Tuple[Dict[str, StackStats], Dict[str, List[Optional[float]]]]:
    """Run the batches with recording on.

    Returns:
        (per-stack :class:`StackStats`, adjacent-unit scores
        ``{stack: [D_i or None for every unit index]}``)
    """
    from mmdet_ela.models import attention_stacks, record_attention
    from mmdet_ela.redundancy import RedundancyAccumulator
    stacks = attention_stacks(model)
    if not stacks:
        raise ValueError('the model has no layer-attention units (is it an '
                         'ELA model?)')
    stats = {name: StackStats([i for i, _ in s.kept_units()])
             for name, s in stacks.items()}
    keys = [(name, i) for name, s in stacks.items()
            for i, _ in s.kept_units()[1:]]
    acc = RedundancyAccumulator(keys)
    with torch.no_grad(), record_attention(model):
        for images in batches:
            forward_tensors(model, images)
            for name, stack in stacks.items():
                units = stack.kept_units()
                attns = [u.attention for _, u in units]
                if any(a is None for a in attns):
                    continue  # this stack did not run (e.g. num_stages)
                stats[name].update(attns)
                for (_, prev), (i, unit) in zip(units, units[1:]):
                    acc.update((name, i), prev.attention, unit.attention)
    raw = acc.scores()
    scores = {}
    for name, stack in stacks.items():
        row: List[Optional[float]] = []
        for i in range(stack.num_units):
            v = raw.get((name, i))
            row.append(None if v is None or not math.isfinite(v) else float(v))
        scores[name] = row
    return stats, scores


def hook_settings(cfg, args: argparse.Namespace) -> Dict[str, Any]:
    """EBQM settings: command line, else the config's ELAPruneHook, else defaults."""
    found = {}
    if cfg is not None:
        for hook in cfg.get('custom_hooks', []) or []:
            if hook.get('type') == 'ELAPruneHook':
                found = hook
    return dict(
        quantile=args.quantile if args.quantile is not None else
        float(found.get('quantile', 0.3)),
        max_prune_ratio=args.max_prune_ratio
        if args.max_prune_ratio is not None else
        float(found.get('max_prune_ratio', 0.3)),
        min_keep=args.min_keep if args.min_keep is not None else
        int(found.get('min_keep', 1)))


def beta_fit_points(result) -> Dict[str, Any]:
    """The candidates' scaled scores z', CDF values and labels of an EBQMResult."""
    from mmdet_ela.redundancy import smithson_verkuilen
    cands = [d for d in result.decisions
             if d.candidate and d.score is not None]
    z: List[float] = []
    if cands and result.fit_method != 'none':
        vals = np.array([d.score for d in cands], dtype=np.float64)
        lo, hi = vals.min(), vals.max()
        z = smithson_verkuilen((vals - lo) / (hi - lo)).tolist()
    else:
        cands = []
    return dict(
        z=z,
        cdf=[d.cdf for d in cands],
        pruned=[d.pruned for d in cands],
        labels=[f'{_short(d.group).split(".")[-1]}.{d.index}' for d in cands],
        alpha=result.alpha,
        beta=result.beta,
        fit_method=result.fit_method)


def _short(group: str) -> str:
    return group[:-len('.attn')] if group.endswith('.attn') else group


def _json_matrix(m: np.ndarray) -> List[List[Optional[float]]]:
    return [[None if not np.isfinite(v) else float(v) for v in row]
            for row in m]


# ------------------------------------------------------------------ records
def load_records(path: str) -> List[dict]:
    """The hook's ``round_K.json`` records in ``path`` (or ``path/ela_prune``)."""
    files = glob.glob(osp.join(path, 'round_*.json'))
    if not files:
        files = glob.glob(osp.join(path, 'ela_prune', 'round_*.json'))
    if not files:
        raise FileNotFoundError(f'no round_*.json files in {path} or '
                                f'{osp.join(path, "ela_prune")}')

    def number(f: str) -> int:
        m = re.search(r'round_(\d+)\.json$', f)
        return int(m.group(1)) if m else 0

    records = []
    for f in sorted(files, key=number):
        with open(f) as fh:
            records.append(json.load(fh))
    return records


# ------------------------------------------------------------------ main
def analyse_model(args: argparse.Namespace, summary: Dict[str, Any],
                  figures: Dict[str, str]) -> None:
    """Model part: statistics, EBQM, figures (a)-(d) and the summary fields."""
    from mmdet_ela.analysis import plots
    from mmdet_ela.models import get_masks
    from mmdet_ela.redundancy import ebqm_select
    cfg = load_config(args)
    model = build_model(cfg, args)
    batches, source = input_batches(cfg, model, args)
    stats, scores = collect(model, batches)
    settings = hook_settings(cfg, args)
    masks = get_masks(model)
    result = ebqm_select(scores, masks, settings['quantile'],
                         settings['max_prune_ratio'], settings['min_keep'])
    fit = beta_fit_points(result)
    mean_attn = {n: s.mean_attention() for n, s in stats.items()}
    pairwise = {n: s.pairwise_kl() for n, s in stats.items()}
    units = {n: s.units for n, s in stats.items()}
    init = 'checkpoint' if args.checkpoint else 'random initialisation'

    out = args.out_dir
    figures['kl_adjacent'] = plots.save_figure(
        plots.plot_kl_heatmap(scores), osp.join(out, 'kl_adjacent.png'))
    figures['kl_pairwise'] = plots.save_figure(
        plots.plot_pairwise_kl(pairwise, units),
        osp.join(out, 'kl_pairwise.png'))
    figures['ebqm_beta_fit'] = plots.save_figure(
        plots.plot_beta_fit(quantile=settings['quantile'], **fit),
        osp.join(out, 'ebqm_beta_fit.png'))
    figures['mask'] = plots.save_figure(
        plots.plot_mask(result.mask, result.newly_pruned,
                        title='EBQM on these scores'),
        osp.join(out, 'mask.png'))
    figures['attention'] = plots.save_figure(
        plots.plot_attention(mean_attn, units),
        osp.join(out, 'attention.png'))
    title = args.title or (
        f'{osp.basename(args.config)} ({init}, {len(batches)} batches, '
        f'{source.split(" ")[0]} data)')
    figures['overview'] = plots.save_figure(
        plots.plot_overview(scores, result.mask, mean_attn,
                            dict(fit, quantile=settings['quantile']),
                            result.newly_pruned, units, title=title),
        osp.join(out, 'overview.png'))

    summary.update(
        config=args.config,
        checkpoint=args.checkpoint,
        init=init,
        data=source,
        num_batches=len(batches),
        images=int(sum(b.shape[0] for b in batches)),
        input_shape=list(batches[0].shape),
        ebqm_settings=settings,
        stacks={
            name: dict(units=units[name],
                       mask=masks[name],
                       adjacent_kl=scores[name],
                       pairwise_kl=_json_matrix(pairwise[name]),
                       mean_attention=_json_matrix(mean_attn[name]))
            for name in stats
        },
        ebqm=dict(result.to_dict(), z=fit['z'], labels=fit['labels']))
    if args.checkpoint is None:
        summary['note'] = ('random initialisation: the scores reflect random '
                           'weights, not learned redundancy')


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the summary dict (also for tests)."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    os.makedirs(args.out_dir, exist_ok=True)
    summary: Dict[str, Any] = {}
    figures: Dict[str, str] = {}
    if args.config is not None:
        analyse_model(args, summary, figures)
    if args.records is not None:
        from mmdet_ela.analysis import plots
        records = load_records(args.records)
        figures['records'] = plots.save_figure(
            plots.plot_records(records), osp.join(args.out_dir, 'records.png'))
        summary['records'] = [
            dict(round=r.get('round'), progress=r.get('progress'),
                 fit_method=r.get('fit_method'), alpha=r.get('alpha'),
                 beta=r.get('beta'), num_pruned=r.get('num_pruned'),
                 num_pruned_now=r.get('num_pruned_now'),
                 newly_pruned=r.get('newly_pruned'))
            for r in records
        ]
    summary['figures'] = figures
    path = osp.join(args.out_dir, 'summary.json')
    with open(path, 'w') as f:
        json.dump(summary, f, indent=2)
    if 'stacks' in summary:
        print(_report(summary))
    for name, fig in figures.items():
        print(f'wrote {fig}')
    print(f'wrote {path}')
    return summary


def _report(summary: Dict[str, Any]) -> str:
    lines = [f'{"unit":<28}{"adjacent KL":>13}{"cdf":>8}  EBQM decision']
    for d in summary['ebqm']['decisions']:
        score = '-' if d['score'] is None else f'{d["score"]:.4g}'
        cdf = '-' if d['cdf'] is None else f'{d["cdf"]:.3f}'
        lines.append(f'{_short(d["group"]) + "." + str(d["index"]):<28}'
                     f'{score:>13}{cdf:>8}  '
                     f'{"PRUNE" if d["pruned"] else "keep"} ({d["reason"]})')
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
