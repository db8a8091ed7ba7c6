"""iwopd_kit: Importance-Weighted On-Policy Distillation, step by step and token by token.

The data flows one way: rollout -> score -> check -> advantage -> weights -> loss -> view.
Every per-token tensor is [B, L] in completion coordinates (token j = the j-th generated token of
the row; right-padded; ``mask`` bool [B, L]).
"""

from .alignment import AlignmentReport, Finding, Tolerances, check_alignment, lag_scan
from .batch import Batch, BatchError, read_jsonl, write_jsonl
from .formats import (
    from_openai_completions,
    from_request_outputs,
    from_trl_batch,
    from_verl_batch,
    load_any,
    to_trl_batch,
)
from .alignment.mismatch import MISMATCH_KEYS, mismatch_metrics
from .objective import (
    ObjectiveResult,
    advantage,
    iw_opd_loss,
    iw_opd_metrics,
    jsd_top1_loss,
    opd_loss,
    position_mask,
    prefix_weights,
)
from .apps.replay import ReplayResult, replay_row
from .engines.rollout import TransformersEngine, VLLMEngine, VLLMServerEngine, configure_vllm_env, rollout
from .batch.sampling import Sampling, SamplingSettings
from .engines.scoring import (
    completion_logits,
    load_model,
    load_tokenizer,
    sampled_logprobs,
    score,
    score_batch,
)
from .apps.check_result import CheckResult, DirCheckResult
from .apps.service import check_dump

from . import views

__version__ = "0.1.0"


def __getattr__(name: str):
    """``scan_run``, ``open_store``, ``ScanResult``, ``simulate_gates``: the run commands' API (iwopd_kit.run),
    loaded on first use (they need pyarrow and duckdb, the ``run`` extra; ``import iwopd_kit`` does not)."""
    if name in ("ScanResult", "open_store", "scan_run", "simulate_gates"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AlignmentReport", "Batch", "MISMATCH_KEYS", "BatchError", "CheckResult", "DirCheckResult", "Finding", "ObjectiveResult", "Sampling", "SamplingSettings",
    "Tolerances", "TransformersEngine", "VLLMEngine", "VLLMServerEngine", "advantage", "check_alignment", "check_dump",
    "completion_logits", "configure_vllm_env", "from_openai_completions", "from_request_outputs",
    "from_trl_batch", "from_verl_batch", "iw_opd_loss", "load_any", "iw_opd_metrics", "jsd_top1_loss", "lag_scan", "load_model", "load_tokenizer", "mismatch_metrics", "opd_loss",
    "position_mask", "prefix_weights", "read_jsonl", "ReplayResult", "replay_row", "rollout", "sampled_logprobs", "score",
    "score_batch", "to_trl_batch", "write_jsonl", "ScanResult", "open_store", "scan_run", "simulate_gates",
]
