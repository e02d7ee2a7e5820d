"""Tests for the synthetic shapes dataset generator."""
import json
import os
import os.path as osp
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from mmdet_ela.datasets import CLASSES, make_shapes_dataset

TINY = dict(num_train=6, num_val=3, img_size=96, seed=0, progress=False)
# sha256 of the first three 96 px train images of seed 0 and their polygons
PINNED = 'd51a490824932dd3e993378fd8d5d6f597147e2d286327be18ccdc2ff4473b4d'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """A 6 train / 3 val dataset of 96 px images."""
    return make_shapes_dataset(str(tmp_path_factory.mktemp('shapes')), **TINY)


def _read_tree(root: str) -> Dict[str, bytes]:
    """Map every file under ``root`` (relative path) to its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = f.read()
    return out


def test_layout_and_coco(tiny: Dict[str, str]) -> None:
    """Images exist with the right sizes; annotations are valid COCO."""
    coco_mod = pytest.importorskip('pycocotools.coco')
    for split, num in (('train', 6), ('val', 3)):
        coco = coco_mod.COCO(tiny[f'{split}_ann'])
        assert [c['id']
                for c in coco.loadCats(coco.getCatIds())] == [1, 2, 3, 4]
        assert [c['name']
                for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        img_ids = coco.getImgIds()
        assert len(img_ids) == num
        for img_info in coco.loadImgs(img_ids):
            path = osp.join(tiny[f'{split}_img_dir'], img_info['file_name'])
            with Image.open(path) as img:
                assert img.size == (img_info['width'],
                                    img_info['height']) == (96, 96)
                assert img.mode == 'RGB'
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_info['id']))
            assert 1 <= len(anns) <= 6
            for ann in anns:
                x, y, w, h = ann['bbox']
                assert ann['iscrowd'] == 0
                assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96
                assert min(w, h) > 3 and max(w, h) >= 11.9
                assert ann['area'] > 0
                poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
                np.testing.assert_allclose(poly.min(0), [x, y], atol=1e-3)
                np.testing.assert_allclose(
                    poly.max(0), [x + w, y + h], atol=1e-3)
    meta = json.loads(Path(tiny['meta']).read_text())
    assert meta['seed'] == 0
    assert meta['num_train'] == 6 and meta['num_val'] == 3


def test_masks_match_area(tiny: Dict[str, str]) -> None:
    """Rasterised polygons cover about the annotated area."""
    coco_mod = pytest.importorskip('pycocotools.coco')
    coco = coco_mod.COCO(tiny['train_ann'])
    for ann in coco.loadAnns(coco.getAnnIds()):
        mask = coco.annToMask(ann)
        assert abs(float(mask.sum()) - ann['area']) <= max(
            0.1 * ann['area'], 8), ann['id']


def test_classes_and_scales(tmp_path: Path) -> None:
    """A slightly larger set has every class and a range of object sizes."""
    paths = make_shapes_dataset(
        str(tmp_path),
        num_train=30,
        num_val=0,
        img_size=96,
        seed=1,
        progress=False)
    data = json.loads(Path(paths['train_ann']).read_text())
    assert {a['category_id'] for a in data['annotations']} == {1, 2, 3, 4}
    extents = [max(a['bbox'][2:]) for a in data['annotations']]
    assert min(extents) < 20 and max(extents) > 35
    assert len({len(a['segmentation'][0])
                for a in data['annotations']}) == 4  # 64, 4, 3, 10 points
    assert json.loads(Path(paths['val_ann']).read_text())['images'] == []


def test_deterministic(tmp_path: Path, tiny: Dict[str, str]) -> None:
    """Same seed gives identical bytes; another seed gives other data."""
    again = make_shapes_dataset(str(tmp_path / 'a'), **TINY)
    assert _read_tree(again['root']) == _read_tree(tiny['root'])
    other = make_shapes_dataset(str(tmp_path / 'b'), **dict(TINY, seed=1))
    assert Path(other['train_ann']).read_bytes() != Path(
        tiny['train_ann']).read_bytes()
    first = osp.join('train', '000000.png')
    assert _read_tree(other['root'])[first] != _read_tree(tiny['root'])[first]


def test_skip_or_regenerate(tmp_path: Path) -> None:
    """A dataset with the same parameters is kept; others rewrite it."""
    params = dict(num_train=3, num_val=2, img_size=64, seed=0, progress=False)
    paths = make_shapes_dataset(str(tmp_path), **params)
    stamp = os.stat(paths['train_ann']).st_mtime_ns
    os.utime(paths['train_ann'], ns=(stamp - 10**9, stamp - 10**9))
    make_shapes_dataset(str(tmp_path), **params)
    assert os.stat(paths['train_ann']).st_mtime_ns == stamp - 10**9
    make_shapes_dataset(str(tmp_path), **dict(params, num_train=2))
    assert sorted(os.listdir(
        paths['train_img_dir'])) == ['000000.png', '000001.png']
    assert json.loads(Path(paths['meta']).read_text())['num_train'] == 2


def test_mmdet_coco_dataset(tiny: Dict[str, str]) -> None:
    """mmdet's CocoDataset loads the split and yields boxes and labels."""
    pytest.importorskip('pycocotools')
    datasets = pytest.importorskip('mmdet.datasets')
    from mmdet.utils import register_all_modules
    register_all_modules()
    dataset = datasets.CocoDataset(
        data_root=tiny['root'],
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True)
        ])
    assert len(dataset) == 6
    for i in range(len(dataset)):
        item = dataset[i]
        assert item['img'].shape == (96, 96, 3)
        boxes = item['gt_bboxes']
        boxes = boxes.tensor.numpy() if hasattr(boxes, 'tensor') \
            else np.asarray(boxes)
        assert len(boxes) == len(item['gt_bboxes_labels']) >= 1
        assert boxes.min() >= 0 and boxes.max() <= 96
        assert set(item['gt_bboxes_labels'].tolist()) <= {0, 1, 2, 3}


def test_context_task(tmp_path: Path) -> None:
    """The context task: six classes, every image's labels share one key,
    and the config that trains on it names the same classes."""
    from mmengine.config import Config

    from mmdet_ela.datasets import CONTEXT_CLASSES
    paths = make_shapes_dataset(
        str(tmp_path),
        num_train=24,
        num_val=2,
        img_size=128,
        seed=0,
        progress=False,
        task='context')
    data = json.loads(Path(paths['train_ann']).read_text())
    assert [c['name'] for c in data['categories']] == list(CONTEXT_CLASSES)
    assert 'context' in data['info']['description']
    keys = {}
    for ann in data['annotations']:
        keys.setdefault(ann['image_id'], set()).add(
            (ann['category_id'] - 1) // 3)
    assert all(len(k) == 1 for k in keys.values())  # one key per image
    assert {k.pop() for k in keys.values()} == {0, 1}  # both keys occur
    assert {a['category_id'] for a in data['annotations']} == set(range(1, 7))
    assert json.loads(Path(paths['meta']).read_text())['generator'] == \
        'context'
    # the same parameters as the shapes task give other images
    shapes = make_shapes_dataset(
        str(tmp_path / 'shapes'),
        num_train=1,
        num_val=0,
        img_size=128,
        seed=0,
        progress=False)
    first = osp.join('train', '000000.png')
    assert _read_tree(shapes['root'])[first] != _read_tree(
        paths['root'])[first]
    root = Path(__file__).resolve().parents[1]
    cfg = Config.fromfile(
        str(root / 'configs' / 'shapes' /
            'retinanet_ela-r18_ela-fpn_shapes-context.py'))
    assert cfg.synthetic_data.task == 'context'
    assert cfg.train_dataloader.dataset.metainfo.classes == CONTEXT_CLASSES
    assert cfg.model.bbox_head.num_classes == len(CONTEXT_CLASSES)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader].dataset.data_root == 'data/shapes_context/'
    for ev in ('val_evaluator', 'test_evaluator'):
        assert cfg[ev].ann_file == \
            'data/shapes_context/annotations/instances_val.json'


def test_shapes_images_pinned() -> None:
    """The shapes task draws the bytes it always drew: published results
    were measured on them (a change of the drawing needs a version bump)."""
    import hashlib

    from mmdet_ela.datasets import render_image
    digest = hashlib.sha256()
    for index in range(3):
        img, objects = render_image(96, np.random.default_rng([0, 0, index]))
        digest.update(img.tobytes())
        for obj in objects:
            digest.update(obj['polygon'].tobytes())
    assert digest.hexdigest() == PINNED


def test_unknown_task(tmp_path: Path) -> None:
    """A wrong task names the allowed ones."""
    with pytest.raises(
            ValueError,
            match=r"task must be one of \['context', "
            r"'shapes'\], got 'coco'"):
        make_shapes_dataset(str(tmp_path), task='coco', progress=False)
