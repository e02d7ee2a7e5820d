from .hooks import ELAPruneHook
from .optim import drop_parameters, rewrap_ddp

__all__ = ['ELAPruneHook', 'drop_parameters', 'rewrap_ddp']
