from .ela_prune_hook import ELAPruneHook

__all__ = ['ELAPruneHook']
