"""Shared test helpers: paths, a tiny shapes dataset, a tiny config."""
import json
import os
import os.path as osp
import sys
import uuid

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHAPES_CONFIG = osp.join(ROOT, 'configs', 'shapes',
                         'retinanet_ela-r18_ela-fpn_shapes.py')
PYTHON = sys.executable


def make_tiny_shapes(root: str) -> str:
    """16 training and 8 validation images of 96 px under ``root``."""
    from mmdet_ela.datasets import make_shapes_dataset
    make_shapes_dataset(
        root, num_train=16, num_val=8, img_size=96, seed=1, progress=False)
    return root + '/'


def tiny_config(data_root: str,
                work_dir: str,
                max_epochs: int = 2,
                **hook_options) -> Config:
    """The shapes demo config, shrunk to a few seconds per epoch."""
    cfg = Config.fromfile(SHAPES_CONFIG)
    # the tiny set is the test's own: no CPU preset of the tools
    cfg.pop('synthetic_data')
    cfg.work_dir = work_dir
    # mmengine names an experiment after the config file and the second it
    # starts, and reuses the logger of that name: two runners started in one
    # second would write one log file. A name of its own per config.
    cfg.experiment_name = f'tiny_{uuid.uuid4().hex[:8]}'
    cfg.launcher = 'none'
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg[loader]
        dl.batch_size = 4
        dl.num_workers = 0
        dl.persistent_workers = False
        dl.dataset.data_root = data_root
        for t in dl.dataset.pipeline:
            if t['type'] == 'Resize':
                t['scale'] = (96, 96)
    for ev in ('val_evaluator', 'test_evaluator'):
        cfg[ev].ann_file = osp.join(data_root,
                                    'annotations/instances_val.json')
    # Untrained models score low: keep every box so the COCO metric is real.
    cfg.model.test_cfg.score_thr = 0.0
    cfg.model.test_cfg.max_per_img = 20
    cfg.train_cfg = dict(
        type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0)]
    hook = dict(type='ELAPruneHook', begin=1, max_rounds=1)
    hook.update(hook_options)
    cfg.custom_hooks = [hook]
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=1)
    cfg.randomness = dict(seed=0, deterministic=False)
    cfg.env_cfg = dict(
        cudnn_benchmark=False,
        mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
        dist_cfg=dict(backend='gloo'))
    return cfg


def free_port() -> str:
    """A TCP port that nothing listens on now (for the gloo rendezvous)."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return str(sock.getsockname()[1])


def run_env() -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def read_json(path: str):
    """The parsed JSON file at ``path``."""
    with open(path) as f:
        return json.load(f)


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()
