"""When the pruning hook scores: scheduled points met by validation rounds.

Progress is counted in finished epochs (epoch-based loops) or finished
iterations (iteration-based loops): during the validation round that follows
epoch ``e``, ``runner.epoch == e``. The scheduled points are ``begin``,
``begin + interval``, ...; a round is due at the first validation round at or
after each point (one round covers every point it passed).
"""
import bisect
from typing import List, Optional, Tuple

from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop

__all__ = ['is_due', 'validation_points', 'planned_rounds', 'describe_plan']


def is_due(progress: int, begin: int, interval: int,
           last_scored: Optional[int]) -> bool:
    """Whether a validation round at ``progress`` should be scored.

    Args:
        progress (int): finished epochs or iterations now.
        begin (int): the first scheduled point.
        interval (int): the distance between scheduled points.
        last_scored (int, optional): progress of the last scored round; None
            if there was none.

    Returns:
        bool: True iff a scheduled point lies in ``(last_scored, progress]``.
    """
    if progress < begin:
        return False
    latest_point = begin + (progress - begin) // interval * interval
    return last_scored is None or latest_point > last_scored


def validation_points(train_loop) -> Optional[List[int]]:
    """The progress values at which ``train_loop`` runs validation.

    Follows mmengine 0.10's ``EpochBasedTrainLoop`` / ``IterBasedTrainLoop``:
    after step ``s`` (1-based) when ``s >= val_begin`` and ``s`` is a multiple
    of the current ``val_interval`` (dynamic intervals included) or the last
    step. Returns None for loops it does not know.
    """
    if isinstance(train_loop, EpochBasedTrainLoop):
        end = train_loop.max_epochs
    elif isinstance(train_loop, IterBasedTrainLoop):
        end = train_loop.max_iters
    else:
        return None
    milestones = train_loop.dynamic_milestones
    intervals = train_loop.dynamic_intervals
    points = []
    for step in range(1, end + 1):
        # the loop picks the interval with bisect(milestones, step + 1)
        interval = intervals[bisect.bisect(milestones, step + 1) - 1]
        if step >= train_loop.val_begin and (step % interval == 0
                                             or step == end):
            points.append(step)
    return points


def planned_rounds(points: List[int],
                   begin: int,
                   interval: int,
                   max_rounds: int,
                   after: int = 0,
                   last_scored: Optional[int] = None) -> List[int]:
    """The validation points (``> after``) that will be scored, at most
    ``max_rounds`` of them."""
    rounds: List[int] = []
    for p in points:
        if len(rounds) >= max_rounds:
            break
        if p > after and is_due(p, begin, interval, last_scored):
            rounds.append(p)
            last_scored = p
    return rounds


def describe_plan(
        train_loop,
        val_loop,
        begin: int,
        interval: int,
        rounds_left: int,
        progress: int = 0,
        last_scored: Optional[int] = None) -> Optional[Tuple[bool, str]]:
    """Say when the hook will score, and whether all its rounds fit.

    Args:
        train_loop: the Runner's train loop.
        val_loop: the Runner's val loop, or None.
        begin (int): the first scheduled point.
        interval (int): distance between scheduled points.
        rounds_left (int): scoring rounds still allowed (> 0).
        progress (int): finished epochs or iterations now. Default: 0.
        last_scored (int, optional): progress of the last scored round.

    Returns:
        tuple | None: ``(every round fits, message)``; None for a train loop
        whose validation rounds cannot be predicted.
    """
    if val_loop is None:
        return False, ('ELAPruneHook will never score: it scores on '
                       'validation rounds and this run has no validation '
                       'loop (val_dataloader, val_cfg and val_evaluator)')
    points = validation_points(train_loop)
    if points is None:
        return None
    planned = planned_rounds(points, begin, interval, rounds_left, progress,
                             last_scored)
    unit = 'epochs' if isinstance(train_loop, EpochBasedTrainLoop) \
        else 'iterations'
    if len(planned) == rounds_left:
        return True, f'ELAPruneHook will score after {unit} {planned}'
    head = 'ELAPruneHook will never score' if not planned else \
        f'ELAPruneHook will score only {len(planned)} of {rounds_left} rounds'
    future = [p for p in points if p > progress]
    end = train_loop.max_epochs if unit == 'epochs' else train_loop.max_iters
    return False, (
        f'{head}: its schedule (begin={begin}, interval={interval}, counted '
        f'in finished {unit}) scores at the first validation round at or '
        f'after each of {begin}, {begin + interval}, ...; validation runs '
        f'after {unit} {future[:20]}{" ..." if len(future) > 20 else ""} '
        f'(val_begin={train_loop.val_begin}, val_interval='
        f'{train_loop.val_interval}, training ends after {end} {unit})')
