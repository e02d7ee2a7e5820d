"""FLOPs of a forward pass by mmengine's ``FlopAnalyzer``, attention included.

mmengine counts one multiply-add as one FLOP and has handles for convolutions,
matmul / einsum, batch norm, upsampling and a few more. The layer-attention
unit's own arithmetic is mostly element-wise (softmax, the weighted sum of
values, the GAP), which mmengine leaves out; :func:`extra_flop_handles` counts
those too, so pruned and dense models differ by what the units really cost.
ReLU and data movement (cat, stack, views, copies) count 0, as in mmengine.
"""
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    'EXTRA_FLOP_OPS', 'ZERO_FLOP_OPS', 'SOFTMAX_FLOPS_PER_ELEMENT',
    'FLOP_CONVENTION', 'extra_flop_handles', 'count_flops'
]

#: Element-wise ops counted at one FLOP per output element (``mean`` and
#: ``sum``: per input element; ``softmax``: see below). An ``addcmul`` is one
#: multiply-add, hence one FLOP.
EXTRA_FLOP_OPS = ('aten::softmax', 'aten::mul', 'aten::mul_', 'aten::add',
                  'aten::add_', 'aten::sub', 'aten::div', 'aten::div_',
                  'aten::addcmul', 'aten::addcmul_', 'aten::mean', 'aten::sum')
#: Views: no arithmetic, and not reported as uncounted either.
ZERO_FLOP_OPS = ('aten::unflatten', 'aten::expand_as', 'aten::view_as')
#: max, subtract, exp, sum and divide per element.
SOFTMAX_FLOPS_PER_ELEMENT = 5
FLOP_CONVENTION = ('one multiply-add = 1 FLOP (mmengine FlopAnalyzer); ReLU '
                   'and data movement (cat, stack, views, copies) count 0')


def _elementwise(input_scale: float = 0.0,
                 output_scale: float = 0.0) -> Callable:
    from mmengine.analysis.jit_handles import elementwise_flop_counter
    return elementwise_flop_counter(input_scale, output_scale)


def extra_flop_handles() -> Dict[str, Optional[Callable]]:
    """Handles for :data:`EXTRA_FLOP_OPS` and :data:`ZERO_FLOP_OPS`."""
    handles: Dict[str, Optional[Callable]] = {
        op: _elementwise(output_scale=1)
        for op in EXTRA_FLOP_OPS
    }
    handles['aten::softmax'] = _elementwise(
        output_scale=SOFTMAX_FLOPS_PER_ELEMENT)
    handles['aten::mean'] = _elementwise(input_scale=1)
    handles['aten::sum'] = _elementwise(input_scale=1)
    for op in ZERO_FLOP_OPS:
        handles[op] = None
    return handles


class _Traced(nn.Module):
    """``forward(inputs) = fn(model, inputs)``, for the jit tracer."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Tensor],
                                                      Any]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, inputs: Tensor) -> Any:
        return self.fn(self.model, inputs)


def count_flops(
    model: nn.Module,
    inputs: Tensor,
    forward: Optional[Callable[[nn.Module, Tensor], Any]] = None
) -> Tuple[int, Dict[str, int]]:
    """FLOPs of one eval-mode forward pass, and the ops that were not counted.

    Args:
        model (nn.Module): the network; put back in its training mode after.
        inputs (Tensor): its input, e.g. images [N, 3, H, W] (N = 1 gives
            FLOPs per image).
        forward (Callable, optional): ``forward(model, inputs)`` when the
            network is not called as ``model(inputs)`` (e.g. a detector's
            ``mode='tensor'`` forward). Default: None.

    Returns:
        tuple[int, dict[str, int]]: total FLOPs, and ``{op: calls}`` of the
        ops that nothing counted.
    """
    from mmengine.analysis import FlopAnalyzer
    traced = _Traced(model, forward or (lambda m, x: m(x)))
    was_training = model.training
    model.eval()
    try:
        analyzer = FlopAnalyzer(traced, (inputs, ))
        analyzer.set_op_handle(**extra_flop_handles())
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        with torch.no_grad():
            total = int(analyzer.total())
        unsupported = dict(analyzer.unsupported_ops())
    finally:
        model.train(was_training)
    return total, unsupported
