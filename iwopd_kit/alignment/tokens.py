"""Tokenizer and BOS/EOS detectors: do the two sides read the same ids as the same text?

Class D (tokenizer mismatch: vocabularies, special ids, added tokens, an encode/decode round trip,
chat templates) and E (double or missing BOS, an EOS appended by hand, tokens after EOS,
pad == EOS). Both need tokenizers; neither reads the rollout-student gap.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS
from .context import Context
from .core import Finding
from .prompts import (
    dropped_special_findings, rows_read_differently, teacher_prompt_findings, thinking_mode_findings,
)
from .stops import stop_findings
from .tensors import at, first_true
from .zeros import lone_final_eos, placeholder_text, zero_placeholders


SAMPLE_TEXTS: tuple[str, ...] = (
    "The quick brown fox: 12+34=46, naïve café — ok?\n",
    "7+5=12,12+9=21,21+2=23",
)
"""Texts for the encode/decode round trip; the first one both tokenizers can encode is used."""


def _encode(tok: Any, text: str) -> list[int] | None:
    try:
        return [int(i) for i in tok.encode(text, add_special_tokens=False)]
    except Exception:   # a vocabulary without the characters (no UNK) cannot encode this text
        return None


def _decode(tok: Any, ids: list[int]) -> str | None:
    try:
        return tok.decode(ids)
    except Exception:
        return None


def detect_tokenizer_mismatch(student_tok: Any, teacher_tok: Any,
                              sample_texts: Sequence[str] = SAMPLE_TEXTS) -> list[Finding]:
    """Class D: the teacher must read the student's token ids as the same strings.

    Compares ``get_vocab()`` (the first differing tokens/ids are listed), the special ids
    (bos / eos / pad / unk), the added tokens, an encode/decode round trip of a sample text, and
    the chat templates (a warning). Batch-level findings (row and position None).
    """
    out: list[Finding] = []
    vs, vt = student_tok.get_vocab(), teacher_tok.get_vocab()
    if vs != vt:
        inf = math.inf
        diff = [t for t in set(vs) | set(vt) if vs.get(t) != vt.get(t)]
        diff.sort(key=lambda t: (min(vs.get(t, inf), vt.get(t, inf)), t))
        first = "; ".join(f"{t!r}: student {vs.get(t)}, teacher {vt.get(t)}" for t in diff[:5])
        out.append(Finding(
            "tokenizer_mismatch", None, None, "error",
            f"student and teacher vocabularies differ on {len(diff)} token(s) (sizes {len(vs)} vs {len(vt)}; first: "
            f"{first}): the teacher scores other strings than the student sampled; use a teacher that shares the "
            "student's tokenizer (TRL compares get_vocab() the same way)",
        ))
    special = [(n, getattr(student_tok, n, None), getattr(teacher_tok, n, None))
               for n in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")]
    special = [(n, a, b) for n, a, b in special if a != b]
    if special:
        out.append(Finding(
            "tokenizer_mismatch", None, None, "error",
            "special token ids differ: " + "; ".join(f"{n} student {a}, teacher {b}" for n, a, b in special)
            + ": BOS/EOS/padding mean different things on the two sides; align the special tokens (or the tokenizers)",
        ))
    added_s = student_tok.get_added_vocab() if callable(getattr(student_tok, "get_added_vocab", None)) else None
    added_t = teacher_tok.get_added_vocab() if callable(getattr(teacher_tok, "get_added_vocab", None)) else None
    if added_s is not None and added_t is not None and added_s != added_t:
        diff = sorted(set(added_s.items()) ^ set(added_t.items()), key=lambda kv: (kv[1], kv[0]))
        out.append(Finding(
            "tokenizer_mismatch", None, None, "error",
            f"added tokens differ ({len(added_s)} on the student, {len(added_t)} on the teacher; first differences: "
            f"{', '.join(f'{t!r}={i}' for t, i in diff[:5])}): add the same tokens, in the same order, to both",
        ))
    for text in sample_texts:
        ids_s, ids_t = _encode(student_tok, text), _encode(teacher_tok, text)
        if ids_s is None and ids_t is None:
            continue
        if ids_s != ids_t:
            out.append(Finding(
                "tokenizer_mismatch", None, None, "error",
                f"the text {text!r} encodes differently: student {ids_s if ids_s is None else ids_s[:12]}, teacher "
                f"{ids_t if ids_t is None else ids_t[:12]}: send the student's token ids to the teacher, never re-tokenized text",
            ))
        else:
            dec_s, dec_t = _decode(student_tok, ids_s), _decode(teacher_tok, ids_s)
            if dec_s != dec_t:
                out.append(Finding(
                    "tokenizer_mismatch", None, None, "error",
                    f"the same ids decode differently: student {dec_s!r}, teacher {dec_t!r}: the tokenizers' decoders "
                    "(byte fallback, normalisers) differ; use one tokenizer for both",
                ))
        break
    ct_s, ct_t = getattr(student_tok, "chat_template", None), getattr(teacher_tok, "chat_template", None)
    if ct_s != ct_t:
        size = lambda ct: "none" if ct is None else f"{len(str(ct))} chars"  # noqa: E731
        out.append(Finding(
            "tokenizer_mismatch", None, None, "warning",
            f"chat templates differ (student: {size(ct_s)}, teacher: {size(ct_t)}): a prompt formatted for one model "
            "reaches the other differently; format each prompt once with the student's template and send the same ids "
            "to the teacher",
        ))
    return out


def find_tokenizer_mismatch(ctx: Context) -> list[Finding]:
    """Class D over a context: :func:`detect_tokenizer_mismatch` of its two tokenizers, then per row.

    Per row: where the teacher's tokenizer reads a sampled id as other text (only when the
    vocabularies differ; :func:`~iwopd_kit.alignment.prompts.rows_read_differently`), and a teacher
    prompt (``meta["teacher_prompt_ids"]``) that is not the student's
    (:func:`~iwopd_kit.alignment.prompts.teacher_prompt_findings`).
    """
    out = detect_tokenizer_mismatch(ctx.student_tokenizer, ctx.teacher_tokenizer)
    if any(f.message.startswith("student and teacher vocabularies differ") for f in out):
        out += rows_read_differently(ctx)
    return out + teacher_prompt_findings(ctx)


# ------------------------------------------------------------------------------------- E: BOS / EOS
def _adds_bos(tok: Any) -> bool:
    """True when encoding a short text with special tokens puts BOS first."""
    bos = getattr(tok, "bos_token_id", None)
    if bos is None:
        return False
    texts = ["a", "0"]
    try:
        specials = {getattr(tok, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")}
        plain = sorted((i, t) for t, i in tok.get_vocab().items() if i not in specials)
        texts = [plain[0][1], *texts] if plain else texts
    except Exception:
        pass
    for text in texts:
        try:
            ids = list(tok.encode(text))
        except Exception:
            continue
        if ids:
            return int(ids[0]) == int(bos)
    return False


def find_bos_eos(ctx: Context) -> list[Finding]:
    """Class E: double or missing BOS, an EOS appended by hand, tokens after EOS, pad == EOS.

    Prompt findings have ``position`` None; completion findings name the completion position.
    An EOS counts as appended by hand when it ends the completion and has no rollout log-prob, or
    exactly 0.0 where the student's log-prob rules out a certain or nucleus-of-one token
    (:func:`~iwopd_kit.alignment.zeros.zero_placeholders`: under processed top-p a token with
    p >= top_p is alone in the nucleus and gets exactly 0.0, healthy), or when ``finish_reason`` is
    'length' (vLLM reports 'stop' for a sampled EOS). A 'stop' row that ends in no stop token with no
    stop string recorded is a warning (:func:`~iwopd_kit.alignment.stops.stop_findings`). Reads
    ``ctx.tokenizer`` (the student's, else the teacher's).
    """
    batch, tokenizer, tol = ctx.batch, ctx.tokenizer, ctx.tol
    bos, eos, pad = (getattr(tokenizer, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id"))
    out: list[Finding] = []
    if bos is not None:
        adds = _adds_bos(tokenizer)
        for b, p in enumerate(batch.prompt_ids):
            if len(p) >= 2 and p[0] == bos and p[1] == bos:
                out.append(Finding(
                    "bos_eos", b, None, "error",
                    f"the prompt starts with BOS twice ({bos}, {bos}): a template that already writes BOS was tokenized "
                    "with add_special_tokens=True; tokenize templated text with add_special_tokens=False",
                ))
            elif adds and (not p or p[0] != bos):
                out.append(Finding(
                    "bos_eos", b, None, "warning",
                    f"the prompt does not start with BOS ({bos}) although the tokenizer adds one: the rollout and the "
                    "trainer may have tokenized it differently; tokenize once and send the same ids to vLLM, the student "
                    "and the teacher",
                ))
    out += dropped_special_findings(ctx) + thinking_mode_findings(ctx) + stop_findings(ctx)
    if eos is None:
        return out
    tok, padm, valid = batch.tokens(pad_id=-1), batch.padding_mask(), batch.valid()
    is_eos = padm & (tok == eos)
    first = first_true(is_eos)
    after = valid & is_eos.any(1)[:, None] & (torch.arange(batch.width)[None, :] > first[:, None])
    for b in after.any(1).nonzero().flatten().tolist():
        out.append(Finding(
            "bos_eos", b, int(first[b]) + 1, "error",
            f"{int(after[b].sum())} valid token(s) follow the EOS at position {int(first[b])}: the completion goes on past "
            "EOS (a stop that was not honoured, or padding that counts); cut each completion at its first EOS and mask "
            "what follows",
        ))
    last = torch.tensor(batch.lengths) - 1
    ends = (at(tok, last) == eos) & at(valid, last)
    flagged: set[int] = set()
    if batch.has(ROLLOUT_LOGPROBS) and bool(ends.any()):
        r = at(batch.series(ROLLOUT_LOGPROBS, torch.float64), last)
        s = at(batch.series(STUDENT_LOGPROBS, torch.float64), last) if batch.has(STUDENT_LOGPROBS) else None
        # a 0.0 EOS that is the row's only placeholder; with more, the row's rollout series was padded (offset)
        placeholder = lone_final_eos(batch, zero_placeholders(batch, tol), eos) if s is not None else (r == 0.0)
        for b in (ends & r.isnan()).nonzero().flatten().tolist():
            flagged.add(b)
            out.append(Finding(
                "bos_eos", b, int(last[b]), "error",
                "the final EOS has no rollout log-prob: it was appended by hand (or stands for a stop string), not "
                "sampled; drop it from the completion or mask it out so that it gets no advantage",
            ))
        for b in (ends & placeholder).nonzero().flatten().tolist():
            flagged.add(b)
            said = (f"the student gives it {float(s[b]):.3g}; {placeholder_text(batch)}" if s is not None
                    else "no student value to compare")
            out.append(Finding(
                "bos_eos", b, int(last[b]), "error" if s is not None else "warning",
                f"the final EOS has a rollout log-prob of exactly 0.0 ({said}): a placeholder for an EOS appended by "
                "hand; drop the appended EOS or mask it out",
            ))
    if batch.finish_reasons is not None:
        for b in ends.nonzero().flatten().tolist():
            if batch.finish_reasons[b] == "length" and b not in flagged:
                out.append(Finding(
                    "bos_eos", b, int(last[b]), "warning",
                    "finish_reason is 'length' but the completion ends in EOS: an EOS was appended after the length "
                    "cut (a sampled EOS finishes with 'stop'); drop the appended EOS or mask it out",
                ))
    if pad is not None and pad == eos:
        out.append(Finding(
            "bos_eos", None, None, "warning",
            f"pad_token_id == eos_token_id ({eos}): masks built as ids != pad drop every generated EOS and padding looks "
            "like EOS; build masks from lengths / attention_mask and keep the generated EOS valid",
        ))
        if batch.mask is not None:
            reasons = batch.finish_reasons or [None] * batch.size
            masked = is_eos.any(1) & ~at(valid, first)
            for b in masked.nonzero().flatten().tolist():
                if reasons[b] in (None, "stop"):
                    sampled = reasons[b] == "stop"   # vLLM sampled this EOS: masking it is a bug, not a choice
                    out.append(Finding(
                        "bos_eos", b, int(first[b]), "error" if sampled else "warning",
                        f"the generated EOS (id {eos}) at position {int(first[b])} is masked out (pad == eos: a mask built as ids != pad_token_id drops it): the model never "
                        "learns to stop; build the mask from the completion lengths (attention_mask), not by token id"
                        + ("" if sampled else " (finish_reason unknown: if this EOS was appended, masking it is right)"),
                    ))
    return out


__all__ = ["SAMPLE_TEXTS", "detect_tokenizer_mismatch", "find_tokenizer_mismatch", "find_bos_eos"]
