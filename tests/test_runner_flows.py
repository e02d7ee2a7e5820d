"""Real mmengine Runners on a tiny ELA RetinaNet: resume, score -> prune ->
train -> checkpoint -> resume -> test, pruned checkpoints with the unchanged
config, and two gloo processes."""
import glob
import os.path as osp
import subprocess

import pytest
from helpers import PYTHON, ROOT, free_port, read_json, run_env, tiny_config
from mmengine.runner import Runner

import mmdet_ela  # noqa: F401
from mmdet_ela.pruning import count_units, get_masks, load_masks, unwrap
from mmdet_ela.utils import load_checkpoint_file

pytestmark = pytest.mark.slow


def _masks_in(path):
    return load_masks(path)


def test_resume_plain_training(tiny_shapes, tmp_path):
    """Save, then resume through the Runner (weights-only load)."""
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=1, max_rounds=0)
    Runner.from_cfg(cfg).train()
    assert osp.exists(osp.join(work, 'epoch_1.pth'))

    cfg = tiny_config(tiny_shapes, work, max_epochs=2, max_rounds=0)
    cfg.resume = True
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.epoch == 2
    ckpt = load_checkpoint_file(osp.join(work, 'epoch_2.pth'))
    assert ckpt['meta']['epoch'] == 2
    assert ckpt['meta']['iter'] == 2 * 4


def test_score_prune_train_resume_test(tiny_shapes, tmp_path):
    work = str(tmp_path / 'wd')
    # quantile 0.6 so that a 1-epoch model surely prunes something.
    cfg = tiny_config(tiny_shapes, work, max_epochs=3, quantile=0.6)
    runner = Runner.from_cfg(cfg)
    model = unwrap(runner.model)
    dense_params = sum(p.numel() for p in model.parameters())
    runner.train()

    record = read_json(osp.join(work, 'ela_prune', 'round_1.json'))
    assert record['round'] == 1 and record['num_pruned_now'] >= 1
    assert not glob.glob(osp.join(work, 'ela_prune', 'round_2.json'))
    mask = get_masks(model)
    assert mask == record['mask']
    units = count_units(model)
    assert units['pruned'] == record['num_pruned_now']
    pruned_params = sum(p.numel() for p in model.parameters())
    assert pruned_params < dense_params
    # The optimizer holds exactly the remaining parameters.
    opt = runner.optim_wrapper.optimizer
    held = {id(p) for g in opt.param_groups for p in g['params']}
    assert held == {id(p) for p in model.parameters()}
    assert all(id(p) in held for p in opt.state)
    # The epoch-1 checkpoint was written before validation; the hook re-saved
    # it with the pruned model, and every later one is pruned too.
    for e in (1, 2, 3):
        assert _masks_in(osp.join(work, f'epoch_{e}.pth')) == mask
    assert load_checkpoint_file(osp.join(work,
                                         'epoch_1.pth'))['meta']['epoch'] == 1

    # Kill after pruning, then resume from epoch 1: the pruned structure is
    # restored before model and optimizer load, and training continues.
    cfg = tiny_config(tiny_shapes, work, max_epochs=3, quantile=0.6)
    cfg.resume = True
    cfg.load_from = osp.join(work, 'epoch_1.pth')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.epoch == 3
    assert get_masks(runner.model) == mask
    hook = [h for h in runner.hooks if type(h).__name__ == 'ELAPruneHook'][0]
    assert hook.rounds == 1  # max_rounds=1 already used before the kill
    assert not glob.glob(osp.join(work, 'ela_prune', 'round_2.json'))

    # tools/test.py on the pruned checkpoint with the unchanged config.
    cfg_path = osp.join(work, 'tiny.py')
    cfg.dump(cfg_path)
    out = subprocess.run([
        PYTHON,
        osp.join(ROOT, 'tools', 'test.py'), cfg_path,
        osp.join(work, 'epoch_3.pth'), '--work-dir',
        str(tmp_path / 'test')
    ],
                         capture_output=True,
                         text=True,
                         env=run_env(),
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'coco/bbox_mAP' in out.stdout + out.stderr


def test_load_from_pruned_checkpoint(tiny_shapes, tmp_path):
    """`load_from` a pruned checkpoint into a dense model built from the
    unchanged config: fine-tuning starts from the pruned structure."""
    work = str(tmp_path / 'a')
    cfg = tiny_config(tiny_shapes, work, max_epochs=1, quantile=0.6)
    Runner.from_cfg(cfg).train()
    mask = _masks_in(osp.join(work, 'epoch_1.pth'))
    assert not all(all(m) for m in mask.values())

    cfg = tiny_config(
        tiny_shapes, str(tmp_path / 'b'), max_epochs=1, max_rounds=0)
    cfg.load_from = osp.join(work, 'epoch_1.pth')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert get_masks(runner.model) == mask
    metrics = runner.test()
    assert 'coco/bbox_mAP' in metrics

    # A backbone init_cfg that points at a pruned checkpoint prunes the model
    # after the optimizer was built: the hook brings the optimizer in step.
    cfg = tiny_config(
        tiny_shapes, str(tmp_path / 'c'), max_epochs=1, max_rounds=0)
    cfg.model.backbone.init_cfg = dict(
        type='Pretrained',
        checkpoint=osp.join(work, 'epoch_1.pth'),
        prefix='backbone.')
    runner = Runner.from_cfg(cfg)
    runner.train()
    backbone_masks = {
        k: v
        for k, v in mask.items() if k.startswith('backbone.')
    }
    assert {
        k: v
        for k, v in get_masks(runner.model).items()
        if k.startswith('backbone.')
    } == backbone_masks
    opt = runner.optim_wrapper.optimizer
    assert {id(p) for g in opt.param_groups for p in g['params']} == \
        {id(p) for p in runner.model.parameters()}

    # Inference API on the pruned checkpoint with the unchanged config.
    from mmdet.apis import inference_detector, init_detector
    detector = init_detector(cfg, osp.join(work, 'epoch_1.pth'), device='cpu')
    assert get_masks(detector) == mask
    image = glob.glob(osp.join(tiny_shapes, 'val', '*.png'))[0]
    result = inference_detector(detector, image)
    assert result.pred_instances.bboxes.shape[-1] == 4


def test_ema_hook_is_refused(tiny_shapes, tmp_path):
    cfg = tiny_config(tiny_shapes, str(tmp_path / 'wd'), max_epochs=1)
    cfg.custom_hooks.append(dict(type='EMAHook'))
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match='EMAHook'):
        runner.train()


def test_two_gloo_processes(tiny_shapes, tmp_path):
    """The same config on 2 CPU processes through tools/dist_train.sh, with
    the values and the backbone units' outputs made again in backward (as
    on CUDA by default)."""
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=2, quantile=0.6)
    cfg.model.backbone.attn_recompute_values = True
    cfg.model.backbone.attn_recompute_outputs = True
    cfg.model.neck.attn_recompute_values = True
    cfg_path = str(tmp_path / 'tiny.py')
    cfg.dump(cfg_path)
    env = run_env()
    env.update(PYTHON=PYTHON, PORT=free_port())
    out = subprocess.run([
        'bash',
        osp.join(ROOT, 'tools', 'dist_train.sh'), cfg_path, '2', '--work-dir',
        work
    ],
                         capture_output=True,
                         text=True,
                         env=env,
                         cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    record = read_json(osp.join(work, 'ela_prune', 'round_1.json'))
    assert len(record['rank_masks']) == 2
    assert record['rank_masks'][0] == record['rank_masks'][1] == \
        record['mask']
    assert record['num_pruned_now'] >= 1
    # Training went on after the DDP wrapper was rebuilt; the final checkpoint
    # holds the pruned model.
    assert _masks_in(osp.join(work, 'epoch_2.pth')) == record['mask']

    # Resume on 2 processes from the re-saved, pruned epoch-1 checkpoint.
    env['PORT'] = free_port()
    out = subprocess.run([
        'bash',
        osp.join(ROOT, 'tools', 'dist_train.sh'), cfg_path, '2', '--work-dir',
        work, '--resume',
        osp.join(work, 'epoch_1.pth')
    ],
                         capture_output=True,
                         text=True,
                         env=env,
                         cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert 'resumed epoch: 1' in out.stdout + out.stderr

    # tools/dist_test.sh on 2 processes, pruned checkpoint, unchanged config.
    env['PORT'] = free_port()
    out = subprocess.run([
        'bash',
        osp.join(ROOT, 'tools', 'dist_test.sh'), cfg_path,
        osp.join(work, 'epoch_2.pth'), '2', '--work-dir',
        str(tmp_path / 'test')
    ],
                         capture_output=True,
                         text=True,
                         env=env,
                         cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert 'coco/bbox_mAP' in out.stdout + out.stderr


def test_mmdet_packaged_train_py_trains_our_config(tiny_shapes, tmp_path):
    """mmdet's own tools/train.py (shipped in the wheel) trains our small
    config unchanged: custom_imports is all it needs."""
    import mmdet
    train_py = osp.join(
        osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=1, quantile=0.6)
    cfg_path = str(tmp_path / 'tiny.py')
    cfg.dump(cfg_path)
    out = subprocess.run([PYTHON, train_py, cfg_path, '--work-dir', work],
                         capture_output=True,
                         text=True,
                         env=run_env(),
                         cwd=ROOT,
                         timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert osp.exists(osp.join(work, 'epoch_1.pth'))
    assert osp.exists(osp.join(work, 'ela_prune', 'round_1.json'))
    assert 'ELAPruneHook round 1' in out.stdout + out.stderr


def test_iteration_based_loop(tiny_shapes, tmp_path):
    """Iteration-based training: scoring after iteration `begin`, the iteration
    checkpoint re-saved with the pruned model, resume from it."""
    work = str(tmp_path / 'wd')

    def iter_config():
        cfg = tiny_config(tiny_shapes, work, quantile=0.6, begin=4)
        cfg.train_cfg = dict(
            type='IterBasedTrainLoop', max_iters=8, val_interval=4)
        cfg.train_dataloader.sampler = dict(
            type='InfiniteSampler', shuffle=True)
        cfg.default_hooks.checkpoint = dict(
            type='CheckpointHook', interval=4, by_epoch=False)
        cfg.log_processor = dict(by_epoch=False)
        return cfg

    cfg = iter_config()
    runner = Runner.from_cfg(cfg)
    runner.train()
    record = read_json(osp.join(work, 'ela_prune', 'round_1.json'))
    assert record['progress'] == 4 and record['num_pruned_now'] >= 1
    ckpt = load_checkpoint_file(osp.join(work, 'iter_4.pth'))
    assert ckpt['meta']['iter'] == 4
    assert _masks_in(osp.join(work, 'iter_4.pth')) == record['mask']

    cfg = iter_config()
    cfg.resume = True
    cfg.load_from = osp.join(work, 'iter_4.pth')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 8
    assert get_masks(runner.model) == record['mask']


FAKE_SRUN = '''#!/usr/bin/env bash
# Stand-in for slurm's srun on one machine: starts --ntasks copies of the
# command
# with the SLURM_* variables srun sets, and fails if any copy fails.
n=1
while [[ "$1" == -* ]]; do
  case "$1" in --ntasks=*) n=${1#--ntasks=};; -p) shift;; esac
  shift
done
pids=()
for ((r = 0; r < n; r++)); do
  SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NTASKS=$n SLURM_NODELIST=localhost \\
    MASTER_ADDR=127.0.0.1 "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait $p || rc=1; done
exit $rc
'''


def test_slurm_train_sh_on_cpu(tiny_shapes, tmp_path):
    """tools/slurm_train.sh with GPUS_PER_NODE=0: two CPU tasks (gloo) through
    the slurm launcher path (srun replaced by a local stand-in)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text(FAKE_SRUN)
    srun.chmod(0o755)
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=1, quantile=0.6)
    cfg_path = str(tmp_path / 'tiny.py')
    cfg.dump(cfg_path)
    env = run_env()
    env.update(
        PATH=f'{bin_dir}:{env["PATH"]}',
        PYTHON=PYTHON,
        GPUS='2',
        MASTER_PORT=free_port(),
        GPUS_PER_NODE='0',
        TASKS_PER_NODE='2')
    out = subprocess.run(
        ['bash', 'tools/slurm_train.sh', 'cpu', 'ela', cfg_path, work],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    record = read_json(osp.join(work, 'ela_prune', 'round_1.json'))
    assert len(record['rank_masks']) == 2
    assert record['rank_masks'][0] == record['rank_masks'][1]
