"""``iwopd-kit scan`` on small generated runs (tests/run_fixtures.py) whose broken steps are known by construction."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import iwopd_kit as K
from iwopd_kit.cli import main
from iwopd_kit.formats import from_primerl_records
from iwopd_kit.alignment.mismatch import MISMATCH_KEYS
from iwopd_kit.run import open_store, scan_run
from iwopd_kit.run.store import METRICS

from run_fixtures import write_kit_run, write_primerl_run, write_primerl_step


@pytest.fixture(scope="module")
def primerl_run(tmp_path_factory) -> tuple[Path, object]:
    run = write_primerl_run(tmp_path_factory.mktemp("run"))
    return run, scan_run(run, workers=1, progress=False)


def _step_batch(run: Path, step: int) -> K.Batch:
    """The step's rows read the plain way: every rank's records, in rank order, through the prime-rl converter."""
    recs = []
    for f in sorted((run / "token_exports" / f"step_{step}").glob("rank_*.jsonl")):
        recs += [json.loads(line) for line in f.read_text().splitlines()]
    return from_primerl_records(recs)


def test_flagged_steps_are_exactly_the_broken_ones(primerl_run):
    run, result = primerl_run
    assert result.steps == result.scanned == [1, 2, 3, 4, 5, 6]
    assert result.bad_steps == [3, 4, 5, 6] and result.exit_code == 1
    steps = {s["step"]: s for s in pq.read_table(result.store / "steps.parquet").to_pylist()}
    for s in (1, 2):
        assert steps[s]["errors"] == steps[s]["warnings"] == 0 and steps[s]["ok"]
    for s in (3, 4):          # group B's temperature only: one batch-level finding
        assert (steps[s]["n_temperature"], steps[s]["n_offset"], steps[s]["errors"]) == (1, 0, 1)
    for s in (5, 6):          # plus group A's shift: rows 0, 2, 4 of both ranks
        assert (steps[s]["n_temperature"], steps[s]["n_offset"]) == (1, 6)
        assert steps[s]["first_kind"] == "offset" and steps[s]["first_file"] == f"token_exports/step_{s}/rank_0.jsonl"
    findings = pq.read_table(result.store / "findings.parquet").to_pylist()
    offsets = {(f["step"], f["file"].rsplit("/", 1)[1], f["row"], f["group"]) for f in findings if f["kind"] == "offset"}
    assert offsets == {(s, f"rank_{r}.jsonl", b, "A") for s in (5, 6) for r in (0, 1) for b in (0, 2, 4)}
    groups = {(g["step"], g["group"]): g for g in pq.read_table(result.store / "groups.parquet").to_pylist()}
    for s in range(1, 7):     # the temperature shows in group B only; A is healthy until its shift
        assert (groups[(s, "B")]["token_mult_prob_error"] > 1.05) == (s >= 3)
        assert (groups[(s, "A")]["token_mult_prob_error"] > 1.05) == (s >= 5)


def test_step_metrics_equal_check_alignment_on_that_step(primerl_run):
    run, result = primerl_run
    steps = {s["step"]: s for s in pq.read_table(result.store / "steps.parquet").to_pylist()}
    for step in range(1, 7):
        report = K.check_alignment(_step_batch(run, step))
        assert set(report.metrics) == set(MISMATCH_KEYS)
        for col, key in zip(METRICS, MISMATCH_KEYS):
            assert steps[step][col] == pytest.approx(report.metrics[key], rel=1e-12, abs=1e-15), (step, col)
        assert steps[step]["errors"] == sum(f.severity == "error" for f in report.findings)
        assert steps[step]["first_kind"] == (report.findings[0].kind if report.findings else None)


def test_token_table_holds_each_token_once_with_its_values(primerl_run):
    run, result = primerl_run
    con = open_store(result.store)
    batch = _step_batch(run, 5)
    got = con.execute("SELECT step_row, position, token_id, rollout_logprob, student_logprob, delta, finding_kind, "
                      "teacher_logprob, advantage FROM tokens WHERE step = 5 ORDER BY step_row, position").fetchall()
    assert len(got) == sum(batch.lengths)
    b, j = 2, 0                                               # rank 0 row 2 (group A): shifted, its finding at 0
    row = next(r for r in got if r[0] == b and r[1] == j)
    assert row[2] == batch.completion_ids[b][j] and row[3] == batch.rollout_logprobs[b][j]
    assert row[5] == pytest.approx(batch.student_logprobs[b][j] - batch.rollout_logprobs[b][j])
    assert row[6] == "offset"
    assert row[7] is None and row[8] is None                  # prime-rl exports no teacher: null, not 0
    lacks = json.loads((result.store / "scan.json").read_text())["lacks"]["primerl"]
    assert {"teacher_logprob", "advantage", "prefix_weight", "reward"} <= set(lacks)
    assert {"rollout_logprob", "student_logprob", "delta"}.isdisjoint(lacks)


def test_kit_run_has_advantage_and_prefix_weights_from_the_objective(tmp_path):
    run = write_kit_run(tmp_path / "run", steps=[0, 1])
    result = scan_run(run, workers=1, progress=False)
    assert result.bad_steps == [] and result.exit_code == 0
    batch = K.read_jsonl(run / "rollouts_step_1.jsonl")
    a = K.advantage(batch.series("teacher_logprobs", torch.float64), batch.series("rollout_logprobs", torch.float64),
                    batch.valid())
    w = K.prefix_weights(a, batch.valid(), gamma=0.5)
    got = open_store(result.store).execute("SELECT step_row, position, advantage, prefix_weight, reward FROM tokens "
                                           "JOIN rows USING (step, step_row) WHERE step = 1").fetchall()
    assert len(got) == sum(batch.lengths)
    for b, j, adv, weight, reward in got:
        assert adv == pytest.approx(float(a[b, j]), abs=1e-12) and weight == pytest.approx(float(w[b, j]), abs=1e-12)
        assert reward == batch.meta[b]["reward"]


def test_rescan_reads_only_new_or_changed_steps(tmp_path):
    run = tmp_path / "run"
    for s in (1, 2):
        write_primerl_step(run, s)
    write_primerl_step(run, 3, stable=False)                 # the trainer is still writing it
    first = scan_run(run, workers=1, progress=False)
    assert first.scanned == [1, 2] and 3 in first.pending and "STABLE" in first.pending[3]
    part1 = first.store / "tokens" / "step=1" / "part-0.parquet"
    stamp = part1.stat().st_mtime_ns
    (run / "token_exports" / "step_3" / "STABLE").touch()
    write_primerl_step(run, 4)
    second = scan_run(run, workers=1, progress=False)
    assert second.scanned == [3, 4] and second.steps == [1, 2, 3, 4] and second.pending == {}
    assert part1.stat().st_mtime_ns == stamp                  # step 1 was not read again
    assert scan_run(run, workers=1, progress=False).scanned == []
    write_primerl_step(run, 2, shift_from=0)                 # step 2 rewritten (now shifted): read again
    third = scan_run(run, workers=1, progress=False)
    assert third.scanned == [2] and third.bad_steps == [2]
    steps = pq.read_table(third.store / "steps.parquet").column("step").to_pylist()
    assert steps == [1, 2, 3, 4]
    assert scan_run(run, workers=1, progress=False, gamma=0.3).scanned == [1, 2, 3, 4]   # other options: all again


@pytest.mark.slow
def test_workers_give_the_same_store(tmp_path):
    run = write_primerl_run(tmp_path / "run", steps=range(1, 6), n_rows=4)
    one = scan_run(run, tmp_path / "one", workers=1, progress=False, html=False)
    two = scan_run(run, tmp_path / "two", workers=2, progress=False, html=False)
    assert one.bad_steps == two.bad_steps == [3, 4, 5]
    for name in ("steps", "rows", "groups", "findings"):
        assert (one.store / f"{name}.parquet").read_bytes() == (two.store / f"{name}.parquet").read_bytes(), name
    for s in range(1, 6):
        a, b = (st.store / "tokens" / f"step={s}" / "part-0.parquet" for st in (one, two))
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.slow
def test_follow_reads_a_step_once_its_marker_appears(tmp_path):
    run = tmp_path / "run"
    write_primerl_step(run, 1)
    write_primerl_step(run, 2, stable=False)
    timer = threading.Timer(0.6, lambda: (run / "token_exports" / "step_2" / "STABLE").touch())
    timer.start()
    t0 = time.monotonic()
    result = scan_run(run, workers=1, follow=True, follow_timeout=3.0, poll_s=0.3, progress=False, html=False)
    timer.join()
    assert result.steps == [1, 2] and result.pending == {}
    assert time.monotonic() - t0 < 10


def test_unreadable_and_stepless_files_are_listed_with_why(tmp_path):
    run = write_kit_run(tmp_path / "run", steps=[0])
    (run / "rollouts_step_1.jsonl").write_text('{"prompt_ids": [1], "completion_ids": []}\n')
    (run / "notes.jsonl").write_text("{}\n")
    result = scan_run(run, workers=1, progress=False)
    scan = json.loads((result.store / "scan.json").read_text())
    assert "empty completion" in scan["not_read"]["rollouts_step_1.jsonl"]
    assert scan["not_read"]["notes.jsonl"].startswith("no step number")
    assert scan["read"] == {"rollouts_step_0.jsonl": "jsonl"}
    assert result.exit_code == 2                              # as `iwopd-kit check` on an unreadable file


def test_report_page_is_self_contained_and_links_each_flagged_step(primerl_run):
    _, result = primerl_run
    page = (result.store / "report.html").read_text()
    for forbidden in ("http://", "https://", "<script", "src=", "url(", "@import", "//cdn"):
        assert forbidden not in page, forbidden
    links = re.findall(r'href="([^"]+)"', page)
    assert links == [f"steps/step_{s}.html" for s in (3, 4, 5, 6)]
    for link in links:
        step_page = (result.store / link).read_text()
        assert "alignment check" in step_page and "http" not in step_page.replace("http-equiv", "")
    assert page.count("<svg") >= len(METRICS) + 2             # one chart per metric, the groups, the kinds
    assert "1.05" in page                                     # the healthy bound of token_mult_prob_error


def test_cli_scan_summary_names_the_first_bad_step_and_the_drill_command(tmp_path, capsys):
    run = write_primerl_run(tmp_path / "run", steps=[1, 5], n_rows=4)
    assert main(["scan", str(run), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "first bad step: 5 (offset, temperature)" in out
    assert f"iwopd-kit check {run / 'token_exports' / 'step_5' / 'rank_0.jsonl'}" in out
    assert main(["sql", str(run / "iwopd_scan"), "SELECT step, errors FROM steps ORDER BY step", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"step": 1, "errors": 0}, {"step": 5, "errors": 5}]
    assert main(["sql", str(run / "iwopd_scan"), "SELECT nope FROM steps"]) == 1
    assert main(["sql", str(tmp_path / "nowhere"), "SELECT 1"]) == 2
    assert main(["scan", str(tmp_path / "nowhere")]) == 2 and not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert main(["scan", str(tmp_path / "empty")]) == 2
    assert "no dump with a step found" in capsys.readouterr().out


@pytest.mark.parametrize("framework", ["nemorl", "primerl"])
def test_fixture_runs_of_each_writer_read_with_their_reader_and_checked_like_one_file(tmp_path, framework):
    """The fixtures written by NeMo-RL's / prime-rl's own code path (data/fixtures/<framework>): one step per folder;
    each step's findings and metrics are those of check_alignment on its file."""
    import shutil

    fixtures = Path(__file__).resolve().parents[1] / "data" / "fixtures"
    run = tmp_path / framework
    shutil.copytree(fixtures / framework, run)
    result = scan_run(run, workers=1, progress=False, html=False)
    manifest = json.loads((fixtures / f"{framework}.json").read_text())
    files = sorted(v["file"] for v in manifest["fixtures"].values() if (run / v["file"]).exists())
    scan = json.loads((result.store / "scan.json").read_text())
    assert sorted(scan["read"]) == files and set(scan["read"].values()) == {framework}
    steps = {s["step"]: s for s in pq.read_table(result.store / "steps.parquet").to_pylist()}
    findings = pq.read_table(result.store / "findings.parquet").to_pylist()
    for f in files:
        batch = K.load_any(run / f)
        report = K.check_alignment(batch)
        step = int(re.search(r"step_?(\d+)", f).group(1))
        assert [(x["kind"], x["severity"], x["row"], x["position"]) for x in findings if x["step"] == step] == \
            [(x.kind, x.severity, x.row, x.position) for x in report.findings], f
        for col, key in zip(METRICS, MISMATCH_KEYS):
            assert steps[step][col] == pytest.approx(report.metrics.get(key), rel=1e-12, abs=1e-15), (f, col)
        assert (step in result.bad_steps) == (not report.ok)


def test_group_by_a_meta_key_and_its_error_named(tmp_path):
    run = write_kit_run(tmp_path / "run", steps=[0])
    result = scan_run(run, workers=1, progress=False, html=False, group_by="reward")
    groups = pq.read_table(result.store / "groups.parquet").column("group").to_pylist()
    assert groups == ["0.0", "1.0"]
    bad = scan_run(run, tmp_path / "bad", workers=1, progress=False, html=False, group_by="env")
    assert bad.exit_code == 2
    why = json.loads((bad.store / "scan.json").read_text())["not_read"]["rollouts_step_0.jsonl"]
    assert "--group-by: row 0" in why and "'env'" in why


def test_tokens_written_in_chunks_of_rows_equal_the_whole_step_table(tmp_path):
    """write_tokens builds and writes a few rows at a time; the file holds the table of the whole step."""
    from iwopd_kit.run.tables import token_table, write_tokens

    run = write_primerl_run(tmp_path / "run", steps=[5], n_rows=6)
    batch = _step_batch(run, 5)
    report = K.check_alignment(batch)
    files = [f"rank_{b // 6}.jsonl" for b in range(batch.size)]
    rows = [b % 6 for b in range(batch.size)]
    whole = token_table("r", batch, report, files, rows)
    nulls = write_tokens(tmp_path / "t.parquet", "r", batch, report, files, rows, chunk_tokens=25)
    got = pq.ParquetFile(tmp_path / "t.parquet")
    assert got.metadata.num_row_groups >= 4                   # several chunks, each of whole rows
    table = got.read()
    assert table.schema.names == whole.schema.names and table.num_rows == whole.num_rows
    for name in whole.schema.names:
        assert table.column(name).to_pylist() == whole.column(name).to_pylist(), name
    assert "offset" in table.column("finding_kind").to_pylist()
    assert nulls == sorted(c for c in whole.column_names if whole.column(c).null_count == whole.num_rows)
