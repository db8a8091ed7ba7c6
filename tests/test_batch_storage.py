"""The Batch data model: per-token fields stored packed, lists built on first read, lossless dtypes."""

from __future__ import annotations

import json

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.batch import read_jsonl


def _batch(**kw):
    return K.Batch(prompt_ids=[[1, 2], [3]], completion_ids=[[5, 300000, 7], [8]],
                   rollout_logprobs=[[-0.5, None, -0.25], [-1.0]], **kw)


def test_fields_are_packed_and_lists_are_built_only_when_read():
    b = _batch()
    assert b.__dict__["_lists"] == {}                      # nothing shown yet
    p = b.packed("rollout_logprobs")
    assert p.values.dtype == torch.float32 and p.lengths.tolist() == [3, 1]   # -0.5, -0.25, -1 are float32
    assert b.packed("completion_ids").values.dtype == torch.int32
    assert torch.equal(b.series("rollout_logprobs", torch.float64)[0].isnan(), torch.tensor([False, True, False]))
    assert b.tokens().tolist() == [[5, 300000, 7], [8, 0, 0]]
    assert b.__dict__["_lists"] == {}                      # tensor methods read the packed form
    assert b.rollout_logprobs == [[-0.5, None, -0.25], [-1.0]]
    assert b.completion_ids == [[5, 300000, 7], [8]] and b.student_logprobs is None


def test_float64_values_are_kept_exactly():
    v = [[-0.1, -1e-7, -1 / 3], [-2.0]]                    # not float32 values
    b = K.Batch(prompt_ids=[[1], [2]], completion_ids=[[4, 5, 6], [7]], teacher_logprobs=v)
    assert b.packed("teacher_logprobs").values.dtype == torch.float64
    assert b.teacher_logprobs == v
    assert b.series("teacher_logprobs", torch.float64)[0, :3].tolist() == v[0]


def test_jsonl_round_trip_is_exact_and_replace_select_keep_values(tmp_path):
    b = _batch(mask=[[True, False, True], [1]], finish_reasons=["length", "stop"], meta=[{"k": 1}, {}])
    path = K.write_jsonl(b, tmp_path / "b.jsonl")
    back = read_jsonl(path)
    assert back == b
    assert back.replace(meta=None).rollout_logprobs == b.rollout_logprobs
    sel = back.select([1, 0])
    assert sel.completion_ids == [[8], [5, 300000, 7]] and sel.mask == [[True], [True, False, True]]
    assert sel.valid().tolist() == [[True, False, False], [True, False, True]]
    with pytest.raises(K.BatchError, match=r"row 0: rollout_logprobs has 3 values but completion_ids has 2 tokens"):
        b.replace(completion_ids=[[5, 6], [8]])


def test_a_series_present_in_some_rows_only_is_missing_elsewhere(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt_ids": [1], "completion_ids": [2, 3]},
            {"prompt_ids": [1], "completion_ids": [4], "student_logprobs": [-0.5], "mask": [0]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    b = read_jsonl(path)
    assert b.student_logprobs == [[None, None], [-0.5]]
    assert b.mask == [[True, True], [False]] and b.rollout_logprobs is None


def test_with_series_from_a_tensor_checks_positive_values_and_keeps_float32():
    b = _batch()
    t = torch.tensor([[-0.5, -0.75, -1.0, 9.0], [-0.125, 5.0, 5.0, 5.0]])   # padding (>= L_b) is cut
    s = b.with_series("student_logprobs", t, temperature=1.0)
    assert s.packed("student_logprobs").values.dtype == torch.float32
    assert s.student_logprobs == [[-0.5, -0.75, -1.0], [-0.125]] and s.scoring == {"student_logprobs": 1.0}
    with pytest.raises(K.BatchError, match=r"row 1, position 0: student_logprobs = 0.5 is a positive log-prob"):
        b.with_series("student_logprobs", torch.tensor([[-0.5, -0.5, -0.5], [0.5, 0.0, 0.0]]))
