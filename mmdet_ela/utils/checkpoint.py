"""Checkpoint files: an integrity check; mmengine's local loader made safe.

:func:`register_safe_local_loader` (called by ``import mmdet_ela``)
re-registers mmengine's local-file scheme so that every ``CheckpointLoader``
load of a local file (``--resume``, ``load_from``, ``tools/test.py``,
``init_detector``) runs inside
:func:`~mmdet_ela.utils.safe_load.mmengine_checkpoint_loading`, and fails
clearly on corrupted files and on files holding objects outside the
allow-list.
"""
import functools
import os.path as osp
import pickle
import pickletools
import zipfile
from typing import Any, Callable, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader, load_from_local

from .safe_load import UnsafeCheckpointError, mmengine_checkpoint_loading

# torch's legacy (non-zip) format starts with a pickle of its magic number.
_LEGACY_MAGIC = tuple(
    pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=p)
    for p in range(2, pickle.HIGHEST_PROTOCOL + 1))


def _zip_damage(path: str) -> Optional[str]:
    """Why a zip checkpoint is unreadable (every member's CRC), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return str(err)
    return None if bad is None else f'member {bad!r} fails its CRC check'


def _legacy_damage(path: str) -> Optional[str]:
    """Why a legacy checkpoint is unreadable, or None.

    The legacy format has no checksums: this walks its five leading pickles
    (magic number, protocol, system info, the object, the storage keys) with
    ``pickletools`` (which executes nothing) and checks that storage data
    follows when there are storages.
    """
    try:
        with open(path, 'rb') as f:
            for _ in range(4):
                for _ in pickletools.genops(f):
                    pass
            num_keys = sum(1 for op, arg, _ in pickletools.genops(f)
                           if op.name in ('BINUNICODE', 'SHORT_BINUNICODE',
                                          'UNICODE'))
            data = f.read(8 * num_keys)
    except (ValueError, EOFError, OSError) as err:
        return f'legacy torch file cut short or damaged ({err})'
    if len(data) < 8 * num_keys:
        return 'legacy torch file cut short in its tensor data'
    return None


def check_checkpoint_file(path: str) -> None:
    """Fail early and clearly on a missing, truncated or corrupted checkpoint.

    Accepts torch's zip format (checks every member's CRC) and its legacy
    format (``_use_new_zipfile_serialization=False``; checks its pickles
    parse). Nothing is unpickled. Non-local paths (URLs,
    ``torchvision://``...) are left to mmengine's loaders.

    Args:
        path (str): The checkpoint file.
    """
    if '://' in path:
        return
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    with open(path, 'rb') as f:
        head = f.read(max(map(len, _LEGACY_MAGIC)))
    if head.startswith(_LEGACY_MAGIC):
        reason = _legacy_damage(path)
    elif zipfile.is_zipfile(path):
        reason = _zip_damage(path)
    else:
        reason = ('not a torch zip archive nor a legacy torch file '
                  '(truncated, or not a checkpoint)')
    if reason:
        raise ValueError(f'checkpoint {path!r} is corrupted: {reason}. '
                         'Use another checkpoint (e.g. the previous epoch).')


def _unpickler_reason(err: Exception) -> str:
    """The unpickler's own sentence from torch's long weights-only message."""
    text = str(err).split('\n\nCheck the documentation of torch.load')[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[-1] if lines else repr(err)
    reason = reason.split('WeightsUnpickler error:')[-1].strip()
    reason = reason.split(' Please use `torch.serialization')[0]
    return reason.replace('mmengine checkpoint allow-list: ', '').rstrip('.')


def _raise_clear_error(filename: str, err: Exception) -> None:
    """Turn a failed load into 'is corrupted' or 'outside the allow-list'."""
    path = osp.expanduser(filename)
    if not osp.isfile(path):
        return
    check_checkpoint_file(path)
    if isinstance(err, pickle.UnpicklingError):
        raise UnsafeCheckpointError(
            f'checkpoint {filename!r} holds objects outside the allow-list '
            'for mmengine checkpoints (tensors, mmengine HistoryBuffer, numpy '
            'arrays, scalars and dtypes), so it was not loaded: '
            f'{_unpickler_reason(err)}. Load it with weights_only=False only '
            'if you trust its source completely.') from err


def safe_local_loader(loader: Callable) -> Callable:
    """Wrap an mmengine local-file loader ``(filename, map_location)``.

    The wrapped loader runs inside :func:`mmengine_checkpoint_loading` and
    raises ``ValueError`` ('is corrupted') or :class:`UnsafeCheckpointError`.

    Args:
        loader (Callable): e.g. ``mmengine.runner.checkpoint.load_from_local``.
    """
    if getattr(loader, '_mmdet_ela_safe', False):
        return loader

    @functools.wraps(loader)  # keeps __name__: mmengine logs it
    def wrapped(filename: str, map_location: Any = None) -> Any:
        with mmengine_checkpoint_loading():
            try:
                return loader(filename, map_location)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
                _raise_clear_error(filename, err)
                raise

    wrapped._mmdet_ela_safe = True
    return wrapped


_safe_load_from_local = safe_local_loader(load_from_local)


def load_checkpoint_file(filename: str, map_location: Any = None) -> Any:
    """Load a local checkpoint as mmengine does, with the fixed allow-list.

    What ``CheckpointLoader.load_checkpoint`` does for local paths once
    ``mmdet_ela`` is imported, without its log line.

    Args:
        filename (str): The checkpoint file (``~`` is expanded).
        map_location (str | torch.device, optional): As in ``torch.load``.
            Default: None.

    Returns:
        dict: The checkpoint.

    Raises:
        ValueError: the file is truncated or corrupted.
        UnsafeCheckpointError: it holds objects outside the allow-list.
    """
    return _safe_load_from_local(filename, map_location)


def register_safe_local_loader() -> None:
    """Make mmengine's ``CheckpointLoader`` load local files safely.

    Idempotent. Wraps the loader registered for local paths (prefix ``''``).
    """
    # mmengine has no public getter for a registered scheme; wrapping the one
    # registered (not always load_from_local) keeps other plugins' loaders.
    current = CheckpointLoader._schemes.get('', load_from_local)
    if not getattr(current, '_mmdet_ela_safe', False):
        CheckpointLoader.register_scheme(
            prefixes='', loader=safe_local_loader(current), force=True)
