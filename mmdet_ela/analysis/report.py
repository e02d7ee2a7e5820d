"""What a benchmark prints: the environment and the comparison table."""
import os
import platform
from typing import Any, Dict, List, Mapping, Optional

import torch

__all__ = ['available_cores', 'environment', 'format_table', 'format_results']

#: ``(header, field, format, scale)`` of the table's columns after the label.
COLUMNS = (
    ('units', None, None, None),
    ('params M', 'params', '.2f', 1e-6),
    ('GFLOPs', 'flops', '.4g', 1e-9),
    ('train ms', 'train_ms', '.1f', 1),
    ('x plain', 'train_ratio', '.3f', 1),
    ('rounds q1-q3', 'train_round_ratio_iqr', 'range', 1),
    ('median 95% CI', 'train_round_ratio_ci', 'range', 1),
    ('infer ms', 'infer_ms', '.1f', 1),
    ('x plain', 'infer_ratio', '.3f', 1),
    ('peak MB', 'peak_mem_mb', '.0f', 1),
    ('x plain', 'peak_mem_ratio', '.3f', 1),
    ('step MB', 'step_rss_mb', '.0f', 1),
    ('faults/step', 'train_faults', '.0f', 1),
)

#: Environment variables that change the C allocator's behaviour (and with
#: it how often a CPU step faults in fresh pages): recorded with the results.
ALLOCATOR_ENV = ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_ARENA_MAX',
                 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_',
                 'MALLOC_CONF')


def available_cores() -> int:
    """Number of CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def environment(device: torch.device) -> Dict[str, Any]:
    """Library versions, platform and device name, for the results."""
    import mmdet
    import mmengine
    env = dict(
        torch=torch.__version__,
        mmdet=mmdet.__version__,
        mmengine=mmengine.__version__,
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=platform.processor() or platform.machine(),
        cpu_cores_available=available_cores(),
        torch_threads=torch.get_num_threads(),
        allocator_env={
            k: os.environ[k]
            for k in ALLOCATOR_ENV if os.environ.get(k)
        })
    if torch.device(device).type == 'cuda':
        env['device_name'] = torch.cuda.get_device_name(device)
    else:
        env['device_name'] = f'CPU ({available_cores()} cores available)'
    return env


def _cell(info: Mapping[str, Any], field: Optional[str], fmt: Optional[str],
          scale: Optional[float]) -> str:
    if field is None:
        return f'{info["units_kept"]}/{info["units_total"]}'
    value = info.get(field)
    if value is None:
        return '-'
    if fmt == 'range':  # [low, high] ratios
        return '-'.join(format(v * scale, '.3f') for v in value)
    return format(value * scale, fmt)


def format_table(variants: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per variant: units, params (M), GFLOPs, times, memory, ratios.

    Args:
        variants (Mapping): ``results['variants']`` of
            :func:`~.benchmark.run_benchmark`.
    """
    rows = [('variant', ) + tuple(c[0] for c in COLUMNS)]
    for info in variants.values():
        rows.append((info['label'], ) +
                    tuple(_cell(info, *c[1:]) for c in COLUMNS))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        lines.append('  '.join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))))
        if k == 0:
            lines.append('-' * len(lines[0]))
    return '\n'.join(lines)


def _pruned_units(ebqm: Mapping[str, Any]) -> str:
    names = [
        f'{d["group"]}.{d["index"]}' for d in ebqm['decisions'] if d['pruned']
    ]
    return (f'EBQM pruned {len(names)} unit(s): {", ".join(names) or "none"}'
            f' (fit {ebqm["fit_method"]}, quantile {ebqm["quantile"]})')


#: Rows of each variant's op table that :func:`format_op_costs` prints.
OP_ROWS = 10


def format_op_costs(ops: Mapping[str, Any],
                    variants: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Per variant, the ops whose time per train step grew most against
    plain (``results['op_costs']``)."""
    plain_ms = ops['step_op_ms']['plain']
    counts = ops.get('step_ops', {})  # absent in JSON of 0.3.9 and before
    plain_ops = f', {counts["plain"]:.0f} ops' if counts else ''
    lines = [
        f'ops timed one by one ({ops["rounds"]} round(s); slower than the '
        f'steps above): plain {plain_ms:.0f} ms per step{plain_ops}'
    ]
    for name, rows in ops['top'].items():
        ms, split = ops['step_op_ms'][name], ops['split'][name]
        extra_ops = (f', {counts[name]:.0f} ops '
                     f'({counts[name] - counts["plain"]:+.0f})'
                     if counts else '')
        lines.append(
            f'{variants[name]["label"]}: {ms:.0f} ms per step{extra_ops} '
            f'({ms - plain_ms:+.0f}: {split["extra_calls_ms"]:+.0f} in calls '
            f'that plain does not make, {split["slower_ms"]:+.0f} in the '
            'calls of both); the ops that grew most:')
        lines.append('  extra ms  ms / plain ms  extra calls  extra faults  '
                     'op  [shape of the first tensor]')
        for r in rows[:OP_ROWS]:
            lines.append(f'  {r["extra_ms"]:8.1f}  {r["ms"]:6.1f} / '
                         f'{r["base_ms"]:6.1f}  {r["extra_calls"]:11.0f}  '
                         f'{r["extra_faults"]:12.0f}  {r["op"]}  '
                         f'{r["shape"]}')
    return lines


def format_kernel_time(kernels: Mapping[str, Any],
                       variants: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """Per variant, wall and device busy time of a train step under the
    profiler, and the kernels that grew most (``results['kernel_time']``).
    """
    steps = kernels['steps']
    plain = steps['plain']
    lines = [
        f'train steps under the profiler ({kernels["rounds"]} round(s); '
        'slower than the steps above; busy: the device ran a kernel, copy or '
        'fill): plain wall ' + _wall_busy(plain)
    ]
    for name, rows in kernels['top'].items():
        t = steps[name]
        line = (f'{variants[name]["label"]}: wall {_wall_busy(t)}; extra '
                f'wall {t["wall_ms"] - plain["wall_ms"]:+.1f} ms')
        if t['busy_ms'] is not None:
            line += (f', extra busy {t["busy_ms"] - plain["busy_ms"]:+.1f} '
                     f'ms, extra kernels '
                     f'{t["kernel_calls"] - plain["kernel_calls"]:+.0f}')
        lines.append(line)
        if rows:
            lines.append('  extra ms  ms / plain ms  extra calls  kernel')
        for r in rows[:OP_ROWS]:
            lines.append(f'  {r["extra_ms"]:8.2f}  {r["ms"]:6.2f} / '
                         f'{r["base_ms"]:6.2f}  {r["extra_calls"]:11.0f}  '
                         f'{r["kernel"][:90]}')
    return lines


def _wall_busy(step: Mapping[str, Any]) -> str:
    busy = ('device busy - (no CUDA)' if step['busy_ms'] is None else
            f'device busy {step["busy_ms"]:.1f} ms '
            f'({step["kernel_calls"]:.0f} kernels)')
    return f'{step["wall_ms"]:.1f} ms, {busy}'


def format_results(results: Mapping[str, Any]) -> str:
    """The header line, the table and the notes of a benchmark's results."""
    s, env = results['settings'], results['environment']
    what = s['config'] or f'ELAResNet depth {s["depth"]}'
    height, width = s['img_size']
    lines = [
        f'ELA benchmark: {what} (--model {s["model"]}), {height}x{width}, '
        f'batch {s["batch_size"]}, {env["device_name"]}'
        f'{", AMP" if s["amp"] else ""}, {env["torch_threads"]} threads, '
        f'torch {env["torch"]}',
        format_table(results['variants'])
    ]
    pairs = [f'{k}={v}' for k, v in (env.get('allocator_env') or {}).items()]
    if env.get('keep_freed_memory'):
        pairs.append('--keep-freed-memory (glibc mallopt ' +
                     ' '.join(f'{k}={v}'
                              for k, v in env['keep_freed_memory'].items()) +
                     ')')
    if pairs:
        lines.append('allocator: ' + ' '.join(pairs))
    if any('train_round_ratio_iqr' in v for v in results['variants'].values()):
        lines.append('rounds q1-q3: quartiles of the train step\'s ratio to '
                     'plain, round by round (each step over plain\'s step '
                     'of the same interleaved round); median 95% CI: a '
                     'confidence interval of their median (order '
                     'statistics, no normality assumed; rounds taken as '
                     'independent; - with fewer than 6 rounds)')
    if any('train_faults' in v for v in results['variants'].values()):
        lines.append('faults/step: minor page faults of one train step '
                     '(median), i.e. fresh memory pages it touched')
    if results.get('memory_method'):
        lines.append(f'peak memory: {results["memory_method"]}')
    if results.get('flops'):
        missing = results['flops']['uncounted_ops']
        lines.append(f'FLOPs per image, {results["flops"]["convention"]}; '
                     'not counted: ' +
                     (', '.join(f'{k} (x{v})'
                                for k, v in missing.items()) or 'none'))
    if results.get('op_costs'):
        lines += format_op_costs(results['op_costs'], results['variants'])
    if results.get('kernel_time'):
        lines += format_kernel_time(results['kernel_time'],
                                    results['variants'])
    lines += [f'note: {n}' for n in results['notes']]
    if results.get('ebqm'):
        lines.append(_pruned_units(results['ebqm']))
    return '\n'.join(lines)
