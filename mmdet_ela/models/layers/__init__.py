from .attention_stack import LayerAttentionStack
from .layer_attention import (LayerAttention, LayerAttentionMemory,
                              attention_norm_cfg, build_attention_norm,
                              check_drop_path_rate, check_value_conv,
                              eca_kernel_size)

__all__ = [
    'LayerAttention', 'LayerAttentionMemory', 'LayerAttentionStack',
    'attention_norm_cfg', 'build_attention_norm', 'check_drop_path_rate',
    'check_value_conv', 'eca_kernel_size'
]
