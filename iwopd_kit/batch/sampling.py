"""How completions were sampled: one settings object for requests and for the record of a batch.

:class:`SamplingSettings` is what an engine is asked for (``engine.generate(ids, settings)``) and what
it records on the batch it returns (``batch.sampling``, with its own name and ``logprobs_mode``).
:func:`Sampling` builds one with the rollout defaults (``max_tokens=ROLLOUT_MAX_TOKENS``, ``seed=0``); it is the
same type, kept under its old name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .ragged import BatchError

LOGPROBS_MODES: tuple[str, ...] = ("raw_logprobs", "processed_logprobs")
ROLLOUT_MAX_TOKENS = 48
"""``max_tokens`` of a request that does not set it."""


@dataclass(frozen=True)
class SamplingSettings:
    """How the completions were sampled (recorded by every rollout engine).

    ``logprobs_mode`` follows vLLM: ``raw_logprobs`` are log_softmax(logits) whatever the
    temperature; ``processed_logprobs`` are after temperature and top-p/top-k (renormalised).
    ``top_k`` 0 means off.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    logprobs_mode: str = "raw_logprobs"
    seed: int | None = None
    max_tokens: int | None = None
    engine: str = ""
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise BatchError(f"sampling.temperature must be a finite number >= 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise BatchError(f"sampling.top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise BatchError(f"sampling.top_k must be >= 0 (0 = off), got {self.top_k!r}")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise BatchError(f"sampling.logprobs_mode must be one of {LOGPROBS_MODES}, got {self.logprobs_mode!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BatchError(f"sampling.max_tokens must be >= 1, got {self.max_tokens!r}")
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def logprob_temperature(self) -> float:
        """The temperature the rollout log-probs are computed at (1.0 in raw mode)."""
        return self.temperature if self.logprobs_mode == "processed_logprobs" else 1.0

    @property
    def truncates(self) -> bool:
        """True when top-p / top-k cut the distribution before sampling."""
        return self.top_p < 1.0 or self.top_k > 0

    def __repr__(self) -> str:                 # stop_token_ids shown only when set (a request-side setting)
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)
                 if not (f.name == "stop_token_ids" and self.stop_token_ids is None)]
        return f"SamplingSettings({', '.join(shown)})"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["stop_token_ids"] is None:       # a request-side setting: recorded only when set
            del d["stop_token_ids"]
        else:
            d["stop_token_ids"] = list(d["stop_token_ids"])
        return d

    def for_engine(self, engine: str, logprobs_mode: str) -> "SamplingSettings":
        """These settings as an engine records them: its name and ``logprobs_mode`` (an engine setting in
        vLLM, so the engine's value wins), with the request defaults filled in (:func:`Sampling`)."""
        return dataclasses.replace(self, engine=engine, logprobs_mode=logprobs_mode,
                                   seed=0 if self.seed is None else self.seed,
                                   max_tokens=ROLLOUT_MAX_TOKENS if self.max_tokens is None else self.max_tokens)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "sampling") -> "SamplingSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BatchError(f"{where}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def Sampling(temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, max_tokens: int = ROLLOUT_MAX_TOKENS,
             seed: int = 0, stop_token_ids: tuple[int, ...] | None = None) -> SamplingSettings:  # noqa: N802
    """A :class:`SamplingSettings` request with the rollout defaults:
    ``Sampling(temperature=1.0, top_p=1.0, top_k=0, max_tokens=ROLLOUT_MAX_TOKENS, seed=0)``."""
    return SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed,
                            stop_token_ids=stop_token_ids)


__all__ = ["LOGPROBS_MODES", "ROLLOUT_MAX_TOKENS", "SamplingSettings", "Sampling"]
