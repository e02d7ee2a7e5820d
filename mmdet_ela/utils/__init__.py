from .allocator import KEEP_FREED_MEMORY, keep_freed_memory
from .checkpoint import (check_checkpoint_file, load_checkpoint_file,
                         register_safe_local_loader, safe_local_loader)
from .dist import (ELADistributedDataParallel, setup_distributed,
                   teardown_distributed)
from .safe_load import (STATISTICS_METHODS, UnsafeCheckpointError,
                        mmengine_checkpoint_globals,
                        mmengine_checkpoint_loading)

__all__ = [
    'KEEP_FREED_MEMORY', 'keep_freed_memory', 'check_checkpoint_file',
    'load_checkpoint_file', 'register_safe_local_loader', 'safe_local_loader',
    'ELADistributedDataParallel', 'setup_distributed', 'teardown_distributed',
    'STATISTICS_METHODS', 'UnsafeCheckpointError',
    'mmengine_checkpoint_globals', 'mmengine_checkpoint_loading'
]
