"""The unit's autograd functions, the cheap unit (value = X, affine) and the
half-resolution unit (value stride)."""
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from mmdet.models import ResNet

from mmdet_ela.analysis.memory import peak_allocated_bytes
from mmdet_ela.models import ELAFPN, ELAResNet
from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory
from mmdet_ela.models.layers.ops import (AffineMix, DepthwiseConvSplitBackward,
                                         ValueGradients, WeightedSumOverMemory,
                                         _depthwise_input_grad, affine_mix,
                                         mix_values)
from mmdet_ela.pruning import attention_stacks

LITE = dict(value_conv=False)  # the default affine output


def _double(*shape):
    return torch.randn(*shape, dtype=torch.double, requires_grad=True)


@pytest.mark.parametrize('bias_rows', [1, 2])
@pytest.mark.parametrize('with_x', [True, False])
def test_affine_mix_gradients_match_autograd(bias_rows, with_x):
    torch.manual_seed(0)
    coef, bias = _double(2, 8, 3), _double(bias_rows, 8)
    values = [_double(2, 8, 5, 4) for _ in range(3)]
    x = _double(2, 8, 5, 4) if with_x else None

    def fused(c, b, *v):
        return AffineMix.apply(c, b, x, None, None, *v)

    assert torch.autograd.gradcheck(fused, (coef, bias, *values))
    out = fused(coef, bias, *values)
    ref = bias[..., None, None] + sum(coef[:, :, s, None, None] * v
                                      for s, v in enumerate(values))
    if with_x:
        ref = ref + x
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(affine_mix(coef, bias, values, x), ref)


def test_weighted_sum_and_depthwise_conv_gradients_match_autograd():
    torch.manual_seed(0)
    attn = _double(2, 4, 3)
    values = [_double(2, 8, 5, 4) for _ in range(3)]
    assert torch.autograd.gradcheck(WeightedSumOverMemory.apply,
                                    (attn, *values))
    ref = sum(attn[:, :, s].repeat_interleave(2, dim=1)[..., None, None] * v
              for s, v in enumerate(values))
    torch.testing.assert_close(mix_values(attn, values), ref)
    x, weight = _double(2, 8, 5, 4), _double(8, 1, 3, 3)
    # the flipped kernel's input gradient is aten's, for 3x3 and 5x5
    for k in (3, 5):
        w, g = _double(8, 1, k, k), _double(2, 8, 5, 4)
        pad = (k // 2, k // 2)
        flipped = _depthwise_input_grad(g, w, (1, 1), pad, (1, 1), 8)
        assert flipped is not None
        torch.testing.assert_close(
            flipped,
            torch.ops.aten.convolution_backward(g, x, w, None, [1, 1],
                                                list(pad), [1, 1], False,
                                                [0, 0], 8,
                                                [True, False, False])[0])
    # not for strides, other paddings or a channel multiplier
    one = ((1, 1), (1, 1), (1, 1))
    assert _depthwise_input_grad(g, weight, (2, 2), *one[1:], 8) is None
    assert _depthwise_input_grad(g, weight, (1, 1), (0, 0), (1, 1), 8) is None
    assert _depthwise_input_grad(g, weight, *one, 4) is None
    # stride 1: input gradient by the flipped kernel; stride 2: aten's
    for stride in (1, 2):
        args = ((stride, stride), (1, 1), (1, 1))
        assert torch.autograd.gradcheck(
            lambda a, w: DepthwiseConvSplitBackward.apply(a, w, *args),
            (x, weight))
        torch.testing.assert_close(
            DepthwiseConvSplitBackward.apply(x, weight, *args),
            F.conv2d(x, weight, None, stride, 1, 1, 8))


def _reference_unit(unit, xs):
    """The unit's maths with plain ops, for a list of block outputs."""
    keys, values, outs = [], [], []
    g, d = unit.num_heads, unit.dim_per_head
    s = unit.value_stride
    for x in xs:
        n = x.shape[0]
        y = x.mean(dim=(2, 3)).unsqueeze(1)
        q, k = unit.query(y).view(n, g, d), unit.key(y).view(n, g, d)
        keys.append(k)
        if unit.value is not None:  # stride s
            values.append(unit.value(x))
        elif s == 2:
            kernel = [min(2, size) for size in x.shape[-2:]]
            values.append(F.avg_pool2d(x, kernel, kernel, ceil_mode=True))
        else:
            values.append(x)
        attn = torch.einsum('ngd,ngsd->ngs', q, torch.stack(keys, 2))
        attn = (attn / math.sqrt(d)).softmax(-1).repeat_interleave(d, 1)
        out = sum(attn[:, :, i, None, None] * v for i, v in enumerate(values))
        out = F.interpolate(unit.norm(out), size=x.shape[-2:], mode='nearest')
        outs.append(x + out)
    return outs


@pytest.mark.parametrize('norm', ['Affine', 'BN'])
@pytest.mark.parametrize('value_conv', [True, False])
@pytest.mark.parametrize('value_stride, size', [(1, (3, 2)), (2, (3, 2)),
                                                (2, (4, 6)), (2, (5, 1))])
def test_unit_matches_plain_maths_and_gradients(norm, value_conv, value_stride,
                                                size):
    """The default affine output (one fused sum) and the BN output of
    mmdet-ela 0.1 (WeightedSumOverMemory), with and without value conv, at
    full resolution and pooled (sizes the stride divides, and not)."""
    torch.manual_seed(0)
    unit = LayerAttention(
        8,
        dim_per_head=4,
        norm_cfg=dict(type=norm),
        value_conv=value_conv,
        value_stride=value_stride).double()
    torch.nn.init.normal_(unit.norm.weight)
    torch.nn.init.normal_(unit.norm.bias)
    xs = [_double(2, 8, *size) for _ in range(3)]

    def run(*inputs):
        memory = LayerAttentionMemory()
        return tuple(unit(x, memory) for x in inputs)

    for a, b in zip(run(*xs), _reference_unit(unit, xs)):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(run, tuple(xs))
    # Parameter gradients too (query, key, affine; value conv if any).
    grads = [torch.randn(2, 8, *size, dtype=torch.double) for _ in xs]
    params = list(unit.parameters())
    fused = torch.autograd.grad(run(*xs), params, grads)
    plain = torch.autograd.grad(_reference_unit(unit, xs), params, grads)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('value_conv', [True, False])
@pytest.mark.parametrize('with_cp', [False, True])
def test_chained_memory_sums_value_gradients_in_place(value_conv, with_cp,
                                                      monkeypatch):
    """Units that feed each other (as in a ResNet stage) sum the stored
    values' gradients in place: the same gradients as an unchained memory,
    one in-place share per (later unit, earlier value) pair."""
    torch.manual_seed(0)
    units = [
        LayerAttention(
            8, dim_per_head=4, value_conv=value_conv,
            with_cp=with_cp).double() for _ in range(3)
    ]
    for unit in units:
        torch.nn.init.normal_(unit.norm.weight)
        torch.nn.init.normal_(unit.norm.bias)
    block = torch.nn.Conv2d(8, 8, 3, padding=1).double()
    shares = []
    add = ValueGradients.add

    def counted_add(self, index, grad, weight):
        shares.append(index)
        add(self, index, grad, weight)

    monkeypatch.setattr(ValueGradients, 'add', counted_add)

    def run(x, chained=True):
        memory = LayerAttentionMemory(chained=chained)
        for unit in units:
            x = unit(torch.tanh(block(x)), memory)
        return x

    x = _double(2, 8, 5, 4)
    inputs = [x] + [p for m in units + [block] for p in m.parameters()]
    grad = torch.randn(2, 8, 5, 4, dtype=torch.double)
    chained = torch.autograd.grad(run(x), inputs, grad)
    # shares added to an earlier value's sum: value 0 from units 1 and 2,
    # value 1 from unit 2 (each value's own unit takes the sum)
    assert sorted(shares) == [0, 0, 1]
    plain = torch.autograd.grad(run(x, chained=False), inputs, grad)
    for a, b in zip(chained, plain):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(run, (x, ))


def _run_units(units, x, block, chained):
    memory = LayerAttentionMemory(chained=chained)
    for unit in units:
        # the pyramid's sizes when not chained (values resized)
        x = unit(torch.tanh(block(x)), memory)
        if not chained:
            x = F.max_pool2d(x, 2, ceil_mode=True)
    return x, memory


@pytest.mark.parametrize('chained', [True, False])
def test_recomputed_values_same_gradients_less_kept(chained):
    """recompute_values=True: the values are made again in backward (each
    once per pass, resized where the memory's sizes differ) instead of being
    kept: same outputs and gradients, one full-size tensor less kept per
    unit, nothing left in the memory after backward, no reference cycle."""
    import gc
    import weakref
    torch.manual_seed(0)
    units = [LayerAttention(8, dim_per_head=4).double() for _ in range(3)]
    for unit in units:
        torch.nn.init.normal_(unit.norm.weight)
        torch.nn.init.normal_(unit.norm.bias)
    block = torch.nn.Conv2d(8, 8, 3, padding=1).double()
    x = _double(2, 8, 7, 6)
    inputs = [x] + [p for m in units + [block] for p in m.parameters()]
    results = {}
    for recompute in (False, True):
        for unit in units:
            unit.recompute_values = recompute
        saved = []

        def pack(t):
            saved.append(tuple(t.shape))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, memory = _run_units(units, x, block, chained)
        grads = torch.autograd.grad(out.sum(), inputs)
        results[recompute] = (out.detach(), grads, saved)
        assert not memory.recomputed._passes  # each value handed out
        ref = weakref.ref(memory.recomputed)  # held by the graph
        gc.disable()
        try:
            del memory, out, grads
            assert ref() is None  # freed by reference counting alone
        finally:
            gc.enable()
    (out_kept, grads_kept, saved_kept), (out_re, grads_re, saved_re) = \
        results[False], results[True]
    torch.testing.assert_close(out_re, out_kept, rtol=0, atol=0)
    for a, b in zip(grads_re, grads_kept):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    full = [s for s in saved_kept if len(s) == 4 and s[1] == 8]
    # unit t keeps its t + 1 values (saved once per reader)
    assert len(full) - len([s for s in saved_re if len(s) == 4 and s[1] == 8
                            ]) == 1 + 2 + 3
    for unit in units:
        unit.recompute_values = True
    assert torch.autograd.gradcheck(
        lambda t: _run_units(units, t, block, chained)[0], (x, ))


def test_recomputed_values_in_two_backward_passes():
    """backward twice over one graph (retain_graph): each pass makes the
    values again for itself, and both give the kept values' gradients."""
    torch.manual_seed(0)
    units = [
        LayerAttention(8, dim_per_head=4, recompute_values=True).double()
        for _ in range(2)
    ]
    for unit in units:
        torch.nn.init.normal_(unit.norm.weight)
    x = _double(2, 8, 5, 4)

    def run():
        memory = LayerAttentionMemory(chained=True)
        h = x
        for unit in units:
            h = unit(torch.tanh(h), memory)
        return h.square().sum(), memory

    loss, memory = run()
    first = torch.autograd.grad(loss, x, retain_graph=True)[0]
    second = torch.autograd.grad(loss, x)[0]
    assert not memory.recomputed._passes
    for unit in units:
        unit.recompute_values = False
    kept = torch.autograd.grad(run()[0], x)[0]
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    torch.testing.assert_close(second, kept, rtol=0, atol=0)


@pytest.mark.parametrize('kwargs', [
    dict(recompute_values='yes'),
    dict(recompute_values=1),
    dict(recompute_values=True, norm_cfg=dict(type='BN')),
    dict(recompute_values=True, value_conv=False),
])
def test_bad_recompute_values(kwargs):
    with pytest.raises(ValueError, match='attn_recompute_values'):
        LayerAttention(16, dim_per_head=4, **kwargs)
    names = dict(
        recompute_values='attn_recompute_values',
        norm_cfg='attn_norm_cfg',
        value_conv='attn_value_conv')
    options = {names[k]: v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match='attn_recompute_values'):
        ELAFPN([64, 128], 32, num_outs=2, **options)
    with pytest.raises(ValueError, match='attn_recompute_values'):
        ELAResNet(depth=18, **options)


def test_recomputed_values_lower_a_backbone_step_peak():
    """ELAResNet-18 with attn_recompute_values=True: same gradients, a
    lower peak of allocated tensors in a forward and backward."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 160, 160)
    peaks, grads = {}, {}
    for recompute in (False, True):
        torch.manual_seed(1)
        # few channels: the parameters' gradients do not set the peak
        model = ELAResNet(
            depth=18,
            base_channels=16,
            dim_per_head=16,
            attn_recompute_values=recompute)
        for m in model.modules():
            if isinstance(m, LayerAttention):
                torch.nn.init.normal_(m.norm.weight)

        def step():
            sum(o.square().mean() for o in model(x)).backward()

        peaks[recompute] = peak_allocated_bytes(step)
        grads[recompute] = [p.grad for p in model.parameters()]
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b)
    assert peaks[True] < 0.97 * peaks[False]  # 0.947 when written


def test_recomputed_value_of_an_input_changed_in_place_is_refused():
    unit = LayerAttention(8, dim_per_head=4, recompute_values=True)
    torch.nn.init.normal_(unit.norm.weight)
    x = torch.rand(1, 8, 4, 4, requires_grad=True)
    h = x * 1
    z = unit(h, LayerAttentionMemory())
    h.add_(1)  # what autograd refuses for a saved tensor
    with pytest.raises(RuntimeError, match='modified in place'):
        z.sum().backward()


def test_recompute_values_by_default_on_cuda_only():
    unit = LayerAttention(8, dim_per_head=4)
    memory = LayerAttentionMemory()
    x = torch.rand(1, 8, 4, 4)
    assert not unit._recomputes_values(x, memory)
    unit.recompute_values = True
    assert unit._recomputes_values(x, memory)
    memory.append(torch.rand(1, 2, 4), x, None)  # a value not made again
    assert not unit._recomputes_values(x, memory)


def test_chained_memory_survives_a_nested_backward_and_guards_order():
    """A backward pass run from a hook inside another (e.g. a user's
    ``torch.autograd.grad``) keeps its own sums; a share that arrives after
    its value's sum was handed on is an error, not a lost gradient."""
    torch.manual_seed(0)
    units = [LayerAttention(8, dim_per_head=4).double() for _ in range(3)]
    for unit in units:
        torch.nn.init.normal_(unit.norm.weight)
    block = torch.nn.Conv2d(8, 8, 3, padding=1).double()
    x0 = _double(2, 8, 5, 4)

    def weight_grad(chained):
        memory, holder = LayerAttentionMemory(chained=chained), []

        def nested(grad):
            if len(holder) == 1:  # once, not again inside its own pass
                holder.append('nested')
                torch.autograd.grad(
                    holder[0], [units[0].value.weight], retain_graph=True)

        x = x0
        for i, unit in enumerate(units):
            h = torch.tanh(block(x))
            if i == 1:  # fires between the later units and unit 0
                h.register_hook(nested)
            x = unit(h, memory)
        holder.append(x.sum())  # hooks run without grad mode
        return torch.autograd.grad(
            holder[0], [units[0].value.weight], retain_graph=True)[0]

    torch.testing.assert_close(weight_grad(True), weight_grad(False))
    sums = ValueGradients()
    g, w = torch.ones(1, 2, 3, 3), torch.ones(1, 2, 1, 1)
    sums.add(0, g, w)
    torch.testing.assert_close(sums.take(0, g, w), 2 * g)
    with pytest.raises(RuntimeError, match='chained=False'):
        sums.add(0, g, w)


def test_lite_unit_is_identity_at_init_and_drop_path_drops_samples():
    torch.manual_seed(0)
    unit = LayerAttention(16, dim_per_head=4, **LITE)
    memory = LayerAttentionMemory()
    xs = [torch.randn(2, 16, 5, 4) for _ in range(3)]
    for x in xs:
        assert torch.equal(unit(x, memory), x)
    assert 'value' not in dict(unit.named_children())
    unit = LayerAttention(16, dim_per_head=4, drop_path_rate=0.5, **LITE)
    torch.nn.init.normal_(unit.norm.weight)
    torch.nn.init.normal_(unit.norm.bias)
    unit.train()
    x = torch.randn(64, 16, 3, 3)
    out = unit(x, LayerAttentionMemory())
    dropped = (out == x).flatten(1).all(dim=1)
    assert 0 < int(dropped.sum()) < 64  # some samples keep the branch
    unit.eval()
    torch.testing.assert_close(
        unit(x, LayerAttentionMemory()),
        _reference_unit(unit, [x])[0])


def _train(backbone, neck, x, steps: int = 3) -> None:
    """A few SGD steps of backbone + neck on a squared-output loss."""
    params = list(backbone.parameters()) + list(neck.parameters())
    opt = torch.optim.SGD(params, lr=1e-3)
    for _ in range(steps):
        loss = sum(o.pow(2).mean() for o in neck(backbone(x)))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_lite_backbone_and_neck_learn_prune_and_match_plain_at_init():
    torch.manual_seed(0)
    backbone = ELAResNet(
        depth=18,
        attn_value_conv=False,
        attn_norm_cfg=dict(type='Affine'),
        norm_eval=False)
    neck = ELAFPN([64, 128, 256, 512],
                  32,
                  num_outs=5,
                  attn_value_conv=False,
                  attn_norm_cfg=dict(type='Affine'))
    plain = ELAResNet(depth=18, norm_eval=False)
    residual = {
        k: v
        for k, v in backbone.state_dict().items() if '.attn.' not in k
    }
    plain.load_state_dict(residual, strict=False)
    x = torch.rand(2, 3, 64, 64)
    for a, b in zip(backbone(x), plain(x)):
        torch.testing.assert_close(a, b)
    assert not any('.value.' in k for k in backbone.state_dict())
    _train(backbone, neck, x)
    for model in (backbone, neck):
        for stack in attention_stacks(model).values():
            for _, unit in stack.kept_units():
                weight = unit.norm.weight
                assert weight.isfinite().all() and weight.abs().sum() > 0
    backbone.layer2.attn.prune([1])
    neck.attn.prune([2])
    assert len(neck(backbone(x))) == 5


@pytest.mark.parametrize('kwargs, key', [
    (dict(norm_cfg=dict(type='Affine', eps=1e-5)), 'attn_norm_cfg'),
    (dict(norm_cfg=dict(type='Affine', requires_grad=False)), 'attn_norm_cfg'),
    (dict(value_conv='no'), 'attn_value_conv'),
    (dict(value_stride=0), 'attn_value_stride'),
    (dict(value_stride=True), 'attn_value_stride'),
    (dict(value_stride=4), 'attn_value_stride'),
])
def test_bad_lite_options(kwargs, key):
    with pytest.raises(ValueError, match=key):
        LayerAttention(16, dim_per_head=4, **kwargs)
    with pytest.raises(ValueError, match=key):
        options = dict(
            attn_norm_cfg=kwargs.get('norm_cfg', dict(type='BN')),
            attn_value_conv=kwargs.get('value_conv', True),
            attn_value_stride=kwargs.get('value_stride', 1))
        ELAFPN([64, 128], 32, num_outs=2, **options)
    with pytest.raises(ValueError, match=key):
        ELAResNet(depth=18, **options)


def test_half_resolution_backbone_and_neck_match_plain_at_init_and_learn():
    """attn_value_stride=2: identity at init, odd pyramid sizes, a 1x1
    level (not pooled), training, pruning, and the memory at half size."""
    torch.manual_seed(0)
    backbone = ELAResNet(depth=18, attn_value_stride=2, norm_eval=False)
    neck = ELAFPN([64, 128, 256, 512],
                  32,
                  num_outs=6,
                  add_extra_convs='on_output',
                  attn_value_stride=2)
    plain = ResNet(depth=18, norm_eval=False)
    plain.load_state_dict({
        k: v
        for k, v in backbone.state_dict().items() if '.attn.' not in k
    })
    x = torch.rand(2, 3, 72, 40)  # stage 4: 3x2; levels down to 1x1
    for a, b in zip(backbone(x), plain(x)):
        torch.testing.assert_close(a, b)
    unit = backbone.layer1.attn.units['0']
    memory = LayerAttentionMemory()
    unit(torch.rand(2, 64, 18, 10), memory)
    assert memory.values[0].shape == (2, 64, 9, 5)
    _train(backbone, neck, x)
    for model in (backbone, neck):
        for stack in attention_stacks(model).values():
            for _, unit in stack.kept_units():
                assert unit.norm.weight.abs().sum() > 0
                grad = unit.value.weight.grad
                assert grad.isfinite().all() and grad.abs().sum() > 0
    backbone.layer2.attn.prune([1])
    neck.attn.prune([2])
    outs = neck(backbone(x))
    assert [o.shape[-2:] for o in outs] == [(18, 10), (9, 5), (5, 3), (3, 2),
                                            (2, 1), (1, 1)]


def test_value_stride_travels_with_the_weights(tmp_path):
    """A checkpoint records its units' value stride: loading it into a model
    of another stride is a clear error, not other maths with the same keys.
    """
    from mmengine.runner import load_checkpoint, save_checkpoint
    half = ELAResNet(depth=18, attn_value_stride=2)
    full = ELAResNet(depth=18)  # the default: stride 1
    path = str(tmp_path / 'half.pth')
    save_checkpoint(half.state_dict(), path)
    with pytest.raises(ValueError, match='attn_value_stride=2'):
        load_checkpoint(full, path, map_location='cpu')
    load_checkpoint(
        ELAResNet(depth=18, attn_value_stride=2), path, map_location='cpu')
    with pytest.raises(ValueError, match='attn_value_stride=1'):
        half.load_state_dict(full.state_dict())
    # Weights without the record (0.1 / 0.2, or renamed keys) load, with a
    # warning into stride-2 units.
    old = {k: v.clone() for k, v in full.state_dict().items()}
    with pytest.warns(UserWarning, match='attn_value_stride=1'):
        half.load_state_dict(old)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        full.load_state_dict(old)
    neck = ELAFPN([64, 128], 32, num_outs=2, attn_value_stride=2)
    with pytest.raises(ValueError, match='attn_value_stride'):
        ELAFPN([64, 128], 32, num_outs=2).load_state_dict(neck.state_dict())


def test_value_conv_mismatch_is_named(tmp_path):
    """Weights of a unit with a value convolution into one without (or the
    other way round): a clear error, also through mmengine's non-strict
    load."""
    from mmengine.runner import load_checkpoint, save_checkpoint
    full = ELAResNet(depth=18)
    lite = ELAResNet(depth=18, attn_value_conv=False)
    path = str(tmp_path / 'full.pth')
    save_checkpoint(full.state_dict(), path)
    with pytest.raises(
            ValueError, match='attn_value_conv=True.*'
            'attn_value_conv=False'):
        load_checkpoint(lite, path, map_location='cpu')
    with pytest.raises(
            ValueError, match='attn_value_conv=False.*'
            'attn_value_conv=True'):
        full.load_state_dict(lite.state_dict())
    lite.load_state_dict(
        ELAResNet(depth=18, attn_value_conv=False).state_dict())
    neck = ELAFPN([64, 128], 32, num_outs=2, attn_value_conv=False)
    with pytest.raises(ValueError, match='attn_value_conv'):
        ELAFPN([64, 128], 32, num_outs=2).load_state_dict(neck.state_dict())
