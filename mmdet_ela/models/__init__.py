from .backbones import ELAResLayer, ELAResNet
from .necks import ELAFPN
from .layers import LayerAttention, LayerAttentionMemory, LayerAttentionStack
from .pruning import (apply_masks, attention_stacks, count_units, get_masks,
                      record_attention, set_recording, unwrap)

__all__ = [
    'ELAResNet', 'ELAResLayer', 'ELAFPN', 'LayerAttention', 'LayerAttentionMemory',
    'LayerAttentionStack', 'apply_masks', 'attention_stacks', 'count_units',
    'get_masks', 'record_attention', 'set_recording', 'unwrap'
]
