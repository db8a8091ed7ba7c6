"""Bad input raises a clear error: the message names the row / position / key and expected vs got."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch

import iwopd_kit as K

P, C = [[1, 2], [3]], [[4, 5, 6], [7, 8]]


def batch(**kw):
    args = dict(prompt_ids=P, completion_ids=C)
    args.update(kw)
    return K.Batch(**args)


# ------------------------------------------------------------------------------------------ Batch
def test_series_length_mismatch_names_row_and_both_lengths():
    with pytest.raises(K.BatchError, match=r"row 1: rollout_logprobs has 3 values but completion_ids has 2 tokens"):
        batch(rollout_logprobs=[[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])


def test_nan_in_series_names_row_and_position():
    with pytest.raises(K.BatchError, match=r"row 0, position 2: teacher_logprobs is NaN"):
        batch(teacher_logprobs=[[-1.0, -1.0, math.nan], [-1.0, -1.0]])


def test_positive_logprob():
    with pytest.raises(K.BatchError, match=r"row 1, position 0: student_logprobs = 0\.5 is a positive log-prob; expected a value <= 0"):
        batch(student_logprobs=[[-1.0, -1.0, -1.0], [0.5, -1.0]])


def test_empty_completion_names_row():
    with pytest.raises(K.BatchError, match=r"row 1: empty completion"):
        K.Batch(prompt_ids=P, completion_ids=[[4], []])


@pytest.mark.parametrize("bad", [1.5, "7", None, -3, True])
def test_non_int_token_id(bad):
    with pytest.raises(K.BatchError, match=rf"row 0, position 1: completion_ids must hold non-negative int token ids, got {bad!r}"):
        K.Batch(prompt_ids=P, completion_ids=[[4, bad], [7]])


def test_mask_length_mismatch():
    with pytest.raises(K.BatchError, match=r"row 0: mask has 2 values but completion_ids has 3 tokens"):
        batch(mask=[[1, 1], [1, 1]])


def test_prompt_completion_row_count_mismatch():
    with pytest.raises(K.BatchError, match=r"prompt_ids has 1 rows but completion_ids has 2"):
        K.Batch(prompt_ids=[[1]], completion_ids=C)


def test_zero_rows():
    with pytest.raises(K.BatchError, match=r"no rows"):
        K.Batch(prompt_ids=[], completion_ids=[])


# ------------------------------------------------------------------------------------------ JSONL
def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_jsonl_truncated_last_line_names_the_line(tmp_path):
    good = {"prompt_ids": [1], "completion_ids": [2]}
    path = _write(tmp_path / "t.jsonl", [good, good], tail='{"prompt_ids": [1], "completion_ids": [2')
    with pytest.raises(K.BatchError, match=r"line 3 is not valid JSON.*truncated"):
        K.read_jsonl(path)


def test_jsonl_unknown_key_names_line_and_key(tmp_path):
    path = _write(tmp_path / "u.jsonl", [{"prompt_ids": [1], "completion_ids": [2]},
                                        {"prompt_ids": [1], "completion_ids": [2], "logprobz": [-1.0]}])
    with pytest.raises(K.BatchError, match=r"line 2\): unknown key\(s\) \['logprobz'\]"):
        K.read_jsonl(path)


def test_jsonl_missing_required_key(tmp_path):
    path = _write(tmp_path / "m.jsonl", [{"prompt_ids": [1]}])
    with pytest.raises(K.BatchError, match=r"line 1\): missing required key 'completion_ids'"):
        K.read_jsonl(path)


def test_jsonl_error_inside_a_row_names_the_line(tmp_path):
    path = _write(tmp_path / "r.jsonl", [{"prompt_ids": [1], "completion_ids": [2]},
                                        {"prompt_ids": [1], "completion_ids": [2, 3], "rollout_logprobs": [-1.0]}])
    with pytest.raises(K.BatchError, match=r"row 1 \(line 2\).*rollout_logprobs has 1 values but completion_ids has 2"):
        K.read_jsonl(path)


# ------------------------------------------------------------------------------------------ objective
def _ok(B=2, L=3):
    return torch.full((B, L), -1.0), torch.full((B, L), -1.5), torch.ones(B, L, dtype=torch.bool)


def test_objective_wrong_shapes_names_both():
    s, t, m = _ok()
    with pytest.raises(ValueError, match=r"teacher_logprobs has shape \(2, 4\) but mask has shape \(2, 3\)"):
        K.iw_opd_loss(s, torch.full((2, 4), -1.0), m)


@pytest.mark.parametrize("bad", [-math.inf, math.nan])
def test_objective_nonfinite_teacher_on_valid_token(bad):
    s, t, m = _ok()
    t[1, 2] = bad
    with pytest.raises(ValueError, match=rf"row 1, position 2: teacher_logprobs is {bad} on a valid token"):
        K.iw_opd_loss(s, t, m)
    m[1, 2] = False                              # masked out: fine
    assert math.isfinite(K.iw_opd_loss(s, t, m).loss.item())


def test_objective_unknown_reduction():
    with pytest.raises(ValueError, match=r"unknown reduction 'mean'; expected one of \('token_mean', 'sequence_mean'\)"):
        K.iw_opd_loss(*_ok(), reduction="mean")


def test_objective_gamma_negative():
    with pytest.raises(ValueError, match=r"gamma must be a finite number >= 0, got -0\.1"):
        K.iw_opd_loss(*_ok(), gamma=-0.1)


@pytest.mark.parametrize("eps", [0.0, -1e-8])
def test_objective_eps_not_positive(eps):
    with pytest.raises(ValueError, match=rf"eps must be > 0, got {eps!r}"):
        K.iw_opd_loss(*_ok(), eps=eps)


def test_objective_num_items_zero():
    with pytest.raises(ValueError, match=r"num_items must be > 0"):
        K.iw_opd_loss(*_ok(), num_items=0)


# ------------------------------------------------------------------------------------------ sampled_logprobs
def test_sampled_logprobs_token_outside_vocab():
    z = torch.zeros(2, 3, 5)
    y = torch.tensor([[0, 1, 2], [3, 5, 0]])
    with pytest.raises(ValueError, match=r"row 1, position 1: token id 5 is outside the vocabulary \[0, 5\)"):
        K.sampled_logprobs(z, y)


def test_sampled_logprobs_shape_mismatch():
    with pytest.raises(ValueError, match=r"tokens have shape \(2, 4\) but logits have \[B, L\] = \(2, 3\)"):
        K.sampled_logprobs(torch.zeros(2, 3, 5), torch.zeros(2, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------ TRL converter
def _trl():
    return K.to_trl_batch(K.Batch(prompt_ids=P, completion_ids=C, rollout_logprobs=[[-1.0] * 3, [-1.0] * 2]))


def test_trl_non_contiguous_labels():
    inputs = _trl()
    labels = inputs["labels"].clone()
    labels[0, 3] = -100                           # row 0: completion in columns 2..4, hole at 3
    inputs["labels"] = labels
    with pytest.raises(K.BatchError, match=r"row 0, column 3: completion labels are not contiguous"):
        K.from_trl_batch(inputs)


def test_trl_wrong_width_rollout():
    inputs = _trl()
    inputs["rollout_logprobs"] = torch.zeros(2, 3)
    with pytest.raises(K.BatchError, match=r"rollout_logprobs has shape \(2, 3\); expected full width \(2, 5\)"):
        K.from_trl_batch(inputs)


def test_trl_missing_key():
    inputs = _trl()
    del inputs["labels"]
    with pytest.raises(K.BatchError, match=r"missing key 'labels'"):
        K.from_trl_batch(inputs)


# ------------------------------------------------------------------------------------------ rollout options
class FakeEngine:
    def __init__(self):
        self.calls = []

    def generate(self, prompt_ids, sampling):
        self.calls.append((prompt_ids, sampling))
        return K.Batch(prompt_ids=prompt_ids, completion_ids=[[1]] * len(prompt_ids))


def test_rollout_unknown_option_lists_allowed():
    eng = FakeEngine()
    with pytest.raises(TypeError, match=r"bogus.*allowed: temperature, top_p, top_k, max_tokens, seed, stop_token_ids"):
        K.rollout(eng, [[1, 2]], bogus=1)
    assert eng.calls == []
    K.rollout(eng, [[1, 2]], temperature=0.5)     # a known option goes through
    assert eng.calls[0][1].temperature == 0.5


@pytest.fixture
def no_vllm(monkeypatch):
    """Make ``import vllm`` fail: a test that reaches it gets ImportError, not the error it expects."""
    monkeypatch.setitem(sys.modules, "vllm", None)


def test_transformers_engine_unknown_option():
    with pytest.raises(TypeError, match=r"TransformersEngine: unknown option\(s\) \['bogus'\]; allowed: .*logprobs_mode"):
        K.TransformersEngine(object(), bogus=1)


def test_vllm_engine_unknown_option_checked_first(tmp_path, no_vllm):
    (tmp_path / "config.json").write_text("{}")   # a dir that passes the path check
    with pytest.raises(TypeError, match=r"VLLMEngine: unknown option\(s\) \['bogus'\]; allowed: .*dtype"):
        K.VLLMEngine(tmp_path, bogus=1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['bogus'\]"):
        K.VLLMEngine("/nonexistent", bogus=1)


def test_vllm_engine_path_without_config(tmp_path, no_vllm):
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        K.VLLMEngine(tmp_path)


def test_invalid_logprobs_mode_lists_valid(tmp_path, no_vllm):
    for make in (lambda: K.VLLMEngine(tmp_path, logprobs_mode="logits"),
                 lambda: K.TransformersEngine(object(), logprobs_mode="logits"),
                 lambda: K.VLLMServerEngine("http://127.0.0.1:9", logprobs_mode="logits")):
        with pytest.raises(ValueError, match=r"logprobs_mode must be one of \('raw_logprobs', 'processed_logprobs'\), got 'logits'"):
            make()


# ------------------------------------------------------------------------------------------ vLLM converters
def _request_output(prompt, ids, steps, finish="stop"):
    comp = SimpleNamespace(token_ids=ids, logprobs=steps, finish_reason=finish)
    return SimpleNamespace(prompt_token_ids=prompt, outputs=[comp])


def _lp(x):
    return SimpleNamespace(logprob=x, rank=1, decoded_token=None)


def test_request_outputs_missing_sampled_id_is_a_finding():
    outs = [
        _request_output([1, 2], [10, 11], [{10: _lp(-0.1)}, {11: _lp(-0.2), 3: _lp(-2.0)}]),
        _request_output([3], [12, 13, 14], [{12: _lp(-0.3)}, {99: _lp(-0.5)}, {14: _lp(-0.6)}]),
    ]
    b = K.from_request_outputs(outs)
    assert b.rollout_logprobs == [[-0.1, -0.2], [-0.3, None, -0.6]]
    assert b.finish_reasons == ["stop", "stop"]
    assert [(f["kind"], f["row"], f["position"]) for f in b.findings] == [("missing_token_ids", 1, 1)]
    report = K.check_alignment(b)
    hits = report.by_kind("missing_token_ids")
    assert [(f.row, f.position, f.severity) for f in hits] == [(1, 1, "error")]
    assert "13" in hits[0].message               # names the sampled id it could not find
    assert not report.ok


def test_request_outputs_step_count_mismatch():
    with pytest.raises(K.BatchError, match=r"row 0: 1 log-prob steps for 2 completion tokens"):
        K.from_request_outputs([_request_output([1], [10, 11], [{10: _lp(-0.1)}])])


def test_openai_without_token_ids_is_an_error():
    resp = {"choices": [{"text": "ab", "finish_reason": "stop",
                         "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2]}}]}
    with pytest.raises(K.BatchError, match=r"row 0: \[missing_token_ids\].*return_token_ids"):
        K.from_openai_completions([[1]], [resp])


def test_openai_token_id_strings_work():
    resp = {"choices": [{"text": "", "finish_reason": "length",
                         "logprobs": {"tokens": ["token_id:5", "token_id:17"], "token_logprobs": [-0.1, -0.2]}}]}
    b = K.from_openai_completions([[1, 2]], [resp])
    assert b.completion_ids == [[5, 17]]
    assert b.rollout_logprobs == [[-0.1, -0.2]]
    assert b.finish_reasons == ["length"]
    assert b.findings == []


def test_openai_explicit_token_ids_work():
    resp = {"choices": [{"token_ids": [8, 9], "finish_reason": "stop", "logprobs": {"token_logprobs": [-0.3, -0.4]}}]}
    b = K.from_openai_completions([[1]], [resp])
    assert b.completion_ids == [[8, 9]] and b.rollout_logprobs == [[-0.3, -0.4]]


# ------------------------------------------------------------- TRL's vLLM client payload (server mode)
def _trl_payload(**changes):
    payload = {"prompt_ids": [[1, 5], [1, 6, 7]], "completion_ids": [[10, 11], [12, 13, 2]],
               "logprobs": [[[-0.1], [-0.2]], [[-0.3], [-0.4, -2.5], [-0.05]]],
               "logprob_token_ids": [[[10], [11]], [[12], [13, 4], [2]]]}
    payload.update(changes)
    return payload


def test_trl_vllm_payload_pairs_each_value_with_its_id():
    b = K.formats.from_trl_vllm_output(_trl_payload())
    assert b.rollout_logprobs == [[-0.1, -0.2], [-0.3, -0.4, -0.05]] and b.findings == []
    two = K.formats.from_trl_vllm_output(_trl_payload(prompt_ids=[[1, 5]], completion_ids=[[10, 11], [12, 13, 2]]))
    assert two.prompt_ids == [[1, 5], [1, 5]]                  # n=2 generations of one prompt, prompt-major


def test_trl_vllm_payload_without_logprob_token_ids_is_a_finding_naming_the_row(tmp_path):
    """TRL's review bug 2: logprobs present, logprob_token_ids None -> TypeError in TRL; here a finding."""
    b = K.formats.from_trl_vllm_output(_trl_payload(logprob_token_ids=None))
    assert b.rollout_logprobs == [[None, None], [None, None, None]]
    hits = K.check_alignment(b).by_kind("missing_token_ids")
    assert [(f.row, f.position, f.severity) for f in hits] == [(0, 0, "error"), (1, 0, "error")]
    assert "row 1" in hits[1].message and "logprob_token_ids" in hits[1].message
    one = K.formats.from_trl_vllm_output(_trl_payload(logprob_token_ids=[[[10], [11]], None]))
    assert [(f["row"], f["kind"]) for f in one.findings] == [(1, "missing_token_ids")]
    # the same payload as a JSON file through the CLI: exit 1, the finding in the table
    (tmp_path / "payload.json").write_text(json.dumps(_trl_payload(logprob_token_ids=None)))
    assert K.formats.detect_format(tmp_path / "payload.json") == "trl_vllm"
    from iwopd_kit.cli import main

    out = tmp_path / "f.json"
    assert main(["check", str(tmp_path / "payload.json"), "--json", str(out)]) == 1
    assert {f["kind"] for f in json.loads(out.read_text())["findings"]} >= {"missing_token_ids"}


@pytest.mark.parametrize("change, needle", [
    (dict(logprobs=[[[-0.1]], [[-0.3], [-0.4], [-0.05]]]), r"row 0: logprobs has 1 steps for 2 completion tokens"),
    (dict(logprob_token_ids=[[[10], [11]], [[12], [13, 4]]]), r"row 1: logprob_token_ids has 2 steps for 3"),
    (dict(logprob_token_ids=[[[10], [11]], [[12], [13, 4], 7]]), None),
    (dict(logprobs=[[[-0.1], ["x"]], [[-0.3], [-0.4], [-0.05]]]), r"row 0, position 1: a log-prob must be a number"),
    (dict(logprobs=[[[-0.1], [-0.2, -1.0]], [[-0.3], [-0.4], [-0.05]]]), r"row 0, position 1: 2 log-probs but 1 ids"),
    (dict(logprobs="oops"), r"logprobs has str; expected one list per completion"),
    (dict(completion_ids=None), r"'completion_ids' must be a non-empty list"),
])
def test_trl_vllm_payload_bad_shapes_are_batch_errors_not_type_errors(change, needle):
    if needle is None:          # a scalar id where a list was expected: read as one id, the sampled id is absent
        b = K.formats.from_trl_vllm_output(_trl_payload(**change))
        assert [(f["row"], f["position"]) for f in b.findings] == [(1, 2)]
        return
    with pytest.raises(K.BatchError, match=needle):
        K.formats.from_trl_vllm_output(_trl_payload(**change))


def test_openai_bad_shapes_are_batch_errors_not_type_errors():
    for resp, needle in (([1, 2], r"response 0: expected a JSON object"),
                         ({"choices": [{"token_ids": 5, "logprobs": {"token_logprobs": [-0.1]}}]}, r"token_ids must be a list"),
                         ({"choices": [{"token_ids": [5], "logprobs": [-0.1]}]}, r"logprobs must be an object"),
                         ({"choices": [{"token_ids": [5], "logprobs": {"token_logprobs": -0.1}}]}, r"must be a list")):
        with pytest.raises(K.BatchError, match=needle):
            K.from_openai_completions([[1]], [resp])


# ------------------------------------------------------------------------ vLLM server faults
import http.server  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


class _Server:
    """A tiny HTTP server on 127.0.0.1 whose answers a test scripts: a list of (status, body, delay)."""

    def __init__(self, answers):
        self.answers, self.hits = list(answers), 0
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                status, body, delay = outer.answers[min(outer.hits, len(outer.answers) - 1)]
                outer.hits += 1
                time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body.encode())

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_server_engine_refused_connection_names_the_server_and_retries(monkeypatch):
    from iwopd_kit.engines.rollout import VLLMServerError
    from iwopd_kit.engines.server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)         # record the backoff instead of waiting it out
    with pytest.raises(VLLMServerError, match=rf"vLLM server {url} \(GET /v1/models\): connection refused after 3 tries"
                                              r".*stopped.*curl .*/health"):
        K.VLLMServerEngine(url)
    assert waits == [0.5, 1.0]                                # two bounded waits between the three tries
    engine = K.VLLMServerEngine(url, model="student", retries=0)   # constructed without a request
    with pytest.raises(VLLMServerError, match=r"POST /v1/completions\): connection refused after 1 tries"):
        K.rollout(engine, [[1, 2]], max_tokens=2)


@pytest.mark.slow                   # waits out real timeouts and retries
def test_server_engine_http_error_timeout_and_retry_are_worded_for_what_they_mean():
    from iwopd_kit.engines.rollout import VLLMServerError

    srv = _Server([(404, '{"error": "model not found"}', 0)])
    try:
        with pytest.raises(VLLMServerError, match=r"HTTP 404 .*model not found.*GET /v1/models lists the served names"):
            K.VLLMServerEngine(srv.url)
        assert srv.hits == 1                                 # a 404 is not retried
    finally:
        srv.close()
    srv = _Server([(200, '{"data": [{"id": "m"}]}', 0.6)])
    try:
        with pytest.raises(VLLMServerError, match=r"no answer within 0.2 s \(timeout\).*timeout=\.\.\."):
            K.VLLMServerEngine(srv.url, timeout=0.2)
    finally:
        srv.close()
    srv = _Server([(503, '{"error": "loading"}', 0), (200, '{"data": [{"id": "m"}]}', 0)])
    try:
        assert K.VLLMServerEngine(srv.url).model == "m" and srv.hits == 2    # 503 retried once, then fine
    finally:
        srv.close()
    srv = _Server([(200, "<html>not vllm</html>", 0)])
    try:
        with pytest.raises(VLLMServerError, match=r"the answer is not JSON"):
            K.VLLMServerEngine(srv.url)
    finally:
        srv.close()
