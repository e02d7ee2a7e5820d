"""The same behaviour on a CUDA device (skipped where there is none)."""
import os.path as osp

import pytest
import torch
from helpers import read_json, tiny_config
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS

import mmdet_ela  # noqa: F401
from mmdet_ela.pruning import apply_masks, get_masks, record_attention

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs CUDA')


def test_cuda_equivalence_and_backward():
    torch.manual_seed(0)
    plain = ResNet(depth=50).cuda()
    plain.eval()  # mmdet's ResNet.train() returns None: do not chain
    ela = MODELS.build(dict(type='ELAResNet', depth=50))
    ela.init_weights()
    ela.load_state_dict(plain.state_dict(), strict=False)
    ela = ela.cuda().eval()
    x = torch.rand(2, 3, 128, 128, device='cuda')
    with torch.no_grad():
        for a, b in zip(plain(x), ela(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    ela.train()
    sum(o.mean() for o in ela(x)).backward()
    grad = ela.layer3.attn.units['2'].norm.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_cuda_pruned_state_dict_roundtrip():
    model = MODELS.build(dict(type='ELAResNet', depth=18)).cuda()
    model.init_weights()
    masks = get_masks(model)
    masks['layer3.attn'][1] = False
    apply_masks(model, masks)
    fresh = MODELS.build(dict(type='ELAResNet', depth=18)).cuda()
    fresh.load_state_dict(model.state_dict())
    assert get_masks(fresh) == masks
    with torch.no_grad(), record_attention(fresh):
        fresh.eval()(torch.rand(1, 3, 64, 64, device='cuda'))
        assert fresh.layer2.attn.units['1'].attention.is_cuda


def test_cuda_runner_prunes(tiny_shapes, tmp_path):
    from mmengine.runner import Runner
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=2, quantile=0.6)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert next(runner.model.parameters()).is_cuda
    record = read_json(osp.join(work, 'ela_prune', 'round_1.json'))
    assert record['num_pruned_now'] >= 1
    assert get_masks(runner.model) == record['mask']


@pytest.mark.parametrize('norm', ['Affine', 'BN'])
@pytest.mark.parametrize('value_conv', [True, False])
@pytest.mark.parametrize('value_stride', [1, 2])
def test_cuda_unit_gradients_and_autocast(norm, value_conv, value_stride):
    from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory
    torch.manual_seed(0)
    unit = LayerAttention(
        64,
        dim_per_head=16,
        norm_cfg=dict(type=norm),
        value_conv=value_conv,
        value_stride=value_stride).cuda()
    torch.nn.init.normal_(unit.norm.weight)
    torch.nn.init.normal_(unit.norm.bias)
    xs = [
        torch.randn(2, 64, 6, 5, device='cuda', requires_grad=True)
        for _ in range(3)
    ]

    def run(inputs):
        memory = LayerAttentionMemory()
        return [unit(x, memory) for x in inputs]

    double = [x.detach().double().requires_grad_(True) for x in xs]
    unit.double()
    # fast_mode: one random projection per input; the full Jacobian takes
    # minutes of kernel launches on a GPU.
    assert torch.autograd.gradcheck(
        lambda *a: tuple(run(a)), tuple(double), fast_mode=True)
    unit.float()
    with torch.autocast('cuda', dtype=torch.float16):
        outs = run([x.half() for x in xs])
    assert all(o.dtype == torch.float16 for o in outs)
    sum(o.float().mean() for o in outs).backward()
    assert all(x.grad is not None and x.grad.isfinite().all() for x in xs)
    assert unit.norm.weight.grad.isfinite().all()


@pytest.mark.parametrize('value_conv, value_stride, recompute',
                         [(True, 1, None), (False, 1, None), (True, 2, None),
                          (True, 1, False)])
def test_cuda_compiled_unit_matches_eager(value_conv, value_stride, recompute):
    """attn_compile on CUDA (Triton): outputs and gradients as eager, in
    fp32 and under autocast; the small ops compiled (values made again, the
    CUDA default) or the whole unit (values kept, or no value
    convolution)."""
    from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory
    torch.manual_seed(0)
    kwargs = dict(
        channels=64,
        dim_per_head=16,
        value_conv=value_conv,
        value_stride=value_stride)
    eager = LayerAttention(**kwargs).cuda()
    torch.nn.init.normal_(eager.norm.weight)
    torch.nn.init.normal_(eager.norm.bias)
    compiled = LayerAttention(
        compiled=True, recompute_values=recompute, **kwargs).cuda()
    compiled.load_state_dict(eager.state_dict())
    xs = [
        torch.randn(2, 64, 12, 10, device='cuda', requires_grad=True)
        for _ in range(3)
    ]

    def run(unit):
        memory = LayerAttentionMemory()
        outs = [unit(x, memory) for x in xs]
        grads = torch.autograd.grad(
            sum(o.float().square().mean() for o in outs),
            xs + list(unit.parameters()))
        return outs + list(grads)

    for a, b in zip(run(eager), run(compiled)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    with torch.autocast('cuda', dtype=torch.float16):
        for a, b in zip(run(eager), run(compiled)):
            assert a.dtype == b.dtype
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('autocast', [False, True])
def test_cuda_recomputed_values_match_kept(autocast):
    """On CUDA the units make their values again in backward by default:
    same outputs and gradients as keeping them, in fp32 and under
    autocast (the recomputed convolution in the forward's dtype)."""
    from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory
    torch.manual_seed(0)
    units = [LayerAttention(64, dim_per_head=16).cuda() for _ in range(3)]
    for unit in units:
        torch.nn.init.normal_(unit.norm.weight)
        torch.nn.init.normal_(unit.norm.bias)
    x = torch.randn(2, 64, 12, 10, device='cuda', requires_grad=True)
    params = [p for u in units for p in u.parameters()]

    def run(recompute):
        for unit in units:
            unit.recompute_values = recompute
        memory = LayerAttentionMemory(chained=True)
        with torch.autocast('cuda', dtype=torch.float16, enabled=autocast):
            h = x
            for unit in units:
                assert unit._recomputes_values(h, memory) is (recompute
                                                              is not False)
                h = unit(torch.tanh(h), memory)
        grads = torch.autograd.grad(h.float().square().mean(), [x] + params)
        assert not memory.recomputed._passes
        return [h] + list(grads)

    kept = run(False)
    for recompute in (None, True):
        for a, b in zip(run(recompute), kept):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize('autocast', [False, True])
def test_cuda_replayed_outputs_match_kept(autocast):
    """On CUDA the backbone computes its units' outputs (and values) again
    in backward by default: the same outputs and gradients as keeping them,
    in fp32 and under autocast (the replay in the forward's dtype)."""
    from mmdet_ela.models import ELAResNet
    from mmdet_ela.models.layers import LayerAttention
    x = torch.rand(2, 3, 96, 96, device='cuda')

    def run(recompute):
        torch.manual_seed(0)
        model = ELAResNet(
            depth=50,
            base_channels=16,
            dim_per_head=16,
            attn_recompute_values=recompute,
            attn_recompute_outputs=recompute).cuda()
        for m in model.modules():
            if isinstance(m, LayerAttention):
                torch.nn.init.normal_(m.norm.weight)
        probe = torch.ones(1, device='cuda', requires_grad=True)
        assert model.layer1._recomputes_outputs(probe) is (recompute
                                                           is not False)
        with torch.autocast('cuda', dtype=torch.float16, enabled=autocast):
            outs = model(x)
        loss = sum(o.float().square().mean() for o in outs)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return list(outs) + list(grads)

    kept = run(False)
    for recompute in (None, True):
        for a, b in zip(run(recompute), kept):
            torch.testing.assert_close(a, b)


def test_cuda_kernel_time_sees_the_device():
    """The profiler's device events: busy time within the wall time, the
    extra kernels of a longer call."""
    from mmdet_ela.analysis.kernel_time import kernel_deltas, kernel_times
    a = torch.randn(1024, 1024, device='cuda')
    times = kernel_times(
        dict(plain=lambda: a @ a, dense=lambda: (a @ a @ a).relu()), 2,
        torch.device('cuda'))
    for t in times.values():
        assert 0 < t['busy_ms'] <= t['wall_ms'] and t['kernel_calls'] >= 1
    assert times['dense']['busy_ms'] > times['plain']['busy_ms']
    assert times['dense']['kernel_calls'] > times['plain']['kernel_calls']
    assert kernel_deltas(times, 'dense')[0]['extra_ms'] > 0
