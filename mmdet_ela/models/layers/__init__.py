from .attention_stack import LayerAttentionStack
from .layer_attention import (DEFAULT_NORM_CFG, DEFAULT_VALUE_STRIDE,
                              LayerAttention, LayerAttentionMemory,
                              build_attention_norm, check_compile,
                              check_drop_path_rate, check_recompute_outputs,
                              check_recompute_values, check_value_conv,
                              check_value_stride, eca_kernel_size)

__all__ = [
    'LayerAttention', 'LayerAttentionMemory', 'LayerAttentionStack',
    'DEFAULT_NORM_CFG', 'DEFAULT_VALUE_STRIDE', 'build_attention_norm',
    'check_compile', 'check_drop_path_rate', 'check_recompute_outputs',
    'check_recompute_values', 'check_value_conv', 'check_value_stride',
    'eca_kernel_size'
]
