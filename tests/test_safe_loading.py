"""Crafted checkpoints are refused everywhere, with no side effect; genuine
mmengine checkpoints (HistoryBuffers, numpy scalars) and legacy-format files
still load."""
import io
import os.path as osp
import pickle
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from crafted_checkpoints import (System, as_torch_file, bad_state,
                                 call_history_buffer, double_build,
                                 getattr_outside_statistics,
                                 setstate_getattr_chain)
from helpers import PYTHON, ROOT, SHAPES_CONFIG, run_env, tiny_config
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

import mmdet_ela  # noqa: F401  (registers the safe local loader)
from mmdet_ela.utils import (UnsafeCheckpointError, check_checkpoint_file,
                             load_checkpoint_file, mmengine_checkpoint_loading)


@pytest.fixture
def crafted(tmp_path):
    """name -> (checkpoint path, marker that the payload would create)."""
    marker = str(tmp_path / 'pwned')
    system = io.BytesIO()
    torch.save({'meta': {}, 'x': System(marker)}, system)
    payloads = {
        'setstate_getattr_chain':
        setstate_getattr_chain(marker),
        'os_system':
        system.getvalue(),
        'getattr_outside':
        getattr_outside_statistics(),
        'call_class':
        call_history_buffer(),
        'double_build':
        double_build(),
        'extra_method':
        bad_state(statistics_methods={
            'min': HistoryBuffer.min,
            'update': HistoryBuffer.update
        }),
        'object_array':
        bad_state(_log_history=np.array(['x'], object)),
        'extra_key':
        bad_state(evil=1),
    }
    files = {}
    for name, data in payloads.items():
        path = str(tmp_path / f'{name}.pth')
        if data.startswith(b'PK'):
            Path(path).write_bytes(data)
        else:
            as_torch_file(data, path)
        files[name] = path
    return files, marker


def _run_python(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter (the repository on its path)."""
    return subprocess.run([PYTHON, '-c', script],
                          capture_output=True,
                          text=True,
                          env=run_env(),
                          cwd=ROOT)


def _safe_globals() -> set:
    return set(torch.serialization.get_safe_globals())


def _registry():
    return dict(HistoryBuffer._statistics_methods)


def test_import_leaves_torch_safe_globals_unchanged():
    script = textwrap.dedent("""
        import torch, mmdet.apis, mmengine.runner
        before = set(torch.serialization.get_safe_globals())
        import mmdet_ela
        assert set(torch.serialization.get_safe_globals()) == before
        from mmengine.runner.checkpoint import CheckpointLoader
        loader = CheckpointLoader._get_checkpoint_loader('a/b.pth')
        assert loader._mmdet_ela_safe and loader.__name__ == 'load_from_local'
        print('ok')""")
    out = _run_python(script)
    assert out.returncode == 0 and 'ok' in out.stdout, out.stderr


def test_context_is_scoped_and_reentrant():
    before = _safe_globals()
    with mmengine_checkpoint_loading():
        inside = _safe_globals()
        with mmengine_checkpoint_loading():
            pass
        assert _safe_globals() == inside
    assert _safe_globals() == before
    assert len(inside) > len(before)
    # Entries someone else had allowed stay allowed after the context.
    torch.serialization.add_safe_globals([np.ndarray])
    try:
        with mmengine_checkpoint_loading():
            pass
        assert np.ndarray in _safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(list(before))


@pytest.mark.parametrize('name', [
    'setstate_getattr_chain', 'os_system', 'getattr_outside', 'call_class',
    'double_build', 'extra_method', 'object_array', 'extra_key'
])
def test_crafted_files_are_refused_without_side_effects(crafted, name):
    files, marker = crafted
    path = files[name]
    registry = _registry()
    safe_globals = _safe_globals()
    check_checkpoint_file(path)  # a well-formed file: refused when unpickled
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):
        with mmengine_checkpoint_loading():
            torch.load(path, weights_only=True)
    for load in (lambda: CheckpointLoader.load_checkpoint(path),
                 lambda: _load_checkpoint(path, map_location='cpu'),
                 lambda: load_checkpoint_file(path)):
        with pytest.raises(UnsafeCheckpointError) as info:
            load()
        message = str(info.value)
        assert f'{name}.pth' in message and 'outside the allow-list' in message
        assert isinstance(info.value.__cause__, pickle.UnpicklingError)
    assert not osp.exists(marker)
    assert _registry() == registry
    assert _safe_globals() == safe_globals


def test_the_chain_is_a_live_exploit_under_the_old_allow_list(crafted):
    """Control: with the former process-wide allow-list the file runs code."""
    files, marker = crafted
    script = textwrap.dedent(f"""
        import pickle, torch
        from mmengine.logging import HistoryBuffer
        def history_buffer_getattr(obj, name):  # the former code
            if obj is HistoryBuffer and (
                    name in HistoryBuffer._statistics_methods
                    or name in ('min', 'max', 'current', 'mean')):
                return getattr(obj, name)
            raise pickle.UnpicklingError(name)
        torch.serialization.add_safe_globals(
            [HistoryBuffer, (history_buffer_getattr, 'builtins.getattr')])
        try:
            torch.load({files['setstate_getattr_chain']!r}, weights_only=True)
        except Exception:
            pass
        assert '__init__' in HistoryBuffer._statistics_methods""")
    out = _run_python(script)
    assert out.returncode == 0, out.stderr
    assert osp.exists(marker)


def test_init_detector_refuses_crafted_file(crafted):
    from mmdet.apis import init_detector
    files, marker = crafted
    registry = _registry()
    with pytest.raises(
            UnsafeCheckpointError,
            match='setstate_getattr_chain.pth.*allow-list'):
        init_detector(
            SHAPES_CONFIG, files['setstate_getattr_chain'], device='cpu')
    assert not osp.exists(marker) and _registry() == registry


def _hub_checkpoint(name: str) -> dict:
    hub = MessageHub.get_instance(name)
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
        hub.update_scalar('train/lr', 0.01)
    hub.update_scalar('val/coco/bbox_mAP', np.float64(0.25).item())
    hub.update_info('iter', 3)
    hub.update_info('score', np.float32(0.5))
    state = hub.state_dict()
    state['log_scalars']['empty'] = HistoryBuffer()  # pickles builtins.bytes
    return dict(
        meta=dict(
            epoch=1, seed=np.int64(7), lr=np.float64(0.01),
            shape=np.arange(3)),
        state_dict={'w': torch.arange(4.)},
        message_hub=state)


@pytest.mark.parametrize('legacy', [False, True])
def test_genuine_mmengine_checkpoint_loads(tmp_path, legacy):
    path = str(tmp_path / 'epoch_1.pth')
    ckpt = _hub_checkpoint(f'test_safe_loading_{legacy}')
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    registry = _registry()
    safe_globals = _safe_globals()
    check_checkpoint_file(path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # torch's default stays strict
    loaded = _load_checkpoint(path, map_location='cpu')
    scalars = loaded['message_hub']['log_scalars']
    assert {type(v) for v in scalars.values()} == {HistoryBuffer}
    loss = scalars['train/loss']
    np.testing.assert_allclose(loss.data[0], [1.0, 0.5, 1 / 3])
    assert loss.mean() == pytest.approx((1 + 0.5 + 1 / 3) / 3)
    assert loss.max_length == 1000000 and 'statistics_methods' not in vars(
        loss)
    assert len(scalars['empty'].data[0]) == 0
    assert loaded['meta']['seed'] == 7 and loaded['meta']['lr'] == 0.01
    assert loaded['message_hub']['runtime_info']['score'] == np.float32(0.5)
    assert torch.equal(loaded['state_dict']['w'], torch.arange(4.))
    assert _registry() == registry
    assert _safe_globals() == safe_globals


def test_fresh_process_can_use_loaded_history_buffers(tmp_path):
    """A rank that built no HistoryBuffer yet still has mmengine's methods."""
    path = str(tmp_path / 'epoch_1.pth')
    torch.save(_hub_checkpoint('test_safe_loading_fresh'), path)
    script = textwrap.dedent(f"""
        import mmdet_ela
        from mmengine.runner.checkpoint import _load_checkpoint
        ckpt = _load_checkpoint({path!r}, map_location='cpu')
        loss = ckpt['message_hub']['log_scalars']['train/loss']
        print(round(float(loss.statistics('mean')), 4))""")
    out = _run_python(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == '0.6111'


def test_legacy_and_damaged_files(tmp_path):
    legacy = str(tmp_path / 'legacy.pth')
    torch.save({
        'state_dict': {
            'w': torch.ones(3)
        },
        'meta': {
            'a': 'x' * 500
        }
    },
               legacy,
               _use_new_zipfile_serialization=False)
    check_checkpoint_file(legacy)
    assert torch.equal(
        load_checkpoint_file(legacy)['state_dict']['w'], torch.ones(3))
    data = Path(legacy).read_bytes()
    cut = str(tmp_path / 'legacy_cut.pth')
    Path(cut).write_bytes(data[:len(data) // 2])  # inside the pickles
    with pytest.raises(ValueError, match='legacy_cut.pth.*corrupted'):
        check_checkpoint_file(cut)
    with pytest.raises(ValueError, match='legacy_cut.pth.*corrupted'):
        load_checkpoint_file(cut)

    good = str(tmp_path / 'good.pth')
    torch.save({'state_dict': {'w': torch.ones(3)}}, good)
    data = Path(good).read_bytes()
    for name, raw in (('cut.pth', data[:len(data) // 2]),
                      ('garbage.pth', b'\x00not a checkpoint' * 50)):
        (tmp_path / name).write_bytes(raw)
        with pytest.raises(ValueError, match=f'{name}.*corrupted'):
            check_checkpoint_file(str(tmp_path / name))
        with pytest.raises(ValueError, match=f'{name}.*corrupted'):
            _load_checkpoint(str(tmp_path / name))


def test_history_buffer_state_is_validated_directly():
    from mmdet_ela.utils.safe_load import _HistoryBufferLoader
    good = dict(
        max_length=5,
        _log_history=np.array([1., 2.]),
        _count_history=np.array([1, 1]))
    bad = [
        dict(good, _log_history=np.array(['x'], object)),
        dict(good, _log_history=np.ones((1, 2))),
        dict(good, _count_history=np.array([1])),
        dict(good, max_length=True),
        dict(good, statistics_methods={'min': HistoryBuffer.max}),
        [('max_length', 5)],
    ]
    registry = _registry()
    for state in bad:
        obj = _HistoryBufferLoader.__new__(_HistoryBufferLoader)
        with pytest.raises(pickle.UnpicklingError):
            obj.__setstate__(state)
    obj = _HistoryBufferLoader.__new__(_HistoryBufferLoader)
    obj.__setstate__(
        dict(good, statistics_methods={'mean': HistoryBuffer.mean}))
    assert type(obj) is HistoryBuffer and obj.current() == 2.0
    assert _registry() == registry


# ------------------------------------------------------- real Runner flows
@pytest.fixture(scope='module')
def epoch_1(tiny_shapes, tmp_path_factory):
    """A real Runner's epoch-1 checkpoint (message hub HistoryBuffers...)."""
    from mmengine.runner import Runner
    work = str(tmp_path_factory.mktemp('genuine'))
    Runner.from_cfg(
        tiny_config(tiny_shapes, work, max_epochs=1, max_rounds=0)).train()
    return osp.join(work, 'epoch_1.pth')


def _two_epoch_config(tiny_shapes, tmp_path) -> str:
    cfg = tiny_config(
        tiny_shapes, str(tmp_path / 'unused'), max_epochs=2, max_rounds=0)
    path = str(tmp_path / 'tiny_two_epochs.py')
    cfg.dump(path)
    return path


def _loss_history(path: str) -> np.ndarray:
    hub = load_checkpoint_file(path, 'cpu')['message_hub']
    buf = hub['log_scalars']['train/loss']
    assert type(buf) is HistoryBuffer
    return buf.data[0]


@pytest.mark.slow
def test_runner_resumes_genuine_checkpoint(tiny_shapes, tmp_path, epoch_1):
    from mmengine.runner import Runner
    with pytest.raises(pickle.UnpicklingError):
        torch.load(epoch_1, weights_only=True)  # torch's own default
    registry, safe_globals = _registry(), _safe_globals()
    cfg = tiny_config(tiny_shapes, str(tmp_path), max_epochs=2, max_rounds=0)
    cfg.resume, cfg.load_from = True, epoch_1
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.epoch == 2
    resumed = runner.message_hub.log_scalars['train/loss']
    assert type(resumed) is HistoryBuffer
    first = _loss_history(epoch_1)
    assert len(first) == 4 and len(resumed.data[0]) == 8
    np.testing.assert_array_equal(resumed.data[0][:4], first)
    assert _registry() == registry and _safe_globals() == safe_globals


@pytest.mark.slow
@pytest.mark.parametrize('script', ['ours', 'mmdet'])
def test_train_scripts_resume_genuine_checkpoint(tiny_shapes, tmp_path,
                                                 epoch_1, script):
    """Our tools/train.py and mmdet's packaged one (custom_imports only)."""
    import mmdet
    train = osp.join(ROOT, 'tools', 'train.py') if script == 'ours' else \
        osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    work = str(tmp_path / 'work')
    out = subprocess.run([
        PYTHON, train,
        _two_epoch_config(tiny_shapes, tmp_path), '--work-dir', work,
        '--resume', epoch_1
    ],
                         capture_output=True,
                         text=True,
                         env=run_env(),
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'resumed epoch: 1' in out.stdout + out.stderr
    history = _loss_history(osp.join(work, 'epoch_2.pth'))
    assert len(history) == 8
    np.testing.assert_array_equal(history[:4], _loss_history(epoch_1))


@pytest.mark.slow
def test_tools_refuse_crafted_checkpoint(tiny_shapes, tmp_path, crafted):
    files, marker = crafted
    path = files['setstate_getattr_chain']
    config = _two_epoch_config(tiny_shapes, tmp_path)
    for args in (['tools/train.py', config, '--resume',
                  path], ['tools/test.py', config, path]):
        out = subprocess.run(
            [PYTHON, *args, '--work-dir',
             str(tmp_path / 'work')],
            capture_output=True,
            text=True,
            env=run_env(),
            cwd=ROOT)
        assert out.returncode != 0, args
        assert 'UnsafeCheckpointError' in out.stderr, out.stderr[-3000:]
        assert 'setstate_getattr_chain.pth' in out.stderr
        assert 'outside the allow-list' in out.stderr
        assert not osp.exists(marker)
