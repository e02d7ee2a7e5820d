"""Pruning in place: structure, parameters, state_dict round trips,
optimizer, mask validation, loading masks, scoring, records, errors."""
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.optim import build_optim_wrapper

import mmdet_ela  # noqa: F401
from mmdet_ela.engine import drop_parameters
from mmdet_ela.engine.hooks import ELAPruneHook
from mmdet_ela.pruning import (apply_masks, attention_stacks, count_units,
                               get_masks)


def _backbone(**kwargs):
    model = MODELS.build(dict(type='ELAResNet', **{'depth': 18, **kwargs}))
    model.init_weights()
    return model


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def _some_mask(model):
    masks = get_masks(model)
    masks['layer2.attn'][1] = False
    masks['layer4.attn'][1] = False
    return masks


def test_pruning_deletes_modules_and_parameters():
    model = _backbone()
    dense = _n_params(model)
    unit = model.layer4.attn.units['1']
    unit_params = _n_params(unit) + _n_params(model.layer2.attn.units['1'])
    apply_masks(model, _some_mask(model))
    assert '1' not in model.layer4.attn.units
    assert _n_params(model) == dense - unit_params
    assert count_units(model) == dict(total=8, kept=6, pruned=2)
    # Later units retrieve only from the units that remain: the output of a
    # pruned stage's last block is the block's output itself.
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
    assert outs[3].shape == (1, 512, 2, 2)


def test_later_units_skip_pruned_ones():
    model = MODELS.build(dict(type='ELAResNet', depth=34))
    model.init_weights()
    apply_masks(model, {
        **get_masks(model), 'layer3.attn':
        [True, False, True, True, False, True]
    })
    with torch.no_grad(), mmdet_ela.pruning.record_attention(model):
        model.eval()(torch.rand(1, 3, 64, 64))
        sizes = [
            u.attention.shape[-1] for _, u in model.layer3.attn.kept_units()
        ]
    assert sizes == [1, 2, 3, 4]


def test_pruned_state_dict_loads_into_dense_model():
    torch.manual_seed(0)
    pruned = _backbone()
    for m in pruned.modules():  # give the attention branch some effect
        if hasattr(m, 'norm_name') and hasattr(m, 'query'):
            m.norm.weight.data.fill_(0.3)
    apply_masks(pruned, _some_mask(pruned))
    state = pruned.state_dict()
    assert state['layer2.attn.mask'].tolist() == [1, 0]
    dense = _backbone()
    dense.load_state_dict(state, strict=True)  # prunes first, then loads
    assert get_masks(dense) == get_masks(pruned)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(pruned.eval()(x), dense.eval()(x)):
            assert torch.equal(a, b)


def test_mismatched_mask_is_refused():
    model = _backbone()
    with pytest.raises(ValueError, match='expected a mask of length 2'):
        apply_masks(model, {**get_masks(model), 'layer1.attn': [True] * 3})
    with pytest.raises(ValueError, match='does not fit the model'):
        apply_masks(model, {'layer1.attn': [True, True]})
    state = model.state_dict()
    state['layer3.attn.mask'] = torch.ones(5, dtype=torch.uint8)
    with pytest.raises(
            ValueError, match='layer3.attn.*expected a mask of '
            'length 2'):
        _backbone().load_state_dict(state)
    # A pruned unit cannot come back.
    apply_masks(model, _some_mask(model))
    with pytest.raises(ValueError, match='cannot be restored'):
        apply_masks(model, {
            n: [True] * len(m)
            for n, m in get_masks(model).items()
        })


def _paramwise_sgd(model):
    """SGD with momentum and paramwise_cfg: one param group per parameter."""
    return build_optim_wrapper(
        model,
        dict(
            optimizer=dict(
                type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0.0)))


def _prune_with_optimizer(model, wrapper, masks):
    """Prune ``model`` to ``masks`` and drop the removed parameters from the
    optimizer. Returns (removed parameters, count drop_parameters reported)."""
    before = list(model.parameters())
    apply_masks(model, masks)
    alive = {id(p) for p in model.parameters()}
    removed = [p for p in before if id(p) not in alive]
    return removed, drop_parameters(wrapper, removed)


def test_optimizer_follows_pruning_and_keeps_momentum():
    model = _backbone()
    wrapper = _paramwise_sgd(model)
    n_groups = len(wrapper.optimizer.param_groups)
    assert n_groups == len(list(model.parameters()))  # one group per param
    loss = sum(o.mean() for o in model(torch.rand(2, 3, 64, 64)))
    wrapper.update_params(loss)
    kept_param = model.layer1[0].conv1.weight
    momentum = wrapper.optimizer.state[kept_param]['momentum_buffer'].clone()

    removed, count = _prune_with_optimizer(model, wrapper, _some_mask(model))
    alive = {id(p) for p in model.parameters()}
    assert count == len(removed) > 0
    opt = wrapper.optimizer
    assert len(opt.param_groups) == n_groups
    held = {id(p) for g in opt.param_groups for p in g['params']}
    assert held == alive
    assert all(id(p) in alive for p in opt.state)
    torch.testing.assert_close(opt.state[kept_param]['momentum_buffer'],
                               momentum)
    loss = sum(o.mean() for o in model(torch.rand(2, 3, 64, 64)))
    wrapper.update_params(loss)  # steps fine with the emptied groups

    # A fresh dense optimizer pruned the same way loads the saved state.
    fresh_model = _backbone()
    fresh = _paramwise_sgd(fresh_model)
    _prune_with_optimizer(fresh_model, fresh, get_masks(model))
    fresh.load_state_dict(wrapper.state_dict())


@pytest.mark.parametrize('kwargs, key', [
    (dict(quantile=0), 'quantile'),
    (dict(quantile=1.2), 'quantile'),
    (dict(max_prune_ratio=1.0), 'max_prune_ratio'),
    (dict(min_keep=0), 'min_keep'),
    (dict(interval=0), 'interval'),
    (dict(begin=-1), 'begin'),
    (dict(max_rounds=1.5), 'max_rounds'),
    (dict(num_batches=0), 'num_batches'),
    (dict(dry_run='yes'), 'dry_run'),
    (dict(strategy='highest'), 'strategy'),
    (dict(random_units=-1), 'random_units'),
    (dict(seed=0.5), 'seed'),
])
def test_bad_hook_options(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ELAPruneHook(**kwargs)


def test_hook_builds_from_registry():
    from mmdet.registry import HOOKS
    hook = HOOKS.build(dict(type='ELAPruneHook', quantile=0.2))
    assert isinstance(hook, ELAPruneHook) and hook.selector.quantile == 0.2


def test_stacks_are_found_in_detector():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = Config.fromfile('configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py')
    model = MODELS.build(cfg.model)
    names = list(attention_stacks(model))
    assert names == [f'backbone.layer{i}.attn'
                     for i in range(1, 5)] + ['neck.attn']


def test_corrupted_checkpoint_is_refused_clearly(tmp_path):
    import subprocess

    from helpers import PYTHON, ROOT, run_env

    from mmdet_ela.utils import check_checkpoint_file
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': _backbone().state_dict()}, good)
    check_checkpoint_file(str(good))
    data = good.read_bytes()
    bad = tmp_path / 'epoch_3.pth'
    bad.write_bytes(data[:len(data) // 2])  # a save cut short
    with pytest.raises(ValueError, match='epoch_3.pth.*corrupted'):
        check_checkpoint_file(str(bad))
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # a flipped byte inside a tensor
    (tmp_path / 'flipped.pth').write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match='corrupted'):
        check_checkpoint_file(str(tmp_path / 'flipped.pth'))
    with pytest.raises(FileNotFoundError):
        check_checkpoint_file(str(tmp_path / 'missing.pth'))
    out = subprocess.run([
        PYTHON, 'tools/test.py',
        'configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py',
        str(bad)
    ],
                         capture_output=True,
                         text=True,
                         env=run_env(),
                         cwd=ROOT)
    assert out.returncode != 0
    assert 'is corrupted' in out.stderr


# ------------------------------------------------- mask validation (8.4)
@pytest.mark.parametrize('bad', [[2, 5], [1, float('nan')], [0.5, 1]])
def test_non_binary_masks_are_refused_naming_the_key(bad):
    model = _backbone()
    with pytest.raises(ValueError, match=r'layer2\.attn.*allowed values'):
        apply_masks(model, {**get_masks(model), 'layer2.attn': bad})
    state = model.state_dict()
    state['layer2.attn.mask'] = torch.tensor(bad)
    fresh = _backbone()
    with pytest.raises(
            ValueError, match=r'layer2\.attn\.mask.*allowed values'):
        fresh.load_state_dict(state)
    assert count_units(fresh)['pruned'] == 0
    assert count_units(model)['pruned'] == 0


def _r(depth):
    return _backbone(depth=depth, base_channels=16, dim_per_head=16)


def _r50_pruned_state():
    r50 = _r(50)
    masks = get_masks(r50)
    masks['layer1.attn'][1] = False
    masks['layer3.attn'][2] = False
    apply_masks(r50, masks)
    return r50.state_dict()


@pytest.mark.parametrize('loader', ['torch', 'mmengine', 'checkpoint'])
def test_failed_mask_load_leaves_the_model_unpruned(loader, tmp_path):
    """An R-50 checkpoint's masks into an R-101: refused before layer1 (whose
    mask fits) is pruned; it used to be pruned before the layer3 error."""
    from mmengine.runner import load_checkpoint, load_state_dict
    state = _r50_pruned_state()
    r101 = _r(101)
    with pytest.raises(ValueError, match=r'layer3\.attn\.mask.*length 23'):
        if loader == 'torch':
            r101.load_state_dict(state)
        elif loader == 'mmengine':
            load_state_dict(r101, state)
        else:
            torch.save({'state_dict': state}, tmp_path / 'r50.pth')
            load_checkpoint(r101, str(tmp_path / 'r50.pth'))
    assert count_units(r101)['pruned'] == 0


def test_apply_masks_validates_every_stack_first():
    model = _backbone()
    masks = get_masks(model)
    masks['layer1.attn'][1] = False  # fits
    masks['layer4.attn'] = [True, 3]  # does not
    with pytest.raises(ValueError, match=r'layer4\.attn'):
        apply_masks(model, masks)
    assert count_units(model)['pruned'] == 0
    masks.pop('layer4.attn')
    with pytest.raises(ValueError, match=r"lacks stacks \['layer4.attn'\]"):
        apply_masks(model, masks)
    assert count_units(model)['pruned'] == 0


def test_load_masks_from_files_records_and_checkpoints(tmp_path):
    import json

    from mmdet_ela.pruning import load_masks, load_records
    model = _backbone()
    masks = _some_mask(model)
    plain = tmp_path / 'mask.json'
    plain.write_text(
        json.dumps({
            k: [int(v) for v in m]
            for k, m in masks.items()
        }))
    assert load_masks(str(plain)) == masks
    records = tmp_path / 'ela_prune'
    records.mkdir()
    for k in (2, 10, 1):  # round_10 is the latest, not round_2
        mask = dict(masks, **{'layer1.attn': [True, k != 10]})
        (records / f'round_{k}.json').write_text(
            json.dumps(dict(round=k, mask=mask)))
    assert [r['round'] for r in load_records(str(tmp_path))] == [1, 2, 10]
    assert load_masks(str(records))['layer1.attn'] == [True, False]
    assert load_masks(str(records / 'round_2.json')) == masks
    apply_masks(model, masks)
    torch.save(
        {
            'state_dict': {
                'backbone.' + k: v
                for k, v in model.state_dict().items()
            }
        }, tmp_path / 'ckpt.pth')
    assert load_masks(str(tmp_path / 'ckpt.pth')) == {
        'backbone.' + k: m
        for k, m in masks.items()
    }
    # bad values are refused, naming the key
    plain.write_text(json.dumps({'layer1.attn': [1, 2]}))
    with pytest.raises(ValueError, match=r'layer1\.attn.*allowed values'):
        load_masks(str(plain))
    state = {'backbone.layer1.attn.mask': torch.tensor([1.0, float('nan')])}
    torch.save({'state_dict': state}, tmp_path / 'nan.pth')
    with pytest.raises(
            ValueError, match=r'backbone\.layer1\.attn\.mask.*allowed'):
        load_masks(str(tmp_path / 'nan.pth'))


# ------------------------------------------------------------- scoring
def test_scorer_matches_direct_kl_and_skips_non_finite_samples():
    from mmdet_ela.pruning import AdjacentUnitScorer, record_attention
    from mmdet_ela.redundancy import adjacent_kl
    torch.manual_seed(0)
    model = _backbone().eval()
    apply_masks(model, {**get_masks(model), 'layer3.attn': [True, False]})
    scorer = AdjacentUnitScorer(model)
    x = torch.rand(3, 3, 64, 64)
    unit = model.layer2.attn.units['1']  # the last unit of its stage

    def poison(module, args, out):
        module.attention[1, 0, 0] = float('nan')

    with torch.no_grad(), record_attention(model):
        model(x)
        scorer.update()
        expected = adjacent_kl(model.layer1.attn.units['0'].attention,
                               model.layer1.attn.units['1'].attention)
        handle = unit.register_forward_hook(poison)
        model(x)
        handle.remove()
        scorer.update()
    scores = scorer.scores()
    assert scorer.batches == 2 and scorer.skipped == 1
    assert scores['layer1.attn'][0] is None
    assert scores['layer1.attn'][1] == pytest.approx(expected.mean().item())
    assert scores['layer3.attn'] == [None, None]  # unit 1 was pruned
    assert all(v is not None for v in scores['layer2.attn'][1:])
    scorer.reduce()  # no process group: a no-op
    assert scorer.scores() == scores


# ------------------------------------------------------------ schedule
def test_schedule_points_are_met_by_later_validation_rounds():
    from mmdet_ela.pruning.schedule import is_due, planned_rounds

    # begin=1, interval=2, validation every 2 epochs: points 1, 3, 5
    assert planned_rounds([2, 4, 6], 1, 2, max_rounds=9) == [2, 4, 6]
    # interval 3 with validation every 3 iterations: points 1, 4, 7
    assert planned_rounds([3, 6, 9], 1, 3, max_rounds=9) == [3, 6, 9]
    # one round covers every point it passed
    assert planned_rounds([4, 8], 1, 1, max_rounds=9) == [4, 8]
    assert planned_rounds([2, 4, 6], 1, 2, max_rounds=2) == [2, 4]
    assert planned_rounds([1, 2], 5, 1, max_rounds=1) == []  # past the end
    # resumed after the round at 4: the next is due at 6 (point 5)
    assert planned_rounds([2, 4, 6], 1, 2, 9, after=4, last_scored=4) == [6]
    assert not is_due(0, 1, 1, None) and is_due(1, 1, 1, None)
    assert is_due(3, 0, 3, 0) and not is_due(5, 0, 3, 3)


def test_records_table_and_explanations(tmp_path):
    from mmdet_ela.pruning import (format_table, load_records, make_record,
                                   write_record)
    from mmdet_ela.redundancy import ebqm_select
    mask = {'s': [True, True], 't': [True]}
    result = ebqm_select({'s': [None, 0.2], 't': [None]}, mask)
    record = make_record(result, 1, scored_batches=3, quantile=0.3)
    assert record['alpha'] is None and record['num_pruned_now'] == 0
    assert record['note'] == ('nothing pruned: only one candidate, so there '
                              'is no distribution to fit')
    table = format_table(record)
    assert 'alpha=-' in table and record['note'] in table
    assert 's.1' in table and 'no spread in scores' in table
    record = make_record(result, 2, scored_batches=0)
    assert record['note'] == 'nothing pruned: no validation batch was scored'
    for k in (10, 2):
        write_record(str(tmp_path), dict(record, round=k))
    assert [r['round'] for r in load_records(str(tmp_path))] == [2, 10]
    with pytest.raises(FileNotFoundError, match='no round_'):
        load_records(str(tmp_path / 'none'))
