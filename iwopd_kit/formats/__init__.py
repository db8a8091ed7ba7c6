"""Converters from other projects' layouts into completion coordinates (the only place that knows them)."""

from .load import FORMATS, detect_format, load_any
from .trl import from_trl_batch, load_trl_dump, to_trl_batch, trl_prefix_fix_slice
from .verl import from_verl_batch, to_verl_batch
from .vllm import from_openai_completions, from_request_outputs

__all__ = ["FORMATS", "detect_format", "from_openai_completions", "from_request_outputs", "from_trl_batch",
           "from_verl_batch", "load_any", "load_trl_dump", "to_trl_batch", "to_verl_batch", "trl_prefix_fix_slice"]
