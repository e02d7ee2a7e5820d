"""Pruning in place: structure, parameters, state_dict round trips, optimizer, errors."""
import pytest
import torch
from mmdet.registry import MODELS
from mmengine.optim import build_optim_wrapper

import mmdet_ela  # noqa: F401
from mmdet_ela.engine import drop_parameters
from mmdet_ela.engine.hooks import ELAPruneHook
from mmdet_ela.models import (apply_masks, attention_stacks, count_units,
                              get_masks)


def _backbone(**kwargs):
    model = MODELS.build(dict(type='ELAResNet', depth=18, **kwargs))
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
    apply_masks(model, {**get_masks(model),
                        'layer3.attn': [True, False, True, True, False, True]})
    with torch.no_grad(), mmdet_ela.models.record_attention(model):
        model.eval()(torch.rand(1, 3, 64, 64))
        sizes = [u.attention.shape[-1]
                 for _, u in model.layer3.attn.kept_units()]
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
    with pytest.raises(ValueError, match='layer3.attn.*expected a mask of '
                       'length 2'):
        _backbone().load_state_dict(state)
    # A pruned unit cannot come back.
    apply_masks(model, _some_mask(model))
    with pytest.raises(ValueError, match='cannot be restored'):
        apply_masks(model, {n: [True] * len(m)
                            for n, m in get_masks(model).items()})


def _paramwise_sgd(model):
    """SGD with momentum and paramwise_cfg: one param group per parameter."""
    return build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4),
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
])
def test_bad_hook_options(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ELAPruneHook(**kwargs)


def test_hook_builds_from_registry():
    from mmdet.registry import HOOKS
    hook = HOOKS.build(dict(type='ELAPruneHook', quantile=0.2))
    assert isinstance(hook, ELAPruneHook) and hook.quantile == 0.2


def test_stacks_are_found_in_detector():
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    cfg = Config.fromfile('configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py')
    model = MODELS.build(cfg.model)
    names = list(attention_stacks(model))
    assert names == [f'backbone.layer{i}.attn' for i in range(1, 5)] + [
        'neck.attn'
    ]


def test_corrupted_checkpoint_is_refused_clearly(tmp_path):
    import subprocess

    from conftest import PYTHON, ROOT, run_env
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
    out = subprocess.run(
        [PYTHON, 'tools/test.py',
         'configs/shapes/retinanet_ela-r18_ela-fpn_shapes.py', str(bad)],
        capture_output=True, text=True, env=run_env(), cwd=ROOT)
    assert out.returncode != 0
    assert 'is corrupted' in out.stderr
