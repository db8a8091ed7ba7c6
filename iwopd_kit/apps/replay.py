"""Replay one flagged row on two engines: which side moved, the stored data or the engines?

:func:`replay_row` takes a row's fixed tokens (prompt + completion, completion coordinates: position
j is the j-th generated token) and scores them again with

- **vLLM** in-process (the rollout side): one request for the whole sequence with
  ``SamplingParams(max_tokens=1, prompt_logprobs=0)``; the log-prob of completion token j is entry
  ``p + j`` of ``prompt_logprobs`` (p = prompt length). vLLM computes prompt log-probs from the raw
  logits whatever its ``logprobs_mode`` (its model runner skips the sampling processors for prompt
  tokens), so this replay is always at T = 1, untruncated;
- **transformers** (the trainer side), through :func:`iwopd_kit.engines.scoring.completion_logits` and
  :func:`~iwopd_kit.engines.scoring.sampled_logprobs` at T = 1, plus, for a stored series recorded at other
  settings (``batch.sampling``: processed log-probs at T / top-p / top-k; ``batch.scoring``: the
  trainer's temperature), at those settings (a temperature cannot be undone without the logits, so
  it is replayed, not rescaled).

Then :func:`diagnose` names the first position where the values part beyond the calibrated tolerance
(``Tolerances.same`` when every engine and recorded dtype is float32, ``Tolerances.rounding``
otherwise; docs/calibration.md) and which side moved: the two engines against each other
(``numerics``), or a stored series against both engines (``plumbing:shift d``, ``plumbing:padding``,
``plumbing:temperature``, or ``plumbing:unexplained``). ``agree`` when nothing parts.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..alignment.tolerances import FULL_PRECISION, Tolerances
from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, Batch, BatchError
from ..engines.rollout import VLLMEngine, process_logits, quiet_output
from ..engines.scoring import completion_logits, load_model, load_tokenizer, sampled_logprobs
from ..views.report import text_table
from .replay_rules import RAW, diagnose, settings_text

DTYPES = ("float32", "bfloat16")
SERIES = (("rollout", ROLLOUT_LOGPROBS), ("trainer", STUDENT_LOGPROBS))
"""The stored series a replay compares: (name in the table, Batch field)."""


@dataclass
class ReplayResult:
    """One row replayed on vLLM and transformers, token by token (lists of length L, the completion length).

    ``rollout`` / ``trainer``: the stored rollout and trainer (student) log-probs (None = not stored);
    ``vllm`` / ``transformers``: the replays at T = 1; ``drift`` = vllm - transformers; ``counted``: the
    tokens the comparison of the stored series reads (loss-masked, sampled by the policy);
    ``at_recorded[name]``: the transformers replay at a stored series' recorded settings when they are not
    T = 1 raw (``recorded[name]`` says which). ``first_divergence``: the position where the values first
    part beyond ``tolerance`` (None when they agree); ``cause``: ``agree``, ``numerics``, ``plumbing:shift
    d`` (token j carries the log-prob of token j + d, as ``RowLag.shift``), ``plumbing:padding``,
    ``plumbing:temperature`` or ``plumbing:unexplained``; ``side``: ``engines``, ``stored rollout``,
    ``stored trainer`` or None.
    """

    row: int
    source: str
    model_dir: str
    dtype: str
    trainer_dtype: str
    device: str
    token_ids: list[int]
    tokens: list[str]
    counted: list[bool]
    rollout: list[float | None] | None
    trainer: list[float | None] | None
    vllm: list[float]
    transformers: list[float]
    drift: list[float]
    tolerance: float
    tolerance_name: str
    first_divergence: int | None
    cause: str
    side: str | None
    verdict: str
    shift: int | None = None
    recorded: dict[str, dict[str, Any]] = field(default_factory=dict)
    at_recorded: dict[str, list[float]] = field(default_factory=dict)

    @property
    def positions(self) -> list[int]:
        return list(range(len(self.token_ids)))

    @property
    def max_drift(self) -> float:
        """max |vllm - transformers| over the row."""
        return max((abs(d) for d in self.drift if not math.isnan(d)), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (NaN -> None), the ``--json`` object; ``positions`` and ``max_drift`` included."""
        d = asdict(self)
        d["positions"], d["max_drift"] = self.positions, self.max_drift
        return _clean(d)

    def table_text(self) -> str:
        """The per-token table: position, token, stored rollout / trainer, the replays, the drift."""
        extra = [n for n in self.at_recorded]
        header = ["pos", "token", "rollout", "trainer", "vLLM", "transformers", "drift"]
        header += [f"tf@{settings_text(self.recorded[n])} ({n})" for n in extra]
        marks = ["<- first divergence" if j == self.first_divergence else "" if self.counted[j] else "(not counted)"
                 for j in self.positions]
        rows = [[j, repr(self.tokens[j]), _f(self.rollout, j), _f(self.trainer, j), _f(self.vllm, j),
                 _f(self.transformers, j), f"{self.drift[j]:+.2e}"] + [_f(self.at_recorded[n], j) for n in extra]
                + ([marks[j]] if any(marks) else []) for j in self.positions]
        return text_table(header + ([""] if any(marks) else []), rows)

    def __str__(self) -> str:
        return f"{self.table_text()}\n\n{self.verdict}"


def _f(values: list | None, j: int) -> str:
    v = None if values is None else values[j]
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


# ------------------------------------------------------------------------------------- the replays
def recorded_settings(batch: Batch) -> dict[str, tuple[float, float, int]]:
    """(temperature, top_p, top_k) each stored series was computed at, from what the batch records.

    The rollout: ``batch.sampling`` in processed mode (its T, top-p, top-k; T = 0, greedy, counts as 1),
    else raw (:data:`RAW`). The trainer: ``batch.scoring["student_logprobs"]`` (1.0 when not recorded).
    """
    out = {"rollout": RAW, "trainer": (float(batch.scoring.get(STUDENT_LOGPROBS, 1.0)), 1.0, 0)}
    s = batch.sampling
    if s is not None and s.logprobs_mode == "processed_logprobs":
        out["rollout"] = (s.temperature if s.temperature > 0 else 1.0, s.top_p, s.top_k)
    return out


def _candidates(batch: Batch) -> list[tuple[float, float, int]]:
    """Every setting the batch mentions: T = 1 raw, the sampling T (plain and processed), each scoring T."""
    found = [RAW, *recorded_settings(batch).values()]
    s = batch.sampling
    if s is not None and s.temperature > 0:
        found += [(s.temperature, 1.0, 0), (s.temperature, s.top_p, s.top_k)]
    found += [(float(t), 1.0, 0) for t in batch.scoring.values() if t and t > 0]
    return list(dict.fromkeys(found))


def transformers_replay(logits: torch.Tensor, tokens: torch.Tensor, settings: tuple[float, float, int]) -> torch.Tensor:
    """log p(y_j) [L] from the logits [1, L, V] predicting ``tokens`` [1, L], at (T, top_p, top_k):
    plain ``sampled_logprobs`` at T, or vLLM's processed log-probs (``rollout.process_logits``) when truncated."""
    T, top_p, top_k = settings
    if top_p < 1.0 or top_k:
        z = process_logits(logits.float(), T, top_p, top_k)
        return torch.log_softmax(z, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)[0].double().cpu()
    return sampled_logprobs(logits, tokens, temperature=T)[0].double().cpu()


def vllm_replay(engine: VLLMEngine, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """The vLLM log-prob [L] float64 of each completion token of ``prompt + completion`` (prompt log-probs, T = 1)."""
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, seed=0)
    with quiet_output() if engine.quiet else contextlib.nullcontext():
        out = engine.llm.generate([{"prompt_token_ids": prompt + completion}], params, use_tqdm=False)[0]
    lps = out.prompt_logprobs
    vals = []
    for j, tok in enumerate(completion):
        entry = lps[len(prompt) + j] or {}
        if tok not in entry:
            raise BatchError(f"vLLM returned no prompt log-prob for completion token {j} (id {tok}); got ids {list(entry)}")
        vals.append(entry[tok].logprob)
    return torch.tensor(vals, dtype=torch.float64)


def _model_len(model_dir: Path, n: int) -> int:
    """vLLM's ``max_model_len`` for a sequence of n tokens plus the one generated: a power of two >= 64
    (rows of similar length share one engine), at most the model's ``max_position_embeddings``."""
    cfg = json.loads((model_dir / "config.json").read_text())
    limit = int(cfg.get("max_position_embeddings") or cfg.get("max_seq_len") or 1 << 20)
    if n + 1 > limit:
        raise BatchError(f"prompt + completion is {n} tokens; the model's max_position_embeddings is {limit}: it "
                         "cannot score this row")
    return min(limit, max(64, 1 << n.bit_length()))


def replay_row(batch: Batch, row: int, model_dir: str | Path, *, dtype: str = "float32", device: str = "cpu",
               trainer_dtype: str = "float32", tol: Tolerances = Tolerances(), max_model_len: int | None = None,
               source: str = "") -> ReplayResult:
    """Replay row ``row`` of ``batch`` on vLLM (``dtype``) and transformers (``trainer_dtype`` on ``device``).

    ``model_dir``: the local model the row was sampled and scored with. vLLM runs on the platform of the
    installed build (this machine: CPU, in-process, with :func:`iwopd_kit.configure_vllm_env`'s settings);
    ``device`` places the transformers model. Returns a :class:`ReplayResult`; bad input (row out of range,
    a token outside the vocabulary, a row too long for the model) is a :class:`BatchError` naming it.
    """
    for name, d in (("dtype", dtype), ("trainer_dtype", trainer_dtype)):
        if d not in DTYPES:
            raise ValueError(f"{name} must be one of {DTYPES}, got {d!r}")
    if not 0 <= row < batch.size:
        raise BatchError(f"row {row} is out of range: the batch has {batch.size} rows (0..{batch.size - 1})")
    model_dir = Path(model_dir)
    one = batch.select([row])
    prompt, completion = one.prompt_ids[0], one.completion_ids[0]
    if not prompt:
        raise BatchError(f"row {row}: empty prompt; the first completion token needs a preceding position to be scored")
    vocab = _vocab(model_dir)
    for where, ids in (("prompt", prompt), ("completion", completion)):
        bad = next(((j, t) for j, t in enumerate(ids) if not 0 <= t < vocab), None)
        if bad is not None:
            raise BatchError(f"row {row}: {where} token {bad[0]} has id {bad[1]}, outside the vocabulary of {model_dir} "
                             f"({vocab} ids); expected the model the row was made with")
    engine = VLLMEngine(model_dir, dtype=dtype, max_model_len=max_model_len or _model_len(model_dir, len(prompt) + len(completion)))
    v1 = vllm_replay(engine, prompt, completion)
    model = load_model(model_dir, dtype=getattr(torch, trainer_dtype)).to(device)
    with torch.no_grad():
        z = completion_logits(model, one)
        y = one.tokens().to(z.device)
        replays = {s: transformers_replay(z, y, s) for s in _candidates(one)}
    tokenizer = load_tokenizer(model_dir)
    stored = {n: (one.series(f, torch.float64)[0] if one.has(f) else None) for n, f in SERIES}
    dtypes = {dtype, trainer_dtype} | {str(v) for m in (one.meta or []) if isinstance(m, dict)
                                       for k, v in m.items() if k in ("rollout_dtype", "trainer_dtype") and v}
    low = any(d not in FULL_PRECISION for d in dtypes)
    tolerance = tol.rounding if low else tol.same
    rec = recorded_settings(one)
    sampled_t = one.sampling.temperature if one.sampling is not None and one.sampling.temperature > 0 else None
    def replay_at(t: float, positions: torch.Tensor) -> torch.Tensor:      # the fit's replay at T, on some tokens
        with torch.no_grad():
            return transformers_replay(z[:, positions.to(z.device)], y[:, positions.to(y.device)], (t, 1.0, 0))

    diag = diagnose(v1, replays, stored, one.policy_mask()[0], rec, tolerance, tol, sampled_t, replay_at)
    at_rec = {n: replays[s].tolist() for n, s in rec.items() if s != RAW and stored[n] is not None}
    return ReplayResult(
        row=row, source=source, model_dir=str(model_dir), dtype=dtype, trainer_dtype=trainer_dtype, device=device,
        token_ids=list(completion), tokens=[tokenizer.decode([t]) for t in completion],
        counted=one.policy_mask()[0].tolist(),
        rollout=None if stored["rollout"] is None else one.rollout_logprobs[0],
        trainer=None if stored["trainer"] is None else one.student_logprobs[0],
        vllm=v1.tolist(), transformers=replays[RAW].tolist(), drift=(v1 - replays[RAW]).tolist(),
        tolerance=tolerance, tolerance_name="rounding" if low else "same",
        recorded={n: dict(zip(("temperature", "top_p", "top_k"), s)) for n, s in rec.items()},
        at_recorded=at_rec, **diag)


def _vocab(model_dir: Path) -> int:
    cfg_path = model_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a local model directory")
    cfg = json.loads(cfg_path.read_text())
    vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
    if not isinstance(vocab, int):
        raise ValueError(f"{cfg_path}: no vocab_size; expected a causal LM's config")
    return vocab


__all__ = ["DTYPES", "RAW", "ReplayResult", "diagnose", "recorded_settings", "replay_row", "transformers_replay",
           "vllm_replay"]
