from .checkpoint import allow_mmengine_checkpoint_types
from .dist import ELADistributedDataParallel, setup_distributed

__all__ = [
    'allow_mmengine_checkpoint_types', 'ELADistributedDataParallel',
    'setup_distributed'
]
