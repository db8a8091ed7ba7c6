"""``iwopd_kit.check_dump``: the check as one library call (a file -> CheckResult, a directory -> DirCheckResult),
its provenance, --group-by, the schema-2 JSON object, and a run directory's layout and steps."""

from __future__ import annotations

import json
import re

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.cli import main
from iwopd_kit.formats import dirs
from iwopd_kit.formats.registry import LAYOUTS, Layout
from iwopd_kit.formats.trl import to_trl_batch

FIX = toy.FIXTURES_DIR
SERIES = ("rollout_logprobs", "student_logprobs", "teacher_logprobs")


def _same_findings(a, b) -> None:
    key = lambda f: (f.kind, f.row, f.position, f.severity, f.message)  # noqa: E731
    assert [key(f) for f in a.findings] == [key(f) for f in b.findings]


def _rollout_only(tmp_path, rows: int = 4):
    b = K.read_jsonl(FIX / "healthy_fp32_t1.jsonl").select(list(range(rows)))
    return K.write_jsonl(b.replace(student_logprobs=None, teacher_logprobs=None), tmp_path / "ro.jsonl")


# ------------------------------------------------------------------------------------------- one file
def test_offset_fixture_gives_check_alignments_findings():
    res = K.check_dump(FIX / "offset.jsonl")
    assert isinstance(res, K.CheckResult) and res.format == "jsonl"
    ref = K.check_alignment(K.read_jsonl(FIX / "offset.jsonl"))
    _same_findings(res.report, ref)
    assert "offset" in res.report.kinds and not res.ok and res.exit_code == 1
    assert res.metrics == ref.metrics and res.metrics["mismatch/logp_abs_diff_max"] > 1.0
    assert res.unchecked == ref.unchecked_reasons and "tokenizer_mismatch" in res.unchecked
    assert res.provenance == {s: "dump" for s in SERIES} and res.notes == []
    assert (res.rows, res.tokens) == (res.batch.size, int(res.batch.valid().sum())) == (12, 304)


@pytest.mark.parametrize("name", ["healthy_fp32_t1", "healthy_bf16", "healthy_processed_t07"])
def test_healthy_fixtures_are_ok(name):
    res = K.check_dump(FIX / f"{name}.jsonl")
    assert res.ok and res.exit_code == 0, res.report
    assert not [f for f in res.findings if f.severity == "error"]
    _same_findings(res.report, K.check_alignment(K.read_jsonl(FIX / f"{name}.jsonl")))


@pytest.mark.slow                   # loads and runs the tiny models
def test_student_dir_rescores_and_provenance_names_the_model(tmp_path):
    dump = _rollout_only(tmp_path)
    res = K.check_dump(dump, student=toy.STUDENT_DIR, batch_size=2)
    assert res.ok, res.report
    assert res.provenance["rollout_logprobs"] == "dump"
    assert res.provenance["student_logprobs"] == f"rescored with {toy.STUDENT_DIR}, float32"
    assert re.fullmatch(r"rescored with .*teacher, float32", res.provenance["teacher_logprobs"])
    assert any("bundled toy teacher" in n for n in res.notes)            # the fallback is said
    assert res.metrics["mismatch/logp_abs_diff_max"] < 1e-4              # the toy student made these rollouts
    assert "bos_eos" not in res.unchecked and "tokenizer_mismatch" not in res.unchecked   # both tokenizers loaded


def test_loaded_models_and_tokenizer_objects(tmp_path):
    dump = _rollout_only(tmp_path)
    by_dir = K.check_dump(dump, student=toy.STUDENT_DIR, teacher=toy.TEACHER_DIR)
    student, teacher = K.load_model(toy.STUDENT_DIR), K.load_model(toy.TEACHER_DIR)
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    res = K.check_dump(dump, student=student, teacher=teacher, student_tokenizer=tok, teacher_tokenizer=tok)
    for side in ("student", "teacher"):
        assert torch.allclose(res.batch.series(f"{side}_logprobs"), by_dir.batch.series(f"{side}_logprobs"),
                              atol=1e-6, equal_nan=True)
        assert res.provenance[f"{side}_logprobs"].endswith(", float32")
    assert res.student_tokenizer is tok and res.teacher_tokenizer is tok
    assert "student tokenizer: the given" in " ".join(res.notes)
    _same_findings(res.report, by_dir.report)


def test_a_model_whose_vocabulary_the_ids_do_not_fit_raises(tmp_path):
    dump = tmp_path / "real.jsonl"
    dump.write_text(json.dumps({"prompt_ids": [151644, 872], "completion_ids": [30014, 11, 151645],
                                "rollout_logprobs": [-0.5, -0.1, -0.01]}) + "\n")
    with pytest.raises(ValueError, match=r"token id 151645 \(row 0, position 2\) is outside the vocabulary"):
        K.check_dump(dump, student=K.load_model(toy.STUDENT_DIR))
    res = K.check_dump(dump)                                     # no model given: the series stay missing, said so
    assert res.provenance == {"rollout_logprobs": "dump"} and "mismatch" in res.unchecked
    assert any("not scored" in n for n in res.notes)


def test_group_by_sets_groups_and_tags_findings(tmp_path):
    b = K.read_jsonl(FIX / "offset.jsonl")
    envs = ["math" if i % 3 else "code" for i in range(b.size)]
    dump = K.write_jsonl(b.with_meta(env=envs), tmp_path / "g.jsonl")
    res = K.check_dump(dump, group_by="env")
    assert res.batch.groups == envs
    _same_findings(res.report, K.check_alignment(b))                     # grouping changes no finding
    rows = [f for f in res.finding_dicts() if f["row"] is not None]
    assert rows and all(f["group"] == envs[f["row"]] for f in rows)
    assert res.groups == dict(getattr(res.report, "group_metrics", {}) or {})
    assert res.to_dict()["groups"] == res.groups
    plain = K.check_dump(dump)                                            # without it: no group anywhere
    assert plain.batch.groups is None and all("group" not in f for f in plain.finding_dicts())
    with pytest.raises(K.BatchError, match=r"row 0: meta has no 'nope' to group by"):
        K.check_dump(dump, group_by="nope")


def test_to_dict_round_trips_through_strict_json(tmp_path):
    res = K.check_dump(FIX / "offset.jsonl")
    d = res.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["schema"] == 2 and d["format"] == "jsonl" and d["exit_code"] == 1 and d["ok"] is False
    assert [(f["kind"], f["row"], f["position"]) for f in d["findings"]] == \
        [(f.kind, f.row, f.position) for f in res.report.findings]
    assert d["provenance"] == res.provenance and d["unchecked"] == res.unchecked
    inf = K.CheckResult(path=FIX, format="jsonl", batch=None, report=res.report,
                        metrics={"mismatch/is_ratio_max": float("inf")}, groups={"a": {"mismatch/k3_kl": float("nan")}})
    d = inf.to_dict()
    assert d["metrics"] == {"mismatch/is_ratio_max": None} and d["groups"] == {"a": {"mismatch/k3_kl": None}}
    json.dumps(d, allow_nan=False)


def test_unreadable_file_raises_and_progress_is_called(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1], "completion_ids": [3, 2')
    with pytest.raises(K.BatchError, match="line 1"):
        K.check_dump(bad)
    with pytest.raises(ValueError, match="not a torch device"):
        K.check_dump(FIX / "offset.jsonl", device="gpu7")
    calls = []
    K.check_dump(_rollout_only(tmp_path, rows=4), batch_size=2, progress=lambda n, desc: calls.append((n, desc)))
    assert sum(n for n, _ in calls) == 4 * 3 and calls[-1] == (4, "checked")   # 2 scoring passes of 2 rows per side


# ------------------------------------------------------------------------------------------ directories
def _healthy(rows):
    return K.read_jsonl(FIX / "healthy_fp32_t1.jsonl").select(rows)


def test_a_directory_of_kit_jsonl_steps(tmp_path, check_cli):
    run = tmp_path / "run"
    (run / "step_10").mkdir(parents=True)
    K.write_jsonl(_healthy(list(range(6))), run / "step_2.jsonl")
    K.write_jsonl(K.read_jsonl(FIX / "offset.jsonl"), run / "step_10" / "a.jsonl")
    K.write_jsonl(_healthy(list(range(6))), run / "step_10" / "b.jsonl")
    K.write_jsonl(_healthy(list(range(6, 12))), run / "step_10" / "c.jsonl")
    K.write_jsonl(_healthy([0]), run / "notes.jsonl")                                # no step in its path
    res = K.check_dump(run)
    assert isinstance(res, K.DirCheckResult) and res.layouts == ("jsonl",)
    assert [(f.name, f.step) for f in res.files] == [("step_2.jsonl", 2), ("step_10/a.jsonl", 10),
                                                     ("step_10/b.jsonl", 10), ("step_10/c.jsonl", 10),
                                                     ("notes.jsonl", None)]
    assert [s.step for s in res.steps] == [2, 10, None] and res.exit_code == 1
    assert [s.exit_code for s in res.steps] == [0, 1, 0] and res.steps[1].kinds == ["offset"]
    assert all(f.batch is None for f in res.files)                                   # not kept unless asked
    _same_findings(res["step_10/a.jsonl"].report, K.check_dump(run / "step_10" / "a.jsonl").report)
    # a step's metrics are pooled over its files' tokens: b + c are the whole healthy fixture
    bc = tmp_path / "bc.jsonl"
    bc.write_text((run / "step_10" / "b.jsonl").read_text() + (run / "step_10" / "c.jsonl").read_text())
    whole = K.check_dump(bc).metrics
    res_bc = K.check_dump(run / "step_10", format="jsonl")
    assert [s.step for s in res_bc.steps] == [10]
    offset = K.check_dump(run / "step_10" / "a.jsonl")
    assert res.steps[1].tokens == offset.tokens + K.check_dump(bc).tokens
    assert res.steps[0].metrics == pytest.approx(res["step_2.jsonl"].metrics, rel=1e-12)
    only_bc = tmp_path / "only_bc" / "step_4"
    only_bc.mkdir(parents=True)
    for n in ("b", "c"):
        (only_bc / f"{n}.jsonl").write_text((run / "step_10" / f"{n}.jsonl").read_text())
    pooled = K.check_dump(only_bc.parent).steps[0].metrics
    assert pooled == pytest.approx(whole, rel=1e-9)
    # the CLI: one row per file (with its step), one per step, the JSON of res.to_dict()
    out = tmp_path / "o.json"
    r = check_cli(run, "--json", out)
    assert r.returncode == 1
    obj = json.loads(out.read_text())
    assert obj == json.loads(json.dumps(res.to_dict()))
    assert obj["schema"] == 2 and list(obj["steps"]) == ["2", "10", "-"] and obj["layouts"] == ["jsonl"]
    assert obj["files"]["step_10/a.jsonl"]["step"] == 10 and obj["files"]["notes.jsonl"]["step"] is None
    lines = r.stdout.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("file"))
    assert lines[head].split()[:3] == ["file", "step", "rows"]
    assert lines[head + 3].split()[:2] == ["step_10/a.jsonl", "10"] and lines[head + 3].split()[-2:] == ["offset", "1"]
    step_head = next(i for i, line in enumerate(lines) if line.startswith("step "))
    assert lines[step_head + 3].split()[:2] == ["10", "3"] and lines[step_head + 3].split()[-1] == "1"


def _write_primerl_step(run, step: int, rank: int, batch: K.Batch, stable: bool) -> None:
    """``batch`` as prime-rl's token export lays it out (the keys the reader needs; iwopd_kit/formats/primerl.py)."""
    d = run / "token_exports" / f"step_{step}"
    d.mkdir(parents=True, exist_ok=True)
    recs = []
    for b in range(batch.size):
        p, c = batch.prompt_ids[b], batch.completion_ids[b]
        recs.append({"schema_version": 1, "step": step, "rank": rank, "env_name": "chained_addition",
                     "token_ids": p + c, "loss_mask": [False] * len(p) + [True] * len(c),
                     "inference_logprobs": [0.0] * len(p) + list(batch.rollout_logprobs[b]),
                     "trainer_logprobs": [-0.5] * len(p) + list(batch.student_logprobs[b])})
    (d / f"rank_{rank}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if stable:
        (d / "STABLE").touch()


@pytest.mark.slow                   # rescores a directory of dumps with the tiny models
def test_a_primerl_export_root_step_dir_and_missing_marker(tmp_path):
    healthy = K.read_jsonl(FIX / "healthy_fp32_t1.jsonl")
    for step in (3, 4):
        for rank in (0, 1):
            _write_primerl_step(tmp_path, step, rank, healthy, stable=step == 3)
    root = K.check_dump(tmp_path)                       # the run root: token_exports/ below it
    assert root.layouts == ("primerl",) and [s.step for s in root.steps] == [3, 4] and root.ok
    assert [f.name for f in root.files] == [f"token_exports/step_{s}/rank_{r}.jsonl" for s in (3, 4) for r in (0, 1)]
    assert {f.format for f in root.files} == {"primerl"}
    assert root.notes == ["token_exports/step_4: no STABLE marker: the trainer may still be writing this step "
                          "(checked anyway)"]
    one = K.check_dump(tmp_path / "token_exports" / "step_3")   # one step directory: the same step found
    assert [(f.name, f.step) for f in one.files] == [("rank_0.jsonl", 3), ("rank_1.jsonl", 3)] and one.notes == []
    single = K.check_dump(tmp_path / "token_exports" / "step_4" / "rank_1.jsonl")
    assert single.step == 4 and single.format == "primerl"
    assert single.provenance["rollout_logprobs"] == single.provenance["student_logprobs"] == "dump"


def test_trl_callback_dumps_and_an_unreadable_file(tmp_path, capsys):
    b = _healthy(list(range(4)))
    for step in (1, 11):
        torch.save(to_trl_batch(b), tmp_path / f"step{step:06d}_mb0.pt")
    (tmp_path / "step000021_mb0.pt").write_bytes(b"not a torch file")
    res = K.check_dump(tmp_path)
    assert res.layouts == ("trl_callback",) and [(f.step, f.format) for f in res.files] == \
        [(1, "trl"), (11, "trl"), (21, None)]
    assert res.exit_code == 2 and res.files[-1].error and "cannot read as a torch file" in res.files[-1].error
    assert res.files[0].ok and res.to_dict()["files"]["step000021_mb0.pt"]["exit_code"] == 2
    code = main(["check", str(tmp_path)])
    assert code == 2 and "step000021_mb0.pt" in capsys.readouterr().err


def test_the_layout_table_pending_readers_and_companions(tmp_path, monkeypatch):
    """A layout whose reader is not registered reads its files one by one and says so; a companion is joined,
    not read on its own."""
    K.write_jsonl(_healthy([0, 1]), tmp_path / "data_3.jsonl")
    K.write_jsonl(_healthy([2, 3, 4]), tmp_path / "extra_3.jsonl")
    pending = Layout("later", "not_a_reader_yet", r"(?:^|/)data_(?P<step>\d+)\.jsonl$", "a future framework")
    monkeypatch.setattr(dirs, "LAYOUTS", (pending,))
    plan = dirs.plan_directory(tmp_path)
    assert plan.layouts == () and [d.name for d in plan.dumps] == ["data_3.jsonl", "extra_3.jsonl"]
    assert "no 'not_a_reader_yet' reader" in plan.notes[0]
    seen = []

    def join(dump, companion, allow_pickle):
        seen.append((dump.name, companion.name))
        return K.read_jsonl(dump).select([0])

    pair = Layout("pair", "jsonl", r"(?:^|/)data_(?P<step>\d+)\.jsonl$", "a pair", companion="extra_{step}.jsonl",
                  read=join)
    monkeypatch.setattr(dirs, "LAYOUTS", (pair,))
    monkeypatch.setattr(dirs, "_BY_NAME", {"pair": pair})
    res = K.check_dump(tmp_path)
    assert [(f.name, f.step, f.rows) for f in res.files] == [("data_3.jsonl", 3, 1)]
    assert seen == [("data_3.jsonl", "extra_3.jsonl")]


def test_every_layout_names_a_step_and_the_pending_ones_are_marked():
    for lay in LAYOUTS:
        assert "(?P<step>" in lay.pattern, lay.name
    assert {lay.name for lay in LAYOUTS} >= {"primerl", "nemorl", "slime", "jsonl", "trl_callback"}
    assert next(lay for lay in LAYOUTS if lay.name == "primerl").active
