"""Every query of docs/run_scan.md's cookbook, run on the run it names (tests/run_fixtures.py), with its answer
checked against a computation that does not go through the store."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from iwopd_kit.formats import from_primerl_records
from iwopd_kit.alignment.mismatch import USUAL_THRESHOLDS
from iwopd_kit.run import open_store, scan_run
from iwopd_kit.run.gates_io import simulate_gates
from iwopd_kit.run.sql import view_sql

from run_fixtures import write_primerl_run

DOC = Path(__file__).resolve().parents[1] / "docs" / "run_scan.md"


def cookbook() -> dict[str, str]:
    blocks = re.findall(r"```sql\n(.*?)```", DOC.read_text(), re.S)
    out = {}
    for b in blocks:
        name = re.match(r"-- name: (\S+)\n", b)
        assert name, f"a cookbook query without its '-- name:' line: {b[:60]!r}"
        out[name.group(1)] = b
    return out


@pytest.fixture(scope="module")
def run_store(tmp_path_factory):
    run = write_primerl_run(tmp_path_factory.mktemp("run"))
    result = scan_run(run, workers=1, progress=False, html=False)
    con = open_store(result.store)
    yield run, result.store, con
    con.close()


def _rows(con, name):
    cur = con.execute(cookbook()[name])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def _step(run: Path, step: int):
    files = sorted((run / "token_exports" / f"step_{step}").glob("rank_*.jsonl"))
    recs, origin = [], []
    for f in files:
        lines = f.read_text().splitlines()
        recs += [json.loads(x) for x in lines]
        origin += [(f"token_exports/step_{step}/{f.name}", r) for r in range(len(lines))]
    return from_primerl_records(recs), origin


def test_the_cookbook_is_complete():
    assert set(cookbook()) == {"worst-tokens-of-a-step", "mismatch-by-position-bucket", "mismatch-by-group-over-steps",
                               "rows-a-gate-would-drop", "first-step-out-of-band"}


def test_views_are_the_store_tables(run_store):
    _, store, con = run_store
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert views == set(view_sql(store)) == {"tokens", "rows", "steps", "groups", "findings", "bands"}


def test_worst_tokens_of_a_step(run_store):
    run, _, con = run_store
    got = _rows(con, "worst-tokens-of-a-step")
    batch, origin = _step(run, 5)
    d = (batch.series("student_logprobs", torch.float64) - batch.series("rollout_logprobs", torch.float64)).abs()
    d[~batch.valid()] = -1.0
    flat = sorted(((-float(d[b, j]), origin[b], j) for b in range(batch.size) for j in range(batch.lengths[b])))[:10]
    assert [(r["file"], r["row"], r["position"]) for r in got] == [(o[0], o[1], j) for _, o, j in flat]
    assert [abs(r["delta"]) for r in got] == pytest.approx([-x for x, _, _ in flat])
    assert {r["group"] for r in got} == {"A"}                  # the shifted group has the worst tokens


def test_mismatch_by_position_bucket(run_store):
    run, _, con = run_store
    got = _rows(con, "mismatch-by-position-bucket")
    batch, _ = _step(run, 3)
    d = batch.series("student_logprobs", torch.float64) - batch.series("rollout_logprobs", torch.float64)
    want = {}
    for b in range(batch.size):
        for j in range(batch.lengths[b]):
            want.setdefault(j // 4 * 4, []).append(float(d[b, j]))
    assert [r["from_position"] for r in got] == sorted(want)
    for r in got:
        xs = want[r["from_position"]]
        assert r["tokens"] == len(xs)
        assert r["token_mult_prob_error"] == pytest.approx(sum(math.exp(abs(x)) for x in xs) / len(xs), rel=1e-12)


def test_mismatch_by_group_over_steps(run_store):
    _, _, con = run_store
    got = _rows(con, "mismatch-by-group-over-steps")
    assert [(r["step"], r["group"]) for r in got] == [(s, g) for s in range(1, 7) for g in "AB"]
    bad = {(r["step"], r["group"]) for r in got if r["token_mult_prob_error"] > 1.05}
    assert bad == {(s, "B") for s in range(3, 7)} | {(5, "A"), (6, "A")}
    assert all(r["errors"] == 0 for r in got if r["step"] < 3)


def test_rows_a_gate_would_drop_are_the_rows_nemo_rl_drops(run_store):
    run, store, con = run_store
    got = _rows(con, "rows-a-gate-would-drop")
    per_step = {}
    for r in got:
        per_step[r["step"]] = per_step.get(r["step"], 0) + 1
    replay = {r["step"]: r["seqs_masked"] for r in simulate_gates(store, ["nemo_seq_error"])}
    assert {s: n for s, n in replay.items() if n} == per_step
    batch, origin = _step(run, 5)                              # by hand: a row's mean exp|Δ| above 2.0
    d = batch.series("student_logprobs", torch.float64) - batch.series("rollout_logprobs", torch.float64)
    v = batch.valid()
    err = [float(torch.exp(d[b][v[b]].abs()).mean()) for b in range(batch.size)]
    assert [(r["file"], r["row"]) for r in got if r["step"] == 5] == [origin[b] for b in range(batch.size) if err[b] > 2]


def test_first_step_out_of_band(run_store):
    _, _, con = run_store
    got = {r["metric"]: r["first_step"] for r in _rows(con, "first-step-out-of-band")}
    assert got["token_mult_prob_error"] == 3 and got["k3_kl"] == 3 and got["logp_abs_diff_mean"] == 3
    bands = dict(con.execute("SELECT metric, high FROM bands").fetchall())
    steps = con.execute("SELECT step, token_mult_prob_error FROM steps ORDER BY step").fetchall()
    assert min(s for s, v in steps if v > bands["token_mult_prob_error"]) == 3
    assert bands["token_mult_prob_error"] == USUAL_THRESHOLDS["mismatch/token_mult_prob_error"][2]   # the kit's bound
