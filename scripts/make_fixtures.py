"""Regenerate data/fixtures/: real vLLM rollouts of the tiny student, scored by the student and the
teacher, then broken the way each failure class (docs/method.md, failure classes A-M) breaks in practice.

    source scripts/env.sh && .venv/bin/python scripts/make_fixtures.py

Deterministic: fixed prompts (held-out, mixed prompt lengths), per-request vLLM seeds, fixed torch
seeds. One small JSONL file per class plus ``healthy_*.jsonl``. Every row's ``meta["fixture"]``
records what was done (identical in every row): ``name``, ``kind`` (the class, None when healthy),
``what`` (in words), ``expect`` (list of ``[row, position]`` the breakage put at; ``null`` for a
batch-level defect) and whatever extra input the check needs (``num_items``, ``reduction``,
tokenizer dirs relative to the repo root). The expectations come from what this script did, never
from running the detector.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import torch

import iwopd_kit as K
from iwopd_kit import toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS
from iwopd_kit.batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS
from research import REPO_ROOT

ROOT = REPO_ROOT
OUT = ROOT / "data" / "fixtures"
SEED = 0
MAX_TOKENS = ROLLOUT_MAX_TOKENS
N_PER_TERMS = 3        # prompts per number of terms (3..6): 12 rows, prompt lengths 7, 9, 11, 13 (BOS included)


def pick_prompts() -> list[str]:
    """The first N_PER_TERMS held-out prompts of each length, interleaved (mixed lengths in every stretch)."""
    by_terms: dict[int, list[str]] = {n: [] for n in range(toy.MIN_TERMS, toy.MAX_TERMS + 1)}
    for p in toy.load_prompts(toy.EVAL_PROMPTS):
        n = len(toy.parse_prompt(p))
        if len(by_terms[n]) < N_PER_TERMS:
            by_terms[n].append(p)
    return [by_terms[n][i] for i in range(N_PER_TERMS) for n in sorted(by_terms)]


def describe(batch: K.Batch, name: str, kind: str | None, what: str, expect, **extra) -> K.Batch:
    info = {"name": name, "kind": kind, "what": what, "expect": expect, **extra}
    meta = [dict(m or {}, fixture=info) for m in (batch.meta or [{}] * batch.size)]
    return batch.replace(meta=meta)


def save(batch: K.Batch, name: str) -> None:
    K.write_jsonl(batch, OUT / f"{name}.jsonl")
    print(f"  {name}.jsonl: {batch.size} rows, prompt lengths {sorted(set(batch.prompt_lengths))}, "
          f"{sum(batch.lengths)} tokens", flush=True)


def rows_of(t: torch.Tensor, lengths: list[int]) -> list[list[float | None]]:
    return K.batch.ragged_from_padded(t, lengths)


def main() -> None:
    torch.manual_seed(SEED)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    tok = K.load_tokenizer(toy.STUDENT_DIR)
    texts = pick_prompts()
    prompts = [tok(p)["input_ids"] for p in texts]
    student, teacher = K.load_model(toy.STUDENT_DIR), K.load_model(toy.TEACHER_DIR)
    raw = K.VLLMEngine(toy.STUDENT_DIR, logprobs_mode="raw_logprobs")
    proc = K.VLLMEngine(toy.STUDENT_DIR, logprobs_mode="processed_logprobs")

    def sample(engine, T=1.0, top_p=1.0, max_tokens=MAX_TOKENS, ps=prompts, seed=SEED):
        return K.rollout(engine, ps, temperature=T, top_p=top_p, max_tokens=max_tokens, seed=seed)

    def scored(batch, T=1.0, teacher_T=1.0):
        b = K.score_batch(batch, student=student, temperature=T)
        return K.score_batch(b, teacher=teacher, temperature=teacher_T)

    base = scored(sample(raw))
    B = base.size
    print(f"prompts: {texts}")

    # ------------------------------------------------------------------------------------ healthy
    save(describe(base, "healthy_fp32_t1", None, "float32 vLLM raw log-probs at T=1, student/teacher scored "
                  "in float32 at T=1", []), "healthy_fp32_t1")
    t07 = scored(sample(proc, T=0.7), T=0.7, teacher_T=0.7)
    save(describe(t07, "healthy_processed_t07", None, "vLLM processed_logprobs at T=0.7 (top_p=1), student and "
                  "teacher scored at T=0.7", []), "healthy_processed_t07")
    bf16_note = None
    try:
        bf = K.VLLMEngine(toy.STUDENT_DIR, dtype="bfloat16", logprobs_mode="raw_logprobs")
        hb = scored(sample(bf))
        save(describe(hb, "healthy_bf16", None, "vLLM bfloat16 raw rollouts at T=1 vs float32 student / teacher "
                      "scoring: rounding only", []), "healthy_bf16")
    except Exception as e:   # say so in the report / calibration doc
        bf16_note = f"{type(e).__name__}: {e}"
        print(f"  bf16 vLLM failed on this backend: {bf16_note}", flush=True)

    # ------------------------------------------------------------------------------ A: offset
    buggy = K.formats.trl.trl_prefix_fix_slice(K.to_trl_batch(base), base.rollout_logprobs, pad_value=0.0)
    off = base.with_series(ROLLOUT_LOGPROBS, buggy)
    pmin = min(base.prompt_lengths)
    shifts = [p - pmin for p in base.prompt_lengths]
    save(describe(off, "offset", "offset", "TRL review bug 1: rollout log-probs stored from column 0, read back "
                  "from the shortest prompt (trl_prefix_fix_slice, pad_value=0.0): row b pairs token j with "
                  "log-prob j + d_b", [[b, 0] for b in range(B) if shifts[b] > 0], shift_per_row=shifts), "offset")

    # ------------------------------------------------------------------- B: missing token ids
    holes = {1: [3, 4], 4: [0], 9: [base.lengths[9] - 1]}
    roll = [list(r) for r in base.rollout_logprobs]
    for b, js in holes.items():
        for j in js:
            roll[b][j] = None
    miss = base.replace(rollout_logprobs=roll)
    save(describe(miss, "missing_token_ids", "missing_token_ids", "rollout log-probs dropped to null (the sampled id "
                  "was not among the returned ids) at known positions", [[b, min(js)] for b, js in holes.items()],
                  dropped={str(b): js for b, js in holes.items()}), "missing_token_ids")

    # ------------------------------------------------------------------- C: teacher coverage
    teach = [list(r) for r in base.teacher_logprobs]
    gaps = {2: (5, float("-inf")), 6: (0, None), 10: (7, float("-inf"))}
    for b, (j, v) in gaps.items():
        teach[b][j] = v
    cov = base.replace(teacher_logprobs=teach)
    save(describe(cov, "teacher_coverage", "teacher_coverage", "teacher value missing (null) or a -inf sentinel on one "
                  "valid token in the middle of known rows", [[b, j] for b, (j, _) in gaps.items()]), "teacher_coverage")

    # --------------------------------------------------------------------------- H: temperature
    hot = scored(sample(raw, T=0.7), T=0.7, teacher_T=0.7)
    save(describe(hot, "temperature", "temperature", "vLLM raw_logprobs (untempered, T=1) of a T=0.7 rollout; the "
                  "student scored at T=0.7", None), "temperature")

    # --------------------------------------------------------------------- I: processed logprobs
    topp = scored(sample(proc, top_p=0.8))
    save(describe(topp, "processed_logprobs", "processed_logprobs", "vLLM processed_logprobs with top_p=0.8 at T=1 "
                  "(renormalised over the nucleus); the student scored over the full vocabulary at T=1", None),
         "processed_logprobs")

    # ----------------------------------------------------------------------- D: tokenizer mismatch
    tok_dir = OUT / "tokenizer_permuted"
    perm_tok = make_permuted_tokenizer(tok_dir)
    # the teacher reads the decoded text through its own (permuted) tokenizer: other ids, other values
    ids_t = [[perm_tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(i)) for i in p + c]
             for p, c in zip(base.prompt_ids, base.completion_ids)]
    retok = K.Batch(prompt_ids=[s[: len(p)] for s, p in zip(ids_t, base.prompt_ids)],
                    completion_ids=[s[len(p):] for s, p in zip(ids_t, base.prompt_ids)])
    tm = base.with_series(TEACHER_LOGPROBS, K.score(teacher, retok), temperature=1.0)
    save(describe(tm, "tokenizer_mismatch", "tokenizer_mismatch", "the teacher uses a tokenizer with the digit ids "
                  "permuted (data/fixtures/tokenizer_permuted, built with `tokenizers`): it scores the "
                  "re-tokenized text", None, student_tokenizer="data/models/student",
                  teacher_tokenizer="data/fixtures/tokenizer_permuted"), "tokenizer_mismatch")

    # ---------------------------------------------------------------------------------- E: BOS/EOS
    dbl_rows = [0, 5]
    ps = [tok(toy.BOS_TOKEN + t)["input_ids"] if b in dbl_rows else list(p)
          for b, (t, p) in enumerate(zip(texts, prompts))]
    cut = sample(raw, max_tokens=20, ps=ps)
    appended = [b for b in range(B) if cut.finish_reasons[b] == "length"][:3]
    comps = [c + [toy.EOS_ID] if b in appended else c for b, c in enumerate(cut.completion_ids)]
    rl = [r + [None] if b in appended else r for b, r in enumerate(cut.rollout_logprobs)]
    be = scored(cut.replace(completion_ids=comps, rollout_logprobs=rl))
    save(describe(be, "bos_eos", "bos_eos", "BOS doubled in the prompts of known rows (template '<s>' + "
                  "add_special_tokens=True); rows cut at max_tokens=20 got an EOS appended by hand with no "
                  "rollout log-prob (then scored by student and teacher)",
                  [[b, None] for b in dbl_rows] + [[b, len(comps[b]) - 1] for b in appended],
                  doubled_bos_rows=dbl_rows, appended_eos_rows=appended,
                  student_tokenizer="data/models/student"), "bos_eos")

    # ----------------------------------------------------------------------------------- F: padding
    pad_b, pad_note = left_padded_student(student, base)
    padded = base.with_series(STUDENT_LOGPROBS, pad_b, temperature=1.0)
    amt = [max(base.prompt_lengths) - p for p in base.prompt_lengths]
    moved = (padded.series(STUDENT_LOGPROBS, torch.float64) - base.series(STUDENT_LOGPROBS, torch.float64)).abs() > 1e-3
    first = [int(moved[b].to(torch.int8).argmax()) for b in range(B)]
    save(describe(padded, "padding", "padding", pad_note, [[b, first[b]] for b in range(B) if amt[b] > 0],
                  pad_amount=amt),
         "padding")

    # -------------------------------------------------------------------------------- G: truncation
    window = 28    # the teacher's max_length (prompt + completion)
    tt = [list(r) for r in base.teacher_logprobs]
    cut_rows = []
    short = K.Batch(prompt_ids=base.prompt_ids,
                    completion_ids=[c[: max(1, window - len(p))] for p, c in zip(base.prompt_ids, base.completion_ids)])
    tv = rows_of(K.score(teacher, short), short.lengths)
    for b in range(B):
        keep = window - base.prompt_lengths[b]
        if keep < base.lengths[b]:
            cut_rows.append([b, keep])
            tt[b] = tv[b][:keep] + [None] * (base.lengths[b] - keep)
    tr = base.replace(teacher_logprobs=tt)
    save(describe(tr, "truncation", "truncation", f"the teacher saw at most {window} tokens (prompt + completion): "
                  "scored on the truncated sequences, no value past its window", cut_rows, window=window), "truncation")

    # ---------------------------------------------------------------------------------- J: staleness
    new_student = one_adam_step(student, base)
    st = base.with_series(STUDENT_LOGPROBS, K.score(new_student, base), temperature=1.0)
    save(describe(st, "staleness", "staleness", "the trainer's student is one Adam step (OPD loss, lr 1e-3) ahead "
                  "of the policy vLLM sampled with; student log-probs rescored after the step", None, lr=1e-3),
         "staleness")

    # ------------------------------------------------------------------------------ K: normalisation
    N = sum(base.lengths)
    num_items = B * base.width     # counted over the padded [B, L] tensor, padding included, no grad accumulation
    save(describe(base, "normalisation", "normalisation", f"num_items counted over the padded tensor (B*L = {num_items}) "
                  f"instead of the {N} valid tokens, no gradient accumulation; reduction sequence_mean", None,
                  num_items=num_items, reduction="sequence_mean", valid_tokens=N), "normalisation")

    # ---------------------------------------------------------------------------------- L: ordering
    groups: dict[int, list[int]] = {}
    for b, n in enumerate(base.lengths):
        groups.setdefault(n, []).append(b)
    perm = list(range(B))
    for rows in groups.values():     # rotate rows within each group of equal completion length (rank regrouping)
        if len(rows) >= 2:
            for i, b in enumerate(rows):
                perm[b] = rows[(i + 1) % len(rows)]
    ordr = base.replace(rollout_logprobs=[base.rollout_logprobs[perm[b]] for b in range(B)])
    save(describe(ordr, "ordering", "ordering", "rollout series rows permuted relative to the rest (rows of equal "
                  "completion length rotated, as a wrong gather order does): rollout row b holds row perm[b]",
                  [[b, 0] for b in range(B) if perm[b] != b], perm=perm), "ordering")

    # ---------------------------------------------------------------------------------- M: numerics
    s16 = K.load_model(toy.STUDENT_DIR, dtype=torch.bfloat16)
    nb = base.with_series(STUDENT_LOGPROBS, K.score(s16, base).float(), temperature=1.0)
    gap = (nb.series(ROLLOUT_LOGPROBS, torch.float64) - nb.series(STUDENT_LOGPROBS, torch.float64)).abs()
    worst = torch.nan_to_num(gap, nan=-1.0)
    wb, wj = divmod(int(worst.argmax()), worst.shape[1])
    save(describe(nb, "numerics", "numerics", "the student scored in bfloat16 vs float32 rollouts", [[wb, wj]],
                  max_abs_gap=float(worst.max()), mean_abs_gap=float(gap[~gap.isnan()].mean())), "numerics")

    (OUT / "README.md").write_text(readme(bf16_note))
    total = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"data/fixtures: {total / 1024:.0f} KiB")
    assert total < 2 * 1024 * 1024, total


def make_permuted_tokenizer(path: Path):
    """The student's char-level WordLevel tokenizer with the ids of '0'..'9' permuted (specials unchanged)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    src = Tokenizer.from_file(str(toy.STUDENT_DIR / "tokenizer.json"))
    spec = json.loads(src.to_str())
    vocab = spec["model"]["vocab"]
    digits = [str(d) for d in range(10)]
    ids = [vocab[d] for d in digits]
    rot = ids[3:] + ids[:3]
    for d, i in zip(digits, rot):
        vocab[d] = i
    path.mkdir(parents=True, exist_ok=True)
    Tokenizer.from_str(json.dumps(spec)).save(str(path / "tokenizer.json"))
    shutil.copy(toy.STUDENT_DIR / "tokenizer_config.json", path / "tokenizer_config.json")
    return K.load_tokenizer(path)


@torch.no_grad()
def left_padded_student(model, batch: K.Batch) -> tuple[torch.Tensor, str]:
    """The student's log-probs recomputed under left padding with an attention mask and no position_ids.

    Returns ([B, L] series, what was done). The Llama student uses RoPE, whose scores depend only on
    relative positions, so shifting every position by the pad amount changes nothing but rounding;
    the note records the measured gap of that variant, and the fixture keeps the variant that does
    change values (the same left-padded batch with the attention mask dropped: pads attended).
    """
    B, P, L = batch.size, max(batch.prompt_lengths), batch.width
    ids = torch.zeros((B, P + L), dtype=torch.long)
    attn = torch.zeros_like(ids)
    for b, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        s = P - len(p)
        ids[b, s : s + len(p) + len(c)] = torch.tensor(p + c)
        attn[b, s : s + len(p) + len(c)] = 1
    idx = (P - 1 + torch.arange(L))[None, :].expand(B, -1)      # column P + j - 1 predicts token j

    def lp(logits):
        z = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))
        out = K.sampled_logprobs(z, batch.tokens())
        return out.masked_fill(~batch.padding_mask(), float("nan"))

    ref = batch.series(STUDENT_LOGPROBS, torch.float64)
    with_mask = lp(model(input_ids=ids, attention_mask=attn).logits).double()
    rope_gap = float(torch.nan_to_num((with_mask - ref).abs(), nan=0.0).max())
    no_mask = lp(model(input_ids=ids).logits)
    note = (f"left-padded batch, no position_ids: with the attention mask the max |gap| is {rope_gap:.2g} (RoPE is "
            "relative: harmless here); kept: the same left-padded batch scored without the attention mask and "
            "without position_ids (pad tokens attended, positions shifted by the pad amount)")
    return no_mask, note


def one_adam_step(model, batch: K.Batch):
    """A copy of the student after one Adam step (lr 1e-3) of the OPD loss on this batch."""
    import copy

    new = copy.deepcopy(model).train()
    torch.manual_seed(SEED)
    opt = torch.optim.Adam(new.parameters(), lr=1e-3)
    s = K.score(new, batch, grad=True)
    valid = batch.valid()
    res = K.opd_loss(s, batch.series(TEACHER_LOGPROBS).nan_to_num(0.0), valid,
                     rollout_logprobs=batch.series(ROLLOUT_LOGPROBS).nan_to_num(0.0))
    opt.zero_grad()
    res.loss.backward()
    opt.step()
    return new.eval()


def readme(bf16_note: str | None) -> str:
    lines = ["# Alignment-check fixtures", "",
             "Generated by `source scripts/env.sh && .venv/bin/python scripts/make_fixtures.py` (deterministic):",
             "real vLLM rollouts of the tiny student on 12 held-out prompts of 4 lengths, scored by the student and",
             "the teacher, then broken one class at a time. Each row's `meta.fixture` says what was done and where",
             "(`expect`: `[row, position]` pairs, `null` for a batch-level defect). Checked by `tests/test_fixtures.py`.",
             ""]
    for f in sorted(OUT.glob("*.jsonl")):
        fx = json.loads(f.open().readline())["meta"]["fixture"]
        lines.append(f"- `{f.name}` ({fx['kind'] or 'healthy'}): {fx['what']}")
    if bf16_note:
        lines += ["", f"bf16 vLLM failed on this backend: {bf16_note}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
