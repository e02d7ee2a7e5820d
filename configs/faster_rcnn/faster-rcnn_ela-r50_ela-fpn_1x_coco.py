# ELA-ResNet-50 backbone + ELA FPN neck, COCO 1x, from torchvision ImageNet
# weights.
_base_ = './faster-rcnn_ela-r50_fpn_1x_coco.py'

model = dict(neck=dict(type='ELAFPN', dim_per_head=32))
