"""How a round decides which units to prune: EBQM, or a random control."""
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence

from ..redundancy import EBQMResult, ebqm_select, random_select

__all__ = ['STRATEGIES', 'Selector', 'check_int']

STRATEGIES = ('ebqm', 'random')


def check_int(owner: str, name: str, value, low: int) -> None:
    """Refuse ``value`` unless it is an int >= ``low`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f'{owner}: {name}={value!r} must be an integer '
                         f'>= {low}')


@dataclass
class Selector:
    """The selection settings of the hook (and of tools that mimic it).

    Args:
        strategy (str): 'ebqm', or 'random' for an ablation's control.
            Default: 'ebqm'.
        quantile (float): EBQM's quantile, in (0, 1). Default: 0.3.
        max_prune_ratio (float): at most this share of all units is pruned,
            over all rounds, in [0, 1). Default: 0.3.
        min_keep (int): every stage (and the neck) keeps at least this many
            units. Default: 1.
        random_units (int): units to prune per round with 'random'.
            Default: 1.
        seed (int): seed of the random draw; round K draws with
            ``seed + K - 1``. Default: 0.
    """
    strategy: str = 'ebqm'
    quantile: float = 0.3
    max_prune_ratio: float = 0.3
    min_keep: int = 1
    random_units: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        owner = 'ELAPruneHook'
        if self.strategy not in STRATEGIES:
            raise ValueError(f'{owner}: strategy={self.strategy!r}; allowed '
                             f'values: {STRATEGIES}')
        q, r = self.quantile, self.max_prune_ratio
        if isinstance(q, bool) or not isinstance(q, (int, float)) \
                or not 0 < q < 1:
            raise ValueError(f'{owner}: quantile={q!r} must be in the open '
                             'interval (0, 1)')
        if isinstance(r, bool) or not isinstance(r, (int, float)) \
                or not 0 <= r < 1:
            raise ValueError(f'{owner}: max_prune_ratio={r!r} must be in '
                             '[0, 1)')
        check_int(owner, 'min_keep', self.min_keep, 1)
        check_int(owner, 'random_units', self.random_units, 0)
        check_int(owner, 'seed', self.seed, 0)
        self.quantile, self.max_prune_ratio = float(q), float(r)

    def select(self,
               scores: Mapping[str, Sequence[Optional[float]]],
               masks: Mapping[str, Sequence[bool]],
               round_num: int = 1) -> EBQMResult:
        """Decide round ``round_num`` (1-based) from the scores and masks."""
        if self.strategy == 'random':
            return random_select(
                masks,
                self.random_units,
                self.seed + round_num - 1,
                self.min_keep,
                self.max_prune_ratio,
                scores=scores)
        return ebqm_select(scores, masks, self.quantile, self.max_prune_ratio,
                           self.min_keep)

    def settings(self, round_num: int = 1) -> Dict[str, object]:
        """The settings that matter for ``strategy``, for a round record."""
        keep: List[str] = ['max_prune_ratio', 'min_keep']
        keep += ['quantile'] if self.strategy == 'ebqm' else ['random_units']
        out = {k: v for k, v in asdict(self).items() if k in keep}
        if self.strategy == 'random':
            out['seed'] = self.seed + round_num - 1
        return out
