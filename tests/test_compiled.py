"""attn_compile: the affine unit through torch.compile against eager."""
import collections

import pytest
import torch

import mmdet_ela  # noqa: F401
from mmdet_ela.models import ELAFPN, ELAResNet
from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory
from mmdet_ela.models.layers.ops import ValueRecipe
from mmdet_ela.models.layers.replay import OutputReplay


def _pair(value_conv: bool,
          drop_path_rate: float = 0.0,
          value_stride: int = 1,
          recompute_values: bool = False):
    torch.manual_seed(0)
    kwargs = dict(
        channels=16,
        dim_per_head=4,
        value_conv=value_conv,
        value_stride=value_stride,
        drop_path_rate=drop_path_rate)
    eager = LayerAttention(**kwargs)
    torch.nn.init.normal_(eager.norm.weight)
    torch.nn.init.normal_(eager.norm.bias)
    compiled = LayerAttention(
        compiled=True, recompute_values=recompute_values, **kwargs)
    compiled.load_state_dict(eager.state_dict())
    return eager, compiled


def _run(unit, xs, seed=0):
    torch.manual_seed(seed)
    memory = LayerAttentionMemory()
    return [unit(x, memory) for x in xs]


@pytest.mark.parametrize('value_conv, value_stride, recompute',
                         [(True, 1, False), (False, 1, False),
                          (True, 2, False), (True, 1, True), (True, 2, True)])
def test_compiled_unit_matches_eager_outputs_and_gradients(
        value_conv, value_stride, recompute):
    """The whole unit compiled (values kept), or its small ops only
    (values made again in backward), against eager."""
    eager, compiled = _pair(
        value_conv,
        drop_path_rate=0.3,
        value_stride=value_stride,
        recompute_values=recompute)
    sizes = [(6, 5), (6, 5), (3, 3)]  # a smaller last value: resized
    xs = [torch.randn(4, 16, h, w, requires_grad=True) for h, w in sizes]
    grads = [torch.randn(4, 16, h, w) for h, w in sizes]
    for mode in (True, False):  # training (drop-path draws) and evaluation
        eager.train(mode), compiled.train(mode)
        outs = [_run(unit, xs) for unit in (eager, compiled)]
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        inputs = [list(eager.parameters()), list(compiled.parameters())]
        got = [
            torch.autograd.grad(out, xs + params, grads)
            for out, params in zip(outs, inputs)
        ]
        for a, b in zip(*got):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    compiled.recording = eager.recording = True
    for unit in (eager, compiled):
        _run(unit, xs)
    torch.testing.assert_close(compiled.attention, eager.attention)
    assert compiled.attention.shape == (4, 4, 3)
    # Under autocast the output keeps x's dtype, as eager (fp32 x here: the
    # value convolution is bf16, the residual add promotes).
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = [_run(unit, xs) for unit in (eager, compiled)]
    for a, b in zip(*outs):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.slow  # compiles about a dozen graphs: ~1-3 min on 2 cores
def test_compiled_backbone_and_neck_train_and_prune():
    torch.manual_seed(0)
    backbone = ELAResNet(
        depth=18,
        base_channels=16,
        dim_per_head=8,
        stage_with_attention=(False, True, False, False),
        attn_compile=True)
    neck = ELAFPN([16, 32, 64, 128],
                  32,
                  num_outs=4,
                  dim_per_head=16,
                  attn_compile=True)
    x = torch.rand(2, 3, 64, 64)
    params = list(backbone.parameters()) + list(neck.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    for _ in range(2):
        loss = sum(o.pow(2).mean() for o in neck(backbone(x)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert backbone.layer2.attn.units['1'].norm.weight.abs().sum() > 0
    backbone.layer2.attn.prune([1])  # another memory length: compiles again
    neck.attn.prune([2])
    with torch.no_grad():
        outs = neck(backbone.eval()(x))
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


@pytest.mark.parametrize('build', [
    lambda **kw: ELAResNet(depth=18, **kw),
    lambda **kw: ELAFPN([64, 128], 32, num_outs=2, **kw),
])
def test_compile_needs_the_affine_output(build):
    with pytest.raises(ValueError, match="attn_compile=True.*'BN'"):
        build(attn_compile=True, attn_norm_cfg=dict(type='BN'))
    with pytest.raises(ValueError, match='attn_compile=1 must be True'):
        build(attn_compile=1)


def test_compiled_units_make_values_and_outputs_again(monkeypatch):
    """The compiled region holds the small ops only, so values made again
    and outputs computed again in backward work with it: eager's outputs
    and gradients, one replay (layer2's first unit; the stage's last keeps
    its output) and both values made again."""
    calls = []
    for cls in (ValueRecipe, OutputReplay):
        monkeypatch.setattr(
            cls,
            'compute',
            lambda self, f=cls.compute: calls.append(type(self)) or f(self))
    torch.manual_seed(0)
    kwargs = dict(
        depth=18,
        base_channels=16,
        dim_per_head=8,
        stage_with_attention=(False, True, False, False))
    eager = ELAResNet(**kwargs)
    for name, param in eager.named_parameters():
        if '.attn.' in name and '.norm.' in name:
            torch.nn.init.normal_(param, std=0.5)
    compiled = ELAResNet(
        attn_compile=True,
        attn_recompute_values=True,
        attn_recompute_outputs=True,
        **kwargs)
    compiled.load_state_dict(eager.state_dict())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    results = []
    for model in (eager, compiled):
        outs = model.train()(x)
        loss = sum((o * torch.linspace(0, 1, o.shape[-1])).sum() for o in outs)
        params = [p for p in model.parameters() if p.requires_grad]
        results.append((outs, torch.autograd.grad(loss, [x] + params)))
        counts = collections.Counter(calls)
        calls.clear()
        assert counts == ({} if model is eager else {
            ValueRecipe: 2,
            OutputReplay: 1
        })
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
