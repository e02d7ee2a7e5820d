"""mmdet-ela: Efficient Layer Attention for MMDetection 3.x.

Importing this package registers ``ELAResNet``, ``ELAFPN`` and ``ELAPruneHook``
in mmdet's registries (use ``custom_imports = dict(imports=['mmdet_ela'])`` in
a config) and makes mmengine's loader of local checkpoints use
``weights_only=True`` with a fixed allow-list of the types mmengine
checkpoints hold, only during those loads (see ``mmdet_ela.utils.safe_load``).
torch's own allow-list is left unchanged.
"""
from .utils import register_safe_local_loader

register_safe_local_loader()

from . import engine, models  # noqa: E402,F401  (registers the modules)

__version__ = '0.3.12'
