"""Kept sets (top-p / top-k): ``kept_logmass`` while scoring the student (iwopd_kit/engines/scoring.py) and vLLM's
``SamplingMask`` on ``CompletionOutput`` (iwopd_kit/formats/vllm.py), on the bundled tiny student."""

from __future__ import annotations

import pickle

import pytest
import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.formats import load_any
from iwopd_kit.engines.scoring import completion_logits, kept_logmass, score_batch

T, TOP_P = 1.5, 0.9


@pytest.fixture(scope="module")
def student():
    return K.load_model(toy.STUDENT_DIR)


@pytest.fixture(scope="module")
def rows(tokenizer):
    """6 held-out prompts and the first 12 tokens of their solutions (a mixed-length batch)."""
    prompts = toy.load_prompts(toy.EVAL_PROMPTS)[:6]
    p = [tokenizer(x)["input_ids"] for x in prompts]
    c = [tokenizer(toy.solve(x))["input_ids"][1:][: 6 + 2 * i] for i, x in enumerate(prompts)]
    return p, c


def by_hand(student, batch: K.Batch):
    """Per row and token: (kept ids of the nucleus at T / TOP_P, the processed log-prob over it plus y)."""
    with torch.no_grad():
        probs = torch.softmax(completion_logits(student, batch).double() / T, -1)
    kept, processed = [], []
    for b, ids in enumerate(batch.completion_ids):
        k_row, p_row = [], []
        for j, y in enumerate(ids):
            p_sort, idx = probs[b, j].sort(descending=True)
            k = idx[(torch.cumsum(p_sort, 0) - p_sort) <= TOP_P].tolist()
            k_row.append(k)
            p_row.append(float(torch.log(probs[b, j, y] / probs[b, j, sorted(set(k) | {y})].sum())))
        kept.append(k_row)
        processed.append(p_row)
    return kept, processed


def test_whole_vocabulary_kept_set_has_zero_logmass(student, rows):
    p, c = rows
    V = student.config.vocab_size
    for sampling in (None, K.SamplingSettings(temperature=0.7)):
        b = K.Batch(prompt_ids=p, completion_ids=c, kept_ids=[[list(range(V))] * len(r) for r in c], sampling=sampling)
        s = score_batch(b, student=student, temperature=1.0)
        klm = s.series("kept_logmass", torch.float64)[s.valid()]
        assert klm.numel() == sum(map(len, c)) and klm.abs().max() < 1e-6
        assert s.scoring["kept_logmass"] == (0.7 if sampling else 1.0)


def test_nucleus_of_the_model_itself_gives_the_processed_logprob(student, rows):
    p, c = rows
    b = K.Batch(prompt_ids=p, completion_ids=c, sampling=K.SamplingSettings(temperature=T, top_p=TOP_P))
    kept, processed = by_hand(student, b)
    assert any(len(k) > 1 for r in kept for k in r) and any(len(k) == 1 for r in kept for k in r)
    b = b.replace(kept_ids=kept, rollout_logprobs=processed)
    for per_pass in (None, 2):
        s = score_batch(b, student=student, temperature=T, rows_per_pass=per_pass)
        assert s.scoring["kept_logmass"] == T
        lhs = s.series("student_logprobs", torch.float64) - s.series("kept_logmass", torch.float64)
        gap = (lhs - s.series("rollout_logprobs", torch.float64))[s.valid()]
        assert gap.numel() == sum(map(len, c)) and gap.abs().max() < 1e-6
        assert (s.series("kept_logmass")[s.valid()] <= 1e-6).all()
    # the student scored at another temperature: the kept mass stays at the sampling temperature
    s1 = score_batch(b, student=student, temperature=1.0)
    assert s1.series("kept_logmass").nan_to_num().equal(s.series("kept_logmass").nan_to_num())


def test_sampled_token_outside_the_set_is_added(student, rows):
    p, c = rows
    b = K.Batch(prompt_ids=p[:1], completion_ids=c[:1])
    with torch.no_grad():
        z = completion_logits(student, b)
    y = c[0][0]
    other = [t for t in range(student.config.vocab_size) if t != y][:3]
    got = kept_logmass(z, b.tokens(), [[other] + [None] * (len(c[0]) - 1)], temperature=1.0)
    lp = torch.log_softmax(z[0, 0].double(), -1)
    assert got[0, 0].item() == pytest.approx(torch.logsumexp(lp[other + [y]], 0).item(), abs=1e-9)
    assert torch.isnan(got[0, 1:]).all()                       # not recorded: no value


def test_no_kept_logmass_without_kept_sets_or_without_a_model(student, rows):
    p, c = rows
    plain = score_batch(K.Batch(prompt_ids=p, completion_ids=c), student=student)
    assert not plain.has("kept_logmass")
    b = K.Batch(prompt_ids=p, completion_ids=c, kept_ids=[[None] * len(r) for r in c])
    given = score_batch(b, student_logprobs=plain.series("student_logprobs"))
    assert given.has("student_logprobs") and not given.has("kept_logmass")
    assert torch.isnan(score_batch(b, student=student).series("kept_logmass")).all()


def test_kept_id_outside_the_vocabulary_is_named():
    z = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match=r"row 0, position 1: kept id 7 is outside the vocabulary \[0, 4\)"):
        kept_logmass(z, torch.zeros(1, 2, dtype=torch.long), [[[0], [1, 7]]])


# ------------------------------------------------------------------------- vLLM's SamplingMask
def request_outputs(p, c, kept, processed, chunks: int = 1):
    """``RequestOutput``s built with vLLM's classes; with ``chunks`` > 1, streamed deltas merged by
    ``RequestOutput.add(aggregate=True)`` (vLLM's own concatenation of ``SamplingMask.token_ids``)."""
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput, SamplingMask

    outs = []
    for i, (prompt, ids, k, v) in enumerate(zip(p, c, kept, processed)):
        cut = [round(n * len(ids) / chunks) for n in range(chunks + 1)]
        parts = []
        for a, e in zip(cut, cut[1:]):
            steps = [{t: Logprob(logprob=x, rank=1)} for t, x in zip(ids[a:e], v[a:e])]
            comp = CompletionOutput(index=0, text="", token_ids=ids[a:e], cumulative_logprob=None, logprobs=steps,
                                    sampling_mask=SamplingMask([list(s) for s in k[a:e]]),
                                    finish_reason="length" if e == len(ids) else None)
            parts.append(RequestOutput(request_id=str(i), prompt=None, prompt_token_ids=prompt, prompt_logprobs=None,
                                       outputs=[comp], finished=e == len(ids)))
        for part in parts[1:]:
            parts[0].add(part, aggregate=True)
        outs.append(parts[0])
    return outs


def test_request_outputs_carry_the_sampling_mask(student, rows, tmp_path):
    p, c = rows
    kept, processed = by_hand(student, K.Batch(prompt_ids=p, completion_ids=c))
    sampling = K.SamplingSettings(temperature=T, top_p=TOP_P, logprobs_mode="processed_logprobs", engine="vllm")
    outs = request_outputs(p, c, kept, processed, chunks=3)
    assert outs[0].outputs[0].sampling_mask.token_ids == kept[0]       # vLLM merged the streamed chunks
    b = K.from_request_outputs(outs, sampling=sampling)
    assert b.kept_ids == kept and b.completion_ids == c
    s = score_batch(b, student=student, temperature=T)
    gap = (s.series("student_logprobs", torch.float64) - s.series("kept_logmass", torch.float64)
           - s.series("rollout_logprobs", torch.float64))[s.valid()]
    assert gap.abs().max() < 1e-6
    with (tmp_path / "outs.pkl").open("wb") as f:
        pickle.dump({"outputs": outs, "sampling": sampling.to_dict()}, f)
    assert load_any(tmp_path / "outs.pkl", allow_pickle=True).kept_ids == kept


def test_sampling_mask_absent_or_malformed(rows):
    from vllm.outputs import SamplingMask

    p, c = rows
    processed = [[-0.5] * len(r) for r in c]
    kept = [[[t] for t in r] for r in c]
    outs = request_outputs(p, c, kept, processed)
    outs[1].outputs[0].sampling_mask = None                   # not requested for this one
    b = K.from_request_outputs(outs)
    assert b.kept_ids[1] is None and b.kept_ids[0] == kept[0]
    for o in outs:
        o.outputs[0].sampling_mask = None
    assert K.from_request_outputs(outs).kept_ids is None
    outs[2].outputs[0].sampling_mask = SamplingMask(kept[2][:-1])
    with pytest.raises(K.BatchError, match=rf"row 2: sampling_mask.token_ids has {len(c[2]) - 1} entries for "
                                           rf"{len(c[2])} completion tokens"):
        K.from_request_outputs(outs)
    outs[2].outputs[0].sampling_mask = SamplingMask([[t] for t in c[2][:-1]] + [[]])
    with pytest.raises(K.BatchError, match=rf"row 2, position {len(c[2]) - 1}: kept_ids is empty"):
        K.from_request_outputs(outs)
