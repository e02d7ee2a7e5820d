"""Configs for the analysis tools: load one, and find its EBQM settings."""
import dataclasses
from typing import Any, Dict, Optional

__all__ = [
    'EBQM_KEYS', 'ebqm_defaults', 'ebqm_settings', 'ebqm_selector',
    'load_config'
]

#: The EBQM settings that a tool takes from the command line or the config.
EBQM_KEYS = ('quantile', 'max_prune_ratio', 'min_keep')


def ebqm_defaults() -> Dict[str, Any]:
    """The EBQM defaults of ``ELAPruneHook`` (its :class:`Selector`'s)."""
    from mmdet_ela.pruning import Selector
    return {
        f.name: f.default
        for f in dataclasses.fields(Selector) if f.name in EBQM_KEYS
    }


def ebqm_settings(cfg: Optional[Any] = None, **given: Any) -> Dict[str, Any]:
    """EBQM settings: given values, else the config's hook, else the defaults.

    Args:
        cfg (Config, optional): a config; its ``ELAPruneHook`` in
            ``custom_hooks`` (if any) supplies the settings not given.
        **given: ``quantile``, ``max_prune_ratio``, ``min_keep``; None means
            not given.

    Returns:
        dict: the three settings.
    """
    unknown = sorted(set(given) - set(EBQM_KEYS))
    if unknown:
        raise TypeError(f'ebqm_settings: unknown settings {unknown}; allowed: '
                        f'{list(EBQM_KEYS)}')
    hook: Dict[str, Any] = {}
    if cfg is not None:
        for h in cfg.get('custom_hooks', None) or []:
            if h.get('type') == 'ELAPruneHook':
                hook = dict(h)
    out = ebqm_defaults()
    for key in EBQM_KEYS:
        if given.get(key) is not None:
            out[key] = given[key]
        elif hook.get(key) is not None:
            out[key] = hook[key]
    return out


def add_ebqm_arguments(parser) -> None:
    """``--quantile``, ``--max-prune-ratio`` and ``--min-keep`` for a tool.

    Unset (None) means: the config's ``ELAPruneHook``, else the hook's default
    (see :func:`ebqm_settings`).
    """
    help_text = 'EBQM setting; default: the config\'s hook, else the hook\'s'
    parser.add_argument('--quantile', type=float, default=None, help=help_text)
    parser.add_argument(
        '--max-prune-ratio', type=float, default=None, help=help_text)
    parser.add_argument('--min-keep', type=int, default=None, help=help_text)


def ebqm_selector(cfg: Optional[Any] = None, **given: Any):
    """A :class:`Selector` with strategy ``'ebqm'`` and :func:`ebqm_settings`.

    Raises:
        ValueError: a setting out of range (the selector's message).
    """
    from mmdet_ela.pruning import Selector
    return Selector(strategy='ebqm', **ebqm_settings(cfg, **given))


def load_config(path: str, cfg_options: Optional[dict] = None):
    """``Config.fromfile`` with ``cfg_options`` merged and custom imports done.

    Args:
        path (str): the config file.
        cfg_options (dict, optional): ``key=value`` overrides (as
            ``--cfg-options`` gives them). Default: None.
    """
    from mmengine.config import Config
    from mmengine.utils import import_modules_from_strings
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    return cfg
