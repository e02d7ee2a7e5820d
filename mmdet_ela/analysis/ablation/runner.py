"""Run the ablation grid: a training subprocess per (variant, seed).

Each run gets ``WORK_DIR/runs/<variant>/seed<k>/`` holding its full config
(``config.py``), the training output (``train.log``), mmengine's log folders,
checkpoints and pruning records, and, once it finished, ``result.json``. A run
with a ``result.json`` is skipped when the grid runs again; a run that stopped
half-way resumes from its last checkpoint.
"""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from mmengine.config import Config

from .results import read_records, summarise_run
from .variants import Variant, random_hook_options, variant_config

__all__ = [
    'RunSpec', 'plan_runs', 'train_command', 'config_digest',
    'check_unchanged', 'run_one', 'run_grid'
]

ROOT = osp.dirname(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


@dataclass
class RunSpec:
    """One training run of the grid.

    Args:
        variant (Variant): what to train.
        seed (int): ``randomness.seed``.
        work_dir (str): the run's own folder.
    """
    variant: Variant
    seed: int
    work_dir: str

    @property
    def result_file(self) -> str:
        return osp.join(self.work_dir, 'result.json')

    @property
    def done(self) -> bool:
        return osp.isfile(self.result_file)

    def label(self) -> str:
        return f'{self.variant.name} seed={self.seed}'


def plan_runs(variants: Sequence[Variant], seeds: Sequence[int],
              work_dir: str) -> List[RunSpec]:
    """Runs seed by seed, variants in order (a control after its EBQM run)."""
    return [
        RunSpec(v, s, osp.join(work_dir, 'runs', v.name, f'seed{s}'))
        for s in seeds for v in variants
    ]


def train_command(config: str,
                  work_dir: str,
                  gpus: int = 1,
                  resume: bool = False,
                  keep_freed_memory: bool = False) -> List[str]:
    """``tools/train.py``, or ``tools/dist_train.sh`` when ``gpus`` > 1;
    ``keep_freed_memory`` adds train.py's ``--keep-freed-memory`` (glibc keeps
    freed memory: CPU steps faster, results unchanged)."""
    if gpus > 1:
        cmd = [
            'bash',
            osp.join(ROOT, 'tools', 'dist_train.sh'), config,
            str(gpus)
        ]
    else:
        cmd = [sys.executable, osp.join(ROOT, 'tools', 'train.py'), config]
    cmd += ['--work-dir', work_dir]
    cmd += ['--keep-freed-memory'] if keep_freed_memory else []
    return cmd + (['--resume'] if resume else [])


def _env(threads: Optional[int]) -> Dict[str, str]:
    env = dict(os.environ)
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    env.setdefault('PYTHON', sys.executable)  # used by dist_train.sh
    if threads is not None:
        for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
            env[key] = str(threads)
    return env


def logged_keep_freed_memory(log: str) -> Any:
    """Whether the training commands in ``log`` (lines ``$ ...``, one per
    attempt) had ``--keep-freed-memory``: True, False, or ``'mixed'`` for a
    run resumed with the other setting."""
    with open(log, errors='replace') as f:
        flags = {
            '--keep-freed-memory' in line.split()
            for line in f if line.startswith('$ ')
        }
    return flags.pop() if len(flags) == 1 else 'mixed'


def _tail(path: str, lines: int = 30) -> str:
    with open(path, errors='replace') as f:
        return ''.join(f.readlines()[-lines:])


def _fmt(seconds: float) -> str:
    seconds = int(round(seconds))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _run_config(spec: RunSpec, base: Config, specs: Sequence[RunSpec],
                hook_options: Mapping[str, Any]) -> Config:
    random_options = None
    if spec.variant.random_of is not None:
        ebqm = next((s for s in specs if s.seed == spec.seed
                     and s.variant.name == spec.variant.random_of), None)
        if ebqm is None or not ebqm.done:
            raise RuntimeError(
                f'{spec.label()} needs the finished {spec.variant.random_of} '
                f'run of seed {spec.seed} (it failed or was not run)')
        random_options = random_hook_options(
            read_records(ebqm.work_dir), spec.seed)
    return variant_config(base, spec.variant, spec.seed, hook_options,
                          random_options)


def config_digest(cfg: Config) -> str:
    """SHA-1 of the config's text: what a finished run is recognised by."""
    return hashlib.sha1(cfg.pretty_text.encode()).hexdigest()


def check_unchanged(spec: RunSpec, cfg: Config) -> None:
    """Refuse to reuse a finished run that trained another config than ``cfg``.

    Raises:
        ValueError: the run's recorded ``config_sha1`` differs (other
            epochs, hook options, cfg-options...).
    """
    cfg.work_dir = spec.work_dir
    with open(spec.result_file) as f:
        done = json.load(f).get('config_sha1')
    if done != config_digest(cfg):
        raise ValueError(
            f'{spec.label()} finished in {spec.work_dir} with another '
            'config; pass another --work-dir, or remove that run to train '
            'it again')


def run_one(spec: RunSpec,
            cfg: Config,
            gpus: int = 1,
            threads: Optional[int] = None,
            skip_iters: int = 20,
            keep_freed_memory: bool = False) -> Dict[str, Any]:
    """Train one run in a subprocess and write its ``result.json``.

    ``keep_freed_memory`` (see :func:`train_command`) changes the step time,
    not what is trained: it is recorded in the result, not in the config's
    digest.

    Raises:
        RuntimeError: the training failed (the message ends with its log).
    """
    os.makedirs(spec.work_dir, exist_ok=True)
    config = osp.join(spec.work_dir, 'config.py')
    cfg.work_dir = spec.work_dir
    digest = config_digest(cfg)
    cfg.dump(config)  # the Runner later writes its own copy over it
    resume = osp.isfile(osp.join(spec.work_dir, 'last_checkpoint'))
    cmd = train_command(config, spec.work_dir, gpus, resume, keep_freed_memory)
    log = osp.join(spec.work_dir, 'train.log')
    start = time.time()
    with open(log, 'a') as f:
        f.write(f'$ {" ".join(cmd)}\n')
        f.flush()
        code = subprocess.call(
            cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(threads))
    if code != 0:
        raise RuntimeError(f'{spec.label()}: training exited with {code}; '
                           f'last lines of {log}:\n{_tail(log)}')
    result = dict(
        variant=spec.variant.name,
        seed=spec.seed,
        overrides=spec.variant.overrides(),
        hook=next((h for h in cfg.get('custom_hooks') or []
                   if h.get('type') == 'ELAPruneHook'), None),
        epochs=cfg.train_cfg.get('max_epochs'),
        work_dir=spec.work_dir,
        config=config,
        config_sha1=digest,
        log=log,
        omp_threads=_env(threads).get('OMP_NUM_THREADS'),
        keep_freed_memory=logged_keep_freed_memory(log),
        wall_time=time.time() - start)
    result.update(
        summarise_run(spec.work_dir, cfg.model.to_dict(), skip_iters))
    with open(spec.result_file + '.tmp', 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(spec.result_file + '.tmp', spec.result_file)
    return result


def run_grid(specs: Sequence[RunSpec],
             base: Config,
             hook_options: Optional[Mapping[str, Any]] = None,
             gpus: int = 1,
             threads: Optional[int] = None,
             skip_iters: int = 20,
             echo: Callable[[str], None] = print,
             keep_freed_memory: bool = False) -> Dict[str, List]:
    """Run every unfinished run of ``specs`` in order; print progress and ETA.

    A failed run is reported and the grid goes on (a random control whose
    EBQM run failed fails too). Finished runs are skipped, after checking
    that their config is the one this grid would train
    (:func:`check_unchanged`).

    Returns:
        dict: ``results`` (every finished run, from its ``result.json``),
        ``failed`` (``[label, message]``) and ``skipped`` (labels).
    """
    for spec in specs:
        if spec.done:
            check_unchanged(spec,
                            _run_config(spec, base, specs, hook_options or {}))
            with open(spec.result_file) as f:
                kept = json.load(f).get('keep_freed_memory', False)
            if kept != keep_freed_memory:
                echo(f'warning: {spec.label()} finished with '
                     f'keep_freed_memory={kept}, this grid runs with '
                     f'{keep_freed_memory}: their step times do not compare')
    todo = [s for s in specs if not s.done]
    skipped = [s.label() for s in specs if s.done]
    if skipped:
        echo(f'{len(skipped)}/{len(specs)} runs already finished: skipped')
    failed, durations = [], []
    for n, spec in enumerate(todo, 1):
        eta = ''
        if durations:
            mean = sum(durations) / len(durations)
            eta = f', ETA {_fmt(mean * (len(todo) - n + 1))}'
        echo(f'[run {n}/{len(todo)}{eta}] {spec.label()} -> {spec.work_dir}')
        start = time.time()
        try:
            cfg = _run_config(spec, base, specs, hook_options or {})
            r = run_one(spec, cfg, gpus, threads, skip_iters,
                        keep_freed_memory)
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            failed.append([spec.label(), str(e)])
            echo(f'  FAILED: {e}')
            continue
        durations.append(time.time() - start)
        echo(f'  done in {_fmt(durations[-1])}: final mAP '
             f'{r["final_mAP"]:.3f}, units {r["units_kept"]}/'
             f'{r["units_total"]}')
    results = []
    for spec in specs:
        if spec.done:
            with open(spec.result_file) as f:
                results.append(json.load(f))
    return dict(results=results, failed=failed, skipped=skipped)
