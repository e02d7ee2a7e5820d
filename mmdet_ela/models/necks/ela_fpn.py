"""ELA FPN: mmdet's FPN whose levels retrieve from the coarser levels."""
from typing import Optional, Tuple

from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import Tensor

from ..layers import (DEFAULT_NORM_CFG, DEFAULT_VALUE_STRIDE,
                      LayerAttentionMemory, LayerAttentionStack, check_compile,
                      check_drop_path_rate, check_recompute_values,
                      check_value_conv, check_value_stride)
from ..layers.attention_stack import guard_mask_loading


@MODELS.register_module()
class ELAFPN(FPN):
    """FPN with layer attention along its pyramid, from coarse to fine.

    After mmdet's FPN has produced its ``num_outs`` levels P_i ([N, C, H_i,
    W_i]), the levels form a sequence from the coarsest to the finest. Level l
    gets the same layer-attention unit as a backbone block: its query and key
    come from GAP of P_l, and it retrieves a softmax mixture of the values of
    the coarser levels (resized to its own size, nearest) and its own. The
    result is added to P_l through a zero-initialised norm, so ELAFPN equals
    FPN from construction on. Unit 0 belongs to the coarsest level; the units
    are scored and pruned by ``ELAPruneHook`` like the backbone's.

    Defaults follow :class:`ELAResNet`: the attention output norm is a
    per-channel affine, and the drop-path rate rises linearly from 0 at the
    coarsest level to ``drop_path_rate`` at the finest.

    Args:
        dim_per_head (int): channels per attention head; must divide
            ``out_channels``. Default: 32.
        attn_norm_cfg (dict): norm of the attention outputs. Default:
            ``dict(type='Affine')``; mmdet-ela 0.1 used ``dict(type='BN')``.
        drop_path_rate (float): stochastic depth on the attention branches,
            rising from 0 to this value along the levels. Default: 0.
        attn_value_conv (bool): the units' depthwise value convolution; False
            uses the levels themselves as values. Default: True.
        attn_value_stride (int): 1: the units' values, weighted sum and
            output at the features' resolution; 2: at half of it (a stride-2
            value convolution, the output upsampled by 2 x 2 blocks), cheaper.
            Default: 1.
        attn_compile (bool): the units through ``torch.compile`` (see
            :class:`ELAResNet`). Affine output only. Default: False.
        attn_recompute_values (bool, optional): the units make their values
            again in backward instead of keeping them (see
            :class:`ELAResNet`). None: on CUDA only. Default: None.
        **kwargs: every argument of :class:`mmdet.models.necks.FPN`.

    Example:
        >>> import torch
        >>> self = ELAFPN([64, 128], 32, num_outs=3, dim_per_head=16).eval()
        >>> feats = (torch.rand(1, 64, 16, 16), torch.rand(1, 128, 8, 8))
        >>> [tuple(o.shape) for o in self(feats)]
        [(1, 32, 16, 16), (1, 32, 8, 8), (1, 32, 4, 4)]
    """

    def __init__(self,
                 *args,
                 dim_per_head: int = 32,
                 attn_norm_cfg: dict = DEFAULT_NORM_CFG,
                 drop_path_rate: float = 0.0,
                 attn_value_conv: bool = True,
                 attn_value_stride: int = DEFAULT_VALUE_STRIDE,
                 attn_compile: bool = False,
                 attn_recompute_values: Optional[bool] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if (isinstance(dim_per_head, bool)
                or not isinstance(dim_per_head, int) or dim_per_head <= 0
                or self.out_channels % dim_per_head):
            raise ValueError(
                f'ELAFPN: dim_per_head={dim_per_head!r} must be a positive '
                f'integer dividing out_channels={self.out_channels}')
        check_drop_path_rate('ELAFPN', drop_path_rate)
        check_value_conv('ELAFPN', attn_value_conv)
        check_value_stride('ELAFPN', attn_value_stride)
        check_compile('ELAFPN', attn_compile, attn_norm_cfg)
        check_recompute_values('ELAFPN', attn_recompute_values, attn_norm_cfg,
                               attn_value_conv)
        last = max(self.num_outs - 1, 1)
        self.attn = LayerAttentionStack(
            [self.out_channels] * self.num_outs,
            dim_per_head=dim_per_head,
            norm_cfg=attn_norm_cfg,
            drop_path_rates=[
                drop_path_rate * i / last for i in range(self.num_outs)
            ],
            value_conv=attn_value_conv,
            value_stride=attn_value_stride,
            compiled=attn_compile,
            recompute_values=attn_recompute_values)
        guard_mask_loading(self)  # all-or-nothing mask loading

    def forward(self, inputs: Tuple[Tensor]) -> tuple:
        """Backbone features -> ``num_outs`` levels, each [N, C, H_l, W_l]."""
        outs = list(super().forward(inputs))
        memory = LayerAttentionMemory()
        for unit, level in enumerate(reversed(range(len(outs)))):
            outs[level] = self.attn(unit, outs[level], memory)
        return tuple(outs)
