"""ELA ResNet: mmdet's ResNet with a layer-attention unit after every block."""
from typing import Iterator, Optional, Sequence

import torch.nn as nn
from mmdet.models.backbones.resnet import ResNet
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import LayerAttentionMemory, LayerAttentionStack


class ELAResLayer(BaseModule):
    """A ResNet stage whose blocks share one layer-attention memory.

    The blocks keep mmdet's names (``0``, ``1``, ...), so ``layer1.0.conv1.weight``
    means the same as in :class:`mmdet.models.ResLayer`; the units live in ``attn``.

    Args:
        blocks (nn.Sequential): the stage built by mmdet's ``ResLayer``.
        attn (LayerAttentionStack, optional): one unit per block; None = plain stage.
    """

    def __init__(self, blocks: nn.Sequential,
                 attn: Optional[LayerAttentionStack]) -> None:
        super().__init__()
        for name, block in blocks.named_children():
            self.add_module(name, block)
        self.num_blocks = len(blocks)
        self.attn = attn

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> nn.Module:
        return getattr(self, str(range(self.num_blocks)[index]))

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[i] for i in range(self.num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        """[N, C_in, H, W] -> [N, C_out, H', W']."""
        memory = LayerAttentionMemory()
        for i, block in enumerate(self):
            x = block(x)
            if self.attn is not None:
                x = self.attn(i, x, memory)
        return x


@MODELS.register_module()
class ELAResNet(ResNet):
    """ResNet backbone with Efficient Layer Attention inside every stage.

    Takes every argument of :class:`mmdet.models.ResNet` (``depth``, ``out_indices``,
    ``frozen_stages``, ``norm_cfg``, ``norm_eval``, ``with_cp``, ``style``, ``dcn``,
    ``stage_with_dcn``, ``plugins``, ``zero_init_residual``, ``init_cfg`` ...) and
    keeps its parameter names, so its checkpoints (e.g. ``torchvision://resnet50``)
    load into the residual path. At init the attention output norms are zero and the
    network computes exactly what ResNet computes.

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        dim_per_head (int): channels per attention head. Must divide the output
            channels of every stage that carries attention. Default: 32.
        stage_with_attention (Sequence[bool], optional): which stages carry
            attention units. Default: all of them.
        drop_path_rate (float): stochastic depth on the attention branches, rising
            linearly from 0 to this value over all units. Default: 0.
        attn_norm_cfg (dict, optional): norm of the attention outputs. Default: the
            type of ``norm_cfg`` (so SyncBN stays SyncBN) with ``requires_grad=True``.
            These norms are new layers with no pretrained statistics: ``norm_eval``
            leaves them in training mode (frozen stages freeze them).
        **kwargs: the arguments of :class:`mmdet.models.ResNet`.

    Example:
        >>> import torch
        >>> self = ELAResNet(depth=18).eval()
        >>> [tuple(o.shape) for o in self(torch.rand(1, 3, 64, 64))]
        [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]
    """

    def __init__(self,
                 depth: int,
                 dim_per_head: int = 32,
                 stage_with_attention: Optional[Sequence[bool]] = None,
                 drop_path_rate: float = 0.0,
                 attn_norm_cfg: Optional[dict] = None,
                 **kwargs) -> None:
        num_stages = kwargs.get('num_stages', 4)
        if stage_with_attention is None:
            stage_with_attention = (True, ) * num_stages
        self._check_args(depth, num_stages, kwargs, dim_per_head,
                         stage_with_attention, drop_path_rate)
        super().__init__(depth, **kwargs)
        if attn_norm_cfg is None:
            attn_norm_cfg = dict(type=self.norm_cfg['type'], requires_grad=True)
        self.dim_per_head = dim_per_head
        self.stage_with_attention = tuple(stage_with_attention)
        self.drop_path_rate = drop_path_rate

        num_units = sum(n for n, a in zip(self.stage_blocks,
                                          stage_with_attention) if a)
        rates = iter([drop_path_rate * i / max(num_units - 1, 1)
                      for i in range(num_units)])
        for i, layer_name in enumerate(self.res_layers):
            blocks = getattr(self, layer_name)
            attn = None
            if stage_with_attention[i]:
                channels = self.base_channels * 2**i * self.block.expansion
                attn = LayerAttentionStack(
                    [channels] * len(blocks),
                    dim_per_head=dim_per_head,
                    norm_cfg=attn_norm_cfg,
                    drop_path_rates=[next(rates) for _ in blocks],
                    with_cp=self.with_cp)
            setattr(self, layer_name, ELAResLayer(blocks, attn))
        self._freeze_stages()

    def _check_args(self, depth, num_stages, kwargs, dim_per_head,
                    stage_with_attention, drop_path_rate) -> None:
        allowed = sorted(self.arch_settings)
        if depth not in self.arch_settings:
            raise ValueError(f'ELAResNet: depth={depth!r} is not supported; '
                             f'allowed values: {allowed}')
        if not 1 <= num_stages <= 4:
            raise ValueError(
                f'ELAResNet: num_stages={num_stages} must be in 1..4')
        out_indices = kwargs.get('out_indices', (0, 1, 2, 3))
        if (len(out_indices) == 0
                or any(not isinstance(i, int) or not 0 <= i < num_stages
                       for i in out_indices)):
            raise ValueError(
                f'ELAResNet: out_indices={tuple(out_indices)} is invalid; '
                f'allowed values are stage indices in 0..{num_stages - 1}')
        frozen = kwargs.get('frozen_stages', -1)
        if not -1 <= frozen <= num_stages:
            raise ValueError(f'ELAResNet: frozen_stages={frozen} must be in '
                             f'-1..{num_stages}')
        if len(stage_with_attention) != num_stages:
            raise ValueError(
                f'ELAResNet: stage_with_attention has '
                f'{len(stage_with_attention)} entries; expected num_stages='
                f'{num_stages}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'ELAResNet: drop_path_rate={drop_path_rate} '
                             'must be in [0, 1)')
        block = self.arch_settings[depth][0]
        base = kwargs.get('base_channels', 64)
        channels = [base * 2**i * block.expansion for i in range(num_stages)]
        bad = [c for c, a in zip(channels, stage_with_attention)
               if a and (not isinstance(dim_per_head, int) or dim_per_head <= 0
                         or c % dim_per_head)]
        if bad:
            allowed = sorted({d for d in range(1, min(channels) + 1)
                              if all(c % d == 0 for c in channels)})
            raise ValueError(
                f'ELAResNet: dim_per_head={dim_per_head!r} must divide the '
                f'channels of every attention stage {channels}; '
                f'allowed values include {allowed[-6:]}')

    def train(self, mode: bool = True) -> 'ELAResNet':
        """Like ResNet.train; attention norms of trainable stages keep training."""
        super().train(mode)
        if mode and self.norm_eval:
            for i, layer_name in enumerate(self.res_layers):
                attn = getattr(self, layer_name).attn
                if attn is not None and i >= self.frozen_stages:
                    for m in attn.modules():
                        if isinstance(m, _BatchNorm):
                            m.train()
        return self
