"""The failure classes the check names (``KINDS``) and the severities of a finding; every module of the
check reads them from here (``core`` re-exports them)."""

from __future__ import annotations

KINDS = (
    "offset", "missing_token_ids", "teacher_coverage", "tokenizer_mismatch", "bos_eos", "padding",
    "truncation", "temperature", "processed_logprobs", "staleness", "normalisation", "ordering", "numerics",
)
SEVERITIES = ("error", "warning", "info")


__all__ = ["KINDS", "SEVERITIES"]
