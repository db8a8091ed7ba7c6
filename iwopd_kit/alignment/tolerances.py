"""The check's thresholds, in nats on the per-token gap |rollout - trainer| = |Δ| (docs/calibration.md).

One frozen dataclass, :class:`Tolerances`; ``core`` re-exports it (views read it from there).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerances:
    """Thresholds, in nats, on the per-token gap |rollout - student| = |Δ| (calibration: docs/calibration.md).

    same: values this close are the same number (float32 vLLM vs transformers: max ~3e-5, also at 151,936 tokens).
    rounding: in a pool whose bulk agrees to float32 (see ``bulk_quantile``), a structureless gap on a
        token up to this is a warning, beyond it an error (a token off by a nat among exact ones is not
        rounding); also the per-token bound a re-ordered row must match its partner within.
    max_lag: the offset scan tries every shift d with |d| <= max_lag (plus each row's prompt-length
        differences); a segment shifted by d has token j carrying the rollout log-prob of token j + d.
    lag_gain: an offset is reported when some shift d != 0 fits at least this many times better than the
        unshifted series (d = 0); a re-ordered row must match another row's student series this many
        times better than its own.
    min_tokens_for_lag: segments shorter than this are not scanned for offsets / rows for ordering, and a
        shift counts only where it pairs at least this many tokens of the segment.
    min_tokens_for_pattern: tokens differing by more than ``same`` a pool needs before its sign pattern
        (temperature: rollout below the trainer; top-p: above) can name a cause.
    stale_t: pooled t-statistic (|mean gap| / standard error) a same-sign gap must reach to be called stale.
    stale_min_rows: rows (each with >= min_tokens_for_lag values) needed before a gap counts as systematic.
    bulk_quantile: the |Δ| quantile that tells a low-precision pool (above ``same``: bf16 on a side,
        p90 0.007-0.013 on the tiny student, 0.08-0.11 at 151,936 tokens) from a float32 one (p90 <= 6e-6);
        recorded dtypes (meta ``rollout_dtype`` / ``trainer_dtype``) other than float32/float64 also make it
        low-precision.
    mult_prob_error: in a low-precision pool, the ``mismatch/token_mult_prob_error`` (mean exp|Δ|) above
        which the mismatch is an error (NeMo-RL's healthy bound, 1.05; bf16 vLLM vs an fp32 trainer
        measured 1.005 on the tiny student, 1.032-1.038 at 151,936 tokens).
    k3_kl: in a low-precision pool, the ``mismatch/k3_kl`` above which the mismatch is an error (10x the
        usual dense-model upper end of 1e-3; bf16 measured 1-2e-4 tiny, at most 2.2e-3 at 151,936).
    metric_se: the full pool's metric counts as beyond its bound only when it exceeds it by more than this
        many standard errors of its mean (a handful of tokens cannot establish it); the trimmed pool and
        the tail count below are not subject to it.
    trim_quantile: the trimmed pool keeps the tokens with |Δ| at or below this quantile; its metrics beyond
        the bounds are an error however heavy the tail (the tail cannot hide a broken bulk).
    tail_nats, tail_share: more than ``tail_share`` of a pool's tokens (and at least two) with |Δ| above
        ``tail_nats`` is an error (healthy bf16: max 0.64 nats at 151,936 tokens, p99.9 <= 0.45).
    zero_slack: how far below where a certain / nucleus-of-one token sits (0, or log(top_p) under
        processed top-p) the trainer's log-prob of a token with a rollout log-prob of exactly 0.0 may be
        and still count as healthy (engine rounding of a near-certain token); below it the 0.0 is a
        padding value on a real token.
    nucleus_slack: without recorded sampling settings, how far below log(estimated top_p) a 0.0 token's
        trainer log-prob may sit and still be a nucleus of one (the estimate is an upper bound on top_p).
    temperature_r, temperature_min_tokens: without recorded settings, a pool whose mismatch is within the
        numerics bounds is still named ``temperature`` (a warning) when the signed gap follows the log-prob
        (|Pearson r| of rollout - trainer against the trainer's log-prob >= ``temperature_r``) over at least
        ``temperature_min_tokens`` tokens that differ by more than ``same``: a 1/T rescaling moves every
        token's log-prob by a smooth function of it, rounding moves it by noise of either sign (tiny
        student, 48 prompts x 3 seeds: T 0.7 / 0.9 / 1.5 gave |r| 0.95-0.97 / 0.91-0.95 / 0.63-0.77, a bf16
        trainer 0.07-0.17; 16 prompts of vLLM raw at T 0.7: 0.80).
    teacher_lag_gain, teacher_wide_lag_gain, teacher_min_tokens, teacher_row_share: the teacher series is
        called shifted against the student's when its best lag k != 0 (|k| <= ``max_lag``) fits
        ``teacher_lag_gain`` times better than lag 0 (pooled mean |teacher - student|) at |k| = 1,
        ``teacher_wide_lag_gain`` times at |k| >= 2, over at least ``teacher_min_tokens`` pairs, and at least
        ``teacher_row_share`` of the rows fit better there (``teacher_shift.py``; healthy fixtures: at most
        0.93 at |k| = 1, 1.47 at |k| >= 2).
    min_top_p: without recorded settings, the lowest top_p the data may suggest: a token whose
        trainer - rollout is below log(min_top_p) is not counted as renormalised.
    """

    same: float = 1e-3
    rounding: float = 0.25
    max_lag: int = 4
    lag_gain: float = 10.0
    min_tokens_for_lag: int = 3
    min_tokens_for_pattern: int = 8
    stale_t: float = 3.0
    stale_min_rows: int = 4
    bulk_quantile: float = 0.9
    mult_prob_error: float = 1.05
    k3_kl: float = 1e-2
    metric_se: float = 2.0
    trim_quantile: float = 0.9
    tail_nats: float = 2.0
    tail_share: float = 0.01
    zero_slack: float = 0.02
    nucleus_slack: float = 0.1
    min_top_p: float = 0.5
    temperature_r: float = 0.6
    temperature_min_tokens: int = 50
    teacher_lag_gain: float = 1.5
    teacher_wide_lag_gain: float = 1.75
    teacher_min_tokens: int = 100
    teacher_row_share: float = 0.9


FULL_PRECISION: tuple[str, ...] = ("float32", "float64")
"""Recorded dtypes (meta ``rollout_dtype`` / ``trainer_dtype``) whose rounding is below ``Tolerances.same``."""


__all__ = ["Tolerances", "FULL_PRECISION"]
