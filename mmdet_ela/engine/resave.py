"""Re-save the checkpoint of the current epoch/iteration after pruning.

mmengine's CheckpointHook writes ``epoch_N.pth`` *before* the validation round
the pruning hook scores; after pruning, this saves it again so that resuming
from it restores the pruned structure.
"""
import glob
import os
import os.path as osp
from typing import Optional

from mmengine import dist
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

__all__ = [
    'TMP_SUFFIX', 'resave_checkpoint', 'resave_after_round', 'remove_stale_tmp'
]

TMP_SUFFIX = '.ela_tmp'


def _checkpoint_hook(runner) -> Optional[CheckpointHook]:
    return next((h for h in runner.hooks if isinstance(h, CheckpointHook)),
                None)


def remove_stale_tmp(runner) -> None:
    """Delete ``*.ela_tmp`` files a crashed re-save left in the checkpoint
    folder (main process, local disks only)."""
    hook = _checkpoint_hook(runner)
    if hook is None or not dist.is_main_process() or \
            not isinstance(getattr(hook, 'file_backend', None), LocalBackend):
        return
    for path in glob.glob(osp.join(hook.out_dir, '*' + TMP_SUFFIX)):
        os.remove(path)
        runner.logger.warning(f'ELAPruneHook: removed {path}, left by an '
                              'interrupted re-save')


def resave_checkpoint(runner) -> Optional[str]:
    """Save the checkpoint of this step again, if CheckpointHook wrote one.

    On a local disk: to ``NAME.ela_tmp``, then an atomic rename, so a failed
    save never replaces a good checkpoint; the temporary file is removed on
    failure. Other backends (e.g. s3) are written in place, as mmengine does.

    Returns:
        str | None: the checkpoint name re-saved, or None (nothing to do).

    Raises:
        Exception: whatever the save raised, after the clean-up.
    """
    hook = _checkpoint_hook(runner)
    if hook is None or hook.last_ckpt is None:
        return None
    name = hook.filename_tmpl.format(
        runner.epoch if hook.by_epoch else runner.iter)
    if osp.basename(hook.last_ckpt) != name:
        return None  # no checkpoint was written for this step
    out_dir = hook.last_ckpt[:-len(name)].rstrip('/')
    local = isinstance(hook.file_backend, LocalBackend)
    tmp = osp.join(out_dir, name + TMP_SUFFIX)
    try:
        runner.save_checkpoint(
            out_dir,
            name + TMP_SUFFIX if local else name,
            save_optimizer=hook.save_optimizer,
            save_param_scheduler=hook.save_param_scheduler,
            meta=dict(epoch=runner.epoch, iter=runner.iter),
            by_epoch=hook.by_epoch,
            backend_args=hook.backend_args)
        if local and dist.is_main_process():
            os.replace(tmp, osp.join(out_dir, name))
    except BaseException:
        if local and dist.is_main_process() and osp.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        dist.barrier()
    return name


def resave_after_round(runner) -> bool:
    """:func:`resave_checkpoint`, logging instead of raising: a failed save
    must not end the training.

    Returns:
        bool: whether the checkpoint was saved again.
    """
    try:
        name = resave_checkpoint(runner)
    except Exception as err:  # noqa: BLE001 - training must go on
        runner.logger.error(
            f'ELAPruneHook: re-saving this step\'s checkpoint after the round '
            f'failed ({type(err).__name__}: {err}); training goes on, but do '
            'not resume from that checkpoint: it holds the model and hook '
            'state from before the round')
        return False
    if name is not None:
        runner.logger.info(f'ELAPruneHook: re-saved {name} with the model '
                           'and hook state after this round')
    return name is not None
