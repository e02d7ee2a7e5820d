"""ELAPruneHook: score layer-attention redundancy on validation rounds and prune."""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence

import torch
from mmdet.registry import HOOKS
from mmengine import dist
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, EMAHook, Hook
from mmengine.runner import EpochBasedTrainLoop

from ...models.pruning import (apply_masks, attention_stacks, count_units,
                               get_masks, set_recording, unwrap)
from ...redundancy import RedundancyAccumulator, ebqm_select
from ..optim import drop_parameters, optimizers as _optimizers, rewrap_ddp


@HOOKS.register_module()
class ELAPruneHook(Hook):
    """Prune redundant layer-attention retrievals during training.

    On a validation round that falls on the schedule, every unit records its attention
    distribution; the hook accumulates the KL redundancy score D_b of each unit against
    its kept predecessor (sums and counts only), all-reduces them across processes,
    decides with EBQM (our definition, see ``mmdet_ela.redundancy.ebqm``) and deletes
    the chosen units in place. It then drops their parameters from the optimizer,
    wraps the model in DDP again, re-saves the checkpoint of this epoch (mmengine
    writes it *before* validation) and logs a table, a JSON record under
    ``work_dir/ela_prune/`` and scalars to the visualizer.

    Args:
        begin (int): first epoch (iteration for iteration-based loops) after which
            a validation round may be scored. Default: 1.
        interval (int): score every ``interval`` epochs/iterations from ``begin``.
        quantile (float): EBQM's quantile, in (0, 1). Default: 0.3.
        max_prune_ratio (float): at most this share of all units is pruned, over all
            rounds, in [0, 1). Default: 0.3.
        min_keep (int): every stage (and the neck) keeps at least this many units.
        max_rounds (int): at most this many scoring rounds. Default: 1.
        dry_run (bool): score, decide and log, but prune nothing.
        num_batches (int, optional): score only the first ``num_batches``
            validation batches of a round (per process); None = all.
    """

    # After CheckpointHook (VERY_LOW): a best checkpoint saved for this round
    # holds the model that was evaluated; our re-save then prunes epoch_N.pth.
    priority = 'LOWEST'

    def __init__(self,
                 begin: int = 1,
                 interval: int = 1,
                 quantile: float = 0.3,
                 max_prune_ratio: float = 0.3,
                 min_keep: int = 1,
                 max_rounds: int = 1,
                 dry_run: bool = False,
                 num_batches: Optional[int] = None) -> None:
        def check_int(name, value, low):
            if isinstance(value, bool) or not isinstance(value, int) \
                    or value < low:
                raise ValueError(f'ELAPruneHook: {name}={value!r} must be an '
                                 f'integer >= {low}')

        check_int('begin', begin, 0)
        check_int('interval', interval, 1)
        check_int('min_keep', min_keep, 1)
        check_int('max_rounds', max_rounds, 0)
        if num_batches is not None:
            check_int('num_batches', num_batches, 1)
        if not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
            raise ValueError(f'ELAPruneHook: quantile={quantile!r} must be in '
                             'the open interval (0, 1)')
        if not isinstance(max_prune_ratio, (int, float)) \
                or not 0 <= max_prune_ratio < 1:
            raise ValueError(f'ELAPruneHook: max_prune_ratio='
                             f'{max_prune_ratio!r} must be in [0, 1)')
        if not isinstance(dry_run, bool):
            raise ValueError(f'ELAPruneHook: dry_run={dry_run!r} must be a '
                             'bool')
        self.begin = begin
        self.interval = interval
        self.quantile = float(quantile)
        self.max_prune_ratio = float(max_prune_ratio)
        self.min_keep = min_keep
        self.max_rounds = max_rounds
        self.dry_run = dry_run
        self.num_batches = num_batches

        self.rounds = 0
        self.history: List[dict] = []
        self._in_training = False
        self._scoring = False
        self._batches = 0
        self._acc: Optional[RedundancyAccumulator] = None

    # ------------------------------------------------------------- schedule
    def before_run(self, runner) -> None:
        if not attention_stacks(runner.model):
            runner.logger.warning('ELAPruneHook: the model has no '
                                  'layer-attention units; nothing to prune')
        if not self.dry_run and any(isinstance(h, EMAHook)
                                    for h in runner.hooks):
            raise ValueError(
                'ELAPruneHook cannot prune a model that an EMAHook averages: '
                'the EMA copy would keep the deleted units. Remove EMAHook '
                'from custom_hooks or set ELAPruneHook(dry_run=True)')

    def before_train(self, runner) -> None:
        self._in_training = True
        self._sync_optimizer_and_ddp(runner)

    def _sync_optimizer_and_ddp(self, runner) -> None:
        """Make the optimizer and the DDP wrapper hold exactly the model's parameters.

        Called after this hook prunes, and in ``before_train`` for pruning that
        happened elsewhere: a pruned checkpoint loaded through a backbone
        ``init_cfg`` (Pretrained) prunes the model after the optimizer and the DDP
        wrapper were built.
        """
        alive = {id(p) for p in unwrap(runner.model).parameters()}
        stale = [p for w in _optimizers(runner.optim_wrapper)
                 for g in w.param_groups for p in g['params']
                 if id(p) not in alive]
        if stale:
            drop_parameters(runner.optim_wrapper, stale)
        wrapped = getattr(runner.model, '_module_parameters', None)
        if wrapped is not None and {id(p) for p in wrapped} != alive:
            rewrap_ddp(runner)

    def after_train(self, runner) -> None:
        self._in_training = False

    def _progress(self, runner) -> int:
        by_epoch = isinstance(runner.train_loop, EpochBasedTrainLoop)
        return runner.epoch if by_epoch else runner.iter

    def _due(self, runner) -> bool:
        if not self._in_training or self.rounds >= self.max_rounds:
            return False
        step = self._progress(runner)
        return step >= self.begin and (step - self.begin) % self.interval == 0

    # ------------------------------------------------------------- scoring
    def before_val_epoch(self, runner) -> None:
        self._scoring = self._due(runner) and bool(attention_stacks(
            runner.model))
        if not self._scoring:
            return
        keys = [(name, i) for name, stack in attention_stacks(
            runner.model).items() for i, _ in stack.kept_units()[1:]]
        # Accumulate where the attention lives: no host sync per batch, and
        # NCCL can reduce the sums in place.
        device = next(unwrap(runner.model).parameters()).device
        self._acc = RedundancyAccumulator(keys, device=device)
        self._batches = 0
        set_recording(runner.model, True)

    def after_val_iter(self, runner, batch_idx: int, data_batch=None,
                       outputs=None) -> None:
        if not self._scoring:
            return
        if self.num_batches is not None and \
                self._batches >= self.num_batches:
            return
        for name, stack in attention_stacks(runner.model).items():
            units = stack.kept_units()
            for (_, prev), (i, unit) in zip(units, units[1:]):
                if prev.attention is not None and unit.attention is not None:
                    self._acc.update((name, i), prev.attention,
                                     unit.attention)
        self._batches += 1
        if self.num_batches is not None and \
                self._batches >= self.num_batches:
            set_recording(runner.model, False)

    def after_val_epoch(self, runner, metrics=None) -> None:
        if not self._scoring:
            return
        self._scoring = False
        set_recording(runner.model, False)
        acc = self._acc
        dist.all_reduce(acc.sums, op='sum')
        dist.all_reduce(acc.counts, op='sum')
        record = self._decide(runner, acc.scores())
        self.rounds += 1
        self.history.append(record)
        self._log(runner, record)
        if not self.dry_run and record['num_pruned_now'] > 0:
            self._prune(runner, record['mask'])
            self._resave_checkpoint(runner)

    def _decide(self, runner, scores: Dict) -> dict:
        masks = get_masks(runner.model)
        per_stack = {
            name: [scores.get((name, i)) for i in range(len(mask))]
            for name, mask in masks.items()
        }
        result = ebqm_select(per_stack, masks, self.quantile,
                             self.max_prune_ratio, self.min_keep)
        # Every rank must reach the same mask; refuse to go on otherwise.
        gathered = dist.all_gather_object(result.mask)
        if any(m != result.mask for m in gathered):
            raise RuntimeError(
                f'ELAPruneHook: ranks reached different masks: {gathered}')
        record = result.to_dict()
        record.update(
            round=self.rounds + 1,
            progress=self._progress(runner),
            iter=runner.iter,
            scored_batches=self._batches,
            rank_masks=gathered,
            dry_run=self.dry_run,
            num_pruned_now=sum(d.pruned for d in result.decisions),
            quantile=self.quantile,
            max_prune_ratio=self.max_prune_ratio,
            min_keep=self.min_keep)
        return record

    # ------------------------------------------------------------- pruning
    def _prune(self, runner, masks: Dict[str, Sequence[bool]]) -> None:
        model = unwrap(runner.model)
        before = list(model.parameters())
        apply_masks(model, masks)
        after = {id(p) for p in model.parameters()}
        removed = [p for p in before if id(p) not in after]
        self._sync_optimizer_and_ddp(runner)
        units = count_units(model)
        runner.logger.info(
            f'ELAPruneHook: pruned to {units["kept"]}/{units["total"]} '
            f'units; {sum(p.numel() for p in removed)} parameters removed, '
            f'{sum(p.numel() for p in model.parameters())} remain')

    def _resave_checkpoint(self, runner) -> None:
        """Make the checkpoint of this epoch/iteration hold the pruned model.

        mmengine's CheckpointHook saved it before this validation round; save it again
        (to a temporary file, then an atomic rename) so that resuming from it restores
        the pruned structure.
        """
        ckpt_hook = next((h for h in runner.hooks
                          if isinstance(h, CheckpointHook)), None)
        if ckpt_hook is None or ckpt_hook.last_ckpt is None:
            return
        step = runner.epoch if ckpt_hook.by_epoch else runner.iter
        name = ckpt_hook.filename_tmpl.format(step)
        if osp.basename(ckpt_hook.last_ckpt) != name:
            return  # no checkpoint was written for this step
        out_dir = ckpt_hook.last_ckpt[:-len(name)].rstrip('/')
        # On a local disk: a temporary file, then an atomic rename, so an
        # interrupted save never replaces a good checkpoint. Other backends
        # (e.g. s3) are written in place, as mmengine itself does.
        local = isinstance(ckpt_hook.file_backend, LocalBackend)
        try:
            runner.save_checkpoint(
                out_dir,
                name + '.ela_tmp' if local else name,
                save_optimizer=ckpt_hook.save_optimizer,
                save_param_scheduler=ckpt_hook.save_param_scheduler,
                meta=dict(epoch=runner.epoch, iter=runner.iter),
                by_epoch=ckpt_hook.by_epoch,
                backend_args=ckpt_hook.backend_args)
            if dist.is_main_process():
                if local:
                    os.replace(
                        osp.join(out_dir, name + '.ela_tmp'),
                        osp.join(out_dir, name))
                runner.logger.info(f'ELAPruneHook: re-saved {name} with the '
                                   'pruned model')
        finally:
            dist.barrier()

    # ------------------------------------------------------------- logging
    def _log(self, runner, record: dict) -> None:
        lines = [f'ELAPruneHook round {record["round"]} '
                 f'(fit: {record["fit_method"]}, alpha={record["alpha"]:.3g}, '
                 f'beta={record["beta"]:.3g}, quantile={self.quantile}, '
                 f'{record["scored_batches"]} batches per process'
                 f'{", dry run" if self.dry_run else ""})',
                 f'{"unit":<28}{"score":>11}{"cdf":>8}  decision']
        for d in record['decisions']:
            score = '-' if d['score'] is None else f'{d["score"]:.4g}'
            cdf = '-' if d['cdf'] is None else f'{d["cdf"]:.3f}'
            decision = 'PRUNED' if d['pruned'] else 'kept'
            lines.append(f'{d["group"] + "." + str(d["index"]):<28}'
                         f'{score:>11}{cdf:>8}  {decision} ({d["reason"]})')
        units = count_units(runner.model)
        kept = units['kept'] - (0 if self.dry_run else
                                record['num_pruned_now'])
        lines.append(f'units kept: {kept}/{units["total"]}')
        runner.logger.info('\n'.join(lines))
        runner.visualizer.add_scalars(
            {
                'ela/units_kept': kept,
                'ela/pruned_ratio': 1 - kept / max(units['total'], 1)
            },
            step=runner.iter)
        if dist.is_main_process():
            out_dir = osp.join(runner.work_dir, 'ela_prune')
            os.makedirs(out_dir, exist_ok=True)
            path = osp.join(out_dir, f'round_{record["round"]}.json')
            with open(path, 'w') as f:
                json.dump(record, f, indent=2)

    # ------------------------------------------------------------- resume
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['ela_prune'] = dict(rounds=self.rounds,
                                       history=self.history)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Restore the pruned structure before mmengine loads model and optimizer."""
        state = checkpoint.get('ela_prune')
        if state is not None and getattr(runner, '_resume', False):
            self.rounds = int(state.get('rounds', 0))
            self.history = list(state.get('history', []))
        stacks = attention_stacks(runner.model)
        state_dict = checkpoint.get('state_dict', checkpoint)
        masks = {}
        for name, stack in stacks.items():
            key = f'{name}.mask'
            saved = state_dict.get(key, state_dict.get('module.' + key))
            masks[name] = stack.kept if saved is None else \
                [bool(m) for m in torch.as_tensor(saved).tolist()]
        if masks == get_masks(runner.model):
            return
        self._prune(runner, masks)
