"""The ablation tool and the pruning-choice check.

Used by ``tools/analysis/ablation.py`` and
``tools/analysis/pruning_choice.py``.

- :mod:`.variants`: the one table of named variants, applied to a config;
- :mod:`.runner`: the grid, a ``tools/train.py`` subprocess per run;
- :mod:`.results`: what one finished run's logs and records say;
- :mod:`.aggregate`: mean ± std over seeds and the markdown tables;
- :mod:`.plot`: the figures;
- :mod:`.selection` (pure) and :mod:`.choice`: the pruning-choice check.

Not imported by ``import mmdet_ela`` (it needs matplotlib).
"""
from .aggregate import (aggregate, format_choice_table, format_round_table,
                        format_table, mean_std)
from .runner import RunSpec, plan_runs, run_grid
from .selection import choose_selections, top_select
from .variants import (GROUPS, VARIANTS, Variant, resolve_variants,
                       scale_schedule, variant_config)

__all__ = [
    'VARIANTS', 'GROUPS', 'Variant', 'resolve_variants', 'scale_schedule',
    'variant_config', 'RunSpec', 'plan_runs', 'run_grid', 'mean_std',
    'aggregate', 'format_table', 'format_round_table', 'format_choice_table',
    'top_select', 'choose_selections'
]
