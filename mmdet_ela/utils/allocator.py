"""Keep freed memory in a CPU process: glibc's malloc, set at run time.

With glibc's default settings, a CPU training step hands large freed blocks
back to the operating system (``mmap``-ed blocks are unmapped, the top of the
heap is trimmed), and the next step faults them in again, one page at a
time. On a virtual machine a fault costs microseconds, so a model that frees
and reallocates more full-size tensors per step (ELA's units do) pays for it
more than plain ResNet. :func:`keep_freed_memory` sets the two thresholds by
``mallopt``, the same as starting the process with

    GLIBC_TUNABLES=glibc.malloc.mmap_threshold=536870912:\\
glibc.malloc.trim_threshold=2147483647

It applies to the whole process (plain models too) and costs memory: freed
blocks stay in the process. Blocks of 512 MiB or more are still mapped (and
faulted in again after they are freed). A glibc that refuses an mmap
threshold above 32 MiB, the upper limit ``mallopt(3)`` documents for 64-bit
systems, gets 32 MiB: blocks from 32 MiB on, e.g. the largest feature maps
of COCO-sized CPU inputs, are then still mapped. It does nothing on GPU
memory, which PyTorch's CUDA caching allocator keeps already, nor under
another allocator loaded by ``LD_PRELOAD`` (jemalloc, tcmalloc), which
``mallopt`` does not reach.
"""
import ctypes
import ctypes.util
import platform
from typing import Callable, Dict

__all__ = ['KEEP_FREED_MEMORY', 'keep_freed_memory']

#: ``mallopt`` parameters (glibc's ``malloc.h``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: The settings :func:`keep_freed_memory` applies: blocks up to 512 MiB
#: come from the heap, and the top of the heap goes back to the system only
#: when more than 2 GiB of it is free (``mallopt`` takes a C int).
KEEP_FREED_MEMORY: Dict[str, int] = dict(
    mmap_threshold=512 * 2**20, trim_threshold=2**31 - 1)

#: The mmap threshold where glibc refuses :data:`KEEP_FREED_MEMORY`'s: the
#: upper limit ``mallopt(3)`` documents for 64-bit systems.
DOCUMENTED_MMAP_THRESHOLD_MAX = 32 * 2**20


def apply_settings(mallopt: Callable[[int, int], int]) -> Dict[str, int]:
    """Set :data:`KEEP_FREED_MEMORY` through ``mallopt``, the mmap threshold
    falling back to :data:`DOCUMENTED_MMAP_THRESHOLD_MAX` where it is
    refused.

    Args:
        mallopt (Callable[[int, int], int]): glibc's ``mallopt(param,
            value)``, 1 on success.

    Returns:
        dict: the settings applied.

    Raises:
        RuntimeError: glibc refused a value (after the fallback).
    """
    applied = dict(KEEP_FREED_MEMORY)
    for threshold in (applied['mmap_threshold'],
                      DOCUMENTED_MMAP_THRESHOLD_MAX):
        if mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            applied['mmap_threshold'] = threshold
            break
    else:
        raise RuntimeError(
            f'glibc refused mallopt mmap_threshold={threshold}: run without '
            '--keep-freed-memory')
    if mallopt(_M_TRIM_THRESHOLD, applied['trim_threshold']) != 1:
        raise RuntimeError(
            f'glibc refused mallopt trim_threshold={applied["trim_threshold"]}'
            ': run without --keep-freed-memory')
    return applied


def keep_freed_memory() -> Dict[str, int]:
    """Set glibc's mmap and trim thresholds of this process to
    :data:`KEEP_FREED_MEMORY` (see :func:`apply_settings`).

    Call it early, before the model is built: blocks mapped before the call
    are still unmapped when freed.

    Returns:
        dict: the settings applied.

    Raises:
        RuntimeError: the C library is not glibc, or glibc refused a value.
    """
    libc_name = platform.libc_ver()[0]
    path = ctypes.util.find_library('c')
    if libc_name != 'glibc' or path is None:
        raise RuntimeError(
            'keep_freed_memory (--keep-freed-memory) sets glibc\'s malloc; '
            f'this process runs on {libc_name or platform.system()!r}. Run '
            'without it.')
    return apply_settings(ctypes.CDLL(path).mallopt)
