from .ela_fpn import ELAFPN

__all__ = ['ELAFPN']
