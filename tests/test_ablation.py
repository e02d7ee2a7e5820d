"""The ablation tool and the pruning-choice check: variants, stats, smoke."""
import json
import os
import os.path as osp
import subprocess

import pytest
from helpers import PYTHON, ROOT, SHAPES_CONFIG, run_env, tiny_config
from mmengine.config import Config

from mmdet_ela.analysis.ablation import (VARIANTS, aggregate,
                                         format_round_table, format_table,
                                         mean_std, resolve_variants,
                                         scale_schedule, top_select,
                                         variant_config)
from mmdet_ela.analysis.ablation.results import step_time
from mmdet_ela.analysis.ablation.runner import (logged_keep_freed_memory,
                                                train_command)
from mmdet_ela.analysis.ablation.variants import random_hook_options

ABLATION = osp.join(ROOT, 'tools', 'analysis', 'ablation.py')
CHOICE = osp.join(ROOT, 'tools', 'analysis', 'pruning_choice.py')


def _stacks(cfg: Config):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import mmdet_ela  # noqa: F401
    from mmdet_ela.pruning.masks import attention_stacks
    register_all_modules()
    return sorted(attention_stacks(MODELS.build(cfg.model)))


def _hooks(cfg: Config):
    return [h for h in cfg.custom_hooks if h['type'] == 'ELAPruneHook']


# ----------------------------------------------------------------- variants
def test_variant_models():
    base = Config.fromfile(SHAPES_CONFIG)
    plain = variant_config(base, VARIANTS['plain'], seed=3)
    assert plain.model.backbone.type == 'ResNet'
    assert plain.model.neck.type == 'FPN'
    assert 'dim_per_head' not in plain.model.backbone
    assert plain.model.backbone.depth == base.model.backbone.depth
    assert plain.model.backbone.base_channels == 32
    assert plain.randomness.seed == 3
    assert _stacks(plain) == [] and _hooks(plain) == []

    backbone = variant_config(base, VARIANTS['ela-backbone'], seed=0)
    names = _stacks(backbone)
    assert names and all(n.startswith('backbone.') for n in names)
    assert _hooks(backbone) == []

    ela = variant_config(base, VARIANTS['ela+hook'], seed=0)
    assert any(n.startswith('neck.') for n in _stacks(ela))
    [hook] = _hooks(ela)
    assert hook['begin'] == 6 and hook.get('strategy', 'ebqm') == 'ebqm'
    # the base config is left alone
    assert base.model.backbone.type == 'ELAResNet'

    lite = variant_config(base, VARIANTS['ela-lite'], seed=0)
    for part in (lite.model.backbone, lite.model.neck):
        assert part.attn_value_conv is False
        assert part.attn_norm_cfg['type'] == 'Affine'
    assert len(_stacks(lite)) == len(_stacks(ela))
    # The unit's output norm is written into every ELA run's config, so a
    # run of another default unit is never taken for this one.
    assert ela.model.backbone.attn_norm_cfg == dict(type='Affine')
    bn = variant_config(base, VARIANTS['ela-bn-norm'], seed=0)
    for part in (bn.model.backbone, bn.model.neck):
        assert part.attn_norm_cfg == dict(type='BN')


def test_variant_from_plain_config_and_hook_overrides():
    base = Config.fromfile(SHAPES_CONFIG)
    base.model = variant_config(base, VARIANTS['plain'], 0).model
    ela = variant_config(
        base,
        VARIANTS['ela+hook-q0.5'],
        seed=1,
        hook_options=dict(max_rounds=2))
    assert ela.model.backbone.type == 'ELAResNet'
    assert ela.model.neck.type == 'ELAFPN'
    [hook] = _hooks(ela)
    assert hook['quantile'] == 0.5 and hook['max_rounds'] == 2


def test_resolve_variants_adds_the_ebqm_counterpart():
    names = [v.name for v in resolve_variants(['random', 'plain', 'plain'])]
    assert names == ['ela+hook', 'random', 'plain']
    assert 'random' in [v.name for v in resolve_variants(['default'])]
    with pytest.raises(ValueError, match='unknown variant'):
        resolve_variants(['nope'])


def test_random_hook_options_copy_the_ebqm_round():
    records = [
        dict(
            round=1,
            progress=4,
            dry_run=False,
            newly_pruned=[['backbone.layer2.attn', 1], ['neck.attn', 3]])
    ]
    opts = random_hook_options(records, seed=2)
    assert opts == dict(
        strategy='random',
        random_units=2,
        seed=2,
        begin=4,
        interval=1,
        max_rounds=1)
    cfg = variant_config(
        Config.fromfile(SHAPES_CONFIG),
        VARIANTS['random'],
        2,
        random_options=opts)
    [hook] = _hooks(cfg)
    assert hook['strategy'] == 'random' and hook['random_units'] == 2
    # EBQM pruned nothing: the control prunes nothing either
    none = random_hook_options([dict(round=1, progress=4, newly_pruned=[])], 0)
    cfg = variant_config(
        Config.fromfile(SHAPES_CONFIG),
        VARIANTS['random'],
        0,
        random_options=none)
    assert _hooks(cfg) == []
    with pytest.raises(ValueError, match='one pruning round'):
        random_hook_options(records + [dict(records[0], round=2)], 0)


def test_scale_schedule():
    cfg = Config.fromfile(SHAPES_CONFIG)
    scale_schedule(cfg, 15)
    assert cfg.train_cfg.max_epochs == 15
    linear, cosine = cfg.param_scheduler
    assert linear.end == 100  # iteration-based: unchanged
    assert cosine.T_max == cosine.end == 15
    assert _hooks(cfg)[0]['begin'] == 3
    with pytest.raises(ValueError, match='--epochs'):
        scale_schedule(cfg, 0)


# ----------------------------------------------------------------- statistics
def test_mean_std_and_aggregate():
    stat = mean_std([0.196, 0.179, 0.202, None])
    assert stat['n'] == 3
    assert stat['mean'] == pytest.approx(0.192333, abs=1e-6)
    assert stat['std'] == pytest.approx(0.011930, abs=1e-6)  # ddof=1
    assert mean_std([1.0]) == dict(mean=1.0, std=None, n=1)
    assert mean_std([]) == dict(mean=None, std=None, n=0)

    def run(variant, seed, m, t):
        return dict(
            variant=variant,
            seed=seed,
            final_mAP=m,
            best_mAP=m,
            final_mAP_50=m,
            step_time=t,
            params=10,
            units_kept=4,
            units_pruned=0)

    rows = aggregate([
        run('plain', 0, 0.2, 0.1),
        run('ela', 0, 0.3, 0.15),
        run('plain', 1, 0.4, 0.3),
        run('ela', 1, 0.5, 0.25)
    ])
    assert [r['variant'] for r in rows] == ['plain', 'ela']
    assert rows[0]['final_mAP']['mean'] == pytest.approx(0.3)
    assert rows[1]['seeds'] == [0, 1]
    assert rows[1]['time_ratio'] == pytest.approx(1.0)
    table = format_table(rows)
    assert '| `ela` | 2 | 0.400 ± 0.141 |' in table


def test_round_table_means_and_ranks():
    """Per-round means over seeds, ranks per round; a round one seed lacks
    is left out."""
    runs = [
        dict(variant='plain', seed=0, val_mAP=[[2, 0.1], [4, 0.3]]),
        dict(variant='plain', seed=1, val_mAP=[[2, 0.3], [4, 0.5]]),
        dict(variant='ela', seed=0, val_mAP=[[2, 0.3], [4, 0.2]]),
        dict(variant='ela', seed=1, val_mAP=[[4, 0.2]]),
    ]
    lines = format_round_table(runs).splitlines()
    assert lines[0] == '| variant | epoch 2 | epoch 4 |'
    assert lines[2] == '| `plain` | 0.200 (1) | 0.400 (1) |'
    assert lines[3] == '| `ela` | - | 0.200 (2) |'


def test_step_time_skips_start_up():
    entries = [
        dict(step=s, time=t, loss=1.0)
        for s, t in ((10, 9.0), (20, 1.0), (30, 2.0), (40, 3.0))
    ]
    entries.append({'step': 1, 'coco/bbox_mAP': 0.1, 'time': 5.0})
    assert step_time(entries, skip_iters=10) == 2.0
    assert step_time(entries, skip_iters=10, after=20) == 2.5
    assert step_time(entries, skip_iters=100) == 2.5  # later half
    assert step_time([], skip_iters=0) is None


def test_train_command_and_the_logged_allocator_setting(tmp_path):
    one = train_command('c.py', 'w', keep_freed_memory=True)
    assert one[1].endswith('train.py') and one[-1] == '--keep-freed-memory'
    many = train_command('c.py', 'w', 2, resume=True, keep_freed_memory=True)
    assert many[:2] == ['bash', osp.join(ROOT, 'tools', 'dist_train.sh')]
    assert many[2:4] == ['c.py', '2']  # then train.py's own arguments
    assert many[-2:] == ['--keep-freed-memory', '--resume']
    assert '--keep-freed-memory' not in train_command('c.py', 'w', 2)
    log = tmp_path / 'train.log'
    log.write_text('$ ' + ' '.join(one) + '\nepoch 1\n')
    assert logged_keep_freed_memory(str(log)) is True
    with open(log, 'a') as f:  # resumed without the flag
        f.write('$ ' + ' '.join(train_command('c.py', 'w', resume=True)))
    assert logged_keep_freed_memory(str(log)) == 'mixed'


def test_top_select_removes_the_least_redundant_units():
    mask = dict(a=[True] * 5, b=[True] * 3)
    scores = dict(a=[None, 0.9, 0.1, 0.8, 0.7], b=[None, 0.5, 0.95])
    result = top_select(scores, mask, num_units=2, max_prune_ratio=0.5)
    # b.2 (0.95) first, then a.1 (0.9); a.3 is next but the limit is reached
    assert result.newly_pruned == [('b', 2), ('a', 1)]
    assert result.mask['a'] == [True, False, True, True, True]
    three = top_select(scores, mask, num_units=3, max_prune_ratio=0.5)
    # a.3 (0.8) is next; a.2 would neighbour a.1 and a.3
    assert three.newly_pruned == [('b', 2), ('a', 1), ('a', 3)]
    budget = top_select(scores, mask, num_units=5, max_prune_ratio=0.25)
    assert len(budget.newly_pruned) == 2  # floor(0.25 * 8)
    with pytest.raises(ValueError, match='num_units'):
        top_select(scores, mask, num_units=-1)


# ----------------------------------------------------------------- smoke runs
def _tiny_config_file(tmp_path, data_root: str, hook: bool = True) -> str:
    cfg = tiny_config(data_root, str(tmp_path / 'unused'), max_epochs=2)
    if not hook:
        cfg.custom_hooks = []
    path = str(tmp_path / 'tiny_shapes.py')
    cfg.dump(path)
    return path


def _run(cmd, cwd):
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_ablation_tool_smoke_and_resume(tmp_path, tiny_shapes):
    config = _tiny_config_file(tmp_path, tiny_shapes)
    work = tmp_path / 'ablation'
    # `random` brings its EBQM counterpart `ela+hook`, run before it
    cmd = [
        PYTHON, ABLATION, config, '--variants', 'plain', 'random', '--seeds',
        '1', '--work-dir',
        str(work), '--skip-iters', '2', '--keep-freed-memory'
    ]
    out = _run(cmd, tmp_path)
    assert '[run 3/3' in out
    data = json.loads((work / 'ablation.json').read_text())
    assert [r['variant']
            for r in data['runs']] == ['plain', 'ela+hook', 'random']
    plain, ebqm, rand = data['runs']
    for r in data['runs']:
        assert r['seed'] == 0 and r['epochs'] == 2
        assert 0 <= r['final_mAP'] <= r['best_mAP'] <= 1
        assert r['step_time'] > 0 and r['params'] > 0
        assert osp.isfile(r['log']) and osp.isfile(r['config'])
        assert r['keep_freed_memory'] is True
        with open(r['log']) as f:  # the train.py command line comes first
            assert '--keep-freed-memory' in f.readline()
    assert plain['units_total'] == 0 and plain['hook'] is None
    assert ebqm['units_total'] > 0 and ebqm['hook']['type'] == 'ELAPruneHook'
    assert ebqm['units_pruned'] == len(ebqm['pruned_units'])
    assert ebqm['params'] <= ebqm['params_dense']
    # the control removes as many units as EBQM did, at the same epoch
    assert rand['units_pruned'] == ebqm['units_pruned']
    if ebqm['units_pruned']:
        assert rand['hook']['strategy'] == 'random'
        assert rand['prune_epoch'] == ebqm['prune_epoch']
    table = (work / 'ablation.md').read_text()
    for name in ('plain', 'ela+hook', 'random'):
        assert f'`{name}`' in table
    assert (work / 'ablation.png').stat().st_size > 0

    results = sorted(work.glob('runs/*/seed0/result.json'))
    assert len(results) == 3
    stamps = [os.stat(p).st_mtime_ns for p in results]
    again = _run(cmd, tmp_path)
    assert '3/3 runs already finished: skipped' in again
    assert '[run' not in again
    assert [os.stat(p).st_mtime_ns for p in results] == stamps
    # finished runs of the other allocator setting are reused, with a warning
    other = _run([c for c in cmd if c != '--keep-freed-memory'], tmp_path)
    assert other.count('finished with keep_freed_memory=True') == 3
    assert [os.stat(p).st_mtime_ns for p in results] == stamps
    # a finished run is not reused for another schedule
    proc = subprocess.run(
        cmd + ['--epochs', '1'],
        cwd=tmp_path,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=300)
    assert proc.returncode != 0
    assert 'with another config' in proc.stderr


@pytest.mark.slow
def test_pruning_choice_smoke(tmp_path, tiny_shapes):
    config = _tiny_config_file(tmp_path, tiny_shapes, hook=False)
    train_dir = tmp_path / 'dense'
    _run(
        [  # (also runs train.py's --keep-freed-memory)
            PYTHON,
            osp.join(ROOT, 'tools', 'train.py'), config, '--work-dir',
            str(train_dir), '--keep-freed-memory', '--cfg-options',
            'train_cfg.max_epochs=1'
        ],
        tmp_path)
    ckpt = str(train_dir / 'epoch_1.pth')
    out_dir = tmp_path / 'choice'
    _run([
        PYTHON, CHOICE, config, ckpt, '--random-sets', '2',
        '--finetune-epochs', '1', '--out-dir',
        str(out_dir), '--quantile', '0.6', '--max-prune-ratio', '0.5'
    ], tmp_path)
    data = json.loads((out_dir / 'pruning_choice.json').read_text())
    names = ['none', 'ebqm', 'top', 'random-0', 'random-1']
    assert list(data['stages']) == ['no fine-tune', 'fine-tuned']
    for stage in data['stages'].values():
        assert sorted(stage) == sorted(names)
        assert all(0 <= v <= 1 for v in stage.values())
    sel = data['selections']
    size = sel['ebqm']['num_units']
    assert size > 0
    for name in ('top', 'random-0', 'random-1'):
        assert sel[name]['num_units'] <= size
    assert sel['top']['units'] != sel['ebqm']['units']
    table = (out_dir / 'pruning_choice.md').read_text()
    assert '`ebqm`' in table and '`random (2 sets)`' in table
    assert (out_dir / 'pruning_choice.png').stat().st_size > 0
