"""Tests of tools/analysis/benchmark.py, tools/analysis/analyze_redundancy.py and
mmdet_ela.analysis.plots, on tiny inputs (no timing assertions)."""
import importlib.util
import json
import os.path as osp

import numpy as np
import pytest
import torch

from conftest import ROOT, tiny_config

TOOLS = osp.join(ROOT, 'tools', 'analysis')


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


def _check_variants(res: dict) -> None:
    v = res['variants']
    assert list(v) == ['plain', 'ela_dense', 'ela_ebqm', 'ela_mask']
    for name, info in v.items():
        assert info['train_ms'] > 0 and info['infer_ms'] > 0
        assert len(info['train_ms_all']) == 2
        assert info['train_ratio'] == pytest.approx(
            info['train_ms'] / v['plain']['train_ms'])
        assert info['infer_ratio'] == pytest.approx(
            info['infer_ms'] / v['plain']['infer_ms'])
    assert v['plain']['units_total'] == 0
    assert v['ela_dense']['units_kept'] == v['ela_dense']['units_total'] > 0
    assert v['ela_mask']['units_kept'] < v['ela_dense']['units_kept']
    assert v['ela_mask']['params'] < v['ela_dense']['params']
    assert v['ela_dense']['params'] > v['plain']['params']
    assert v['ela_dense']['flops'] > v['plain']['flops']
    assert v['ela_mask']['flops'] < v['ela_dense']['flops']
    ebqm = v['ela_ebqm']
    pruned = sum(d['pruned'] for d in res['ebqm']['decisions'])
    assert ebqm['units_kept'] == ebqm['units_total'] - pruned
    if pruned:
        assert ebqm['params'] < v['ela_dense']['params']
    # softmax and the attention's element-wise ops are counted
    assert 'aten::softmax' not in res['flops']['uncounted_ops']
    assert 'aten::addcmul_' not in res['flops']['uncounted_ops']
    assert 'random' in res['ebqm']['note']


def test_benchmark_backbone(tmp_path):
    """Backbone mode, a .pth mask with detector names, CPU memory subprocesses."""
    from mmdet_ela.models import ELAResNet, apply_masks, get_masks
    bench = _load_tool('benchmark')
    model = ELAResNet(depth=18)
    masks = get_masks(model)
    masks['layer3.attn'] = [True, False]
    apply_masks(model, masks)
    state = {'backbone.' + k: v for k, v in model.state_dict().items()}
    ckpt = str(tmp_path / 'pruned.pth')
    torch.save({'state_dict': state}, ckpt)

    out, png = str(tmp_path / 'bench.json'), str(tmp_path / 'bench.png')
    res = bench.main([
        '--model', 'backbone', '--depth', '18', '--img-size', '64',
        '--batch-size', '1', '--warmup', '1', '--repeats', '2', '--threads',
        '1', '--mask', ckpt, '--out', out, '--plot', png
    ])
    _check_variants(res)
    assert res['variants']['ela_mask']['mask']['layer3.attn'] == [True, False]
    for info in res['variants'].values():
        assert info['peak_mem_mb'] > 0 and 'step_rss_mb' in info
    with open(out) as f:
        saved = json.load(f)
    assert saved['variants'].keys() == res['variants'].keys()
    assert saved['settings']['threads'] == 1
    assert _png_ok(png)


def test_benchmark_retinanet(tmp_path):
    """RetinaNet mode with a hook record as the mask (backbone names only)."""
    bench = _load_tool('benchmark')
    record = tmp_path / 'round_1.json'
    record.write_text(json.dumps({
        'round': 1,
        'mask': {f'backbone.layer{i}.attn': [True, i != 2]
                 for i in range(1, 5)}
    }))
    out = str(tmp_path / 'bench.json')
    res = bench.main([
        '--model', 'retinanet', '--depth', '18', '--img-size', '128',
        '--batch-size', '1', '--warmup', '1', '--repeats', '2', '--threads',
        '1', '--memory', 'none', '--mask', str(record), '--out', out
    ])
    _check_variants(res)
    assert res['variants']['ela_mask']['mask']['backbone.layer2.attn'] == [
        True, False]
    assert 'peak_mem_mb' not in res['variants']['plain']
    assert osp.exists(out)


def test_fit_mask_names():
    bench = _load_tool('benchmark')
    names = ['layer1.attn', 'layer2.attn']
    fitted, notes = bench.fit_mask(
        {'backbone.layer1.attn': [True, False], 'neck.attn': [True]}, names,
        detector=False)
    assert fitted == {'layer1.attn': [True, False], 'layer2.attn': None}
    assert any('neck.attn' in n for n in notes)
    fitted, _ = bench.fit_mask({'layer1.attn': [True]},
                               ['backbone.layer1.attn'], detector=True)
    assert fitted == {'backbone.layer1.attn': [True]}
    with pytest.raises(ValueError, match='does not have'):
        bench.fit_mask({'layer9.attn': [True]}, names, detector=False)


def _fake_records(folder) -> None:
    from mmdet_ela.redundancy import ebqm_select
    mask = {'backbone.layer1.attn': [True] * 3,
            'backbone.layer2.attn': [True] * 4}
    rng = np.random.default_rng(0)
    for r in (1, 2):
        scores = {g: [None] + rng.random(len(m) - 1).tolist()
                  for g, m in mask.items()}
        scores = {g: [None if not k else s for s, k in zip(sc, mask[g])]
                  for g, sc in scores.items()}
        result = ebqm_select(scores, mask, 0.5, 0.5, 1)
        record = result.to_dict()
        record.update(round=r, progress=2 * r, quantile=0.5)
        (folder / f'round_{r}.json').write_text(json.dumps(record))
        mask = result.mask


def test_analyze_redundancy_val_data_and_records(tmp_path, tiny_shapes):
    """Shapes config (ELA backbone + ELA neck), images from its val dataloader."""
    tool = _load_tool('analyze_redundancy')
    cfg = tiny_config(tiny_shapes, str(tmp_path / 'work'))
    cfg_path = str(tmp_path / 'shapes.py')
    cfg.dump(cfg_path)
    records = tmp_path / 'ela_prune'
    records.mkdir()
    _fake_records(records)
    out_dir = tmp_path / 'analysis'
    summary = tool.main([cfg_path, '--out-dir', str(out_dir),
                         '--num-batches', '2', '--records', str(tmp_path)])
    assert summary['data'] == 'val_dataloader'
    assert summary['num_batches'] == 2 and summary['images'] == 8
    stacks = summary['stacks']
    assert 'neck.attn' in stacks and 'backbone.layer1.attn' in stacks
    for name, s in stacks.items():
        k = len(s['units'])
        rows = s['mean_attention']
        assert len(rows) == k
        for b, row in enumerate(rows):  # each row is a distribution
            assert sum(row[:b + 1]) == pytest.approx(1.0, abs=1e-6)
            assert all(v is None for v in row[b + 1:])
        assert s['adjacent_kl'][0] is None
        assert all(v is not None and v >= 0 for v in s['adjacent_kl'][1:])
        # the adjacent KL is the first off-diagonal of the pairwise matrix
        for b in range(1, k):
            assert s['pairwise_kl'][b - 1][b] == pytest.approx(
                s['adjacent_kl'][b], rel=1e-6)
    assert summary['ebqm_settings'] == dict(quantile=0.3, max_prune_ratio=0.3,
                                            min_keep=1)
    assert [r['round'] for r in summary['records']] == [1, 2]
    for name in ('kl_adjacent', 'kl_pairwise', 'ebqm_beta_fit', 'mask',
                 'attention', 'overview', 'records'):
        assert _png_ok(summary['figures'][name]), name
    with open(out_dir / 'summary.json') as f:
        assert json.load(f)['figures'] == summary['figures']


def test_analyze_redundancy_backbone_checkpoint(tmp_path):
    """A bare ELAResNet config, random inputs, a pruned checkpoint."""
    from mmdet_ela.models import ELAResNet, apply_masks, get_masks
    tool = _load_tool('analyze_redundancy')
    cfg_path = tmp_path / 'backbone.py'
    cfg_path.write_text(
        "custom_imports = dict(imports=['mmdet_ela'])\n"
        "model = dict(type='ELAResNet', depth=18, base_channels=16, "
        "dim_per_head=8)\n")
    model = ELAResNet(depth=18, base_channels=16, dim_per_head=8)
    masks = get_masks(model)
    masks['layer2.attn'] = [True, False]
    apply_masks(model, masks)
    ckpt = str(tmp_path / 'pruned.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    summary = tool.main([str(cfg_path), ckpt, '--out-dir',
                         str(tmp_path / 'out'), '--num-batches', '1',
                         '--img-size', '64', '--batch-size', '2'])
    assert summary['data'].startswith('random')
    assert summary['init'] == 'checkpoint'
    layer2 = summary['stacks']['layer2.attn']
    assert layer2['mask'] == [True, False] and layer2['units'] == [0]
    assert layer2['adjacent_kl'] == [None, None]
    decisions = {(d['group'], d['index']): d
                 for d in summary['ebqm']['decisions']}
    assert decisions[('layer2.attn', 1)]['reason'] == 'already pruned'
    assert _png_ok(summary['figures']['overview'])


def test_plots_take_plain_data(tmp_path):
    from mmdet_ela.analysis import plots
    scores = {'a.attn': [None, 0.5, 0.2], 'b.attn': [None, 0.1]}
    mask = {'a.attn': [True, True, False], 'b.attn': [True, True]}
    attn = {'a.attn': np.array([[1.0, np.nan], [0.3, 0.7]])}
    figs = {
        'kl': plots.plot_kl_heatmap(scores),
        'pair': plots.plot_pairwise_kl(
            {'a.attn': np.array([[np.nan, 0.4], [np.nan, np.nan]])}),
        'beta': plots.plot_beta_fit([0.1, 0.5, 0.9], [0.1, 0.5, 0.95], 1.2,
                                    0.9, 0.3, [True, False, False],
                                    ['a.1', 'a.2', 'b.1'], 'mle'),
        'beta_none': plots.plot_beta_fit([], [], None, None, 0.3),
        'mask': plots.plot_mask(mask, [('a.attn', 2)]),
        'attn': plots.plot_attention(attn),
        'overview': plots.plot_overview(
            scores, mask, attn, dict(z=[0.2], cdf=[0.1], alpha=1.0, beta=1.0,
                                     quantile=0.3)),
        'bench': plots.plot_benchmark({'variants': {
            'plain': dict(label='ResNet (plain)', train_ms=10.0,
                          infer_ms=3.0, params=1e6, flops=2e9),
            'ela_dense': dict(label='ELA dense', train_ms=12.0, infer_ms=3.5,
                              params=1.1e6, flops=2.1e9, train_ratio=1.2)}}),
    }
    for name, fig in figs.items():
        path = plots.save_figure(fig, str(tmp_path / f'{name}.png'))
        assert _png_ok(path), name
