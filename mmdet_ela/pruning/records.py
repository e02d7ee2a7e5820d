"""Round records of the pruning hook: make, write, load, and the one decision
table.

A record is the JSON-safe :meth:`EBQMResult.to_dict` plus the round's context
(round number, strategy, progress, batches scored, samples skipped, settings)
and ``note``, one sentence saying what was pruned or why nothing was. The hook
writes it to ``work_dir/ela_prune/round_K.json``.
"""
import glob
import json
import os
import os.path as osp
import re
from collections import Counter
from typing import List, Optional

from ..redundancy import EBQMResult
from ..redundancy.decisions import _json_safe

__all__ = [
    'RECORD_DIR', 'make_record', 'explain', 'write_record', 'load_records',
    'format_table'
]

RECORD_DIR = 'ela_prune'
_NAME = re.compile(r'round_(\d+)\.json$')


def make_record(result: EBQMResult,
                round_num: int,
                strategy: str = 'ebqm',
                scored_batches: int = 0,
                skipped_samples: int = 0,
                **fields) -> dict:
    """The record of one round.

    Args:
        result (EBQMResult): the selection of this round.
        round_num (int): 1 for the first round.
        strategy (str): 'ebqm' or 'random'. Default: 'ebqm'.
        scored_batches (int): validation batches scored (per process).
        skipped_samples (int): non-finite samples left out (all processes).
        **fields: more context (progress, iter, dry_run, settings...).

    Returns:
        dict: JSON-safe (NaN and inf are None), with ``num_pruned_now`` and
        ``note``.
    """
    record = result.to_dict()
    record.update(
        round=round_num,
        strategy=strategy,
        scored_batches=scored_batches,
        skipped_samples=skipped_samples,
        num_pruned_now=len(result.newly_pruned),
        **fields)
    record['note'] = explain(record)
    return _json_safe(record)


def explain(record: dict) -> str:
    """One sentence: what the round pruned, or why it pruned nothing."""
    n = record.get('num_pruned_now', 0)
    verb = 'would prune' if record.get('dry_run') else 'pruned'
    if n:
        return f'{verb} {n} unit(s)'
    decisions = record.get('decisions', [])
    reasons = Counter(d['reason'] for d in decisions)
    skipped = record.get('skipped_samples', 0)
    if not decisions:
        why = 'the model has no layer-attention units'
    elif not record.get('scored_batches'):
        why = 'no validation batch was scored'
    elif not any(d['candidate'] for d in decisions):
        if reasons['invalid score']:
            why = (f'no unit has a finite score ({skipped} non-finite '
                   'samples skipped)')
        else:
            why = ('no candidates left: every unit is the first of its '
                   'sequence, already pruned, or next to a pruned unit')
    elif reasons['no spread in scores'] == 1:
        why = 'only one candidate, so there is no distribution to fit'
    elif reasons['no spread in scores']:
        why = 'all candidate scores are equal, so there is nothing to fit'
    elif not any(d['redundant'] for d in decisions) and \
            record.get('strategy', 'ebqm') == 'ebqm':
        why = 'no candidate lies below the quantile'
    else:
        blocked = sorted(
            r for r in reasons
            if r in ('min_keep', 'max_prune_ratio', 'predecessor pruned',
                     'neighbour pruned', 'limit reached'))
        why = f'the safeguards kept every selected unit ({", ".join(blocked)})'
    return f'nothing pruned: {why}'


def write_record(work_dir: str, record: dict) -> str:
    """Write ``record`` to ``work_dir/ela_prune/round_K.json`` (atomically).

    Returns:
        str: the path written.
    """
    out_dir = osp.join(work_dir, RECORD_DIR)
    os.makedirs(out_dir, exist_ok=True)
    path = osp.join(out_dir, f'round_{int(record["round"])}.json')
    with open(path + '.tmp', 'w') as f:
        json.dump(_json_safe(record), f, indent=2, allow_nan=False)
    os.replace(path + '.tmp', path)
    return path


def load_records(path: str) -> List[dict]:
    """Round records, sorted by round number (``round_10`` after ``round_2``).

    Args:
        path (str): a record file, a folder of ``round_K.json`` files, or a
            work dir holding ``ela_prune/``.

    Raises:
        FileNotFoundError: when ``path`` holds no record.
    """
    if osp.isfile(path):
        files = [path]
    else:
        files = glob.glob(osp.join(path, 'round_*.json')) or glob.glob(
            osp.join(path, RECORD_DIR, 'round_*.json'))
    if not files:
        raise FileNotFoundError(f'no round_*.json records in {path} or '
                                f'{osp.join(path, RECORD_DIR)}')
    records = []
    for f in files:
        with open(f) as fh:
            records.append(json.load(fh))

    def number(item) -> int:
        f, record = item
        m = _NAME.search(f)
        return int(record.get('round', m.group(1) if m else 0))

    return [r for _, r in sorted(zip(files, records), key=number)]


def _num(value: Optional[float], fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def format_table(record: dict) -> str:
    """The decision table of a round: unit, score, CDF, decision and reason."""
    fit = (f'fit: {record.get("fit_method")}, '
           f'alpha={_num(record.get("alpha"), ".3g")}, '
           f'beta={_num(record.get("beta"), ".3g")}, '
           f'quantile={record.get("quantile")}')
    if record.get('strategy') == 'random':
        fit = (f'random: {record.get("random_units")} units, '
               f'seed {record.get("seed")}')
    lines = [
        f'ELAPruneHook round {record["round"]} ({fit}, '
        f'{record.get("scored_batches", 0)} batches per process, '
        f'{record.get("skipped_samples", 0)} non-finite samples skipped'
        f'{", dry run" if record.get("dry_run") else ""})',
        f'{"unit":<28}{"score":>11}{"cdf":>8}  decision'
    ]
    for d in record.get('decisions', []):
        decision = 'PRUNED' if d['pruned'] else 'kept'
        lines.append(f'{d["group"] + "." + str(d["index"]):<28}'
                     f'{_num(d["score"], ".4g"):>11}'
                     f'{_num(d["cdf"], ".3f"):>8}  '
                     f'{decision} ({d["reason"]})')
    kept = record['num_units'] - record['num_pruned'] if not \
        record.get('dry_run') else record['num_units'] - (
            record['num_pruned'] - record.get('num_pruned_now', 0))
    lines.append(f'units kept: {kept}/{record["num_units"]}; '
                 f'{record.get("note", explain(record))}')
    return '\n'.join(lines)
