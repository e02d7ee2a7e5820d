"""The context task's two mAPs, on hand-made detections (real pycocotools)."""
import json
from pathlib import Path

import numpy as np
import pytest

from mmdet_ela.analysis.context_eval import context_maps, merge_keys
from mmdet_ela.datasets import CONTEXT_CLASSES as NAMES

pytest.importorskip('pycocotools')

# (image id, category id, xywh box)
OBJECTS = [(1, 1, [10, 10, 20, 20]), (1, 2, [50, 50, 30, 30]),
           (2, 6, [5, 40, 25, 25]), (2, 4, [60, 10, 15, 15])]


def _ann_file(tmp_path) -> str:
    gt = dict(
        images=[dict(id=i, width=100, height=100) for i in (1, 2)],
        annotations=[
            dict(
                id=k,
                image_id=img,
                category_id=cat,
                bbox=box,
                area=box[2] * box[3],
                iscrowd=0) for k, (img, cat, box) in enumerate(OBJECTS, 1)
        ],
        categories=[dict(id=i, name=n) for i, n in enumerate(NAMES, 1)])
    path = tmp_path / 'instances_val.json'
    path.write_text(json.dumps(gt))
    return str(path)


def _results(key_shift: int):
    """One exact box per object; labels moved to the other key by
    ``key_shift`` (0 or 3); mmdet's 0-based labels, xyxy boxes."""
    out = []
    for img in (1, 2):
        objs = [o for o in OBJECTS if o[0] == img]
        out.append(
            dict(
                img_id=img,
                pred_instances=dict(
                    bboxes=np.array([[x, y, x + w, y + h]
                                     for _, _, (x, y, w, h) in objs]),
                    scores=np.full(len(objs), 0.9),
                    labels=np.array([(c - 1 + key_shift) % 6
                                     for _, c, _ in objs]))))
    return out


def test_right_key_and_wrong_key(tmp_path):
    ann = _ann_file(tmp_path)
    right = context_maps(ann, _results(0), NAMES)
    assert right['mAP'] == pytest.approx(1.0)
    assert right['shape_mAP'] == pytest.approx(1.0)
    assert right['key_gap'] == pytest.approx(0.0)
    assert right['key_accuracy'] == right['found'] == 1.0
    # every shape right, every key wrong: nothing counts until keys merge
    wrong = context_maps(ann, _results(3), NAMES)
    assert wrong['mAP'] == pytest.approx(0.0)
    assert wrong['shape_mAP'] == pytest.approx(1.0)
    assert wrong['key_gap'] == pytest.approx(1.0)
    assert wrong['key_accuracy'] == 0.0 and wrong['found'] == 1.0


def test_both_keys_on_one_box(tmp_path):
    """A box given as both keys: the right key scores higher on half the
    objects. Merged, it is one box per object (no false positive)."""
    ann = _ann_file(tmp_path)
    both = _results(0)
    for res, flip in zip(both, (False, True)):
        pred = res['pred_instances']
        k = len(pred['labels'])
        right = np.full(k, 0.4 if flip else 0.9)
        pred['bboxes'] = np.concatenate([pred['bboxes'], pred['bboxes']])
        pred['scores'] = np.concatenate([right, 1.3 - right])
        pred['labels'] = np.concatenate(
            [pred['labels'], (pred['labels'] + 3) % 6])
    maps = context_maps(ann, both, NAMES)
    assert maps['shape_mAP'] == pytest.approx(1.0)
    assert maps['key_accuracy'] == 0.5 and maps['found'] == 1.0
    assert 0.0 < maps['mAP'] < 1.0


def test_merge_keys_names_and_ids(tmp_path):
    gt = json.loads(Path(_ann_file(tmp_path)).read_text())
    det = dict(image_id=1, category_id=5, score=1.0, bbox=[0, 0, 9, 9])
    merged, dets = merge_keys(gt, [det, dict(det, category_id=2, score=.5)])
    assert [c['name']
            for c in merged['categories']] == ['circle', 'square', 'triangle']
    assert [a['category_id'] for a in merged['annotations']] == [1, 2, 3, 1]
    assert len(dets) == 1 and dets[0]['category_id'] == 2  # one kept
    assert gt['annotations'][2]['category_id'] == 6  # input unchanged


def test_labels_follow_class_names(tmp_path):
    """Labels index the model's classes by name, in the model's order."""
    ann = _ann_file(tmp_path)
    order = NAMES[3:] + NAMES[:3]  # the model lists the arrow classes first
    maps = context_maps(ann, _results(3), order)
    assert maps['mAP'] == pytest.approx(1.0)
    with pytest.raises(
            ValueError, match="classes: classes .* are not the "
            "context task's"):
        context_maps(ann, _results(0), ('circle', 'square', 'triangle'))
