"""The unit's ops through ``torch.compile``.

``attn_compile=True`` on :class:`ELAResNet` / :class:`ELAFPN` compiles one of
two regions per unit; the value convolution stays eager in both:

* :func:`affine_attend`, the whole affine unit (GAP, query and key, the
  softmax over the memory, the weighted sum, the affine and the residual
  add): the small ops fuse, and so do the full-size passes of the sum. Used
  where the unit keeps its values and its output for backward (on CPU by
  default). Each memory length and feature size is a graph of its own.
* :func:`mixing_weights`, the small ops only (query and key, the softmax,
  the affine output's weights per channel and value, drop path): about
  twenty ops on [N, C] and [N, G, S] tensors forward, and more backward, that
  fuse into a few kernels (on a GPU each op is a kernel launch, where a
  unit's full-size passes take microseconds). The full-size passes stay in
  :class:`~.ops.AffineMix`, which makes the values again in backward
  (``attn_recompute_values``) and whose output can be replayed
  (``attn_recompute_outputs``): used where the unit does either (on CUDA by
  default), so the compiled unit saves the same memory as the eager one.

Both run :func:`mixing_weights`, as the eager unit does. Pruning changes the
memory lengths, and the next call compiles again (dynamic shapes after the
first change of size). The first steps are slow: time after a warm-up.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .ops import attention, channel_weights, query_key

#: Graphs allowed for each compiled function (torch's default of 8 is fewer
#: than the memory lengths x widths x grad modes of one detector).
RECOMPILE_LIMIT = 64


def mixing_weights(
        y: Tensor, query_key_weights: Tensor, gamma: Tensor, beta: Tensor,
        scale: Optional[Tensor], keys: List[Tensor], dim_per_head: int,
        dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """This unit's key, its attention A and the affine output's mixing
    weights: Z = X + bias + sum_s coef[:, :, s] * V_s.

    Args:
        y (Tensor): GAP of the block output, [N, C].
        query_key_weights (Tensor): the query's and the key's 1-D
            convolutions as one weight, [2, 1, k].
        gamma, beta (Tensor): the affine output, [C].
        scale (Tensor, optional): drop-path scale per sample, [N, 1].
        keys (list[Tensor]): the memory's keys, each [N, G, d].
        dim_per_head (int): d.
        dtype (torch.dtype): the values' dtype (under autocast, the value
            convolution's): the weights' dtype.

    Returns:
        tuple: key [N, G, d], A [N, G, S], coef [N, C, S] (gamma * A per
        head, times ``scale``) and bias [1, C] (or [N, C] with ``scale``).
    """
    query, key = query_key(y, query_key_weights, dim_per_head)  # [N, G, d]
    attn = attention(query, list(keys) + [key])  # [N, G, S]
    coef = channel_weights(attn, gamma)  # [N, C, S]
    bias = beta[None]  # [1, C]
    if scale is not None:
        coef = coef * scale[:, :, None]
        bias = bias * scale  # [N, C]
    return key, attn, coef.to(dtype), bias.to(dtype)


def affine_attend(x: Tensor, value: Tensor, query_key_weights: Tensor,
                  gamma: Tensor, beta: Tensor, scale: Optional[Tensor],
                  keys: List[Tensor], values: List[Tensor],
                  dim_per_head: int) -> Tuple[Tensor, Tensor, Tensor]:
    """The whole affine unit but its value convolution: Z = X + bias +
    sum_s coef[:, :, s] * V_s with :func:`mixing_weights`, the weighted sum
    in one expression (one kernel where the compiler fuses it).

    Args:
        x (Tensor): block output X, [N, C, H, W].
        value (Tensor): this unit's value V, [N, C, h, w] (``x`` itself
            without a value convolution; h = ceil(H / 2) with a value stride
            of 2: the sum is upsampled, nearest, before the residual add).
        values (list[Tensor]): the memory's values at [h, w], each
            [N, C, h, w].
        The others: as :func:`mixing_weights`.

    Returns:
        tuple: Z [N, C, H, W], this unit's key [N, G, d] and the attention
        A [N, G, S].
    """
    n, c, h, w = x.shape
    y = x.sum(dim=(2, 3)) / (h * w)  # [N, C]
    key, attn, coef, bias = mixing_weights(y, query_key_weights, gamma, beta,
                                           scale, keys, dim_per_head,
                                           value.dtype)
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


#: :func:`torch.compile` of each function above, built on first use and
#: shared by every unit.
_COMPILED: Dict[Callable, Callable] = {}


def run_compiled(function: Callable, *args) -> tuple:
    """``function(*args)`` through ``torch.compile``."""
    compiled = _COMPILED.get(function)
    if compiled is None:
        compiled = _COMPILED[function] = torch.compile(function)
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return compiled(*args)
