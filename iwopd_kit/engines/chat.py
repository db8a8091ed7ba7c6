"""The conversational path: chat messages in, the same prompt ids to vLLM and to the trainer.

A chat template is applied **once**, on the student's tokenizer, and the resulting token ids are
what every later step reads: the rollout engine gets them as ``prompt_token_ids``, the student and
the teacher score ``prompt_ids + completion_ids`` on them. Re-rendering the messages with another
tokenizer or template, or re-tokenizing the rendered text with ``add_special_tokens=True``, is what
the alignment check's classes D and E catch.

The chat toy task (:func:`chat_messages`) is the toy task of :mod:`iwopd_kit.toy` as one user turn
(the sum) and one assistant turn (the running sums, ending with the template's end-of-turn token,
``<|im_end|>`` for Qwen3). The Qwen3-tokenizer pair trained on it lives in ``data/chat/``
(:data:`CHAT_DIR`; in the checkout, not in the wheel).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..batch import Batch
from ..toy import DATA_DIR

#: Where the Qwen3-tokenizer chat pair and the real tokenizer files live: ``data/chat`` of the checkout
#: (``iwopd_kit/data`` links to it), not in the wheel (a wheel's user passes their own folders).
CHAT_DIR: Path = DATA_DIR / "chat"
CHAT_STUDENT_DIR: Path = CHAT_DIR / "student"
CHAT_TEACHER_DIR: Path = CHAT_DIR / "teacher"
QWEN3_TOKENIZER_DIR: Path = CHAT_DIR / "tokenizer_qwen3"
GPT2_TOKENIZER_DIR: Path = CHAT_DIR / "tokenizer_gpt2"
CHAT_FIXTURES_DIR: Path = CHAT_DIR.parent / "fixtures" / "chat"

Message = Mapping[str, str]

#: Mistral's tekken tokenizer file inside the installed ``mistral_common`` package (not shipped here).
TEKKEN = "tekken_240911.json"


def load_chat_tokenizer(spec: str | Path) -> Any:
    """A tokenizer from a folder or ``mistral_common:FILE``; a relative ``data/...`` path (as the fixtures'
    info files write it) is read under the kit's data folder, so it resolves from any working directory.

    ``mistral_common:tekken_240911.json`` loads that tekken file of the installed ``mistral_common``
    package through ``transformers.AutoTokenizer`` (from a temporary folder holding a link to it).
    Loaded once per process and folder (Qwen3's 11 MB ``tokenizer.json`` takes seconds to parse):
    the same object comes back on every call, so do not modify it.
    """
    text = str(spec)
    if not text.startswith("mistral_common:"):
        path = Path(text)
        text = str(path if path.is_absolute() else DATA_DIR.parent / path)
    return _load_tokenizer(text)


@functools.lru_cache(maxsize=None)
def _load_tokenizer(text: str) -> Any:
    from transformers import AutoTokenizer

    if text.startswith("mistral_common:"):
        import importlib.util
        import tempfile

        found = importlib.util.find_spec("mistral_common")
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError(f"{text}: the mistral_common package is not installed")
        src = Path(list(found.submodule_search_locations)[0]) / "data" / text.split(":", 1)[1]
        if not src.exists():
            raise FileNotFoundError(f"{text}: no {src.name} in {src.parent}")
        tmp = Path(tempfile.mkdtemp(prefix="iwopd_tekken_"))
        (tmp / "tekken.json").symlink_to(src)
        return AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)
    return AutoTokenizer.from_pretrained(text, local_files_only=True)


def chat_messages(prompt: str, answer: str | None = None) -> list[dict[str, str]]:
    """The toy task as a conversation: the user turn is the sum, the assistant turn the chain."""
    messages = [{"role": "user", "content": prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def chat_prompt_ids(tokenizer: Any, messages: Sequence[Message], *, enable_thinking: bool = False,
                    add_generation_prompt: bool = True, **template_kwargs: Any) -> list[int]:
    """Token ids of ``messages`` rendered by the tokenizer's chat template, ready for generation.

    The template is applied once and tokenized by the template call itself (no second pass through
    ``encode``, so no second BOS). ``enable_thinking=False`` is Qwen3's non-thinking mode: the
    generation prompt ends with an empty ``<think>\\n\\n</think>\\n\\n`` block. Templates that do not
    know the flag ignore it.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat_prompt_ids: the tokenizer has no chat_template; load one that ships a "
                         "tokenizer_config.json with a chat template (or pass plain prompt ids)")
    if not messages:
        raise ValueError("chat_prompt_ids: no messages")
    for i, m in enumerate(messages):
        if "role" not in m or "content" not in m:
            raise ValueError(f"chat_prompt_ids: message {i} needs 'role' and 'content', got keys {sorted(m)}")
    out = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=add_generation_prompt,
                                        enable_thinking=enable_thinking, **template_kwargs)
    ids = out["input_ids"] if isinstance(out, Mapping) or hasattr(out, "keys") else out
    return [int(i) for i in ids]


def with_template_defaults(tokenizer: Any, **defaults: Any) -> Any:
    """A copy of ``tokenizer`` whose chat template sets ``defaults`` before it renders anything.

    For trainers that apply the chat template themselves with no template arguments: TRL 1.16's
    ``IWOPDTrainer`` calls ``apply_chat_template(messages, tokenize=False, add_generation_prompt=True)``
    and has no ``chat_template_kwargs``, so a Qwen3 run gets thinking-mode prompts (no empty
    ``<think></think>`` block) whatever the dataset asks. ``with_template_defaults(tok,
    enable_thinking=False)`` as the trainer's ``processing_class`` renders them in non-thinking mode.
    The values win over arguments passed at render time. JSON values only (bools, numbers, strings).
    """
    import copy
    import json

    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        raise ValueError("with_template_defaults: the tokenizer has no chat_template (a single template string)")
    for name in defaults:
        if not name.isidentifier():
            raise ValueError(f"with_template_defaults: {name!r} is not a template variable name")
    out = copy.deepcopy(tokenizer)
    out.chat_template = "".join(f"{{%- set {k} = {json.dumps(v)} %}}" for k, v in defaults.items()) + template
    return out


def chat_completion_ids(tokenizer: Any, answer: str, eos_token_id: int | None = None) -> list[int]:
    """The assistant turn's ids as the model writes them: the text, then the end-of-turn token."""
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    return [int(i) for i in tokenizer.encode(answer, add_special_tokens=False)] + [int(eos)]


def rollout_chat(engine: Any, tokenizer: Any, conversations: Sequence[Sequence[Message]], *,
                 enable_thinking: bool = False, **sampling: Any) -> Batch:
    """Sample one assistant turn per conversation; the prompt ids are the template's, applied once.

    ``sampling`` goes to :func:`iwopd_kit.engines.rollout.rollout` (``temperature``, ``max_tokens``, ``seed``,
    ...); the stop is the tokenizer's EOS (``<|im_end|>`` for Qwen3) unless ``stop_token_ids`` is given.
    The returned batch's ``prompt_ids`` are the ids the engine saw; score it with
    :func:`iwopd_kit.engines.scoring.score_batch` and the trainer reads the very same ids.
    """
    from .rollout import rollout

    prompt_ids = [chat_prompt_ids(tokenizer, c, enable_thinking=enable_thinking) for c in conversations]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None and "stop_token_ids" not in sampling:
        sampling["stop_token_ids"] = (int(eos),)
    return rollout(engine, prompt_ids, **sampling)


__all__ = ["TEKKEN", "load_chat_tokenizer", "CHAT_DIR", "CHAT_STUDENT_DIR", "CHAT_TEACHER_DIR", "QWEN3_TOKENIZER_DIR", "GPT2_TOKENIZER_DIR",
           "CHAT_FIXTURES_DIR", "chat_messages", "chat_prompt_ids", "chat_completion_ids", "rollout_chat", "with_template_defaults"]
