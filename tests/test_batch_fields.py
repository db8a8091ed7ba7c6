"""What each token is: the loss mask with holes, the token source, weight streams, groups and kept sets.

Round trips through JSONL and ``select``, the policy mask and segments the gap detectors read, and
errors that name the row, the position and what was expected.
"""

from __future__ import annotations

import pytest
import torch

from iwopd_kit.batch import TOKEN_SOURCES, Batch, BatchError, read_jsonl, write_jsonl


def _multi_turn() -> Batch:
    # row 0: assistant turn (2 tokens), a tool turn (2 context tokens, loss-masked out), assistant turn (2 tokens),
    # the last one sampled by a teacher (SFT-distill); row 1: one turn
    return Batch(
        prompt_ids=[[1, 2], [3]], completion_ids=[[4, 5, 6, 7, 8, 9], [10, 11]],
        rollout_logprobs=[[-0.1, -0.2, 0.0, 0.0, -0.3, -0.4], [-0.5, None]],
        student_logprobs=[[-0.1, -0.2, -3.0, -4.0, -0.3, -0.4], [-0.5, -0.6]],
        mask=[[1, 1, 0, 0, 1, 1], [1, 1]],
        token_source=[["policy", "policy", "context", "context", "policy", "other_model"], ["policy", "policy"]],
        weights={"rl_weights": [[1, 1, 0, 0, 1, 0], [1, 1]], "ce_weights": [[0, 0, 0, 0, 0, 1], [0, 0]]},
        groups=["math", "code"], kept_ids=[[[4, 1], [5], None, None, [6, 8], [9]], None])


def test_policy_mask_leaves_out_context_and_other_model_tokens():
    b = _multi_turn()
    assert b.policy_mask().tolist() == [[True, True, False, False, True, False], [True, True, False, False, False, False]]
    assert b.loss_mask == b.mask
    assert b.source_codes()[0].tolist() == [0, 0, 2, 2, 0, 1]
    assert b.source_codes()[1].tolist() == [0, 0, -1, -1, -1, -1]


def test_segments_are_the_contiguous_policy_runs():
    b = _multi_turn()
    assert b.segments() == [(0, 0, 2), (0, 4, 5), (1, 0, 2)]
    assert b.segments(b.valid()) == [(0, 0, 2), (0, 4, 6), (1, 0, 2)]


def test_jsonl_round_trip_keeps_every_field(tmp_path):
    b = _multi_turn()
    c = read_jsonl(write_jsonl(b, tmp_path / "x.jsonl"))
    for name in ("token_source", "weights", "groups", "kept_ids", "mask", "rollout_logprobs"):
        assert getattr(c, name) == getattr(b, name), name
    assert torch.equal(c.weight("ce_weights", torch.float64).nan_to_num(-1),
                       torch.tensor([[0, 0, 0, 0, 0, 1.0], [0, 0, -1, -1, -1, -1]], dtype=torch.float64))


def test_select_reorders_the_new_fields_with_their_rows():
    b = _multi_turn().select([1, 0])
    assert b.groups == ["code", "math"]
    assert b.weights["rl_weights"] == [[1.0, 1.0], [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]]
    assert b.token_source[1][2] == "context" and b.kept_ids[0] is None and b.kept_ids[1][4] == [6, 8]


def test_a_plain_dump_writes_none_of_the_new_keys(tmp_path):
    b = Batch(prompt_ids=[[1]], completion_ids=[[2, 3]])
    line = write_jsonl(b, tmp_path / "p.jsonl").read_text()
    assert not any(k in line for k in ('"token_source"', '"weights"', '"group"', '"kept_ids"', '"kept_logmass"'))
    assert b.policy_mask().tolist() == [[True, True]]


def test_groups_from_meta_and_with_meta():
    b = Batch(prompt_ids=[[1], [2]], completion_ids=[[3], [4]]).with_meta(env=["a", "b"], step=3)
    assert b.meta == [{"env": "a", "step": 3}, {"env": "b", "step": 3}]
    assert b.with_groups_from_meta("env").groups == ["a", "b"]
    with pytest.raises(BatchError, match=r"row 0: meta has no 'task'"):
        b.with_groups_from_meta("task")


@pytest.mark.parametrize("kw, match", [
    (dict(token_source=[["policy", "tool"]]), r"row 0, position 1: token_source must be one of .*'tool'"),
    (dict(token_source=[["policy"]]), r"row 0: token_source has 1 values but completion_ids has 2 tokens"),
    (dict(weights={"rl": [[1.0]]}), r"row 0: weights\['rl'\] has 1 values but completion_ids has 2"),
    (dict(kept_ids=[[[2], []]]), r"row 0, position 1: kept_ids is empty"),
    (dict(kept_ids=[[[2]]]), r"row 0: kept_ids has 1 entries but completion_ids has 2 tokens"),
    (dict(groups=["a", "b"]), r"groups has 2 entries but the batch has 1 rows"),
    (dict(kept_logmass=[[-0.1, 0.5]]), r"row 0, position 1: kept_logmass = 0.5 is a positive log-prob"),
])
def test_bad_new_fields_name_row_position_and_expectation(kw, match):
    with pytest.raises(BatchError, match=match):
        Batch(prompt_ids=[[1]], completion_ids=[[2, 3]], **kw)


def test_a_bad_jsonl_token_source_names_the_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt_ids": [1], "completion_ids": [2, 3], "token_source": ["policy", 7]}\n')
    with pytest.raises(BatchError, match=r"row 0 \(line 1\), position 1: token_source must be one of"):
        read_jsonl(p)


def test_sources_are_the_documented_three():
    assert TOKEN_SOURCES == ("policy", "other_model", "context")


def test_metric_pool_reads_the_named_streams_and_round_trips(tmp_path):
    b = _multi_turn().replace(metric_pool=("rl_weights",))
    # row 0: policy tokens 0, 1, 4 have rl != 0; row 1 both
    assert b.metric_mask().tolist() == [[True, True, False, False, True, False], [True, True, False, False, False, False]]
    b2 = b.replace(weights={"rl_weights": [[0, 1, 0, 0, 1, 0], [1, 0]], "ce_weights": [[0] * 6, [0, 0]]})
    assert b2.metric_mask().tolist() == [[False, True, False, False, True, False], [True, False, False, False, False, False]]
    c = read_jsonl(write_jsonl(b2, tmp_path / "m.jsonl"))
    assert c.metric_pool == ("rl_weights",) and torch.equal(c.metric_mask(), b2.metric_mask())
    with pytest.raises(BatchError, match=r"metric_pool names weight stream\(s\) \['kl'\]"):
        _multi_turn().replace(metric_pool=("kl",))
