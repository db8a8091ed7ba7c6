"""Converters from other projects' layouts into completion coordinates (the only place that knows them).

Pure converters, one module per layout (``trl``, ``verl``, ``vllm``, ``primerl``, ``nemorl``, ``slime``; the
kit's own JSONL is :mod:`iwopd_kit.batch`), the safe file openers (``files``) and one table of readers
(``registry``) that ``load_any`` and the CLI use. No converter imports the table.
"""

from .nemorl import from_nemorl_records
from .primerl import from_primerl_records
from .registry import FORMATS, READERS, detect_format, dump_files, load_any
from .slime import from_slime_rollout, from_slime_train, load_slime
from .trl import from_trl_batch, load_trl_dump, to_trl_batch, trl_prefix_fix_slice
from .verl import from_verl_batch, to_verl_batch
from .vllm import from_openai_completions, from_request_outputs, from_trl_vllm_output

__all__ = ["FORMATS", "READERS", "detect_format", "dump_files", "from_nemorl_records", "from_openai_completions",
           "from_primerl_records", "from_request_outputs", "from_slime_rollout", "from_slime_train", "from_trl_batch",
           "from_trl_vllm_output", "from_verl_batch", "load_any", "load_slime", "load_trl_dump", "to_trl_batch",
           "to_verl_batch", "trl_prefix_fix_slice"]
