from .backbones import ELAResLayer, ELAResNet
from .layers import LayerAttention, LayerAttentionMemory, LayerAttentionStack
from .necks import ELAFPN

__all__ = [
    'ELAResNet', 'ELAResLayer', 'ELAFPN', 'LayerAttention',
    'LayerAttentionMemory', 'LayerAttentionStack'
]
