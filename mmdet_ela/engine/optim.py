"""Keep the optimizer and the DDP wrapper in step with a model that lost
parameters."""
from typing import Iterable, List

import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper, OptimWrapperDict
from torch.nn.parallel import DistributedDataParallel


def optimizers(optim_wrapper) -> List[torch.optim.Optimizer]:
    """The torch optimizers inside an OptimWrapper(Dict); [] if not built."""
    if isinstance(optim_wrapper, OptimWrapperDict):
        return [w.optimizer for w in optim_wrapper.values()]
    if isinstance(optim_wrapper, OptimWrapper):
        return [optim_wrapper.optimizer]
    return []  # a config dict: test/val runs build no optimizer


def drop_parameters(optim_wrapper, removed: Iterable[nn.Parameter]) -> int:
    """Remove parameters, and their state, from every optimizer of the wrapper.

    Each param group keeps its place even when it becomes empty: with
    ``paramwise_cfg`` there is one group per parameter, and the LR schedulers
    and a resumed optimizer state both index the groups by position.

    Returns:
        int: how many parameter entries were removed.
    """
    removed_ids = {id(p) for p in removed}
    count = 0
    for optimizer in optimizers(optim_wrapper):
        for group in optimizer.param_groups:
            kept = [p for p in group['params'] if id(p) not in removed_ids]
            count += len(group['params']) - len(kept)
            group['params'] = kept
        for p in [p for p in optimizer.state if id(p) in removed_ids]:
            del optimizer.state[p]
    return count


def drop_stale_parameters(optim_wrapper, model: nn.Module) -> int:
    """Remove from the optimizers every parameter ``model`` no longer holds.

    Returns:
        int: how many parameter entries were removed.
    """
    alive = {id(p) for p in model.parameters()}
    stale = [
        p for o in optimizers(optim_wrapper) for g in o.param_groups
        for p in g['params'] if id(p) not in alive
    ]
    return drop_parameters(optim_wrapper, stale) if stale else 0


def rewrap_ddp(runner) -> None:
    """Wrap ``runner.model`` again after its parameters changed (DDP only).

    DDP registers its parameters once; a new wrapper is the supported way to
    change them, and keeps ``find_unused_parameters=False`` valid.
    """
    if isinstance(runner.model, DistributedDataParallel):
        runner.model = runner.wrap_model(
            runner.cfg.get('model_wrapper_cfg'), runner.model.module)


def sync_optimizer_and_ddp(runner) -> None:
    """After pruning: the optimizer drops the removed parameters (and their
    state) and a DDP wrapper is built again around the pruned model."""
    model = runner.model.module if is_model_wrapper(runner.model) \
        else runner.model
    drop_stale_parameters(runner.optim_wrapper, model)
    rewrap_ddp(runner)
