"""ELAPruneHook never crashes training: rounds with nothing to fit, non-finite
attention, schedules that miss validation rounds, bad masks in checkpoints and
failed re-saves. Real mmengine Runners on the tiny shapes config."""
import glob
import json
import os
import os.path as osp
from pathlib import Path

import pytest
import torch
from helpers import read_text, tiny_config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmdet_ela  # noqa: F401
from mmdet_ela.pruning import (attention_stacks, count_units, get_masks,
                               load_masks)

pytestmark = pytest.mark.slow


def _record(work, k):
    with open(osp.join(work, 'ela_prune', f'round_{k}.json')) as f:
        return json.load(f)


def _log(runner):
    return ''.join(
        read_text(f) for f in glob.glob(osp.join(runner.log_dir, '*.log')))


def _backbone_only(cfg, stages=(True, True, True, True)):
    """Attention in the given backbone stages only; a plain mmdet FPN."""
    cfg.model.backbone.stage_with_attention = list(stages)
    cfg.model.neck = dict(
        type='FPN',
        in_channels=[64, 128, 256],
        out_channels=64,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5)
    return cfg


class SetAttention(Hook):
    """Test-only: forward hooks that overwrite what units record."""

    def __init__(self, fn, units=None):
        self.fn, self.units = fn, units

    def before_run(self, runner):
        for name, stack in attention_stacks(runner.model).items():
            for i, unit in stack.kept_units():
                if self.units is None or f'{name}.{i}' in self.units:
                    unit.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        if module.attention is not None:
            module.attention = self.fn(module.attention)


def _train(cfg, *extra_hooks):
    runner = Runner.from_cfg(cfg)
    for hook in extra_hooks:
        runner.register_hook(hook, priority='HIGHEST')
    runner.train()
    return runner


# ------------------------------------------------ nothing to fit (8.2)
@pytest.mark.parametrize('dry_run', [False, True])
def test_single_candidate(tiny_shapes, tmp_path, dry_run):
    work = str(tmp_path / 'wd')
    cfg = _backbone_only(
        tiny_config(tiny_shapes, work, max_epochs=1, dry_run=dry_run),
        stages=(False, False, False, True))
    runner = _train(cfg)
    assert runner.epoch == 1  # the run ended normally after the round
    record = _record(work, 1)
    assert record['num_pruned_now'] == 0 and record['alpha'] is None
    assert record['note'] == ('nothing pruned: only one candidate, so there '
                              'is no distribution to fit')
    assert record['note'] in _log(runner)
    assert count_units(runner.model)['pruned'] == 0


def _one_hot(attn):
    out = torch.zeros_like(attn)
    out[..., 0] = 1
    return out


def _nan(attn):
    return torch.full_like(attn, float('nan'))


def _nan_first_sample(attn):
    attn = attn.clone()
    attn[0, 0, 0] = float('nan')
    return attn


@pytest.mark.parametrize('fn, units, note', [
    (_one_hot, None, 'nothing pruned: all candidate scores are equal'),
    (_nan, None, 'nothing pruned: no unit has a finite score'),
])
def test_no_usable_scores(tiny_shapes, tmp_path, fn, units, note):
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=1, quantile=0.6)
    runner = _train(cfg, SetAttention(fn, units))
    assert runner.epoch == 1
    record = _record(work, 1)
    assert record['note'].startswith(note)
    assert record['num_pruned_now'] == 0
    assert count_units(runner.model)['pruned'] == 0
    if fn is _nan:
        # 8 val images, 13 units: every (unit, predecessor) pair skips all
        assert record['skipped_samples'] == 8 * (13 - 5)
        assert all(d['score'] is None for d in record['decisions'])


def test_one_non_finite_sample_is_skipped(tiny_shapes, tmp_path):
    """NaN in one sample of one unit: that sample is left out of that unit's
    score (and counted), every score stays finite, pruning goes on."""
    work = str(tmp_path / 'wd')
    cfg = tiny_config(
        tiny_shapes, work, max_epochs=1, quantile=0.6, num_batches=1)
    runner = _train(cfg,
                    SetAttention(_nan_first_sample, units={'neck.attn.4'}))
    record = _record(work, 1)
    assert record['skipped_samples'] == 1  # the last unit: one pair only
    scores = {
        (d['group'], d['index']): d['score']
        for d in record['decisions']
    }
    assert scores[('neck.attn', 4)] is not None
    assert all(v is not None for (g, i), v in scores.items() if i > 0)
    assert record['num_pruned_now'] >= 1
    assert count_units(runner.model)['pruned'] == record['num_pruned_now']


def test_no_validation_batch(tiny_shapes, tmp_path):
    """An empty validation set: the round is logged and recorded, nothing is
    pruned, training goes on."""
    work = str(tmp_path / 'wd')
    cfg = tiny_config(tiny_shapes, work, max_epochs=1)
    cfg.val_dataloader.dataset.update(indices=0, serialize_data=False)
    cfg.val_dataloader.sampler = dict(
        type='DefaultSampler', shuffle=False, round_up=False)
    cfg.val_evaluator = dict(
        type='DumpDetResults', out_file_path=str(tmp_path / 'val.pkl'))
    runner = _train(cfg)
    record = _record(work, 1)
    assert record['scored_batches'] == 0
    assert record['note'] == 'nothing pruned: no validation batch was scored'
    assert record['note'] in _log(runner)


def test_second_round_without_candidates_and_resume(tiny_shapes, tmp_path):
    """Round 1 prunes every candidate; round 2, and round 3 after resuming
    from round 2's checkpoint (EBQM this time), have none left."""
    work = str(tmp_path / 'wd')
    opts = dict(
        max_prune_ratio=0.5, strategy='random', random_units=4, max_rounds=2)
    cfg = _backbone_only(tiny_config(tiny_shapes, work, max_epochs=2, **opts))
    runner = _train(cfg)
    assert _record(work, 1)['num_pruned_now'] == 4
    second = _record(work, 2)
    assert second['strategy'] == 'random'
    assert second['note'].startswith('nothing pruned: no candidates left')
    mask = get_masks(runner.model)

    opts.update(strategy='ebqm', max_rounds=3)
    cfg = _backbone_only(tiny_config(tiny_shapes, work, max_epochs=3, **opts))
    cfg.resume = True
    cfg.load_from = osp.join(work, 'epoch_2.pth')
    runner = _train(cfg)
    assert runner.epoch == 3 and get_masks(runner.model) == mask
    # epoch_2.pth was saved again after round 2, so round 2 is not re-run
    assert _record(work, 2)['strategy'] == 'random'
    third = _record(work, 3)
    assert third['strategy'] == 'ebqm' and third['progress'] == 3
    assert third['note'].startswith('nothing pruned: no candidates left')


# ------------------------------------------------------- schedule (8.3)
def test_round_at_first_validation_after_begin(tiny_shapes, tmp_path):
    """begin=1, interval=2, val_interval=2: scored after epoch 2."""
    work = str(tmp_path / 'wd')
    cfg = tiny_config(
        tiny_shapes, work, max_epochs=2, begin=1, interval=2, dry_run=True)
    cfg.train_cfg.val_interval = 2
    runner = _train(cfg)
    assert _record(work, 1)['progress'] == 2
    assert 'ELAPruneHook will score after epochs [2]' in _log(runner)


def test_iteration_schedule_meets_validation(tiny_shapes, tmp_path):
    """interval=3, val_interval=3 over 9 iterations: points 1, 4, 7 are met
    by the validation rounds after iterations 3, 6 and 9."""
    work = str(tmp_path / 'wd')
    cfg = tiny_config(
        tiny_shapes,
        work,
        interval=3,
        max_rounds=3,
        dry_run=True,
        num_batches=1)
    cfg.train_cfg = dict(
        type='IterBasedTrainLoop', max_iters=9, val_interval=3)
    cfg.train_dataloader.sampler = dict(type='InfiniteSampler', shuffle=True)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=3, by_epoch=False)
    cfg.log_processor = dict(by_epoch=False)
    _train(cfg)
    assert [_record(work, k)['progress'] for k in (1, 2, 3)] == [3, 6, 9]


@pytest.mark.parametrize('change, message', [
    (dict(begin=5), 'ELAPruneHook will never score: its schedule (begin=5'),
    (dict(val=False), 'this run has no validation loop'),
])
def test_schedule_that_never_scores_warns(tiny_shapes, tmp_path, change,
                                          message):
    work = str(tmp_path / 'wd')
    cfg = tiny_config(
        tiny_shapes, work, max_epochs=1, begin=change.get('begin', 1))
    if change.get('val') is False:
        cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    runner = _train(cfg)
    assert message in _log(runner)
    assert not osp.exists(osp.join(work, 'ela_prune'))


# ------------------------------------------------------ bad masks (8.4)
def _bad_checkpoint(tmp_path, cfg, mask3):
    """A checkpoint whose layer1 mask fits and whose layer3 mask does not."""
    runner = Runner.from_cfg(cfg)
    state = runner.model.state_dict()
    state['backbone.layer1.attn.mask'] = torch.tensor([1, 0],
                                                      dtype=torch.uint8)
    state['backbone.layer3.attn.mask'] = torch.tensor(mask3)
    path = str(tmp_path / 'bad.pth')
    torch.save(dict(state_dict=state, meta=dict()), path)
    return path


@pytest.mark.parametrize('mask3, match', [
    ([1, 1, 1], r'backbone\.layer3\.attn\.mask.*length 2'),
    ([2, 5], r'backbone\.layer3\.attn\.mask holds \[2\.0, 5\.0\]'),
    ([1, float('nan')], r'backbone\.layer3\.attn\.mask holds \[nan\]'),
])
@pytest.mark.parametrize('with_hook', [True, False])
def test_bad_checkpoint_mask_prunes_nothing(tiny_shapes, tmp_path, mask3,
                                            match, with_hook):
    from mmdet.apis import init_detector
    cfg = tiny_config(tiny_shapes, str(tmp_path / 'wd'))
    if not with_hook:
        cfg.custom_hooks = []
    path = _bad_checkpoint(tmp_path, cfg, mask3)
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=match):
        runner.load_checkpoint(path)
    assert count_units(runner.model)['pruned'] == 0
    with pytest.raises(ValueError, match=match):
        init_detector(cfg, path, device='cpu')


# --------------------------------------------------- failed re-save (8.8)
class BreakCheckpoint(Hook):
    """Test-only: make epoch_1.pth a non-empty folder before the re-save, so
    the rename of the re-saved file onto it fails."""

    def after_val_epoch(self, runner, metrics=None):
        path = osp.join(runner.work_dir, 'epoch_1.pth')
        if runner.epoch == 1 and osp.isfile(path):
            os.remove(path)
            os.makedirs(osp.join(path, 'blocker'))


def test_failed_resave_cleans_up_and_training_goes_on(tiny_shapes, tmp_path):
    work = str(tmp_path / 'wd')
    os.makedirs(work)
    stale = osp.join(work, 'epoch_7.pth.ela_tmp')
    Path(stale).touch()
    cfg = tiny_config(tiny_shapes, work, max_epochs=2, strategy='random')
    runner = _train(cfg, BreakCheckpoint())
    assert runner.epoch == 2
    assert not glob.glob(osp.join(work, '*.ela_tmp'))
    record = _record(work, 1)
    assert record['num_pruned_now'] == 1 and record['resaved'] is False
    assert 're-saving this step\'s checkpoint after the round failed' in \
        _log(runner)
    assert 'removed ' + stale in _log(runner)
    assert load_masks(osp.join(work, 'epoch_2.pth')) == \
        get_masks(runner.model)
