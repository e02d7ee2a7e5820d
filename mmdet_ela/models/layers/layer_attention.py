"""The layer-attention unit and its memory, shared by backbone and neck.

A unit sits after one block (or one pyramid level) of a sequence. It turns the
block output ``x`` of shape [N, C, H, W] into a query, a key and a value,
stores the key and value in the sequence's :class:`LayerAttentionMemory`, and
retrieves a softmax mixture of every value in the memory (its own included).
See ``docs/method.md``.
"""
import math
import warnings
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
from torch.nn.modules.batchnorm import _BatchNorm

from .compiled import affine_attend, mixing_weights, run_compiled
from .ops import (AffineMix, DepthwiseConvSplitBackward, RecomputedValues,
                  ValueGradients, ValueRecipe, WeightedSumOverMemory,
                  affine_mix, attention, mix_values, query_key, resize_values)
from .replay import OutputReplay


def eca_kernel_size(channels: int) -> int:
    """ECA's kernel size: the odd number nearest above |(log2 C + 1) / 2|."""
    k = int(abs((math.log2(channels) + 1) / 2))
    return k if k % 2 == 1 else k + 1


class ChannelAffine(nn.Module):
    """``y = weight * x + bias`` per channel: an output "norm" without
    statistics (``attn_norm_cfg=dict(type='Affine')``).

    Args:
        channels (int): C; ``weight`` and ``bias`` are [C].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        """[N, C, H, W] -> [N, C, H, W]."""
        weight, bias = self.weight[:, None, None], self.bias[:, None, None]
        return torch.addcmul(bias, x, weight)


def build_attention_norm(norm_cfg: dict, channels: int) -> tuple:
    """Build the output norm of a unit; a config that does not build is a
    ``ValueError`` naming ``attn_norm_cfg`` (mmcv raises bare asserts).

    Returns:
        tuple: ``(name, module)`` as from :func:`mmcv.cnn.build_norm_layer`.
    """
    if not isinstance(norm_cfg, dict) or 'type' not in norm_cfg:
        raise ValueError(f'attn_norm_cfg={norm_cfg!r} must be a dict with a '
                         "'type' key, e.g. dict(type='BN')")
    if norm_cfg['type'] == 'Affine':
        extra = set(norm_cfg) - {'type', 'requires_grad'}
        if extra or not norm_cfg.get('requires_grad', True):
            raise ValueError(
                f'attn_norm_cfg={norm_cfg!r}: the Affine output takes no '
                'options (a trainable per-channel weight and bias)')
        return 'affine', ChannelAffine(channels)
    try:
        return build_norm_layer(norm_cfg, channels)
    except (AssertionError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f'attn_norm_cfg={norm_cfg!r} does not build a norm layer for '
            f'{channels} channels ({type(err).__name__}: {err}). Use e.g. '
            "dict(type='BN'), dict(type='SyncBN'), dict(type='GN', "
            f"num_groups=G) with G dividing {channels}, or "
            "dict(type='Affine')") from err


def check_drop_path_rate(owner: str, rate) -> None:
    """A ``ValueError`` naming ``owner`` unless ``rate`` is a number in
    [0, 1)."""
    if (isinstance(rate, bool) or not isinstance(rate, Real)
            or not 0.0 <= rate < 1.0):
        raise ValueError(f'{owner}: drop_path_rate={rate!r} must be a number '
                         'in [0, 1)')


def check_compile(owner: str, compiled, norm_cfg) -> None:
    """A ``ValueError`` naming ``owner`` unless ``compiled`` is a bool, and
    True only with the affine output."""
    if not isinstance(compiled, bool):
        raise ValueError(
            f'{owner}: attn_compile={compiled!r} must be True or False')
    if compiled and (not isinstance(norm_cfg, dict)
                     or norm_cfg.get('type') != 'Affine'):
        raise ValueError(
            f'{owner}: attn_compile=True compiles the affine output only, '
            f"but attn_norm_cfg={norm_cfg!r}; use dict(type='Affine') (the "
            'default) or attn_compile=False')


def check_value_conv(owner: str, value_conv) -> None:
    """A ``ValueError`` naming ``owner`` unless ``value_conv`` is a bool."""
    if not isinstance(value_conv, bool):
        raise ValueError(
            f'{owner}: attn_value_conv={value_conv!r} must be True or False')


def check_value_stride(owner: str, stride) -> None:
    """A ``ValueError`` naming ``owner`` unless ``stride`` is 1 or 2."""
    if isinstance(stride, bool) or stride not in (1, 2):
        raise ValueError(
            f'{owner}: attn_value_stride={stride!r} must be 1 (values at the '
            'features\' resolution) or 2 (values at half of it)')


def check_recompute_values(owner: str, recompute, norm_cfg,
                           value_conv) -> None:
    """A ``ValueError`` naming ``owner`` unless ``recompute`` is None, False,
    or True for a unit that can make its values again (the affine output
    with a value convolution)."""
    if recompute is not None and not isinstance(recompute, bool):
        raise ValueError(f'{owner}: attn_recompute_values={recompute!r} must '
                         'be None (on CUDA only), True or False')
    if recompute and (not isinstance(norm_cfg, dict)
                      or norm_cfg.get('type') != 'Affine' or not value_conv):
        raise ValueError(
            f'{owner}: attn_recompute_values=True makes the values of the '
            'affine output\'s value convolution again in backward, but '
            f'attn_norm_cfg={norm_cfg!r}, attn_value_conv={value_conv!r}; '
            'use dict(type=\'Affine\') (the default) and '
            'attn_value_conv=True, or attn_recompute_values=None')


def check_recompute_outputs(owner: str, recompute, norm_cfg) -> None:
    """A ``ValueError`` naming ``owner`` unless ``recompute`` is None, False,
    or True for units whose output can be computed again (the affine
    output)."""
    if recompute is not None and not isinstance(recompute, bool):
        raise ValueError(f'{owner}: attn_recompute_outputs={recompute!r} '
                         'must be None (on CUDA only), True or False')
    if recompute and (not isinstance(norm_cfg, dict)
                      or norm_cfg.get('type') != 'Affine'):
        raise ValueError(
            f'{owner}: attn_recompute_outputs=True computes the units\' '
            f'affine output again in backward, but attn_norm_cfg={norm_cfg!r}'
            '; use dict(type=\'Affine\') (the default), or '
            'attn_recompute_outputs=None')


#: The eps of the batch norms that :meth:`LayerAttention._load_from_state_dict`
#: folds into an affine (mmcv's and PyTorch's default).
BN_EPS = 1e-5

#: The default output norm of a unit: a per-channel affine without batch
#: statistics (the BN of mmdet-ela 0.1 is ``dict(type='BN')``; see
#: ``docs/method.md`` for why the default changed).
DEFAULT_NORM_CFG = dict(type='Affine')

#: The default value stride of a unit: values, weighted sum and output at the
#: features' full resolution. ``value_stride=2`` (half resolution) costs less
#: but lost mAP with a higher learning rate on the units (``docs/method.md``).
DEFAULT_VALUE_STRIDE = 1


class LayerAttentionMemory:
    """Keys and values of the units that already ran in one sequence.

    A fresh memory is made at the first block of every stage (and for every
    neck pass).

    Args:
        chained (bool): the units feed each other (a ResNet stage: unit t's
            input depends on every earlier unit's output). Their gradients
            with respect to the stored values are then summed in place
            (:class:`~.ops.ValueGradients`). Default: False.

    Attributes:
        keys (list[Tensor]): each [N, G, d].
        values (list[Tensor]): each [N, C, H_s, W_s]; sizes may differ along a
        pyramid.
        value_grads (ValueGradients, optional): for a chained memory.
        recomputed (RecomputedValues): how each value was made, for units
            that make the values again in backward instead of keeping them.
    """

    def __init__(self, chained: bool = False) -> None:
        self.keys: List[Tensor] = []
        self.values: List[Tensor] = []
        self.value_grads = ValueGradients() if chained else None
        self.recomputed = RecomputedValues()

    def append(self,
               key: Tensor,
               value: Tensor,
               recipe: Optional[ValueRecipe] = None) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.recomputed.append(recipe)

    def __len__(self) -> int:
        return len(self.keys)


def upsample_add(x: Tensor, low: Tensor) -> Tensor:
    """``x`` plus ``low`` upsampled to its size by whole blocks (nearest).

    Args:
        x (Tensor): [N, C, H, W].
        low (Tensor): [N, C, h, w] with h = ceil(H / s_h), w = ceil(W / s_w):
            element (i, j) covers rows s_h i ... s_h i + s_h - 1 and columns
            s_w j ... of ``x`` (clipped at the border), as
            ``F.interpolate(low, (H, W), mode='nearest')`` places it.

    Returns:
        Tensor: [N, C, H, W]. ``low`` is repeated along W only (a tensor of
        h x W) and broadcast over the rows of each block in the addition: one
        pass over ``x``, and a vectorised gradient (``F.interpolate``'s is
        several times slower on CPU).
    """
    n, c, h, w = x.shape
    lh, lw = low.shape[-2:]
    if (lh, lw) == (h, w):
        return x + low
    sh, sw = -(-h // lh), -(-w // lw)
    # Repeats by expand + reshape, not repeat_interleave (whose CUDA kernel
    # met an index on the CPU under autocast in torch 2.11).
    rows = low
    if sw != 1:
        rows = low[..., None].expand(n, c, lh, lw, sw)
        rows = rows.reshape(n, c, lh, lw * sw)[..., :w]
    if h % sh == 0:
        blocks = x.reshape(n, c, lh, sh, w)
        return (blocks + rows[:, :, :, None]).reshape(n, c, h, w)
    rows = rows[:, :, :, None].expand(n, c, lh, sh, w)
    rows = rows.reshape(n, c, lh * sh, w)
    return x + rows[:, :, :h]


def _needs_backward(*tensors: Tensor) -> bool:
    """Whether autograd will differentiate through ``tensors``: use the
    hand-written backward then; plain ops for inference and FLOP tracing."""
    return (torch.is_grad_enabled() and not torch.jit.is_tracing()
            and any(t.requires_grad for t in tensors))


def _holds_unit(state_dict: dict, prefix: str) -> bool:
    """Whether ``state_dict`` holds weights of the unit at ``prefix`` (every
    unit has a query; ImageNet weights and pruned units have none)."""
    return f'{prefix}query.weight' in state_dict


class LayerAttention(BaseModule):
    """One layer-attention unit: Z = X + DropPath(norm(sum_s A[s] * V_s)).

    ``A = softmax_s(<q, k_s> / sqrt(d))`` per head, over the keys in the
    memory. The output norm starts with weight 0 and bias 0 (at construction
    and again in :meth:`init_weights`), so a fresh unit is the identity.

    The default output norm is a per-channel affine (gamma, beta) without
    batch statistics, so the output is one weighted sum
    Z = X + beta + sum_s (gamma * A[s]) * V_s, computed in one pass per value
    by :class:`AffineMix`; drop-path scales the per-sample weights. The unit
    of mmdet-ela 0.1 normalised with BN (``norm_cfg=dict(type='BN')``, still
    available, as are SyncBN and GN). The cheap unit (``value_conv=False``)
    also stores the block outputs themselves as values (V_s = X_s).

    With ``value_stride=2`` the values are at half the block's resolution:
    the value convolution has stride 2 (without it, X is average-pooled 2 x
    2), the weighted sum and the output norm run on those maps, and the
    result is added to X upsampled (nearest). GAP, the query, the key and the
    attention are those of ``value_stride=1``.

    With a batch norm in training mode and a single value per channel (batch 1
    and a 1x1 map, e.g. P7 of a small image), batch statistics do not exist:
    the unit then normalises with the running statistics, so it runs wherever
    mmdet's ResNet and FPN run.

    A checkpoint of the BN unit (0.1) loads into the affine unit: each batch
    norm is folded into the affine it computes in evaluation. Other
    mismatches of the saved and the built output norm are a ``ValueError`` (see
    :meth:`_load_from_state_dict`).

    Args:
        channels (int): C, the channels of the block output.
        dim_per_head (int): d; C must be divisible by it. G = C // d heads.
            Default: 32.
        norm_cfg (dict): config of the output norm (trainable), e.g.
            ``dict(type='BN')``. Default: :data:`DEFAULT_NORM_CFG`, the
            per-channel affine.
        drop_path_rate (float): stochastic depth on the attention branch.
            Default: 0.
        value_conv (bool): values V = dwconv3x3(X); False stores X itself.
            Default: True.
        value_stride (int): 1 for values, weighted sum and output norm at
            the block's resolution; 2 for half of it (a stride-2 value
            convolution), the output upsampled. Default:
            :data:`DEFAULT_VALUE_STRIDE` (1).
        with_cp (bool): recompute the unit in backward to save memory.
            Default: False.
        recompute_values (bool, optional): make the memory's values again in
            backward instead of keeping them from forward (one depthwise
            convolution per unit more; one full-size tensor per unit less
            between forward and backward). None: on CUDA only. True needs
            the affine output and a value convolution. Default: None.
        compiled (bool): run the unit through ``torch.compile``
            (:mod:`.compiled`): all of it but the value convolution where
            it keeps its values and output for backward; only its small ops
            (query, key, attention, mixing weights) where it makes them again
            (``recompute_values``, an output replay). The affine output only.
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
                 norm_cfg: dict = DEFAULT_NORM_CFG,
                 drop_path_rate: float = 0.0,
                 value_conv: bool = True,
                 value_stride: int = DEFAULT_VALUE_STRIDE,
                 with_cp: bool = False,
                 compiled: bool = False,
                 recompute_values: Optional[bool] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        check_value_conv('LayerAttention', value_conv)
        check_value_stride('LayerAttention', value_stride)
        check_compile('LayerAttention', compiled, norm_cfg)
        check_recompute_values('LayerAttention', recompute_values, norm_cfg,
                               value_conv)
        if (isinstance(dim_per_head, bool)
                or not isinstance(dim_per_head, int) or dim_per_head <= 0
                or channels % dim_per_head != 0):
            raise ValueError(
                f'dim_per_head={dim_per_head} must be a positive divisor of '
                f'the attention channels ({channels})')
        self.channels = channels
        self.dim_per_head = dim_per_head
        self.num_heads = channels // dim_per_head
        self.value_stride = value_stride
        self.with_cp = with_cp
        self.compiled = compiled
        self.recompute_values = recompute_values
        k = eca_kernel_size(channels)
        self.query = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.key = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.value = nn.Conv2d(
            channels,
            channels,
            3,
            stride=value_stride,
            padding=1,
            groups=channels,
            bias=False) if value_conv else None
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
                f'dim_per_head={self.dim_per_head}, '
                f'value_conv={self.value is not None}, '
                f'value_stride={self.value_stride}')

    def init_weights(self) -> None:
        """Run the configured init, then zero the output norm (identity)."""
        super().init_weights()
        constant_init(self.norm, 0)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """Also record ``value_stride`` in the state_dict's metadata: the
        stride is not a parameter, and the keys do not show it."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        metadata = getattr(destination, '_metadata', None)
        if metadata is not None:
            metadata.setdefault(prefix[:-1], {})['value_stride'] = \
                self.value_stride

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys,
                              error_msgs) -> None:
        self._check_saved_stride(state_dict, prefix, local_metadata)
        self._check_saved_value_conv(state_dict, prefix)
        self._convert_saved_norm(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _check_saved_stride(self, state_dict: dict, prefix: str,
                            local_metadata: dict) -> None:
        """A ``ValueError`` naming ``attn_value_stride`` if the weights were
        saved from a unit of another value stride (same keys, other maths).

        Weights without the record load, with a warning into a unit of
        stride 2: mmdet-ela 0.1 and 0.2 saved no record (their units all
        had stride 1), and loaders that rename keys (mmengine's
        ``init_cfg=dict(type='Pretrained', prefix=...)``) drop it.
        """
        if not _holds_unit(state_dict, prefix):
            return
        saved = (local_metadata or {}).get('value_stride')
        if saved is None:
            if self.value_stride != 1:
                warnings.warn(
                    'ELA: weights without a record of their units\' value '
                    'stride were loaded into units of attn_value_stride='
                    f'{self.value_stride}. Checkpoints of mmdet-ela 0.1 and '
                    '0.2 were trained with attn_value_stride=1: build the '
                    'model with it for them (loaders that rename keys, such '
                    "as init_cfg=dict(type='Pretrained', prefix=...), also "
                    'drop the record)')
            return
        if saved != self.value_stride:
            raise ValueError(
                f'{prefix.rstrip(".")}: the checkpoint was saved from a unit '
                f'with attn_value_stride={saved}; this model has '
                f'attn_value_stride={self.value_stride}. The weights would '
                'load but compute other maths: build the model with '
                f'attn_value_stride={saved} (e.g. --cfg-options '
                f'model.backbone.attn_value_stride={saved}, and the same for '
                'an ELAFPN neck)')

    def _check_saved_value_conv(self, state_dict: dict, prefix: str) -> None:
        """A ``ValueError`` naming ``attn_value_conv`` if the weights were
        saved from a unit with a value convolution into one without, or the
        other way round: the keys would not match, and a non-strict load
        (mmengine's default) would only warn and leave other maths."""
        if not _holds_unit(state_dict, prefix):
            return
        saved = f'{prefix}value.weight' in state_dict
        built = self.value is not None
        if saved != built:
            raise ValueError(
                f'{prefix.rstrip(".")}: the checkpoint was saved from a unit '
                f'with attn_value_conv={saved}; this model has '
                f'attn_value_conv={built}. Build the model with '
                f'attn_value_conv={saved} (e.g. --cfg-options '
                f'model.backbone.attn_value_conv={saved}, and the same for '
                'an ELAFPN neck)')

    def _convert_saved_norm(self, state_dict: dict, prefix: str) -> None:
        """Fit a saved output norm of another kind to this unit's.

        A batch norm saved by the BN unit, loaded into the affine unit, is
        folded into the affine it computes in evaluation: gamma = w /
        sqrt(var + eps), beta = b - mean * gamma (eps = :data:`BN_EPS`). Test
        and inference then give the BN unit's outputs; training goes on
        without batch statistics. Any other mismatch (e.g. an affine
        checkpoint into a BN unit) would leave the unit untrained, and is a
        ``ValueError`` naming ``attn_norm_cfg``.
        """
        saved = {
            k[len(prefix):].split('.', 1)[0]
            for k in state_dict if k.startswith(prefix)
        }
        others = saved - {'query', 'key', 'value', self.norm_name}
        if not others or self.norm_name in saved:
            return
        name = sorted(others)[0]
        old = f'{prefix}{name}.'
        if (isinstance(self.norm, ChannelAffine)
                and f'{old}running_var' in state_dict):
            weight = state_dict.pop(f'{old}weight')
            bias = state_dict.pop(f'{old}bias')
            mean = state_dict.pop(f'{old}running_mean')
            var = state_dict.pop(f'{old}running_var')
            state_dict.pop(f'{old}num_batches_tracked', None)
            gamma = weight / torch.sqrt(var + BN_EPS)
            state_dict[f'{prefix}{self.norm_name}.weight'] = gamma
            state_dict[f'{prefix}{self.norm_name}.bias'] = bias - mean * gamma
            warnings.warn(
                'ELA: a checkpoint of the BN unit was loaded into the affine '
                'unit: each output batch norm is folded into the affine it '
                'computes in evaluation, so test and inference give the same '
                'outputs. To train the BN unit further, build the model '
                "with attn_norm_cfg=dict(type='BN').")
            return
        fields = sorted(k[len(old):] for k in state_dict if k.startswith(old))
        raise ValueError(
            f'{prefix.rstrip(".")}: the checkpoint has an output norm '
            f'{name!r} ({fields}), this unit has {self.norm_name!r} '
            f'({type(self.norm).__name__}): build the model with the '
            'attn_norm_cfg it was trained with, e.g. '
            "attn_norm_cfg=dict(type='BN') (mmdet-ela 0.1) or "
            "dict(type='Affine') (the default)")

    def forward(self,
                x: Tensor,
                memory: LayerAttentionMemory,
                replay: Optional[OutputReplay] = None) -> Tensor:
        """Attend over ``memory`` plus this unit, then append this unit to it.

        Args:
            x (Tensor): block output X_b, [N, C, H, W].
            memory (LayerAttentionMemory): the earlier units of the sequence.
            replay (OutputReplay, optional): this unit's output replay (from
                :meth:`output_replay`): it is handed the mixing weights, so
                that backward computes the output again from them.

        Returns:
            Tensor: Z_b, [N, C, H, W].
        """
        recomputed = None
        if self.with_cp and x.requires_grad:
            # Non-reentrant checkpoint; pass copies of the memory lists, which
            # grow after this call and must look the same at recomputation.
            z, key, value = cp.checkpoint(
                self._attend,
                x,
                list(memory.keys),
                list(memory.values),
                memory.value_grads,
                use_reentrant=False)
        else:
            if self._recomputes_values(x, memory):
                recomputed = memory.recomputed
            z, key, value = self._attend(
                x,
                memory.keys,
                memory.values,
                memory.value_grads,
                recomputed,
                replay=replay)
        # A recipe only where values are made again (no cost elsewhere); a
        # memory without one for this value makes no later value again.
        memory.append(
            key, value,
            None if recomputed is None else self._value_recipe(x, value))
        return z

    def output_replay(self, x: Tensor,
                      memory: LayerAttentionMemory) -> Optional[OutputReplay]:
        """How backward can compute this unit's output again
        (:class:`~.replay.OutputReplay`); call it before :meth:`forward` on
        the same ``x`` and ``memory``, and pass it to that call. None where
        the output cannot be computed again exactly: without autograd, for a
        BN output (its statistics would update twice), with drop
        path active in training (random), or checkpointed (``with_cp``)."""
        rate = getattr(self.drop_path, 'drop_prob', 0.0)
        if (not torch.is_grad_enabled() or not self._affine or self.with_cp
                or (self.training and rate > 0)):
            return None
        recomputed = memory.recomputed if self._recomputes_values(
            x, memory) else None
        return OutputReplay(self, x,
                            None if recomputed is not None else memory.values,
                            recomputed, [v.shape[-2:] for v in memory.values])

    @property
    def _affine(self) -> bool:
        return isinstance(self.norm, ChannelAffine)

    def _recomputes_values(self, x: Tensor,
                           memory: LayerAttentionMemory) -> bool:
        """Whether this unit makes the memory's values again in backward
        (:class:`~.ops.RecomputedValues`) instead of keeping them.

        By default (``recompute_values=None``) on CUDA, where memory is what
        limits training and the depthwise convolution is one cheap pass; on
        CPU that convolution is the unit's costliest op. Only with autograd
        on, for the affine output with a value convolution, and when every
        earlier value of ``memory`` can be made again."""
        wanted = self.recompute_values
        if wanted is None:
            wanted = x.device.type == 'cuda'
        return (wanted and torch.is_grad_enabled() and self._affine
                and self.value is not None
                and memory.recomputed.covers(len(memory)))

    def _value_recipe(self, x: Tensor, value: Tensor) -> ValueRecipe:
        """How ``value`` was made from ``x`` by the value convolution."""
        conv = self.value
        # Detached: the backward graph holds the recipes (through
        # RecomputedValues), and x's own graph would close a cycle through
        # it that Python's garbage collector cannot see.
        return ValueRecipe(x.detach(), conv.weight.detach(), conv.stride,
                           conv.padding, conv.dilation, value.dtype,
                           x._version)

    def query_key_weights(self) -> Tensor:
        """The query's and the key's kernels as one ``conv1d`` weight, [2, 1,
        k] (``query`` and ``key`` stay ``Conv1d`` modules: their parameters
        and names are the unit's)."""
        return torch.cat([self.query.weight, self.key.weight])

    def _value(self, x: Tensor) -> Tensor:
        """v = dwconv3x3(x) (stride ``value_stride``), or without a value
        convolution x itself, 2 x 2 average-pooled (ceil mode) at stride 2;
        [N, C, h, w] with h = ceil(H / stride), w = ceil(W / stride).

        See :class:`DepthwiseConvSplitBackward`.
        """
        conv = self.value
        if conv is None:
            if self.value_stride == 1:
                return x
            # A side of one pixel is not pooled (the convolution's size).
            kernel = tuple(min(2, size) for size in x.shape[-2:])
            return F.avg_pool2d(x, kernel, kernel, ceil_mode=True)
        if (x.device.type == 'cpu' and torch.is_grad_enabled()
                and (x.requires_grad or conv.weight.requires_grad)
                and not torch.jit.is_tracing()):
            return DepthwiseConvSplitBackward.apply(x, conv.weight,
                                                    conv.stride, conv.padding,
                                                    conv.dilation)
        return conv(x)

    def _attend(self,
                x: Tensor,
                keys: List[Tensor],
                values: List[Tensor],
                value_grads: Optional[ValueGradients] = None,
                recomputed: Optional[RecomputedValues] = None,
                replay: Optional[OutputReplay] = None) -> tuple:
        """Z, this unit's key and value from ``x`` [N, C, H, W] and the
        memory's ``keys`` and ``values`` (``value_grads``, ``recomputed``:
        see :class:`LayerAttentionMemory`). ``replay``: is handed the affine
        output's mixing weights (detached), from which it computes Z again
        in backward."""
        if (self.compiled and recomputed is None and replay is None
                and not torch.jit.is_tracing()):
            return self._compiled_attend(x, keys, values)
        h, w = x.shape[-2:]
        # GAP as sum / (H W): same values as mean, but its backward is a
        # broadcast view, not a materialised [N, C, H, W] tensor.
        y = x.sum(dim=(2, 3)) / (h * w)  # [N, C]
        value = self._value(x)  # [N, C, h, w]; h = H at value_stride 1
        if self._affine:
            key, attn, coef, bias = self._mixing_weights(y, keys, value.dtype)
        else:
            query, key = query_key(y, self.query_key_weights(),
                                   self.dim_per_head)  # [N, G, d]
            attn = attention(query, list(keys) + [key])  # [N, G, S]
        if self.recording:
            self.attention = attn.detach()

        if any(v.shape[-2:] != value.shape[-2:] for v in values):
            value_grads = None  # resized copies: not the stored tensors
        values = resize_values(values, value.shape[-2:]) + [value]
        if self._affine:
            if replay is not None:
                replay.weights = (coef.detach(), bias.detach())
            return self._mix(x, coef, bias, values, value_grads,
                             recomputed), key, value
        # Under autocast softmax runs in fp32: mix in the values' dtype so the
        # attention branch does not keep fp32 activations.
        attn = attn.to(value.dtype)
        # Weighted sum of the values, without stacking them (see mix_values).
        if _needs_backward(attn, *values):
            out = WeightedSumOverMemory.apply(attn, *values)
        else:  # inference, and FLOP counting by tracing: plain ops
            out = mix_values(attn, values)  # [N, C, h, w]
        return upsample_add(x, self.drop_path(self._normalize(out))), key, \
            value

    def _mixing_weights(self, y: Tensor, keys: List[Tensor],
                        dtype: torch.dtype) -> tuple:
        """The affine output's key, attention and mixing weights from GAP
        ``y`` [N, C] (:func:`~.compiled.mixing_weights`; through
        ``torch.compile`` for a compiled unit): key [N, G, d], A [N, G, S],
        coef [N, C, S] and bias [B, C] in ``dtype``, drop path included
        (B = N where it is active, else 1)."""
        args = (y, self.query_key_weights(), self.norm.weight, self.norm.bias,
                self._drop_path_scale(y), list(keys), self.dim_per_head, dtype)
        if self.compiled and not torch.jit.is_tracing():
            return run_compiled(mixing_weights, *args)
        return mixing_weights(*args)

    def _compiled_attend(self, x: Tensor, keys: List[Tensor],
                         values: List[Tensor]) -> tuple:
        """:meth:`_attend` with the whole affine unit through
        ``torch.compile`` (:func:`~.compiled.affine_attend`); the value
        convolution stays eager. For a unit that keeps its values and its
        output for backward."""
        value = self._value(x)
        values = resize_values(values, value.shape[-2:])
        z, key, attn = run_compiled(affine_attend, x, value,
                                    self.query_key_weights(), self.norm.weight,
                                    self.norm.bias, self._drop_path_scale(x),
                                    list(keys), values, self.dim_per_head)
        if self.recording:
            self.attention = attn.detach()
        return z, key, value

    def _drop_path_scale(self, y: Tensor) -> Optional[Tensor]:
        """Drop path's scale per sample of ``y`` (first dimension N), [N,
        1]: 0 or 1 / keep; None unless active (training, a rate > 0)."""
        rate = getattr(self.drop_path, 'drop_prob', 0.0)  # Identity: none
        if not self.training or rate <= 0:
            return None
        keep = 1.0 - rate
        return (keep +
                torch.rand(y.shape[0], 1, device=y.device)).floor_() / keep

    def _mix(self,
             x: Tensor,
             coef: Tensor,
             bias: Tensor,
             values: List[Tensor],
             value_grads: Optional[ValueGradients] = None,
             recomputed: Optional[RecomputedValues] = None) -> Tensor:
        """Z = X + bias + sum_s coef[:, :, s] * V_s, the affine output in one
        sum.

        Args:
            x (Tensor): [N, C, H, W].
            coef (Tensor): the mixing weights (:meth:`_mixing_weights`),
                [N, C, S], in the values' dtype.
            bias (Tensor): [B, C] (B = 1 or N), in the values' dtype.
            values (list[Tensor]): S tensors [N, C, h, w] (h = H without a
                value stride); the last is this unit's (``x`` itself without
                a value convolution and stride).
            value_grads (ValueGradients, optional): where a chain sums the
                values' gradients (:class:`LayerAttentionMemory`).
            recomputed (RecomputedValues, optional): makes the values again
                in backward instead of keeping them.

        Returns:
            Tensor: [N, C, H, W]. At a lower resolution the sum is added to
            ``x`` by :func:`upsample_add`.
        """
        full = values[-1].shape[-2:] == x.shape[-2:]
        residual = x if full else None  # else added by upsample_add
        if values[-1] is x:  # V_b = X: fold the residual into its weight
            coef = torch.cat([coef[:, :, :-1], coef[:, :, -1:] + 1], dim=-1)
            residual = None
        if _needs_backward(coef, *values):
            out = AffineMix.apply(coef, bias, residual, value_grads,
                                  recomputed, *values)
        else:
            out = affine_mix(coef, bias, values, residual)
        return out if full else upsample_add(x, out)

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
