"""mmdet-ela: Efficient Layer Attention for MMDetection 3.x.

Importing this package registers ``ELAResNet``, ``ELAFPN`` and ``ELAPruneHook`` in
mmdet's registries (use ``custom_imports = dict(imports=['mmdet_ela'])`` in a config)
and lets torch >= 2.6 load mmengine checkpoints with ``weights_only=True``.
"""
from .utils import allow_mmengine_checkpoint_types

allow_mmengine_checkpoint_types()

from . import engine, models  # noqa: E402,F401  (registers the modules)

__version__ = '0.1.0'
