"""``simulate_gates``: the rules of :mod:`iwopd_kit.run.gates` over a store (every step) or one dump.

A store is read through its views (``tokens``: the counted tokens are ``policy`` ones with finite
``student_logprob`` and ``rollout_logprob``; ``rows``: groups and rewards); a dump file (or a folder of
one step's files) is read with the kit's readers and reduced to the same inputs. One record per
(rule, step[, group]); parameters overridable per rule (``{"icepop": {"min": 0.4}}``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS
from .gates import RULES, GateInputs, evaluate

COLUMNS = ("rule", "level", "action", "params", "step", "group", "tokens", "tokens_masked", "token_fraction", "seqs",
           "seqs_masked", "seq_fraction", "masked_reward_mean", "kept_reward_mean", "masked_correct", "note")


def batch_inputs(batch) -> GateInputs:
    """A Batch's counted tokens (policy, loss-masked, both log-probs finite) as :class:`GateInputs`."""
    from .batches import rl_advantages, row_groups, row_rewards

    if not (batch.has(ROLLOUT_LOGPROBS) and batch.has(STUDENT_LOGPROBS)):
        raise ValueError("the dump needs rollout_logprobs and student_logprobs (the trainer's) to replay a mask")
    s, r = batch.series(STUDENT_LOGPROBS, torch.float64), batch.series(ROLLOUT_LOGPROBS, torch.float64)
    m = batch.policy_mask() & torch.isfinite(s) & torch.isfinite(r)
    rows = torch.arange(batch.size)[:, None].expand_as(m)
    adv = rl_advantages(batch)
    rewards = np.array([np.nan if v is None else v for v in row_rewards(batch)], dtype=np.float64)
    return GateInputs(rows[m].numpy(), s[m].numpy(), r[m].numpy(), batch.size, row_groups(batch), rewards,
                      None if adv is None else adv[m].numpy())


def store_inputs(con, step: int) -> GateInputs:
    """One step of a store (an open DuckDB connection from :func:`iwopd_kit.run.open_store`)."""
    rows = con.execute('SELECT step_row, "group", reward FROM rows WHERE step = ? ORDER BY step_row', [step]).fetchall()
    t = con.sql("SELECT step_row, student_logprob, rollout_logprob, rl_advantage FROM tokens WHERE step = ? AND policy "
                "AND isfinite(student_logprob) AND isfinite(rollout_logprob) ORDER BY step_row, position",
                params=[step]).to_arrow_table()
    col = lambda name, dtype: t.column(name).to_numpy(zero_copy_only=False).astype(dtype)  # noqa: E731  (null -> NaN)
    adv = col("rl_advantage", np.float64)
    rewards = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
    return GateInputs(col("step_row", np.int64), col("student_logprob", np.float64), col("rollout_logprob", np.float64),
                      len(rows), [r[1] for r in rows], rewards, adv if bool(np.isfinite(adv).any()) else None)


def _records(x: GateInputs, step: int | None, rules: list[str], overrides: dict, by_group: bool) -> list[dict]:
    out = []
    for name in rules:
        rule = RULES[name]
        params = rule.params(overrides.get(name))
        note = None
        if rule.needs_advantage and x.rl_adv is None:
            note = "not replayed: needs the RL advantage per token (a weight stream 'advantages' or meta 'advantage')"
        stats = evaluate(x, rule, params, by_group) if note is None else {None: None}
        for group, st in stats.items():
            rec = {"rule": name, "level": rule.level, "action": rule.action, "params": json.dumps(params, sort_keys=True),
                   "step": step, "group": group, **({k: None for k in COLUMNS[6:-1]} if st is None else st.record()),
                   "note": note}
            out.append(rec)
    return out


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path / "steps.parquet").exists()


def simulate_gates(source: str | Path, rules: list[str] | None = None, overrides: dict[str, dict[str, Any]] | None = None,
                   by_group: bool = False, format: str = "auto", allow_pickle: bool = False) -> list[dict]:
    """Replay ``rules`` (default all of :data:`~iwopd_kit.run.gates.RULES`) on a store or a dump: records with
    :data:`COLUMNS`, one per (rule, step) and, with ``by_group``, per (rule, step, group)."""
    rules = list(RULES) if rules is None else rules
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {unknown}; expected some of {list(RULES)}")
    overrides = overrides or {}
    for name, o in overrides.items():
        if name not in RULES:
            raise ValueError(f"--param names rule {name!r}, which is not one of {list(RULES)}")
        RULES[name].params(o)
    source = Path(source)
    if _is_store(source):
        from .sql import open_store

        con = open_store(source)
        try:
            steps = [s for (s,) in con.execute("SELECT step FROM steps ORDER BY step").fetchall()]
            return [r for s in steps for r in _records(store_inputs(con, s), s, rules, overrides, by_group)]
        finally:
            con.close()
    from ..batch import BatchError
    from ..formats.dirs import dump_of, plan_directory
    from .batches import read_step

    dumps = plan_directory(source, format).dumps if source.is_dir() else [dump_of(source, format)]
    batch, _, _, _, unread = read_step(dumps, [d.name for d in dumps], allow_pickle)
    if batch is None:
        raise BatchError("; ".join(f"{k}: {v}" for k, v in unread.items()) or f"{source}: no dump file in it")
    steps = {d.step for d in dumps}
    return _records(batch_inputs(batch), steps.pop() if len(steps) == 1 else None, rules, overrides, by_group)


def parse_param(text: str) -> tuple[str, str, Any]:
    """``RULE.KEY=VALUE`` -> (rule, key, value): a number, ``none`` -> None, anything else the text."""
    head, sep, value = text.partition("=")
    rule, dot, key = head.partition(".")
    if not sep or not dot or not rule or not key:
        raise ValueError(f"--param {text!r}: expected RULE.KEY=VALUE, e.g. icepop.min=0.4")
    if value.lower() in ("none", "null"):
        return rule, key, None
    try:
        return rule, key, float(value)
    except ValueError:
        return rule, key, value


__all__ = ["simulate_gates", "batch_inputs", "store_inputs", "parse_param", "COLUMNS"]
