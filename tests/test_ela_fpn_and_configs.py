"""ELAFPN against FPN, every config building, detectors from configs."""
import glob
import os.path as osp

import pytest
import torch
from helpers import ROOT
from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmdet_ela  # noqa: F401
from mmdet_ela.models import ELAFPN
from mmdet_ela.pruning import attention_stacks, get_masks

CONFIGS = sorted(glob.glob(osp.join(ROOT, 'configs', '*', '*.py')))


@pytest.mark.parametrize('kwargs', [
    dict(in_channels=[32, 64, 128, 256], out_channels=64, num_outs=5),
    dict(
        in_channels=[32, 64, 128, 256],
        out_channels=64,
        num_outs=5,
        start_level=1,
        add_extra_convs='on_input'),
    dict(
        in_channels=[32, 64, 128, 256],
        out_channels=64,
        num_outs=4,
        add_extra_convs='on_output',
        relu_before_extra_convs=True,
        norm_cfg=dict(type='BN')),
])
def test_ela_fpn_equals_fpn_at_init(kwargs):
    torch.manual_seed(0)
    fpn = FPN(**kwargs)
    fpn.init_weights()
    ela = ELAFPN(**kwargs)
    ela.init_weights()
    result = ela.load_state_dict(fpn.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert all(k.startswith('attn.') for k in result.missing_keys)
    feats = [
        torch.rand(2, c, 64 // 2**i, 64 // 2**i)
        for i, c in enumerate(kwargs['in_channels'])
    ]
    fpn.eval()
    ela.eval()
    with torch.no_grad():
        for a, b in zip(fpn(feats), ela(feats)):
            assert torch.equal(a, b)
    assert ela.attn.num_units == kwargs['num_outs']


def test_ela_fpn_levels_retrieve_from_coarser_levels():
    neck = ELAFPN(
        in_channels=[32, 64], out_channels=32, num_outs=3, dim_per_head=16)
    neck.init_weights()
    feats = [torch.rand(1, 32, 16, 16), torch.rand(1, 64, 8, 8)]
    with torch.no_grad(), mmdet_ela.pruning.record_attention(neck):
        outs = neck.eval()(feats)
        sizes = [u.attention.shape[-1] for _, u in neck.attn.kept_units()]
    assert sizes == [1, 2, 3]  # unit 0 = coarsest level
    assert [o.shape[-1] for o in outs] == [16, 8, 4]


def test_ela_fpn_identity_without_init_weights_and_batch_one():
    torch.manual_seed(0)
    kwargs = dict(
        in_channels=[32, 64],
        out_channels=32,
        num_outs=4,
        add_extra_convs='on_input')
    fpn = FPN(**kwargs)
    ela = ELAFPN(dim_per_head=16, **kwargs)
    ela.load_state_dict(fpn.state_dict(), strict=False)
    feats = [torch.rand(1, 32, 8, 8), torch.rand(1, 64, 4, 4)]
    with torch.no_grad():
        for a, b in zip(fpn(feats), ela(feats)):
            assert torch.equal(a, b)
    # Training mode, batch 1, 1x1 top levels: FPN runs, so must ELAFPN,
    # with the default affine output and with a batch norm (no statistics
    # from one value per channel: the running ones are used).
    outs = ela.train()(feats)
    assert outs[-1].shape[-2:] == (1, 1)
    bn = ELAFPN(dim_per_head=16, attn_norm_cfg=dict(type='BN'), **kwargs)
    assert isinstance(bn.attn.units['3'].norm, torch.nn.BatchNorm2d)
    torch.nn.init.normal_(bn.attn.units['3'].norm.weight)
    outs = bn.train()(feats)
    assert outs[-1].shape[-2:] == (1, 1) and outs[-1].isfinite().all()


def test_ela_fpn_norms_and_drop_path_ramp():
    kwargs = dict(
        in_channels=[32, 64],
        out_channels=32,
        num_outs=3,
        dim_per_head=16,
        norm_cfg=dict(type='GN', num_groups=8))
    # The FPN's own norm does not set the units' output norm.
    neck = ELAFPN(**kwargs)
    assert type(neck.attn.units['0'].norm).__name__ == 'ChannelAffine'
    neck = ELAFPN(
        drop_path_rate=0.2,
        attn_norm_cfg=dict(type='GN', num_groups=8),
        **kwargs)
    assert isinstance(neck.attn.units['0'].norm, torch.nn.GroupNorm)
    rates = [
        getattr(u.drop_path, 'drop_prob', 0.0)
        for _, u in neck.attn.kept_units()
    ]
    assert rates == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize('kwargs, key', [
    (dict(dim_per_head=True), 'dim_per_head'),
    (dict(drop_path_rate='0.1'), 'drop_path_rate'),
    (dict(attn_norm_cfg=dict(type='GN')), 'attn_norm_cfg'),
])
def test_ela_fpn_bad_arguments(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ELAFPN(in_channels=[32, 64], out_channels=32, num_outs=2, **kwargs)


def test_ela_fpn_bad_dim_per_head():
    with pytest.raises(ValueError, match='dim_per_head'):
        ELAFPN(
            in_channels=[32, 64], out_channels=48, num_outs=2, dim_per_head=32)


@pytest.mark.parametrize(
    'path', CONFIGS, ids=[osp.basename(p) for p in CONFIGS])
def test_every_config_builds(path):
    init_default_scope('mmdet')
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['mmdet_ela']
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'ELAResNet'
    stacks = attention_stacks(model)
    assert stacks and all(n.startswith(('backbone.', 'neck.')) for n in stacks)
    assert ('_ela-fpn' in path) == (type(model.neck).__name__ == 'ELAFPN')
    assert any(h['type'] == 'ELAPruneHook' for h in cfg.custom_hooks)
    if 'coco' in path:
        assert cfg.auto_scale_lr.base_batch_size == 16
        assert 'torchvision://resnet' in cfg.model.backbone.init_cfg.checkpoint
        depth = 101 if 'r101' in path else 50
        assert model.backbone.depth == depth


@pytest.mark.parametrize('name', [
    'retinanet/retinanet_ela-r50_ela-fpn_1x_coco.py',
    'faster_rcnn/faster-rcnn_ela-r50_fpn_1x_coco.py',
    'mask_rcnn/mask-rcnn_ela-r50_ela-fpn_1x_coco.py',
])
def test_detector_from_config_loss_and_predict(name):
    """A config with custom_imports and type='ELAResNet' builds a detector that
    runs a loss step and a predict step (R-18 to keep it fast)."""
    init_default_scope('mmdet')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
    cfg.model.backbone.depth = 18
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    model = MODELS.build(cfg.model)
    model.init_weights()
    with_mask = 'mask' in name
    packed = demo_mm_inputs(
        2, [[3, 128, 128]] * 2, with_mask=with_mask, num_classes=80)
    data = model.data_preprocessor(packed, training=True)
    model.train()
    losses = model(**data, mode='loss')
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v)
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.layer2.attn.units['1'].norm.weight.grad is not None
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(packed, training=False)
        results = model(**data, mode='predict')
    assert len(results) == 2 and hasattr(results[0], 'pred_instances')
    # frozen_stages=1 (mmdet's COCO bases): layer1 carries no units.
    assert len(get_masks(model)) == (4 if '_ela-fpn' in name else 3)
    assert model.backbone.layer1.attn is None
