"""A fixed weights-only allow-list for mmengine checkpoints, used around loads.

torch >= 2.6 loads with ``weights_only=True``. mmengine 0.10.x checkpoints also
hold the message hub's ``HistoryBuffer`` objects (numpy arrays, plus the
class's registry of statistics methods, pickled as
``getattr(HistoryBuffer, 'min')``) and numpy scalars. Allow-listing the real
``HistoryBuffer`` and ``getattr`` would let a crafted file fill the
class-level registry through
``HistoryBuffer.__setstate__`` and then fetch any attribute (``__init__``,
``__globals__``...): arbitrary code. So the allow-list maps

* ``mmengine.logging.history_buffer.HistoryBuffer`` to
  :class:`_HistoryBufferLoader`, whose ``__setstate__`` validates the state,
  sets three instance attributes and turns the object into a real
  ``HistoryBuffer``: nothing from the file reaches class or global state
  (it only makes sure mmengine's four methods are registered, as
  ``HistoryBuffer()`` does);
* ``builtins.getattr`` to :func:`_statistics_method`, which only returns
  ``HistoryBuffer.min/max/current/mean`` (mmengine's statistics methods);

plus numpy arrays, scalars and dtypes and ``bytes``. Nothing in a file can
extend it. :func:`mmengine_checkpoint_loading` applies it only while a load
runs; plain ``torch.load`` elsewhere keeps torch's default allow-list.
"""
import contextlib
import pickle
import threading
from typing import Any, Iterator, List

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

#: mmengine 0.10.x's statistics methods: the only names ``getattr`` accepts.
STATISTICS_METHODS = frozenset({'min', 'max', 'current', 'mean'})
_STATE_KEYS = frozenset({'max_length', '_log_history', '_count_history'})
_HISTORY_BUFFER_NAME = 'mmengine.logging.history_buffer.HistoryBuffer'


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects outside the weights-only allow-list."""


def _refuse(message: str) -> None:
    raise pickle.UnpicklingError(f'mmengine checkpoint allow-list: {message}')


def _check_history(name: str, value: Any) -> None:
    if type(value) is not np.ndarray or value.ndim != 1 \
            or value.dtype.kind not in 'biuf':
        what = _short_repr(getattr(value, 'dtype', type(value)))
        _refuse(f'HistoryBuffer.{name} must be a 1-D numeric numpy array, '
                f'got {what}')


class _HistoryBufferLoader(HistoryBuffer):
    """Rebuilds a pickled ``HistoryBuffer`` without touching class state.

    Unpickling creates it empty (``NEWOBJ`` with no arguments) and passes the
    pickled ``__dict__`` to :meth:`__setstate__`; calling the class is refused.
    """

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            _refuse('HistoryBuffer is created without arguments')
        return object.__new__(cls)

    def __init__(self, *args, **kwargs) -> None:
        _refuse('HistoryBuffer may only be rebuilt from its pickled state')

    def __setstate__(self, state: Any) -> None:
        """Validate mmengine's state, set it, become a plain HistoryBuffer.

        Args:
            state (dict): ``max_length`` (int), ``_log_history`` and
                ``_count_history`` (1-D numeric arrays of equal length) and
                optionally ``statistics_methods``, which must map names of
                :data:`STATISTICS_METHODS` to those methods; it is checked
                and dropped (mmengine's own would update the class registry).
        """
        if type(state) is not dict:
            _refuse(f'HistoryBuffer state must be a dict, got {type(state)}')
        state = dict(state)
        methods = state.pop('statistics_methods', {})
        if set(state) != _STATE_KEYS:
            _refuse(
                f'HistoryBuffer state keys must be {sorted(_STATE_KEYS)}'
                f' (and statistics_methods), got {sorted(map(str, state))}')
        if type(methods) is not dict or any(
                type(k) is not str or k not in STATISTICS_METHODS
                or v is not getattr(HistoryBuffer, k)
                for k, v in methods.items()):
            _refuse('HistoryBuffer statistics_methods may only hold '
                    f'{sorted(STATISTICS_METHODS)}')
        max_length = state['max_length']
        if not isinstance(max_length, (int, np.integer)) \
                or isinstance(max_length, bool) or max_length < 1:
            _refuse(f'HistoryBuffer.max_length must be a positive int, got '
                    f'{max_length!r}')
        for name in ('_log_history', '_count_history'):
            _check_history(name, state[name])
        if len(state['_log_history']) != len(state['_count_history']):
            _refuse('HistoryBuffer _log_history and _count_history differ '
                    'in length')
        self.max_length = int(max_length)
        self._log_history = state['_log_history']
        self._count_history = state['_count_history']
        # What HistoryBuffer.__init__ does: make sure mmengine's own four
        # methods are registered (a fresh process may have built no buffer
        # yet). Fixed values, whatever the file holds.
        for name in sorted(STATISTICS_METHODS):
            HistoryBuffer._statistics_methods.setdefault(
                name, getattr(HistoryBuffer, name))
        # From here on the object is an ordinary HistoryBuffer, which the
        # weights-only unpickler will not BUILD again.
        self.__class__ = HistoryBuffer


def _statistics_method(*args: Any) -> Any:
    """``getattr`` as mmengine checkpoints use it: HistoryBuffer methods only.

    Args:
        *args: ``(HistoryBuffer, name)`` with ``name`` in
            :data:`STATISTICS_METHODS`; anything else is refused.
    """
    if len(args) != 2 or args[0] is not _HistoryBufferLoader \
            or type(args[1]) is not str or args[1] not in STATISTICS_METHODS:
        _refuse('getattr is only allowed for HistoryBuffer.'
                f'{"/".join(sorted(STATISTICS_METHODS))}, got getattr('
                f'{", ".join(map(_short_repr, args))})')
    return getattr(HistoryBuffer, args[1])


def _short_repr(obj: Any) -> str:
    text = 'HistoryBuffer' if obj is _HistoryBufferLoader else repr(obj)
    return text if len(text) <= 60 else text[:57] + '...'


def _numpy_globals() -> List:
    """numpy arrays, scalars and dtypes under numpy 1.x and 2.x names."""
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = {
        type(np.dtype(t))
        for t in (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8,
                  np.uint16, np.uint32, np.uint64, np.float16, np.float32,
                  np.float64, np.complex64, np.complex128, np.str_)
    }
    aliases = [(f, f'numpy.{core}.multiarray.{f.__name__}')
               for f in (_reconstruct, scalar) for core in ('core', '_core')]
    return [np.ndarray, np.dtype, *sorted(dtype_classes, key=str), *aliases]


def mmengine_checkpoint_globals() -> List:
    """The fixed allow-list, as ``torch.serialization.safe_globals`` wants."""
    return [(_HistoryBufferLoader, _HISTORY_BUFFER_NAME),
            (_statistics_method, 'builtins.getattr'), bytes, *_numpy_globals()]


_lock = threading.Lock()
_depth = 0
_active = None


@contextlib.contextmanager
def mmengine_checkpoint_loading() -> Iterator[None]:
    """Allow the fixed mmengine allow-list for ``weights_only`` loads inside.

    Re-entrant; on the outermost exit torch's safe globals are as they were
    (entries someone else had added already are left in place). torch keeps
    one process-wide list, so loads in other threads meanwhile see it too.

    Example:
        >>> with mmengine_checkpoint_loading():
        ...     ckpt = torch.load('epoch_1.pth', map_location='cpu')
    """
    global _depth, _active
    with _lock:
        if _depth == 0:
            present = set(torch.serialization.get_safe_globals())
            _active = torch.serialization.safe_globals(
                [g for g in mmengine_checkpoint_globals() if g not in present])
            _active.__enter__()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _active.__exit__(None, None, None)
                _active = None
