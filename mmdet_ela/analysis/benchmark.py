"""Benchmark an ELA model against its plain counterpart, dense and pruned.

Variants (same inputs, same seed):

``plain``   the config with ``ELAResNet`` / ``ELAFPN`` turned into mmdet's
            ``ResNet`` / ``FPN`` (:func:`~.variants.plain_model_cfg`).
``dense``   the ELA model with every layer-attention unit.
``pruned``  the ELA model pruned by EBQM on scores from ``score_batches``
            forward passes of random data (:func:`score_model`). On untrained
            weights these scores reflect random weights, not learned
            redundancy: the variant shows what a typical pruning level costs.
``mask``    the ELA model pruned to a given mask (:func:`load_masks`: a JSON
            mask, a hook record, a records folder or a checkpoint).

Each variant trains on one fixed synthetic batch (:class:`Workload`: forward,
loss, backward, the config's own optimizer step) and runs inference
(``mode='tensor'``: no post-processing); both are timed interleaved
(:func:`time_interleaved`), with the minor page faults of every train step.
Peak memory comes from the CUDA allocator, or on CPU from a fresh process per
variant (:mod:`.memory`); FLOPs per image from :func:`count_flops`. With
``op_costs`` rounds, the train steps run once more op by op
(:mod:`.op_costs`), and the ops that grew most against plain are listed.
With ``kernel_time`` rounds, the train steps run under the profiler: on CUDA
the device's busy time beside the wall time, and the kernels that grew most
(:mod:`.kernel_time`).
"""
import dataclasses
import statistics
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from mmdet_ela.models.layers import LayerAttention
from mmdet_ela.pruning import (count_units, get_masks, load_masks, make_record,
                               score_model)
from mmdet_ela.utils import keep_freed_memory
from .bench_config import (LABELS, SCORE_SEED, VARIANTS, BenchmarkSettings,
                           ModelSetup, build_variant, build_workload,
                           model_setup)
from .flops import EXTRA_FLOP_OPS, FLOP_CONVENTION, count_flops
from .kernel_time import kernel_deltas, kernel_times
from .memory import cpu_step_peak_mb, cuda_step_peak_mb, run_children
from .op_costs import op_costs, op_deltas, op_split
from .report import environment
from .settings import ebqm_defaults
from .timing import (FaultCounts, add_ratios, paired_ratios, summarize,
                     time_interleaved)
from .variants import fit_backbone_masks
from .workload import Workload, synthetic_batch

__all__ = [
    'VARIANTS', 'BenchmarkSettings', 'ebqm_variant_mask', 'run_benchmark'
]

_MEMORY_CHILD = 'mmdet_ela.analysis.memory_child'


def ebqm_variant_mask(s: BenchmarkSettings, setup: ModelSetup,
                      dense: nn.Module) -> Dict[str, Any]:
    """Score ``dense`` on random batches and select units with EBQM.

    Returns:
        dict: the round record (:func:`make_record`) of the selection, with
        ``scores`` and ``note``.
    """
    batches = [
        synthetic_batch(dense, s.batch_size, s.img_size,
                        s.seed + SCORE_SEED + b, s.num_boxes)
        for b in range(s.score_batches)
    ]
    dense.eval()
    scores, info = score_model(dense, batches)
    dense.train()
    result = setup.selector.select(scores, get_masks(dense))
    record = make_record(
        result,
        1,
        scored_batches=info['batches'],
        skipped_samples=info['skipped'],
        **setup.selector.settings())
    record['scores'] = scores
    record['note'] = (
        f'EBQM on scores from {info["batches"]} forward pass(es) of random '
        'data through the untrained model: they reflect random weights, not '
        'learned redundancy; the variant shows what a typical pruning level '
        f'costs ({record["note"]})')
    return record


def _mask_model(s: BenchmarkSettings,
                setup: ModelSetup) -> Tuple[nn.Module, dict, List[str]]:
    """The ``mask`` variant's model, its mask and notes; fails early.

    Raises:
        ValueError: the mask does not fit the model (names the file).
    """
    masks = load_masks(s.mask)
    notes = [f'--mask {s.mask}']
    if s.model == 'backbone':
        masks, dropped = fit_backbone_masks(masks)
        notes += dropped
    try:
        model = build_variant(setup, 'mask', s.seed, masks)
    except ValueError as e:
        raise ValueError(f'--mask {s.mask}: {e}') from e
    return model, masks, notes


def _static_info(name: str, work: Workload, mask: Optional[dict], flops: bool,
                 uncounted: Dict[str, int]) -> Dict[str, Any]:
    """Units, parameters and FLOPs of a variant; adds to ``uncounted``."""
    units = count_units(work.model)
    info = dict(
        label=LABELS[name],
        units_total=units['total'],
        units_kept=units['kept'],
        params=sum(p.numel() for p in work.model.parameters()),
        mask=mask)
    if flops:
        info['flops'], missing = count_flops(
            work.model, work.data['inputs'][:1],
            lambda _, x: work.forward_tensors(x))
        for op, n in missing.items():
            uncounted[op] = max(uncounted.get(op, 0), n)
    return info


def _time(s: BenchmarkSettings, works: Dict[str, Workload],
          variants: Dict[str, dict]) -> None:
    """Train steps, then inference, each interleaved; medians into
    ``variants``."""
    device = torch.device(s.device)
    faults: FaultCounts = {}
    train = time_interleaved({
        n: w.train_step
        for n, w in works.items()
    }, s.warmup, s.repeats, device, faults)
    for w in works.values():
        w.model.eval()
    infer = time_interleaved({
        n: w.infer
        for n, w in works.items()
    }, max(s.warmup, 1), s.repeats, device)
    for w in works.values():
        w.model.train()
    for name, fields in summarize(train, 'train').items():
        variants[name].update(fields)
    for name, fields in summarize(infer, 'infer').items():
        variants[name].update(fields)
    for times, prefix in ((train, 'train'), (infer, 'infer')):
        for name, fields in paired_ratios(times, 'plain', prefix).items():
            variants[name].update(fields)
    for name, counts in faults.items():
        variants[name]['train_faults'] = statistics.median(counts)
        variants[name]['train_faults_all'] = counts


def compiled_op_costs_note(models: Dict[str, nn.Module]) -> Optional[str]:
    """A note for ``--op-costs`` where a variant's units are compiled
    (``attn_compile``): ``torch.compile`` does not run under a dispatch
    mode, so their ops are counted and timed as eager ones."""
    names = [
        name for name, model in models.items() if any(
            isinstance(m, LayerAttention) and m.compiled
            for m in model.modules())
    ]
    if not names:
        return None
    return (f'--op-costs: the units of {", ".join(names)} are compiled, but '
            'torch.compile does not run under op-by-op timing: their ops '
            'are counted and timed as eager ones (--kernel-time profiles '
            'the compiled code)')


def _op_costs(s: BenchmarkSettings,
              works: Dict[str, Workload]) -> Optional[Dict[str, Any]]:
    """Each variant's train step op by op: the ops that grew most against
    plain, and the op time of a step."""
    if not s.op_costs:
        return None
    costs = op_costs({
        n: w.train_step
        for n, w in works.items()
    }, s.op_costs, torch.device(s.device))
    return dict(
        rounds=s.op_costs,
        step_op_ms={n: sum(c['ms'] for c in costs[n].values())
                    for n in works},
        # ops dispatched per step (views too): on a GPU each op costs a
        # launch or at least a dispatch, whatever its size
        step_ops={
            n: sum(c['calls'] for c in costs[n].values())
            for n in works
        },
        split={n: op_split(costs, n)
               for n in works if n != 'plain'},
        top={n: op_deltas(costs, n)
             for n in works if n != 'plain'})


def _kernel_time(s: BenchmarkSettings,
                 works: Dict[str, Workload]) -> Optional[Dict[str, Any]]:
    """Each variant's train step under the profiler: wall time, the
    device's busy time and kernels, and the kernels that grew most against
    plain (device figures on CUDA only)."""
    if not s.kernel_time:
        return None
    times = kernel_times({
        n: w.train_step
        for n, w in works.items()
    }, s.kernel_time, torch.device(s.device))
    return dict(
        rounds=s.kernel_time,
        steps={
            n: {
                k: v
                for k, v in t.items() if k != 'kernels'
            }
            for n, t in times.items()
        },
        top={n: kernel_deltas(times, n)
             for n in works if n != 'plain'})


def _memory(s: BenchmarkSettings, works: Dict[str, Workload],
            masks: Dict[str, Optional[dict]],
            variants: Dict[str, dict]) -> Optional[str]:
    """Peak memory into ``variants``; returns how it was measured."""
    if s.memory == 'cuda':
        for name, w in works.items():
            variants[name]['peak_mem_mb'] = cuda_step_peak_mb(
                w.train_step, w.model, w.optim_wrapper.optimizer,
                torch.device(s.device))
        return ('torch.cuda.max_memory_allocated during one train step, '
                'minus what was allocated before it, plus the variant\'s own '
                'parameters, buffers and optimizer state')
    if s.memory == 'allocated':
        for name, w in works.items():
            variants[name]['peak_mem_mb'] = cpu_step_peak_mb(
                w.train_step, w.model, w.optim_wrapper.optimizer)
        return ('the most CPU tensor memory held at once during one train '
                'step (the profiler\'s allocation events), minus what was '
                'allocated before it, plus the variant\'s own parameters, '
                'buffers and optimizer state: the CPU counterpart of '
                'torch.cuda.max_memory_allocated')
    if s.memory != 'subprocess':
        return None
    settings = dataclasses.asdict(s)
    results = run_children(
        _MEMORY_CHILD, {
            name: dict(settings=settings, variant=name, mask=masks[name])
            for name in works
        })
    for name, r in results.items():
        variants[name]['peak_mem_mb'] = r['peak_rss_mb']
        variants[name]['step_rss_mb'] = r['step_rss_mb']
    method = next(iter(results.values()))['method']
    return (f'a fresh process per variant that builds only that variant and '
            f'trains {max(s.warmup, 1) + 1} steps; peak_mem_mb = its peak '
            f'RSS ({method}), step_rss_mb = that peak minus the RSS just '
            'before the first step')


def run_benchmark(s: BenchmarkSettings) -> Dict[str, Any]:
    """Build the variants, measure them, return the results (JSON-safe)."""
    unknown = [v for v in s.variants if v not in VARIANTS]
    if unknown or 'plain' not in s.variants:
        raise ValueError(f'variants={list(s.variants)!r}: must include '
                         f"'plain' and be among {list(VARIANTS)}")
    if ('mask' in s.variants) != (s.mask is not None):
        raise ValueError(f"the 'mask' variant needs a mask and a mask needs "
                         f'it (variants={list(s.variants)}, mask={s.mask!r})')
    allocator = keep_freed_memory() if s.keep_freed_memory else None
    setup = model_setup(s)
    notes = list(setup.notes)
    masks: Dict[str, Optional[dict]] = {n: None for n in s.variants}
    models: Dict[str, nn.Module] = {}
    if s.mask is not None:  # a mask that does not fit fails before the rest
        models['mask'], masks['mask'], mask_notes = _mask_model(s, setup)
        notes += mask_notes
    works: Dict[str, Workload] = {}
    ebqm = None
    for name in (v for v in VARIANTS if v in s.variants):
        if name == 'pruned':
            dense = works['dense'].model if 'dense' in works else \
                build_variant(setup, 'dense', s.seed).to(s.device)
            ebqm = ebqm_variant_mask(s, setup, dense)
            masks[name] = ebqm['mask']
            notes.append(ebqm['note'])
        model = models.pop(name, None) or build_variant(
            setup, name, s.seed, masks[name])
        works[name] = build_workload(s, setup, model)
    uncounted: Dict[str, int] = {}
    variants = {
        name: _static_info(name, w, masks[name], s.flops, uncounted)
        for name, w in works.items()
    }
    _time(s, works, variants)
    ops = _op_costs(s, works)
    if ops is not None:
        note = compiled_op_costs_note({n: w.model for n, w in works.items()})
        notes += [note] if note else []
    kernels = _kernel_time(s, works)
    memory_method = _memory(s, works, masks, variants)
    add_ratios(variants, 'plain')
    flops = dict(per='image (batch 1, eval mode, mode="tensor")',
                 convention=FLOP_CONVENTION,
                 extra_counted_ops=list(EXTRA_FLOP_OPS),
                 uncounted_ops=dict(sorted(uncounted.items()))) \
        if s.flops else None
    return dict(
        settings=dataclasses.asdict(s),
        ebqm_settings=setup.selector.settings(),
        ebqm_defaults=ebqm_defaults(),
        environment=dict(
            environment(torch.device(s.device)), keep_freed_memory=allocator),
        variants=variants,
        ebqm=ebqm,
        memory_method=memory_method,
        flops=flops,
        op_costs=ops,
        kernel_time=kernels,
        notes=notes)
