"""Peak memory of a training step: allocated tensors or process RSS.

On CUDA, :func:`cuda_step_peak_mb` reads ``torch.cuda.max_memory_allocated``
around one step. On CPU, :func:`cpu_step_peak_mb` gives the same figure for
the tensors PyTorch allocates, from the profiler's allocation events (the
same on any machine: the figure to compare with CUDA's).

What a CPU process really holds is its resident set size (RSS):
:func:`measure_step_rss` resets its peak just before the steps (Linux:
``/proc/self/clear_refs``) so that imports and model building do not hide
the step's own peak. The RSS of a process that built several models, or ran
one step before, says little about the next one (freed memory stays in the
process), so the caller runs each variant in a fresh interpreter with
:func:`run_children`; the child prints its result with :func:`emit_result`.
"""
import json
import os
import os.path as osp
import re
import resource
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional

import torch
from torch import nn

__all__ = [
    'RESULT_PREFIX', 'MB', 'proc_status_mb', 'reset_peak_rss', 'maxrss_mb',
    'measure_step_rss', 'cuda_step_peak_mb', 'cpu_step_peak_mb', 'emit_result',
    'run_children'
]

#: Marks the JSON line a child process prints for its parent.
RESULT_PREFIX = 'ELA_MEMORY_RESULT '
#: Bytes per MB (MiB, as ``nvidia-smi`` and ``/proc`` count).
MB = 2**20
#: Characters of a failed child's stderr quoted in the error.
_STDERR_TAIL = 3000


def proc_status_mb(field: str) -> Optional[float]:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in MB.

    Returns None where /proc is not available (not Linux).
    """
    try:
        with open('/proc/self/status') as f:
            match = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its RSS; False if impossible.

    Writing 5 to ``/proc/self/clear_refs`` does that on Linux >= 4.0.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        return False
    return proc_status_mb('VmHWM') is not None


def maxrss_mb() -> float:
    """Peak RSS of this process over its whole life, in MB."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in KiB on Linux and in bytes on macOS
    return rss / (MB if sys.platform == 'darwin' else 1024)


def measure_step_rss(step: Callable[[], None], steps: int) -> Dict[str, Any]:
    """Run ``step`` ``steps`` times and report the process's peak RSS.

    Args:
        step (Callable[[], None]): one training step.
        steps (int): how many times to run it (>= 1).

    Returns:
        dict: ``peak_rss_mb`` (the whole process: interpreter, libraries,
        model and step), ``rss_before_step_mb``, ``step_rss_mb`` (the peak
        minus the RSS before the first step: what the steps need on top of
        the built model) and ``method``.
    """
    if steps < 1:
        raise ValueError(f'measure_step_rss: steps={steps!r} must be >= 1')
    reset = reset_peak_rss()
    before = proc_status_mb('VmRSS') if reset else maxrss_mb()
    for _ in range(steps):
        step()
    peak = proc_status_mb('VmHWM') if reset else maxrss_mb()
    method = ('VmHWM reset before the first step'
              if reset else 'ru_maxrss of the whole process')
    return dict(
        peak_rss_mb=peak,
        rss_before_step_mb=before,
        step_rss_mb=peak - before,
        method=method)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors
               if torch.is_tensor(t))


def cuda_step_peak_mb(step: Callable[[], None], model: nn.Module,
                      optimizer: torch.optim.Optimizer,
                      device: torch.device) -> float:
    """Peak CUDA memory of one train step of ``model``, in MB.

    The step's peak over what was allocated before it
    (``max_memory_allocated`` after ``reset_peak_memory_stats``), plus the
    model's own parameters, buffers and optimizer state: other models
    resident on the same device are not counted.

    Args:
        step (Callable[[], None]): one training step of ``model``.
        model (nn.Module): the model that ``step`` trains.
        optimizer (torch.optim.Optimizer): its optimizer (for its state).
        device (torch.device): a CUDA device.
    """
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    step_peak = torch.cuda.max_memory_allocated(device) - before
    return (_own_bytes(model, optimizer) + step_peak) / MB


def _own_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the model's parameters, buffers and optimizer state."""
    own = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    for state in optimizer.state.values():
        own += _tensor_bytes(state.values())
    return own


def peak_allocated_bytes(fn: Callable[[], None]) -> int:
    """The most bytes of CPU tensors that ``fn`` held at once, over what was
    allocated when it started.

    Every allocation and free of PyTorch's CPU allocator during ``fn``, from
    the profiler (``profile_memory=True``), in time order: allocations are
    counted by the op that made them, frees where they happen.
    """
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as p:
        fn()
    changes = []
    for event in p.events():
        if event.name == '[memory]':  # a free (or allocation) outside ops
            change = event.cpu_memory_usage
        else:  # allocations and frees of the op itself, not its children
            change = event.self_cpu_memory_usage
        if change:
            changes.append((event.time_range.start, change))
    live = peak = 0
    for _, change in sorted(changes):
        live += change
        peak = max(peak, live)
    return peak


def cpu_step_peak_mb(step: Callable[[], None], model: nn.Module,
                     optimizer: torch.optim.Optimizer) -> float:
    """:func:`cuda_step_peak_mb` for CPU tensors, in MB: the step's peak of
    allocated tensors (:func:`peak_allocated_bytes`) plus the model's own
    parameters, buffers and optimizer state. What the C allocator keeps
    beyond the tensors is not counted (the process's RSS shows it).
    """
    optimizer.zero_grad(set_to_none=True)
    step_peak = peak_allocated_bytes(step)
    return (_own_bytes(model, optimizer) + step_peak) / MB


def emit_result(result: Mapping[str, Any]) -> None:
    """Print ``result`` as the line :func:`run_children` looks for."""
    print(RESULT_PREFIX + json.dumps(dict(result)), flush=True)


def _child_env() -> Dict[str, str]:
    """This environment, with the package's root first on PYTHONPATH."""
    env = dict(os.environ)
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (root, env.get('PYTHONPATH')) if p)
    return env


def run_children(module: str,
                 payloads: Mapping[str, Mapping[str, Any]]) -> Dict[str, dict]:
    """Run ``python -m module PAYLOAD.json`` once per payload, all at once.

    The children run at the same time: memory is per process, and their
    timing does not matter.

    Args:
        module (str): the child's module, which reads the JSON file named by
            its first argument and calls :func:`emit_result` once.
        payloads (Mapping[str, Mapping]): JSON-serialisable payload by name.

    Returns:
        dict[str, dict]: the result of every child, by name.

    Raises:
        RuntimeError: a child exited without a result; quotes its stderr.
    """
    files, procs = {}, {}
    try:
        for name, payload in payloads.items():
            with tempfile.NamedTemporaryFile(
                    'w', suffix='.json', delete=False) as f:
                json.dump(payload, f)
                files[name] = f.name
            procs[name] = subprocess.Popen(
                [sys.executable, '-m', module, f.name],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_child_env())
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate()
            for line in out.splitlines():
                if line.startswith(RESULT_PREFIX):
                    results[name] = json.loads(line[len(RESULT_PREFIX):])
            if name not in results:
                raise RuntimeError(
                    f'memory subprocess for {name!r} failed (exit '
                    f'{proc.returncode}):\n{err[-_STDERR_TAIL:]}')
        return results
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        for path in files.values():
            os.unlink(path)
