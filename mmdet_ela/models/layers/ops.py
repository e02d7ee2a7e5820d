"""Autograd functions of the layer-attention unit (same maths as plain
PyTorch ops, fewer passes over [N, C, H, W] tensors).

The unit is memory-bound: its cost is the number of times it reads and writes
full-size feature maps, forward and backward. The functions here remove passes
that autograd's generic derivatives would make. Each has a test that compares
its gradients with autograd's through plain ops.
"""
import math
from collections import defaultdict
from typing import Dict, List, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def _depthwise_input_grad(grad: Tensor, weight: Tensor, stride: tuple,
                          padding: tuple, dilation: tuple,
                          channels: int) -> Optional[Tensor]:
    """The input gradient of a depthwise convolution of stride 1 that keeps
    the size (padding k // 2, odd k, one output channel per input channel),
    as a forward convolution of ``grad`` with the kernel flipped; None for
    other convolutions.

    Same maths as ``convolution_backward``'s input gradient; on CPU (oneDNN,
    NCHW) the forward convolution is faster: e.g. [4, 256, 56, 56] 2.7-3.4
    vs 3.3-3.8 ms, [4, 2048, 7, 7] 0.4-0.6 vs 0.8 ms (2 threads; two probes
    by hand).

    Args:
        grad (Tensor): [N, C, H, W].
        weight (Tensor): [C, 1, k, k].
        channels (int): the input's channels (C for a depthwise convolution
            without a channel multiplier).
    """
    k = weight.shape[-1]
    if (tuple(stride) != (1, 1) or tuple(dilation) != (1, 1)
            or weight.shape[-2] != k or k % 2 == 0
            or tuple(padding) != (k // 2, k // 2)
            or weight.shape[0] != channels):
        return None
    with torch.autocast(grad.device.type, enabled=False):  # grad's dtype
        return F.conv2d(grad, weight.flip(-2, -1), None, 1, padding, 1,
                        channels)


class DepthwiseConvSplitBackward(torch.autograd.Function):
    """A depthwise convolution whose backward asks for each gradient
    separately.

    Same maths as ``F.conv2d(x, weight, None, stride, padding, dilation, C)``.
    On CPU, ``convolution_backward`` of a depthwise convolution is about twice
    as slow when asked for the input and the weight gradients in one call as
    when asked for each in its own call (PyTorch 2.x, oneDNN; e.g. [4, 256, 56,
    56], 3x3: 17 ms vs 4 + 4 ms on one core). Used only for CPU tensors that
    need gradients.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple, padding: tuple,
                dilation: tuple) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv_args = (stride, padding, dilation)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv_args
        # Under autocast the forward ran in grad's dtype: backward does too.
        weight_cast = weight.to(grad.dtype)
        args = (grad, x.to(grad.dtype), weight_cast, None, list(stride),
                list(padding), list(dilation), False, [0, 0], x.shape[1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _depthwise_input_grad(grad, weight_cast, stride, padding,
                                           dilation, x.shape[1])
            if grad_x is None:
                grad_x = torch.ops.aten.convolution_backward(
                    *args, [True, False, False])[0]
            grad_x = grad_x.to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                *args, [False, True, False])[1].to(weight.dtype)
        return grad_x, grad_w, None, None, None


def summed_products(grad: Tensor, values: List[Tensor],
                    dims: tuple) -> List[Tensor]:
    """``[(grad * v).sum(dims) for v in values]``, the products in one buffer.

    On CPU, a fresh full-size temporary per value is handed back to the
    system by the C allocator and faulted in again, page by page; one shared
    buffer avoids that. Same results as the plain expression.

    Args:
        grad (Tensor): e.g. [N, C, H, W].
        values (list[Tensor]): tensors of ``grad``'s shape.
        dims (tuple[int]): the dimensions summed.

    Returns:
        list[Tensor]: one sum per value.
    """
    product = torch.empty_like(grad, dtype=torch.result_type(grad, values[0]))
    return [torch.mul(grad, v, out=product).sum(dim=dims) for v in values]


def query_key(y: Tensor, weights: Tensor, dim_per_head: int) -> tuple:
    """Query and key from GAP ``y`` by one ``conv1d`` with two output
    channels (one op forward and backward, not two).

    Args:
        y (Tensor): [N, C].
        weights (Tensor): the query's and the key's kernels, [2, 1, k].
        dim_per_head (int): d.

    Returns:
        tuple: query and key, each [N, G, d] with G = C // d.
    """
    n, c = y.shape
    pad = weights.shape[-1] // 2
    query, key = F.conv1d(y.unsqueeze(1), weights, padding=pad).unbind(1)
    shape = (n, c // dim_per_head, dim_per_head)
    return query.reshape(shape), key.reshape(shape)


def attention(query: Tensor, keys: List[Tensor]) -> Tensor:
    """``A = softmax_s(<q, k_s> / sqrt(d))`` per head.

    Args:
        query (Tensor): [N, G, d].
        keys (list[Tensor]): S keys [N, G, d], in memory order (the unit's
            own last).

    Returns:
        Tensor: A, [N, G, S]. The dot products are a product and a sum (3
        ops forward; einsum dispatches 13, views around one batched matmul,
        and on a GPU each op costs a launch).
    """
    all_keys = torch.stack(keys, dim=2)  # [N, G, S, d]
    logits = (all_keys * query.unsqueeze(2)).sum(dim=-1)  # [N, G, S]
    return (logits / math.sqrt(query.shape[-1])).softmax(dim=-1)


def channel_weights(attn: Tensor, gamma: Tensor) -> Tensor:
    """Each head's weights for its d channels, times the affine's gamma.

    Args:
        attn (Tensor): [N, G, S].
        gamma (Tensor): [C], C = G * d.

    Returns:
        Tensor: [N, C, S], one broadcast product ([N, G, d, S] viewed).
    """
    n, g, s = attn.shape
    return (attn.unsqueeze(2) * gamma.view(g, -1, 1)).view(n, -1, s)


def mix_values(attn: Tensor, values: List[Tensor]) -> Tensor:
    """``out = sum_s attn[:, :, s] * values[s]`` per head, accumulated in
    place.

    Args:
        attn (Tensor): [N, G, S], the attention weights.
        values (list[Tensor]): S tensors [N, C, H, W] (C = G * d), in memory
        order.

    Returns:
        Tensor: [N, C, H, W].

    The values are viewed per head as [N, G, d, H, W] (a view in any memory
    format, no copy) and the weights broadcast as [N, G, 1, 1, 1]: nothing is
    stacked or copied, and time grows with S only through one multiply-add per
    value.
    """
    n, g, _ = attn.shape
    d = values[-1].shape[1] // g
    weights = attn.view(n, g, -1, 1, 1, 1)  # [N, G, S, 1, 1, 1]
    out = values[-1].unflatten(1, (g, d)) * weights[:, :, -1]
    for s, v in enumerate(values[:-1]):
        out.addcmul_(v.unflatten(1, (g, d)), weights[:, :, s])
    return out.flatten(1, 2)


class WeightedSumOverMemory(torch.autograd.Function):
    """:func:`mix_values` with a hand-written backward (same maths, fewer
    passes).

    PyTorch's derivative of ``addcmul`` first multiplies the full [N, C, H, W]
    value by the scalar ``value`` (1), i.e. three full-size products per stored
    value. Here there are two: ``grad_v_s = grad * a_s`` and ``grad_a_s =
    sum(grad * v_s)`` over (d, H, W). The gradients equal autograd's through
    :func:`mix_values` (bitwise in our CPU checks). Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, attn: Tensor, *values: Tensor) -> Tensor:
        ctx.save_for_backward(attn, *values)
        return mix_values(attn, list(values))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        attn, *values = ctx.saved_tensors
        n, g, _ = attn.shape
        d = values[-1].shape[1] // g
        grad = grad.unflatten(1, (g, d))  # [N, G, d, H, W]
        weights = attn.view(n, g, -1, 1, 1, 1)
        grad_attn = None
        if ctx.needs_input_grad[0]:
            heads = [v.unflatten(1, (g, d)) for v in values]
            grad_attn = torch.stack(
                summed_products(grad, heads, (2, 3, 4)), dim=-1)  # [N, G, S]
        grad_values = [(grad * weights[:, :, s]).flatten(1, 2)
                       if ctx.needs_input_grad[s + 1] else None
                       for s in range(len(values))]
        return (grad_attn, *grad_values)


def affine_mix(coef: Tensor,
               bias: Tensor,
               values: List[Tensor],
               x: Optional[Tensor] = None) -> Tensor:
    """``out = bias + sum_s coef[:, :, s] * values[s] (+ x)``, plain ops.

    Args:
        coef (Tensor): [N, C, S], one weight per sample, channel and value.
        bias (Tensor): [B, C] with B = 1 or N.
        values (list[Tensor]): S tensors [N, C, H, W].
        x (Tensor, optional): [N, C, H, W], added as is. Default: None.

    Returns:
        Tensor: [N, C, H, W]. One pass per value and one for the bias: the
        first product is written over ``x`` (or alone), the others and the
        bias are accumulated in place. (``addcmul`` over the broadcast bias
        is more than twice as slow on CPU as over a full-size ``x``.)
    """
    weights = coef[..., None, None]  # [N, C, S, 1, 1]: one select per value
    last = weights[:, :, -1]
    out = values[-1] * last if x is None else torch.addcmul(
        x, values[-1], last)
    for s, v in enumerate(values[:-1]):
        out.addcmul_(v, weights[:, :, s])
    return out.add_(bias[..., None, None])


class ValueGradients:
    """Gradients of a chain's stored values, summed in place by the units
    that read them.

    In a chain (the units of one ResNet stage), the output of unit s feeds
    the blocks before every later unit, so autograd runs the backward of
    every later unit t > s before that of unit s. A later unit adds its
    share ``grad_t * coef_t[s]`` to value s's sum in place (one pass, no new
    tensor); unit s adds its own share last and hands the whole sum to
    autograd. Without it, every share is a fresh full-size tensor that
    autograd then adds to the others: one more pass and one more allocation
    per stored value and later unit. Not for a memory whose units do not
    feed each other (the neck's levels).
    """

    def __init__(self) -> None:
        # backward pass (graph task id) -> value index -> running sum; and
        # the indices already handed over in that pass
        self._sums: Dict[int, Dict[int, Tensor]] = {}
        self._taken: Dict[int, set] = {}

    def _pass(self) -> tuple:
        """The sums and handed-over indices of the running backward pass.
        Each pass has its own (``backward`` again with ``retain_graph``, or
        ``torch.autograd.grad`` run from a hook inside another pass): no
        share is counted twice or lost."""
        task = torch._C._current_graph_task_id()
        return self._sums.setdefault(task,
                                     {}), self._taken.setdefault(task, set())

    def add(self, index: int, grad: Tensor, weight: Tensor) -> None:
        """Add ``grad * weight`` (e.g. [N, C, H, W] times [N, C, 1, 1]) to
        value ``index``'s sum."""
        sums, taken = self._pass()
        if index in taken:
            raise RuntimeError(
                f'ELA: a share of value {index}\'s gradient arrived after its '
                'own unit handed the sum on: the units of this memory do '
                'not feed each other; build it with chained=False')
        total = sums.get(index)
        if total is None:
            sums[index] = grad * weight
        else:
            total.addcmul_(grad, weight)

    def take(self, index: int, grad: Tensor, weight: Tensor) -> Tensor:
        """Value ``index``'s sum plus ``grad * weight``; the sum is handed
        over (and forgotten here)."""
        sums, taken = self._pass()
        taken.add(index)
        total = sums.pop(index, None)
        return grad * weight if total is None else total.addcmul_(grad, weight)


def resize_values(values: List[Tensor], size: tuple) -> List[Tensor]:
    """The memory's values at ``size`` (H, W), nearest; each [N, C, H, W].

    Values of a pyramid's coarser levels are resized; the others are
    returned as they are.
    """
    return [
        v if v.shape[-2:] == size else F.interpolate(
            v, size=size, mode='nearest') for v in values
    ]


class ValueRecipe(NamedTuple):
    """How a unit computed its value V = dwconv(X), so that backward can
    compute it again instead of keeping it from forward.

    Attributes:
        x (Tensor): the block output X, [N, C, H, W] (kept anyway: the
            convolution's weight gradient and the block's ReLU need it).
        weight (Tensor): the depthwise kernel, [C, 1, k, k].
        stride, padding, dilation (tuple): the convolution's.
        dtype (torch.dtype): the value's dtype (under autocast, the
            convolution's).
        version (int): ``x``'s version counter when V was made.
    """
    x: Tensor
    weight: Tensor
    stride: tuple
    padding: tuple
    dilation: tuple
    dtype: torch.dtype
    version: int

    def compute(self) -> Tensor:
        """V again, [N, C, h, w]: the forward's convolution, in its dtype.

        Raises:
            RuntimeError: ``x`` was modified in place since (as autograd
                refuses a saved tensor that was).
        """
        if self.x._version != self.version:
            raise RuntimeError(
                'ELA: a block output was modified in place after its unit '
                'stored a value made from it, so backward cannot make the '
                'value again; do not modify it in place, or build the model '
                'with attn_recompute_values=False')
        with torch.no_grad(), torch.autocast(
                self.x.device.type, enabled=False):
            return F.conv2d(
                self.x.to(self.dtype), self.weight.to(self.dtype), None,
                self.stride, self.padding, self.dilation, self.x.shape[1])


class RecomputedValues:
    """The values of one memory, computed again in backward from their
    :class:`ValueRecipe` instead of being kept from forward to backward.

    Each value is computed once per backward pass and kept only until the
    last unit that read it in forward has taken it: for a ResNet stage this
    frees one full-size tensor per unit between forward and backward, for
    one more depthwise convolution per unit in backward.
    """

    def __init__(self) -> None:
        self.recipes: List[Optional[ValueRecipe]] = []
        # value index -> units that read it in forward (with a backward)
        self._readers: Dict[int, int] = defaultdict(int)
        # backward pass (graph task id) -> value index -> [value, taken]
        self._passes: Dict[int, Dict[int, list]] = {}

    def append(self, recipe: Optional[ValueRecipe]) -> None:
        """Record how the next value was made (None: it cannot be made
        again, and readers keep it)."""
        self.recipes.append(recipe)

    def covers(self, count: int) -> bool:
        """Whether the first ``count`` values can all be made again."""
        return all(r is not None for r in self.recipes[:count])

    def read(self, count: int) -> None:
        """A unit read values 0 ... count - 1 in forward (the last may be
        its own, recorded after this call)."""
        for index in range(count):
            self._readers[index] += 1

    def get(self, index: int, size: torch.Size) -> Tensor:
        """Value ``index`` at ``size`` (H, W) (:func:`resize_values`), for
        one reader in the running backward pass."""
        task = torch._C._current_graph_task_id()
        cache = self._passes.setdefault(task, {})
        entry = cache.get(index)
        if entry is None:
            entry = cache[index] = [self.recipes[index].compute(), 0]
        entry[1] += 1
        if entry[1] >= self._readers[index]:  # its last reader
            del cache[index]
            if not cache:
                del self._passes[task]
        return resize_values([entry[0]], size)[0]


class AffineMix(torch.autograd.Function):
    """:func:`affine_mix` with a hand-written backward.

    Backward makes one pass per value for its gradient (``grad * coef_s``),
    one product and sum per value for the weight gradient (in one buffer,
    :func:`summed_products`), one read for the bias gradient, and passes
    ``grad`` on to ``x`` without a copy. With ``value_grads`` (a chain), the
    gradients of the earlier values are summed in place there
    (:class:`ValueGradients`): this unit returns only its own value's, with
    the later units' shares in it. With ``recomputed``
    (:class:`RecomputedValues`), the values are not kept for backward but
    made again there. Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, coef, bias, x, value_grads, recomputed, *values):
        """``coef`` [N, C, S], ``bias`` [B, C], ``x`` [N, C, H, W] or None,
        ``value_grads`` (:class:`ValueGradients` or None), ``recomputed``
        (:class:`RecomputedValues` or None), S ``values`` [N, C, H, W]
        (value s is memory entry s) -> [N, C, H, W]."""
        if recomputed is None:
            ctx.save_for_backward(coef, *values)
        else:
            ctx.save_for_backward(coef)
            recomputed.read(len(values))
            ctx.num_values = len(values)
            ctx.size = values[-1].shape[-2:]
        ctx.recomputed = recomputed
        ctx.bias_rows = bias.shape[0]
        ctx.bias_dtype = bias.dtype
        ctx.value_grads = value_grads
        return affine_mix(coef, bias, list(values), x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple:
        coef, *values = ctx.saved_tensors
        if ctx.recomputed is not None:
            values = [
                ctx.recomputed.get(s, ctx.size) for s in range(ctx.num_values)
            ]
        need = ctx.needs_input_grad
        grad_coef = grad_bias = grad_x = None
        if need[0]:
            sums = summed_products(grad, values, (2, 3))
            grad_coef = torch.stack(sums, dim=-1).to(coef.dtype)  # [N, C, S]
        if need[1]:
            acc = torch.promote_types(grad.dtype, torch.float32)
            dims = (0, 2, 3) if ctx.bias_rows == 1 else (2, 3)
            grad_bias = grad.sum(
                dim=dims, dtype=acc).view(ctx.bias_rows, -1).to(ctx.bias_dtype)
        if need[2]:
            grad_x = grad
        chain, last = ctx.value_grads, len(values) - 1
        grad_values = []
        weights = coef[..., None, None]  # [N, C, S, 1, 1]
        for s in range(len(values)):
            weight = weights[:, :, s]
            if not need[s + 5]:
                grad_values.append(None)
            elif chain is None:
                grad_values.append(grad * weight)
            elif s < last:  # summed in place, handed over by unit s
                chain.add(s, grad, weight)
                grad_values.append(None)
            else:
                grad_values.append(chain.take(s, grad, weight))
        return (grad_coef, grad_bias, grad_x, None, None, *grad_values)
