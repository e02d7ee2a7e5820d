"""ELA FPN: mmdet's FPN whose output levels retrieve from the coarser levels."""
from typing import Optional, Tuple

from mmdet.models.necks import FPN
from mmdet.registry import MODELS
from torch import Tensor

from ..layers import LayerAttentionMemory, LayerAttentionStack


@MODELS.register_module()
class ELAFPN(FPN):
    """FPN with layer attention along its pyramid, from coarse to fine.

    After mmdet's FPN has produced its ``num_outs`` levels P_i ([N, C, H_i, W_i]),
    the levels form a sequence from the coarsest to the finest. Level l gets the
    same layer-attention unit as a backbone block: its query and key come from GAP of
    P_l, and it retrieves a softmax mixture of the values of the coarser levels
    (resized to its own size, nearest) and its own. The result is added to P_l
    through a zero-initialised BN, so at init ELAFPN equals FPN. Unit 0 belongs to the
    coarsest level; its units are scored and pruned by ``ELAPruneHook`` like the
    backbone's.

    Args:
        dim_per_head (int): channels per attention head; must divide
            ``out_channels``. Default: 32.
        attn_norm_cfg (dict, optional): norm of the attention outputs.
            Default: ``dict(type='BN', requires_grad=True)``.
        drop_path_rate (float): stochastic depth on the attention branches.
        **kwargs: every argument of :class:`mmdet.models.necks.FPN`.
    """

    def __init__(self,
                 *args,
                 dim_per_head: int = 32,
                 attn_norm_cfg: Optional[dict] = None,
                 drop_path_rate: float = 0.0,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(dim_per_head, int) or dim_per_head <= 0 or \
                self.out_channels % dim_per_head:
            raise ValueError(
                f'ELAFPN: dim_per_head={dim_per_head!r} must be a positive '
                f'divisor of out_channels={self.out_channels}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'ELAFPN: drop_path_rate={drop_path_rate} must '
                             'be in [0, 1)')
        if attn_norm_cfg is None:
            attn_norm_cfg = dict(type='BN', requires_grad=True)
        self.attn = LayerAttentionStack(
            [self.out_channels] * self.num_outs,
            dim_per_head=dim_per_head,
            norm_cfg=attn_norm_cfg,
            drop_path_rates=[drop_path_rate] * self.num_outs)

    def forward(self, inputs: Tuple[Tensor]) -> tuple:
        """Backbone features -> ``num_outs`` levels, each [N, C, H_l, W_l]."""
        outs = list(super().forward(inputs))
        memory = LayerAttentionMemory()
        for unit, level in enumerate(reversed(range(len(outs)))):
            outs[level] = self.attn(unit, outs[level], memory)
        return tuple(outs)
