"""prime-rl's token-export writer path, reproduced for fixtures, and prime-rl's own ``mismatch_kl``.

Every step below is a minimal copy of prime-rl's code at commit
559b44772e471d1538537b8805cc77f3824a5e64 (github.com/PrimeIntellect-ai/prime-rl), with the file and
lines it copies; what is left out (multimodal, routed experts, LoRA, context parallelism, several
train workers) is never used by the fixtures. Samples are plain dicts with prime-rl's
``TrainingSample`` fields (src/prime_rl/transports/rollouts/types.py L23-70).

1. orchestrator: ``_prune_zero_advantages`` (src/prime_rl/orchestrator/train_sink.py L36-61) and
   ``stamp_loss_routing`` (src/prime_rl/orchestrator/algo/routing.py L67-84);
2. packing: ``prepare_sample`` (src/prime_rl/trainer/batch.py L345-458, no truncation),
   ``packed_samples_into_micro_bs`` (L637-674, one train worker), ``_materialize_bin`` (L538-617),
   ``pad_micro_batch`` (L692-738); tensors as the data loader builds them (trainer/rl/data.py L209-238);
3. trainer forward: labels ``shift_tensor_left`` (trainer/rl/loss.py L66-73; train.py L381), per-token
   temperature scaling and ``selective_log_softmax`` (train.py L436-443, loss.py L50-63), the right
   shift with log(1/V) / log(V) at position 0 (train.py L450-457);
4. export: ``TokenExporter.export`` / ``_write`` / ``mark_stable`` and the column helpers
   (src/prime_rl/trainer/rl/token_export.py L42-260), ``compute_importance_ratio_and_mismatch_kl``
   (loss.py L100-106), ``DefaultLossConfig`` defaults dppo_mask_low = dppo_mask_high = 0.2
   (packages/prime-rl-configs/src/prime_rl/configs/trainer.py L494-500).

:func:`primerl_mismatch_kl` recomputes the trainer's logged ``mismatch_kl/all`` and
``mismatch_kl/<env>`` (train.py L496-520, pooled by ``Tensors.compute_stats``, trainer/utils.py
L245-281) from an export file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch

COMMIT = "559b44772e471d1538537b8805cc77f3824a5e64"
STREAM_FILL = {"rl_weights": 1.0, "ce_weights": 0.0, "ref_kl_weights": 0.0}       # trainer/batch.py L14
DPPO_MASK_LOW = DPPO_MASK_HIGH = 0.2


# -- 1. orchestrator --------------------------------------------------------------------------------
def prune_zero_advantages(sample: dict) -> bool:
    """train_sink.py L36-61: zero-advantage trainable tokens leave the rl component; False = drop the sample."""
    if sample["advantages"] is None:
        return True
    rl = [1.0 if m else 0.0 for m in sample["mask"]] if sample["rl_weights"] is None else list(sample["rl_weights"])
    changed = False
    for i, (m, a, w) in enumerate(zip(sample["mask"], sample["advantages"], rl)):
        if m and a == 0.0 and w != 0.0:
            rl[i], changed = 0.0, True
    if not changed:
        return True
    sample["rl_weights"] = rl
    has = lambda s: s is not None and any(w != 0.0 for w in s)  # noqa: E731
    return any(m and w != 0.0 for m, w in zip(sample["mask"], rl)) or has(sample["ce_weights"]) or has(
        sample["ref_kl_weights"])


def stamp_loss_routing(sample: dict, action_loss_type: str) -> None:
    """routing.py L67-84: route the action tokens of a ce (sft) / ref_kl (opd) algorithm."""
    if action_loss_type == "rl":
        return
    n = len(sample["token_ids"])
    sample["rl_weights"] = [0.0] * n
    action = sample["ce_weights"] if action_loss_type == "ce" and sample["ce_weights"] is not None else [0.0] * n
    for i, trains in enumerate(sample["mask"]):
        if trains:
            action[i] = 1.0
    sample["ce_weights" if action_loss_type == "ce" else "ref_kl_weights"] = action


# -- 2. packing -------------------------------------------------------------------------------------
def prepare_sample(s: dict, seq_len: int) -> dict:
    """trainer/batch.py L345-458 (text only; the fixtures never exceed seq_len)."""
    n = len(s["token_ids"])
    assert n <= seq_len and len(s["temperatures"]) == n
    adv = list(s["advantages"]) if s["advantages"] is not None else [0.0] * n
    return {"input_ids": list(s["token_ids"]), "advantages": adv, "loss_mask": list(s["mask"]),
            "position_ids": list(range(n)), "inference_logprobs": list(s["logprobs"]), "sequence_lengths": [n],
            "temperatures": list(s["temperatures"]), "env_names": [s["env_name"]] * n, "seq_lens": [n],
            **{k: (list(s[k]) if s[k] is not None else None) for k in STREAM_FILL}, "_ids": [s["_id"]]}


def pack(samples: list[dict], seq_len: int) -> list[dict]:
    """packed_samples_into_micro_bs (L637-674, num_train_workers = 1) + _materialize_bin (L538-617)."""
    samples = sorted(samples, key=lambda s: -len(s["input_ids"]))       # list.sort: stable, as in L653
    bins: list[list[dict]] = []
    for s in samples:
        for b in bins:
            if sum(len(x["input_ids"]) for x in b) + len(s["input_ids"]) <= seq_len:
                b.append(s)
                break
        else:
            bins.append([s])
    out = []
    for b in bins:
        mb: dict[str, Any] = {k: [] for k in ("input_ids", "loss_mask", "advantages", "inference_logprobs",
                                              "position_ids", "temperatures", "env_names", "seq_lens", "_ids")}
        has = {k: any(s[k] is not None for s in b) for k in STREAM_FILL}
        for k in STREAM_FILL:
            mb[k] = [] if has[k] else None
        for s in b:
            for k in ("input_ids", "loss_mask", "advantages", "inference_logprobs", "position_ids", "temperatures",
                      "env_names", "seq_lens", "_ids"):
                mb[k].extend(s[k])
            for k, fill in STREAM_FILL.items():
                if mb[k] is not None:
                    mb[k].extend(s[k] if s[k] is not None else [fill] * len(s["input_ids"]))
        mb["sequence_lengths"] = [len(s["input_ids"]) for s in b]
        out.append(mb)
    return out


def pad_micro_batch(mb: dict, multiple: int) -> dict:
    """trainer/batch.py L692-738: pad to a multiple; the padding joins the last sample."""
    pad = (multiple - len(mb["input_ids"]) % multiple) % multiple
    if not (multiple > 1 and pad > 0):
        return mb
    mb["input_ids"] += [1] * pad
    mb["advantages"] += [0.0] * pad
    mb["loss_mask"] += [False] * pad
    mb["position_ids"] += list(range(pad))
    mb["sequence_lengths"][-1] += pad
    mb["seq_lens"][-1] += pad
    mb["inference_logprobs"] += [0.0] * pad
    mb["temperatures"] += [1.0] * pad
    for k in STREAM_FILL:
        if mb[k] is not None:
            mb[k] += [0.0] * pad
    mb["env_names"] += [""] * pad
    return mb


def to_tensors(mb: dict) -> dict:
    """trainer/rl/data.py L209-238: [1, N] tensors (float32 / bool / long), streams None when absent."""
    f = lambda v: torch.tensor(v, dtype=torch.float).unsqueeze(0)  # noqa: E731
    out = {"input_ids": torch.tensor(mb["input_ids"], dtype=torch.long).unsqueeze(0),
           "position_ids": torch.tensor(mb["position_ids"], dtype=torch.long).unsqueeze(0),
           "advantages": f(mb["advantages"]), "inference_logprobs": f(mb["inference_logprobs"]),
           "loss_mask": torch.tensor(mb["loss_mask"], dtype=torch.bool).unsqueeze(0), "temperatures": f(mb["temperatures"]),
           "env_names": mb["env_names"], "sequence_lengths": mb["sequence_lengths"]}
    out.update({k: (f(mb[k]) if mb[k] is not None else None) for k in STREAM_FILL})
    return out


# -- 3. trainer forward -----------------------------------------------------------------------------
def shift_left(t: torch.Tensor) -> torch.Tensor:
    """loss.py L66-73."""
    return torch.cat([t[:, 1:], torch.zeros((t.shape[0], 1), dtype=t.dtype)], dim=1)


def shift_right(t: torch.Tensor, pad_value: float) -> torch.Tensor:
    """loss.py L76-91."""
    return torch.cat([torch.full((t.shape[0], 1), pad_value, dtype=t.dtype), t[:, :-1]], dim=1)


def trainer_forward(logits_fn: Callable[[torch.Tensor], torch.Tensor], mb: dict, vocab: int,
                    unshifted: bool = False) -> dict[str, torch.Tensor]:
    """train.py L381 + L436-457: logits [1, N, V] of the packed ids, per-token temperatures, selective
    log-softmax of the next token, shifted right so position t is the log-prob of ``input_ids[t]``.

    ``unshifted=True`` skips the right shift (a broken trainer path: next-token convention)."""
    labels = shift_left(mb["input_ids"])
    scaled = logits_fn(mb["input_ids"]) / mb["temperatures"].unsqueeze(-1)            # (1, N, V)
    logprobs = torch.gather(scaled.log_softmax(-1), -1, labels.unsqueeze(-1)).squeeze(-1)
    pd = scaled.softmax(-1)
    entropy = torch.logsumexp(scaled, -1) - (pd * scaled).sum(-1)
    if unshifted:
        return {"logprobs": logprobs, "entropy": entropy}
    return {"logprobs": shift_right(logprobs, math.log(1.0 / vocab)),
            "entropy": shift_right(entropy, math.log(float(vocab)))}


# -- 4. export --------------------------------------------------------------------------------------
def _json_float(v: float | None) -> float | None:
    """token_export.py L247-253."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _floats(t: torch.Tensor | None, n: int) -> list[float | None]:
    """_tensor_to_floats / _optional_tensor_to_floats (L212-220)."""
    if t is None:
        return [None] * n
    return [_json_float(v) for v in t.detach().to(dtype=torch.float32).reshape(-1).tolist()]


def _bools(t: torch.Tensor | None, n: int) -> list[bool | None]:
    return [None] * n if t is None else [bool(v) for v in t.reshape(-1).tolist()]


def export_tensors(mb: dict, trainer_logprobs: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """_compute_export_tensors (L160-201) with DefaultLossConfig."""
    fields: dict[str, torch.Tensor | None] = dict.fromkeys(
        ("log_importance_ratio", "importance_ratio", "mismatch_kl", "prob_delta", "is_masked", "is_masked_high",
         "is_masked_low"))
    rl, ref = mb["rl_weights"], mb["ref_kl_weights"]
    no_rl = rl is not None and not bool((rl != 0).any())
    no_ref_kl = ref is None or not bool((ref != 0).any())
    if no_rl and no_ref_kl:
        return fields
    inf, lm, adv = mb["inference_logprobs"], mb["loss_mask"], mb["advantages"]
    log_ratio = trainer_logprobs - inf
    ratio = torch.exp(log_ratio)
    prob_delta = torch.exp(trainer_logprobs) - torch.exp(inf)
    fields.update(log_importance_ratio=log_ratio, importance_ratio=ratio, mismatch_kl=ratio - log_ratio - 1,
                  prob_delta=prob_delta)
    high, low = prob_delta > DPPO_MASK_HIGH, prob_delta < -DPPO_MASK_LOW
    fields["is_masked"] = lm & torch.where(adv > 0, high, low)
    fields["is_masked_high"] = lm & (adv > 0) & high
    fields["is_masked_low"] = lm & (adv < 0) & low
    return fields


def export_columns(mb: dict, out: dict[str, torch.Tensor]) -> dict[str, list]:
    """_export_columns (L128-157)."""
    n = mb["input_ids"].numel()
    ex = export_tensors(mb, out["logprobs"])
    cols = {"token_ids": mb["input_ids"].reshape(-1).tolist(), "position_ids": mb["position_ids"].reshape(-1).tolist(),
            "loss_mask": _bools(mb["loss_mask"], n), "advantages": _floats(mb["advantages"], n),
            "inference_logprobs": _floats(mb["inference_logprobs"], n), "trainer_logprobs": _floats(out["logprobs"], n),
            "entropy": _floats(out["entropy"], n)}
    for k in ("mismatch_kl", "log_importance_ratio", "importance_ratio", "prob_delta"):
        cols[k] = _floats(ex[k], n)
    for k in ("is_masked", "is_masked_high", "is_masked_low"):
        cols[k] = _bools(ex[k], n)
    for k in STREAM_FILL:
        cols[k] = _floats(mb[k], n)
    cols["env_names"] = list(mb["env_names"])
    assert len({len(v) for v in cols.values()}) == 1                  # _check_lengths (L229-232)
    return cols


class Exporter:
    """TokenExporter (L28-112): one JSONL line per sample, ``STABLE`` once the step is flushed."""

    def __init__(self, output_dir: Path, rank: int = 0):
        self.rank, self.dir = rank, Path(output_dir) / "token_exports"
        self.count: dict[tuple[int, int], int] = {}
        self.started: set[tuple[int, int]] = set()
        self.pending: set[Path] = set()
        self.written_ids: list[int] = []                # the fixture's sample id of each written line

    def export(self, step: int, micro_step: int, mb: dict, out: dict, ids: list[int]) -> None:
        cols = export_columns(mb, out)
        key, start = (step, self.rank), 0
        for idx, length in enumerate(mb["sequence_lengths"]):
            raw_end = start + length
            end = raw_end
            while end > start and cols["env_names"][end - 1] == "" and not cols["loss_mask"][end - 1]:
                end -= 1                                                 # _trim_padding (L239-244)
            if end > start and any(cols["loss_mask"][start:end]):
                env = next((e for e in cols["env_names"][start:end] if e), None)
                rec = {"schema_version": 1, "step": step, "rank": self.rank, "micro_step": micro_step,
                       "micro_sequence_idx": idx, "export_sequence_idx": self.count.get(key, 0), "env_name": env,
                       **{k: list(v[start:end]) for k, v in cols.items() if k != "env_names"}}
                self._write(rec, step)
                self.written_ids.append(ids[idx])
                self.count[key] = self.count.get(key, 0) + 1
            start = raw_end

    def _write(self, rec: dict, step: int) -> None:
        d = self.dir / f"step_{step}"
        d.mkdir(parents=True, exist_ok=True)
        key = (step, self.rank)
        with (d / f"rank_{self.rank}.jsonl").open("a" if key in self.started else "w", encoding="utf-8") as f:
            f.write(json.dumps(rec, separators=(",", ":"), allow_nan=False) + "\n")
        self.started.add(key)
        self.pending.add(d)

    def mark_stable(self) -> None:
        while self.pending:
            (self.pending.pop() / "STABLE").touch()


def train_step(samples: list[dict], logits_fn: Callable, vocab: int, out_dir: Path, step: int, seq_len: int = 48,
               pad_multiple: int = 8, unshifted_micro_steps: tuple[int, ...] = (),
               edit: Callable[[int, dict, dict, list[int]], None] | None = None) -> list[int]:
    """One trainer step over ``samples`` (TrainingSample dicts with an ``_id``): pack, forward, export.

    ``edit(micro_step, tensors, out, sample_ids)`` may alter the forward's output (a broken trainer). Returns the
    sample id of each exported line, in file order."""
    exp = Exporter(out_dir)
    mbs = [pad_micro_batch(mb, pad_multiple) for mb in pack([prepare_sample(s, seq_len) for s in samples], seq_len)]
    for micro_step, mb in enumerate(mbs):
        t = to_tensors(mb)
        out = trainer_forward(logits_fn, t, vocab, unshifted=micro_step in unshifted_micro_steps)
        if edit is not None:
            edit(micro_step, t, out, mb["_ids"])
        exp.export(step, micro_step, t, out, mb["_ids"])
    exp.mark_stable()
    return exp.written_ids


# -- prime-rl's own metric --------------------------------------------------------------------------
def primerl_mismatch_kl(path: str | Path, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """``mismatch_kl/all`` and ``mismatch_kl/<env_name>`` as train.py L496-520 pools them, from an export file.

    Per token ``exp(d) - d - 1`` with d = trainer_logprobs - inference_logprobs (loss.py L100-106), over
    ``mismatch_mask = loss_mask & sampled`` where sampled = ``rl_weights != 0`` when the micro batch
    carries an rl stream (else ``loss_mask``), OR ``ref_kl_weights != 0`` when it carries a ref_kl
    stream; a micro batch with neither pools ``loss_mask``. The per-record streams say which: a stream
    the micro batch lacked is all null in each of its records. The means are over all pooled tokens of
    the file (one rank's share of the step; ``Tensors.compute_stats`` gathers ranks and takes the mean).
    A null log-prob counts as NaN (what the trainer saw was NaN or ±inf), so the mean is NaN.

    ``dtype=torch.float64`` is the definition, evaluated as ``expm1(d) - d`` (what the kit's float64
    metric must equal); ``torch.float32`` is the trainer's own arithmetic, where ``exp(d) - d - 1`` of a
    |d| ~ 1e-6 is float32 rounding (~1e-7 per token, either sign).
    """
    pooled: dict[str, list[torch.Tensor]] = {}
    with Path(path).open() as f:
        for line in f:
            rec = json.loads(line)
            lm = torch.tensor(rec["loss_mask"], dtype=torch.bool)
            w = {k: (None if all(v is None for v in rec[k]) else torch.tensor(rec[k], dtype=torch.float64))
                 for k in ("rl_weights", "ref_kl_weights")}
            if w["rl_weights"] is None and w["ref_kl_weights"] is None:
                pool = lm
            else:
                sampled = (w["rl_weights"] != 0) if w["rl_weights"] is not None else lm
                if w["ref_kl_weights"] is not None:
                    sampled = sampled | (w["ref_kl_weights"] != 0)
                pool = lm & sampled
            nan = float("nan")
            t = torch.tensor([nan if v is None else v for v in rec["trainer_logprobs"]], dtype=dtype)
            i = torch.tensor([nan if v is None else v for v in rec["inference_logprobs"]], dtype=dtype)
            d = t - i
            kl = (torch.expm1(d) - d if dtype == torch.float64 else torch.exp(d) - d - 1)[pool]
            for key in ("all", rec["env_name"]):
                pooled.setdefault(f"mismatch_kl/{key}", []).append(kl)
    return {k: float(torch.cat(v).mean()) for k, v in pooled.items() if sum(x.numel() for x in v)}
