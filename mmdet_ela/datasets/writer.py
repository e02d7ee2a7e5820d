"""Write a synthetic detection dataset (COCO format) to disk.

Two tasks: ``shapes`` (four classes of filled shapes, see ``shapes.py``) and
``context`` (six classes told apart by a key elsewhere in the image, with
clutter and occlusion, see ``context_shapes.py``).

Every image is drawn from its own ``numpy.random.Generator`` seeded with
``(seed, split, index)``, so the output does not depend on generation order and
the same parameters give byte-identical files.

Layout under ``out_dir``::

    train/000000.png ...
    val/000000.png ...
    annotations/instances_train.json
    annotations/instances_val.json
    meta.json
"""
import json
import os
import os.path as osp
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np

from .context_shapes import CONTEXT_CLASSES, render_context_image
from .shapes import CLASSES, render_image

#: Bump when the drawing code changes, so existing datasets get regenerated.
GENERATOR_VERSION = 1

Renderer = Callable[[int, np.random.Generator], Tuple[np.ndarray, List[dict]]]
#: task name -> (class names, image renderer)
TASKS: Dict[str, Tuple[Tuple[str, ...], Renderer]] = {
    'shapes': (CLASSES, render_image),
    'context': (CONTEXT_CLASSES, render_context_image),
}

_SPLITS = {'train': 0, 'val': 1}


def _coco_json(images: List[dict], annotations: List[dict], task: str) -> str:
    """Serialise a COCO dict deterministically."""
    description = 'mmdet_ela synthetic shapes'
    if task != 'shapes':
        description += f' ({task} task)'
    data = dict(
        info=dict(description=description, version=str(GENERATOR_VERSION)),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(TASKS[task][0])
        ],
    )
    return json.dumps(data, separators=(',', ':'))


def _write_split(out_dir: str, split: str, num: int, img_size: int, seed: int,
                 task: str, progress: bool) -> Tuple[str, int]:
    """Draw and write one split; return the annotation path, object count."""
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    for name in os.listdir(img_dir):  # drop stale images from an earlier run
        if name.endswith('.png'):
            os.remove(osp.join(img_dir, name))
    images: List[dict] = []
    annotations: List[dict] = []
    bar = None
    if progress and num > 0:
        from mmengine.utils import ProgressBar
        print(f'{task}: writing {num} {split} images to {img_dir}')
        bar = ProgressBar(num)
    for index in range(num):
        rng = np.random.default_rng([seed, _SPLITS[split], index])
        img, objects = TASKS[task][1](img_size, rng)
        file_name = f'{index:06d}.png'
        cv2.imwrite(
            osp.join(img_dir, file_name), img[..., ::-1],
            [cv2.IMWRITE_PNG_COMPRESSION, 3])
        image_id = index + 1
        images.append(
            dict(
                id=image_id,
                file_name=file_name,
                width=img_size,
                height=img_size))
        for obj in objects:
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=obj['category_id'],
                    bbox=[round(v, 2) for v in obj['bbox']],
                    area=round(obj['area'], 2),
                    iscrowd=0,
                    segmentation=[[
                        round(float(v), 2) for v in obj['polygon'].reshape(-1)
                    ]],
                ))
        if bar is not None:
            bar.update()
    if bar is not None:
        print()
    ann_path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    os.makedirs(osp.dirname(ann_path), exist_ok=True)
    with open(ann_path, 'w') as f:
        f.write(_coco_json(images, annotations, task))
    return ann_path, len(annotations)


def make_shapes_dataset(out_dir: str,
                        num_train: int = 400,
                        num_val: int = 100,
                        img_size: int = 160,
                        seed: int = 0,
                        progress: bool = True,
                        task: str = 'shapes') -> Dict[str, str]:
    """Write the synthetic shapes dataset under ``out_dir`` unless it is
    already there.

    If ``out_dir/meta.json`` records the same parameters (and generator
    version) and the annotation files exist, nothing is written; otherwise the
    dataset is (re)generated. ``meta.json`` is written last, so an interrupted
    run is redone.

    Args:
        out_dir: Root folder of the dataset.
        num_train: Number of training images.
        num_val: Number of validation images.
        img_size: Side of the square images in pixels.
        seed: Non-negative base seed; image ``i`` of a split uses its own
            generator seeded with ``(seed, split, i)``.
        progress: Show a progress bar while writing.
        task: ``'shapes'`` or ``'context'`` (see the module docstring).

    Returns:
        Paths: ``root``, ``train_img_dir``, ``val_img_dir``, ``train_ann``,
        ``val_ann`` and ``meta``.
    """
    if task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {task!r}')
    if seed < 0:
        raise ValueError('seed must be non-negative')
    if img_size < 32:
        raise ValueError('img_size must be at least 32')
    paths = dict(
        root=out_dir,
        train_img_dir=osp.join(out_dir, 'train'),
        val_img_dir=osp.join(out_dir, 'val'),
        train_ann=osp.join(out_dir, 'annotations', 'instances_train.json'),
        val_ann=osp.join(out_dir, 'annotations', 'instances_val.json'),
        meta=osp.join(out_dir, 'meta.json'),
    )
    params = dict(
        generator=task,
        version=GENERATOR_VERSION,
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        img_size=img_size,
        classes=list(TASKS[task][0]))
    if all(osp.isfile(paths[k]) for k in ('meta', 'train_ann', 'val_ann')):
        try:
            with open(paths['meta']) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
        if {k: old.get(k) for k in params} == params:
            return paths
    if osp.isfile(paths['meta']):
        os.remove(paths['meta'])

    counts = {}
    for split, num in (('train', num_train), ('val', num_val)):
        _, counts[f'{split}_objects'] = _write_split(out_dir, split, num,
                                                     img_size, seed, task,
                                                     progress)
    with open(paths['meta'], 'w') as f:
        json.dump(dict(params, **counts), f, indent=2)
        f.write('\n')
    return paths
