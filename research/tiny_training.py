"""What the two training scripts share: the model sizes, the model builder, the learning-rate
schedule, the batch collation and the exact-match evaluation.

``scripts/train_tiny_models.py`` trains the 16-token toy pair (untied embeddings, 64 positions);
``scripts/train_chat_models.py`` trains the Qwen3-tokenizer chat pair (tied embeddings, 128
positions, compact rows). Both are plain cross-entropy on ``prompt completion`` with the loss on
the completion only, Adam with linear warm-up then cosine decay, and exact match by ``generate``
on left-padded prompts. The defaults of :func:`make_model` are the toy pair's.

Token ids are plain lists of ``int`` (one list per example); tensors are ``[batch, width]`` with
rows right-padded for training (:func:`collate`: positions start at 0 in every row) and
left-padded for generation (:func:`exact_match`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from iwopd_kit import toy
from iwopd_kit.batch.sampling import ROLLOUT_MAX_TOKENS

#: Head width of every model the scripts build.
HEAD_DIM = 32
#: Positions of the toy pair (its longest example is well under this).
TOY_MAX_POSITIONS = 64
#: Label of a position the loss ignores (``torch.nn.functional.cross_entropy``'s ``ignore_index``).
IGNORE = -100


@dataclass(frozen=True)
class ModelSpec:
    """Size of one tiny Llama: ``hidden = heads * 32`` (the head width is fixed)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int


def make_model(spec: ModelSpec, vocab_size: int = len(toy.VOCAB), *,
               max_positions: int = TOY_MAX_POSITIONS, tie_embeddings: bool = False,
               bos_id: int | None = toy.BOS_ID, eos_id: int = toy.EOS_ID,
               pad_id: int = toy.PAD_ID) -> LlamaForCausalLM:
    """A float32 Llama of size ``spec`` with head width 32, initialised from torch's global RNG.

    The defaults build the toy pair's model (16-token vocabulary, untied embeddings, 64
    positions); the chat pair passes its vocabulary, ``tie_embeddings=True``, 128 positions,
    ``bos_id=None`` and its end/pad ids. The same seed gives the same weights.
    """
    if spec.hidden != spec.heads * HEAD_DIM:
        raise ValueError(f"{spec}: hidden must be heads * {HEAD_DIM} = {spec.heads * HEAD_DIM}")
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        dtype="float32",
    )
    return LlamaForCausalLM(config).float()


def n_params(model: torch.nn.Module) -> int:
    """Number of parameters (embeddings and LM head included; a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Learning rate at 0-based ``step``: linear warm-up over ``warmup`` steps (``base_lr`` at step
    ``warmup - 1``), then cosine decay to 10% of ``base_lr`` at ``total`` and flat after it."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int = toy.PAD_ID) -> dict[str, torch.Tensor]:
    """Right-pad ``(prompt_ids, completion_ids)`` pairs into one training batch.

    Returns ``input_ids`` (``prompt + completion`` then ``pad_id``), ``labels`` (:data:`IGNORE`
    on the prompt and the padding, the completion ids elsewhere) and ``attention_mask`` (1 on
    the tokens, 0 on the padding), each an int64 tensor ``[len(examples), width]`` with ``width``
    the longest ``prompt + completion``. Positions start at 0 in every row.
    """
    if not examples:
        raise ValueError("collate: no examples")
    width = max(len(p) + len(c) for p, c in examples)
    ids, labels, mask = [], [], []
    for prompt, completion in examples:
        seq = list(prompt) + list(completion)
        n_pad = width - len(seq)
        ids.append(seq + [pad_id] * n_pad)
        labels.append([IGNORE] * len(prompt) + list(completion) + [IGNORE] * n_pad)
        mask.append([1] * len(seq) + [0] * n_pad)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
            "attention_mask": torch.tensor(mask)}


@torch.no_grad()
def exact_match(model, prompt_ids: Sequence[list[int]], is_right: Callable[[int, list[int]], bool],
                temperature: float, seed: int = 0, *, eos_id: int, pad_id: int,
                max_new_tokens: int = ROLLOUT_MAX_TOKENS, batch_size: int = 256,
                eos_required: bool = True) -> float:
    """Share of prompts whose generated completion ``is_right``.

    ``prompt_ids[k]`` (special tokens included) is left-padded with ``pad_id`` under an attention
    mask, ``batch_size`` prompts per ``generate`` call. ``temperature == 0`` means greedy, otherwise
    plain sampling (top_p 1, no top-k). Each generated row is cut before its first ``eos_id`` and
    passed as ``is_right(k, ids)``; a row that never ends is counted wrong when ``eos_required``,
    otherwise judged as it stands (ids after the prompt; ``pad_id`` fill included). The global
    torch RNG is forked and seeded with ``seed``, so evaluation does not disturb training; the
    model's train/eval mode is put back.
    """
    if not prompt_ids:
        raise ValueError("exact_match: no prompts")
    was_training = model.training
    model.eval()
    correct = 0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(prompt_ids), batch_size):
            chunk = prompt_ids[start:start + batch_size]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in chunk])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            sampling = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) \
                if temperature > 0 else dict(do_sample=False)
            out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos_id, pad_token_id=pad_id, **sampling)
            for k, row in enumerate(out[:, width:].tolist(), start=start):
                if eos_id in row:
                    row = row[:row.index(eos_id)]
                elif eos_required:
                    continue
                correct += bool(is_right(k, row))
    model.train(was_training)
    return correct / len(prompt_ids)
