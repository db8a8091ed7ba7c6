"""The data model: a :class:`Batch` of rollouts in completion coordinates, its per-token fields
(``fields.py``), their ragged storage (``ragged.py``), row blocks of its series (``blocks.py``) and the
sampling settings a batch records (``sampling.py``). The ground floor: nothing here imports the rest of the kit.
"""

from .core import POLICY, Batch, read_jsonl, write_jsonl
from .fields import RAGGED, batch_records, check_padded, pack_field, ragged_from_padded, Rows, Streams
from .ragged import (
    FLOATS, KEPT_LOGMASS, ROLLOUT_LOGPROBS, SERIES, STUDENT_LOGPROBS, TEACHER_LOGPROBS, TOKEN_SOURCES, BatchError,
    Column, group_value, ids_row, kept_row, locate, pack_padded, Packed, RecordBuilder, rows_of,
)
from .sampling import SamplingSettings

__all__ = [
    "FLOATS",
    "KEPT_LOGMASS",
    "POLICY",
    "RAGGED",
    "ROLLOUT_LOGPROBS",
    "SERIES",
    "STUDENT_LOGPROBS",
    "TEACHER_LOGPROBS",
    "TOKEN_SOURCES",
    "Batch",
    "batch_records",
    "BatchError",
    "check_padded",
    "Column",
    "group_value",
    "ids_row",
    "kept_row",
    "locate",
    "pack_field",
    "pack_padded",
    "Packed",
    "ragged_from_padded",
    "read_jsonl",
    "RecordBuilder",
    "Rows",
    "rows_of",
    "SamplingSettings",
    "Streams",
    "write_jsonl",
]
