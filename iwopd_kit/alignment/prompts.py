"""Per-row tokenizer and prompt findings of classes D and E on real (BPE, chat-template) tokenizers.

- :func:`rows_read_differently` (D): where the teacher's tokenizer reads a sampled id as other text.
- :func:`teacher_prompt_findings` (D): a teacher prompt (``meta["teacher_prompt_ids"]``) that is not
  the student's prompt, with the difference named: a ``<think>`` block on one side only, a system
  turn on one side only, BOS, or another chat template.
- :func:`dropped_special_findings` (E): a prompt that reads like a rendered chat template but holds
  none of the template's special tokens (they were dropped on the way to the engine).
- :func:`thinking_mode_findings` (E, warning): thinking-mode prompts answered without ``<think>``
  (``enable_thinking=False`` lost on the way to the trainer).
"""

from __future__ import annotations

from typing import Any

from .context import Context
from .core import Finding

THINK_TOKENS = ("<think>", "</think>")


def _inverse(tok: Any) -> dict[int, str]:
    """id -> vocabulary string (added tokens included)."""
    return {int(i): t for t, i in tok.get_vocab().items()}


def _text(tok: Any, ids: list[int]) -> str:
    try:
        return tok.decode(ids)
    except Exception:
        return "?"


def rows_read_differently(ctx: Context, max_rows: int = 50) -> list[Finding]:
    """Class D per row: the first completion position whose id the teacher's tokenizer spells otherwise.

    Reported for the rows holding an id outside the teacher's vocabulary (ids the teacher's embedding
    does not have: Qwen3's ``<|im_end|>`` = 151645 under GPT-2's 50,257 ids). Two vocabularies of
    one size that only number their tokens differently give the batch-level findings alone.
    """
    stok, ttok, batch = ctx.student_tokenizer, ctx.teacher_tokenizer, ctx.batch
    out: list[Finding] = []
    inv_s, inv_t = _inverse(stok), _inverse(ttok)
    for b, ids in enumerate(batch.completion_ids):
        ids = [int(i) for i in ids]
        if not ids:
            continue
        s, t = [inv_s.get(i) for i in ids], [inv_t.get(i) for i in ids]
        j = next((j for j in range(len(ids)) if s[j] != t[j]), None)
        if j is None or None not in t:
            continue
        said = (f"outside the teacher's vocabulary ({len(inv_t)} ids)" if t[j] is None
                else f"{t[j]!r} to the teacher")
        n = sum(a != c for a, c in zip(s, t))
        out.append(Finding(
            "tokenizer_mismatch", b, j, "error",
            f"row {b} position {j}: the student sampled id {ids[j]} = {s[j]!r}, which is {said}; {n} of the row's "
            f"{len(ids)} ids read differently (the student's completion {_text(stok, ids)[:40]!r} is "
            f"{_text(ttok, [i for i in ids if i in inv_t])[:40]!r} to the teacher): the teacher scored other "
            "text; use a teacher with the student's tokenizer, or re-tokenize the decoded text for the teacher and "
            "map its log-probs back to the student's tokens",
        ))
        if len(out) >= max_rows:
            break
    return out


def _ids_of(tok: Any, names: tuple[str, ...]) -> set[int]:
    vocab = tok.get_vocab()
    return {vocab[n] for n in names if n in vocab}


def _diagnose(tok: Any, student: list[int], teacher: list[int]) -> str:
    """What kind of difference two prompts of one conversation show, in words, with the fix."""
    think = _ids_of(tok, THINK_TOKENS)
    in_s, in_t = bool(think & set(student)), bool(think & set(teacher))
    if in_s != in_t:
        side = "student's" if in_s else "teacher's"
        other = "teacher's" if in_s else "student's"
        return (f"the {side} prompt has a <think></think> block and the {other} has none (Qwen3's enable_thinking "
                "differs, or a template strips it): render both prompts with the same enable_thinking, or better, "
                "send the student's prompt ids to the teacher")
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None:
        count = lambda p: next((k for k, i in enumerate(p) if i != bos), len(p))  # noqa: E731
        if count(student) != count(teacher):
            return (f"the prompts start with {count(student)} (student) vs {count(teacher)} (teacher) BOS tokens: "
                    "tokenize templated text with add_special_tokens=False, or send the student's ids to the teacher")
    s_text, t_text = _text(tok, student), _text(tok, teacher)
    if ("system" in s_text) != ("system" in t_text):
        side = "teacher's" if "system" in t_text else "student's"
        return (f"only the {side} prompt has a system turn (a template that adds a default system prompt, or a "
                "system message on one side): format the conversation once, with the student's template, and send "
                "the same ids to the teacher")
    return ("the two prompts were rendered by different chat templates (or from different messages): format each "
            "conversation once, with the student's template, and send the same prompt ids to the teacher")


def teacher_prompt_findings(ctx: Context) -> list[Finding]:
    """Class D per row: ``meta["teacher_prompt_ids"]`` differs from the prompt the student was sampled from."""
    values = ctx.meta("teacher_prompt_ids")
    if values is None:
        return []
    tok = ctx.student_tokenizer if ctx.student_tokenizer is not None else ctx.teacher_tokenizer
    out: list[Finding] = []
    for b, (prompt, tp) in enumerate(zip(ctx.batch.prompt_ids, values)):
        if tp is None:
            continue
        student, teacher = [int(i) for i in prompt], [int(i) for i in tp]
        if student == teacher:
            continue
        k = next((k for k, (a, c) in enumerate(zip(student, teacher)) if a != c), min(len(student), len(teacher)))
        show = lambda p: repr(_text(tok, p[k:k + 6])) if tok is not None else str(p[k:k + 6])  # noqa: E731
        why = _diagnose(tok, student, teacher) if tok is not None else "pass the tokenizers to name the difference"
        out.append(Finding(
            "tokenizer_mismatch", b, None, "error",
            f"row {b}: the teacher's prompt ({len(teacher)} ids) is not the student's ({len(student)} ids); they first "
            f"differ at prompt position {k}: student {show(student)}, teacher {show(teacher)}. The teacher scored the "
            f"completion after another context; {why}",
        ))
    return out


def _template_specials(tok: Any) -> tuple[set[int], str] | None:
    """The special ids a chat template writes, and the text it puts before the user's content (no specials)."""
    if getattr(tok, "chat_template", None) is None:
        return None
    marker = "xq7zv"
    try:
        out = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=True, add_generation_prompt=True)
    except Exception:
        return None
    ids = [int(i) for i in (out["input_ids"] if hasattr(out, "keys") else out)]
    special = set(getattr(tok, "all_special_ids", ()) or ())
    added = getattr(tok, "added_tokens_decoder", None)
    if isinstance(added, dict):
        special |= {int(i) for i, t in added.items() if getattr(t, "special", False)}
    written = {i for i in ids if i in special}
    text = tok.decode(ids, skip_special_tokens=True)
    head = text.split(marker, 1)[0].strip()
    return (written, head) if written and head else None


def dropped_special_findings(ctx: Context) -> list[Finding]:
    """Class E per row: a prompt that reads like the template's text but holds none of its special tokens."""
    tok = ctx.tokenizer
    probe = _template_specials(tok)
    if probe is None:
        return []
    written, head = probe
    names = ", ".join(repr(t) for t in tok.convert_ids_to_tokens(sorted(written)))
    out: list[Finding] = []
    for b, prompt in enumerate(ctx.batch.prompt_ids):
        ids = [int(i) for i in prompt]
        if not ids or written & set(ids):
            continue
        text = tok.decode(ids, skip_special_tokens=True).strip()
        if not text.startswith(head):
            continue
        out.append(Finding(
            "bos_eos", b, None, "error",
            f"row {b}: the prompt reads like the chat template's text ({text[:30]!r}) but holds none of its special "
            f"tokens ({names}): they were dropped on the way to the engine (decoded with skip_special_tokens=True, or "
            "rendered text re-tokenized without special-token parsing); send the token ids apply_chat_template "
            "returns (tokenize=True) to vLLM and the trainer",
        ))
    return out


def _thinking_header(tok: Any) -> list[int] | None:
    """The ids a template writes for a thinking-mode generation prompt (Qwen3: ``<|im_start|>assistant\\n``),
    when its non-thinking generation prompt differs (the template reads ``enable_thinking``); else None."""
    template = getattr(tok, "chat_template", None)
    if not isinstance(template, str) or "enable_thinking" not in template:
        return None
    probe = [{"role": "user", "content": "xq7zv"}]

    def ids(**kw: Any) -> list[int]:
        out = tok.apply_chat_template(probe, tokenize=True, **kw)
        return [int(i) for i in (out["input_ids"] if hasattr(out, "keys") else out)]

    try:
        bare, think, plain = (ids(add_generation_prompt=False), ids(add_generation_prompt=True, enable_thinking=True),
                              ids(add_generation_prompt=True, enable_thinking=False))
    except Exception:
        return None
    if think == plain or think[:len(bare)] != bare or len(think) == len(bare):
        return None
    return think[len(bare):]


def thinking_mode_findings(ctx: Context) -> list[Finding]:
    """Class E: thinking-mode prompts whose completions do not open a ``<think>`` block.

    Qwen3's template ends a thinking-mode prompt with ``<|im_start|>assistant\\n`` and a non-thinking
    one with an empty ``<think>\\n\\n</think>\\n\\n``. A model in thinking mode opens its answer with
    ``<think>``; one that answers straight away after a thinking-mode prompt was trained or served in
    non-thinking mode, and its prompts lost their ``enable_thinking=False`` on the way (TRL 1.16's
    ``IWOPDTrainer`` renders prompts with no template arguments). A warning: the ids still agree.
    """
    tok = ctx.tokenizer
    header = _thinking_header(tok) if tok is not None else None
    opens = _ids_of(tok, THINK_TOKENS[:1]) if header is not None else set()
    if not opens:
        return []
    k = len(header)
    rows = [b for b, (p, c) in enumerate(zip(ctx.batch.prompt_ids, ctx.batch.completion_ids))
            if len(p) >= k and [int(i) for i in p[-k:]] == header]
    answer = [b for b in rows if len(ctx.batch.completion_ids[b]) and int(ctx.batch.completion_ids[b][0]) not in opens]
    if not answer:
        return []
    return [Finding(
        "bos_eos", answer[0], None, "warning",
        f"{len(answer)} of the {len(rows)} rows whose prompt ends with the thinking-mode generation prompt "
        f"{_text(tok, header)!r} (no empty <think></think> block) do not open their completion with <think> "
        f"(first: row {answer[0]}): the model answers as in non-thinking mode, so its prompts were probably meant to "
        "be rendered with enable_thinking=False; pass it to apply_chat_template, or, for a trainer that renders "
        "prompts itself without template arguments (TRL 1.16's IWOPDTrainer), make it the template's default "
        "(iwopd_kit.engines.chat.with_template_defaults(tokenizer, enable_thinking=False))",
    )]


__all__ = ["THINK_TOKENS", "rows_read_differently", "teacher_prompt_findings", "dropped_special_findings",
           "thinking_mode_findings"]
