from .checkpoint import (allow_mmengine_checkpoint_types,
                         check_checkpoint_file)
from .dist import ELADistributedDataParallel, setup_distributed

__all__ = [
    'allow_mmengine_checkpoint_types', 'check_checkpoint_file',
    'ELADistributedDataParallel',
    'setup_distributed'
]
