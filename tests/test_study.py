"""research.study and its figures, on small synthetic run files (and the committed results)."""

from __future__ import annotations

import json
import math

import pytest

from research import study
from iwopd_kit.apps.train import LoopConfig, save_records, StepRecord
from research.figures import position_profile_figure, study_curves_figure


def _run(objective: str, seed: int, accs: list[float], profile: list[float]) -> tuple[LoopConfig, list[StepRecord]]:
    cfg = LoopConfig(objective=objective, run_seed=seed, steps=25 * (len(accs) - 1), eval_every=25)
    records = []
    for i, acc in enumerate(accs):
        ev = {"greedy_acc": acc, "sampled_acc": acc / 2, "reverse_kl_per_token": 1 - acc,
              "abs_adv_by_position": profile if i == 0 else [0.0] * len(profile)}
        records.append(StepRecord(25 * i, 0.1, {}, 1e-6, 0.5, ev))
        if i < len(accs) - 1:
            records += [StepRecord(25 * i + k, 0.1, {}, 1e-6, 0.5, {}) for k in range(1, 25)]
    return cfg, records


@pytest.fixture
def results(tmp_path):
    task = tmp_path / "toytask"
    for objective, seed, accs in [("opd", 0, [0.5, 0.6, 0.8]), ("opd", 1, [0.5, 0.7, 0.8]),
                                  ("iw_opd", 0, [0.5, 0.8, 0.9]), ("suffix30", 0, [0.5, 0.4, 0.3])]:
        cfg, recs = _run(objective, seed, accs, [1.0, 2.0, 3.0 + seed])
        save_records(recs, cfg, task / f"{objective}_seed{seed}.json", {"wall_s": 10.0 + seed})
    return tmp_path


def test_load_runs_orders_objectives_and_seeds(results):
    runs = study.load_runs("toytask", results)
    assert list(runs) == ["opd", "iw_opd", "suffix30"]
    assert [study.run_seed(r) for r in runs["opd"]] == [0, 1]


def test_run_files_keep_the_config_as_the_loop_ran_it(results):
    cfg = json.loads((results / "toytask" / "opd_seed1.json").read_text())["config"]
    assert cfg["run_seed"] == 1 and cfg["objective"] == "opd" and cfg["eval_prompts"] == 256
    assert cfg["sampling"]["temperature"] == 1.0 and cfg["sampling"]["max_tokens"] == 48    # ROLLOUT_MAX_TOKENS
    assert cfg["sampling"]["top_p"] == 1.0 and cfg["sampling"]["seed"] is None
    assert not {"seed", "temperature", "max_tokens"} & set(cfg)                             # one home: sampling
    with pytest.raises(ValueError, match="neither 'run_seed' nor 'seed'"):
        study.run_seed({"config": {"objective": "opd"}})


def test_curves_final_and_steps_to_reach(results):
    runs = study.load_runs("toytask", results)
    steps, mean, sd = study.mean_curve(runs["opd"], "greedy_acc")
    assert steps == [0, 25, 50]
    assert mean == pytest.approx([0.5, 0.65, 0.8]) and sd[1] == pytest.approx(math.sqrt(0.005))
    assert study.final(runs["opd"], "greedy_acc") == pytest.approx((0.8, 0.0))
    assert study.steps_to_reach(runs["iw_opd"][0], "greedy_acc", 0.8) == 25
    assert study.steps_to_reach(runs["suffix30"][0], "greedy_acc", 0.8) is None
    assert study.position_profile(runs["opd"]) == pytest.approx([1.0, 2.0, 3.5])


def test_summary_markdown(results):
    text = study.summary_markdown(study.load_runs("toytask", results))
    lines = text.splitlines()
    assert lines[2].startswith("| OPD | 0,1 | 0.500 ± 0.000 -> 0.800 ± 0.000 |")
    assert lines[3].startswith("| IW-OPD | 0 | 0.500 -> 0.900 |")      # one seed: no spread shown
    assert len(lines) == 5


def test_bad_inputs_are_named(results, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        study.load_runs("nope", results)
    (results / "toytask" / "junk.json").write_text(json.dumps({"x": 1}))
    with pytest.raises(ValueError, match="junk.json: not a study run file"):
        study.load_runs("toytask", results)


def test_mismatched_eval_steps_are_an_error(results):
    runs = study.load_runs("toytask", results)
    other = json.loads(json.dumps(runs["opd"][1]))
    other["records"][25]["eval"] = {}
    with pytest.raises(ValueError, match="seed 1: eval steps"):
        study.mean_curve([runs["opd"][0], other], "greedy_acc")


def test_figures_are_deterministic(results):
    runs = study.load_runs("toytask", results)
    a, b = study_curves_figure(runs, "greedy_acc"), study_curves_figure(runs, "greedy_acc")
    assert a.to_json() == b.to_json()
    names = [t.name for t in a.data]
    assert names == ["opd sd", "OPD (2 seeds)", "IW-OPD (1 seed)", "Suffix-30 (1 seed)"]   # band only with seeds
    fig = position_profile_figure({"t": [1.0, 2.0]})
    assert list(fig.data[0].x) == [0.25, 0.75] and list(fig.data[0].y) == [1.0, 2.0]


def test_committed_results_load():
    runs = study.load_runs("main")
    assert {"opd", "iw_opd", "prefix30", "suffix30"} <= set(runs)
    for rs in runs.values():
        for r in rs:
            assert study.evals(r)[-1][0] == r["config"]["steps"] == 300
            assert study.run_seed(r) == r["config"]["seed"]          # files from before LoopConfig.sampling
            assert r["versions"]["vllm"] and r["wall_s"] > 0
