"""Redundancy scoring (adjacent-unit KL) and EBQM selection.

Pure torch / numpy / scipy code, no mmengine or mmdet imports. EBQM here is
our own definition (DESIGN.md section 4), not the paper's unpublished algorithm.
"""
from .ebqm import (EBQMResult, UnitDecision, ebqm_select, fit_beta,
                   smithson_verkuilen)
from .kl import RedundancyAccumulator, adjacent_kl

__all__ = ['adjacent_kl', 'RedundancyAccumulator', 'smithson_verkuilen',
           'fit_beta', 'UnitDecision', 'EBQMResult', 'ebqm_select']
