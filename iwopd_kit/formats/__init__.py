"""Converters from other projects' layouts into completion coordinates (the only place that knows them)."""

from .trl import from_trl_batch, to_trl_batch, trl_prefix_fix_slice
from .vllm import from_openai_completions, from_request_outputs

__all__ = ["from_trl_batch", "to_trl_batch", "trl_prefix_fix_slice", "from_openai_completions", "from_request_outputs"]
