"""The synthetic context task: classes told apart only by a key elsewhere.

A harder variant of the shapes task, built to need image-level context. Each
image carries one *key*, a plus or an arrow, somewhere on it (not annotated).
The objects are circles, squares and triangles, and an object's class is its
shape *and* the image's key: ``circle-plus`` and ``circle-arrow`` look
exactly alike and differ only in the key, which may be anywhere in the image.
A detector that reads the shapes but not the key confuses each pair
(``mmdet_ela.analysis.context_eval`` measures how much).

On top of the shapes task's backgrounds it adds clutter and occlusion:

- 0-3 distractors (stars and hexagons, not annotated) under the objects;
- objects may be hidden down to 35 % visible (50 % in the shapes task);
- the key stays at least 90 % visible, at 14-24 pixels.
"""
from typing import List, Tuple

import numpy as np

from .shapes import Canvas, object_record

KEYS: Tuple[str, ...] = ('plus', 'arrow')
SHAPES: Tuple[str, ...] = ('circle', 'square', 'triangle')
DISTRACTORS: Tuple[str, ...] = ('star', 'hexagon')
#: ``<shape>-<key>``, keys outer: ids 1-3 go with the plus, 4-6 the arrow.
CONTEXT_CLASSES: Tuple[str, ...] = tuple(f'{shape}-{key}' for key in KEYS
                                         for shape in SHAPES)

_KEY_EXTENT = (14.0, 24.0)
_KEY_MIN_VISIBLE = 0.9
_MIN_VISIBLE = 0.35


def render_context_image(
        size: int, rng: np.random.Generator) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image of the context task; return it (uint8 RGB, HxWx3) and
    its objects (dicts as in ``shapes.render_image``).

    The key is drawn first and kept visible; then the distractors, which
    later shapes may cover; then 1-6 objects. An image whose key found no
    place has no objects, so no label ever lacks its key.
    """
    canvas = Canvas(size, rng)
    key = int(rng.integers(len(KEYS)))
    placed = canvas.draw(
        KEYS[key],
        rng,
        min_visible=_KEY_MIN_VISIBLE,
        extent=_KEY_EXTENT,
        attempts=100)
    for _ in range(int(rng.integers(0, 4))):
        canvas.draw(
            DISTRACTORS[rng.integers(len(DISTRACTORS))], rng, min_visible=0.0)
    objects: List[dict] = []
    for _ in range(int(rng.integers(1, 7)) if placed is not None else 0):
        shape = int(rng.integers(len(SHAPES)))
        poly = canvas.draw(SHAPES[shape], rng, min_visible=_MIN_VISIBLE)
        if poly is not None:
            objects.append(object_record(key * len(SHAPES) + shape + 1, poly))
    return canvas.finish(rng), objects
