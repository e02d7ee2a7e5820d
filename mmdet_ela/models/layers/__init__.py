from .attention_stack import LayerAttentionStack
from .layer_attention import (LayerAttention, LayerAttentionMemory,
                              eca_kernel_size)

__all__ = [
    'LayerAttention', 'LayerAttentionMemory', 'LayerAttentionStack',
    'eca_kernel_size'
]
