"""A row that says it stopped but does not end in a stop token (class E, ``bos_eos``).

vLLM reports ``finish_reason == "stop"`` when a stop token (the tokenizer's EOS / end-of-turn token, or
one of ``SamplingParams.stop_token_ids``) or a stop string ended the row. A stop token is part of the
completion; a stop string is not (and vLLM records it in ``stop_reason``). So a "stop" row whose last
token is no stop id, with no stop string / ``stop_reason`` recorded, lost its stop token on the way: TRL
strips generated EOS tokens when ``pad_token_id == eos_token_id`` (huggingface/trl#6357), and a model
trained on such rows never sees where to stop.
"""

from __future__ import annotations

from typing import Any

from .context import Context
from .core import Finding

END_OF_TURN: tuple[str, ...] = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|return|>",
                                "<|END_OF_TURN_TOKEN|>", "<|end_of_text|>", "<|endoftext|>", "</s>")
"""End-of-turn / end-of-text token strings of common chat templates (Qwen, Llama 3, Phi, Gemma, gpt-oss, Command)."""

STOP_KEYS: tuple[str, ...] = ("stop", "stop_reason", "stop_str", "matched_stop")
"""Meta keys that record what stopped a row (a stop string, vLLM's ``stop_reason``, SGLang's ``matched_stop``)."""


def stop_ids(tokenizer: Any, stop_token_ids: tuple[int, ...] | None = None) -> dict[int, str]:
    """The ids that end a completion, with their token text: the tokenizer's EOS, the end-of-turn tokens of
    :data:`END_OF_TURN` it has, and ``stop_token_ids`` (the request's)."""
    out: dict[int, str] = {}
    try:
        vocab = tokenizer.get_added_vocab() if callable(getattr(tokenizer, "get_added_vocab", None)) else tokenizer.get_vocab()
    except Exception:   # a tokenizer without a vocabulary listing: the EOS alone
        vocab = {}
    for name in END_OF_TURN:
        if name in vocab:
            out[int(vocab[name])] = name
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        out.setdefault(int(eos), str(getattr(tokenizer, "eos_token", None) or eos))
    for i in stop_token_ids or ():
        out.setdefault(int(i), f"stop_token_ids {i}")
    return out


def stop_findings(ctx: Context) -> list[Finding]:
    """A warning per row whose ``finish_reason`` is "stop" but whose last token is no stop id and whose meta
    records no stop string (:data:`STOP_KEYS`); rows ending in context tokens (a tool or user turn) are skipped."""
    batch = ctx.batch
    if batch.finish_reasons is None or ctx.tokenizer is None:
        return []
    ids = stop_ids(ctx.tokenizer, batch.sampling.stop_token_ids if batch.sampling is not None else None)
    if not ids:
        return []
    turn = next((n for n in END_OF_TURN if n in ids.values()), None) or next(iter(ids.values()))
    turn_id = next(i for i, n in ids.items() if n == turn)
    metas = batch.meta or [{}] * batch.size
    sources = batch.source_codes()
    out = []
    for b, (reason, comp) in enumerate(zip(batch.finish_reasons, batch.completion_ids)):
        if reason != "stop" or int(comp[-1]) in ids or int(sources[b, len(comp) - 1]) == 2:
            continue
        meta = metas[b] if isinstance(metas[b], dict) else {}
        if any(meta.get(k) is not None for k in STOP_KEYS):
            continue
        out.append(Finding(
            "bos_eos", b, len(comp) - 1, "warning",
            f"finish_reason is 'stop' but the completion ends in token {int(comp[-1])}, not the end-of-turn token "
            f"{turn} (id {turn_id}) or another stop id ({sorted(ids)}), and no stop string / stop_reason is recorded: the "
            "sampled stop token was stripped (TRL drops generated EOS tokens when pad_token_id == eos_token_id, "
            "huggingface/trl#6357), so the model never learns where to stop; keep the stop token (and its log-prob) in "
            "the completion, or record meta stop_reason when a stop string ended the row"))
    return out


__all__ = ["END_OF_TURN", "STOP_KEYS", "stop_ids", "stop_findings"]
