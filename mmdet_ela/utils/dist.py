"""Multi-process training on CPU-only machines (gloo).

mmengine 0.10.7's ``pytorch``/``slurm`` launchers call
``torch.cuda.set_device`` and its DDP wrapper passes ``device_ids``; both fail
on a CPU-only torch. Our tools call :func:`setup_distributed` before building
the Runner: without CUDA it starts the gloo process group itself (the Runner
then skips its own ``init_dist``) and selects
:class:`ELADistributedDataParallel`, which leaves ``device_ids`` out for CPU
modules. With CUDA it changes nothing.
"""
import os
import subprocess

import torch
import torch.distributed as torch_dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class ELADistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper that accepts CPU modules (no ``device_ids``)."""

    def __init__(self, module, device_ids=None, **kwargs) -> None:
        param = next(module.parameters(), None)
        if param is not None and param.device.type == 'cpu':
            device_ids = None
        super().__init__(module=module, device_ids=device_ids, **kwargs)


def _slurm_env() -> None:
    os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
    os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
    os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    if 'MASTER_ADDR' not in os.environ:
        node_list = os.environ['SLURM_NODELIST']
        os.environ['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {node_list} | head -n1')
    os.environ.setdefault('MASTER_PORT', '29500')


def _mpi_env() -> None:
    os.environ.setdefault('RANK', os.environ['OMPI_COMM_WORLD_RANK'])
    os.environ.setdefault('WORLD_SIZE', os.environ['OMPI_COMM_WORLD_SIZE'])
    os.environ.setdefault('LOCAL_RANK',
                          os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'))
    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', '29500')


def setup_distributed(cfg, launcher: str) -> None:
    """Prepare ``cfg`` (and, on CPU, the process group) for ``launcher``.

    Args:
        cfg (mmengine.Config): the config; ``env_cfg.dist_cfg`` and
            ``model_wrapper_cfg`` are filled in for CPU runs.
        launcher (str): 'none', 'pytorch', 'slurm' or 'mpi'.
    """
    allowed = ('none', 'pytorch', 'slurm', 'mpi')
    if launcher not in allowed:
        raise ValueError(f'launcher={launcher!r}; allowed values: {allowed}')
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher == 'slurm':
        _slurm_env()
    elif launcher == 'mpi':
        _mpi_env()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']))
    cfg.setdefault('env_cfg', {})
    cfg.env_cfg['dist_cfg'] = dict(backend='gloo')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            type='ELADistributedDataParallel',
            broadcast_buffers=False,
            find_unused_parameters=False)


def teardown_distributed() -> None:
    """End a finished multi-process run cleanly; a no-op without a process
    group.

    Every rank waits at a barrier, then the process group is destroyed, as
    PyTorch asks of every program that starts one. A process that exits with
    its group alive leaves gloo's threads to interpreter shutdown. In one CI
    run a rank aborted near the end of a 2-process resume ("terminate called
    without an active exception"); this clean shutdown is our fix.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
