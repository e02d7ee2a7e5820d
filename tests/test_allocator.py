"""keep_freed_memory: glibc keeps freed blocks, so reallocating them does not
fault pages in again."""
import json
import os
import platform
import subprocess
import sys

import pytest

from mmdet_ela.utils import KEEP_FREED_MEMORY, allocator

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != 'glibc', reason='glibc only')

# Four 24 MiB blocks, written, then freed, six times: with glibc's defaults
# the freed top of the heap (96 MiB) is trimmed and faulted in again.
CHILD = '''
import ctypes, ctypes.util, json, resource, sys
from mmdet_ela.utils import keep_freed_memory
settings = keep_freed_memory() if sys.argv[1] == 'keep' else None
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 24 << 20
faults = []
for _ in range(6):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(4)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in blocks:
        libc.free(b)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(json.dumps(dict(faults=faults, settings=settings)))
'''


def _transparent_huge_pages_always() -> bool:
    try:
        with open('/sys/kernel/mm/transparent_hugepage/enabled') as f:
            return '[always]' in f.read()
    except OSError:
        return False


def _run(mode: str) -> dict:
    # glibc's defaults in the child, whatever this process was started with
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('GLIBC_TUNABLES',
                     'LD_PRELOAD') and not k.startswith('MALLOC_')
    }
    out = subprocess.run([sys.executable, '-c', CHILD, mode],
                         capture_output=True,
                         text=True,
                         env=env,
                         check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(
    _transparent_huge_pages_always(),
    reason='huge pages fault in 2 MiB at a time: fault counts do not show')
def test_keep_freed_memory_stops_refaulting():
    pages = 4 * (24 << 20) // os.sysconf('SC_PAGE_SIZE')
    default, keep = _run('default')['faults'], _run('keep')['faults']
    # every round faults its pages in again by default ...
    assert min(default[2:]) > pages // 2
    # ... and (almost) none once the first round has mapped them
    assert max(keep[2:]) < pages // 100


def test_keep_freed_memory_returns_its_settings():
    assert _run('keep')['settings'] == KEEP_FREED_MEMORY
    assert KEEP_FREED_MEMORY['mmap_threshold'] == 512 << 20


def test_mmap_threshold_falls_back_to_the_documented_limit():
    """A glibc that refuses an mmap threshold above 32 MiB (mallopt(3)'s
    documented limit) gets 32 MiB; one that refuses that too is an error."""
    calls = []

    def limited(limit):

        def mallopt(param, value):
            calls.append((param, value))
            return int(param != allocator._M_MMAP_THRESHOLD or value <= limit)

        return mallopt

    applied = allocator.apply_settings(limited(32 << 20))
    assert applied == dict(KEEP_FREED_MEMORY, mmap_threshold=32 << 20)
    assert calls == [(allocator._M_MMAP_THRESHOLD, 512 << 20),
                     (allocator._M_MMAP_THRESHOLD, 32 << 20),
                     (allocator._M_TRIM_THRESHOLD, 2**31 - 1)]
    assert allocator.apply_settings(limited(1 << 30)) == KEEP_FREED_MEMORY
    with pytest.raises(RuntimeError, match='mmap_threshold=33554432'):
        allocator.apply_settings(limited(1 << 20))
