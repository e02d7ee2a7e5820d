"""setup_distributed / teardown_distributed on a CPU-only machine, one
process (gloo)."""
import pytest
import torch
import torch.distributed as torch_dist
from helpers import free_port
from mmengine.config import Config

from mmdet_ela.utils import setup_distributed, teardown_distributed

needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason='the gloo set-up is for CPU-only torch')


def test_bad_launcher_is_named():
    with pytest.raises(ValueError, match="launcher='ssh'.*'pytorch'"):
        setup_distributed(Config(), 'ssh')


@needs_cpu_only
def test_setup_then_teardown_one_process(monkeypatch):
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', free_port())
    cfg = Config()
    setup_distributed(cfg, 'pytorch')
    try:
        assert torch_dist.is_initialized()
        assert torch_dist.get_backend() == 'gloo'
        assert cfg.env_cfg.dist_cfg == dict(backend='gloo')
        assert cfg.model_wrapper_cfg.type == 'ELADistributedDataParallel'
    finally:
        teardown_distributed()
    assert not torch_dist.is_initialized()
    teardown_distributed()  # nothing left to end: a no-op
