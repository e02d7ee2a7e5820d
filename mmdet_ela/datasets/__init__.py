"""Datasets shipped with mmdet_ela."""
from .shapes import CLASSES, make_shapes_dataset, render_image

__all__ = ['CLASSES', 'make_shapes_dataset', 'render_image']
