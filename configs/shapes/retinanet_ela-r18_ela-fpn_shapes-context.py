# The harder synthetic task (`tools/misc/make_shapes_dataset.py --task
# context`, data/shapes_context): six classes, circle/square/triangle x the
# image's key (a plus or an arrow, not annotated, anywhere in the image), with
# distractor shapes and heavier occlusion. Same model and schedule as the
# shapes config; only the data and the number of classes change.
_base_ = './retinanet_ela-r18_ela-fpn_shapes.py'

data_root = 'data/shapes_context/'
classes = ('circle-plus', 'square-plus', 'triangle-plus', 'circle-arrow',
           'square-arrow', 'triangle-arrow')
synthetic_data = dict(task='context')

model = dict(bbox_head=dict(num_classes=len(classes)))
train_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes)))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
