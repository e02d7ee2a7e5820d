"""Redundancy scoring (adjacent-unit KL), EBQM selection, a random control.

Pure torch / numpy / scipy code, no mmengine or mmdet imports. EBQM here is
our own definition (see ``docs/method.md``), not the paper's unpublished
algorithm.
"""
from .decisions import EBQMResult, UnitDecision
from .ebqm import ebqm_select, fit_beta, smithson_verkuilen
from .kl import RedundancyAccumulator, adjacent_kl
from .random_select import random_select

__all__ = [
    'adjacent_kl', 'RedundancyAccumulator', 'smithson_verkuilen', 'fit_beta',
    'UnitDecision', 'EBQMResult', 'ebqm_select', 'random_select'
]
