from .hooks import ELAPruneHook
from .optim import (drop_parameters, drop_stale_parameters, rewrap_ddp,
                    sync_optimizer_and_ddp)

__all__ = [
    'ELAPruneHook', 'drop_parameters', 'drop_stale_parameters', 'rewrap_ddp',
    'sync_optimizer_and_ddp'
]
