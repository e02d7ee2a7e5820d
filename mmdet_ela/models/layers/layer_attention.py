"""The layer-attention unit and its memory, shared by backbone and neck.

A unit sits after one block (or one pyramid level) of a sequence. It turns the
block output ``x`` of shape [N, C, H, W] into a query, a key and a value,
stores the key and value in the sequence's :class:`LayerAttentionMemory`, and
retrieves a softmax mixture of every value in the memory (its own included).
See ``docs/method.md``.
"""
import math
from numbers import Real
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, constant_init
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm


def eca_kernel_size(channels: int) -> int:
    """ECA's kernel size: the odd number nearest above |(log2 C + 1) / 2|."""
    k = int(abs((math.log2(channels) + 1) / 2))
    return k if k % 2 == 1 else k + 1


def build_attention_norm(norm_cfg: dict, channels: int) -> tuple:
    """Build the output norm of a unit; a config that does not build is a
    ``ValueError`` naming ``attn_norm_cfg`` (mmcv raises bare asserts).

    Returns:
        tuple: ``(name, module)`` as from :func:`mmcv.cnn.build_norm_layer`.
    """
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise ValueError(f'attn_norm_cfg={norm_cfg!r} must be a dict with a '
                         "'type' key, e.g. dict(type='BN')")
    try:
        return build_norm_layer(norm_cfg, channels)
    except (AssertionError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f'attn_norm_cfg={norm_cfg!r} does not build a norm layer for '
            f'{channels} channels ({type(err).__name__}: {err}). Use e.g. '
            "dict(type='BN'), dict(type='SyncBN') or dict(type='GN', "
            f'num_groups=G) with G dividing {channels}') from err


def check_drop_path_rate(owner: str, rate) -> None:
    """A ``ValueError`` naming ``owner`` unless ``rate`` is a number in
    [0, 1)."""
    if (isinstance(rate, bool) or not isinstance(rate, Real)
            or not 0.0 <= rate < 1.0):
        raise ValueError(f'{owner}: drop_path_rate={rate!r} must be a number '
                         'in [0, 1)')


def attention_norm_cfg(norm_cfg: Optional[dict]) -> dict:
    """The default output norm: the same kind as ``norm_cfg``, trainable.

    A copy of ``norm_cfg`` (so SyncBN stays SyncBN and GN keeps its
    ``num_groups``) with ``requires_grad=True``; BN when ``norm_cfg`` is None.
    """
    cfg = dict(type='BN') if norm_cfg is None else dict(norm_cfg)
    cfg['requires_grad'] = True
    return cfg


class LayerAttentionMemory:
    """Keys and values of the units that already ran in one sequence.

    A fresh memory is made at the first block of every stage (and for every
    neck pass).

    Attributes:
        keys (list[Tensor]): each [N, G, d].
        values (list[Tensor]): each [N, C, H_s, W_s]; sizes may differ along a
        pyramid.
    """

    def __init__(self) -> None:
        self.keys: List[Tensor] = []
        self.values: List[Tensor] = []

    def append(self, key: Tensor, value: Tensor) -> None:
        self.keys.append(key)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.keys)


class _DepthwiseConvSplitBackward(torch.autograd.Function):
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
        args = (grad, x.to(grad.dtype), weight.to(grad.dtype), None,
                list(stride), list(padding), list(dilation), False, [0, 0],
                x.shape[1])
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                *args, [True, False, False])[0].to(x.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                *args, [False, True, False])[1].to(weight.dtype)
        return grad_x, grad_w, None, None, None


def _mix(attn: Tensor, values: List[Tensor]) -> Tensor:
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


class _WeightedSumOverMemory(torch.autograd.Function):
    """:func:`_mix` with a hand-written backward (same maths, fewer passes).

    PyTorch's derivative of ``addcmul`` first multiplies the full [N, C, H, W]
    value by the scalar ``value`` (1), i.e. three full-size products per stored
    value. Here there are two: ``grad_v_s = grad * a_s`` and ``grad_a_s =
    sum(grad * v_s)`` over (d, H, W). The gradients equal autograd's through
    :func:`_mix` (bitwise in our CPU checks). Not twice differentiable.
    """

    @staticmethod
    def forward(ctx, attn: Tensor, *values: Tensor) -> Tensor:
        ctx.save_for_backward(attn, *values)
        return _mix(attn, list(values))

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
            grad_attn = torch.stack(
                [(grad * v.unflatten(1, (g, d))).sum(dim=(2, 3, 4))
                 for v in values],
                dim=-1)  # [N, G, S]
        grad_values = [(grad * weights[:, :, s]).flatten(1, 2)
                       if ctx.needs_input_grad[s + 1] else None
                       for s in range(len(values))]
        return (grad_attn, *grad_values)


class LayerAttention(BaseModule):
    """One layer-attention unit: Z = X + DropPath(BN(sum_s A[s] * V_s)).

    ``A = softmax_s(<q, k_s> / sqrt(d))`` per head, over the keys in the
    memory. The output norm starts with weight 0 and bias 0 (at construction
    and again in :meth:`init_weights`), so a fresh unit is the identity.

    With a batch norm in training mode and a single value per channel (batch 1
    and a 1x1 map, e.g. P7 of a small image), batch statistics do not exist:
    the unit then normalises with the running statistics, so it runs wherever
    mmdet's ResNet and FPN run.

    Args:
        channels (int): C, the channels of the block output.
        dim_per_head (int): d; C must be divisible by it. G = C // d heads.
            Default: 32.
        norm_cfg (dict): config of the output norm (trainable).
            Default: ``dict(type='BN', requires_grad=True)``.
        drop_path_rate (float): stochastic depth on the attention branch.
            Default: 0.
        with_cp (bool): recompute the unit in backward to save memory.
            Default: False.
        init_cfg (dict, optional): mmengine init config. Default: None.

    Example:
        >>> import torch
        >>> unit = LayerAttention(64, dim_per_head=16)
        >>> memory = LayerAttentionMemory()
        >>> x = torch.rand(2, 64, 8, 8)
        >>> z = unit(x, memory)  # the identity at init
        >>> tuple(z.shape), bool((z == x).all()), len(memory)
        ((2, 64, 8, 8), True, 1)
    """

    def __init__(self,
                 channels: int,
                 dim_per_head: int = 32,
                 norm_cfg: dict = dict(type='BN', requires_grad=True),
                 drop_path_rate: float = 0.0,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        if (isinstance(dim_per_head, bool)
                or not isinstance(dim_per_head, int) or dim_per_head <= 0
                or channels % dim_per_head != 0):
            raise ValueError(
                f'dim_per_head={dim_per_head} must be a positive divisor of '
                f'the attention channels ({channels})')
        self.channels = channels
        self.dim_per_head = dim_per_head
        self.num_heads = channels // dim_per_head
        self.with_cp = with_cp
        k = eca_kernel_size(channels)
        self.query = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.key = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.value = nn.Conv2d(
            channels, channels, 3, padding=1, groups=channels, bias=False)
        self.norm_name, norm = build_attention_norm(norm_cfg, channels)
        self.add_module(self.norm_name, norm)
        constant_init(self.norm, 0)  # the identity from construction on
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 \
            else nn.Identity()
        # Recording of the attention distribution for redundancy scoring.
        self.recording = False
        self.attention: Optional[Tensor] = None

    @property
    def norm(self) -> nn.Module:
        return getattr(self, self.norm_name)

    def extra_repr(self) -> str:
        return (f'channels={self.channels}, num_heads={self.num_heads}, '
                f'dim_per_head={self.dim_per_head}')

    def init_weights(self) -> None:
        """Run the configured init, then zero the output norm (identity)."""
        super().init_weights()
        constant_init(self.norm, 0)

    def forward(self, x: Tensor, memory: LayerAttentionMemory) -> Tensor:
        """Attend over ``memory`` plus this unit, then append this unit to it.

        Args:
            x (Tensor): block output X_b, [N, C, H, W].
            memory (LayerAttentionMemory): the earlier units of the sequence.

        Returns:
            Tensor: Z_b, [N, C, H, W].
        """
        if self.with_cp and x.requires_grad:
            # Non-reentrant checkpoint; pass copies of the memory lists, which
            # grow after this call and must look the same at recomputation.
            z, key, value = cp.checkpoint(
                self._attend,
                x,
                list(memory.keys),
                list(memory.values),
                use_reentrant=False)
        else:
            z, key, value = self._attend(x, memory.keys, memory.values)
        memory.append(key, value)
        return z

    def _value(self, x: Tensor) -> Tensor:
        """v = dwconv3x3(x), [N, C, H, W].

        See :class:`_DepthwiseConvSplitBackward`.
        """
        conv = self.value
        if (x.device.type == 'cpu' and torch.is_grad_enabled()
                and (x.requires_grad or conv.weight.requires_grad)
                and not torch.jit.is_tracing()):
            return _DepthwiseConvSplitBackward.apply(x, conv.weight,
                                                     conv.stride, conv.padding,
                                                     conv.dilation)
        return conv(x)

    def _attend(self, x: Tensor, keys: List[Tensor],
                values: List[Tensor]) -> tuple:
        n, c, h, w = x.shape
        g, d = self.num_heads, self.dim_per_head
        # GAP as sum / (H W): same values as mean, but its backward is a
        # broadcast view, not a materialised [N, C, H, W] tensor.
        y = (x.sum(dim=(2, 3)) / (h * w)).unsqueeze(1)  # [N, 1, C]
        query = self.query(y).view(n, g, d)
        key = self.key(y).view(n, g, d)
        value = self._value(x)  # [N, C, H, W]

        all_keys = torch.stack(list(keys) + [key], dim=2)  # [N, G, S, d]
        logits = torch.einsum('ngd,ngsd->ngs', query, all_keys)
        attn = (logits / math.sqrt(d)).softmax(dim=-1)  # [N, G, S]
        if self.recording:
            self.attention = attn.detach()

        # Under autocast softmax runs in fp32: mix in the values' dtype so the
        # attention branch does not keep fp32 activations.
        attn = attn.to(value.dtype)
        # Weighted sum of the values, without stacking them (see _mix).
        values = [
            v if v.shape[-2:] == (h, w) else F.interpolate(
                v, size=(h, w), mode='nearest') for v in values
        ] + [value]
        if (torch.is_grad_enabled() and not torch.jit.is_tracing()
                and (attn.requires_grad or any(v.requires_grad
                                               for v in values))):
            out = _WeightedSumOverMemory.apply(attn, *values)
        else:  # inference, and FLOP counting by tracing: plain ops
            out = _mix(attn, values)  # [N, C, H, W]
        return x + self.drop_path(self._normalize(out)), key, value

    def _normalize(self, out: Tensor) -> Tensor:
        """The output norm of ``out`` ([N, C, H, W]).

        A training-mode batch norm cannot compute statistics from one value
        per channel (N = H = W = 1): use the running statistics then. SyncBN
        is left alone: it gathers statistics across processes, and skipping
        its collective on one rank only would hang the others.
        """
        norm = self.norm
        if (self.training and out.numel() == out.shape[1]
                and isinstance(norm, _BatchNorm)
                and not isinstance(norm, nn.SyncBatchNorm)
                and norm.running_mean is not None):
            return F.batch_norm(out, norm.running_mean, norm.running_var,
                                norm.weight, norm.bias, False, 0.0, norm.eps)
        return norm(out)
