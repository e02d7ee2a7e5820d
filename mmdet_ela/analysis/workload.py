"""Synthetic mmdet data batches, and the train and inference steps timed.

A batch is what a dataloader would give the model: ``inputs`` (uint8 images
[3, H, W]) and ``data_samples`` (a :class:`DetDataSample` per image with random
gt boxes and labels, and masks for models with a mask head), so that it goes
through the model's own data preprocessor (normalisation, padding, masks). A
:class:`BackboneModel` gets normalised float images [N, 3, H, W] instead.
"""
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .variants import BackboneModel

__all__ = [
    'BOX_ORIGIN_MAX', 'BOX_SIZE_RANGE', 'DEFAULT_NUM_CLASSES', 'num_classes',
    'synthetic_batch', 'Workload'
]

#: Box corners start in the first 60 % of each side ...
BOX_ORIGIN_MAX = 0.6
#: ... and span 8 % to 38 % of it.
BOX_SIZE_RANGE = (0.08, 0.38)
#: Labels for models that name no ``num_classes`` (COCO's count).
DEFAULT_NUM_CLASSES = 80


def num_classes(model: nn.Module) -> int:
    """The ``num_classes`` of the model's first head that has one."""
    for module in model.modules():
        value = getattr(module, 'num_classes', None)
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_NUM_CLASSES


def _random_boxes(k: int, height: int, width: int,
                  gen: torch.Generator) -> Tensor:
    """[k, 4] boxes (x1, y1, x2, y2) inside an image of ``height x width``."""
    side = torch.tensor([width, height], dtype=torch.float32)
    low, high = BOX_SIZE_RANGE
    xy = torch.rand(k, 2, generator=gen) * side * BOX_ORIGIN_MAX
    wh = (torch.rand(k, 2, generator=gen) * (high - low) + low) * side
    return torch.cat([xy, torch.minimum(xy + wh, side - 1)], dim=1)


def _box_masks(boxes: Tensor, height: int, width: int):
    """Filled boxes as ``BitmapMasks`` [k, H, W]."""
    from mmdet.structures.mask import BitmapMasks
    masks = np.zeros((len(boxes), height, width), dtype=np.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.round().long().tolist()):
        m[y1:y2 + 1, x1:x2 + 1] = 1
    return BitmapMasks(masks, height, width)


def synthetic_batch(model: nn.Module,
                    batch_size: int,
                    img_size: Tuple[int, int],
                    seed: int,
                    num_boxes: int = 2) -> Dict[str, Any]:
    """A random data batch for ``model``, before its data preprocessor.

    Args:
        model (nn.Module): a detector (``inputs`` are uint8 images and every
            sample has ``num_boxes`` gt boxes with labels below
            :func:`num_classes`, plus filled-box masks if ``model.with_mask``)
            or a :class:`BackboneModel` (``inputs`` only).
        batch_size (int): images in the batch.
        img_size (tuple[int, int]): (H, W) of every image.
        seed (int): seed of the batch's own random generator.
        num_boxes (int): gt boxes per image. Default: 2.

    Returns:
        dict: ``inputs`` (list of [3, H, W] uint8, or [N, 3, H, W] float
        for a backbone) and, for a detector, ``data_samples``.
    """
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    gen = torch.Generator().manual_seed(seed)
    height, width = img_size
    if isinstance(model, BackboneModel):
        return dict(
            inputs=torch.randn(batch_size, 3, height, width, generator=gen))
    classes = num_classes(model)
    with_mask = bool(getattr(model, 'with_mask', False))
    inputs, samples = [], []
    for i in range(batch_size):
        inputs.append(
            torch.randint(
                0, 256, (3, height, width), generator=gen, dtype=torch.uint8))
        sample = DetDataSample(
            metainfo=dict(
                img_id=i,
                img_shape=(height, width),
                ori_shape=(height, width),
                scale_factor=(1.0, 1.0)))
        boxes = _random_boxes(num_boxes, height, width, gen)
        gt = InstanceData(
            bboxes=boxes,
            labels=torch.randint(0, classes, (num_boxes, ), generator=gen))
        if with_mask:
            gt.masks = _box_masks(boxes, height, width)
        sample.gt_instances = gt
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


class Workload:
    """One model's train step and inference on a fixed preprocessed batch.

    Args:
        model (nn.Module): an mmengine ``BaseModel`` (a detector or a
            :class:`BackboneModel`); moved to ``device``, left in train mode.
        optim_wrapper_cfg (Mapping): an ``optim_wrapper`` config, built with
            mmengine's ``build_optim_wrapper``.
        batch (Mapping): a :func:`synthetic_batch`; preprocessed once here,
            so the timed steps hold no data preparation.
        device (torch.device): where to run.
        amp (bool): inference under ``autocast`` (the train step's autocast
            comes from an ``AmpOptimWrapper`` config). Default: False.

    Attributes:
        data (dict): the preprocessed batch, ``inputs`` [N, 3, H', W'].
        optim_wrapper (OptimWrapper): the built optimizer wrapper.
    """

    def __init__(self,
                 model: nn.Module,
                 optim_wrapper_cfg: Mapping,
                 batch: Mapping,
                 device: torch.device,
                 amp: bool = False) -> None:
        from mmengine.optim import build_optim_wrapper
        self.model = model.to(device)
        self.model.train()
        self.device = torch.device(device)
        self.amp = amp
        with torch.no_grad():
            self.data = model.data_preprocessor(dict(batch), True)
        self.optim_wrapper = build_optim_wrapper(model,
                                                 dict(optim_wrapper_cfg))

    def train_step(self) -> None:
        """Forward with loss, backward, optimizer step (mmengine's order)."""
        with self.optim_wrapper.optim_context(self.model):
            losses = self.model(**self.data, mode='loss')
        loss, _ = self.model.parse_losses(losses)
        self.optim_wrapper.update_params(loss)

    def forward_tensors(self, inputs: Optional[Tensor] = None) -> Any:
        """The network forward without post-processing (``mode='tensor'``).

        Args:
            inputs (Tensor, optional): images [n, 3, H', W'] with n <= N
                (the data samples are cut to n); default: the batch's.
        """
        samples: Optional[Sequence] = self.data.get('data_samples')
        if inputs is None:
            inputs = self.data['inputs']
        elif samples is not None:
            samples = samples[:inputs.shape[0]]
        return self.model(inputs, samples, mode='tensor')

    def infer(self) -> None:
        """``forward_tensors`` without gradients (autocast with ``amp``)."""
        from mmengine.runner.amp import autocast
        with torch.no_grad(), autocast(
                device_type=self.device.type, enabled=self.amp):
            self.forward_tensors()
