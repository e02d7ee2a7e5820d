"""Does a detector read the context task's key? Two COCO mAPs of one set of
detections.

In the context task (``mmdet_ela.datasets.context_shapes``) a class is a
shape and the image's key. Evaluating the same detections twice tells the two
apart:

- ``mAP``: the task as labelled (6 classes);
- ``shape_mAP``: both keys of each shape merged into one class (3 classes), so
  a box with the right shape and the wrong key counts as correct. A detector
  unsure of the key boxes one object as both keys (class-wise NMS keeps one
  box per class); merged, the second would be a false positive. So the merged
  detections go through NMS again within each merged class (IoU 0.5, the
  shipped configs' NMS threshold), as a 3-class detector's would.

A model that reads the key perfectly has ``mAP == shape_mAP``; one that
ignores it loses much of ``mAP`` (each shape's two classes get confused) while
``shape_mAP`` stays. ``key_gap = shape_mAP - mAP`` is what the key costs it.

``key_accuracy`` asks the same directly: for each labelled object, take the
best-scoring detection of its shape (either key) at IoU >= 0.5; how often is
its key right? 0.5 is chance, 1.0 reads every key.
"""
import contextlib
import copy
import io
import json
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..datasets.context_shapes import CONTEXT_CLASSES, SHAPES

__all__ = [
    'detections_to_coco', 'merge_keys', 'coco_map', 'key_accuracy',
    'context_maps'
]


def detections_to_coco(results: Sequence[dict],
                       cat_ids: Sequence[int]) -> List[dict]:
    """mmdet predictions (``DumpDetResults`` records) as COCO detections.

    Args:
        results: one dict per image with ``img_id`` and ``pred_instances``
            (``bboxes`` [K, 4] xyxy, ``scores`` [K], ``labels`` [K], 0-based
            class indices).
        cat_ids: the COCO category id of each class index.

    Returns:
        list[dict]: ``image_id``, ``category_id``, ``bbox`` (xywh),
        ``score``.
    """
    out = []
    for res in results:
        pred = res['pred_instances']
        boxes = np.asarray(pred['bboxes'], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(pred['scores'], dtype=np.float64).reshape(-1)
        labels = np.asarray(pred['labels']).reshape(-1)
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            out.append(
                dict(
                    image_id=int(res['img_id']),
                    category_id=int(cat_ids[int(label)]),
                    bbox=[
                        float(x0),
                        float(y0),
                        float(x1 - x0),
                        float(y1 - y0)
                    ],
                    score=float(score)))
    return out


def _shape_id(cat_id: int) -> int:
    """The merged (shape) id of a context category id: ids run keys outer,
    shapes inner (as ``CONTEXT_CLASSES``), so ``(c - 1) % 3 + 1``."""
    return (int(cat_id) - 1) % len(SHAPES) + 1


def merge_keys(gt: dict, detections: List[dict]) -> Tuple[dict, List[dict]]:
    """Ground truth and detections with each shape's keys in one class.

    The merged detections go through NMS per image and merged class, so a
    box given as both keys is one box.

    Returns:
        tuple: ``(gt, detections)``, new objects.
    """
    gt = copy.deepcopy(gt)
    gt['categories'] = [
        dict(id=i, name=name, supercategory='shape')
        for i, name in enumerate(SHAPES, 1)
    ]
    for ann in gt['annotations']:
        ann['category_id'] = _shape_id(ann['category_id'])
    detections = [
        dict(d, category_id=_shape_id(d['category_id'])) for d in detections
    ]
    return gt, _nms(detections)


def _iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with [K, 4] xywh boxes."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return inter / np.maximum(union, 1e-12)


def _nms(detections: List[dict], iou: float = 0.5) -> List[dict]:
    """Greedy NMS per image and class: drop a box that overlaps a better one
    at more than ``iou``."""
    groups: Dict[tuple, List[dict]] = {}
    for d in detections:
        groups.setdefault((d['image_id'], d['category_id']), []).append(d)
    out = []
    for dets in groups.values():
        dets = sorted(dets, key=lambda d: -d['score'])
        kept: List[dict] = []
        for d in dets:
            boxes = np.array([k['bbox'] for k in kept]).reshape(-1, 4)
            if not len(kept) or _iou(d['bbox'], boxes).max() <= iou:
                kept.append(d)
        out.extend(kept)
    return out


def key_accuracy(gt: dict,
                 detections: List[dict],
                 iou: float = 0.5) -> Dict[str, float]:
    """How often the best detection of an object's shape has its key.

    Returns:
        dict: ``key_accuracy`` (over the objects found) and ``found`` (the
        fraction of objects with a detection of their shape at ``iou``).
    """
    by_image: Dict[int, List[dict]] = {}
    for d in detections:
        by_image.setdefault(d['image_id'], []).append(d)
    found = right = 0
    for ann in gt['annotations']:
        shape = _shape_id(ann['category_id'])
        dets = [
            d for d in by_image.get(ann['image_id'], [])
            if _shape_id(d['category_id']) == shape
        ]
        if not dets:
            continue
        boxes = np.array([d['bbox'] for d in dets])
        scores = np.array([d['score'] for d in dets])
        scores[_iou(ann['bbox'], boxes) < iou] = -np.inf
        best = int(scores.argmax())
        if np.isfinite(scores[best]):
            found += 1
            right += dets[best]['category_id'] == ann['category_id']
    total = len(gt['annotations'])
    return dict(
        key_accuracy=right / found if found else float('nan'),
        found=found / total if total else float('nan'))


def coco_map(gt: dict, detections: List[dict]) -> float:
    """COCO bbox mAP (IoU 0.50:0.95) of ``detections`` on ``gt``;
    0.0 without detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    if not detections:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dets = coco.loadRes(copy.deepcopy(detections))
        ev = COCOeval(coco, dets, 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[0]), 0.0)


def context_maps(ann_file: str, results: Sequence[dict],
                 classes: Sequence[str]) -> Dict[str, float]:
    """``mAP``, ``shape_mAP``, ``key_gap``, ``key_accuracy`` and ``found`` of
    mmdet predictions on the context task's annotation file ``ann_file``.

    Args:
        ann_file: the COCO file of the context task's split.
        results: ``DumpDetResults`` records of that split.
        classes: the model's classes (``metainfo.classes``): label ``i`` is
            the category named ``classes[i]``, as in mmdet.

    Raises:
        ValueError: the file's or the model's classes are not the context
            task's.
    """
    with open(ann_file) as f:
        gt = json.load(f)
    ids = {c['name']: c['id'] for c in gt['categories']}
    for owner, names in ((ann_file, list(ids)), ('classes', list(classes))):
        if sorted(names) != sorted(CONTEXT_CLASSES):
            raise ValueError(f'{owner}: classes {names} are not the context '
                             f'task\'s {list(CONTEXT_CLASSES)}')
    if [ids[n] for n in CONTEXT_CLASSES
        ] != list(range(1,
                        len(CONTEXT_CLASSES) + 1)):
        raise ValueError(f'{ann_file}: category ids must follow '
                         f'{list(CONTEXT_CLASSES)} from 1')
    detections = detections_to_coco(results, [ids[n] for n in classes])
    full = coco_map(gt, detections)
    shape = coco_map(*merge_keys(gt, detections))
    return dict(
        mAP=full,
        shape_mAP=shape,
        key_gap=shape - full,
        **key_accuracy(gt, detections))
