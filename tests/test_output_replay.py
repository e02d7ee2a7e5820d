"""attn_recompute_outputs: the units' outputs computed again in backward
(OutputReplay) instead of being kept for the next block."""
import gc

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mmdet_ela.analysis.memory import peak_allocated_bytes
from mmdet_ela.models import ELAResNet
from mmdet_ela.models.layers import LayerAttention, LayerAttentionMemory
from mmdet_ela.models.layers.replay import OutputReplay


def _backbone(depth: int = 18, **kwargs) -> ELAResNet:
    torch.manual_seed(1)
    # few channels: the parameters' gradients do not set the peak
    model = ELAResNet(depth=depth, base_channels=16, dim_per_head=16, **kwargs)
    for m in model.modules():
        if isinstance(m, LayerAttention):  # units that act
            torch.nn.init.normal_(m.norm.weight)
            torch.nn.init.normal_(m.norm.bias)
    return model


def _step(model, x):
    """Forward and backward; the outputs and the parameters' gradients."""
    for p in model.parameters():
        p.grad = None
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return [o.detach() for o in outs], [p.grad for p in model.parameters()]


@pytest.mark.parametrize('values', [False, True])
def test_replayed_outputs_same_gradients_lower_peak(values):
    """ELAResNet-50, values kept or made again: the outputs and gradients
    are bit for bit those of kept outputs, and the step's peak of allocated
    tensors is lower."""
    x = torch.rand(2, 3, 160, 160)
    runs = {}
    for replay in (False, True):
        model = _backbone(
            attn_recompute_values=values, attn_recompute_outputs=replay)
        outs, grads = _step(model, x)
        peak = peak_allocated_bytes(lambda: _step(model, x))
        runs[replay] = (outs, grads, peak)
    (outs_k, grads_k, peak_k), (outs_r, grads_r, peak_r) = runs[False], \
        runs[True]
    for a, b in zip(outs_r + grads_r, outs_k + grads_k):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert peak_r < 0.98 * peak_k  # 0.962 and 0.966 when written


@pytest.mark.parametrize('depth,stride,values',
                         [(50, 1, False), (50, 2, False), (18, 2, False),
                          (50, 2, True)])
def test_replayed_outputs_bottleneck_half_resolution_pruned(
        depth, stride, values):
    """Bottleneck blocks (a downsampling block after a stage), values at half
    resolution, kept or made again, a pruned unit in the middle of a stage:
    bit for bit the gradients of kept outputs."""
    x = torch.rand(2, 3, 64, 64)
    grads = {}
    for replay in (False, True):
        model = _backbone(
            depth,
            attn_value_stride=stride,
            attn_recompute_values=values,
            attn_recompute_outputs=replay)
        model.layer1.attn.prune([1])
        grads[replay] = _step(model, x)
    for a, b in zip(grads[True][0] + grads[True][1],
                    grads[False][0] + grads[False][1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class DepthwiseConvCount(TorchDispatchMode):
    """Counts the depthwise convolutions (``count``), the softmaxes and all
    ops (``ops``) dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.count = self.softmax = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default and args[-1] > 1:
            self.count += 1
        self.softmax += func is torch.ops.aten._softmax.default
        self.ops += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('values', [False, True])
def test_replay_reuses_the_units_own_value(values, monkeypatch):
    """Backward makes no more depthwise convolutions with the outputs
    computed again than without: each unit's own value comes from forward
    (kept) or from the values made again, not from its convolution again.
    The outputs are computed again: one replay per unit but each stage's
    last (12 of 16 in R-50), from the mixing weights that forward handed
    over: the attention is not computed again (no softmax in backward), and
    a replay dispatches a few ops (the weighted sum), not the unit's
    forward."""
    replays = []
    compute = OutputReplay.compute

    def counted(self):
        replays.append(self)
        return compute(self)

    monkeypatch.setattr(OutputReplay, 'compute', counted)
    x = torch.rand(1, 3, 64, 64)
    counts, ops = {}, {}
    for replay in (False, True):
        model = _backbone(
            50, attn_recompute_values=values, attn_recompute_outputs=replay)
        loss = sum(o.square().mean() for o in model(x))
        with DepthwiseConvCount() as mode:
            loss.backward()
        counts[replay] = mode.count
        ops[replay] = mode.ops
        assert mode.softmax == 0
    assert counts[True] == counts[False] > 0
    assert len(replays) == 12
    assert all(r.weights is not None for r in replays)
    # 22 more ops per replay in backward (the attention made again too: 40)
    assert ops[False] < ops[True] < ops[False] + 30 * len(replays)


def test_replay_leaves_no_cycle_and_keeps_the_recorded_attention():
    """The backward graph holds the replays; they hold nothing that holds
    the graph (reference counting frees it all), and computing an output
    again does not overwrite the attention the unit recorded in forward."""
    x = torch.rand(1, 3, 64, 64)
    cycles = {}
    for replay in (False, True):
        model = _backbone(
            attn_recompute_values=True, attn_recompute_outputs=replay)
        unit = model.layer2.attn.units['0']
        unit.recording = True
        _step(model, x)  # warm-up
        gc.collect()
        gc.disable()
        try:
            outs = model(x)
            recorded = unit.attention
            sum(o.square().mean() for o in outs).backward()
            assert unit.attention is recorded
            del outs
            cycles[replay] = gc.collect()
        finally:
            gc.enable()
    assert cycles[True] == cycles[False]


def test_replay_in_two_backward_passes():
    """backward twice over one graph (retain_graph): each pass computes the
    outputs (and the values) again for itself."""
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    grads = {}
    for replay in (False, True):
        model = _backbone(
            attn_recompute_values=True, attn_recompute_outputs=replay)
        loss = sum(o.square().mean() for o in model(x))
        first = torch.autograd.grad(loss, x, retain_graph=True)[0]
        second = torch.autograd.grad(loss, x)[0]
        torch.testing.assert_close(first, second, rtol=0, atol=0)
        grads[replay] = first
    torch.testing.assert_close(grads[True], grads[False], rtol=0, atol=0)


@pytest.mark.parametrize('changed', ['input', 'value'])
def test_replay_refuses_an_input_changed_in_place(changed):
    """The unit's input, or its own value kept from forward, changed in
    place after the unit read it: backward refuses to replay."""
    unit = LayerAttention(8, dim_per_head=4, recompute_values=False)
    torch.nn.init.normal_(unit.norm.weight)
    x = torch.rand(1, 8, 4, 4, requires_grad=True)
    h = x * 1
    memory = LayerAttentionMemory()
    replay = unit.output_replay(h, memory)
    z = unit(h, memory, replay)
    replay.bind(z, memory)
    with replay.replacing():
        y = F.conv2d(z, torch.ones(8, 8, 1, 1))  # saves z as the replay
    with torch.no_grad():  # what autograd refuses for a saved tensor
        (h if changed == 'input' else memory.values[-1]).add_(1)
    with pytest.raises(RuntimeError, match='modified in place'):
        y.sum().backward()


def test_replay_needs_the_forward_to_hand_it_the_weights():
    """A replay that the unit's forward was not given has no mixing weights:
    backward says so instead of computing a wrong output."""
    unit = LayerAttention(8, dim_per_head=4)
    h = torch.rand(1, 8, 4, 4, requires_grad=True) * 1
    memory = LayerAttentionMemory()
    replay = unit.output_replay(h, memory)
    z = unit(h, memory)
    replay.bind(z, memory)
    with replay.replacing():
        y = F.conv2d(z, torch.ones(8, 8, 1, 1))
    with pytest.raises(RuntimeError, match='without the mixing weights'):
        y.sum().backward()


def test_an_output_changed_in_place_is_saved_as_it_is():
    """A block that changes its input in place before saving it (mmdet's do
    not) saves the changed tensor itself, not a replay of the unit."""
    unit = LayerAttention(8, dim_per_head=4)
    torch.nn.init.normal_(unit.norm.weight)
    x = torch.rand(1, 8, 4, 4, requires_grad=True)
    weight = torch.rand(8, 8, 1, 1, requires_grad=True)
    grads = []
    for replay_on in (False, True):
        memory = LayerAttentionMemory()
        h = x * 1
        replay = unit.output_replay(h, memory)
        z = unit(h, memory, replay)
        replay.bind(z, memory)
        with replay.replacing() if replay_on else torch.enable_grad():
            y = F.conv2d(F.relu(z, inplace=True), weight)
        grads.append(torch.autograd.grad(y.square().sum(), [x, weight]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_units_that_cannot_replay_keep_their_output():
    """A BN output, drop path in training, no autograd: no replay."""
    x = torch.rand(2, 8, 4, 4)
    memory = LayerAttentionMemory()
    assert LayerAttention(8, dim_per_head=4).output_replay(x, memory)
    bn = LayerAttention(8, dim_per_head=4, norm_cfg=dict(type='BN'))
    assert bn.output_replay(x, memory) is None
    dropped = LayerAttention(8, dim_per_head=4, drop_path_rate=0.1)
    assert dropped.output_replay(x, memory) is None
    assert dropped.eval().output_replay(x, memory)
    with torch.no_grad():
        assert LayerAttention(
            8, dim_per_head=4).output_replay(x, memory) is None


def test_recompute_outputs_by_default_on_cuda_only():
    stage = _backbone().layer1
    x = torch.rand(1, 16, 8, 8, requires_grad=True)
    assert not stage._recomputes_outputs(x)
    stage.recompute_outputs = True
    assert stage._recomputes_outputs(x)
    assert not stage._recomputes_outputs(x.detach())


@pytest.mark.parametrize('kwargs', [
    dict(attn_recompute_outputs='yes'),
    dict(attn_recompute_outputs=1),
    dict(attn_recompute_outputs=True, attn_norm_cfg=dict(type='BN')),
])
def test_bad_recompute_outputs(kwargs):
    with pytest.raises(ValueError, match='attn_recompute_outputs'):
        ELAResNet(depth=18, **kwargs)
