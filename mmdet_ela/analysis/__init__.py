"""Figures for the benchmark and redundancy-analysis tools.

Not imported by ``import mmdet_ela`` (it needs matplotlib); import
``mmdet_ela.analysis.plots`` where figures are wanted.
"""
