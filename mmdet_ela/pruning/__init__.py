"""The glue between the models and the redundancy maths: pruning masks (read,
validate, apply, load from a file, a round record or a checkpoint), the
adjacent-unit scorer used by the hook and every tool, and round records."""
from .masks import (apply_masks, attention_stacks, count_units, get_masks,
                    guard_mask_loading, load_masks, masks_from_state_dict,
                    record_attention, set_recording, unwrap, validate_masks)
from .records import (explain, format_table, load_records, make_record,
                      write_record)
from .scoring import AdjacentUnitScorer, score_model
from .selection import STRATEGIES, Selector

__all__ = [
    'unwrap', 'attention_stacks', 'get_masks', 'validate_masks', 'apply_masks',
    'masks_from_state_dict', 'count_units', 'set_recording',
    'record_attention', 'load_masks', 'guard_mask_loading',
    'AdjacentUnitScorer', 'score_model', 'make_record', 'explain',
    'write_record', 'load_records', 'format_table', 'Selector', 'STRATEGIES'
]
