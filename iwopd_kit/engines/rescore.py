"""Scoring a dump's missing series with local models: what ``iwopd-kit check`` does before it checks.

A dump that lacks ``student_logprobs`` / ``teacher_logprobs`` gets them from ``--student`` /
``--teacher DIR`` (default: the bundled toy models, named in a note) on ``--device`` in ``--dtype``,
``--batch-size`` rows per forward pass. Token ids that do not fit a model's vocabulary are said so
(the token, its row and position, and which flag to pass), never a bare index error.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..batch import STUDENT_LOGPROBS, TEACHER_LOGPROBS

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


@dataclass
class Rescored:
    """What :func:`rescore` gives: the ``batch`` with the series it could score, the tokenizers it
    found (None where none), ``notes`` (which model scored what, what stayed missing and why) and
    ``provenance`` (per series the batch has: ``"dump"`` or ``"rescored with <model>, <dtype>"``)."""

    batch: Any
    student_tokenizer: Any = None
    teacher_tokenizer: Any = None
    notes: list[str] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)


def _is_dir_like(x) -> bool:
    return isinstance(x, (str, Path))


def _model_name(model) -> str:
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else type(model).__name__


def _model_dtype(model) -> str:
    dtype = getattr(model, "dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def recompute(batch, args: argparse.Namespace, progress, models: dict | None = None):
    """:func:`rescore` with the CLI's options (``args.student``, ``.teacher``, ``.student_tokenizer``,
    ``.teacher_tokenizer``, ``.device``, ``.dtype``, ``.batch_size``) and a ``progress`` with ``.step``:
    ``(batch, student_tokenizer, teacher_tokenizer, notes)``."""
    r = rescore(batch, student=args.student, teacher=args.teacher,
                student_tokenizer=getattr(args, "student_tokenizer", None),
                teacher_tokenizer=getattr(args, "teacher_tokenizer", None), device=args.device, dtype=args.dtype,
                batch_size=args.batch_size, progress=progress.step if progress is not None else None, models=models)
    return r.batch, r.student_tokenizer, r.teacher_tokenizer, r.notes


def rescore(batch, *, student=None, teacher=None, student_tokenizer=None, teacher_tokenizer=None,
            device: str = "cpu", dtype: str = "float32", batch_size: int = 32,
            progress: Callable[[int, str], None] | None = None, models: dict | None = None) -> Rescored:
    """Fill missing student / teacher series from models; load the tokenizers they provide.

    ``student`` / ``teacher``: a model directory or an already-loaded transformers model (scored as it
    is: its own device and dtype); a tokenizer: a folder of tokenizer files or a tokenizer object (in
    place of the model's). Defaults for a missing series: the bundled toy models (a note says so),
    unless the dump's token ids lie outside their vocabulary (a real model's dump: the series stays
    missing and a note says to pass ``--student/--teacher``). Scores at the rollout log-probs'
    temperature (1.0 when unknown); a directory's model is loaded on ``device`` in ``dtype``;
    ``batch_size`` rows per forward pass; ``models`` caches loaded models across files;
    ``progress(rows, desc)`` after each pass. A given model whose vocabulary the ids do not fit is a
    ValueError naming the token, its row and position.
    """
    import torch

    from .. import toy
    from ..batch import FLOATS, BatchError
    from .scoring import load_model, load_tokenizer, score_batch

    models = {} if models is None else models
    had = {name for name in FLOATS if batch.has(name)}
    need = {"student": not batch.has(STUDENT_LOGPROBS), "teacher": not batch.has(TEACHER_LOGPROBS)}
    given = {"student": student, "teacher": teacher}
    dirs = {"student": student if student is not None else (toy.STUDENT_DIR if need["student"] else None),
            "teacher": teacher if teacher is not None else (toy.TEACHER_DIR if need["teacher"] else None)}
    top, top_row, top_pos = _top_id(batch)
    T = batch.sampling.logprob_temperature if batch.sampling is not None else 1.0
    toks, notes, fell_back, skipped, made = {}, [], [], [], {}
    for side in ("student", "teacher"):
        d = dirs[side]
        if d is None:
            toks[side] = None
            continue
        loaded = not _is_dir_like(d)
        vocab = getattr(getattr(d, "config", None), "vocab_size", None) if loaded else _vocab_size(d)
        shown = _model_name(d) if loaded else str(d)
        where = (f"the given {side} model ({shown})" if loaded else f"--{side} {d}" if given[side] is not None
                 else f"the bundled toy {side} ({_shown_path(d)})")
        if vocab is not None and top >= vocab and need[side]:
            if given[side] is not None:
                raise ValueError(f"token id {top} (row {top_row}, position {top_pos}) is outside the vocabulary of "
                                 f"{where} ({vocab} ids): pass the {side} model the dump was made with")
            skipped.append((side, vocab))
            toks[side] = None
            continue
        if need[side]:
            if loaded:
                model, used_dtype = d, _model_dtype(d)
            else:
                if not (Path(d) / "config.json").exists():
                    raise FileNotFoundError(f"the dump has no {side}_logprobs and {d} is not a model directory (no "
                                            f"config.json); pass --{side} DIR to score the tokens")
                key = (str(d), dtype, device)
                if key not in models:
                    models[key] = load_model(d, dtype=getattr(torch, dtype)).to(device)
                model, used_dtype = models[key], dtype
            try:
                batch = score_batch(batch, **{side: model}, temperature=T, rows_per_pass=batch_size, progress=progress)
            except BatchError as e:
                raise BatchError(f"scoring {side}_logprobs with {where}: {e}; pass --{side} DIR with the model the dump "
                                 "was made with") from None
            made[side] = f"rescored with {shown if given[side] is not None else _shown_path(d)}, {used_dtype}"
            if side == "student":
                batch = batch.with_meta(trainer_dtype=used_dtype)   # the numerics rule names the dtype
            if given[side] is None:
                fell_back.append(side)
            elif used_dtype != "float32":
                notes.append(f"{side}_logprobs recomputed with {where} in {used_dtype}: expect a low-precision gap")
        toks[side] = _model_tokenizer(d) if loaded else load_tokenizer(d)
    for side, tok in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
        if tok is None:
            continue
        toks[side] = _tokenizer_only(tok, side) if _is_dir_like(tok) else tok
        notes.append(f"{side} tokenizer from --{side}-tokenizer {tok}" if _is_dir_like(tok) else
                     f"{side} tokenizer: the given {type(tok).__name__}")
    if fell_back:
        what = " and ".join(f"{s} log-probs" for s in fell_back)
        models_ = " and ".join(f"the bundled toy {s} ({_shown_path(dirs[s])})" for s in fell_back)
        dt = "" if dtype == "float32" else f" in {dtype}"
        notes.insert(0, f"{what} recomputed with {models_}{dt}, the default when the dump has none; pass "
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
    provenance = {}
    for name in FLOATS:
        if name in had:
            provenance[name] = "dump"
        elif batch.has(name):       # scored here: the series of a side, and what scoring the student adds
            side = "teacher" if name == TEACHER_LOGPROBS else "student"
            provenance[name] = made.get(side, "rescored")
    return Rescored(batch, toks["student"], toks["teacher"], notes, provenance)


def _model_tokenizer(model):
    """The tokenizer saved beside a loaded model (its ``name_or_path`` when that is a local folder), else None."""
    from .scoring import load_tokenizer

    path = Path(_model_name(model))
    if path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        return load_tokenizer(path)
    return None


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


__all__ = ["DTYPES", "Rescored", "device_error", "recompute", "rescore"]
