"""prime-rl's token export (token_exports/step_N/rank_R.jsonl): the reader, the fixtures, and prime-rl's own
``mismatch_kl`` pool.

The fixtures (data/fixtures/primerl/, see data/fixtures/primerl.json) are written by prime-rl's own writer path
(scripts/primerl_writer.py, copied from prime-rl with citations): packed micro batches cut into one
record per sample, multi-turn tool turns loss-masked with inference log-prob 0.0, weight streams,
SFT-distill from a frozen teacher next to OPD, nulls, two envs at different temperatures. The tests
check the reader against the records themselves (an independent reading of each field), a JSONL round
trip, errors on bad input, and that the kit's k3 over the tokens prime-rl pools equals prime-rl's own.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.cli import main
from iwopd_kit.formats import detect_format, from_primerl_records, load_any
from research import REPO_ROOT

from fixture_scripts import same, script

DIR = REPO_ROOT / "data" / "fixtures" / "primerl"
MANIFEST = json.loads((DIR.parent / "primerl.json").read_text())["fixtures"]


W = script("primerl_writer")


def path_of(name: str) -> Path:
    return DIR / MANIFEST[name]["file"]


def records(name: str) -> list[dict]:
    return [json.loads(line) for line in path_of(name).read_text().splitlines()]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_field_is_the_records_own(name):
    """Each row = one record; prompt | completion at the first loss-masked token; mask, series, streams,
    sources, groups and meta read straight from the record."""
    recs, b = records(name), load_any(path_of(name))
    assert detect_format(path_of(name)) == "primerl" and b.size == len(recs)
    has = {k: any(any(v is not None for v in r[k]) for r in recs) for k in W.STREAM_FILL}
    assert sorted(b.weights or {}) == sorted(k for k, v in has.items() if v)
    for i, rec in enumerate(recs):
        s = rec["loss_mask"].index(True)
        assert b.prompt_ids[i] == rec["token_ids"][:s] and b.completion_ids[i] == rec["token_ids"][s:]
        assert (b.mask[i] if b.mask else [True] * b.lengths[i]) == rec["loss_mask"][s:]
        assert b.rollout_logprobs[i] == rec["inference_logprobs"][s:]       # nulls stay None
        assert b.student_logprobs[i] == rec["trainer_logprobs"][s:]
        eff = {}
        for k, fill in W.STREAM_FILL.items():
            raw = rec[k][s:]
            eff[k] = [fill] * len(raw) if all(v is None for v in raw) else raw
            if b.weights and k in b.weights:
                assert b.weights[k][i] == eff[k], (i, k)
        src = b.token_source[i] if b.token_source else ["policy"] * b.lengths[i]
        for j, t in enumerate(range(s, len(rec["token_ids"]))):
            inf = rec["inference_logprobs"][t]
            if not rec["loss_mask"][t]:
                want = "context" if inf in (0.0, None) else "policy"
            elif eff["ce_weights"][j] and eff["rl_weights"][j] == 0 and eff["ref_kl_weights"][j] == 0 and inf == 0.0:
                want = "other_model"
            else:
                want = "policy"
            assert src[j] == want, (i, j)
        assert (b.groups or [None] * b.size)[i] == rec["env_name"]
        assert b.meta[i]["primerl"] == {**{k: rec[k] for k in W_META}, "prompt_tokens": s}


W_META = ("schema_version", "step", "rank", "micro_step", "micro_sequence_idx", "export_sequence_idx", "env_name")


def test_multi_turn_tool_turns_are_context_holes_and_pruned_rl_weights_are_kept():
    b = load_any(path_of("healthy_multi_turn"))
    row, pos, n = MANIFEST["healthy_multi_turn"]["rl_zero"]
    assert b.weights["rl_weights"][row][pos:pos + n] == [0.0] * n and b.mask[row][pos:pos + n] == [True] * n
    for i in range(b.size):
        holes = [j for j, m in enumerate(b.mask[i]) if not m]
        assert holes and all(b.token_source[i][j] == "context" and b.rollout_logprobs[i][j] == 0.0 for j in holes)
        assert b.student_logprobs[i][holes[0]] < 0           # the trainer scores the tool tokens too
    assert len(b.segments()) == 2 * b.size                     # two assistant turns per row


def test_sft_distill_tokens_are_other_model_and_opd_tokens_policy():
    b = load_any(path_of("distill"))
    for i in range(b.size):
        assert b.mask is None                                     # single turn: every completion token is trained
        srcs = set(b.token_source[i])
        if b.groups[i] == "math_sft":
            assert srcs == {"other_model"} and set(b.weights["ce_weights"][i]) == {1.0}
            assert not b.policy_mask()[i].any()
        else:
            assert srcs == {"policy"} and set(b.weights["ref_kl_weights"][i]) == {1.0}
        assert set(b.weights["rl_weights"][i]) == {0.0}


def test_nulls_are_kept_missing_and_reported_where_they_are():
    b = load_any(path_of("nulls"))
    got = sorted([f["row"], f["position"]] for f in b.findings)
    assert got == sorted(MANIFEST["nulls"]["expect"])
    for f in b.findings:
        assert f["kind"] == "numerics" and f["severity"] == "error" and "null" in f["message"]
        r, j = f["row"], f["position"]
        assert None in (b.rollout_logprobs[r][j], b.student_logprobs[r][j])
    report = K.check_alignment(b)
    assert {(f.row, f.position) for f in report.findings if f.kind == "numerics"} >= {tuple(x) for x in got}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_jsonl_round_trip_keeps_every_field(name, tmp_path):
    b = load_any(path_of(name))
    c = K.read_jsonl(K.write_jsonl(b, tmp_path / "b.jsonl"))
    for f in ("prompt_ids", "completion_ids", "mask", "token_source", "weights", "groups", "rollout_logprobs",
              "student_logprobs", "meta"):
        assert getattr(c, f) == getattr(b, f), f


@pytest.mark.parametrize("name", ["healthy_single_turn", "healthy_multi_turn", "multi_turn_shifted", "distill",
                                  "mixed_env_temperature"])
def test_kit_k3_equals_primerl_mismatch_kl_over_its_pool(name):
    """prime-rl pools loss_mask & (rl != 0 | ref_kl != 0); the reader records it as metric_pool, and
    Batch.metric_mask() is that pool."""
    b = load_any(path_of(name))
    ref = W.primerl_mismatch_kl(path_of(name))
    assert ref == MANIFEST[name]["primerl_mismatch_kl"]
    kit = K.mismatch_metrics(b.series("student_logprobs", torch.float64), b.series("rollout_logprobs", torch.float64),
                             b.metric_mask())
    assert kit["mismatch/k3_kl"] == pytest.approx(ref["mismatch_kl/all"], rel=1e-6)
    for g in sorted(set(b.groups)):
        pool = b.metric_mask() & torch.tensor([x == g for x in b.groups])[:, None]
        key = f"mismatch_kl/{g}"
        assert (key in ref) == bool(pool.any()), g                # an env with no policy token: no metric
        if key in ref:
            per = K.mismatch_metrics(b.series("student_logprobs", torch.float64),
                                     b.series("rollout_logprobs", torch.float64), pool)
            assert per["mismatch/k3_kl"] == pytest.approx(ref[key], rel=1e-6)


def test_zero_advantage_tokens_leave_primerl_pool():
    """healthy_multi_turn: a turn with rl weight 0 is policy-sampled and loss-masked, but prime-rl's
    mismatch_kl leaves it out: the kit matches only over policy_mask & (rl != 0 | ref_kl != 0)."""
    b = load_any(path_of("healthy_multi_turn"))
    ref = W.primerl_mismatch_kl(path_of("healthy_multi_turn"))["mismatch_kl/all"]
    s, r = b.series("student_logprobs", torch.float64), b.series("rollout_logprobs", torch.float64)
    assert b.metric_pool == ("rl_weights",)
    pool = b.policy_mask() & (b.weight("rl_weights", torch.float64) != 0)
    assert torch.equal(pool, b.metric_mask())
    assert K.mismatch_metrics(s, r, pool)["mismatch/k3_kl"] == pytest.approx(ref, rel=1e-6)
    assert K.mismatch_metrics(s, r, b.policy_mask())["mismatch/k3_kl"] != pytest.approx(ref, rel=1e-3)


def test_primerl_pool_of_nulls_is_nan_and_float32_is_the_trainers_rounding():
    assert math.isnan(W.primerl_mismatch_kl(path_of("nulls"))["mismatch_kl/all"])
    f32 = W.primerl_mismatch_kl(path_of("healthy_multi_turn"), torch.float32)["mismatch_kl/all"]
    f64 = MANIFEST["healthy_multi_turn"]["primerl_mismatch_kl"]["mismatch_kl/all"]
    assert f32 == pytest.approx(f64, rel=1e-2) and f32 != f64


def test_fixtures_are_what_the_generator_writes(tmp_path):
    script("fixtures_primerl").main(tmp_path / "primerl")
    pairs = [(DIR.parent / "primerl.json", tmp_path / "primerl.json")]
    pairs += [(p, tmp_path / "primerl" / p.relative_to(DIR)) for p in sorted(DIR.rglob("*")) if p.is_file()]
    for p, q in pairs:
        assert q.is_file(), p
        a, b = (x.read_text().splitlines() if p.suffix == ".jsonl" else [x.read_text()] for x in (p, q))
        assert same([json.loads(x) for x in a if x], [json.loads(x) for x in b if x]), p


def _recs() -> list[dict]:
    return records("healthy_multi_turn")


@pytest.mark.parametrize("break_it, match", [
    (lambda r: r[2].update(trainer_logprobs=r[2]["trainer_logprobs"][:-1]),
     r"row 2 \(line 3\): trainer_logprobs has \d+ values but token_ids has \d+"),
    (lambda r: r[1].update(loss_mask=[False] * len(r[1]["loss_mask"])), r"row 1 \(line 2\): loss_mask is false on every token"),
    (lambda r: r[0].pop("inference_logprobs"), r"row 0 \(line 1\): missing key\(s\) \['inference_logprobs'\]"),
    (lambda r: r[3].update(schema_version=2), r"row 3 \(line 4\): schema_version 2; this reader knows prime-rl's schema_version 1"),
    (lambda r: r[1]["loss_mask"].__setitem__(7, "yes"), r"row 1 \(line 2\), token 7: loss_mask must be a bool or 0/1, got 'yes'"),
    (lambda r: r[0]["token_ids"].__setitem__(2, -4), r"row 0 \(line 1\), token 2: token_ids must be a non-negative int"),
    (lambda r: r[2]["rl_weights"].__setitem__(3, "w"), r"row 2 \(line 3\), token 3: rl_weights must be a number or null"),
    (lambda r: r[4]["inference_logprobs"].__setitem__(-1, 0.5),
     r"row 4 \(line 5\), position \d+: rollout_logprobs = 0.5 is a positive log-prob; expected a value <= 0 "
     r"\(completion coordinates: position 0 is token \d+ of the row\)"),
])
def test_bad_records_name_row_line_position_and_expectation(break_it, match):
    recs = _recs()
    break_it(recs)
    with pytest.raises(K.BatchError, match=r"prime-rl export, " + match):
        from_primerl_records(recs)


def test_a_step_still_being_written_says_so(tmp_path):
    src = path_of("healthy_single_turn")
    dst = tmp_path / "token_exports" / "step_9" / "rank_1.jsonl"
    dst.parent.mkdir(parents=True)
    dst.write_text(src.read_text()[:-40])                                  # truncated last line, no STABLE
    with pytest.raises(K.BatchError, match=r"line 8 is not valid JSON .*truncated.*step_9 has no STABLE marker"):
        load_any(dst)


def test_check_a_directory_of_steps(tmp_path, capsys):
    """``iwopd-kit check DIR`` over steps in natural order: the healthy ones clean, the nulls step an error."""
    out_dir = tmp_path / "run" / "token_exports"
    for step, name in ((2, "healthy_single_turn"), (10, "nulls"), (3, "healthy_multi_turn")):
        shutil.copytree(path_of(name).parent, out_dir / f"step_{step}")
    out = tmp_path / "all.json"
    code = main(["check", str(out_dir), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed
    obj = json.loads(out.read_text())
    files = obj["files"]
    assert obj["schema"] == 2 and obj["layouts"] == ["primerl"] and list(obj["steps"]) == ["2", "3", "10"]
    assert obj["steps"]["10"]["exit_code"] == 1 and obj["steps"]["2"]["exit_code"] == 0
    assert list(files) == ["step_2/rank_0.jsonl", "step_3/rank_0.jsonl", "step_10/rank_0.jsonl"]
    assert all(f["format"] == "primerl" and f["step"] == int(n.split("/")[0][5:]) for n, f in files.items())
    errors = {n: {(f["row"], f["position"]) for f in v["findings"] if f["severity"] == "error"} for n, v in files.items()}
    assert errors["step_2/rank_0.jsonl"] == set() and errors["step_3/rank_0.jsonl"] == set()
    assert errors["step_10/rank_0.jsonl"] >= {tuple(x) for x in MANIFEST["nulls"]["expect"]}
