"""The OpenAI-compatible server engine returns the same tokens and log-probs as the offline engine."""

from __future__ import annotations

import os

import pytest

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from iwopd_kit.engines.server import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(toy.STUDENT_DIR, log_path=tmp_path_factory.mktemp("server") / "server.log")
    yield srv
    pid = srv.pid
    srv.stop()
    with pytest.raises(ProcessLookupError):  # stopped by the pid we started, whole process group
        os.killpg(pid, 0)


def test_server_matches_offline(server, vllm_raw, eval_prompt_ids):
    engine = K.VLLMServerEngine(server.base_url)
    assert engine.model == "student"
    kw = dict(temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=17, stop_token_ids=(2,))
    online = K.rollout(engine, eval_prompt_ids[:8], **kw)
    offline = K.rollout(vllm_raw, eval_prompt_ids[:8], **kw)
    assert online.completion_ids == offline.completion_ids
    assert online.finish_reasons == offline.finish_reasons
    gap = (online.series("rollout_logprobs") - offline.series("rollout_logprobs")).abs()
    assert float(gap[~gap.isnan()].max()) <= 1e-5
    assert online.sampling.engine == "vllm-server"

