"""ELA ResNet: mmdet's ResNet with a layer-attention unit after every block."""
from contextlib import nullcontext
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmdet.models.backbones.resnet import ResLayer, ResNet
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import (DEFAULT_NORM_CFG, DEFAULT_VALUE_STRIDE,
                      LayerAttentionMemory, LayerAttentionStack, check_compile,
                      check_drop_path_rate, check_recompute_outputs,
                      check_recompute_values, check_value_conv,
                      check_value_stride)
from ..layers.attention_stack import guard_mask_loading


class ELAResLayer(BaseModule):
    """A ResNet stage whose blocks share one layer-attention memory.

    The blocks keep mmdet's names (``0``, ``1``, ...), so
    ``layer1.0.conv1.weight`` means the same as in
    :class:`mmdet.models.ResLayer`; the units live in ``attn``. Indexing,
    slicing, ``len`` and iteration behave as on ``nn.Sequential``.

    Args:
        blocks (nn.Sequential): the stage built by mmdet's ``ResLayer``.
        attn (LayerAttentionStack, optional): one unit per block; None = plain
            stage.
        recompute_outputs (bool, optional): the next block saves each unit's
            output as an :class:`~mmdet_ela.models.layers.replay.OutputReplay`
            (computed again in backward) instead of keeping it; the last
            unit's output is the stage's. None: on CUDA only. Default: None.
    """

    def __init__(self,
                 blocks: nn.Sequential,
                 attn: Optional[LayerAttentionStack],
                 recompute_outputs: Optional[bool] = None) -> None:
        super().__init__()
        for name, block in blocks.named_children():
            self.add_module(name, block)
        self.num_blocks = len(blocks)
        self.attn = attn
        self.recompute_outputs = recompute_outputs

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: Union[int, slice]):
        if isinstance(index, slice):
            return nn.Sequential(*(getattr(self, str(i))
                                   for i in range(self.num_blocks)[index]))
        return getattr(self, str(range(self.num_blocks)[index]))

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[i] for i in range(self.num_blocks))

    def forward(self, x: Tensor) -> Tensor:
        """[N, C_in, H, W] -> [N, C_out, H', W']."""
        memory = LayerAttentionMemory(chained=True)
        replay = None  # the previous unit's output, computed again
        for i, block in enumerate(self):
            with replay.replacing() if replay is not None else nullcontext():
                x = block(x)
            replay = None
            if self.attn is None:
                continue
            if i < len(self) - 1 and self._recomputes_outputs(x):
                replay = self.attn.output_replay(i, x, memory)
            x = self.attn(i, x, memory, replay)
            if replay is not None:
                replay.bind(x, memory)
        return x

    def _recomputes_outputs(self, x: Tensor) -> bool:
        """Whether the units' outputs are computed again in backward for
        block input ``x``: ``recompute_outputs``, None = on CUDA; only with
        autograd, and not while tracing (FLOP counting)."""
        wanted = self.recompute_outputs
        if wanted is None:
            wanted = x.device.type == 'cuda'
        return (wanted and x.requires_grad and torch.is_grad_enabled()
                and not torch.jit.is_tracing())


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@MODELS.register_module()
class ELAResNet(ResNet):
    """ResNet backbone with Efficient Layer Attention inside its stages.

    Takes every argument of :class:`mmdet.models.ResNet` (``depth``,
    ``out_indices``, ``frozen_stages``, ``norm_cfg``, ``norm_eval``,
    ``with_cp``, ``style``, ``dcn``, ``stage_with_dcn``, ``plugins``,
    ``zero_init_residual``, ``init_cfg`` ...) and keeps its parameter names, so
    its checkpoints (e.g. ``torchvision://resnet50``) load into the residual
    path. The attention output norms start at zero: the network computes
    exactly what ResNet computes, from construction on.

    Stages frozen by ``frozen_stages`` carry no units: a frozen unit would stay
    the identity for good and cost time at every step. A dense checkpoint of
    an older version with such (zero, identity) units loads: their keys are
    dropped on load. Bad arguments raise ``ValueError`` naming the option and
    the allowed values (where mmdet's ResNet raises ``KeyError`` or a bare
    ``AssertionError``).

    Args:
        depth (int): 18, 34, 50, 101 or 152.
        dim_per_head (int): channels per attention head. Must divide the output
            channels of every stage that carries attention. Default: 32.
        stage_with_attention (Sequence[bool], optional): which stages carry
            units. Default: every stage that ``frozen_stages`` leaves
            trainable. A unit in a frozen stage is a ``ValueError``.
        drop_path_rate (float): stochastic depth on the attention branches,
            rising linearly from 0 to this value over all units. Default: 0.
        attn_norm_cfg (dict): norm of the attention outputs. Default:
            ``dict(type='Affine')``, a per-channel affine without batch
            statistics (nothing to synchronise across GPUs). mmdet-ela 0.1
            used ``dict(type='BN')``; BN, SyncBN and GN still build. These
            norms are new layers without pretrained statistics: ``norm_eval``
            leaves them in training mode.
        attn_value_conv (bool): the units' depthwise value convolution; False
            uses the block outputs themselves as values. Default: True.
        attn_value_stride (int): 1: the units' values, weighted sum and
            output at the features' resolution; 2: at half of it (a stride-2
            value convolution, the output upsampled by 2 x 2 blocks), cheaper.
            Default: 1.
        attn_compile (bool): run the units through ``torch.compile``: all
            but the value convolution, or only the small ops (query, key,
            attention, mixing weights) where values or outputs are made
            again in backward (the first steps compile; pruning compiles
            again). Affine output only. Default: False.
        attn_recompute_values (bool, optional): the units make their values
            again in backward instead of keeping them from forward: one
            full-size tensor less per unit between forward and backward, one
            depthwise convolution more per unit. None: on CUDA only (on CPU
            that convolution is the unit's costliest op). True needs the
            affine output and the value convolution. Default: None.
        attn_recompute_outputs (bool, optional): each unit's output (but
            the last of a stage) is computed again in backward, where the
            next block's first convolution needs it, instead of being kept
            from forward: one full-size tensor less per unit between forward
            and backward, one more forward of the unit in backward. Same
            values bit for bit. Units with drop path active keep theirs.
            None: on CUDA only. True needs the affine output. Default:
            None.
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
                 attn_norm_cfg: dict = DEFAULT_NORM_CFG,
                 attn_value_conv: bool = True,
                 attn_value_stride: int = DEFAULT_VALUE_STRIDE,
                 attn_compile: bool = False,
                 attn_recompute_values: Optional[bool] = None,
                 attn_recompute_outputs: Optional[bool] = None,
                 **kwargs) -> None:
        num_stages = kwargs.get('num_stages', 4)
        frozen = kwargs.get('frozen_stages', -1)
        self._check_args(depth, num_stages, kwargs, drop_path_rate)
        check_value_conv('ELAResNet', attn_value_conv)
        check_value_stride('ELAResNet', attn_value_stride)
        check_compile('ELAResNet', attn_compile, attn_norm_cfg)
        check_recompute_values('ELAResNet', attn_recompute_values,
                               attn_norm_cfg, attn_value_conv)
        check_recompute_outputs('ELAResNet', attn_recompute_outputs,
                                attn_norm_cfg)
        if stage_with_attention is None:
            stage_with_attention = [i >= frozen for i in range(num_stages)]
        stage_with_attention = self._check_stages(stage_with_attention,
                                                  num_stages, frozen)
        self._check_dim_per_head(depth, num_stages, kwargs, dim_per_head,
                                 stage_with_attention)
        # Read by make_res_layer, which ResNet.__init__ calls for each stage.
        self.dim_per_head = dim_per_head
        self.stage_with_attention = stage_with_attention
        self.drop_path_rate = drop_path_rate
        self.attn_value_conv = attn_value_conv
        self.attn_value_stride = attn_value_stride
        self.attn_compile = attn_compile
        self.attn_recompute_values = attn_recompute_values
        self.attn_recompute_outputs = attn_recompute_outputs
        self.attn_norm_cfg = attn_norm_cfg
        blocks = self.arch_settings[depth][1][:num_stages]
        num_units = sum(n for n, a in zip(blocks, stage_with_attention) if a)
        self._drop_path_rates = iter([
            drop_path_rate * i / max(num_units - 1, 1)
            for i in range(num_units)
        ])
        super().__init__(depth, **kwargs)
        # Validate every stage's pruning mask before any stage prunes.
        guard_mask_loading(self)

    def make_res_layer(self, **kwargs) -> ELAResLayer:
        """mmdet's ResLayer, wrapped with the stage's attention units."""
        # ResNet.__init__ appends to res_layers after each call: its length
        # is the index of the stage being built.
        stage = len(self.res_layers)
        blocks = ResLayer(**kwargs)
        attn = None
        if self.stage_with_attention[stage]:
            channels = kwargs['planes'] * self.block.expansion
            attn = LayerAttentionStack(
                [channels] * len(blocks),
                dim_per_head=self.dim_per_head,
                norm_cfg=self.attn_norm_cfg,
                drop_path_rates=[next(self._drop_path_rates) for _ in blocks],
                value_conv=self.attn_value_conv,
                value_stride=self.attn_value_stride,
                with_cp=kwargs.get('with_cp', False),
                compiled=self.attn_compile,
                recompute_values=self.attn_recompute_values)
        return ELAResLayer(blocks, attn, self.attn_recompute_outputs)

    def _check_args(self, depth, num_stages, kwargs, drop_path_rate) -> None:
        if not _is_int(depth) or depth not in self.arch_settings:
            raise ValueError(f'ELAResNet: depth={depth!r} is not supported; '
                             f'allowed values: {sorted(self.arch_settings)}')
        if not _is_int(num_stages) or not 1 <= num_stages <= 4:
            raise ValueError(
                f'ELAResNet: num_stages={num_stages!r} must be in 1..4')
        out_indices = kwargs.get('out_indices', (0, 1, 2, 3))
        if (len(out_indices) == 0
                or any(not _is_int(i) or not 0 <= i < num_stages
                       for i in out_indices)):
            raise ValueError(
                f'ELAResNet: out_indices={tuple(out_indices)} is invalid; '
                f'allowed values are stage indices in 0..{num_stages - 1}')
        frozen = kwargs.get('frozen_stages', -1)
        if not _is_int(frozen) or not -1 <= frozen <= num_stages:
            raise ValueError(f'ELAResNet: frozen_stages={frozen!r} must be '
                             f'an integer in -1..{num_stages}')
        check_drop_path_rate('ELAResNet', drop_path_rate)

    @staticmethod
    def _check_stages(stages, num_stages: int, frozen: int) -> tuple:
        if (isinstance(stages,
                       (str, bytes)) or not isinstance(stages, Sequence)
                or any(not isinstance(a, bool) and a not in (0, 1)
                       for a in stages)):
            raise ValueError(
                f'ELAResNet: stage_with_attention={stages!r} must be a list '
                f'of {num_stages} booleans, one per stage')
        if len(stages) != num_stages:
            raise ValueError(
                f'ELAResNet: stage_with_attention has {len(stages)} entries; '
                f'expected num_stages={num_stages}')
        stages = tuple(bool(a) for a in stages)
        frozen_with_units = [
            i for i, a in enumerate(stages) if a and i < frozen
        ]
        if frozen_with_units:
            raise ValueError(
                f'ELAResNet: stage_with_attention={stages} asks for units in '
                f'stages {frozen_with_units}, which frozen_stages={frozen} '
                'freezes: a frozen unit stays the identity for good and '
                'only costs time. Leave those stages False (or omit '
                'stage_with_attention) or lower frozen_stages')
        return stages

    def _check_dim_per_head(self, depth, num_stages, kwargs, dim_per_head,
                            stages) -> None:
        block = self.arch_settings[depth][0]
        base = kwargs.get('base_channels', 64)
        channels = [base * 2**i * block.expansion for i in range(num_stages)]
        attn_channels = [c for c, a in zip(channels, stages) if a]
        if not _is_int(dim_per_head) or dim_per_head <= 0 or any(
                c % dim_per_head for c in attn_channels):
            allowed = sorted({
                d
                for d in range(1,
                               min(attn_channels or channels) + 1)
                if all(c % d == 0 for c in attn_channels or channels)
            })
            raise ValueError(
                f'ELAResNet: dim_per_head={dim_per_head!r} must be a positive '
                'integer dividing the channels of every attention stage '
                f'{attn_channels}; allowed values include {allowed[-6:]}')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys,
                              error_msgs) -> None:
        # Checkpoints of older versions carry units in frozen stages. Those
        # never trained: their output norm is zero, so they are the identity
        # and dropping them changes nothing. Trained units are left for the
        # usual unexpected-key report.
        for i, layer_name in enumerate(self.res_layers):
            if getattr(self, layer_name).attn is not None:
                continue
            unit_prefix = f'{prefix}{layer_name}.attn.'
            keys = [k for k in state_dict if k.startswith(unit_prefix)]
            norm_params = [
                state_dict[k] for k in keys if k.endswith(('.weight', '.bias'))
                and k.split('.')[-2] not in ('query', 'key', 'value')
            ]
            if keys and all(not t.any() for t in norm_params):
                for k in keys:
                    del state_dict[k]
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def train(self, mode: bool = True) -> 'ELAResNet':
        """Like ResNet.train; the attention norms keep training."""
        super().train(mode)
        if mode and self.norm_eval:
            for layer_name in self.res_layers:
                attn = getattr(self, layer_name).attn
                if attn is None:
                    continue
                for m in attn.modules():
                    if isinstance(m, _BatchNorm):
                        m.train()
        return self
