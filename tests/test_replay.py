"""``replay_row`` / ``iwopd-kit replay``: one row scored again on vLLM and transformers, the first position where
they part and which side moved. The slow tests run real vLLM on the bundled tiny student: the float32 engine is
the suite's shared one (conftest ``vllm_raw``: the same settings, one ``LLM``), plus one bfloat16 engine."""

from __future__ import annotations

import json

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.alignment import Tolerances
from iwopd_kit.batch import BatchError, write_jsonl
from iwopd_kit.cli import main
from iwopd_kit.apps.replay import RAW, diagnose
from iwopd_kit.apps.replay_io import load_row

EOS = 2
TOL = Tolerances()
FIXTURES = toy.FIXTURES_DIR


@pytest.fixture(scope="module")
def healthy(vllm_raw, hf_student, eval_prompt_ids):
    """Two held-out prompts sampled by vLLM float32 at T=1 (raw log-probs), scored by the float32 student at T=1."""
    batch = K.rollout(vllm_raw, eval_prompt_ids[:2], temperature=1.0, max_tokens=32, seed=7, stop_token_ids=(EOS,))
    return K.score_batch(batch, student=hf_student, temperature=1.0)


@pytest.fixture(scope="module")
def replayed(healthy):
    return K.replay_row(healthy, 0, toy.STUDENT_DIR)


def _with_row0(batch, name, values):
    rows = getattr(batch, name)
    return batch.replace(**{name: [values] + rows[1:]})


def _first_apart(stored, ref, tol=TOL.same):
    return next(j for j, (x, r) in enumerate(zip(stored, ref)) if x is not None and abs(x - r) > tol)


@pytest.mark.slow
def test_a_healthy_row_agrees_in_float32(healthy, replayed):
    res = replayed
    L = healthy.lengths[0]
    assert res.cause == "agree" and res.first_divergence is None and res.side is None
    assert len(res.vllm) == len(res.transformers) == len(res.drift) == len(res.tokens) == L
    assert res.max_drift < 1e-4 and res.tolerance == TOL.same and res.tolerance_name == "same"
    assert max(abs(a - b) for a, b in zip(res.rollout, res.vllm)) < 1e-4     # vLLM reproduces its own rollout
    assert max(abs(a - b) for a, b in zip(res.trainer, res.transformers)) < 1e-6
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    assert res.tokens == [tok.decode([t]) for t in healthy.completion_ids[0]]
    assert "nothing parts" in res.verdict and "<- first divergence" not in res.table_text()


@pytest.mark.slow
@pytest.mark.parametrize("d", [1, -1])
def test_a_shifted_rollout_is_plumbing_shift_d_at_the_first_token_it_moves(healthy, replayed, d):
    r = healthy.rollout_logprobs[0]
    shifted = r[d:] + [None] * d if d > 0 else [None] * -d + r[:d]      # token j carries the log-prob of token j + d
    bad = _with_row0(healthy, "rollout_logprobs", shifted)
    res = K.replay_row(bad, 0, toy.STUDENT_DIR)
    assert res.cause == f"plumbing:shift {d:+d}" and res.shift == d and res.side == "stored rollout"
    assert res.first_divergence == _first_apart(shifted, replayed.vllm)
    assert res.max_drift < 1e-4                                           # the engines did not move
    assert K.check_alignment(bad).row_shifts[0] == d                      # the check's convention (RowLag.shift)


@pytest.mark.slow
@pytest.mark.parametrize("name,insert", [("rollout_logprobs", True), ("student_logprobs", False)])
def test_a_zero_padding_value_is_plumbing_padding(healthy, replayed, name, insert):
    values = getattr(healthy, name)[0]
    k = next(j for j in range(2, len(values)) if replayed.transformers[j] < -10 * TOL.same)
    padded = values[:k] + [0.0] + (values[k:-1] if insert else values[k + 1:])
    res = K.replay_row(_with_row0(healthy, name, padded), 0, toy.STUDENT_DIR)
    side = "stored rollout" if name == "rollout_logprobs" else "stored trainer"
    assert (res.cause, res.first_divergence, res.side) == ("plumbing:padding", k, side)
    if insert and len(values) - k >= 5:
        assert "shifted by -1" in res.verdict                             # the rest moved down by the inserted value


@pytest.mark.slow
def test_bf16_engine_against_float32_transformers_is_drift_within_rounding_not_plumbing(healthy, replayed):
    res = K.replay_row(healthy, 0, toy.STUDENT_DIR, dtype="bfloat16")
    assert res.tolerance_name == "rounding" and res.tolerance == TOL.rounding
    assert 1e-6 < res.max_drift <= TOL.rounding                           # bf16 rounding, reported
    assert not res.cause.startswith("plumbing") and res.cause == "agree"
    assert f"{res.max_drift:.3g}" in res.verdict
    # the same bf16 values stored as the rollout and replayed in float32: the stored side moved, within rounding
    stored_bf16 = _with_row0(healthy, "rollout_logprobs", res.vllm)
    again = K.replay_row(stored_bf16, 0, toy.STUDENT_DIR)
    assert (again.cause, again.side) == ("numerics", "stored rollout") and again.max_drift < 1e-4
    assert again.first_divergence == _first_apart(res.vllm, replayed.vllm)


@pytest.mark.slow
def test_the_fixtures_of_the_check_are_named_the_same_way():
    offset = K.load_any(FIXTURES / "offset.jsonl")
    shift = offset.meta[1]["fixture"]["shift_per_row"][1]
    assert K.replay_row(offset, 1, toy.STUDENT_DIR).cause == f"plumbing:shift {shift:+d}"
    temp = K.replay_row(K.load_any(FIXTURES / "temperature.jsonl"), 0, toy.STUDENT_DIR)   # raw T=1 rollout, trainer at 0.7
    assert (temp.cause, temp.side) == ("plumbing:temperature", "stored rollout")
    assert temp.recorded["trainer"]["temperature"] == 0.7 and "trainer" in temp.at_recorded
    processed = K.replay_row(K.load_any(FIXTURES / "processed_logprobs.jsonl"), 0, toy.STUDENT_DIR)
    assert processed.cause == "agree"                                    # top-p 0.8 replayed as vLLM processes it
    assert max(abs(a - b) for a, b in zip(processed.rollout, processed.at_recorded["rollout"])) < 1e-4


@pytest.mark.slow
def test_cli_replays_a_row_of_a_run_step_and_writes_json(healthy, tmp_path, capsys):
    step = tmp_path / "run" / "token_exports" / "step_3"
    write_jsonl(healthy.select([0]), step / "rank_0.jsonl")
    write_jsonl(healthy.select([1]), step / "rank_1.jsonl")
    out = tmp_path / "replay.json"
    code = main(["replay", str(tmp_path / "run"), "--step", "3", "--row", "1", "--model", str(toy.STUDENT_DIR),
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "rank_1.jsonl row 0 (step 3 row 1)" in printed and "transformers" in printed and "nothing parts" in printed
    obj = json.loads(out.read_text())
    assert obj["cause"] == "agree" and obj["first_divergence"] is None
    assert obj["token_ids"] == healthy.completion_ids[1] and len(obj["vllm"]) == healthy.lengths[1]
    K.scan_run(tmp_path / "run", workers=1, html=False, progress=False)
    code = main(["replay", str(tmp_path / "run" / "iwopd_scan"), "--step", "3", "--row", "1", "--model",
                 str(toy.STUDENT_DIR)])
    printed = capsys.readouterr().out
    assert code == 0 and "rank_1.jsonl row 0 (step 3 row 1) from the store" in printed, printed
    shifted = _with_row0(healthy, "rollout_logprobs", healthy.rollout_logprobs[0][1:] + [None])
    write_jsonl(shifted, tmp_path / "bad.jsonl")
    assert main(["replay", str(tmp_path / "bad.jsonl"), "--row", "0", "--model", str(toy.STUDENT_DIR)]) == 1
    assert "<- first divergence" in capsys.readouterr().out


@pytest.mark.slow
def test_the_example_run_replayed_from_its_store(tmp_path):
    from iwopd_kit.run.example import write_example_run

    run = write_example_run(tmp_path / "run", steps=5, rows=4)           # "carry" (odd rows) hot from step 3,
    K.scan_run(run, workers=1, html=False, progress=False)               # "add" (even rows) shifted +1 from step 5
    store = run / "iwopd_scan"
    verdicts = {}
    for step, row in ((2, 0), (2, 1), (3, 1), (5, 0), (5, 1)):
        batch, r, where = load_row(store, row, step)
        verdicts[step, row] = K.replay_row(batch, r, toy.STUDENT_DIR, source=where)
    assert verdicts[2, 0].cause == verdicts[2, 1].cause == "agree"
    hot = verdicts[3, 1]
    assert (hot.cause, hot.side) == ("plumbing:temperature", "stored rollout") and "T=2.000 (fitted" in hot.verdict
    assert verdicts[5, 0].cause == "plumbing:shift +1" and verdicts[5, 1].cause == "plumbing:temperature"
    assert all(v.max_drift < 1e-4 for v in verdicts.values())


# ----------------------------------------------------------------------------- no engine: input and rules
def test_load_row_reads_a_step_of_a_run_in_file_order(tmp_path):
    src = K.load_any(FIXTURES / "healthy_fp32_t1.jsonl")
    step = tmp_path / "token_exports" / "step_10"
    write_jsonl(src.select([0, 1]), step / "rank_2.jsonl")
    write_jsonl(src.select([2]), step / "rank_10.jsonl")                  # natural order: rank_2 before rank_10
    (step / "STABLE").touch()
    write_jsonl(src.select([3]), tmp_path / "token_exports" / "step_9" / "rank_0.jsonl")
    batch, r, where = load_row(tmp_path, 2, step=10)
    assert r == 2 and batch.completion_ids[r] == src.completion_ids[2] and "rank_10.jsonl row 0 (step 10 row 2)" in where
    with pytest.raises(BatchError, match=r"pass --step \(its steps: 9, 10\)"):
        load_row(tmp_path, 0)
    with pytest.raises(BatchError, match="no step 11"):
        load_row(tmp_path, 0, step=11)
    with pytest.raises(BatchError, match=r"step 10 has 3 rows in 2 file\(s\) \(0..2\); row 3 is out of range"):
        load_row(tmp_path, 3, step=10)
    with pytest.raises(BatchError, match="is step 10 .*not step 9"):
        load_row(step / "rank_2.jsonl", 0, step=9)
    with pytest.raises(BatchError, match="row 5 is out of range: the file has 2 rows"):
        load_row(step / "rank_2.jsonl", 5)


def test_load_row_reads_a_scan_store_from_its_run(tmp_path):
    src = K.load_any(FIXTURES / "healthy_fp32_t1.jsonl")
    run = tmp_path / "run"
    write_jsonl(src.select([0, 1]), run / "step_4" / "a.jsonl")
    write_jsonl(src.select([2, 3]), run / "step_4" / "b.jsonl")
    write_jsonl(src.select([4]), run / "step_5" / "a.jsonl")
    K.scan_run(run, workers=1, html=False, progress=False)
    store = run / "iwopd_scan"
    batch, r, where = load_row(store, 3, step=4)
    assert batch.completion_ids[r] == src.completion_ids[3] and "b.jsonl row 1 (step 4 row 3) from the store" in where
    assert load_row(run, 3, step=4)[0].completion_ids[3] == src.completion_ids[3]
    with pytest.raises(BatchError, match=r"pass --step \(its steps: 4, 5\)"):
        load_row(store, 0)
    with pytest.raises(BatchError, match="no row 4 of step 4"):
        load_row(store, 4, step=4)
    write_jsonl(src.select([5]), run / "step_4" / "0.jsonl")             # the run changed since the scan
    with pytest.raises(BatchError, match="the run now gives .*b.jsonl row 0 .*the run changed since the scan"):
        load_row(store, 3, step=4)
    (run / "step_4" / "a.jsonl").unlink()
    with pytest.raises(BatchError, match="a.jsonl row 1, but that file is not under the run"):
        load_row(store, 1, step=4)
    with pytest.raises(BatchError, match="b.jsonl row 1 in the store, but the run now gives no such row"):
        load_row(store, 3, step=4)


def test_load_row_reads_prime_rl_and_nemo_rl_runs_by_step():
    batch, r, where = load_row(FIXTURES / "primerl" / "healthy_multi_turn", 4, step=5)
    direct = K.load_any(FIXTURES / "primerl" / "healthy_multi_turn" / "token_exports" / "step_5" / "rank_0.jsonl")
    assert r == 4 and "step_5/rank_0.jsonl row 4" in where and batch.completion_ids == direct.completion_ids
    assert batch.token_source is not None                                 # its tool turn is not counted by a replay
    batch, r, where = load_row(FIXTURES / "nemorl" / "healthy", 7, step=3)
    assert r == 7 and batch.size == 8 and "train_data_step3.jsonl" in where
    with pytest.raises(BatchError, match="has 8 rows in 1 file"):
        load_row(FIXTURES / "nemorl" / "healthy", 8, step=3)


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_diagnose_names_the_side_that_moved():
    h = _t(-0.5, -1.0, -0.2, -2.0, -0.7, -1.5)
    counted = torch.ones(6, dtype=torch.bool)
    raw = {RAW: h}
    off = h.clone()
    off[3] += 0.01                                                        # vLLM alone moves at position 3
    d = diagnose(off, raw, {"rollout": h.clone(), "trainer": None}, counted, {"rollout": RAW, "trainer": RAW}, TOL.same)
    assert (d["cause"], d["side"], d["first_divergence"]) == ("numerics", "engines", 3)
    t07 = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]]) / 0.7, -1)[0, :3].double()
    t1 = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), -1)[0, :3].double()
    replays = {RAW: t1, (0.7, 1.0, 0): t07}
    rec = {"rollout": RAW, "trainer": RAW}                                # the trainer claims T=1 but used 0.7
    d = diagnose(t1.clone(), replays, {"rollout": t1.clone(), "trainer": t07.clone()}, torch.ones(3, dtype=torch.bool),
                 rec, TOL.same)
    assert (d["cause"], d["side"], d["first_divergence"]) == ("plumbing:temperature", "stored trainer", 0)
    moved = h + _t(0, 0, 0.5, -0.4, 0.6, -0.3)                            # no shift, no constant, beyond rounding
    d = diagnose(h.clone(), raw, {"rollout": moved, "trainer": None}, counted, {"rollout": RAW, "trainer": RAW}, TOL.same)
    assert (d["cause"], d["first_divergence"]) == ("plumbing:unexplained", 2)
    pad = h.clone()
    pad[4:] = -1.0                                                        # a repeated constant fills the tail
    d = diagnose(h.clone(), raw, {"rollout": pad, "trainer": None}, counted, {"rollout": RAW, "trainer": RAW}, TOL.same)
    assert (d["cause"], d["first_divergence"]) == ("plumbing:padding", 4)
    z = torch.randn(12, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    y = torch.arange(12) % 16
    at = lambda T, pos=torch.arange(12): torch.log_softmax(z[pos] / T, -1)[torch.arange(len(pos)), y[pos]]  # noqa: E731
    hot = at(0.7)                                                         # sampled hot, recorded as T=1 (nothing recorded)
    d = diagnose(at(1.0), {RAW: at(1.0)}, {"rollout": hot, "trainer": None}, torch.ones(12, dtype=torch.bool),
                 {"rollout": RAW, "trainer": RAW}, TOL.same, replay_at=at)
    assert (d["cause"], d["side"]) == ("plumbing:temperature", "stored rollout") and "T=0.700 (fitted" in d["verdict"]
    d = diagnose(at(1.0), {RAW: at(1.0)}, {"rollout": hot + 0.01, "trainer": None}, torch.ones(12, dtype=torch.bool),
                 {"rollout": RAW, "trainer": RAW}, TOL.same, replay_at=at)
    assert d["cause"] != "plumbing:temperature"                           # no temperature reproduces it within `same`
    uncounted = counted.clone()
    uncounted[2:] = False                                                 # a tool turn: its stored values are not read
    d = diagnose(h.clone(), raw, {"rollout": moved, "trainer": None}, uncounted, {"rollout": RAW, "trainer": RAW},
                 TOL.same)
    assert d["cause"] == "agree" and d["first_divergence"] is None


def test_bad_input_is_a_clear_error_before_any_engine_starts(tmp_path, capsys):
    src = K.load_any(FIXTURES / "healthy_fp32_t1.jsonl")
    with pytest.raises(BatchError, match=r"row 12 is out of range: the batch has 12 rows \(0..11\)"):
        K.replay_row(src, 12, toy.STUDENT_DIR)
    wide = src.replace(completion_ids=[[99] + c[1:] for c in src.completion_ids])
    with pytest.raises(BatchError, match="row 0: completion token 0 has id 99, outside the vocabulary .* \\(16 ids\\)"):
        K.replay_row(wide, 0, toy.STUDENT_DIR)
    with pytest.raises(ValueError, match="dtype must be one of"):
        K.replay_row(src, 0, toy.STUDENT_DIR, dtype="float16")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        K.replay_row(src, 0, tmp_path)
    dump = FIXTURES / "healthy_fp32_t1.jsonl"
    assert main(["replay", str(dump), "--row", "0", "--model", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["replay", str(dump), "--row", "0", "--model", str(toy.STUDENT_DIR), "--device", "cuda:7"]) == 2
    assert "--device cuda:7" in capsys.readouterr().err
