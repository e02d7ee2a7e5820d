#!/usr/bin/env python
"""Benchmark plain ResNet against ELA ResNet, dense and pruned, in one run.

Variants (same inputs, same seed, same residual-path weights):

``plain``       mmdet's ``ResNet`` (``--model retinanet``: ResNet + FPN RetinaNet).
``ela_dense``   ``ELAResNet`` with every layer-attention unit.
``ela_ebqm``    the dense ELA model pruned by EBQM. The scores are the adjacent-unit
                KL of attention recorded on ``--score-batches`` random batches of the
                dense model, then ``ebqm_select`` (``--quantile`` 0.3,
                ``--max-prune-ratio`` 0.3, ``--min-keep`` 1 by default). On an
                untrained model these scores come from random weights: the mask then
                shows what a typical pruning level costs, not which units a trained
                model would drop.
``ela_mask``    the dense ELA model pruned to ``--mask FILE`` (only with ``--mask``):
                a JSON ``{stack: [kept, ...]}``, a hook record ``ela_prune/round_K.json``
                (its ``mask`` field), or a checkpoint ``.pth`` (its ``*.attn.mask``
                buffers). Detector names (``backbone.layer1.attn``) and backbone names
                (``layer1.attn``) are matched to the benchmarked model.

Modes: ``--model backbone`` times the backbone alone on ``--img-size`` inputs (default
224) with the loss ``sum(mean(out_i))``; ``--model retinanet`` builds a whole RetinaNet
from mmdet's ``retinanet_r50_fpn`` base config with the backbone type swapped
(``--ela-neck`` also swaps FPN for ELAFPN in the ELA variants), on random images with
``--num-boxes`` random boxes each, and times ``model.loss`` + backward + SGD step.

Per variant it measures:

* train step: zero_grad + forward + loss + backward + ``SGD(momentum=0.9)`` step. After
  ``--warmup`` rounds, ``--repeats`` rounds; the variants are interleaved round-robin
  (the starting variant rotates every round) so machine noise hits all of them alike.
  Reported: the median, and the ratio of medians to ``plain``.
* inference: ``eval()`` + ``no_grad`` network forward (backbone mode: the backbone;
  RetinaNet: backbone + neck + head, ``mode='tensor'``, i.e. without NMS
  post-processing, which does not depend on the backbone), interleaved likewise.
* peak memory of a train step. CUDA: ``torch.cuda.max_memory_allocated`` during one
  step after ``reset_peak_memory_stats``, minus what was allocated before the step,
  plus the variant's own parameters, buffers and optimizer state (the other
  variants, resident on the same device, are not counted). CPU: every variant runs in
  a fresh subprocess (same arguments, same threads; the subprocesses run at the same
  time) that builds only that variant and trains ``max(warmup, 1) + 1`` steps. Just
  before the first step it resets its peak RSS (``VmHWM``, by writing 5 to
  ``/proc/self/clear_refs``), so imports and model building do not hide the step's
  peak; where that is not possible it falls back to ``getrusage(RUSAGE_SELF)
  .ru_maxrss``. Reported: ``peak_mem_mb``, that peak RSS of the whole process
  (interpreter, libraries, model, step), and ``step_rss_mb``, the peak minus the RSS
  just before the first step (what the training step needs on top of the built
  model; the bar chart shows this one).
* parameters, and FLOPs per image (batch 1, eval mode) from mmengine's
  ``FlopAnalyzer`` (one multiply-add = 1 FLOP, mmengine's convention). Besides
  mmengine's handles (convolutions, einsum, matmul, batch norm, upsampling ...) we
  count ``softmax`` (5 per element), element-wise ``mul/add/sub/div/addcmul``
  (1 per output element, an addcmul being one multiply-add) and ``mean``/``sum``
  (1 per input element). Ops that are still not counted are listed in the output.

Writes a table to stdout, a JSON file (``--out``) and, with ``--plot``, a bar chart.

Example::

    python tools/analysis/benchmark.py --model backbone --depth 50 --batch-size 4 \\
        --repeats 20 --out work_dirs/bench_r50.json --plot work_dirs/bench_r50.png
"""
import argparse
import contextlib
import copy
import json
import logging
import math
import os
import os.path as osp
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

import torch
import torch.nn as nn
from torch import Tensor

VARIANTS = ('plain', 'ela_dense', 'ela_ebqm', 'ela_mask')
LABELS = {
    'plain': 'ResNet (plain)',
    'ela_dense': 'ELA dense',
    'ela_ebqm': 'ELA pruned (EBQM)',
    'ela_mask': 'ELA pruned (--mask)',
}
EBQM_NOTE = ('EBQM scores come from attention recorded on {k} random batch(es) '
             'of the dense ELA model{init}; {meaning}')


# --------------------------------------------------------------------- setup
def default_threads() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Compare plain ResNet, dense ELA, EBQM-pruned ELA and ELA '
        'with a given mask (time, memory, FLOPs, parameters).')
    p.add_argument('--model', choices=['backbone', 'retinanet'],
                   default='backbone')
    p.add_argument('--depth', type=int, default=50,
                   choices=[18, 34, 50, 101, 152])
    p.add_argument('--img-size', type=int, default=None,
                   help='square input size (default: 224 backbone, 512 '
                   'retinanet)')
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--repeats', type=int, default=10,
                   help='timed rounds per variant (median reported)')
    p.add_argument('--warmup', type=int, default=2,
                   help='untimed rounds per variant first')
    p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    p.add_argument('--threads', type=int, default=None,
                   help='torch threads (default: all cores available)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--dim-per-head', type=int, default=32)
    p.add_argument('--ela-neck', action='store_true',
                   help='retinanet: use ELAFPN (instead of FPN) in the ELA '
                   'variants; its units are pruned like the backbone\'s')
    p.add_argument('--num-boxes', type=int, default=2,
                   help='retinanet: random gt boxes per image')
    p.add_argument('--mask', default=None,
                   help='JSON mask / hook round JSON / checkpoint .pth for '
                   'the ela_mask variant')
    p.add_argument('--score-batches', type=int, default=2,
                   help='random batches recorded to score EBQM')
    p.add_argument('--quantile', type=float, default=0.3)
    p.add_argument('--max-prune-ratio', type=float, default=0.3)
    p.add_argument('--min-keep', type=int, default=1)
    p.add_argument('--lr', type=float, default=1e-4,
                   help='SGD learning rate of the timed steps (small, so the '
                   'random model stays stable)')
    p.add_argument('--memory', default='auto',
                   choices=['auto', 'subprocess', 'cuda', 'none'],
                   help='peak-memory method: auto = cuda on CUDA, subprocess '
                   'on CPU; none = skip')
    p.add_argument('--no-flops', action='store_true', help='skip FLOPs')
    p.add_argument('--out', default=None, help='write the results as JSON')
    p.add_argument('--plot', default=None, help='write a bar chart PNG')
    # internal: run one variant for the CPU memory measurement
    p.add_argument('--memory-child', default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.img_size is None:
        args.img_size = 224 if args.model == 'backbone' else 512
    if args.threads is None:
        args.threads = default_threads()
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: CUDA is not available')
    for name in ('batch_size', 'repeats', 'img_size', 'threads'):
        if getattr(args, name) < 1:
            p.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.warmup < 0 or args.score_batches < 1:
        p.error('--warmup must be >= 0 and --score-batches >= 1')
    if args.memory == 'auto':
        args.memory = 'cuda' if args.device == 'cuda' else 'subprocess'
    if args.memory == 'cuda' and args.device != 'cuda':
        p.error('--memory cuda needs --device cuda')
    return args


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


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ masks
def load_mask_file(path: str) -> Dict[str, List[bool]]:
    """Read a pruning mask: JSON ``{stack: [bools]}``, a hook record, or a .pth.

    Returns:
        ``{stack name: [kept, ...]}`` with the names found in the file.
    """
    if path.endswith(('.pth', '.pt', '.ckpt')):
        import mmdet_ela  # noqa: F401  (allow-lists mmengine checkpoint types)
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
        mask = {}
        for key, value in state.items():
            if key.endswith('attn.mask'):
                name = key[:-len('.mask')]
                if name.startswith('module.'):
                    name = name[len('module.'):]
                mask[name] = [bool(v) for v in torch.as_tensor(value).tolist()]
        if not mask:
            raise ValueError(f'{path}: no "*.attn.mask" buffers in the '
                             'checkpoint; is it an ELA model?')
        return mask
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and isinstance(data.get('mask'), dict):
        data = data['mask']  # a hook record round_K.json
    if not isinstance(data, dict) or not all(
            isinstance(v, list) for v in data.values()):
        raise ValueError(f'{path}: expected {{stack_name: [bool, ...]}} or a '
                         'hook record with a "mask" field')
    return {k: [bool(x) for x in v] for k, v in data.items()}


def fit_mask(mask: Mapping[str, Sequence[bool]], stack_names: Sequence[str],
             detector: bool) -> Tuple[Dict[str, List[bool]], List[str]]:
    """Match a mask's stack names to the model's; fill stacks it lacks as dense.

    A detector mask (``backbone.layer1.attn``, ``neck.attn``) used on a bare
    backbone keeps only its ``backbone.`` entries; a backbone mask used on a
    detector gets the ``backbone.`` prefix.

    Returns:
        (the mask for :func:`apply_masks`, notes about what was changed)
    """
    notes = []
    fitted: Dict[str, List[bool]] = {}
    for name, kept in mask.items():
        if name.startswith('module.'):
            name = name[len('module.'):]
        if not detector:
            if name.startswith('backbone.'):
                name = name[len('backbone.'):]
            elif '.' in name and name.split('.')[0] in ('neck', 'bbox_head',
                                                        'rpn_head',
                                                        'roi_head'):
                notes.append(f'mask entry {name} ignored (not in a backbone)')
                continue
        elif not name.startswith(('backbone.', 'neck.')):
            name = 'backbone.' + name
        fitted[name] = list(kept)
    unknown = sorted(set(fitted) - set(stack_names))
    if unknown:
        raise ValueError(f'mask names stacks {unknown} that the model does not '
                         f'have; the model has {list(stack_names)}')
    for name in stack_names:
        if name not in fitted:
            notes.append(f'mask has no entry for {name}: kept dense')
            fitted[name] = None  # filled by the caller with the stack length
    return fitted, notes


# --------------------------------------------------------------- workloads
class Workload:
    """A built variant with its optimizer and the closures that the timer calls.

    Attributes:
        model: the network (train mode between calls).
        train_step: zero_grad + forward + loss + backward + SGD step.
        infer: ``no_grad`` eval-mode forward (the caller switches modes).
    """

    def __init__(self, model: nn.Module, train_step: Callable[[], None],
                 infer: Callable[[], None],
                 optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.train_step = train_step
        self.infer = infer
        self.optimizer = optimizer


def build_backbone(variant: str, args: argparse.Namespace) -> nn.Module:
    """mmdet ``ResNet`` (plain) or ``ELAResNet``, initialised with ``args.seed``."""
    from mmdet.models.backbones import ResNet
    from mmdet_ela.models import ELAResNet
    torch.manual_seed(args.seed)
    if variant == 'plain':
        model = ResNet(depth=args.depth)
    else:
        model = ELAResNet(depth=args.depth, dim_per_head=args.dim_per_head)
    with quiet_logs():
        model.init_weights()
    return model


def retinanet_cfg(variant: str, args: argparse.Namespace):
    """mmdet's ``_base_/models/retinanet_r50_fpn.py`` with the backbone swapped."""
    import mmdet
    from mmengine.config import Config
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', '_base_',
                    'models', 'retinanet_r50_fpn.py')
    cfg = Config.fromfile(path).model
    cfg.backbone.depth = args.depth
    cfg.backbone.init_cfg = None  # no download: random init
    if args.depth in (18, 34):
        cfg.neck.in_channels = [64, 128, 256, 512]
    if variant != 'plain':
        cfg.backbone.type = 'ELAResNet'
        cfg.backbone.dim_per_head = args.dim_per_head
        if args.ela_neck:
            cfg.neck.type = 'ELAFPN'
            cfg.neck.dim_per_head = args.dim_per_head
    return cfg


def build_retinanet(variant: str, args: argparse.Namespace) -> nn.Module:
    """A RetinaNet built from the config of :func:`retinanet_cfg`."""
    import mmdet_ela  # noqa: F401  (registers ELAResNet / ELAFPN)
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    torch.manual_seed(args.seed)
    model = MODELS.build(retinanet_cfg(variant, args))
    with quiet_logs():
        model.init_weights()
    return model


def random_images(args: argparse.Namespace, batch: int, seed: int,
                  device: torch.device) -> Tensor:
    """Normalised random images, [batch, 3, S, S]."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, args.img_size, args.img_size,
                       generator=gen).to(device)


def random_det_samples(args: argparse.Namespace, batch: int, seed: int,
                       device: torch.device) -> list:
    """``DetDataSample`` per image with ``--num-boxes`` random gt boxes."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    size = args.img_size
    samples = []
    for i in range(batch):
        k = args.num_boxes
        xy = torch.rand(k, 2, generator=gen) * size * 0.6
        wh = torch.rand(k, 2, generator=gen) * size * 0.3 + size * 0.08
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        sample = DetDataSample(metainfo=dict(
            img_id=i, img_shape=(size, size), ori_shape=(size, size),
            pad_shape=(size, size), batch_input_shape=(size, size),
            scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(
            bboxes=boxes, labels=torch.randint(0, 80, (k,), generator=gen))
        samples.append(sample.to(device))
    return samples


def make_workload(model: nn.Module, args: argparse.Namespace,
                  device: torch.device) -> Workload:
    """Move ``model`` to ``device`` and build its train/infer closures."""
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=0.9,
                                weight_decay=1e-4)
    images = random_images(args, args.batch_size, args.seed + 1, device)
    if args.model == 'backbone':
        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss = sum(o.float().mean() for o in model(images))
            loss.backward()
            optimizer.step()

        def infer() -> None:
            with torch.no_grad():
                model(images)
    else:
        samples = random_det_samples(args, args.batch_size, args.seed + 2,
                                     device)

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            losses = model.loss(images, samples)
            loss, _ = model.parse_losses(losses)
            loss.backward()
            optimizer.step()

        def infer() -> None:
            with torch.no_grad():
                model._forward(images)
    return Workload(model, train_step, infer, optimizer)


def forward_tensors(model: nn.Module, images: Tensor) -> Any:
    """The network forward the tools time and count: backbone, or detector tensors."""
    if hasattr(model, 'extract_feat'):
        return model._forward(images)
    return model(images)


# ------------------------------------------------------------------ EBQM
def ebqm_from_random_batches(model: nn.Module, args: argparse.Namespace,
                             device: torch.device):
    """Score the dense model's units on random batches and run EBQM.

    Returns:
        (``EBQMResult``, per-stack scores ``{stack: [D_i or None]}``)
    """
    from mmdet_ela.models import attention_stacks, get_masks, record_attention
    from mmdet_ela.redundancy import RedundancyAccumulator, ebqm_select
    stacks = attention_stacks(model)
    keys = [(name, i) for name, stack in stacks.items()
            for i, _ in stack.kept_units()[1:]]
    acc = RedundancyAccumulator(keys)
    was_training = model.training
    model.eval()
    with torch.no_grad(), record_attention(model):
        for b in range(args.score_batches):
            forward_tensors(model, random_images(args, args.batch_size,
                                                 args.seed + 100 + b, device))
            for name, stack in stacks.items():
                units = stack.kept_units()
                for (_, prev), (i, unit) in zip(units, units[1:]):
                    acc.update((name, i), prev.attention, unit.attention)
    model.train(was_training)
    scores = acc.scores()
    masks = get_masks(model)
    per_stack = {name: [scores.get((name, i)) for i in range(len(m))]
                 for name, m in masks.items()}
    per_stack = {n: [None if v is None or not math.isfinite(v) else float(v)
                     for v in vals] for n, vals in per_stack.items()}
    result = ebqm_select(per_stack, masks, args.quantile,
                         args.max_prune_ratio, args.min_keep)
    return result, per_stack


# ------------------------------------------------------------------ FLOPs
def _elementwise(output_scale: float = 0.0, input_scale: float = 0.0):
    from mmengine.analysis.jit_handles import elementwise_flop_counter
    return elementwise_flop_counter(input_scale, output_scale)


EXTRA_FLOP_OPS = ('aten::softmax', 'aten::mul', 'aten::mul_', 'aten::add',
                  'aten::add_', 'aten::sub', 'aten::div', 'aten::div_',
                  'aten::addcmul', 'aten::addcmul_', 'aten::mean', 'aten::sum')
ZERO_FLOP_OPS = ('aten::unflatten', 'aten::expand_as', 'aten::view_as')


def extra_flop_handles() -> Dict[str, Callable]:
    """Handles for the ops that mmengine's FlopAnalyzer does not count."""
    one_out = _elementwise(output_scale=1)
    one_in = _elementwise(input_scale=1)
    handles = {op: one_out for op in EXTRA_FLOP_OPS}
    handles['aten::softmax'] = _elementwise(output_scale=5)
    handles['aten::mean'] = one_in
    handles['aten::sum'] = one_in
    for op in ZERO_FLOP_OPS:
        handles[op] = None  # views: no arithmetic, not reported as uncounted
    return handles


class _TensorForward(nn.Module):
    """Wraps a model so that ``forward(images)`` is :func:`forward_tensors`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Any:
        return forward_tensors(self.model, images)


def count_flops(model: nn.Module, args: argparse.Namespace,
                device: torch.device) -> Tuple[int, Dict[str, int]]:
    """FLOPs of one image (eval mode) and the ops that were not counted."""
    from mmengine.analysis import FlopAnalyzer
    was_training = model.training
    model.eval()
    try:
        images = random_images(args, 1, args.seed + 3, device)
        analyzer = FlopAnalyzer(_TensorForward(model), (images, ))
        analyzer.set_op_handle(**extra_flop_handles())
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        with torch.no_grad():
            total = int(analyzer.total())
        unsupported = dict(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    return total, unsupported


# ------------------------------------------------------------------ timing
def time_round_robin(fns: Mapping[str, Callable[[], None]], warmup: int,
                     repeats: int, device: torch.device
                     ) -> Dict[str, List[float]]:
    """Time every fn ``repeats`` times, interleaved; the first fn rotates each round.

    Returns:
        ``{name: [seconds, ...]}`` (warm-up rounds not included).
    """
    names = list(fns)
    for r in range(warmup):
        for k in range(len(names)):
            fns[names[(r + k) % len(names)]]()
    _sync(device)
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            _sync(device)
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def cuda_peak_memory(work: Workload, device: torch.device) -> float:
    """Peak MB of one train step: own parameters + optimizer state + step peak."""
    work.optimizer.zero_grad(set_to_none=True)
    _sync(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    work.train_step()
    _sync(device)
    step_peak = torch.cuda.max_memory_allocated(device) - before
    own = sum(p.numel() * p.element_size() for p in work.model.parameters())
    own += sum(p.numel() * p.element_size() for p in work.model.buffers())
    for state in work.optimizer.state.values():
        own += sum(t.numel() * t.element_size() for t in state.values()
                   if torch.is_tensor(t))
    return (own + step_peak) / 2**20


def _proc_status_mb(field: str) -> Optional[float]:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in MB."""
    try:
        with open('/proc/self/status') as f:
            match = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return True


def _maxrss_mb() -> float:
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == 'darwin' else 2**10)


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess body: build one variant, train, print its peak RSS as JSON.

    The peak is measured from just before the first train step: where Linux
    allows it, the peak RSS (``VmHWM``) is reset there (``/proc/self/clear_refs``),
    so imports and model building do not mask it; elsewhere ``ru_maxrss`` of the
    whole process is used.
    """
    import gc
    with open(args.memory_child) as f:
        job = json.load(f)
    device = torch.device(args.device)
    model = build_variant('plain' if job['variant'] == 'plain' else 'ela',
                          args)
    if job.get('mask'):
        from mmdet_ela.models import apply_masks
        apply_masks(model, job['mask'])
    work = make_workload(model, args, device)
    gc.collect()
    reset = _reset_peak_rss() and _proc_status_mb('VmHWM') is not None
    before = _proc_status_mb('VmRSS') if reset else _maxrss_mb()
    for _ in range(max(args.warmup, 1) + 1):
        work.train_step()
    peak = _proc_status_mb('VmHWM') if reset else _maxrss_mb()
    print('ELA_MEMORY_RESULT ' + json.dumps(
        dict(peak_rss_mb=peak, rss_before_step_mb=before,
             step_rss_mb=peak - before,
             method='VmHWM reset before the first step' if reset else
             'ru_maxrss of the whole process')))


def subprocess_memory(jobs: Mapping[str, Optional[Mapping[str, List[bool]]]],
                      argv: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """Run :func:`memory_child` for every variant, each in a fresh interpreter.

    The subprocesses run at the same time (memory is per process, and their
    timing does not matter).

    Args:
        jobs: ``{variant: mask or None}``.
        argv: the common arguments (:func:`child_argv`).
    """
    files, procs = {}, {}
    try:
        for variant, mask in jobs.items():
            with tempfile.NamedTemporaryFile('w', suffix='.json',
                                             delete=False) as f:
                json.dump(dict(variant=variant, mask=mask), f)
                files[variant] = f.name
            cmd = [sys.executable, osp.abspath(__file__), *argv,
                   '--memory-child', f.name]
            procs[variant] = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
        results = {}
        for variant, proc in procs.items():
            out, err = proc.communicate()
            for line in out.splitlines():
                if line.startswith('ELA_MEMORY_RESULT '):
                    results[variant] = json.loads(
                        line[len('ELA_MEMORY_RESULT '):])
            if variant not in results:
                raise RuntimeError(
                    f'memory subprocess for {variant} failed (exit '
                    f'{proc.returncode}):\n{err[-3000:]}')
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for name in files.values():
            os.unlink(name)


def child_argv(args: argparse.Namespace) -> List[str]:
    """The arguments a memory subprocess needs to build the same workload."""
    argv = ['--model', args.model, '--depth', str(args.depth), '--img-size',
            str(args.img_size), '--batch-size', str(args.batch_size),
            '--warmup', str(args.warmup), '--device', args.device,
            '--threads', str(args.threads), '--seed', str(args.seed),
            '--dim-per-head', str(args.dim_per_head), '--num-boxes',
            str(args.num_boxes), '--lr', str(args.lr)]
    if args.ela_neck:
        argv.append('--ela-neck')
    return argv


# ------------------------------------------------------------------ main
def build_variant(kind: str, args: argparse.Namespace) -> nn.Module:
    """``kind`` 'plain' or 'ela' (dense), for the chosen ``--model``."""
    if args.model == 'backbone':
        return build_backbone(kind, args)
    return build_retinanet(kind, args)


def environment(args: argparse.Namespace, device: torch.device) -> dict:
    import mmdet
    import mmengine
    env = dict(torch=torch.__version__, mmdet=mmdet.__version__,
               mmengine=mmengine.__version__, python=platform.python_version(),
               platform=platform.platform(), cpu=platform.processor() or
               platform.machine(), cpu_cores_available=default_threads())
    if device.type == 'cuda':
        env['device_name'] = torch.cuda.get_device_name(device)
    else:
        env['device_name'] = f'CPU ({default_threads()} cores available)'
    return env


def _median_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1e3


def format_table(results: Mapping[str, Any]) -> str:
    """The printed comparison table."""
    rows = [('variant', 'units', 'params', 'GFLOPs', 'train ms', 'x plain',
             'infer ms', 'x plain', 'peak MB', 'x plain', 'step MB')]

    def num(v: Any, fmt: str) -> str:
        return '-' if v is None else format(v, fmt)

    for name, v in results['variants'].items():
        rows.append((
            v['label'], f'{v["units_kept"]}/{v["units_total"]}',
            f'{v["params"] / 1e6:.2f}M',
            num(None if v.get('flops') is None else v['flops'] / 1e9, '.4g'),
            num(v.get('train_ms'), '.1f'), num(v.get('train_ratio'), '.3f'),
            num(v.get('infer_ms'), '.1f'), num(v.get('infer_ratio'), '.3f'),
            num(v.get('peak_mem_mb'), '.0f'),
            num(v.get('peak_mem_ratio'), '.3f'),
            num(v.get('step_rss_mb'), '.0f')))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append('  '.join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append('-' * len(lines[0]))
    return '\n'.join(lines)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """Build the variants, measure them and return the results dict."""
    import mmdet_ela  # noqa: F401
    from mmdet_ela.models import apply_masks, attention_stacks, count_units
    device = torch.device(args.device)
    notes: List[str] = []

    plain = build_variant('plain', args)
    dense = build_variant('ela', args)
    dense.to(device)
    ebqm_result, scores = ebqm_from_random_batches(dense, args, device)
    models: Dict[str, nn.Module] = {'plain': plain, 'ela_dense': dense}
    masks: Dict[str, Optional[Dict[str, List[bool]]]] = {
        'plain': None, 'ela_dense': None}
    ebqm = copy.deepcopy(dense)
    apply_masks(ebqm, ebqm_result.mask)
    models['ela_ebqm'] = ebqm
    masks['ela_ebqm'] = ebqm_result.mask
    notes.append(EBQM_NOTE.format(
        k=args.score_batches,
        init=' at random initialisation (no checkpoint)',
        meaning='on an untrained model they reflect random weights, not '
        'learned redundancy; the EBQM variant shows the cost of a typical '
        'pruning level, not which units a trained model would prune'))
    if args.mask:
        raw = load_mask_file(args.mask)
        stacks = attention_stacks(dense)
        fitted, mask_notes = fit_mask(raw, list(stacks),
                                      detector=args.model != 'backbone')
        fitted = {n: (stacks[n].kept if m is None else m)
                  for n, m in fitted.items()}
        notes += [f'--mask: {n}' for n in mask_notes]
        given = copy.deepcopy(dense)
        apply_masks(given, fitted)
        models['ela_mask'] = given
        masks['ela_mask'] = fitted

    works = {name: make_workload(m, args, device)
             for name, m in models.items()}

    # FLOPs and parameters
    variants: Dict[str, Dict[str, Any]] = {}
    uncounted: Dict[str, int] = {}
    for name, work in works.items():
        units = count_units(work.model)
        info = dict(label=LABELS[name], units_total=units['total'],
                    units_kept=units['kept'],
                    params=sum(p.numel() for p in work.model.parameters()),
                    mask=masks[name])
        if not args.no_flops:
            info['flops'], unsupported = count_flops(work.model, args, device)
            for op, n in unsupported.items():
                uncounted[op] = max(uncounted.get(op, 0), n)
        variants[name] = info

    # Timing: train steps, then inference, each interleaved round-robin
    train = time_round_robin({n: w.train_step for n, w in works.items()},
                             args.warmup, args.repeats, device)
    for w in works.values():
        w.model.eval()
    infer = time_round_robin({n: w.infer for n, w in works.items()},
                             max(args.warmup, 1), args.repeats, device)
    for w in works.values():
        w.model.train()
    for name in works:
        variants[name]['train_ms'] = _median_ms(train[name])
        variants[name]['train_ms_all'] = [t * 1e3 for t in train[name]]
        variants[name]['infer_ms'] = _median_ms(infer[name])
        variants[name]['infer_ms_all'] = [t * 1e3 for t in infer[name]]

    # Peak memory
    memory_method = None
    if args.memory == 'cuda':
        memory_method = ('torch.cuda.max_memory_allocated during one train '
                         'step, minus the memory allocated before it, plus the '
                         'variant\'s own parameters, buffers and optimizer state')
        for name, work in works.items():
            variants[name]['peak_mem_mb'] = cuda_peak_memory(work, device)
    elif args.memory == 'subprocess':
        mem = subprocess_memory(masks, child_argv(args))
        method = next(iter(mem.values()))['method']
        memory_method = (
            'fresh subprocess per variant that builds only that variant and '
            f'trains {max(args.warmup, 1) + 1} steps; peak_mem_mb = its peak '
            f'RSS ({method}: interpreter, libraries, model and step), '
            'step_rss_mb = that peak minus the RSS just before the first step')
        for name in works:
            variants[name]['peak_mem_mb'] = mem[name]['peak_rss_mb']
            variants[name]['step_rss_mb'] = mem[name]['step_rss_mb']

    base = variants['plain']
    for info in variants.values():
        for field, ratio in (('train_ms', 'train_ratio'),
                             ('infer_ms', 'infer_ratio'),
                             ('peak_mem_mb', 'peak_mem_ratio'),
                             ('step_rss_mb', 'step_rss_ratio'),
                             ('flops', 'flops_ratio'),
                             ('params', 'params_ratio')):
            if info.get(field) is not None and base.get(field):
                info[ratio] = info[field] / base[field]

    settings = {k: v for k, v in vars(args).items() if k != 'memory_child'}
    settings.update(environment(args, device))
    if args.model == 'retinanet':
        notes.append('retinanet: mmdet retinanet_r50_fpn base config (random '
                     'init, frozen_stages=1, norm_eval=True as in the config); '
                     f'plain = ResNet + FPN; ELA neck: {args.ela_neck}. '
                     'Inference = backbone + neck + head (mode="tensor"), '
                     'without NMS post-processing')
    else:
        notes.append('backbone: loss = sum of the means of the four stage '
                     'outputs; inference = backbone forward')
    notes.append(f'train step = zero_grad + forward + loss + backward + SGD '
                 f'(momentum 0.9) step; medians of {args.repeats} interleaved '
                 f'repeats after {args.warmup} warm-up rounds; '
                 f'{args.threads} torch threads')
    flops_info = None
    if not args.no_flops:
        flops_info = dict(
            per='image (batch 1, eval mode)',
            convention='one multiply-add = 1 FLOP (mmengine FlopAnalyzer); '
            'ReLU and data movement (cat, stack, views, copies) count 0',
            extra_counted_ops=list(EXTRA_FLOP_OPS),
            uncounted_ops=dict(sorted(uncounted.items())))
    return dict(settings=settings, variants=variants,
                ebqm=dict(ebqm_result.to_dict(), scores=scores,
                          score_batches=args.score_batches,
                          note=notes[0]),
                memory_method=memory_method, flops=flops_info, notes=notes)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command-line entry point; returns the results dict (also for tests)."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return {}
    results = run(args)
    s = results['settings']
    print(f'\nELA benchmark: --model {args.model}, R-{args.depth}, '
          f'{args.img_size}x{args.img_size}, batch {args.batch_size}, '
          f'{s["device_name"]}, {args.threads} threads, torch {s["torch"]}')
    print(format_table(results))
    if results['memory_method']:
        print(f'peak memory: {results["memory_method"]}')
    if results['flops']:
        unc = results['flops']['uncounted_ops']
        print('FLOPs per image (1 multiply-add = 1; ReLU and data movement such '
              'as cat/stack/views count 0, as in mmengine); not counted: ' +
              (', '.join(f'{k} (x{v})' for k, v in unc.items()) or 'none'))
    for note in results['notes']:
        print(f'note: {note}')
    pruned = [f'{short(d["group"])}.{d["index"]}'
              for d in results['ebqm']['decisions'] if d['pruned']]
    print(f'EBQM pruned {len(pruned)} unit(s): {", ".join(pruned) or "none"} '
          f'(fit {results["ebqm"]["fit_method"]})')
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(results, f, indent=2)
        print(f'wrote {args.out}')
    if args.plot:
        from mmdet_ela.analysis.plots import plot_benchmark, save_figure
        save_figure(plot_benchmark(results), args.plot)
        print(f'wrote {args.plot}')
    return results


def short(group: str) -> str:
    return group[:-len('.attn')] if group.endswith('.attn') else group


if __name__ == '__main__':
    main()
