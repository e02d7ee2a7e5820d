"""Tests of the analysis package and its tools (benchmark, redundancy analysis,
GPU check script), on tiny inputs and without timing assertions."""
import dataclasses
import importlib.util
import inspect
import json
import mmap
import os
import os.path as osp
import statistics
import subprocess

import numpy as np
import pytest
import torch
from helpers import PYTHON, ROOT, SHAPES_CONFIG, run_env, tiny_config
from mmengine.config import Config

from mmdet_ela.analysis.benchmark import compiled_op_costs_note
from mmdet_ela.analysis.kernel_time import (busy_us, kernel_deltas,
                                            kernel_times, summary_line)
from mmdet_ela.analysis.memory import peak_allocated_bytes
from mmdet_ela.analysis.op_costs import op_costs, op_deltas, op_split
from mmdet_ela.analysis.report import format_results
from mmdet_ela.analysis.settings import ebqm_defaults
from mmdet_ela.analysis.timing import (add_ratios, median_interval,
                                       paired_ratios, time_interleaved)
from mmdet_ela.analysis.variants import (ELA_ONLY_ARGS, PLAIN_TYPES,
                                         build_model, drop_pretrained,
                                         plain_model_cfg)
from mmdet_ela.pruning import (apply_masks, attention_stacks, get_masks,
                               load_masks, make_record, write_record)
from mmdet_ela.redundancy import ebqm_select
from mmdet_ela.utils import KEEP_FREED_MEMORY

TOOLS = osp.join(ROOT, 'tools', 'analysis')
RETINA_ELA_FPN = osp.join(ROOT, 'configs', 'retinanet',
                          'retinanet_ela-r50_ela-fpn_1x_coco.py')
TINY_BENCH = [
    '--img-size', '64', '--batch-size', '1', '--warmup', '0', '--repeats', '1',
    '--threads', '1', '--score-batches', '1'
]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(
        f'ela_tool_{name}', osp.join(TOOLS, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _keep_threads():
    """The tools set torch's thread count; give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _png_ok(path: str) -> bool:
    with open(path, 'rb') as f:
        return osp.getsize(path) > 1000 and f.read(8) == b'\x89PNG\r\n\x1a\n'


def _shapes_model():
    cfg = Config.fromfile(SHAPES_CONFIG)
    return build_model(drop_pretrained(cfg.model)[0])


# ---------------------------------------------------------------- variants
def test_plain_model_cfg_builds_plain_twin():
    """No ELA module left; the residual path keeps its state_dict keys."""
    cfg = Config.fromfile(SHAPES_CONFIG)
    ela = build_model(cfg.model)
    plain = build_model(plain_model_cfg(cfg.model))
    assert attention_stacks(ela) and not attention_stacks(plain)
    assert not [
        m for m in plain.modules() if type(m).__name__.startswith('ELA')
    ]
    assert type(plain.backbone).__name__ == 'ResNet'
    assert type(plain.neck).__name__ == 'FPN'
    ela_keys = {k for k in ela.state_dict() if '.attn.' not in k}
    assert set(plain.state_dict()) == ela_keys
    plain.load_state_dict({
        k: v
        for k, v in ela.state_dict().items() if k in ela_keys
    })


def test_ela_only_args_cover_every_ela_option():
    """An option of ELAResNet / ELAFPN that their mmdet parent lacks must be
    dropped from the plain twin's config, or the twin does not build."""
    from mmdet.registry import MODELS
    for ela_type, plain_type in PLAIN_TYPES.items():
        ela = inspect.signature(MODELS.get(ela_type).__init__).parameters
        plain = inspect.signature(MODELS.get(plain_type).__init__).parameters
        named = {
            k
            for k, p in ela.items()
            if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
        }
        assert named - set(plain) - {'self'} <= set(ELA_ONLY_ARGS)


def test_plain_model_cfg_on_coco_config():
    model = Config.fromfile(RETINA_ELA_FPN).model
    plain = plain_model_cfg(model)
    assert plain['backbone']['type'] == 'ResNet'
    assert plain['neck']['type'] == 'FPN'
    for part in ('backbone', 'neck'):
        assert not {
            'dim_per_head', 'stage_with_attention', 'drop_path_rate',
            'attn_norm_cfg'
        } & set(plain[part])
    assert plain['backbone']['depth'] == 50
    assert plain['backbone']['init_cfg']['type'] == 'Pretrained'
    assert model.backbone.type == 'ELAResNet'  # the input is not changed
    dropped_cfg, dropped = drop_pretrained(model)
    assert dropped_cfg['backbone']['init_cfg'] is None
    assert dropped == ['backbone.init_cfg (torchvision://resnet50)']
    with pytest.raises(TypeError, match='model_cfg'):
        plain_model_cfg(['ELAResNet'])


def test_variants_share_weights_and_outputs():
    """plain gets the ELA residual weights: same outputs at initialisation."""
    from mmdet_ela.analysis.bench_config import (BenchmarkSettings,
                                                 build_variant, model_setup)
    setup = model_setup(BenchmarkSettings(config=SHAPES_CONFIG))
    plain, dense = (build_variant(setup, n, 0) for n in ('plain', 'dense'))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = [m.eval()(x, mode='tensor') for m in (plain, dense)]
    flat = [torch.cat([t.flatten() for t in o[0] + o[1]]) for o in outs]
    torch.testing.assert_close(flat[0], flat[1], rtol=0, atol=0)
    plain_setup = dataclasses.replace(
        setup, model_cfg=plain_model_cfg(setup.model_cfg))
    with pytest.raises(ValueError, match='no layer-attention units'):
        build_variant(plain_setup, 'dense', 0)


# ------------------------------------------------------------------ timing
def test_time_interleaved_rotates_order():
    calls = []
    fns = {n: (lambda n=n: calls.append(n)) for n in 'abc'}
    times = time_interleaved(fns, 1, 2, torch.device('cpu'))
    assert calls == list('abc'
                         'bca'
                         'cab')  # warm-up round, then 2 timed
    assert {n: len(t) for n, t in times.items()} == dict(a=2, b=2, c=2)
    with pytest.raises(ValueError, match='repeats=0'):
        time_interleaved(fns, 0, 0, torch.device('cpu'))
    variants = dict(plain=dict(train_ms=2.0, flops=None), x=dict(train_ms=3.0))
    add_ratios(variants, 'plain')
    assert variants['x']['train_ratio'] == 1.5
    assert 'flops_ratio' not in variants['x']


def test_paired_ratios_divide_within_rounds():
    """A slow round slows both variants; its ratio stays that of the
    others, while the ratio of medians moves."""
    times = dict(plain=[1.0, 1.0, 3.0, 1.0], x=[1.1, 1.2, 3.3, 1.1])
    out = paired_ratios(times, 'plain', 'train')
    assert list(out) == ['x']
    x = out['x']
    assert x['train_round_ratio_all'] == pytest.approx([1.1, 1.2, 1.1, 1.1])
    assert x['train_round_ratio'] == pytest.approx(1.1)
    low, high = x['train_round_ratio_iqr']
    assert low == pytest.approx(1.1) and 1.1 < high <= 1.2
    assert x['train_round_ratio_ci'] is None  # 4 rounds: too few
    one = paired_ratios(dict(plain=[2.0], x=[3.0]), 'plain', 'infer')['x']
    assert one['infer_round_ratio_iqr'] == [1.5, 1.5]
    assert one['infer_round_ratio_ci'] is None
    with pytest.raises(ValueError, match="base='p'"):
        paired_ratios(times, 'p', 'train')
    with pytest.raises(ValueError, match="'x' has 1 rounds"):
        paired_ratios(dict(plain=[1.0, 2.0], x=[1.0]), 'plain', 'train')


def test_median_interval_is_binomial_order_statistics():
    """The interval holds the median with the stated confidence: its order
    statistics follow from the binomial distribution, not from the spread
    of the values."""
    ratios = [1.0 + 0.01 * k for k in (7, 3, 9, 1, 5, 10, 2, 8, 4, 6)]
    low, high = median_interval(ratios)
    # 10 values: the 2nd and 9th smallest (P(Binom(10, .5) <= 1) < 2.5%)
    assert (low, high) == (pytest.approx(1.02), pytest.approx(1.09))
    # an outlier (the largest ratio made huge) moves the mean, not this
    assert median_interval([9.0 if r == max(ratios) else r
                            for r in ratios]) == [low, high]
    # more rounds of the same spread: a narrower interval
    many = sorted(ratios * 3)
    low30, high30 = median_interval(many)
    assert low <= low30 <= statistics.median(many) <= high30 <= high
    assert high30 - low30 < high - low
    times = dict(plain=[1.0] * 10, x=ratios)
    assert paired_ratios(
        times, 'plain',
        'train')['x']['train_round_ratio_ci'] == pytest.approx([low, high])
    assert median_interval(ratios[:5]) is None
    assert median_interval(ratios[:6]) == pytest.approx([1.01, 1.1])
    with pytest.raises(ValueError, match='confidence=1.5'):
        median_interval(ratios, confidence=1.5)


def test_time_interleaved_counts_fresh_pages():
    """A call that touches 64 MiB of fresh memory faults in its pages; one
    that touches none faults (almost) not at all."""
    page = os.sysconf('SC_PAGE_SIZE')
    size = 64 << 20

    def fresh():
        buf = mmap.mmap(-1, size)  # anonymous: new pages, none touched yet
        for i in range(0, size, page):
            buf[i] = 1
        buf.close()

    faults = {}
    times = time_interleaved(
        dict(fresh=fresh, idle=lambda: None),
        0,
        3,
        torch.device('cpu'),
        faults=faults)
    assert {n: len(f) for n, f in faults.items()} == dict(fresh=3, idle=3)
    assert all(f >= size // page for f in faults['fresh'])
    assert max(faults['idle']) < size // page // 10
    assert len(times['fresh']) == 3


def test_peak_allocated_bytes_follows_tensors():
    mb = 2**20

    def step():
        a = torch.ones(mb // 4)  # 1 MiB
        b = torch.ones(2 * mb // 4)  # 3 MiB held
        del a
        c = torch.ones(mb // 4)  # 3 MiB again
        del b, c
        d = torch.ones(2 * mb // 4)  # 2 MiB
        return d

    assert peak_allocated_bytes(step) == pytest.approx(3 * mb, abs=4096)


def test_op_costs_attribute_the_extra_ops():
    """Per call: each op with the shape of its first tensor, counted in
    calls; op_deltas lists what one call runs beyond the other's."""
    a, b = torch.randn(64, 32), torch.randn(32, 16)

    def base():
        torch.mm(a, b)

    def more():
        torch.mm(a, b).relu()
        torch.mm(a, b)
        torch.add(a, 1)

    costs = op_costs(dict(base=base, more=more), 2, torch.device('cpu'))
    mm = ('aten.mm.default', (64, 32))
    assert costs['base'][mm]['calls'] == 1 and costs['more'][mm]['calls'] == 2
    assert costs['more'][('aten.relu.default', (64, 16))]['calls'] == 1
    assert all(c['ms'] >= 0 for c in costs['more'].values())
    rows = {
        (r['op'], tuple(r['shape'])): r
        for r in op_deltas(costs, 'more', base='base')
    }
    assert rows[mm]['extra_calls'] == 1
    add = rows[('aten.add.Tensor', (64, 32))]
    assert add['extra_calls'] == 1 and add['base_ms'] == 0
    assert len(op_deltas(costs, 'more', base='base', top=2)) == 2
    split = op_split(costs, 'more', base='base')
    total = {n: sum(c['ms'] for c in costs[n].values()) for n in costs}
    assert split['extra_calls_ms'] + split['slower_ms'] == pytest.approx(
        total['more'] - total['base'])
    # relu and add never run in base, and one of the two mm calls
    own = sum(c['ms'] for k, c in costs['more'].items() if k != mm)
    assert split['extra_calls_ms'] == pytest.approx(own +
                                                    costs['more'][mm]['ms'] /
                                                    2)
    assert op_split(costs, 'base', base='more')['extra_calls_ms'] < 0
    with pytest.raises(ValueError, match='rounds=0'):
        op_costs(dict(base=base), 0, torch.device('cpu'))


def test_op_costs_note_names_the_compiled_variants():
    """--op-costs counts compiled units as eager ones (torch.compile does
    not run under a dispatch mode): the benchmark says so, per variant."""
    from mmdet_ela.models import ELAResNet
    models = dict(
        dense=ELAResNet(depth=18), alt=ELAResNet(depth=18, attn_compile=True))
    note = compiled_op_costs_note(models)
    assert note.startswith('--op-costs: the units of alt are compiled')
    assert compiled_op_costs_note(dict(dense=models['dense'])) is None


def test_kernel_time_busy_union_and_deltas():
    """Overlapping kernels count once; the deltas rank the kernels that
    grew; on CPU the wall time comes without device figures."""
    assert busy_us([(5, 6), (0, 2), (1, 3), (5.5, 5.7)]) == 4
    assert busy_us([]) == 0
    times = dict(
        plain=dict(
            wall_ms=10.0,
            busy_ms=8.0,
            kernel_calls=3,
            kernels=dict(
                gemm=dict(ms=6.0, calls=2), relu=dict(ms=2.0, calls=1))),
        dense=dict(
            wall_ms=15.0,
            busy_ms=9.0,
            kernel_calls=6,
            kernels=dict(
                gemm=dict(ms=6.5, calls=2),
                relu=dict(ms=2.0, calls=1),
                mul=dict(ms=0.5, calls=3))))
    rows = kernel_deltas(times, 'dense')
    assert [r['kernel'] for r in rows] == ['gemm', 'mul', 'relu']
    assert rows[1] == dict(
        kernel='mul', extra_ms=0.5, ms=0.5, base_ms=0.0, extra_calls=3)
    assert '(+5.0)' in summary_line(times, 'dense')
    a = torch.randn(64, 64)
    cpu = kernel_times(
        dict(plain=lambda: a @ a, dense=lambda: (a @ a).relu()), 2,
        torch.device('cpu'))
    assert all(t['wall_ms'] > 0 and t['busy_ms'] is None and not t['kernels']
               for t in cpu.values())
    assert summary_line(cpu, 'dense') is None
    with pytest.raises(ValueError, match='rounds=0'):
        kernel_times(dict(plain=lambda: None), 0, torch.device('cpu'))


# --------------------------------------------------------------- benchmark
def _hook_record(folder) -> dict:
    """A real round record for the shapes model that prunes some units."""
    model = _shapes_model()
    masks = get_masks(model)
    rng = np.random.default_rng(0)
    scores = {
        n: [None] + rng.random(len(m) - 1).tolist()
        for n, m in masks.items()
    }
    result = ebqm_select(scores, masks, quantile=0.9, max_prune_ratio=0.5)
    assert result.newly_pruned
    record = make_record(result, 1, scored_batches=1, quantile=0.9)
    write_record(str(folder), record)
    return record


def test_benchmark_config_every_variant(tmp_path):
    """The shapes config: plain, dense, the half-resolution unit (alt),
    EBQM-pruned and a hook record."""
    bench = _load_tool('benchmark')
    record = _hook_record(tmp_path)
    path = str(tmp_path / 'ela_prune' / 'round_1.json')
    out, png = str(tmp_path / 'bench.json'), str(tmp_path / 'bench.png')
    res = bench.main([
        SHAPES_CONFIG, *TINY_BENCH, '--memory', 'allocated', '--mask', path,
        '--out', out, '--plot', png, '--alt-options',
        'model.backbone.attn_value_stride=2', 'model.neck.attn_value_stride=2',
        '--op-costs', '1', '--kernel-time', '1'
    ])
    v = res['variants']
    assert list(v) == ['plain', 'dense', 'alt', 'pruned', 'mask']
    # Same units and parameters; half-resolution values cost fewer FLOPs.
    assert v['alt']['units_kept'] == v['dense']['units_kept']
    assert v['alt']['params'] == v['dense']['params']
    assert v['plain']['flops'] < v['alt']['flops'] < v['dense']['flops']
    for info in v.values():
        assert info['train_ms'] > 0 and info['infer_ms'] > 0
        assert info['train_ratio'] == pytest.approx(info['train_ms'] /
                                                    v['plain']['train_ms'])
        assert len(info['train_faults_all']) == len(info['train_ms_all'])
        assert info['train_faults'] >= 0
    for info in list(v.values())[1:]:  # paired with plain round by round
        low, high = info['train_round_ratio_iqr']
        assert low <= info['train_round_ratio'] <= high
        assert len(info['infer_round_ratio_all']) == len(info['infer_ms_all'])
    assert 'train_round_ratio' not in v['plain']
    assert 'rounds q1-q3' in format_results(res)
    assert 'median 95% CI' in format_results(res)
    # allocated tensors: the units' values and outputs come on top
    assert 'max_memory_allocated' in res['memory_method']
    assert 0 < v['plain']['peak_mem_mb'] < v['dense']['peak_mem_mb']
    assert 'allocator_env' in res['environment']
    ops = res['op_costs']
    assert list(ops['top']) == ['dense', 'alt', 'pruned', 'mask']
    assert all(ms > 0 for ms in ops['step_op_ms'].values())
    # more ops dispatched with units; pruning removes some
    counts = ops['step_ops']
    assert counts['plain'] < counts['mask'] < counts['dense']
    assert f'{counts["dense"]:.0f} ops' in format_results(res)
    assert ops['split']['dense']['extra_calls_ms'] > 0
    # the units' ops (e.g. the value convolution) run in dense, not plain
    assert any(r['extra_calls'] > 0 for r in ops['top']['dense'])
    # under the profiler: wall times; device figures need CUDA
    kernels = res['kernel_time']
    assert list(kernels['top']) == ['dense', 'alt', 'pruned', 'mask']
    assert all(t['wall_ms'] > 0 and t['busy_ms'] is None
               for t in kernels['steps'].values())
    assert 'device busy - (no CUDA)' in format_results(res)
    assert v['plain']['units_total'] == 0
    assert v['dense']['units_kept'] == v['dense']['units_total'] > 0
    assert v['mask']['mask'] == record['mask']
    kept = sum(sum(m) for m in record['mask'].values())
    assert v['mask']['units_kept'] == kept < v['dense']['units_kept']
    assert v['plain']['params'] < v['mask']['params'] < v['dense']['params']
    assert v['plain']['flops'] < v['mask']['flops'] < v['dense']['flops']
    assert 'aten::softmax' not in res['flops']['uncounted_ops']
    pruned = sum(d['pruned'] for d in res['ebqm']['decisions'])
    assert v['pruned']['units_kept'] == v['dense']['units_kept'] - pruned
    assert 'random data' in res['ebqm']['note']
    # the config's ELAPruneHook sets no EBQM option: EBQM's own defaults
    assert res['ebqm_settings'] == ebqm_defaults()
    with open(out) as f:
        saved = json.load(f)
    assert list(saved['variants']) == list(v)
    assert saved['settings']['img_size'] == [64, 64]
    assert _png_ok(png)


@pytest.mark.slow
def test_benchmark_backbone_with_memory(tmp_path):
    """Backbone mode, a checkpoint with bare names, CPU memory children."""
    bench = _load_tool('benchmark')
    model = build_model(dict(type='ELAResNet', depth=18, dim_per_head=32))
    masks = get_masks(model)
    masks['backbone.layer3.attn'] = [True, False]
    apply_masks(model, masks)
    ckpt = str(tmp_path / 'pruned.pth')
    torch.save({'state_dict': model.backbone.state_dict()}, ckpt)
    res = bench.main([
        '--model', 'backbone', '--depth', '18', *TINY_BENCH, '--variants',
        'plain', 'mask', '--mask', ckpt, '--memory', 'subprocess',
        '--no-flops', '--keep-freed-memory'
    ])
    assert res['settings']['keep_freed_memory']
    assert res['environment']['keep_freed_memory'] == KEEP_FREED_MEMORY
    assert '--keep-freed-memory (glibc mallopt mmap_threshold=536870912' in \
        format_results(res)
    v = res['variants']
    assert list(v) == ['plain', 'mask'] and res['ebqm'] is None
    assert v['mask']['mask']['backbone.layer3.attn'] == [True, False]
    for info in v.values():
        assert info['peak_mem_mb'] > 0 and 'step_rss_mb' in info
    assert 'fresh process' in res['memory_method']


def test_unit_cost_times_chained_and_unchained(tmp_path):
    tool = _load_tool('unit_cost')
    out = str(tmp_path / 'unit_cost.json')
    res = tool.main([
        '--channels', '64', '--size', '8', '--units', '3', '--warmup', '0',
        '--repeats', '3', '--threads', '1', '--out', out
    ])
    assert res['unchained_ms'] > 0 and res['chained_ms'] > 0
    low, high = res['chained_to_unchained_iqr']
    assert low <= res['chained_to_unchained'] <= high
    assert res['chained_to_unchained_ci'] is None  # 3 rounds: too few
    with open(out) as f:
        assert json.load(f)['shape'] == [2, 64, 8, 8]
    with pytest.raises(SystemExit):
        tool.main(['--units', '0'])


def test_benchmark_bad_mask_is_clear(tmp_path):
    bench = _load_tool('benchmark')
    bad = tmp_path / 'mask.json'
    bad.write_text(json.dumps({'backbone.layer1.attn': [1, 0, 1]}))
    with pytest.raises(
            ValueError,
            match=r'--mask .*mask\.json: pruning mask '
            'does not fit the model'):
        bench.main([
            SHAPES_CONFIG, *TINY_BENCH, '--memory', 'none', '--mask',
            str(bad)
        ])
    with pytest.raises(SystemExit):  # argparse: --amp needs CUDA
        bench.parse_args([SHAPES_CONFIG, '--amp'])
    with pytest.raises(SystemExit):  # the alt variant needs its options
        bench.parse_args([SHAPES_CONFIG, '--variants', 'plain', 'alt'])


# ------------------------------------------------------ redundancy analysis
def _fake_records(folder) -> None:
    mask = {
        'backbone.layer1.attn': [True] * 3,
        'backbone.layer2.attn': [True] * 4
    }
    rng = np.random.default_rng(0)
    for r in (1, 2):
        scores = {
            g: [
                None if not k or i == 0 else float(rng.random())
                for i, k in enumerate(m)
            ]
            for g, m in mask.items()
        }
        result = ebqm_select(scores, mask, 0.5, 0.5, 1)
        write_record(
            str(folder),
            make_record(
                result, r, scored_batches=1, progress=2 * r, quantile=0.5))
        mask = result.mask


def test_analyze_redundancy_val_data_and_records(tmp_path, tiny_shapes,
                                                 capsys):
    """Shapes config (ELA backbone + ELA neck), images from its val loader."""
    tool = _load_tool('analyze_redundancy')
    cfg = tiny_config(tiny_shapes, str(tmp_path / 'work'))
    cfg_path = str(tmp_path / 'shapes.py')
    cfg.dump(cfg_path)
    _fake_records(tmp_path)
    out_dir = tmp_path / 'analysis'
    summary = tool.main([
        cfg_path, '--out-dir',
        str(out_dir), '--num-batches', '2', '--records',
        str(tmp_path)
    ])
    assert summary['data'] == 'val_dataloader'
    assert summary['num_batches'] == 2 and summary['images'] == 8
    stacks = summary['stacks']
    assert 'neck.attn' in stacks and 'backbone.layer1.attn' in stacks
    for name, s in stacks.items():
        k = len(s['units'])
        for b, row in enumerate(s['mean_attention']):  # distributions
            assert sum(row[:b + 1]) == pytest.approx(1.0, abs=1e-6)
            assert all(v is None for v in row[b + 1:])
        assert s['adjacent_kl'][0] is None
        assert all(v is not None and v >= 0 for v in s['adjacent_kl'][1:])
        # the scorer's adjacent KL is the pairwise matrix's first diagonal
        for b in range(1, k):
            assert s['pairwise_kl'][b - 1][b] == pytest.approx(
                s['adjacent_kl'][b], rel=1e-6)
    assert summary['ebqm_settings'] == ebqm_defaults()
    cands = [d for d in summary['ebqm']['decisions'] if d['scaled']]
    assert cands and all(0 < d['scaled'] < 1 for d in cands)
    assert [r['round'] for r in summary['records']] == [1, 2]
    for name in ('kl_adjacent', 'kl_pairwise', 'ebqm_beta_fit', 'mask',
                 'attention', 'overview', 'records'):
        assert _png_ok(summary['figures'][name]), name
    # the decision table of the model's scores, then of both records
    assert capsys.readouterr().out.count('ELAPruneHook round') == 3
    with open(out_dir / 'summary.json') as f:
        assert json.load(f)['figures'] == summary['figures']


def test_analyze_redundancy_backbone_checkpoint(tmp_path):
    """A bare ELAResNet config, random inputs, a pruned checkpoint."""
    tool = _load_tool('analyze_redundancy')
    cfg_path = tmp_path / 'backbone.py'
    cfg_path.write_text(
        "custom_imports = dict(imports=['mmdet_ela'])\n"
        "model = dict(type='ELAResNet', depth=18, base_channels=16, "
        "dim_per_head=8)\n")
    model = build_model(
        dict(type='ELAResNet', depth=18, base_channels=16, dim_per_head=8))
    masks = get_masks(model)
    masks['backbone.layer2.attn'] = [True, False]
    apply_masks(model, masks)
    ckpt = str(tmp_path / 'pruned.pth')
    torch.save({'state_dict': model.backbone.state_dict()}, ckpt)
    summary = tool.main([
        str(cfg_path), ckpt, '--out-dir',
        str(tmp_path / 'out'), '--num-batches', '1', '--img-size', '64',
        '--batch-size', '2'
    ])
    assert summary['data'].startswith('random')
    assert summary['init'] == 'checkpoint' and summary['images'] == 2
    layer2 = summary['stacks']['backbone.layer2.attn']
    assert layer2['mask'] == [True, False] and layer2['units'] == [0]
    assert layer2['adjacent_kl'] == [None, None]
    decisions = {
        (d['group'], d['index']): d
        for d in summary['ebqm']['decisions']
    }
    assert decisions[('backbone.layer2.attn', 1)]['reason'] == \
        'already pruned'
    assert _png_ok(summary['figures']['overview'])


def test_plots_take_plain_data(tmp_path):
    from mmdet_ela.analysis import plots
    from mmdet_ela.analysis.plot_benchmark import plot_benchmark
    scores = {'a.attn': [None, 0.5, 0.2], 'b.attn': [None, 0.1]}
    mask = {'a.attn': [True, True, False], 'b.attn': [True, True]}
    attn = {'a.attn': np.array([[1.0, np.nan], [0.3, 0.7]])}
    figs = {
        'kl':
        plots.plot_kl_heatmap(scores),
        'pair':
        plots.plot_pairwise_kl(
            {'a.attn': np.array([[np.nan, 0.4], [np.nan, np.nan]])}),
        'beta':
        plots.plot_beta_fit([0.1, 0.5, 0.9], [0.1, 0.5, 0.95], 1.2, 0.9, 0.3,
                            [True, False, False], ['a.1', 'a.2', 'b.1'],
                            'mle'),
        'beta_none':
        plots.plot_beta_fit([], [], None, None, 0.3),
        'mask':
        plots.plot_mask(mask, [('a.attn', 2)]),
        'attn':
        plots.plot_attention(attn),
        'overview':
        plots.plot_overview(
            scores, mask, attn,
            dict(z=[0.2], cdf=[0.1], alpha=1.0, beta=1.0, quantile=0.3)),
        'bench':
        plot_benchmark({
            'variants': {
                'plain':
                dict(
                    label='plain',
                    train_ms=10.0,
                    infer_ms=3.0,
                    params=1e6,
                    flops=2e9),
                'dense':
                dict(
                    label='ELA dense',
                    train_ms=12.0,
                    infer_ms=3.5,
                    params=1.1e6,
                    flops=2.1e9,
                    train_ratio=1.2)
            }
        }),
    }
    for name, fig in figs.items():
        path = plots.save_figure(fig, str(tmp_path / f'{name}.png'))
        assert _png_ok(path), name


# ---------------------------------------------------------------- gpu check
GPU_CHECK = osp.join(TOOLS, 'gpu_check.sh')


def test_gpu_check_script_syntax():
    subprocess.run(['bash', '-n', GPU_CHECK], check=True)


@pytest.mark.slow
def test_gpu_check_runs_its_cpu_steps(tmp_path):
    """Without CUDA: CUDA steps are skipped, the others run and pass."""
    env = run_env()
    env.update(
        ELA_GPU_CHECK_INSTALL='0',
        ELA_VENV=osp.dirname(osp.dirname(PYTHON)),
        ELA_GPU_CHECK_STEPS='env test_cuda shapes_data '
        'pruned_ckpt mmdet_get_flops')
    env.pop('OUT', None)
    out = tmp_path / 'check'
    proc = subprocess.run(['bash', GPU_CHECK, str(out)],
                          cwd=ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert '[gpu_check] summary' in proc.stdout
    with open(out / 'summary.json') as f:
        steps = {s['step']: s['status'] for s in json.load(f)['steps']}
    cuda = 'ok' if torch.cuda.is_available() else 'skipped'
    assert steps == dict(
        env='ok',
        test_cuda=cuda,
        shapes_data='ok',
        pruned_ckpt='ok',
        mmdet_get_flops='ok')
    masks = load_masks(str(out / 'pruned.pth'))
    assert masks == json.loads((out / 'pruned_mask.json').read_text())
    assert not masks['neck.attn'][-1]
    assert 'Flops:' in (out / 'logs' / 'mmdet_get_flops.log').read_text()
    assert os.path.isdir(out / 'data' / 'shapes')
