"""One sampling-settings object (iwopd_kit/batch/sampling.py) for the engines, ``rollout``, the pipeline and the loop;
``rollout`` also takes its fields as keywords (as vLLM's ``SamplingParams`` does) and builds the same object."""

from __future__ import annotations

import pytest

import iwopd_kit as K
from iwopd_kit.apps.pipeline import run_pipeline
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS, SamplingSettings
from iwopd_kit.apps.train import LoopConfig


class RecordingEngine:
    """An engine that records each request and answers 3 fixed tokens per prompt with log-prob -1."""

    def __init__(self):
        self.requests: list[SamplingSettings] = []

    def generate(self, prompt_ids, sampling: SamplingSettings) -> K.Batch:
        self.requests.append(sampling)
        comps = [[5, 6, 7] for _ in prompt_ids]
        return K.Batch(prompt_ids=[list(p) for p in prompt_ids], completion_ids=comps,
                       rollout_logprobs=[[-1.0] * 3 for _ in comps],
                       sampling=sampling.for_engine("recording", "raw_logprobs"))


def test_rollout_takes_one_settings_object_or_its_fields():
    engine = RecordingEngine()
    settings = SamplingSettings(temperature=0.7, top_p=0.9, max_tokens=5, seed=3)
    K.rollout(engine, [[1, 2]], settings)
    K.rollout(engine, [[1, 2]], settings, seed=4)                       # a keyword replaces one field
    K.rollout(engine, [[1, 2]], temperature=0.7, top_p=0.9, max_tokens=5, seed=3)   # the older call
    K.rollout(engine, [[1, 2]])
    a, b, c, d = engine.requests
    assert a == settings == c
    assert b == SamplingSettings(temperature=0.7, top_p=0.9, max_tokens=5, seed=4)
    assert d == K.Sampling() and d.max_tokens == ROLLOUT_MAX_TOKENS and d.seed == 0
    with pytest.raises(TypeError, match="rollout: .*allowed: temperature"):
        K.rollout(engine, [[1, 2]], settings, tempreature=1.0)


def test_loop_config_keeps_its_request_in_sampling():
    cfg = LoopConfig(sampling=SamplingSettings(temperature=0.5, max_tokens=20), run_seed=7)
    assert cfg.sampling == SamplingSettings(temperature=0.5, max_tokens=20) and cfg.run_seed == 7
    assert LoopConfig().sampling == SamplingSettings(max_tokens=ROLLOUT_MAX_TOKENS)
    assert LoopConfig(sampling=SamplingSettings()).sampling.max_tokens == ROLLOUT_MAX_TOKENS   # the default, recorded
    with pytest.raises(ValueError, match="top_p=1 and top_k=0; got top_p=0.9"):
        LoopConfig(sampling=SamplingSettings(top_p=0.9))
    with pytest.raises(ValueError, match="seed from run_seed .* got seed=0"):
        LoopConfig(sampling=K.Sampling())
    with pytest.raises(TypeError, match="sampling must be a SamplingSettings, got dict"):
        LoopConfig(sampling={"temperature": 0.5})
    with pytest.raises(TypeError, match="temperature"):
        LoopConfig(temperature=0.5)                                   # no second home for it


@pytest.mark.slow                           # loads the tiny student and teacher twice (~4 s)
def test_pipeline_takes_one_settings_object():
    engine = RecordingEngine()
    result = run_pipeline(n_prompts=2, engine=engine, sampling=SamplingSettings(temperature=1.0, max_tokens=9, seed=2))
    run_pipeline(n_prompts=2, engine=engine)
    given, default = engine.requests
    assert given.max_tokens == 9 and given.seed == 2
    assert given.stop_token_ids is not None and len(given.stop_token_ids) == 1     # the tokenizer's EOS
    assert default == K.Sampling(stop_token_ids=given.stop_token_ids)              # the rollout defaults
    assert result.settings["max_tokens"] == 9 and result.settings["seed"] == 2
    with pytest.raises(TypeError, match="temperature"):
        run_pipeline(n_prompts=2, engine=engine, temperature=1.0)                  # no second home for it
