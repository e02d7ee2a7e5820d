"""ELAResNet: shapes, equivalence with mmdet's ResNet, learning, options, errors."""
import copy

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS

import mmdet_ela  # noqa: F401
from mmdet_ela.models import ELAResNet, attention_stacks, record_attention
from mmdet_ela.models.layers import LayerAttention

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
            m.norm.weight.data = torch.rand(m.norm.weight.shape,
                                            generator=g) * 0.5 + 0.1


def test_attention_branch_learns():
    torch.manual_seed(0)
    model = _build(depth=18, norm_eval=False).train()
    units = [u for s in attention_stacks(model).values()
             for _, u in s.kept_units()]
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
    # Units that attend over more than themselves also move query and key.
    second = attention_stacks(model)['layer2.attn'].units['1']
    old = before[id(second)]
    assert not torch.equal(second.query.weight, old['query.weight'])
    assert not torch.equal(second.key.weight, old['key.weight'])


def test_frozen_stages_freeze_attention():
    model = _build(depth=18, frozen_stages=2)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('conv1', 'bn1', 'layer1', 'layer2'))
        assert p.requires_grad != frozen, name
    assert not model.layer1.attn.training
    assert not model.layer2.attn.units['1'].norm.training
    assert model.layer3.attn.units['1'].norm.training


def test_norm_eval_keeps_attention_norms_training():
    model = _build(depth=18, norm_eval=True).train()
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
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                      if p.grad is not None})
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)
    assert grads[0].keys() == grads[1].keys()
    attn_keys = [k for k in grads[0] if '.attn.' in k]
    assert attn_keys
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4,
                                   atol=1e-6)


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
        dict(depth=50, num_stages=3, out_indices=(2, ), strides=(1, 2, 2),
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
    model = _build(depth=18, norm_cfg=dict(type='SyncBN', requires_grad=True))
    norm = model.layer1.attn.units['0'].norm
    assert isinstance(norm, nn.SyncBatchNorm)
    assert norm.weight.requires_grad


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
])
def test_bad_arguments(kwargs, key, allowed):
    with pytest.raises(ValueError) as err:
        ELAResNet(**kwargs)
    assert key in str(err.value) and allowed in str(err.value)
