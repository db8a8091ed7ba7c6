"""The early-step protocol of the when-does-IW-OPD-help study: a smoke run of the loop (a few steps,
a tiny slice of the large eval set) and the statistics on hand-made run files."""

from __future__ import annotations

import math

import pytest

from research import study, study_stats as S
from iwopd_kit import toy
from iwopd_kit.apps.train import LoopConfig, eval_steps, train


def test_eval_steps_of_the_protocol():
    cfg = LoopConfig(steps=100, eval_every=25, early_eval_every=5, early_eval_until=60)
    assert eval_steps(cfg) == list(range(0, 61, 5)) + [75, 100]
    assert eval_steps(LoopConfig(steps=7, eval_every=5)) == [0, 5, 7]                  # the old grid, unchanged
    assert eval_steps(LoopConfig(steps=3, eval_every=25, early_eval_every=2, early_eval_until=60)) == [0, 2, 3]
    with pytest.raises(ValueError, match="eval_every must be >= 1"):
        LoopConfig(eval_every=0)


def test_large_eval_set_is_held_out():
    for task in toy.TASKS.values():
        large = toy.load_prompts(task.prompt_file("eval_large"))
        assert len(large) == len(set(large)) == 2048
        assert not set(large) & (set(toy.load_prompts(task.train_prompts)) | set(toy.load_prompts(task.eval_prompts)))
    with pytest.raises(FileNotFoundError, match="no prompt set 'nope'"):
        toy.TASKS["main"].prompt_file("nope")


def test_smoke_run_of_the_protocol(vllm_raw):
    cfg = LoopConfig(objective="iw_opd", steps=3, batch_size=8, eval_every=25, early_eval_every=2,
                     early_eval_until=60, eval_set="eval_large", eval_prompts=16, tis_threshold=5.0)
    records = train(cfg, engine=vllm_raw)
    assert [r.step for r in records if r.eval] == eval_steps(cfg) == [0, 2, 3]
    for r in records:
        if r.eval:
            bits = S.unpack_bits(r.eval["greedy_correct"], 16)
            assert sum(bits) / 16 == r.eval["greedy_acc"]
    ratios = [r.metrics["tis/mean_ratio"] for r in records if r.metrics]
    assert len(ratios) == 3 and all(abs(x - 1) < 1e-3 for x in ratios), ratios   # float32 engine: exact


def _run(seed: int, accs: list[float], steps: list[int], correct: list[list[bool]] | None = None) -> dict:
    recs = []
    for i, (s, a) in enumerate(zip(steps, accs)):
        ev = {"greedy_acc": a}
        if correct is not None:
            ev["greedy_correct"] = S.pack_bits(correct[i])
        recs.append({"step": s, "eval": ev})
    return {"config": {"run_seed": seed, "eval_prompts": len(correct[0]) if correct else 0}, "records": recs}


def test_pack_and_paired_difference():
    bits = [True, False, True, True, False]
    assert S.unpack_bits(S.pack_bits(bits), 5) == bits
    with pytest.raises(ValueError, match="has 3 hex digits; expected 2 for 5 prompts"):
        S.unpack_bits("abc", 5)
    a = _run(0, [0.5], [0], [[True, True, False, False]])
    b = _run(0, [0.75], [0], [[True, True, True, False]])
    mean, se = S.paired_difference(a, b, 0)              # differences [0, 0, 1, 0]
    assert mean == 0.25 and se == pytest.approx(0.5 / 2)  # sd of [0,0,1,0] is 0.5, over sqrt(4)
    with pytest.raises(ValueError, match="no evaluation at step 5"):
        S.paired_difference(a, b, 5)


def test_gain_target_steps_and_bootstrap():
    steps = [0, 5, 10, 15]
    opd = [_run(0, [0.5, 0.6, 0.7, 0.8], steps), _run(1, [0.5, 0.7, 0.8, 0.8], steps)]
    iw = [_run(0, [0.5, 0.8, 0.8, 0.8], steps), _run(1, [0.5, 0.6, 0.78, 0.8], steps)]
    start, final, target = S.gain_target(opd)
    assert (start, final) == (0.5, 0.8) and target == pytest.approx(0.77)
    assert S.steps_to_target(opd, target) == [15, 10] and S.steps_to_target(iw, target) == [5, 10]

    def reach(a, b):                         # the IW-OPD mean curve's first step at OPD's target
        steps, mean, _ = study.mean_curve(b, "greedy_acc")
        return S.first_reach(steps, mean, S.gain_target(a)[2])

    value, lo, hi, never = S.bootstrap(reach, opd, iw, n=500, seed=1)
    assert value == 10 and lo <= value <= hi and never == 0.0
    assert S.bootstrap(lambda a, b: None, opd, iw, n=10)[1:] == (math.inf, math.inf, 1.0)


def test_student_sizes_span_the_compression_range():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_tiny_models.py"
    spec = importlib.util.spec_from_file_location("train_tiny_models", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod          # dataclasses look their module up there
    spec.loader.exec_module(mod)
    params = {k: mod.n_params(mod.make_model(v)) for k, v in mod.SIZES.items()}
    assert params["200k"] == 199_104 and mod.SIZES["200k"] == mod.STUDENT      # the bundled student's shape
    assert 40_000 < params["50k"] < 60_000 and 700_000 < params["800k"] < 857_216


def test_compression_figure_is_deterministic():
    from research.figures import compression_figure

    pts = {"main, end": [(17.0, 0.01, -0.01, 0.03), (1.06, 0.0, -0.02, 0.02)]}
    a, b = compression_figure(pts), compression_figure(pts)
    assert a.to_json() == b.to_json()
    assert list(a.data[0].x) == [1.06, 17.0] and list(a.data[0].error_y.arrayminus) == [0.02, 0.02]
