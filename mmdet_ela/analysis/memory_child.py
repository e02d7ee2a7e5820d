"""The process that measures one variant's CPU memory for a benchmark.

    python -m mmdet_ela.analysis.memory_child JOB.json

``JOB.json`` holds ``settings`` (a :class:`BenchmarkSettings` as a dict),
``variant`` and ``mask``. The process takes the benchmark's allocator
setting (``keep_freed_memory``), builds only that variant, runs ``max(warmup,
1) + 1`` train steps under :func:`measure_step_rss` and prints the result
with :func:`emit_result`.
"""
import gc
import json
import sys

import torch

from mmdet_ela.utils import keep_freed_memory
from .bench_config import (BenchmarkSettings, build_variant, build_workload,
                           model_setup)
from .memory import emit_result, measure_step_rss


def main(path: str) -> None:
    """Measure the job in ``path`` and print its result line."""
    with open(path) as f:
        job = json.load(f)
    settings = job['settings']
    settings['img_size'] = tuple(settings['img_size'])
    settings['variants'] = tuple(settings['variants'])
    s = BenchmarkSettings(**settings)
    if s.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(s.threads)
    setup = model_setup(s)
    model = build_variant(setup, job['variant'], s.seed, job.get('mask'))
    work = build_workload(s, setup, model)
    gc.collect()
    emit_result(measure_step_rss(work.train_step, max(s.warmup, 1) + 1))


if __name__ == '__main__':
    main(sys.argv[1])
