"""Let torch >= 2.6 load mmengine checkpoints with ``weights_only=True``.

torch 2.6 made ``weights_only=True`` the default of ``torch.load``. mmengine 0.10.7
saves its message hub (``HistoryBuffer`` objects holding numpy arrays) in every
checkpoint, so ``--resume``, ``load_from`` and ``tools/test.py`` fail with
``UnpicklingError: Weights only load failed``. Rather than switching the safety off,
we allow-list exactly the types that mmengine checkpoints hold.
"""
import pickle
from typing import Any, List

import numpy as np
import torch


def _numpy_globals() -> List:
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(t)) for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
        np.uint32, np.uint64, np.float16, np.float32, np.float64,
        np.complex64, np.complex128, np.str_, np.object_)]
    return [_reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes]


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """A ``getattr`` that only fetches HistoryBuffer's statistics methods.

    ``HistoryBuffer.__getstate__`` pickles its registry of statistics methods
    (``min``, ``max``, ``current``, ``mean``...) as ``getattr(HistoryBuffer, 'min')``.
    The weights-only unpickler gets this function under the name
    ``builtins.getattr``; the real ``getattr`` would allow arbitrary code.
    """
    from mmengine.logging import HistoryBuffer
    if obj is HistoryBuffer and (name in HistoryBuffer._statistics_methods
                                 or name in ('min', 'max', 'current', 'mean')):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'weights-only load: getattr({obj!r}, {name!r}) is not allowed; '
        'only HistoryBuffer statistics methods are')


def mmengine_checkpoint_types() -> List:
    """The non-tensor types found in mmengine 0.10.x checkpoints."""
    from mmengine.logging import HistoryBuffer
    return [
        HistoryBuffer, (history_buffer_getattr, 'builtins.getattr'),
        *_numpy_globals()
    ]


def allow_mmengine_checkpoint_types() -> None:
    """Add those types to torch's weights-only unpickler allow-list (idempotent)."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:
        add(mmengine_checkpoint_types())


def check_checkpoint_file(path: str) -> None:
    """Fail early, and clearly, on a missing, truncated or corrupted checkpoint.

    torch checkpoints are zip archives; this reads every member's CRC without
    unpickling anything. Non-local paths (URLs, ``torchvision://``...) are left to
    mmengine's loaders.
    """
    import os
    import zipfile
    if '://' in path:
        return
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint {path!r} does not exist')
    reason = None
    if not zipfile.is_zipfile(path):
        reason = 'not a torch zip archive (truncated, or not a checkpoint)'
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                reason = f'member {bad!r} fails its CRC check'
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            reason = str(err)
    if reason:
        raise ValueError(f'checkpoint {path!r} is corrupted: {reason}. '
                         'Use another checkpoint (e.g. the previous epoch).')
