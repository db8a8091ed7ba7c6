"""slime's debug dumps -> completion coordinates.

Read from github.com/THUDM/slime at commit 624b824a (2026-08-21); line numbers at that commit.

**Rollout dump** (``--save-debug-rollout-data PATH``, e.g. ``data_{rollout_id}.pt``;
``slime/observability/rollout_data_utils.py`` L140-153): ``torch.save({"rollout_id": int,
"samples": [Sample.to_dict(), ...]})``, saved after the rollout function returns and before the
samples become training data (``slime/ray/rollout.py`` L492-511); an evaluation dump is the same
under ``eval_{rollout_id}``. ``Sample.to_dict()`` (``slime/utils/types.py`` L222-227) is the
sample's ``__dict__``: plain lists, numbers, strings, dicts and a few tensors (``status`` as its
string value). So the file loads with ``torch.load(weights_only=True)`` unless a sample carries
other objects (images in ``multimodal_inputs``, a custom reward object): then the safe load names
the class and the file reads only behind ``allow_pickle=True`` (slime itself loads it with
``weights_only=False``, ``rollout_data_utils.py`` L125). Per sample:

- ``tokens``: prompt ids followed by the response ids; the response is the last
  ``response_length`` of them (``types.py`` L286-292; the trainer slices ``start = end -
  response_length``, ``slime/backends/megatron_utils/loss.py`` L499-508);
- ``loss_mask``: ``response_length`` ints over the response only, or None (= all ones,
  ``rollout.py`` L672-675); tool / environment tokens appended with ``trainable=False`` are 0,
  and have a rollout log-prob of exactly 0.0 and an empty top-p span (``types.py`` L278-281,
  L304-350); ``remove_sample`` zeroes the whole mask for training (``rollout.py`` L680-681);
- ``rollout_log_probs``: ``response_length`` floats, SGLang's ``output_token_logprobs``: at the
  rollout temperature and, with ``--rollout-top-p`` < 1, renormalised over the nucleus plus the
  sampled token (slime's SGLang patch ``docker/patch/latest/sglang-top_p.patch``,
  ``renorm_logprob_over_top_p``);
- ``rollout_top_p_token_ids`` / ``rollout_top_p_token_offsets`` (int32 tensors, or None when
  top-p is 1): the kept set of response token j is ``ids[offsets[j]:offsets[j + 1]]``, offsets has
  ``response_length + 1`` entries from 0 to ``len(ids)`` (``types.py`` L122-125, L418-443); an empty
  span means none recorded (tool tokens);
- ``teacher_log_probs`` (on-policy distillation, a float32 tensor): the teacher's log-prob of each
  response token (``slime/rollout/on_policy_distillation.py`` L45-59);
- ``index``, ``group_index`` (the prompt's group of ``n_samples_per_prompt``), ``rollout_id``,
  ``reward``, ``label``, ``status`` ("completed" / "truncated" / "aborted" / ...), ``metadata``,
  ``weight_versions``, ``remove_sample``, ...

**Train dump** (``--save-debug-train-data``, ``slime/observability/train_data_utils.py``
L104-242): ``torch.save({"format_version": 2, "rollout_id", "rank", "samples": [...], "dp_shards":
[...], "raw_reward": [...]})``. Each sample holds the rollout's per-sample training fields as CPU
tensors (``tokens``, ``response_lengths``, ``loss_masks`` (after ``remove_sample``),
``rollout_log_probs``, top-p ids / offsets, ``teacher_log_probs``, ``rewards``, ...), the trainer's
``log_probs`` (the policy before the update), ``ref_log_probs`` (the frozen reference model of the KL
penalty, not a teacher), ``advantages``, ``returns``, ..., all ``response_length`` long, plus
``sample_index`` (``Sample.index``) and ``rollout_position`` (the sample's index in the rollout
dump's ``samples``); samples are sorted by ``rollout_position``. The trainer computes ``log_probs``,
``ref_log_probs`` and a Megatron teacher's ``teacher_log_probs`` from logits divided by the rollout
temperature and, with top-p < 1, renormalised over the rollout's kept set plus the target token
(``loss.py`` L513-591, ``slime/utils/ppo_utils.py`` L255-275): the same frame as the rollout series.

Completion coordinates: the response; ``loss_mask`` is the mask; a masked token whose rollout
log-prob is exactly 0.0 and whose top-p span (when recorded) is empty is ``context`` (a tool /
environment token), every other token ``policy``. Series: rollout = ``rollout_log_probs``, student =
the train dump's ``log_probs``, teacher = ``teacher_log_probs`` (the train dump's when it has one).
``ref_log_probs`` stay in ``meta["slime"]["ref_log_probs"]``. Groups: slime's ``get_source``
(``slime/utils/data.py`` L332-338): ``sample.source``, else ``metadata["source_name"]``, else
``"unknown"``. The dump does not record the sampling settings (temperature, top-p): pass
``sampling=`` when they matter (``kept_logmass`` is computed at ``sampling.temperature``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS, Batch, BatchError
from ..batch.sampling import SamplingSettings
from . import files

STATUS_FINISH = {"completed": "stop", "truncated": "length"}
ROLLOUT_META = ("index", "group_index", "rollout_id", "status", "reward", "label", "remove_sample", "weight_versions")


def is_slime_rollout(d: Any) -> bool:
    """A rollout dump: ``{"rollout_id", "samples"}`` and not the train dump's ``format_version`` / ``dp_shards``."""
    return isinstance(d, Mapping) and {"rollout_id", "samples"} <= set(d) and "dp_shards" not in d


def is_slime_train(d: Any) -> bool:
    """A train dump: ``samples`` with ``dp_shards`` (``format_version`` 2)."""
    return isinstance(d, Mapping) and {"samples", "dp_shards"} <= set(d)


# ---------------------------------------------------------------------------------------- values
def _plain(x: Any) -> Any:
    """Tensors -> Python lists / numbers (``tolist`` keeps the stored float32 values exactly)."""
    return x.tolist() if hasattr(x, "tolist") and not isinstance(x, (list, tuple)) else x


def _ints(where: str, key: str, x: Any, n: int | None = None) -> list[int] | None:
    x = _plain(x)
    if x is None:
        return None
    if not isinstance(x, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in x):
        raise BatchError(f"{where}: {key} must be a list (or tensor) of ints, got {str(x)[:80]}")
    if n is not None and len(x) != n:
        raise BatchError(f"{where}: {key} has {len(x)} values; expected {n}")
    return list(x)


def _floats(where: str, key: str, x: Any, n: int) -> list[float] | None:
    x = _plain(x)
    if x is None:
        return None
    if not isinstance(x, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in x):
        raise BatchError(f"{where}: {key} must be a list (or tensor) of floats, got {str(x)[:80]}")
    if len(x) != n:
        raise BatchError(f"{where}: {key} has {len(x)} values for response_length {n}; expected one per response token")
    return [float(v) for v in x]


def _kept(where: str, ids: Any, offsets: Any, n: int) -> list[list[int] | None] | None:
    """Per response token, ``ids[offsets[j]:offsets[j + 1]]`` (None where the span is empty)."""
    ids, offsets = _ints(where, "rollout_top_p_token_ids", ids), _ints(where, "rollout_top_p_token_offsets", offsets)
    if ids is None and offsets is None:
        return None
    if ids is None or offsets is None:
        raise BatchError(f"{where}: has only one of rollout_top_p_token_ids / rollout_top_p_token_offsets; expected both")
    if len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != len(ids):
        raise BatchError(f"{where}: rollout_top_p_token_offsets has {len(offsets)} entries from {offsets[:1]} to "
                         f"{offsets[-1:]}; expected response_length + 1 = {n + 1} from 0 to len(ids) = {len(ids)}")
    for j in range(n):
        if offsets[j + 1] < offsets[j]:
            raise BatchError(f"{where}, position {j}: rollout_top_p_token_offsets decrease ({offsets[j]} -> "
                             f"{offsets[j + 1]}); expected non-decreasing offsets")
    return [ids[offsets[j]:offsets[j + 1]] or None for j in range(n)]


def _jsonable(x: Any) -> Any:
    x = _plain(x)
    try:
        json.dumps(x, allow_nan=True)
        return x
    except (TypeError, ValueError):
        return repr(x)


def _source(sample: Mapping[str, Any]) -> str:
    """slime's ``get_source`` (``slime/utils/data.py`` L332-338)."""
    metadata = sample.get("metadata") or {}
    if sample.get("source"):
        return str(sample["source"])
    if isinstance(metadata, Mapping) and metadata.get("source_name"):
        return str(metadata["source_name"])
    return "unknown"


# ------------------------------------------------------------------------------------------ rows
class _Rows:
    """The columns of the Batch being built, one response at a time."""

    def __init__(self) -> None:
        self.prompts, self.comps, self.masks, self.sources, self.kept = [], [], [], [], []
        self.series: dict[str, list] = {ROLLOUT_LOGPROBS: [], STUDENT_LOGPROBS: [], TEACHER_LOGPROBS: []}
        self.meta, self.groups, self.finish = [], [], []

    def add(self, where: str, tokens: Any, n: Any, mask: Any, series: dict[str, Any], top_ids: Any,
            top_offsets: Any, remove: bool) -> None:
        tokens = _ints(where, "tokens", tokens)
        if tokens is None:
            raise BatchError(f"{where}: no tokens; expected the prompt ids followed by the response ids")
        n = _plain(n)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(tokens):
            raise BatchError(f"{where}: response_length {n!r} with {len(tokens)} tokens; expected 1 <= "
                             "response_length <= len(tokens) (the response is the last response_length tokens)")
        p = len(tokens) - n
        mask = _ints(where, "loss_mask", mask, n)
        mask = [True] * n if mask is None else [bool(v) for v in mask]
        if remove:
            mask = [False] * n
        vals = {k: _floats(where, key, v, n) for k, (key, v) in series.items()}
        kept = _kept(where, top_ids, top_offsets, n)
        roll = vals[ROLLOUT_LOGPROBS]
        src = ["policy"] * n
        if roll is not None:
            for j in range(n):
                if not mask[j] and not remove and roll[j] == 0.0 and (kept is None or kept[j] is None):
                    src[j] = "context"
        self.prompts.append(tokens[:p])
        self.comps.append(tokens[p:])
        self.masks.append(mask)
        self.sources.append(src)
        self.kept.append(kept)
        for k, v in vals.items():
            self.series[k].append(v)

    def batch(self, what: str, sampling: SamplingSettings | None) -> Batch:
        if not self.comps:
            raise BatchError(f"{what}: no samples; expected a non-empty 'samples' list")
        some = {k: (v if any(r is not None for r in v) else None) for k, v in self.series.items()}
        try:
            return Batch(prompt_ids=self.prompts, completion_ids=self.comps, **some,
                         mask=None if all(all(m) for m in self.masks) else self.masks,
                         token_source=None if all(s == "policy" for r in self.sources for s in r) else self.sources,
                         kept_ids=self.kept if any(k is not None for k in self.kept) else None,
                         groups=self.groups, finish_reasons=self.finish, meta=self.meta, sampling=sampling)
        except BatchError as e:
            raise BatchError(f"{what}: {e}") from None


def _samples(dump: Mapping[str, Any], what: str) -> list[Mapping[str, Any]]:
    samples = dump.get("samples")
    if not isinstance(samples, (list, tuple)) or not samples:
        raise BatchError(f"{what}: 'samples' must be a non-empty list of sample dicts, got {type(samples).__name__}")
    for i, s in enumerate(samples):
        if not isinstance(s, Mapping):
            raise BatchError(f"{what}, sample {i}: expected a dict (Sample.to_dict()), got {type(s).__name__}")
    return list(samples)


def _train_index(rollout: list[Mapping[str, Any]], train: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The train sample of each rollout sample: by ``rollout_position``, else by ``sample_index`` == ``index``."""
    tsamples = _samples(train, "slime train dump")
    if all(t.get("rollout_position") is not None for t in tsamples):
        key, own = "rollout_position", {i: i for i in range(len(rollout))}
    else:
        key, own = "sample_index", {}
        for i, s in enumerate(rollout):
            if s.get("index") is None or s["index"] in own:
                raise BatchError(f"slime rollout dump, sample {i}: index {s.get('index')!r} is missing or repeated, and "
                                 "the train dump has no rollout_position: expected unique sample indices to join on")
            own[s["index"]] = i
    found: dict[int, Mapping[str, Any]] = {}
    for t_i, t in enumerate(tsamples):
        k = _plain(t.get(key))
        if k not in own:
            raise BatchError(f"slime train dump, sample {t_i}: {key} {k!r} matches no rollout sample (the rollout dump has "
                             f"{len(rollout)}); expected the dumps of the same rollout_id")
        if own[k] in found:
            raise BatchError(f"slime train dump, sample {t_i}: {key} {k!r} appears twice")
        found[own[k]] = t
    missing = [i for i in range(len(rollout)) if i not in found]
    if missing:
        raise BatchError(f"slime train dump: no train sample for rollout sample(s) {missing[:8]} (joined on {key}); "
                         "expected one per rollout sample (all data-parallel shards are in one train dump)")
    return [found[i] for i in range(len(rollout))]


# -------------------------------------------------------------------------------------- converters
def from_slime_rollout(dump: Mapping[str, Any], train: Mapping[str, Any] | None = None,
                       sampling: SamplingSettings | None = None) -> Batch:
    """A loaded rollout dump (optionally joined with the train dump of the same rollout) -> Batch.

    Row b is ``samples[b]``. With ``train``: student = its ``log_probs``, teacher = its
    ``teacher_log_probs`` when present, ``ref_log_probs`` into ``meta``; the tokens of both dumps
    must agree. Errors name the sample (its position in ``samples``) and the key.
    """
    if is_slime_train(dump):
        raise BatchError("a slime train dump (format_version 2: samples, dp_shards), not a rollout dump; read it as "
                         "slime_train, or pass it as the train dump of load_slime")
    samples = _samples(dump, "slime rollout dump")
    joined = _train_index(samples, train) if train is not None else [None] * len(samples)
    if train is not None and _plain(train.get("rollout_id")) != _plain(dump.get("rollout_id")):
        raise BatchError(f"slime dumps of different rollouts: rollout dump rollout_id {dump.get('rollout_id')!r}, "
                         f"train dump {train.get('rollout_id')!r}")
    rows = _Rows()
    for i, (s, t) in enumerate(zip(samples, joined)):
        where = f"slime rollout dump, sample {i} (index {s.get('index')!r})"
        n = s.get("response_length")
        teacher = s.get("teacher_log_probs")
        student = None
        if t is not None:
            if _ints(where, "train tokens", t.get("tokens")) != _ints(where, "tokens", s.get("tokens")):
                raise BatchError(f"{where}: its tokens differ from the train dump's sample with rollout_position "
                                 f"{_plain(t.get('rollout_position'))!r}; expected the same sequence in both dumps")
            student = t.get("log_probs")
            teacher = t.get("teacher_log_probs") if t.get("teacher_log_probs") is not None else teacher
        rows.add(where, s.get("tokens"), n,
                 s.get("loss_mask"), {ROLLOUT_LOGPROBS: ("rollout_log_probs", s.get("rollout_log_probs")),
                                      STUDENT_LOGPROBS: ("log_probs", student),
                                      TEACHER_LOGPROBS: ("teacher_log_probs", teacher)},
                 s.get("rollout_top_p_token_ids"), s.get("rollout_top_p_token_offsets"), bool(s.get("remove_sample")))
        meta = {k: _jsonable(s.get(k)) for k in ROLLOUT_META if k in s}
        meta.update(dump_rollout_id=_jsonable(dump.get("rollout_id")), rollout_position=i)
        if t is not None and t.get("ref_log_probs") is not None:
            meta["ref_log_probs"] = _floats(where, "ref_log_probs", t["ref_log_probs"], len(rows.comps[-1]))
        rows.meta.append({"slime": meta})
        rows.groups.append(_source(s))
        rows.finish.append(STATUS_FINISH.get(str(s.get("status"))))
    return rows.batch("slime rollout dump", sampling)


def from_slime_train(dump: Mapping[str, Any], sampling: SamplingSettings | None = None) -> Batch:
    """A loaded train dump alone -> Batch (rollout / student / teacher from its own fields).

    Row b is ``samples[b]`` (sorted by ``rollout_position``); the rollout dump's metadata (status,
    reward, ...) is not in it: join the two with :func:`from_slime_rollout` for that.
    """
    if not is_slime_train(dump):
        raise BatchError(f"not a slime train dump (keys {sorted(map(str, dump))}); expected format_version 2: samples, "
                         "dp_shards (a rollout dump reads as slime)")
    rows = _Rows()
    for i, t in enumerate(_samples(dump, "slime train dump")):
        where = f"slime train dump, sample {i} (rollout_position {_plain(t.get('rollout_position'))!r})"
        rows.add(where, t.get("tokens"), _plain(t.get("response_lengths")), t.get("loss_masks"),
                 {ROLLOUT_LOGPROBS: ("rollout_log_probs", t.get("rollout_log_probs")),
                  STUDENT_LOGPROBS: ("log_probs", t.get("log_probs")),
                  TEACHER_LOGPROBS: ("teacher_log_probs", t.get("teacher_log_probs"))},
                 t.get("rollout_top_p_token_ids"), t.get("rollout_top_p_token_offsets"), False)
        meta = {k: _jsonable(t.get(k)) for k in ("sample_index", "rollout_position", "data_parallel_rank", "rewards",
                                                 "truncated") if k in t}
        meta["dump_rollout_id"] = _jsonable(dump.get("rollout_id"))
        if t.get("ref_log_probs") is not None:
            meta["ref_log_probs"] = _floats(where, "ref_log_probs", t["ref_log_probs"], len(rows.comps[-1]))
        rows.meta.append({"slime": meta})
        rows.groups.append(str(t["source_names"]) if t.get("source_names") is not None else None)
        rows.finish.append("length" if _plain(t.get("truncated")) == 1 else None)
    return rows.batch("slime train dump", sampling)


def load_slime(rollout: str | Path, train: str | Path | None = None, *, allow_pickle: bool = False,
               sampling: SamplingSettings | Mapping[str, Any] | None = None) -> Batch:
    """Read a slime rollout dump, joined with its train dump when ``train`` is given.

    Both are opened with the weights-only load (no code runs) unless ``allow_pickle``.
    ``sampling``: slime's ``--rollout-temperature`` / ``--rollout-top-p`` / ``--rollout-top-k``
    (the dumps do not record them), as :class:`SamplingSettings` or a dict of its fields.
    """
    if sampling is not None and not isinstance(sampling, SamplingSettings):
        sampling = SamplingSettings.from_dict(dict(sampling), "sampling")
    loaded = []
    for path, is_kind, kind in ((rollout, is_slime_rollout, "rollout"), (train, is_slime_train, "train")):
        if path is None:
            loaded.append(None)
            continue
        d = files.read_torch_dict(path, allow_pickle)
        if not is_kind(d):
            raise BatchError(f"{path}: not a slime {kind} dump (keys {sorted(map(str, d))}); expected "
                             + ("rollout_id and samples" if kind == "rollout" else "format_version 2: samples, dp_shards"))
        loaded.append(d)
    try:
        return from_slime_rollout(loaded[0], loaded[1], sampling=sampling)
    except BatchError as e:
        where = str(rollout) if train is None else f"{rollout} + {train}"
        raise BatchError(f"{where}: {e}") from None


__all__: Sequence[str] = ("from_slime_rollout", "from_slime_train", "is_slime_rollout", "is_slime_train", "load_slime")
