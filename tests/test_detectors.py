"""The detectors of classes D-G and J-L on synthetic batches whose defect is known by construction,
and the healthy counterparts that must raise nothing. Series are [B, L] in completion coordinates."""

from __future__ import annotations

import pytest
import torch

import iwopd_kit as K
from iwopd_kit.alignment import Context, Tolerances, detect_tokenizer_mismatch, detector

B, L, V = 6, 12, 50
BOS, EOS, PAD = 1, 2, 0


def detect(kind: str, batch: K.Batch, **inputs) -> list:
    """One registered detector on a fresh :class:`Context` of ``batch`` (``inputs``: the tokenizers,
    ``num_items``, ``reduction``), in isolation: what ``check_alignment`` runs for that class."""
    return detector(kind)(Context(batch, **inputs))


def _logprobs(seed: int, b: int = B, n: int = L) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits z [b, n, V], tokens y sampled from softmax(z) [b, n], their log-probs [b, n]."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, n, V, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(z, -1).reshape(-1, V), 1, generator=g).reshape(b, n)
    return z, y + 3, torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)   # ids >= 3: no BOS/EOS/PAD


def _batch(y, rollout, student, teacher=None, prompts=None, **kw) -> K.Batch:
    rows = y.shape[0]
    return K.Batch(prompt_ids=prompts or [[BOS, 5]] * rows, completion_ids=y.tolist(), rollout_logprobs=rollout.tolist(),
                   student_logprobs=student.tolist(),
                   teacher_logprobs=(student - 0.1 if teacher is None else teacher).tolist(), **kw)


class Tok:
    """A character-level stand-in for a HF tokenizer: get_vocab, special ids, encode/decode, chat template."""

    def __init__(self, chars: str = "0123456789+=,abc", bos=BOS, eos=EOS, pad=PAD, adds_bos=True, chat_template=None,
                 added=None, shift: int = 0):
        self.vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 + shift for i, c in enumerate(chars)}}
        self.bos_token_id, self.eos_token_id, self.pad_token_id, self.unk_token_id = bos, eos, pad, None
        self.adds_bos, self.chat_template = adds_bos, chat_template
        self.added = added if added is not None else {"<pad>": 0, "<s>": 1, "</s>": 2}

    def get_vocab(self):
        return dict(self.vocab)

    def get_added_vocab(self):
        return dict(self.added)

    def encode(self, text, add_special_tokens=True):
        ids = [self.vocab[c] for c in text]        # KeyError on an unknown char, like a WordLevel without UNK
        return ([self.bos_token_id] if add_special_tokens and self.adds_bos else []) + ids

    def decode(self, ids):
        inv = {i: t for t, i in self.vocab.items()}
        return "".join(inv[i] for i in ids)


# ----------------------------------------------------------------------------------------------- healthy
def test_healthy_batch_with_every_input_is_clean():
    _, y, lp = _logprobs(0)
    prompts = [[BOS, 5], [BOS, 5, 6, 7], [BOS], [BOS, 8, 9], [BOS, 5], [BOS, 6, 6, 6, 6]]   # unequal: padding is checked
    comps = [row + [EOS] for row in y.tolist()]
    ext = torch.cat([lp, torch.full((B, 1), -0.01, dtype=torch.float64)], 1)
    batch = K.Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=ext.tolist(), student_logprobs=ext.tolist(),
                    teacher_logprobs=(ext - 0.2).tolist(), finish_reasons=["stop"] * B,
                    meta=[{"policy_version": 7, "trainer_version": 7, "teacher_completion_length": L + 1}] * B)
    tok = Tok()
    report = K.check_alignment(batch, student_tokenizer=tok, teacher_tokenizer=Tok(), num_items=B * (L + 1),
                               reduction="token_mean")
    assert report.findings == [], report
    assert report.unchecked == []


def test_unchecked_lists_what_is_missing_and_why():
    batch = K.Batch(prompt_ids=[[BOS, 5]] * 2, completion_ids=[[4, 5, 6]] * 2, rollout_logprobs=[[-0.1, -0.2, -0.3]] * 2)
    report = K.check_alignment(batch)
    assert report.findings == []
    for kind in ("offset", "ordering", "padding", "temperature", "processed_logprobs", "numerics", "teacher_coverage",
                 "truncation", "tokenizer_mismatch", "bos_eos", "staleness", "normalisation"):
        assert kind in report.unchecked, kind
        assert report.unchecked_reasons[kind]
    assert "missing_token_ids" not in report.unchecked
    assert "needs rollout_logprobs and student_logprobs" in report.unchecked_reasons["offset"]
    assert "not checked: " in repr(report) and "normalisation (needs num_items or reduction)" in repr(report)


# ------------------------------------------------------------------------------------------- L: ordering
def test_reordered_rows_are_reported_with_the_permutation():
    _, y, lp = _logprobs(1)
    perm = [0, 3, 2, 1, 5, 4]                       # rollout row b holds row perm[b]
    rollout = lp[perm]
    report = K.check_alignment(_batch(y, rollout, lp))
    hits = report.by_kind("ordering")
    assert [(f.row, f.position, f.severity) for f in hits] == [(1, 0, "error"), (3, 0, "error"), (4, 0, "error"),
                                                               (5, 0, "error")]
    assert "1->3" in hits[0].message and "3->1" in hits[0].message and "a permutation" in hits[0].message
    assert "rollout row 4 carries the log-probs of row 5" in hits[2].message
    # ordering explains everything: no offset / numerics / temperature on top
    assert report.kinds == {"ordering"}


def test_ordering_needs_a_near_exact_match_of_another_row():
    _, y, lp = _logprobs(2)
    g = torch.Generator().manual_seed(9)
    noisy = lp + 0.5 * torch.randn(B, L, generator=g, dtype=torch.float64)     # large gaps, but no row matches another
    assert detect("ordering", _batch(y, noisy.clamp(max=0), lp)) == []
    assert detect("ordering", _batch(y, lp, lp)) == []


def test_regrouped_rows_say_so():
    _, y, lp = _logprobs(3)
    hits = detect("ordering", _batch(y, lp[[0, 2, 1, 3, 5, 4]], lp))
    assert sorted(f.row for f in hits) == [1, 2, 4, 5]
    dup = detect("ordering", _batch(y, lp[[2, 2, 2, 3, 4, 5]], lp))
    assert [f.row for f in dup] == [0, 1] and "regrouped" in dup[0].message


# ------------------------------------------------------------------------------------------- F: padding
def _padded_gap_batch(seed: int, prompt_lens: list[int], grow: float = 0.05):
    _, y, lp = _logprobs(seed)
    g = torch.Generator().manual_seed(seed + 100)
    pad = torch.tensor([max(prompt_lens) - p for p in prompt_lens], dtype=torch.float64)
    # left padding without position ids: the error grows with the pad amount, both signs
    student = lp + grow * pad[:, None] * (0.5 + torch.rand(B, L, generator=g, dtype=torch.float64)) \
        * torch.where(torch.rand(B, L, generator=g) < 0.5, -1.0, 1.0).double()
    prompts = [[BOS] + [5] * (p - 1) for p in prompt_lens]
    return _batch(y, lp, student.clamp(max=0), prompts=prompts), pad


def test_left_padding_gap_flags_the_padded_rows_only():
    prompt_lens = [4, 2, 4, 3, 1, 4]
    batch, pad = _padded_gap_batch(4, prompt_lens)
    report = K.check_alignment(batch)
    hits = report.by_kind("padding")
    assert [f.row for f in hits] == [1, 3, 4]
    assert all(f.position == 0 and f.severity == "error" for f in hits)
    assert "left-padded by 2 token(s)" in hits[0].message and "position_ids" in hits[0].message
    assert report.kinds == {"padding"}, report


def test_padding_position_is_the_first_gap():
    prompt_lens = [3, 1, 3, 3, 3, 3]
    batch, _ = _padded_gap_batch(5, prompt_lens)
    student = [list(r) for r in batch.student_logprobs]
    student[1][:4] = batch.rollout_logprobs[1][:4]              # the first 4 tokens agree
    hits = detect("padding", batch.replace(student_logprobs=student))
    assert [(f.row, f.position) for f in hits] == [(1, 4)]


def test_padding_not_claimed_when_unpadded_rows_disagree_or_gap_shrinks():
    batch, _ = _padded_gap_batch(6, [4, 2, 4, 3, 1, 4])
    student = [list(r) for r in batch.student_logprobs]
    student[0] = [v - 0.3 for v in batch.rollout_logprobs[0]]  # an unpadded row disagrees too
    assert detect("padding", batch.replace(student_logprobs=student)) == []
    same_len, _ = _padded_gap_batch(7, [3] * B)
    assert detect("padding", same_len) == []
    assert "padding" in K.check_alignment(same_len).unchecked
    # the gap shrinks as the pad grows: not this signature
    _, y, lp = _logprobs(8)
    lens = [4, 3, 2, 1, 4, 4]
    shrink = torch.tensor([0, 0.3, 0.2, 0.1, 0, 0], dtype=torch.float64)
    b = _batch(y, lp, (lp - shrink[:, None]), prompts=[[BOS] + [5] * (p - 1) for p in lens])
    assert detect("padding", b) == []


def test_padding_is_judged_at_the_batch_precision():
    # a healthy 4-row bf16 rollout of the tiny student (prompt lengths 13, 11, 9, 11; 8 tokens each): the one
    # unpadded row holds near-certain tokens (mean gap 5e-4, below `same`), the padded rows carry ordinary bf16
    # rounding (2e-3 .. 5e-3, above `same`), and the gap happens to grow with the pad: no padding bug
    _, y, lp = _logprobs(21, b=4, n=8)
    g = torch.Generator().manual_seed(5)
    sign = torch.where(torch.rand(4, 8, generator=g) < 0.5, -1.0, 1.0).double()
    scale = torch.tensor([[0.0] * 7 + [0.0039], [0.002] * 8, [0.005] * 8, [0.0025] * 8], dtype=torch.float64)
    prompts = [[BOS] + [5] * (p - 1) for p in (13, 11, 9, 11)]
    bf16 = [{"rollout_dtype": "bfloat16", "trainer_dtype": "float32"}] * 4
    healthy = _batch(y, lp + sign * scale, lp, prompts=prompts)
    for batch in (healthy, healthy.replace(meta=bf16)):
        report = K.check_alignment(batch)
        assert report.ok and report.kinds == {"numerics"}, report
    # a real padding bug in that bf16 batch: the padded rows' gap far beyond the unpadded rows' rounding
    bug = _batch(y, lp + sign * scale * torch.tensor([[1.0], [40.0], [40.0], [40.0]], dtype=torch.float64), lp,
                 prompts=prompts, meta=bf16)
    assert [(f.row, f.severity) for f in K.check_alignment(bug).by_kind("padding")] == [(1, "error"), (2, "error"),
                                                                                        (3, "error")]
    # at float32 a small padding gap (2e-3 .. 5e-3, the unpadded row exact to 1e-7) is still a padding error
    exact0 = torch.cat([torch.full((1, 8), 1e-7, dtype=torch.float64), scale[1:]])
    f32 = _batch(y, lp + sign * exact0, lp, prompts=prompts)
    assert [f.row for f in K.check_alignment(f32).by_kind("padding")] == [1, 2, 3]


# ---------------------------------------------------------------------------------------- G: truncation
def test_truncated_teacher_and_student_tails():
    _, y, lp = _logprobs(9)
    teacher = (lp - 0.1).tolist()
    teacher[2][8:] = [None] * (L - 8)                     # the teacher's window ended at token 8
    student = lp.tolist()
    student[4][10:] = [float("-inf")] * (L - 10)
    batch = K.Batch(prompt_ids=[[BOS]] * B, completion_ids=y.tolist(), rollout_logprobs=lp.tolist(),
                    student_logprobs=student, teacher_logprobs=teacher)
    hits = detect("truncation", batch)
    assert [(f.row, f.position, f.severity) for f in hits] == [(4, 10, "error"), (2, 8, "error")]
    assert "student log-probs stop at position 10: the last 2 of 12" in hits[0].message
    assert "teacher log-probs stop at position 8" in hits[1].message
    report = K.check_alignment(batch)
    assert {(f.kind, f.row) for f in report.by_kind("truncation")} == {("truncation", 2), ("truncation", 4)}
    # a masked-out tail is not a truncation
    mask = [[True] * L for _ in range(B)]
    mask[2][8:] = [False] * (L - 8)
    mask[4][10:] = [False] * (L - 10)
    assert detect("truncation", batch.replace(mask=mask)) == []


def test_a_single_hole_is_coverage_not_truncation():
    _, y, lp = _logprobs(10)
    teacher = (lp - 0.1).tolist()
    teacher[1][3] = None
    batch = _batch(y, lp, lp).replace(teacher_logprobs=teacher)
    assert detect("truncation", batch) == []
    assert [f.row for f in K.check_alignment(batch).by_kind("teacher_coverage")] == [1]


def test_truncation_from_meta_lengths():
    _, y, lp = _logprobs(11)
    meta = [{} for _ in range(B)]
    meta[1] = {"teacher_completion_length": 9}
    meta[3] = {"student_prompt_length": 1, "student_completion_length": L}
    hits = detect("truncation", _batch(y, lp, lp, meta=meta))
    assert [(f.row, f.position) for f in hits] == [(1, 9), (3, None)]
    assert "the teacher saw a completion of 9 tokens but the rollout's has 12" in hits[0].message
    assert "prompt of 1 tokens" in hits[1].message


# ----------------------------------------------------------------------------------------- J: staleness
def test_staleness_from_recorded_versions():
    _, y, lp = _logprobs(12)
    every = _batch(y, lp, lp, meta=[{"policy_version": 3, "trainer_version": 5}] * B)
    hits = K.check_alignment(every).by_kind("staleness")
    assert [(f.row, f.position, f.severity) for f in hits] == [(None, None, "error")]
    assert "policy_version 3" in hits[0].message and "version 5" in hits[0].message
    some = [{"policy_version": 5, "trainer_version": 5} for _ in range(B)]
    some[2] = {"policy_version": 4, "trainer_version": 5}
    assert [(f.row, f.severity) for f in detect("staleness", _batch(y, lp, lp, meta=some))] == [(2, "error")]


def test_staleness_from_the_data_is_a_warning():
    B2, L2 = 8, 48
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B2, L2, V, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(z, -1).reshape(-1, V), 1, generator=g).reshape(B2, L2)
    old = torch.log_softmax(z, -1).gather(-1, y[..., None]).squeeze(-1)              # the policy that sampled
    new_z = z + 0.5 * torch.randn(B2, L2, V, generator=g, dtype=torch.float64)          # the policy being trained
    new = torch.log_softmax(new_z, -1).gather(-1, y[..., None]).squeeze(-1)
    batch = K.Batch(prompt_ids=[[BOS]] * B2, completion_ids=(y + 3).tolist(), rollout_logprobs=old.tolist(),
                    student_logprobs=new.tolist())
    report = K.check_alignment(batch)
    assert [(f.kind, f.row, f.severity) for f in report.findings] == [("staleness", None, "warning")], report
    assert "rollout policy older than the trained policy?" in report.findings[0].message
    # equal recorded versions overrule the data: the gap is then left to the numerics detector
    same = batch.replace(meta=[{"policy_version": 1, "trainer_version": 1}] * B2)
    assert K.check_alignment(same).kinds == {"numerics"}


def test_zero_mean_noise_is_not_staleness():
    _, y, lp = _logprobs(13)
    g = torch.Generator().manual_seed(1)
    noisy = (lp + 0.02 * torch.randn(B, L, generator=g, dtype=torch.float64)).clamp(max=0)
    assert detect("staleness", _batch(y, noisy, lp)) == []


# ------------------------------------------------------------------------------------- K: normalisation
def test_num_items_and_reduction():
    lens = [3, 5, 8]
    batch = K.Batch(prompt_ids=[[BOS]] * 3, completion_ids=[[4] * n for n in lens])
    assert detect("normalisation", batch, num_items=16) == []
    more = detect("normalisation", batch, num_items=64)
    assert [(f.kind, f.row, f.severity) for f in more] == [("normalisation", None, "warning")]
    assert "num_items=64 but this batch has 16 valid tokens" in more[0].message
    assert "grad_accum_steps" in more[0].message
    accum = batch.replace(meta=[{"grad_accum_steps": 4}] * 3)
    assert detect("normalisation", accum, num_items=64) == []
    less = detect("normalisation", accum, num_items=10)
    assert less[0].severity == "warning" and "smaller than the 16 valid tokens" in less[0].message
    seq = detect("normalisation", batch, reduction="sequence_mean")
    assert [(f.severity, f.row) for f in seq] == [("info", None)]
    assert "shortest row (3 valid tokens) weighs 2.67x one in the longest (8)" in seq[0].message
    tok = detect("normalisation", batch, reduction="token_mean")
    assert tok[0].severity == "info" and "1/N = 1/16" in tok[0].message
    even = K.Batch(prompt_ids=[[BOS]] * 2, completion_ids=[[4] * 4] * 2)
    assert detect("normalisation", even, reduction="sequence_mean") == []
    with pytest.raises(ValueError, match="reduction must be one of"):
        detect("normalisation", batch, reduction="mean")
    report = K.check_alignment(batch, num_items=64, reduction="sequence_mean")
    assert [f.severity for f in report.by_kind("normalisation")] == ["warning", "info"]
    assert report.ok                       # warnings and infos never fail the check


# -------------------------------------------------------------------------------- D: tokenizer mismatch
def test_tokenizer_mismatch_facets():
    assert detect_tokenizer_mismatch(Tok(), Tok()) == []
    vocab = detect_tokenizer_mismatch(Tok(), Tok(chars="0123456789+=,abd"))
    assert vocab and all(f.kind == "tokenizer_mismatch" and f.row is None and f.position is None for f in vocab)
    assert "vocabularies differ on 2 token(s)" in vocab[0].message and "'c': student 18, teacher None" in vocab[0].message
    shifted = detect_tokenizer_mismatch(Tok(), Tok(shift=1))
    assert any("encodes differently" in f.message for f in shifted)
    special = detect_tokenizer_mismatch(Tok(), Tok(eos=0))
    assert [f.severity for f in special] == ["error"] and "eos_token_id student 2, teacher 0" in special[0].message
    added = detect_tokenizer_mismatch(Tok(), Tok(added={"<pad>": 0, "<s>": 1, "</s>": 2, "<tool>": 99}))
    assert len(added) == 1 and "added tokens differ" in added[0].message and "'<tool>'=99" in added[0].message
    chat = detect_tokenizer_mismatch(Tok(), Tok(chat_template="{{ messages }}"))
    assert [(f.severity, f.kind) for f in chat] == [("warning", "tokenizer_mismatch")]
    report = K.check_alignment(K.Batch(prompt_ids=[[BOS]], completion_ids=[[4]]), student_tokenizer=Tok(),
                               teacher_tokenizer=Tok(shift=1))
    assert not report.ok and "tokenizer_mismatch" not in report.unchecked


def _save_char_tokenizer(path, chars: str = "0123456789+=,") -> None:
    """A real HF fast tokenizer (one token per character, BOS added), saved like a model's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *chars])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=None))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tk.decoder = decoders.Fuse()
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(path)


def test_real_tokenizers(tmp_path):
    _save_char_tokenizer(tmp_path / "a")
    _save_char_tokenizer(tmp_path / "b")
    _save_char_tokenizer(tmp_path / "c", chars="0123456789=+,")          # '+' and '=' swap ids
    tok = K.load_tokenizer(tmp_path / "a")
    assert detect_tokenizer_mismatch(tok, K.load_tokenizer(tmp_path / "b")) == []
    swapped = detect_tokenizer_mismatch(tok, K.load_tokenizer(tmp_path / "c"))
    assert [f.severity for f in swapped] == ["error", "error"]
    assert "'+': student 13, teacher 14" in swapped[0].message and "encodes differently" in swapped[1].message
    changed = K.load_tokenizer(tmp_path / "b")
    changed.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert [f.severity for f in detect_tokenizer_mismatch(tok, changed)] == ["warning"]
    # BOS/EOS with the real tokenizer: it adds BOS, so a prompt without one is flagged
    batch = K.Batch(prompt_ids=[tok("7+5=")["input_ids"], tok("7+5=", add_special_tokens=False)["input_ids"]],
                    completion_ids=[[10, 2], [10, 2]], rollout_logprobs=[[-0.1, -0.2]] * 2, student_logprobs=[[-0.1, -0.2]] * 2)
    assert [(f.row, f.severity) for f in detect("bos_eos", batch, student_tokenizer=tok)] == [(1, "warning")]


# --------------------------------------------------------------------------------------- E: BOS / EOS
def test_bos_findings_at_the_prompt():
    _, y, lp = _logprobs(14)
    prompts = [[BOS, 5], [BOS, BOS, 5], [5, 6], [BOS], [BOS, 5], [BOS, 6]]
    hits = detect("bos_eos", _batch(y, lp, lp, prompts=prompts), student_tokenizer=Tok())
    assert [(f.row, f.position, f.severity) for f in hits] == [(1, None, "error"), (2, None, "warning")]
    assert "BOS twice" in hits[0].message and "add_special_tokens=False" in hits[0].message
    # a tokenizer that adds no BOS: a prompt without it is fine
    assert [f.row for f in detect("bos_eos", _batch(y, lp, lp, prompts=prompts), student_tokenizer=Tok(adds_bos=False))] == [1]


def _eos_batch(last_rollout: list, last_student: list | None = None, finish=None, extra=None):
    rows = len(last_rollout)
    comps = [[4, 5, 6, EOS] for _ in range(rows)]
    roll = [[-0.5, -0.4, -0.3, v] for v in last_rollout]
    stud = [[-0.5, -0.4, -0.3, v] for v in (last_student or [-0.2] * rows)]
    return K.Batch(prompt_ids=[[BOS]] * rows, completion_ids=comps, rollout_logprobs=roll, student_logprobs=stud,
                   finish_reasons=finish, **(extra or {}))


def test_eos_appended_by_hand():
    batch = _eos_batch([-0.2, None, 0.0, 0.0], [-0.2, -0.2, -2.0, -1e-7], finish=["stop", "stop", "stop", "stop"])
    hits = detect("bos_eos", batch, student_tokenizer=Tok())
    assert [(f.row, f.position, f.severity) for f in hits] == [(1, 3, "error"), (2, 3, "error")]
    assert "appended by hand" in hits[0].message and "exactly 0.0" in hits[1].message
    # exactly 0.0 with no student to compare: a warning
    no_student = batch.replace(student_logprobs=None)
    assert [(f.row, f.severity) for f in detect("bos_eos", no_student, student_tokenizer=Tok())] == [(1, "error"), (2, "warning"), (3, "warning")]
    length = _eos_batch([-0.2, -0.3], finish=["length", "stop"])
    hits = detect("bos_eos", length, student_tokenizer=Tok())
    assert [(f.row, f.position, f.severity) for f in hits] == [(0, 3, "warning")] and "'length'" in hits[0].message
    # a masked appended EOS does no harm
    masked = batch.replace(mask=[[True] * 4, [True, True, True, False], [True, True, True, False], [True] * 4])
    assert detect("bos_eos", masked, student_tokenizer=Tok()) == []


def test_tokens_after_eos_and_pad_equals_eos():
    comps = [[4, EOS, 5, 6], [4, 5, 6, EOS], [4, EOS, EOS, EOS]]
    vals = [[-0.1, -0.2, -0.3, -0.4]] * 3
    batch = K.Batch(prompt_ids=[[BOS]] * 3, completion_ids=comps, rollout_logprobs=vals, student_logprobs=vals)
    hits = detect("bos_eos", batch, student_tokenizer=Tok())
    assert [(f.row, f.position, f.severity) for f in hits] == [(0, 2, "error"), (2, 2, "error")]
    assert "2 valid token(s) follow the EOS at position 1" in hits[0].message
    masked = batch.replace(mask=[[True, True, False, False], [True] * 4, [True, True, False, False]])
    assert detect("bos_eos", masked, student_tokenizer=Tok()) == []
    pad_eos = detect("bos_eos", masked, student_tokenizer=Tok(pad=EOS))
    assert [(f.row, f.severity) for f in pad_eos] == [(None, "warning")] and "pad_token_id == eos_token_id" in pad_eos[0].message
    eos_masked = masked.replace(mask=[[True, True, False, False], [True, True, True, False], [True, True, False, False]])
    assert [(f.row, f.position) for f in detect("bos_eos", eos_masked, student_tokenizer=Tok(pad=EOS))] == [(None, None), (1, 3)]
    report = K.check_alignment(batch, student_tokenizer=Tok())
    assert {f.row for f in report.by_kind("bos_eos")} == {0, 2} and "bos_eos" not in report.unchecked


# ---------------------------------------------------------------------------------------- integration
def test_ordering_is_tried_before_offsets_and_numerics():
    _, y, lp = _logprobs(15)
    swapped = lp[[1, 0, 2, 3, 4, 5]]
    report = K.check_alignment(_batch(y, swapped, lp))
    assert sorted((f.kind, f.row) for f in report.findings) == [("ordering", 0), ("ordering", 1)]
    # an offset row beside a swap: each gets its own finding
    ext = torch.log_softmax(torch.randn(B, L + 2, V, generator=torch.Generator().manual_seed(3), dtype=torch.float64), -1)
    full = ext[..., 0]
    student = full[:, :L].clone()
    rollout = student[[1, 0, 2, 3, 4, 5]].clone()
    rollout[4] = full[4, 2:]
    report = K.check_alignment(_batch(y, rollout, student))
    assert sorted((f.kind, f.row) for f in report.findings) == [("offset", 4), ("ordering", 0), ("ordering", 1)]


def test_a_lag_that_pairs_too_few_tokens_is_no_offset():
    # 4-token rows of a healthy processed top_p 0.95 rollout (the random Qwen3 at 151,936 tokens, vLLM float32):
    # rollout = log(p / S), exactly 0.0 where a token is alone in the nucleus. Lag +3 pairs row 1's last rollout
    # value (0.0) with its first student value (-3.7e-5): one pair, 500x "better" than lag 0's mean |log S|.
    rollout = torch.tensor([[-1.3169, -0.3656, -0.3655, -0.1817], [0.0, -0.5012, -0.5239, 0.0],
                            [-0.0791, -0.0373, -0.8186, 0.0], [-2.2508, -1.0993, -0.4044, -0.5708]], dtype=torch.float64)
    student = torch.tensor([[-1.3553, -0.37742, -0.3943, -0.22237], [-3.7431e-05, -0.50703, -0.54694, -0.049167],
                            [-0.12181, -0.084188, -0.86913, -0.019443], [-2.283, -1.1457, -0.42848, -0.59986]],
                           dtype=torch.float64)
    y = torch.arange(16).reshape(4, 4) + 4
    top_p = K.SamplingSettings(temperature=1.0, top_p=0.95, logprobs_mode="processed_logprobs")
    report = K.check_alignment(_batch(y, rollout, student, sampling=top_p))
    assert report.ok and report.kinds == {"processed_logprobs"}, report
    best_k, e0, e_best = K.alignment.best_lags(_batch(y, rollout, student), max_lag=4)   # min_pairs=1: the old rule
    assert int(best_k[1]) == 3 and float(e_best[1]) * Tolerances().lag_gain < float(e0[1])
    # a real shift in a short row still pairs enough tokens: 6 tokens shifted by 2 compare 4 pairs
    ext = torch.log_softmax(torch.randn(2, 8, V, generator=torch.Generator().manual_seed(4), dtype=torch.float64), -1)[..., 0]
    student6, rollout6 = ext[:, :6].clone(), ext[:, :6].clone()
    rollout6[1] = ext[1, 2:]
    hits = K.check_alignment(_batch(torch.full((2, 6), 5), rollout6, student6)).by_kind("offset")
    assert [(f.row, f.severity) for f in hits] == [(1, "error")] and "shifted by +2" in hits[0].message, hits


def test_a_pooled_metric_over_a_handful_of_tokens_needs_more_than_its_noise_to_be_an_error():
    # a 4-row, 24-token bf16 batch: rounding of 0.01 and two rare tokens 0.6 off (a large-vocabulary bf16 tail)
    # put mean exp|Δ| at 1.078 > 1.05, within 2 standard errors (0.046) of the bound: a warning that says so
    def batch(rows: int, tails: int) -> K.Batch:
        sign = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(rows * 3).reshape(rows, 6)
        at = torch.linspace(0, rows * 6 - 1, tails).long()
        d = 0.01 * sign
        d.view(-1)[at] = 0.6 * sign.view(-1)[at]
        _, y, lp = _logprobs(30, b=rows, n=6)
        return _batch(y, lp - d, lp, meta=[{"rollout_dtype": "bfloat16", "trainer_dtype": "float32"}] * rows)

    small = K.check_alignment(batch(4, 2))
    assert small.metrics["mismatch/token_mult_prob_error"] > Tolerances().mult_prob_error
    (f,) = small.by_kind("numerics")
    assert small.ok and f.severity == "warning", small
    assert "within 2 standard errors" in f.message and "rollout bf16 vs trainer fp32" in f.message, f.message
    # a sixth of 240 tokens 0.6 off: mean exp|Δ| 1.145, far beyond its noise: an error
    wide = K.check_alignment(batch(40, 40)).by_kind("numerics")
    assert [x.severity for x in wide] == ["error"] and "by more than 2 standard errors" in wide[0].message, wide
    # the rule's one knob: with metric_se=0 the small batch is an error too
    assert not K.check_alignment(batch(4, 2), Tolerances(metric_se=0.0)).ok


def test_check_alignment_at_64x4096_finds_exactly_the_shifted_rows():
    """At the benchmark's size [64, 4096] (timed in benchmarks/bench_alignment.py): every 8th row shifted by
    two tokens is an offset finding with lag 2, and no other row is."""
    g = torch.Generator().manual_seed(0)
    Bb, Lb = 64, 4096
    s = -torch.rand(Bb, Lb + 2, generator=g, dtype=torch.float64) * 5
    r = s.clone()
    r[::8, :Lb] = s[::8, 2:]
    batch = K.Batch(prompt_ids=[[BOS]] * Bb, completion_ids=[[4] * Lb] * Bb, rollout_logprobs=r[:, :Lb].tolist(),
                    student_logprobs=s[:, :Lb].tolist(), teacher_logprobs=s[:, :Lb].tolist())
    report = K.check_alignment(batch)
    offsets = report.by_kind("offset")
    assert sorted(f.row for f in offsets) == list(range(0, Bb, 8)), offsets
    assert all(f.severity == "error" and "shifted by +2 token(s)" in f.message for f in offsets), offsets
    assert {f.row for f in report.findings if f.severity == "error"} == set(range(0, Bb, 8)), report


def test_tolerances_are_the_only_thresholds():
    _, y, lp = _logprobs(16)
    swapped = lp[[1, 0, 2, 3, 4, 5]]
    loose = Tolerances(same=10.0)
    assert K.check_alignment(_batch(y, swapped, lp), loose).findings == []
