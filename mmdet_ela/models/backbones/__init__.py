from .ela_resnet import ELAResLayer, ELAResNet

__all__ = ['ELAResLayer', 'ELAResNet']
