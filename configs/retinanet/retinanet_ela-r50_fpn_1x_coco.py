# ELA-ResNet-50 backbone + mmdet's plain FPN, COCO 1x, from torchvision
# ImageNet weights.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmdet_ela'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        type='ELAResNet',
        depth=50,
        dim_per_head=32,
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')))

# Score layer-attention redundancy on validation rounds and prune (defaults).
custom_hooks = [dict(type='ELAPruneHook')]

# Learning rates of the base config are for 8 GPUs x 2 images.
auto_scale_lr = dict(enable=False, base_batch_size=16)
