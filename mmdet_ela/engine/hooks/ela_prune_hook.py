"""ELAPruneHook: score layer-attention redundancy on validation rounds and
prune."""
from typing import Dict, List, Optional, Sequence

from mmdet.registry import HOOKS
from mmengine import dist
from mmengine.hooks import EMAHook, Hook
from mmengine.runner import EpochBasedTrainLoop

from ...pruning import (AdjacentUnitScorer, apply_masks, attention_stacks,
                        count_units, format_table, get_masks,
                        guard_mask_loading, make_record, masks_from_state_dict,
                        set_recording, unwrap, write_record)
from ...pruning.schedule import describe_plan, is_due
from ...pruning.selection import Selector, check_int
from ..optim import sync_optimizer_and_ddp
from ..resave import remove_stale_tmp, resave_after_round


@HOOKS.register_module()
class ELAPruneHook(Hook):
    """Prune redundant layer-attention retrievals during training.

    A validation round is scored when it is the first at or after a scheduled
    point ``begin``, ``begin + interval``, ... (progress counts finished
    epochs, or iterations for iteration-based loops). Every unit records its
    attention; the scorer sums the KL score D_b of each unit against its kept
    predecessor, skipping non-finite samples, and reduces across processes.
    EBQM (or, for an ablation, a random draw under the same safeguards)
    decides; the hook prunes in place, syncs the optimizer and DDP, re-saves
    this step's checkpoint, logs the decision table and writes
    ``work_dir/ela_prune/round_K.json``. A round that prunes nothing says why
    in its record and log; training goes on.

    Args:
        begin (int): the first scheduled point. Default: 1.
        interval (int): distance between scheduled points. Default: 1.
        max_rounds (int): at most this many scoring rounds. Default: 1.
        dry_run (bool): score, decide and log, but prune nothing.
            Default: False.
        num_batches (int, optional): score only the first ``num_batches``
            validation batches of a round (per process); None = all.
        **selection: ``strategy`` ('ebqm' or 'random'), ``quantile``,
            ``max_prune_ratio``, ``min_keep``, ``random_units`` and ``seed``;
            see :class:`mmdet_ela.pruning.selection.Selector`.
    """

    # After CheckpointHook (VERY_LOW): a best checkpoint saved for this round
    # holds the model that was evaluated; our re-save then updates epoch_N.pth.
    priority = 'LOWEST'

    def __init__(self,
                 begin: int = 1,
                 interval: int = 1,
                 max_rounds: int = 1,
                 dry_run: bool = False,
                 num_batches: Optional[int] = None,
                 **selection) -> None:
        check_int('ELAPruneHook', 'begin', begin, 0)
        check_int('ELAPruneHook', 'interval', interval, 1)
        check_int('ELAPruneHook', 'max_rounds', max_rounds, 0)
        if num_batches is not None:
            check_int('ELAPruneHook', 'num_batches', num_batches, 1)
        if not isinstance(dry_run, bool):
            raise ValueError(f'ELAPruneHook: dry_run={dry_run!r} must be a '
                             'bool')
        self.selector = Selector(**selection)
        self.begin, self.interval = begin, interval
        self.max_rounds = max_rounds
        self.dry_run, self.num_batches = dry_run, num_batches
        self.rounds, self.last_scored = 0, None
        self.history: List[dict] = []
        self._in_training = False
        self._scorer: Optional[AdjacentUnitScorer] = None
        self._loaded_state: Optional[dict] = None
        self._synced_masks: Optional[Dict[str, List[bool]]] = None

    def before_run(self, runner) -> None:
        model = unwrap(runner.model)
        if not attention_stacks(model):
            runner.logger.warning('ELAPruneHook: the model has no '
                                  'layer-attention units; nothing to prune')
        if not self.dry_run and any(
                isinstance(h, EMAHook) for h in runner.hooks):
            raise ValueError(
                'ELAPruneHook cannot prune a model that an EMAHook averages: '
                'the EMA copy would keep the deleted units. Remove EMAHook '
                'from custom_hooks or set ELAPruneHook(dry_run=True)')
        guard_mask_loading(model)  # model.load_state_dict: all or nothing
        self._synced_masks = get_masks(model)  # what DDP was built with

    def before_train(self, runner) -> None:
        self._in_training = True
        state = self._loaded_state
        if state is not None and runner.iter > 0:  # resumed, not load_from
            self.rounds = int(state.get('rounds', 0))
            self.history = list(state.get('history', []))
            self.last_scored = state.get(
                'last_scored',
                self.history[-1].get('progress') if self.history else None)
        # Pruned elsewhere (a pruned checkpoint in a backbone init_cfg) after
        # the optimizer and the DDP wrapper were built.
        if get_masks(runner.model) != self._synced_masks:
            self._sync(runner)
        remove_stale_tmp(runner)
        if self.rounds < self.max_rounds and attention_stacks(runner.model):
            plan = describe_plan(runner.train_loop, runner.val_loop,
                                 self.begin, self.interval,
                                 self.max_rounds - self.rounds,
                                 self._progress(runner), self.last_scored)
            if plan is not None:  # warn now if rounds cannot happen
                log = runner.logger.info if plan[0] else runner.logger.warning
                log(plan[1])

    def after_train(self, runner) -> None:
        self._in_training = False

    def _progress(self, runner) -> int:
        by_epoch = isinstance(runner.train_loop, EpochBasedTrainLoop)
        return runner.epoch if by_epoch else runner.iter

    def before_val_epoch(self, runner) -> None:
        if (self._in_training and self.rounds < self.max_rounds
                and attention_stacks(runner.model) and is_due(
                    self._progress(runner), self.begin, self.interval,
                    self.last_scored)):
            self._scorer = AdjacentUnitScorer(runner.model)
            set_recording(runner.model, True)

    def after_val_iter(self,
                       runner,
                       batch_idx,
                       data_batch=None,
                       outputs=None) -> None:
        scorer, limit = self._scorer, self.num_batches
        if scorer is None or (limit is not None and scorer.batches >= limit):
            return
        scorer.update()
        if limit is not None and scorer.batches >= limit:
            set_recording(runner.model, False)

    def after_val_epoch(self, runner, metrics=None) -> None:
        scorer, self._scorer = self._scorer, None
        if scorer is None:
            return
        set_recording(runner.model, False)
        scorer.reduce()
        record = self._decide(runner, scorer)
        self.rounds += 1
        self.last_scored = record['progress']
        self.history.append(record)
        if not self.dry_run and record['num_pruned_now'] > 0:
            self._prune(runner, record['mask'])
        # Also after a round that pruned nothing: the checkpoint must count
        # the round, or a resume from it would run the round again.
        record['resaved'] = resave_after_round(runner)
        runner.logger.info(format_table(record))
        units = count_units(runner.model)
        runner.visualizer.add_scalars(
            {
                'ela/units_kept': units['kept'],
                'ela/pruned_ratio': units['pruned'] / max(units['total'], 1),
                'ela/skipped_samples': record['skipped_samples']
            },
            step=runner.iter)
        if dist.is_main_process():
            write_record(runner.work_dir, record)

    def _decide(self, runner, scorer: AdjacentUnitScorer) -> dict:
        result = self.selector.select(scorer.scores(), get_masks(runner.model),
                                      self.rounds + 1)
        # Every rank must reach the same mask; refuse to go on otherwise.
        gathered = dist.all_gather_object(result.mask)
        if any(m != result.mask for m in gathered):
            raise RuntimeError(
                f'ELAPruneHook: ranks reached different masks: {gathered}')
        return make_record(
            result,
            self.rounds + 1,
            self.selector.strategy,
            scored_batches=scorer.batches,
            skipped_samples=scorer.skipped,
            progress=self._progress(runner),
            iter=runner.iter,
            rank_masks=gathered,
            dry_run=self.dry_run,
            **self.selector.settings(self.rounds + 1))

    def _prune(self, runner, masks: Dict[str, Sequence[bool]]) -> None:
        model = unwrap(runner.model)
        before = sum(p.numel() for p in model.parameters())
        apply_masks(model, masks)  # validates every stack before pruning
        self._sync(runner)
        after = sum(p.numel() for p in model.parameters())
        units = count_units(model)
        runner.logger.info(
            f'ELAPruneHook: pruned to {units["kept"]}/{units["total"]} '
            f'units; {before - after} parameters removed, {after} remain')

    def _sync(self, runner) -> None:
        sync_optimizer_and_ddp(runner)
        self._synced_masks = get_masks(runner.model)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['ela_prune'] = dict(
            rounds=self.rounds,
            history=self.history,
            last_scored=self.last_scored)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Restore the pruned structure before mmengine loads model and
        optimizer; every stack's mask is validated before any is pruned."""
        self._loaded_state = checkpoint.get('ela_prune')
        masks = masks_from_state_dict(runner.model,
                                      checkpoint.get('state_dict', checkpoint))
        if masks != get_masks(runner.model):
            self._prune(runner, masks)
