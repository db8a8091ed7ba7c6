"""Scoring a dump's missing series with local models: what ``iwopd-kit check`` does before it checks.

A dump that lacks ``student_logprobs`` / ``teacher_logprobs`` gets them from ``--student`` /
``--teacher DIR`` (default: the bundled toy models, named in a note) on ``--device`` in ``--dtype``,
``--batch-size`` rows per forward pass. Token ids that do not fit a model's vocabulary are said so
(the token, its row and position, and which flag to pass), never a bare index error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DTYPES = ("float32", "bfloat16", "float16")


def _vocab_size(model_dir) -> int | None:
    try:
        return int(json.loads((Path(model_dir) / "config.json").read_text())["vocab_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shown_path(d) -> str:
    """A model dir as the user would type it: relative to the working directory when under it."""
    try:
        return str(Path(d).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(d)


def _top_id(batch) -> tuple[int, int, int]:
    """``(id, row, position)`` of the largest completion token id."""
    packed = batch.packed("completion_ids")         # packed ids: no Python list of the dump's tokens
    if packed.values.numel() == 0:
        return -1, 0, 0
    i = int(packed.values.argmax())
    offsets = packed.offsets
    b = int(np.searchsorted(offsets, i, side="right")) - 1
    return int(packed.values[i]), b, i - int(offsets[b])


def _with_trainer_dtype(batch, dtype: str):
    """Record the dtype the student was rescored in (meta ``trainer_dtype``): the numerics rule names it."""
    meta = [dict(m or {}) for m in (batch.meta or [{}] * batch.size)]
    for m in meta:
        m["trainer_dtype"] = dtype
    return batch.replace(meta=meta)


def recompute(batch, args: argparse.Namespace, progress, models: dict | None = None):
    """Fill missing student / teacher series from model dirs; load the tokenizers the dirs provide.

    Returns ``(batch, student_tokenizer, teacher_tokenizer, notes)``. Defaults for a missing series:
    the bundled toy models (a note says so), unless the dump's token ids lie outside their vocabulary
    (a real model's dump: the series stays missing and a note says to pass ``--student/--teacher``).
    Scores at the rollout log-probs' temperature (1.0 when unknown) on ``--device`` in ``--dtype``,
    ``--batch-size`` rows per forward pass; ``models`` caches loaded models across files. A given
    dir whose vocabulary the ids do not fit is a ValueError naming the token, its row and position.
    """
    import torch

    from . import toy
    from .batch import BatchError
    from .scoring import load_model, load_tokenizer, score_batch

    models = {} if models is None else models
    need = {"student": not batch.has("student_logprobs"), "teacher": not batch.has("teacher_logprobs")}
    given = {"student": args.student, "teacher": args.teacher}
    dirs = {"student": args.student or (toy.STUDENT_DIR if need["student"] else None),
            "teacher": args.teacher or (toy.TEACHER_DIR if need["teacher"] else None)}
    top, top_row, top_pos = _top_id(batch)
    T = batch.sampling.logprob_temperature if batch.sampling is not None else 1.0
    toks, notes, fell_back, skipped = {}, [], [], []
    for side in ("student", "teacher"):
        d = dirs[side]
        if d is None:
            toks[side] = None
            continue
        vocab = _vocab_size(d)
        where = f"--{side} {d}" if given[side] else f"the bundled toy {side} ({_shown_path(d)})"
        if vocab is not None and top >= vocab and need[side]:
            if given[side]:
                raise ValueError(f"token id {top} (row {top_row}, position {top_pos}) is outside the vocabulary of "
                                 f"{where} ({vocab} ids): pass the {side} model the dump was made with")
            skipped.append((side, vocab))
            toks[side] = None
            continue
        if need[side]:
            if not (Path(d) / "config.json").exists():
                raise FileNotFoundError(f"the dump has no {side}_logprobs and {d} is not a model directory (no "
                                        f"config.json); pass --{side} DIR to score the tokens")
            key = (str(d), args.dtype, args.device)
            if key not in models:
                models[key] = load_model(d, dtype=getattr(torch, args.dtype)).to(args.device)
            try:
                batch = score_batch(batch, **{side: models[key]}, temperature=T, rows_per_pass=args.batch_size,
                                    progress=progress.step)
            except BatchError as e:
                raise BatchError(f"scoring {side}_logprobs with {where}: {e}; pass --{side} DIR with the model the dump "
                                 "was made with") from None
            if side == "student":
                batch = _with_trainer_dtype(batch, args.dtype)
            if not given[side]:
                fell_back.append(side)
            elif args.dtype != "float32":
                notes.append(f"{side}_logprobs recomputed with {where} in {args.dtype}: expect a low-precision gap")
        toks[side] = load_tokenizer(d)
    for side in ("student", "teacher"):
        d = getattr(args, f"{side}_tokenizer", None)
        if d:
            toks[side] = _tokenizer_only(d, side)
            notes.append(f"{side} tokenizer from --{side}-tokenizer {d}")
    if fell_back:
        what = " and ".join(f"{s} log-probs" for s in fell_back)
        models_ = " and ".join(f"the bundled toy {s} ({_shown_path(dirs[s])})" for s in fell_back)
        dtype = "" if args.dtype == "float32" else f" in {args.dtype}"
        notes.insert(0, f"{what} recomputed with {models_}{dtype}, the default when the dump has none; pass "
                        "--student/--teacher DIR for your own models")
    if skipped:
        sides = [side for side, _ in skipped]
        names = " and ".join(f"{side}_logprobs" for side in sides)
        flags = " and ".join(f"--{side} DIR" for side in sides)
        vocabs = ", ".join(f"{side} {vocab} ids ({_shown_path(dirs[side])})" for side, vocab in skipped)
        notes.append(f"{names} not scored: the dump has none, and its token ids (up to {top}, row {top_row}, position "
                     f"{top_pos}) do not fit the vocabulary of the bundled toy model{'s' if len(sides) > 1 else ''} the "
                     f"check falls back to ({vocabs}); the checks that need them did not run: pass {flags} with the "
                     "model the dump was made with")
    return batch, toks["student"], toks["teacher"], notes


def _tokenizer_only(d, side: str):
    """The tokenizer in a folder of tokenizer files (``tokenizer.json``, ``tokenizer_config.json``, ...)."""
    from .scoring import load_tokenizer

    path = Path(d)
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "tekken.json")
    if not path.is_dir() or not any((path / f).exists() for f in files):
        raise FileNotFoundError(f"--{side}-tokenizer {d}: not a tokenizer folder (expected one of {', '.join(files)})")
    try:
        return load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"--{side}-tokenizer {d}: transformers could not load a tokenizer there ({e})") from None


def device_error(device: str) -> str | None:
    """Why ``--device`` cannot score here (None: it can)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        return f"--device {device!r} is not a torch device ({e}); expected e.g. cpu, cuda, cuda:0"
    if dev.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: no CUDA device is available here (torch.cuda.is_available() is False); use --device cpu"
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        return f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here (cuda:0..)"
    return None


__all__ = ["DTYPES", "device_error", "recompute"]
