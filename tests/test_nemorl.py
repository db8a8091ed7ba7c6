"""NeMo-RL's ``train_data_step{N}.jsonl``: the reader, the fixtures, and NeMo-RL's own ``token_mult_prob_error``.

The fixtures (data/fixtures/nemorl/, see data/fixtures/nemorl.json) are written by NeMo-RL's own writer path
(scripts/nemorl_writer.py, copied from NeMo-RL with citations): message logs flattened and padded,
``prev_logprobs`` with a leading 0, ``log_data`` sliced one sample per line (one-element lists), NaN
written literally. The tests check the reader against the lines themselves, a JSONL round trip,
errors on bad input, and that the kit's token_mult_prob_error equals NeMo-RL's over the same tokens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.formats import detect_format, from_nemorl_records, load_any
from research import REPO_ROOT

from fixture_scripts import same, script

DIR = REPO_ROOT / "data" / "fixtures" / "nemorl"
MANIFEST = json.loads((DIR.parent / "nemorl.json").read_text())["fixtures"]
W = script("nemorl_writer")


def path_of(name: str) -> Path:
    return DIR / MANIFEST[name]["file"]


def lines(name: str) -> list[dict]:
    return [json.loads(x) for x in path_of(name).read_text().splitlines()]


def test_the_writer_wraps_every_value_in_a_one_element_list():
    rec = lines("healthy")[0]
    assert set(rec) == {"agent_ref", "content", "rewards", "input_lengths", "token_ids", "token_loss_mask",
                        "sample_loss_mask", "advantages", "generation_logprobs", "prev_logprobs", "idx"}
    assert all(isinstance(v, list) and len(v) == 1 for k, v in rec.items() if k != "idx")
    assert rec["prev_logprobs"][0][0] == 0.0 and rec["agent_ref"][0]["type"] == "responses_api_agents"
    assert "NaN" in path_of("nan").read_text()                   # json.dumps default: NaN written literally


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_field_is_the_lines_own(name):
    """prompt | completion at the first token_loss_mask token, completion up to input_lengths; mask =
    token mask x sample mask; sources, series (non-finite -> None), groups and meta from the line."""
    recs, b = lines(name), load_any(path_of(name))
    assert detect_format(path_of(name)) == "nemorl" and b.size == len(recs)
    for i, rec in enumerate(recs):
        toks, tm, n = rec["token_ids"][0], rec["token_loss_mask"][0], rec["input_lengths"][0]
        s, sm = tm.index(1), rec["sample_loss_mask"][0]
        assert b.prompt_ids[i] == toks[:s] and b.completion_ids[i] == toks[s:n] and not any(tm[n:])
        assert (b.mask[i] if b.mask else [True] * b.lengths[i]) == [bool(m) and sm != 0 for m in tm[s:n]]
        assert (b.token_source[i] if b.token_source else ["policy"] * b.lengths[i]) == \
            ["policy" if m else "context" for m in tm[s:n]]
        fin = lambda xs: [x if math.isfinite(x) else None for x in xs]  # noqa: E731
        assert b.rollout_logprobs[i] == fin(rec["generation_logprobs"][0][s:n])
        assert b.student_logprobs[i] == fin(rec["prev_logprobs"][0][s:n])
        assert (b.groups[i] if b.groups else None) == (rec["agent_ref"][0]["name"] if "agent_ref" in rec else None)
        assert b.meta[i]["nemorl"] == {"idx": rec["idx"], "input_length": n, "sample_loss_mask": sm,
                                       "reward": rec["rewards"][0], "prompt_tokens": s}


def test_environment_turns_are_context_and_a_filtered_sample_counts_nowhere():
    b = load_any(path_of("multi_turn"))
    for i in range(b.size):
        holes = [j for j, s in enumerate(b.token_source[i]) if s == "context"]
        assert holes and all(b.rollout_logprobs[i][j] == 0.0 and b.student_logprobs[i][j] < 0 for j in holes)
    (masked,) = MANIFEST["multi_turn"]["sample_masked_rows"]
    assert not b.policy_mask()[masked].any() and b.policy_mask()[masked - 1].any()
    assert b.groups is None


def test_nan_is_kept_missing_and_reported_where_it_is():
    b = load_any(path_of("nan"))
    assert sorted([f["row"], f["position"]] for f in b.findings) == MANIFEST["nan"]["expect"]
    for f in b.findings:
        assert f["kind"] == "numerics" and f["severity"] == "error" and "nan" in f["message"].lower()
    (r0, j0), (r1, j1) = MANIFEST["nan"]["expect"]
    assert b.student_logprobs[r0][j0] is None and b.rollout_logprobs[r1][j1] is None
    assert MANIFEST["nan"]["nemorl_token_mult_prob_error"] is None          # NeMo-RL's own metric is NaN
    assert math.isnan(W.nemorl_token_mult_prob_error(path_of("nan")))


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_jsonl_round_trip_keeps_every_field(name, tmp_path):
    b = load_any(path_of(name))
    c = K.read_jsonl(K.write_jsonl(b, tmp_path / "b.jsonl"))
    for f in ("prompt_ids", "completion_ids", "mask", "token_source", "groups", "rollout_logprobs",
              "student_logprobs", "meta"):
        assert getattr(c, f) == getattr(b, f), f


@pytest.mark.parametrize("name", ["healthy", "multi_turn", "shifted"])
def test_kit_token_mult_prob_error_equals_nemorls(name):
    """NeMo-RL pools token_mask[:, 1:] * sample_mask: the kit's policy_mask() of these rows."""
    b = load_any(path_of(name))
    ref = W.nemorl_token_mult_prob_error(path_of(name))
    assert ref == MANIFEST[name]["nemorl_token_mult_prob_error"]
    kit = K.mismatch_metrics(b.series("student_logprobs", torch.float64), b.series("rollout_logprobs", torch.float64),
                             b.policy_mask())
    assert kit["mismatch/token_mult_prob_error"] == pytest.approx(ref, rel=1e-6)


def test_the_zero_prev_logprobs_placeholder_is_no_student(tmp_path):
    recs = lines("healthy")
    for r in recs:                        # force_on_policy_ratio: prev_logprobs = zeros_like(generation_logprobs)
        r["prev_logprobs"] = [[0.0] * len(r["prev_logprobs"][0])]
    b = from_nemorl_records(recs)
    assert b.student_logprobs is None and b.rollout_logprobs is not None
    assert [f["severity"] for f in b.findings] == ["info"] and "placeholder" in b.findings[0]["message"]


def test_a_line_with_no_generated_token_is_left_out_and_named():
    recs = lines("healthy")
    recs[2]["token_loss_mask"] = [[0] * len(recs[2]["token_loss_mask"][0])]
    b = from_nemorl_records(recs)
    assert b.size == len(recs) - 1 and [m["nemorl"]["idx"] for m in b.meta] == [0, 1, 3, 4, 5, 6, 7]
    (f,) = b.findings
    assert f["row"] is None and f["severity"] == "info" and "idx [2]" in f["message"]


def test_the_distillation_dump_is_named():
    rec = {"content": [["a", "b"]], "input_lengths": [7], "idx": 0}
    with pytest.raises(K.BatchError, match=r"row 0 \(line 1\): only .*distillation dump .*no token ids or log-probs"):
        from_nemorl_records([rec])


def test_fixtures_are_what_the_generator_writes(tmp_path):
    script("fixtures_nemorl").main(tmp_path / "nemorl")
    pairs = [(DIR.parent / "nemorl.json", tmp_path / "nemorl.json")]
    pairs += [(p, tmp_path / "nemorl" / p.relative_to(DIR)) for p in sorted(DIR.rglob("*")) if p.is_file()]
    for p, q in pairs:
        assert q.is_file(), p
        a, b = (x.read_text().splitlines() if p.suffix == ".jsonl" else [x.read_text()] for x in (p, q))
        assert same([json.loads(x) for x in a if x], [json.loads(x) for x in b if x]), p


@pytest.mark.parametrize("break_it, match", [
    (lambda r: r[2]["prev_logprobs"][0].pop(), r"row 2 \(line 3\): prev_logprobs has \d+ values but token_ids has \d+"),
    (lambda r: r[1].pop("sample_loss_mask"), r"row 1 \(line 2\): missing key\(s\) \['sample_loss_mask'\]"),
    (lambda r: r[0].update(input_lengths=[999]), r"row 0 \(line 1\): input_lengths = 999; expected an int in 1\.\.\d+"),
    (lambda r: r[3]["token_loss_mask"][0].__setitem__(-1, 1),
     r"row 3 \(line 4\), token \d+: token_loss_mask is 1 in the padding \(input_lengths = \d+\)"),
    (lambda r: r[4]["token_loss_mask"][0].__setitem__(2, 7), r"row 4 \(line 5\), token 2: token_loss_mask must be a bool or 0/1, got 7"),
    (lambda r: r[5].update(token_ids=[[1, 2], [3]]), r"row 5 \(line 6\): token_ids must be one list of per-token values"),
    (lambda r: r[6]["generation_logprobs"][0].__setitem__(r[6]["token_loss_mask"][0].index(1), 0.25),
     r"row 6 \(line 7\), position 0: rollout_logprobs = 0.25 is a positive log-prob; expected a value <= 0 "
     r"\(completion coordinates: position 0 is token \d+ of the row\)"),
])
def test_bad_lines_name_row_line_position_and_expectation(break_it, match):
    recs = lines("healthy")
    break_it(recs)
    with pytest.raises(K.BatchError, match=r"NeMo-RL train_data, " + match):
        from_nemorl_records(recs)
