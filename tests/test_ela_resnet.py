"""ELAResNet: shapes, equivalence with ResNet, learning, options, errors."""
import copy

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS
from mmengine.runner import load_checkpoint

import mmdet_ela  # noqa: F401
from mmdet_ela.models import ELAResNet
from mmdet_ela.models.layers import LayerAttention
from mmdet_ela.models.layers.layer_attention import ChannelAffine
from mmdet_ela.pruning import attention_stacks, record_attention

EXPANSION = {18: 1, 34: 1, 50: 4, 101: 4, 152: 4}


def _build(**kwargs) -> ELAResNet:
    model = MODELS.build(dict(type='ELAResNet', **kwargs))
    model.init_weights()
    return model


@pytest.mark.parametrize('depth', [18, 34, 50, 101, 152])
def test_shapes_every_depth(depth):
    model = _build(depth=depth).eval()
    with torch.no_grad():
        outs = model(torch.rand(2, 3, 64, 64))
    e = EXPANSION[depth]
    assert [tuple(o.shape) for o in outs] == [(2, 64 * e, 16, 16),
                                              (2, 128 * e, 8, 8),
                                              (2, 256 * e, 4, 4),
                                              (2, 512 * e, 2, 2)]
    n_units = sum(s.num_units for s in attention_stacks(model).values())
    assert n_units == sum(ResNet.arch_settings[depth][1])


@pytest.mark.parametrize('depth', [18, 50, 101])
def test_equivalent_to_mmdet_resnet_at_init(depth):
    torch.manual_seed(0)
    plain = ResNet(depth=depth)
    plain.init_weights()
    # Give the plain net non-trivial BN statistics and affine parameters.
    for m in plain.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ela = _build(depth=depth)
    result = ela.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys, 'the attention keys must be missing'
    assert all('.attn.' in k for k in result.missing_keys)
    plain.eval()
    ela.eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        for a, b in zip(plain(x), ela(x)):
            assert torch.equal(a, b)


def _perturb_attention_norms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, LayerAttention):
            m.norm.weight.data = torch.rand(
                m.norm.weight.shape, generator=g) * 0.5 + 0.1


def test_attention_branch_learns():
    torch.manual_seed(0)
    model = _build(depth=18, norm_eval=False).train()
    units = [
        u for s in attention_stacks(model).values() for _, u in s.kept_units()
    ]
    before = {id(u): copy.deepcopy(u.state_dict()) for u in units}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        x = torch.rand(2, 3, 64, 64)
        loss = sum((o - 0.5).pow(2).mean() for o in model(x))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for u in units:
        old = before[id(u)]
        assert not torch.equal(u.norm.weight, old[u.norm_name + '.weight'])
        assert not torch.equal(u.value.weight, old['value.weight'])
    # Units that attend over more than themselves also train query and key
    # (their gradients scale with the affine, still small after 4 steps).
    second = attention_stacks(model)['layer2.attn'].units['1']
    for conv in (second.query, second.key):
        grad = conv.weight.grad
        assert grad.isfinite().all() and grad.abs().sum() > 0


def test_frozen_stages_carry_no_units():
    model = _build(depth=18, frozen_stages=2)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('conv1', 'bn1', 'layer1', 'layer2'))
        assert p.requires_grad != frozen, name
    assert model.layer1.attn is None and model.layer2.attn is None
    assert sorted(attention_stacks(model)) == ['layer3.attn', 'layer4.attn']
    assert model.layer3.attn.units['1'].norm.training
    assert model.stage_with_attention == (False, False, True, True)


def test_unit_in_frozen_stage_is_refused():
    with pytest.raises(ValueError, match='frozen_stages=1 freezes'):
        ELAResNet(
            depth=18,
            frozen_stages=1,
            stage_with_attention=(True, True, True, True))


def test_old_checkpoint_with_frozen_stage_units_loads():
    """Dense checkpoints of the old code had (identity) units in layer1."""
    old = _build(depth=18)  # frozen_stages=-1: units everywhere
    new = _build(depth=18, frozen_stages=1)
    state = old.state_dict()
    assert any(k.startswith('layer1.attn.') for k in state)
    new.load_state_dict(state, strict=True)
    # A unit that did train is not silently dropped.
    old.layer1.attn.units['0'].norm.weight.data.fill_(0.5)
    with pytest.raises(RuntimeError, match='layer1.attn'):
        new.load_state_dict(old.state_dict(), strict=True)


def test_norm_eval_keeps_attention_norms_training():
    model = _build(
        depth=18, norm_eval=True, attn_norm_cfg=dict(type='BN')).train()
    assert not model.layer3[0].norm1.training
    assert model.layer3.attn.units['0'].norm.training


def test_with_cp_same_output_and_gradients():
    torch.manual_seed(0)
    ref = _build(depth=18, norm_eval=False)
    _perturb_attention_norms(ref)
    cp_model = _build(depth=18, norm_eval=False, with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    assert cp_model.layer2.attn.units['1'].with_cp
    x = torch.rand(2, 3, 64, 64)
    outs = []
    grads = []
    for model in (ref, cp_model):
        model.train()
        xi = x.clone().requires_grad_(True)
        out = model(xi)
        sum(o.pow(2).mean() for o in out).backward()
        outs.append([o.detach() for o in out])
        grads.append({
            n: p.grad.clone()
            for n, p in model.named_parameters() if p.grad is not None
        })
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    assert grads[0].keys() == grads[1].keys()
    attn_keys = [k for k in grads[0] if '.attn.' in k]
    assert attn_keys
    for k in grads[0]:
        torch.testing.assert_close(
            grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_recording_only_when_asked():
    model = _build(depth=18).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model(x)
    unit = model.layer2.attn.units['1']
    assert unit.attention is None
    with record_attention(model), torch.no_grad():
        model(x)
        attn = unit.attention
        assert attn.shape == (2, 128 // 32, 2)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 4))
    assert unit.attention is None and not unit.recording


def test_options_build_and_run():
    x = torch.rand(1, 3, 64, 64)
    configs = [
        dict(depth=50, style='caffe', out_indices=(1, 3)),
        dict(depth=50, deep_stem=True, avg_down=True),
        dict(depth=18, stage_with_attention=(False, True, False, True)),
        dict(depth=50, drop_path_rate=0.1),
        dict(
            depth=50,
            num_stages=3,
            out_indices=(2, ),
            strides=(1, 2, 2),
            dilations=(1, 1, 1)),
        dict(depth=50, zero_init_residual=False, dim_per_head=64),
        dict(
            depth=50,
            plugins=[
                dict(
                    cfg=dict(type='ContextBlock', ratio=1. / 16),
                    stages=(False, True, True, True),
                    position='after_conv3')
            ]),
        dict(
            depth=50,
            dcn=dict(type='DCNv2', deform_groups=1, fallback_on_stride=False),
            stage_with_dcn=(False, False, True, True)),
    ]
    for cfg in configs:
        model = _build(**cfg).eval()
        with torch.no_grad():
            outs = model(x)
        assert len(outs) == len(cfg.get('out_indices', (0, 1, 2, 3)))
    model = _build(depth=18, stage_with_attention=(False, True, False, True))
    assert sorted(attention_stacks(model)) == ['layer2.attn', 'layer4.attn']


def test_syncbn_builds():
    syncbn = dict(type='SyncBN', requires_grad=True)
    model = _build(depth=18, norm_cfg=syncbn)
    assert isinstance(model.layer1[0].bn1, nn.SyncBatchNorm)
    # The default output of the units has no statistics to synchronise.
    assert isinstance(model.layer1.attn.units['0'].norm, ChannelAffine)
    model = _build(depth=18, norm_cfg=syncbn, attn_norm_cfg=syncbn)
    norm = model.layer1.attn.units['0'].norm
    assert isinstance(norm, nn.SyncBatchNorm)
    assert norm.weight.requires_grad


def _randomize_unit_norms(model: nn.Module) -> None:
    """Trained-looking output norms: weights, biases and BN statistics."""
    for m in model.modules():
        if isinstance(m, LayerAttention):
            norm = m.norm
            norm.weight.data.uniform_(-0.5, 0.5)
            norm.bias.data.uniform_(-0.2, 0.2)
            if isinstance(norm, nn.BatchNorm2d):
                norm.running_mean.uniform_(-0.3, 0.3)
                norm.running_var.uniform_(0.2, 2.0)


def test_bn_unit_checkpoint_folds_into_affine_unit(tmp_path):
    """A checkpoint of the BN unit loads, through mmengine, into the affine
    unit and gives the same outputs in evaluation."""
    torch.manual_seed(0)
    old = _build(depth=18, frozen_stages=1, attn_norm_cfg=dict(type='BN'))
    _randomize_unit_norms(old)
    path = tmp_path / 'bn_unit.pth'
    torch.save(dict(state_dict=old.state_dict(), meta=dict()), path)
    new = _build(depth=18, frozen_stages=1)  # the default affine unit
    with pytest.warns(UserWarning, match='folded'):
        load_checkpoint(new, str(path), strict=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(old.eval()(x), new.eval()(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert new.layer3.attn.units['1'].norm.weight.abs().sum() > 0


def test_affine_checkpoint_into_bn_unit_is_refused():
    """Loading it would leave every unit untrained (missing keys) with a
    non-strict load: refused, naming attn_norm_cfg."""
    affine = _build(depth=18)
    _randomize_unit_norms(affine)
    bn = _build(depth=18, attn_norm_cfg=dict(type='BN'))
    with pytest.raises(ValueError, match="attn_norm_cfg.*'Affine'") as err:
        bn.load_state_dict(affine.state_dict(), strict=False)
    assert "'affine'" in str(err.value) and 'layer1.attn.units.0' in str(
        err.value)


def test_pretrained_init_cfg_loads_resnet_checkpoint(tmp_path):
    plain = ResNet(depth=18)
    plain.init_weights()
    path = tmp_path / 'r18.pth'
    torch.save(plain.state_dict(), path)
    ela = _build(
        depth=18, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    torch.testing.assert_close(ela.layer3[1].conv2.weight,
                               plain.layer3[1].conv2.weight)
    assert torch.all(ela.layer3.attn.units['1'].norm.weight == 0)


@pytest.mark.parametrize('kwargs, key, allowed', [
    (dict(depth=42), 'depth', '[18, 34, 50, 101, 152]'),
    (dict(depth=18, dim_per_head=48), 'dim_per_head', '64'),
    (dict(depth=18, out_indices=(0, 4)), 'out_indices', '0..3'),
    (dict(depth=18, frozen_stages=7), 'frozen_stages', '-1..4'),
    (dict(depth=18, stage_with_attention=(True, )), 'stage_with_attention',
     'num_stages=4'),
    (dict(depth=18, drop_path_rate=1.5), 'drop_path_rate', '[0, 1)'),
    (dict(depth=18, dim_per_head=True), 'dim_per_head', 'positive integer'),
    (dict(depth=18,
          stage_with_attention='TFTF'), 'stage_with_attention', 'booleans'),
    (dict(depth=18, drop_path_rate='0.1'), 'drop_path_rate', '[0, 1)'),
    (dict(depth=18,
          attn_norm_cfg=dict(type='GN')), 'attn_norm_cfg', 'num_groups'),
    (dict(depth=18, attn_norm_cfg='BN'), 'attn_norm_cfg', "'type'"),
])
def test_bad_arguments(kwargs, key, allowed):
    with pytest.raises(ValueError) as err:
        ELAResNet(**kwargs)
    assert key in str(err.value) and allowed in str(err.value)


def test_group_norm_builds_and_runs():
    """mmdet's ResNet test case: ResNet-50 with GroupNorm (GN on the units'
    outputs too)."""
    gn = dict(type='GN', num_groups=32, requires_grad=True)
    model = ELAResNet(50, norm_cfg=gn, attn_norm_cfg=gn)
    norms = [
        m for m in model.modules()
        if isinstance(m, (nn.GroupNorm, nn.BatchNorm2d))
    ]
    assert norms and all(isinstance(m, nn.GroupNorm) for m in norms)
    assert model.layer2.attn.units['0'].norm.num_groups == 32
    model.train()
    feats = model(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 8, 8), (1, 512, 4, 4),
                                               (1, 1024, 2, 2),
                                               (1, 2048, 1, 1)]


def test_batch_one_with_one_pixel_maps_trains():
    """Where mmdet's ResNet runs (batch 1, 1x1 maps, norm_eval), ours runs."""
    x = torch.randn(1, 3, 32, 32)
    plain = ResNet(18, norm_eval=True)
    plain.train()  # mmdet's ResNet.train returns None
    plain(x)
    model = _build(depth=18, norm_eval=True).train()
    outs = model(x)
    assert outs[-1].shape[-2:] == (1, 1)
    sum(o.sum() for o in outs).backward()


def test_identity_from_construction_without_init_weights():
    torch.manual_seed(0)
    plain = ResNet(18)
    plain.init_weights()
    ela = ELAResNet(18)  # no init_weights(): init_detector need not call it
    ela.load_state_dict(plain.state_dict(), strict=False)
    plain.eval()
    ela.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain(x), ela(x)):
            assert torch.equal(a, b)


def test_res_layer_slices_like_sequential_and_reprs():
    model = ELAResNet(18)
    layer = model.layer2
    assert isinstance(layer[0:1], nn.Sequential) and len(layer[0:1]) == 1
    assert layer[-1] is layer[1]
    text = repr(layer.attn.units['0'])
    assert 'channels=128' in text and 'num_heads=4' in text
    layer.attn.prune([1])
    assert 'kept=1/2' in repr(layer.attn)
