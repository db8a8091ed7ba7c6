"""prime-rl's per-token export (token_exports/step_N/rank_R.jsonl) and `iwopd-kit check DIR`.

The fixtures are written the way prime-rl's ``TokenExporter`` writes them
(src/prime_rl/trainer/rl/token_export.py, schema_version 1): one record per packed sequence with
aligned per-token lists over prompt + completion, ``trainer_logprobs`` shifted so position t is the
log-prob of ``token_ids[t]``, ``inference_logprobs`` 0.0 on prompt tokens, null for non-finite
floats, ``[None] * T`` for absent optional streams. The values are the kit's real fixtures
(vLLM rollouts of the tiny student, scored by the student), so a healthy step checks clean and a
broken one is caught where it was broken.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.cli import main
from iwopd_kit.formats import detect_format, from_primerl_records, load_any

FIXTURES = toy.REPO_ROOT / "data" / "fixtures"


def primerl_records(batch: K.Batch, step: int, rank: int, tool_turn: bool = False) -> list[dict]:
    """``batch`` as prime-rl's exporter writes it. ``tool_turn``: row 0 gets a masked-out span
    (an environment reply inside the completion, as in a multi-turn rollout)."""
    recs = []
    for b in range(batch.size):
        p, c = batch.prompt_ids[b], batch.completion_ids[b]
        toks, T = p + c, len(p) + len(c)
        mask = [False] * len(p) + [True] * len(c)
        if tool_turn and b == 0:
            mask[len(p) + 2: len(p) + 4] = [False, False]
        inf = [0.0] * len(p) + list(batch.rollout_logprobs[b])
        trn = [math.log(1 / 16)] + [-0.5] * (len(p) - 1) + list(batch.student_logprobs[b])
        ratio = [math.exp(t - i) if m and t is not None and i is not None else 1.0 for t, i, m in zip(trn, inf, mask)]
        recs.append({
            "schema_version": 1, "step": step, "rank": rank, "micro_step": b // 4, "micro_sequence_idx": b % 4,
            "export_sequence_idx": b, "env_name": "chained_addition",
            "token_ids": toks, "position_ids": list(range(T)), "loss_mask": mask, "advantages": [0.1] * T,
            "inference_logprobs": inf, "trainer_logprobs": trn, "entropy": [0.3] * T,
            "mismatch_kl": [r - 1 - math.log(r) for r in ratio], "log_importance_ratio": [math.log(r) for r in ratio],
            "importance_ratio": ratio, "prob_delta": [0.0] * T, "is_masked": [False] * T,
            "is_masked_high": [False] * T, "is_masked_low": [False] * T,
            "rl_weights": [None] * T, "ce_weights": [None] * T, "ref_kl_weights": [None] * T,
        })
    return recs


def write_export(run_dir: Path, step: int, rank: int, recs: list[dict], stable: bool = True) -> Path:
    d = run_dir / "token_exports" / f"step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"rank_{rank}.jsonl"
    path.write_text("".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in recs))
    if stable:
        (d / "STABLE").touch()
    return path


def test_primerl_export_reads_into_completion_coordinates(tmp_path):
    src = K.read_jsonl(FIXTURES / "healthy_fp32_t1.jsonl")
    path = write_export(tmp_path, 3, 0, primerl_records(src, 3, 0, tool_turn=True))
    assert detect_format(path) == "primerl"
    got = load_any(path)
    assert got.prompt_ids == src.prompt_ids and got.completion_ids == src.completion_ids
    assert got.rollout_logprobs == src.rollout_logprobs and got.student_logprobs == src.student_logprobs
    assert got.teacher_logprobs is None                         # the export has no reference series
    assert got.mask[0][:5] == [True, True, False, False, True] and all(all(m) for m in got.mask[1:])
    assert got.meta[5]["primerl"] == {"schema_version": 1, "step": 3, "rank": 0, "micro_step": 1,
                                      "micro_sequence_idx": 1, "export_sequence_idx": 5, "env_name": "chained_addition"}
    report = K.check_alignment(got)
    assert report.ok, report


def test_primerl_offset_is_caught_through_the_reader(tmp_path):
    src = K.read_jsonl(FIXTURES / "offset.jsonl")
    expect = src.meta[0]["fixture"]["expect"]
    got = load_any(write_export(tmp_path, 1, 0, primerl_records(src, 1, 0)))
    hits = K.check_alignment(got).by_kind("offset")
    assert sorted((f.row, f.position) for f in hits) == sorted((r, p) for r, p in expect)


def test_primerl_bad_records_name_the_line_and_key(tmp_path):
    src = K.read_jsonl(FIXTURES / "healthy_fp32_t1.jsonl")
    recs = primerl_records(src, 0, 0)
    recs[2]["trainer_logprobs"] = recs[2]["trainer_logprobs"][:-1]
    with pytest.raises(K.BatchError, match=r"rank_0.jsonl: prime-rl export, row 2 \(line 3\): trainer_logprobs has \d+ "
                                           r"values but token_ids has \d+"):
        load_any(write_export(tmp_path, 0, 0, recs))
    recs = primerl_records(src, 0, 0)
    recs[1]["loss_mask"] = [False] * len(recs[1]["loss_mask"])
    with pytest.raises(K.BatchError, match=r"row 1 \(line 2\): loss_mask is false on every token"):
        from_primerl_records(recs)
    recs = primerl_records(src, 0, 0)
    del recs[0]["inference_logprobs"]
    with pytest.raises(K.BatchError, match=r"row 0 \(line 1\): missing key\(s\) \['inference_logprobs'\]"):
        from_primerl_records(recs)
    recs = primerl_records(src, 0, 0)
    recs[4]["inference_logprobs"][-1] = 0.5                      # a positive "log-prob" in the completion
    with pytest.raises(K.BatchError, match=r"row 4 \(line 5\), position \d+: rollout_logprobs = 0.5 .*completion coordinates"):
        from_primerl_records(recs)
    # a step the trainer is still writing: truncated last line, no STABLE marker
    path = write_export(tmp_path / "live", 7, 1, primerl_records(src, 7, 1), stable=False)
    text = path.read_text()
    path.write_text(text[:-40])
    with pytest.raises(K.BatchError, match=r"line 12 is not valid JSON .*truncated.*step_7 has no STABLE marker"):
        load_any(path)


def test_check_a_directory_of_ranks_and_steps(tmp_path, capsys):
    healthy = K.read_jsonl(FIXTURES / "healthy_fp32_t1.jsonl")
    offset = K.read_jsonl(FIXTURES / "offset.jsonl")
    for step in (1, 2, 10):
        for rank in (0, 1):
            write_export(tmp_path, step, rank, primerl_records(offset if (step, rank) == (10, 1) else healthy, step, rank))
    out = tmp_path / "all.json"
    code = main(["check", str(tmp_path / "token_exports"), "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 1, printed                                           # the worst file: an error finding
    obj = json.loads(out.read_text())
    names = [f"step_{s}/rank_{r}.jsonl" for s in (1, 2, 10) for r in (0, 1)]
    assert obj["schema"] == 2 and list(obj["files"]) == names            # natural order: step_2 before step_10
    assert obj["layouts"] == ["primerl"] and list(obj["steps"]) == ["1", "2", "10"]
    assert obj["steps"]["10"]["exit_code"] == 1 and obj["steps"]["2"]["exit_code"] == 0
    broken_rows = {r for r, _ in offset.meta[0]["fixture"]["expect"]}
    for name in names:
        one = obj["files"][name]
        assert {"schema", "format", "step", "findings", "metrics", "groups", "unchecked", "provenance"} <= set(one)
        assert one["format"] == "primerl" and one["step"] == int(name.split("/")[0][5:])
        errors = [f for f in one["findings"] if f["severity"] == "error"]
        if name == "step_10/rank_1.jsonl":       # caught, and no error outside the rows the fixture broke
            assert "offset" in {f["kind"] for f in errors} and {f["row"] for f in errors} <= broken_rows, errors
        else:
            assert errors == [], (name, errors)
    lines = [line for line in printed.splitlines() if line.startswith("step_")]
    assert len(lines) == 6 and lines[-1].split()[-1] == "1" and lines[0].split()[-1] == "0"
    # an unreadable file outranks an error finding: exit 2, the others still reported
    (tmp_path / "token_exports" / "step_2" / "rank_1.jsonl").write_text('{"token_ids": [1, 2')
    code = main(["check", str(tmp_path / "token_exports"), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    obj = json.loads(out.read_text())
    assert "not valid JSON" in obj["files"]["step_2/rank_1.jsonl"]["error"]
    assert [f["kind"] for f in obj["files"]["step_10/rank_1.jsonl"]["findings"]].count("offset") >= 1
    assert "step_2/rank_1.jsonl" in captured.err and "Traceback" not in captured.err
