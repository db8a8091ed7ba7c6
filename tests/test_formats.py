"""Boundary converters: verl batches, TRL dumps, vLLM pickles, OpenAI JSON and ``load_any``.

Round trips keep every token's own values; bad or truncated files give errors that name the file
and the line / key / row."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.formats import from_verl_batch, load_any, load_trl_dump, to_trl_batch, to_verl_batch
from iwopd_kit.formats.registry import detect_format


def _batch(mask: bool = True) -> K.Batch:
    """Prompts and completions of different lengths; every token has its own distinct values."""
    prompts = [[1, 5], [1, 6, 7, 8], [1]]
    comps = [[11, 12, 13], [14], [15, 16, 17, 18, 2]]
    roll = [[-0.1 * (b + 1) - 0.01 * j for j in range(len(c))] for b, c in enumerate(comps)]
    roll[2][3] = None                                            # one missing rollout value
    stud = [[v - 0.001 if v is not None else -0.5 for v in r] for r in roll]
    teach = [[-1.0 - 0.1 * b - 0.01 * j for j in range(len(c))] for b, c in enumerate(comps)]
    m = [[True] * len(c) for c in comps]
    m[2][1] = False
    return K.Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=roll, student_logprobs=stud,
                   teacher_logprobs=teach, mask=m if mask else None)


def _same(a: K.Batch, b: K.Batch, series=("rollout_logprobs", "student_logprobs", "teacher_logprobs")) -> None:
    assert a.prompt_ids == b.prompt_ids
    assert a.completion_ids == b.completion_ids
    assert (a.mask or [[True] * n for n in a.lengths]) == (b.mask or [[True] * n for n in b.lengths])
    for name in series:
        for ra, rb in zip(getattr(a, name), getattr(b, name)):
            assert [None if v is None else round(v, 5) for v in ra] == [None if v is None else round(v, 5) for v in rb], name


# -------------------------------------------------------------------------------------------------- verl
def test_verl_round_trip_keeps_each_tokens_values():
    b = _batch()
    d = to_verl_batch(b)
    assert d["prompts"].shape == (3, 4) and d["responses"].shape == (3, 5) and d["attention_mask"].shape == (3, 9)
    assert d["prompts"][0].tolist() == [0, 0, 1, 5]                    # left-padded prompts
    assert d["responses"][1].tolist() == [14, 0, 0, 0, 0]              # right-padded responses
    _same(b, from_verl_batch(d))
    assert K.check_alignment(from_verl_batch(d)).by_kind("offset") == []


def test_verl_hand_built_golden_bug1_layout():
    """Golden case 3 (tests/test_golden.py) in verl's layout: each token keeps its own log-prob."""
    d = {
        "prompts": torch.tensor([[0, 5], [6, 7]]),
        "responses": torch.tensor([[11, 12, 13], [14, 0, 0]]),
        "attention_mask": torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
        "response_mask": torch.tensor([[1, 1, 1], [1, 0, 0]]),
        "rollout_log_probs": torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0]], dtype=torch.float64),
        "old_log_probs": torch.tensor([[-0.1, -0.2, -0.3], [-0.4, 0.0, 0.0]], dtype=torch.float64),
        "ref_log_prob": torch.tensor([[-1.1, -1.2, -1.3], [-1.4, 0.0, 0.0]], dtype=torch.float64),
    }
    b = from_verl_batch(d)
    pairs = [(r, t, v) for r, (toks, vals) in enumerate(zip(b.completion_ids, b.rollout_logprobs)) for t, v in zip(toks, vals)]
    assert pairs == [(0, 11, -0.1), (0, 12, -0.2), (0, 13, -0.3), (1, 14, -0.4)]
    assert b.prompt_ids == [[5], [6, 7]] and b.teacher_logprobs == [[-1.1, -1.2, -1.3], [-1.4]]
    assert b.mask is None                                               # every real token counts
    # a DataProto-like object (``.batch``) works the same
    assert from_verl_batch(SimpleNamespace(batch=d)).completion_ids == b.completion_ids


def test_verl_errors_name_the_key_row_and_column():
    d = to_verl_batch(_batch())
    with pytest.raises(K.BatchError, match=r"verl batch: missing key 'responses'"):
        from_verl_batch({k: v for k, v in d.items() if k != "responses"})
    with pytest.raises(K.BatchError, match=r"verl batch: old_log_probs has shape \(3, 4\); expected \(3, 5\)"):
        from_verl_batch({**d, "old_log_probs": d["old_log_probs"][:, :4]})
    bad = d["attention_mask"].clone()
    bad[0, 4 + 3] = 1                                                   # a 1 after the response's padding starts
    bad[0, 4 + 2] = 0
    with pytest.raises(K.BatchError, match=r"row 0, response column 3: attention_mask is 1 after a 0"):
        from_verl_batch({**d, "attention_mask": bad})
    rm = d["response_mask"].clone()
    rm[1, 3] = 1
    with pytest.raises(K.BatchError, match=r"row 1, response column 3: response_mask is 1 on padding"):
        from_verl_batch({**d, "response_mask": rm})
    empty = d["attention_mask"].clone()
    empty[1, 4:] = 0
    with pytest.raises(K.BatchError, match=r"row 1: empty response"):
        from_verl_batch({**d, "attention_mask": empty})
    with pytest.raises(K.BatchError, match=r"expected a mapping of tensors"):
        from_verl_batch([1, 2])


# ---------------------------------------------------------------------------------------------- TRL dump
def test_trl_dump_round_trip(tmp_path):
    b = _batch()
    path = tmp_path / "trl.pt"
    torch.save(to_trl_batch(b), path)
    back = load_trl_dump(path)
    _same(b, back)
    assert load_any(path).completion_ids == b.completion_ids
    # only rollout log-probs (the usual dump): the student/teacher series are absent
    d = to_trl_batch(b)
    torch.save({k: d[k] for k in ("input_ids", "attention_mask", "labels", "rollout_logprobs")}, path)
    only = load_any(path)
    assert only.rollout_logprobs == back.rollout_logprobs and only.student_logprobs is None and only.teacher_logprobs is None


def test_trl_dump_errors(tmp_path):
    path = tmp_path / "trl.pt"
    d = to_trl_batch(_batch())
    torch.save({k: v for k, v in d.items() if k != "labels"}, path)
    with pytest.raises(K.BatchError, match=r"trl.pt: TRL batch: missing key 'labels'"):
        load_trl_dump(path)
    torch.save(d, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(K.BatchError, match=r"trl.pt: cannot read as a torch file .*truncated"):
        load_trl_dump(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(K.BatchError, match=r"expected a dict of tensors, got list"):
        load_trl_dump(path)
    with pytest.raises(K.BatchError, match=r"no such file"):
        load_trl_dump(tmp_path / "nope.pt")


# ---------------------------------------------------------------------------------------------- load_any
def _request_outputs(b: K.Batch) -> list:
    lp = lambda x: SimpleNamespace(logprob=x, rank=1, decoded_token=None)  # noqa: E731
    return [SimpleNamespace(prompt_token_ids=p, outputs=[SimpleNamespace(
        token_ids=c, finish_reason="stop", logprobs=[{t: lp(v if v is not None else -9.0)} for t, v in zip(c, r)])])
        for p, c, r in zip(b.prompt_ids, b.completion_ids, b.rollout_logprobs)]


def _openai(b: K.Batch) -> list[dict]:
    return [{"choices": [{"token_ids": c, "finish_reason": "length", "logprobs": {"token_logprobs": r}}]}
            for c, r in zip(b.completion_ids, b.rollout_logprobs)]


def test_load_any_every_format(tmp_path):
    b = _batch()
    K.write_jsonl(b, tmp_path / "d.jsonl")
    torch.save(to_trl_batch(b), tmp_path / "trl.pt")
    torch.save(to_verl_batch(b), tmp_path / "verl.pth")
    with (tmp_path / "out.pkl").open("wb") as f:
        pickle.dump(_request_outputs(b), f)
    (tmp_path / "a.json").write_text(json.dumps({"prompt_ids": b.prompt_ids, "responses": _openai(b),
                                                 "sampling": {"temperature": 0.7}}))
    (tmp_path / "b.json").write_text(json.dumps([{"prompt_ids": p, "response": r} for p, r in zip(b.prompt_ids, _openai(b))]))
    assert [detect_format(tmp_path / n) for n in ("d.jsonl", "trl.pt", "verl.pth", "out.pkl", "a.json")] == \
        ["jsonl", "trl", "verl", "vllm", "openai"]
    _same(b, load_any(tmp_path / "d.jsonl"))
    _same(b, load_any(tmp_path / "trl.pt"))
    _same(b, load_any(tmp_path / "verl.pth", format="verl"))
    vl = load_any(tmp_path / "out.pkl", allow_pickle=True)
    assert vl.completion_ids == b.completion_ids and vl.finish_reasons == ["stop"] * 3
    assert vl.rollout_logprobs[2][3] == -9.0 and vl.rollout_logprobs[1] == b.rollout_logprobs[1]
    for name in ("a.json", "b.json"):
        oa = load_any(tmp_path / name)
        assert oa.prompt_ids == b.prompt_ids and oa.rollout_logprobs == b.rollout_logprobs, name
    assert load_any(tmp_path / "a.json").sampling.temperature == 0.7
    # explicit format beats the suffix; a wrong one names what is missing
    (tmp_path / "d.txt").write_text((tmp_path / "d.jsonl").read_text())
    assert load_any(tmp_path / "d.txt", format="jsonl").size == 3
    with pytest.raises(K.BatchError, match=r"cannot tell the format from the suffix '.txt'"):
        load_any(tmp_path / "d.txt")
    with pytest.raises(K.BatchError, match=r"verl.pth: TRL batch: missing key 'input_ids'"):
        load_any(tmp_path / "verl.pth", format="trl")
    with pytest.raises(K.BatchError, match=r"unknown format 'csv'"):
        load_any(tmp_path / "d.jsonl", format="csv")


def test_prompt_ids_from_the_response(tmp_path):
    b = _batch()
    recs = [{"response": {"choices": [{**r["choices"][0], "prompt_token_ids": p}]}} for p, r in zip(b.prompt_ids, _openai(b))]
    (tmp_path / "c.json").write_text(json.dumps(recs))
    assert load_any(tmp_path / "c.json").prompt_ids == b.prompt_ids
    del recs[1]["response"]["choices"][0]["prompt_token_ids"]
    (tmp_path / "c.json").write_text(json.dumps(recs))
    with pytest.raises(K.BatchError, match=r"c.json: item 1: missing key 'prompt_ids'"):
        load_any(tmp_path / "c.json")


def test_truncated_and_bad_files_give_clear_errors(tmp_path):
    b = _batch()
    (tmp_path / "a.json").write_text(json.dumps({"prompt_ids": b.prompt_ids, "responses": _openai(b)}, indent=1))
    text = (tmp_path / "a.json").read_text()
    (tmp_path / "a.json").write_text(text[: len(text) // 2])
    with pytest.raises(K.BatchError, match=r"a.json: line \d+, column \d+: not valid JSON .*truncated"):
        load_any(tmp_path / "a.json")
    (tmp_path / "k.json").write_text(json.dumps({"prompt_ids": b.prompt_ids}))
    with pytest.raises(K.BatchError, match=r"k.json: missing key 'responses'"):
        load_any(tmp_path / "k.json")
    (tmp_path / "r.json").write_text(json.dumps({"prompt_ids": b.prompt_ids, "responses": _openai(b)[:2]}))
    with pytest.raises(K.BatchError, match=r"r.json: 3 prompts but 2 responses"):
        load_any(tmp_path / "r.json")
    with (tmp_path / "out.pkl").open("wb") as f:
        pickle.dump(_request_outputs(b), f)
    data = (tmp_path / "out.pkl").read_bytes()
    (tmp_path / "out.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(K.BatchError, match=r"out.pkl: cannot unpickle .*truncated"):
        load_any(tmp_path / "out.pkl", allow_pickle=True)
    with (tmp_path / "x.pkl").open("wb") as f:
        pickle.dump([{"not": "a RequestOutput"}], f)
    with pytest.raises(K.BatchError, match=r"x.pkl: item 0 is a dict without prompt_token_ids"):
        load_any(tmp_path / "x.pkl", allow_pickle=True)
    K.write_jsonl(b, tmp_path / "d.jsonl")
    text = (tmp_path / "d.jsonl").read_text()
    (tmp_path / "d.jsonl").write_text(text[:-15])
    with pytest.raises(K.BatchError, match=r"d.jsonl: line 3 is not valid JSON .*truncated"):
        load_any(tmp_path / "d.jsonl")
    torch.save({"foo": torch.zeros(2)}, tmp_path / "f.pt")
    with pytest.raises(K.BatchError, match=r"f.pt: cannot tell the layout from the keys \['foo'\]"):
        load_any(tmp_path / "f.pt")


def test_real_vllm_request_outputs_pickle(tmp_path):
    from vllm.outputs import CompletionOutput, RequestOutput

    try:
        from vllm.logprobs import Logprob
    except ImportError:  # older layout
        from vllm.sequence import Logprob
    b = _batch(mask=False)
    outs = []
    for i, (p, c, r) in enumerate(zip(b.prompt_ids, b.completion_ids, b.rollout_logprobs)):
        steps = [{t: Logprob(logprob=v if v is not None else -9.0, rank=1)} for t, v in zip(c, r)]
        comp = CompletionOutput(index=0, text="", token_ids=c, cumulative_logprob=None, logprobs=steps, finish_reason="stop")
        outs.append(RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=p, prompt_logprobs=None,
                                  outputs=[comp], finished=True))
    with (tmp_path / "real.pkl").open("wb") as f:
        pickle.dump({"outputs": outs, "sampling": {"temperature": 1.0, "engine": "vllm"}}, f)
    with pytest.raises(K.BatchError, match=r"real.pkl: not read: a pickle .*names vllm\.outputs\.RequestOutput.*--allow-pickle"):
        load_any(tmp_path / "real.pkl")                            # the safe default: refused, and says what it is
    assert detect_format(tmp_path / "real.pkl") == "vllm"          # recognised from its opcodes, nothing run
    got = load_any(tmp_path / "real.pkl", allow_pickle=True)
    assert got.completion_ids == b.completion_ids and got.prompt_ids == b.prompt_ids
    assert got.rollout_logprobs[0] == pytest.approx(b.rollout_logprobs[0])
    assert got.sampling.engine == "vllm"


def test_batch_tensors_are_cached_but_returned_fresh():
    b = _batch()
    s = b.series("rollout_logprobs", torch.float64)
    s[:] = 0.0                                                    # a caller mutating its copy
    again = b.series("rollout_logprobs", torch.float64)
    assert again[0, 0].item() == pytest.approx(-0.1) and torch.isnan(again[2, 3]) and torch.isnan(again[1, 1])
    v = b.valid()
    v[:] = False
    assert b.valid().tolist() == [[True, True, True, False, False], [True, False, False, False, False],
                                  [True, False, True, True, True]]
    assert b.tokens(pad_id=-1)[1].tolist() == [14, -1, -1, -1, -1] and b.tokens()[1].tolist() == [14, 0, 0, 0, 0]
    changed = b.with_series("rollout_logprobs", [[-1.0] * n for n in b.lengths])
    assert changed.series("rollout_logprobs")[0, 0].item() == -1.0   # a new batch starts a new cache
    assert b == _batch()                                               # the cache takes no part in equality
