"""The affine unit's attention and output as one ``torch.compile`` region.

``attn_compile=True`` on :class:`ELAResNet` / :class:`ELAFPN` runs
:func:`affine_attend` (GAP, query and key, the softmax over the memory, the
weighted sum, the affine and the residual add) through ``torch.compile``, so
the small ops fuse and the full-size passes of the sum merge into one kernel
where the compiler can. The value convolution stays eager. The maths is that
of :meth:`LayerAttention._attend` with the affine output.

Each memory length and feature size is a graph of its own (dynamic shapes
after the first change of size); pruning changes the memory lengths, and the
next call compiles again. The first steps are slow: time after a warm-up.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .ops import attention, channel_weights, query_key

#: Graphs allowed for :func:`affine_attend` (torch's default of 8 is fewer
#: than the memory lengths x sizes x grad modes of one detector).
RECOMPILE_LIMIT = 64


def affine_attend(x: Tensor, value: Tensor, query_key_weights: Tensor,
                  gamma: Tensor, beta: Tensor, scale: Optional[Tensor],
                  keys: List[Tensor], values: List[Tensor],
                  dim_per_head: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Z = X + beta + sum_s (gamma * A[s]) * V_s, with its query and key.

    Args:
        x (Tensor): block output X, [N, C, H, W].
        value (Tensor): this unit's value V, [N, C, h, w] (``x`` itself
            without a value convolution; h = ceil(H / 2) with a value stride
            of 2: the sum is upsampled, nearest, before the residual add).
        query_key_weights (Tensor): the query's and the key's 1-D
            convolutions as one weight, [2, 1, k].
        gamma, beta (Tensor): the affine output, [C].
        scale (Tensor, optional): drop-path scale per sample, [N, 1].
        keys (list[Tensor]): the memory's keys, each [N, G, d].
        values (list[Tensor]): the memory's values at [h, w], each
            [N, C, h, w].
        dim_per_head (int): d.

    Returns:
        tuple: Z [N, C, H, W], this unit's key [N, G, d] and the attention
        A [N, G, S].
    """
    n, c, h, w = x.shape
    d = dim_per_head
    y = x.sum(dim=(2, 3)) / (h * w)  # [N, C]
    query, key = query_key(y, query_key_weights, d)  # [N, G, d]
    attn = attention(query, list(keys) + [key])  # [N, G, S]
    coef = channel_weights(attn, gamma)  # [N, C, S]
    bias = beta[None]  # [1, C]
    if scale is not None:
        coef = coef * scale[:, :, None]
        bias = bias * scale
    dtype = value.dtype
    coef, bias = coef.to(dtype), bias.to(dtype)
    # The sum in the values' dtype (under autocast: half), the residual add
    # in the promoted dtype of x and the sum, as the eager unit.
    out = bias[:, :, None, None] + value * coef[:, :, -1, None, None]
    for s, v in enumerate(values):
        out = out + v * coef[:, :, s, None, None]
    if out.shape[-2:] != x.shape[-2:]:  # values at a lower resolution
        # Nearest upsampling by whole blocks, as an expand: its gradient is a
        # sum (Inductor's CPU code for F.interpolate's scatter fails on some
        # dynamic sizes).
        lh, lw = out.shape[-2:]
        sh, sw = -(-h // lh), -(-w // lw)
        out = out[:, :, :, None, :, None].expand(n, c, lh, sh, lw, sw)
        out = out.reshape(n, c, lh * sh, lw * sw)[:, :, :h, :w]
    return x + out, key, attn


_COMPILED = None


def compiled_affine_attend(*args) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`affine_attend` through ``torch.compile`` (built on first use,
    shared by every unit)."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(affine_attend)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return _COMPILED(*args)
