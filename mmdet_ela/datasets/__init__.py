"""Datasets shipped with mmdet_ela: synthetic detection tasks."""
from .context_shapes import CONTEXT_CLASSES, render_context_image
from .shapes import CLASSES, render_image
from .writer import TASKS, make_shapes_dataset

__all__ = [
    'CLASSES', 'CONTEXT_CLASSES', 'TASKS', 'make_shapes_dataset',
    'render_context_image', 'render_image'
]
