"""The mismatch masking rules RL frameworks run, replayed offline on a step's tokens.

Each rule is the framework's own definition (docs/run_scan.md cites file and line of each), applied to
the tokens it reads: loss-masked, policy-sampled tokens where both the trainer's log-prob (the kit's
``student_logprobs``) and the rollout's are finite. With Δ = trainer − rollout per token and a
sequence = one row:

========================  =========  ==========================================================================
rule                      level      masks (defaults)
========================  =========  ==========================================================================
``nemo_seq_error``        sequence   NeMo-RL ``seq_logprob_error_threshold``: mean over the row of exp(|Δ|) > 2.0
``tis`` / ``tis5``        token      truncated IS (NeMo-RL ``tis``, verl ``rollout_is=token``): exp(Δ) > 2 (5), or < min
``icepop``                token      NeMo-RL ``icepop``: exp(Δ) outside [0.5, 5] (a non-finite ratio counts as 0)
``trl_seq_mask``          sequence   TRL GRPO ``sequence_mask``: exp(sum of Δ over the row) > 3.0 (or < clip_min)
``dppo``                  token      prime-rl DPPO: p_train − p_roll > 0.2 where the RL advantage > 0, else < −0.2
``verl_rs`` / ``_geo``    mixed      verl ``rollout_rs``: the option(s) and threshold string of verl
                                     (defaults: ``seq_mean_k3`` at 0.01, ``seq_mean_k1`` at ``0.999_1.001``)
========================  =========  ==========================================================================

A rule returns the tokens it masks (for ``tis``: truncates); a sequence counts as masked when any of its
tokens is. Inputs are flat over the counted tokens (``seq`` [N] the row of each token, rows 0..S-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

SAFETY_BOUND = 20.0
"""verl clamps log-ratios to [-20, 20] before exponentiating (``rollout_corr_helper.py``)."""


@dataclass(frozen=True)
class GateInputs:
    """One step's counted tokens, flat: ``seq`` [N] row index, ``trainer`` / ``rollout`` [N] log-probs, ``rl_adv``
    [N] the RL advantage (NaN where not recorded; None when never), and per row [S]: ``groups``, ``rewards`` (NaN: none)."""

    seq: np.ndarray
    trainer: np.ndarray
    rollout: np.ndarray
    n_seq: int
    groups: list[str | None]
    rewards: np.ndarray
    rl_adv: np.ndarray | None = None

    @property
    def delta(self) -> np.ndarray:
        return self.trainer - self.rollout


@dataclass(frozen=True)
class Rule:
    name: str
    level: str                                   # "token" | "sequence" | "mixed" (verl options of both)
    action: str                                  # "drop" | "truncate"
    defaults: dict[str, Any]
    apply: Callable[[GateInputs, dict], np.ndarray]  # -> masked [N] bool
    source: str
    needs_advantage: bool = False
    doc: str = ""

    def params(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        unknown = set(overrides or {}) - set(self.defaults)
        if unknown:
            raise ValueError(f"rule {self.name!r} has no parameter {sorted(unknown)}; it has {sorted(self.defaults)}")
        return {**self.defaults, **(overrides or {})}


def _per_seq(x: GateInputs, values: np.ndarray) -> np.ndarray:
    return np.bincount(x.seq, weights=values, minlength=x.n_seq)


def _count(x: GateInputs) -> np.ndarray:
    return np.bincount(x.seq, minlength=x.n_seq).astype(np.float64)


def _ratio(x: GateInputs) -> np.ndarray:
    """exp(Δ) with NeMo-RL's ``nan_to_num(nan=0, posinf=0, neginf=0)``."""
    with np.errstate(over="ignore"):
        r = np.exp(x.delta)
    return np.where(np.isfinite(r), r, 0.0)


def nemo_seq_error(x: GateInputs, p: dict) -> np.ndarray:
    n = _count(x)
    err = np.where(n > 0, _per_seq(x, np.exp(np.abs(x.delta))) / np.maximum(n, 1), 0.0)
    return (~(err <= p["threshold"]))[x.seq]


def tis(x: GateInputs, p: dict) -> np.ndarray:
    r = _ratio(x)
    lo = 0.0 if p["min"] is None else p["min"]
    return (r > p["max"]) | (r < lo)


def icepop(x: GateInputs, p: dict) -> np.ndarray:
    r = _ratio(x)
    return ~((r >= p["min"]) & (r <= p["max"]))


def trl_seq_mask(x: GateInputs, p: dict) -> np.ndarray:
    with np.errstate(over="ignore"):
        ratio = np.exp(_per_seq(x, x.delta))
    lo = -math.inf if p["min"] is None else p["min"]
    hi = math.inf if p["max"] is None else p["max"]
    return ((ratio < lo) | (ratio > hi))[x.seq]


def dppo(x: GateInputs, p: dict) -> np.ndarray:
    diff = np.exp(x.trainer) - np.exp(x.rollout)
    high, low = diff > p["high"], diff < -p["low"]
    return np.where(x.rl_adv > 0, high, low)


def parse_rs_thresholds(options: list[str], spec: Any) -> dict[str, tuple[float | None, float]]:
    """verl's ``_parse_rollout_rs_thresholds``: one spec per option (or one for all); k1 options take ratio
    bounds ``lower_upper`` (lower = 1 / upper when one number), the others one upper bound."""
    raw = [str(spec)] if isinstance(spec, (int, float)) else [s.strip() for s in str(spec).split(",") if s.strip()]
    if len(raw) not in (1, len(options)):
        raise ValueError(f"verl rollout_rs threshold {spec!r}: expected one value or one per option {options}")
    raw = raw * len(options) if len(raw) == 1 else raw
    out = {}
    for opt, s in zip(options, raw):
        if opt.endswith("k1"):
            lo, hi = s.split("_", 1) if "_" in s else (str(1.0 / float(s)), s)
            lo, hi = float(lo), float(hi)
            if lo <= 0 or hi <= 0:
                raise ValueError(f"verl rollout_rs {opt}: bounds must be positive, got {s!r}")
            out[opt] = (lo, hi)
        else:
            if "_" in s or float(s) <= 0:
                raise ValueError(f"verl rollout_rs {opt}: expected one positive upper bound, got {s!r}")
            out[opt] = (None, float(s))
    return out


RS_OPTIONS = ("token_k1", "token_k2", "token_k3", "seq_sum_k1", "seq_sum_k2", "seq_sum_k3", "seq_mean_k1",
              "seq_mean_k2", "seq_mean_k3", "seq_max_k2", "seq_max_k3")


def verl_rs(x: GateInputs, p: dict) -> np.ndarray:
    """verl's ``compute_rollout_rejection_mask``: every listed option must pass (a logical AND)."""
    options = list(dict.fromkeys(o.strip() for o in str(p["option"]).split(",") if o.strip()))
    bad = [o for o in options if o not in RS_OPTIONS]
    if not options or bad:
        raise ValueError(f"verl rollout_rs option(s) {bad or p['option']!r}: expected some of {RS_OPTIONS}")
    lr = np.clip(x.delta, -SAFETY_BOUND, SAFETY_BOUND)
    stats = {"k1": -lr, "k2": 0.5 * lr ** 2, "k3": np.exp(lr) - 1.0 - lr}
    n = _count(x)
    keep = np.ones(x.seq.shape, dtype=bool)
    for opt, (lo, hi) in parse_rs_thresholds(options, p["threshold"]).items():
        k = stats[opt[-2:]]
        if opt.startswith("token"):
            v = k
        elif opt.startswith("seq_sum"):
            v = _per_seq(x, k)[x.seq]
        elif opt.startswith("seq_mean"):
            v = (_per_seq(x, k) / (n + 1e-8))[x.seq]           # verl_F.masked_mean: sum / (count + 1e-8)
        else:
            mx = np.full(x.n_seq, -np.inf)
            np.maximum.at(mx, x.seq, k)
            v = np.where(np.isneginf(mx), 0.0, mx)[x.seq]
        ok = (v >= math.log(lo)) & (v <= math.log(hi)) if opt.endswith("k1") else v <= hi
        keep &= ok
    return ~keep


_NEMO = "NVIDIA-NeMo/RL@7ea279ab"
_VERL = "volcengine/verl@b178a3cd verl/trainer/ppo/rollout_corr_helper.py"
RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("nemo_seq_error", "sequence", "drop", {"threshold": 2.0}, nemo_seq_error,
         f"{_NEMO} nemo_rl/algorithms/grpo.py:2513-2640 (compute_and_apply_seq_logprob_error_masking)"),
    Rule("tis", "token", "truncate", {"max": 2.0, "min": 0.0}, tis,
         f"{_NEMO} nemo_rl/algorithms/loss/loss_functions.py:597-616 ('tis'); {_VERL}:562"),
    Rule("tis5", "token", "truncate", {"max": 5.0, "min": 0.0}, tis,
         f"{_NEMO} nemo_rl/algorithms/loss/loss_functions.py:597-616 ('tis') at 5"),
    Rule("icepop", "token", "drop", {"min": 0.5, "max": 5.0}, icepop,
         f"{_NEMO} nemo_rl/algorithms/loss/loss_functions.py:577-584, 617-636 ('icepop')"),
    Rule("trl_seq_mask", "sequence", "drop", {"max": 3.0, "min": None}, trl_seq_mask,
         "huggingface/trl@f2cd5771 trl/trainer/grpo_trainer.py:2579-2620 (vllm_importance_sampling_mode='sequence_mask')"),
    Rule("dppo", "token", "drop", {"low": 0.2, "high": 0.2}, dppo,
         "PrimeIntellect-ai/prime-rl@559b4477 src/prime_rl/trainer/rl/loss.py:130-139 (default_loss_fn)",
         needs_advantage=True),
    Rule("verl_rs", "mixed", "drop", {"option": "seq_mean_k3", "threshold": "0.01"}, verl_rs,
         f"{_VERL}:156-370 (compute_rollout_rejection_mask); preset bypass_ppo_clip_k3_rs"),
    Rule("verl_rs_geo", "mixed", "drop", {"option": "seq_mean_k1", "threshold": "0.999_1.001"}, verl_rs,
         f"{_VERL}:156-370 (compute_rollout_rejection_mask); preset decoupled_geo_rs"),
)}


@dataclass
class GateStats:
    """What one rule masks in one slice (a step, or a step's group)."""

    tokens: int = 0
    tokens_masked: int = 0
    seqs: int = 0
    seqs_masked: int = 0
    reward_masked: list[float] = field(default_factory=list)
    reward_kept: list[float] = field(default_factory=list)

    def record(self) -> dict:
        rm, rk = self.reward_masked, self.reward_kept
        return {"tokens": self.tokens, "tokens_masked": self.tokens_masked,
                "token_fraction": self.tokens_masked / self.tokens if self.tokens else None,
                "seqs": self.seqs, "seqs_masked": self.seqs_masked,
                "seq_fraction": self.seqs_masked / self.seqs if self.seqs else None,
                "masked_reward_mean": float(np.mean(rm)) if rm else None,
                "kept_reward_mean": float(np.mean(rk)) if rk else None,
                "masked_correct": float(np.mean(np.asarray(rm) == 1)) if rm else None}


def evaluate(x: GateInputs, rule: Rule, params: dict, by_group: bool = False) -> dict[str | None, GateStats]:
    """``{None: the step's stats}`` (plus one entry per group with ``by_group``) of ``rule`` on ``x``.

    A rule that needs the RL advantage reads only the tokens that have one."""
    use = np.ones(x.seq.shape, dtype=bool)
    if rule.needs_advantage:
        use = np.isfinite(x.rl_adv) if x.rl_adv is not None else np.zeros_like(use)
    sub = GateInputs(x.seq[use], x.trainer[use], x.rollout[use], x.n_seq, x.groups, x.rewards,
                     None if x.rl_adv is None else x.rl_adv[use])
    masked = rule.apply(sub, params) if use.any() else np.zeros(0, dtype=bool)
    n_tok = np.bincount(sub.seq, minlength=x.n_seq)
    n_hit = np.bincount(sub.seq, weights=masked.astype(np.float64), minlength=x.n_seq)
    keys = [None] + (sorted({g for g in x.groups if g is not None}) if by_group else [])
    out = {}
    for key in keys:
        st = GateStats()
        for s in range(x.n_seq):
            if (key is not None and x.groups[s] != key) or n_tok[s] == 0:
                continue
            st.tokens += int(n_tok[s])
            st.tokens_masked += int(n_hit[s])
            st.seqs += 1
            hit = n_hit[s] > 0
            st.seqs_masked += int(hit)
            if math.isfinite(x.rewards[s]):
                (st.reward_masked if hit else st.reward_kept).append(float(x.rewards[s]))
        out[key] = st
    return out


__all__ = ["GateInputs", "Rule", "RULES", "GateStats", "evaluate", "parse_rs_thresholds", "RS_OPTIONS", "SAFETY_BOUND"]
