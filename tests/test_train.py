"""The on-policy loop with real vLLM rollouts and weight sync moves the student toward the teacher.

Directions only (held-out reverse KL falls, accuracy rises); the study's results are measured,
not tested. Also: vLLM and transformers log-probs agree after every sync, and skipping the sync
shows up as drift (staleness).
"""

from __future__ import annotations

import iwopd_kit as K
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from iwopd_kit.apps.train import LoopConfig, train


def test_loop_moves_student_toward_teacher(vllm_raw):
    cfg = LoopConfig(objective="iw_opd", steps=40, batch_size=64, lr=3e-5, eval_every=40, eval_prompts=128)
    records = train(cfg, engine=vllm_raw)
    first, last = records[0].eval, records[-1].eval
    assert last["reverse_kl_per_token"] < first["reverse_kl_per_token"], (first, last)
    assert last["greedy_acc"] > first["greedy_acc"], (first, last)
    drifts = [r.drift for r in records[:-1]]
    assert max(drifts) < 1e-3, f"vLLM and the trainer disagree after a sync: {max(drifts)}"
    assert all(set(r.metrics) >= {"iw_opd/mean_weight", "iw_opd/min_weight", "iw_opd/max_weight"} for r in records[:-1])


def test_skipping_the_sync_shows_as_drift(vllm_raw, hf_student, eval_prompt_ids):
    cfg = LoopConfig(objective="opd", steps=6, batch_size=32, lr=3e-4, eval_every=100, eval_prompts=16, sync=False)
    records = train(cfg, engine=vllm_raw)
    drifts = [r.drift for r in records[:-1]]
    assert drifts[0] < 1e-3 < drifts[-1], drifts
    # the shared engine is left with the student's weights from disk after the run
    batch = K.rollout(vllm_raw, eval_prompt_ids[:4], temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=0, stop_token_ids=(2,))
    gap = (batch.series("rollout_logprobs") - K.score(hf_student, batch)).abs()
    assert float(gap[batch.valid()].max()) < 1e-4
