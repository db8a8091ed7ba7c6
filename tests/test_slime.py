"""slime's debug dumps (iwopd_kit/formats/slime.py) on the fixtures of scripts/fixtures_slime.py."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.formats import detect_format, load_any, load_slime
from iwopd_kit.formats.slime import from_slime_rollout, from_slime_train

DIR = toy.FIXTURES_DIR / "slime"


def dumps(name: str) -> tuple[dict, dict]:
    return (torch.load(DIR / name / "data_0.pt", weights_only=True),
            torch.load(DIR / name / "train_0.pt", weights_only=True))


def joined(name: str, **kw) -> K.Batch:
    return load_slime(DIR / name / "data_0.pt", DIR / name / "train_0.pt", **kw)


def errors(batch: K.Batch) -> list:
    return [f for f in K.check_alignment(batch).findings if f.severity == "error"]


def test_dumps_load_weights_only_and_are_recognised():
    rollout, train = dumps("top_p")
    assert set(rollout) == {"rollout_id", "samples"} and train["format_version"] == 2
    s = rollout["samples"][0]
    assert s["status"] == "completed" and isinstance(s["rollout_top_p_token_offsets"], torch.Tensor)
    assert {"log_probs", "ref_log_probs", "rollout_position", "sample_index", "loss_masks"} <= set(train["samples"][0])
    for name in ("healthy", "top_p", "shift", "teacher_offset", "teacher_offset_2"):
        assert detect_format(DIR / name / "data_0.pt") == "slime"
        assert detect_format(DIR / name / "train_0.pt") == "slime_train"


def test_rollout_alone_is_in_completion_coordinates():
    rollout, _ = dumps("healthy")
    b = load_any(DIR / "healthy" / "data_0.pt")
    assert b.size == len(rollout["samples"]) and not b.has("student_logprobs")
    for i, s in enumerate(rollout["samples"]):
        n = s["response_length"]
        assert b.prompt_ids[i] + b.completion_ids[i] == s["tokens"] and len(b.completion_ids[i]) == n
        assert b.rollout_logprobs[i] == pytest.approx(s["rollout_log_probs"], abs=0)
        assert b.teacher_logprobs[i] == pytest.approx(s["teacher_log_probs"].tolist(), abs=0)
        assert b.mask[i] == [bool(v) for v in s["loss_mask"]]
        assert b.groups[i] == s["metadata"]["source_name"] and b.meta[i]["slime"]["index"] == s["index"]
    assert b.finish_reasons == ["stop"] * b.size


def test_multi_turn_tool_tokens_are_masked_context():
    b = load_any(DIR / "healthy" / "data_0.pt")
    holes = [(r, j) for r, m in enumerate(b.mask) for j, v in enumerate(m) if not v]
    assert len(holes) == 3 and {r for r, _ in holes} == {1}                # the tool turn "=0," of sample 1
    j0 = holes[0][1]
    assert b.completion_ids[1][j0: j0 + 3] == [14, 3, 15]
    assert [b.token_source[1][j] for _, j in holes] == ["context"] * 3
    assert b.token_source[1].count("policy") == len(b.completion_ids[1]) - 3
    assert b.segments()[:3] == [(0, 0, b.lengths[0]), (1, 0, j0), (1, j0 + 3, b.lengths[1])]


@pytest.mark.parametrize("name", ["healthy", "top_p"])
def test_healthy_joined_dumps_get_no_error(name):
    b = joined(name)
    _, train = dumps(name)
    assert b.has("student_logprobs") and b.has("teacher_logprobs")
    for i, t in enumerate(train["samples"]):
        assert t["rollout_position"] == i
        assert b.student_logprobs[i] == pytest.approx(t["log_probs"].tolist(), abs=0)
        assert b.teacher_logprobs[i] == pytest.approx(t["teacher_log_probs"].tolist(), abs=0)
        assert b.meta[i]["slime"]["ref_log_probs"] == pytest.approx(t["ref_log_probs"].tolist(), abs=0)
    assert errors(b) == []
    gap = (b.series("rollout_logprobs", torch.float64) - b.series("student_logprobs", torch.float64))[b.valid()]
    assert gap.abs().max() < 1e-5                           # engine and trainer in the same (processed) frame


def test_train_dump_alone_gives_the_same_series():
    for name in ("healthy", "top_p"):
        j, t = joined(name), load_any(DIR / name / "train_0.pt")
        assert t.completion_ids == j.completion_ids and t.prompt_ids == j.prompt_ids and t.mask == j.mask
        for s in ("rollout_logprobs", "student_logprobs", "teacher_logprobs"):
            assert getattr(t, s) == getattr(j, s)
        assert t.kept_ids == j.kept_ids and t.groups == j.groups
    assert load_any(DIR / "top_p" / "train_0.pt").kept_ids is not None


def test_top_p_kept_sets_come_from_the_offsets():
    rollout, _ = dumps("top_p")
    b = load_any(DIR / "top_p" / "data_0.pt")
    sizes, empty = set(), []
    for i, s in enumerate(rollout["samples"]):
        ids, off = s["rollout_top_p_token_ids"].tolist(), s["rollout_top_p_token_offsets"].tolist()
        for j, y in enumerate(b.completion_ids[i]):
            if off[j] == off[j + 1]:                          # an empty span: a tool token, no kept set
                assert b.kept_ids[i][j] is None and b.token_source[i][j] == "context" and not b.mask[i][j]
                empty.append((i, j))
                continue
            assert b.kept_ids[i][j] == ids[off[j]:off[j + 1]] and y in b.kept_ids[i][j]
            sizes.add(len(b.kept_ids[i][j]))
    assert len(empty) == 3 and 1 in sizes and max(sizes) > 1    # the tool turn; nuclei of one token and of several
    lone = [(i, j) for i, r in enumerate(b.kept_ids) for j, k in enumerate(r) if k is not None and len(k) == 1]
    assert all(b.rollout_logprobs[i][j] == 0.0 for i, j in lone)   # alone in its nucleus: processed log-prob 0


def test_join_by_rollout_position_then_by_sample_index():
    rollout, train = dumps("healthy")
    ref = from_slime_rollout(rollout, train)
    shuffled = copy.deepcopy(train)
    shuffled["samples"] = shuffled["samples"][::-1]
    assert from_slime_rollout(rollout, shuffled).student_logprobs == ref.student_logprobs
    for t in shuffled["samples"]:
        del t["rollout_position"]                            # older dumps: join on sample_index == Sample.index
    assert from_slime_rollout(rollout, shuffled).student_logprobs == ref.student_logprobs


def test_join_errors_name_the_sample():
    rollout, train = dumps("healthy")
    bad = copy.deepcopy(train)
    bad["samples"][2]["tokens"] = bad["samples"][2]["tokens"].flip(0)
    with pytest.raises(K.BatchError, match=r"sample 2 \(index 2\): its tokens differ from the train dump"):
        from_slime_rollout(rollout, bad)
    short = copy.deepcopy(train)
    del short["samples"][5]
    with pytest.raises(K.BatchError, match=r"no train sample for rollout sample\(s\) \[5\]"):
        from_slime_rollout(rollout, short)
    other = dict(train, rollout_id=3)
    with pytest.raises(K.BatchError, match="dumps of different rollouts"):
        from_slime_rollout(rollout, other)


def test_shift_is_an_offset_error_on_every_row():
    b = joined("shift")
    found = {f.row for f in errors(b) if f.kind == "offset"}
    assert found == set(range(b.size))
    healthy = joined("healthy")
    assert b.completion_ids == healthy.completion_ids
    for r in range(b.size):                                   # token j holds the value of token j - 1
        assert b.rollout_logprobs[r][1:] == pytest.approx(healthy.student_logprobs[r][:-1], abs=2e-5)


def test_shift_across_a_tool_turn_is_one_offset_per_row_and_no_numerics():
    """Row 1's second assistant turn (3 tokens) is too short for a shift fit of its own: it takes the shift of
    its row's first turn (which undoes its 2 in-turn pairs), so its tokens, the one carrying the tool token's
    value included, are the offset finding's and numerics never sees them."""
    b = joined("shift")
    assert [s for s in b.segments(b.policy_mask()) if s[0] == 1] == [(1, 0, 7), (1, 10, 13)]
    report = K.check_alignment(b)
    errs = [f for f in report.findings if f.severity == "error"]
    assert sorted(f.row for f in errs) == list(range(b.size)) and {f.kind for f in errs} == {"offset"}
    assert not [f for f in report.findings if f.kind == "numerics"]
    turn2 = next(f for f in errs if f.row == 1).message
    assert "turn 2 of 2 (positions 10-12) is too short to fit a shift of its own and carries the same one" in turn2
    assert bool(report.explained[1, 10:13].all())
    assert set(report.token_kinds[1, 10:13].tolist()) == {K.alignment.KINDS.index("offset")}


def test_a_healthy_short_turn_next_to_a_shifted_one_is_not_taken_in():
    """Only row 1's first turn shifted (by hand): its healthy 3-token second turn (gap 0 at lag 0) keeps its own
    tokens, so it is neither marked offset nor named in the finding."""
    healthy = joined("healthy")
    r = [list(x) for x in healthy.rollout_logprobs]
    r[1][1:7] = r[1][0:6]
    b = healthy.replace(rollout_logprobs=r)
    report = K.check_alignment(b)
    errs = [f for f in report.findings if f.severity == "error"]
    assert [(f.kind, f.row) for f in errs] == [("offset", 1)] and "turn 2" not in errs[0].message
    assert not bool(report.explained[1, 10:13].any())


@pytest.mark.parametrize("name, d", [("teacher_offset", 1), ("teacher_offset_2", 2)])
def test_teacher_offset_is_read_d_tokens_early(name, d):
    b, healthy = joined(name), joined("healthy")
    assert b.completion_ids == healthy.completion_ids
    for r in range(b.size):
        assert b.teacher_logprobs[r][d:] == pytest.approx(healthy.teacher_logprobs[r][:-d], abs=1e-6)
        assert b.teacher_logprobs[r][d:] != pytest.approx(healthy.teacher_logprobs[r][d:], abs=1e-3)


def test_remove_sample_masks_the_whole_response():
    rollout, _ = dumps("healthy")
    rollout["samples"][3]["remove_sample"] = True
    b = from_slime_rollout(rollout)
    assert b.mask[3] == [False] * b.lengths[3] and set(b.token_source[3]) == {"policy"}


@pytest.mark.parametrize("key, value, match", [
    ("response_length", 99, r"sample 0 \(index 0\): response_length 99 with \d+ tokens"),
    ("loss_mask", [1, 1], r"sample 0 \(index 0\): loss_mask has 2 values; expected \d+"),
    ("rollout_log_probs", [-0.1], r"sample 0 \(index 0\): rollout_log_probs has 1 values for response_length"),
    ("rollout_top_p_token_offsets", torch.tensor([0, 1], dtype=torch.int32),
     r"sample 0 \(index 0\): rollout_top_p_token_offsets has 2 entries"),
])
def test_malformed_samples_are_named(key, value, match):
    rollout, _ = dumps("top_p")
    rollout["samples"][0][key] = value
    with pytest.raises(K.BatchError, match=match):
        from_slime_rollout(rollout)


def test_a_sample_holding_objects_is_read_only_with_allow_pickle(tmp_path):
    rollout, _ = dumps("healthy")
    rollout["samples"][0]["metadata"]["when"] = pickle.PickleError("not a plain value")  # any non-allowlisted object
    torch.save(rollout, tmp_path / "data_0.pt")
    with pytest.raises(K.BatchError, match=r"data_0.pt: not loaded: the file needs .*PickleError.*--allow-pickle"):
        load_any(tmp_path / "data_0.pt")
    b = load_any(tmp_path / "data_0.pt", allow_pickle=True)
    assert b.size == len(rollout["samples"])
    assert from_slime_train(dumps("healthy")[1]).size == b.size


def test_sampling_is_recorded_when_given():
    b = joined("top_p", sampling={"temperature": 1.3, "top_p": 0.9, "logprobs_mode": "processed_logprobs"})
    assert b.sampling.temperature == 1.3 and b.sampling.top_p == 0.9
    with pytest.raises(K.BatchError, match="not a slime train dump"):
        load_slime(DIR / "healthy" / "data_0.pt", DIR / "healthy" / "data_0.pt")
    with pytest.raises(K.BatchError, match=r"train_0.pt: a slime train dump .*not a rollout dump"):
        load_any(DIR / "healthy" / "train_0.pt", format="slime")
    with pytest.raises(K.BatchError, match=r"data_0.pt: not a slime train dump"):
        load_any(DIR / "healthy" / "data_0.pt", format="slime_train")


def test_teacher_offset_is_an_offset_warning_on_every_row_and_healthy_teachers_are_not():
    found = [f for f in K.check_alignment(joined("teacher_offset")).findings if f.kind == "offset"]
    assert sorted(f.row for f in found) == list(range(8)) and {f.severity for f in found} == {"warning"}
    assert all(f.message.startswith("teacher log-probs look shifted by -1 token(s)") for f in found)
    for name in ("healthy", "top_p", "shift"):
        assert not [f for f in K.check_alignment(joined(name)).findings if f.message.startswith("teacher log-probs")]


def test_a_teacher_two_tokens_early_is_an_offset_warning_naming_the_shift_on_every_row():
    """The scan covers every lag up to Tolerances.max_lag: the best, lag +2 (d = -2), fits 4.4x better than lag 0
    here (docs/calibration.md), and the rollout-vs-student check stays silent (its series are healthy)."""
    report = K.check_alignment(joined("teacher_offset_2"))
    found = [f for f in report.findings if f.kind == "offset"]
    assert sorted(f.row for f in found) == list(range(8)) and {f.severity for f in found} == {"warning"}
    assert all(f.message.startswith("teacher log-probs look shifted by -2 token(s)") for f in found)
    assert "[-R - 2:-2] slice" in found[0].message
    assert not [f for f in report.findings if f.severity == "error" and f.kind == "offset"]


def test_the_teacher_offset_finding_is_drawn_by_the_teacher_series():
    from iwopd_kit.views.findings import series_for
    f = next(f for f in K.check_alignment(joined("teacher_offset")).findings if f.kind == "offset")
    series = {"gap": [[0.0]], "teacher": [[-1.0]]}
    assert series_for(f.kind, series, 0, 0, f.message) == "teacher"
    assert series_for("offset", series, 0, 0, "rollout log-probs are shifted by -1 token(s)") == "gap"
