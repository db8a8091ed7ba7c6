"""Rollout engines: sample completions with the log-prob of every sampled token.

Three engines, one result type (:class:`~iwopd_kit.batch.Batch` with ``rollout_logprobs``,
``finish_reasons`` and the ``sampling`` settings used):

- :class:`VLLMEngine` — vLLM's offline ``LLM``, in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
- :class:`VLLMServerEngine` — a running vLLM OpenAI-compatible server (base URL), the scale-out path.
- :class:`TransformersEngine` — transformers ``generate``, the reference.

Sampling is seeded per request (row i uses ``seed + i``): one shared seed for a whole batch makes
every request draw the same random stream and correlates the samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
import warnings
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..batch import Batch, BatchError
from ..batch.sampling import LOGPROBS_MODES, Sampling, SamplingSettings
from ..formats.vllm import from_openai_completions, from_request_outputs

from .envdefaults import VLLM_ENV_DEFAULTS  # noqa: E402  (the one table; re-exported here)


@contextlib.contextmanager
def quiet_output(log_path: str | Path | None = None):
    """Send Python *and* C-level stdout/stderr (vLLM, torch, OpenMP warnings) to a log file.

    Engine start-up prints timestamped logs and warnings from C++; in a notebook they would land
    in the cell output. The log is kept at ``log_path`` (default: a file in the temp dir).
    Python logging handlers created earlier hold the old stream object (in a Jupyter kernel, not
    fd 2), so those writing to stdout/stderr are pointed at the log for the duration too.
    """
    path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / "iwopd_kit_vllm.log"
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    std = {id(s) for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)}
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    handlers = {h for lg in loggers for h in lg.handlers  # (lastResort reads sys.stderr itself)
                if type(h) is logging.StreamHandler and id(h.stream) in std}
    with open(path, "a") as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        streams = {h: h.setStream(log) for h in handlers}
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield path
        finally:
            for h, s in streams.items():
                h.setStream(s)
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def configure_vllm_env(**overrides: str) -> dict[str, str]:
    """Set the CPU-friendly vLLM environment (without overriding what the user already set)."""
    for k, v in {**VLLM_ENV_DEFAULTS, **overrides}.items():
        os.environ.setdefault(k, str(v))
    return {k: os.environ[k] for k in VLLM_ENV_DEFAULTS}


def _check_prompts(prompt_ids: Sequence[Sequence[int]]) -> list[list[int]]:
    if len(prompt_ids) == 0:
        raise BatchError("no prompts; expected at least one list of prompt token ids")
    out = []
    for b, p in enumerate(prompt_ids):
        if isinstance(p, str):
            raise BatchError(f"row {b}: prompt is a string; expected token ids (tokenize it first)")
        p = list(p)
        if not p:
            raise BatchError(f"row {b}: empty prompt; expected at least one token id")
        out.append([int(t) for t in p])
    return out


def _reject_unknown(engine: str, options: dict[str, Any], allowed: Sequence[str]) -> None:
    if options:
        raise TypeError(f"{engine}: unknown option(s) {sorted(options)}; allowed: {sorted(allowed)}")


_LLMS: dict[tuple, Any] = {}
"""In-process vLLM engines by settings. vLLM keeps process-global distributed state: tearing one
``LLM`` down breaks every other one in the process. So engines with the same settings share one
``LLM``, and none is destroyed before the process ends."""


class VLLMEngine:
    """vLLM's offline engine on a local model dir (one shared in-process ``LLM`` per settings).

    ``logprobs_mode`` is an engine setting in vLLM: ``raw_logprobs`` (log_softmax of the raw
    logits, whatever the temperature) or ``processed_logprobs`` (after temperature/top-p/top-k).
    """

    OPTIONS = ("dtype", "logprobs_mode", "seed", "max_model_len", "enforce_eager", "enable_prefix_caching", "quiet")

    def __init__(self, model_dir: str | Path, dtype: str = "float32", logprobs_mode: str = "raw_logprobs",
                 seed: int = 0, max_model_len: int = 64, enforce_eager: bool = True,
                 enable_prefix_caching: bool = False, quiet: bool = True, **options: Any) -> None:
        _reject_unknown("VLLMEngine", options, self.OPTIONS)
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"VLLMEngine: logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        if not (Path(model_dir) / "config.json").exists():
            raise FileNotFoundError(f"VLLMEngine: {model_dir} has no config.json; expected a local model directory")
        configure_vllm_env()
        self.model_dir, self.logprobs_mode, self.quiet = str(Path(model_dir).resolve()), logprobs_mode, quiet
        key = (self.model_dir, dtype, logprobs_mode, seed, max_model_len, enforce_eager, enable_prefix_caching)
        self._warm = False
        if key not in _LLMS:
            with self._maybe_quiet():
                from vllm import LLM

                _LLMS[key] = LLM(model=self.model_dir, dtype=dtype, enforce_eager=enforce_eager, seed=seed,
                                 max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching,
                                 logprobs_mode=logprobs_mode, use_tqdm_on_load=not quiet)
        self.llm = _LLMS[key]

    def _maybe_quiet(self):
        return quiet_output() if self.quiet else contextlib.nullcontext()

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings = Sampling()) -> Batch:
        from vllm import SamplingParams

        prompts = _check_prompts(prompt_ids)
        sampling = self.settings(sampling)
        params = [
            SamplingParams(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or -1,
                           max_tokens=sampling.max_tokens, logprobs=0, seed=sampling.seed + i,
                           stop_token_ids=list(sampling.stop_token_ids) if sampling.stop_token_ids else None)
            for i in range(len(prompts))
        ]
        # The first request with log-probs compiles a kernel (inductor, gcc) and may print.
        with self._maybe_quiet() if not self._warm else contextlib.nullcontext():
            outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        self._warm = True
        return from_request_outputs(outs, sampling)

    def settings(self, sampling: SamplingSettings) -> SamplingSettings:
        return sampling.for_engine("vllm", self.logprobs_mode)

    def load_weights(self, named_tensors) -> None:
        """Push new weights (HF state_dict names) into the running engine (the OPD loop's sync)."""
        reload_engine_weights(self.llm, iter(list(named_tensors)))


def _refresh_tied_head(worker: Any) -> bool:
    """Rebuild the output layer's CPU GEMM weight when it is tied to the input embedding (runs on a vLLM worker)."""
    model = worker.model_runner.get_model() if hasattr(worker.model_runner, "get_model") else worker.model_runner.model
    head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    method = getattr(head, "quant_method", None)
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    if head is None or embed is None or method is None or not (tied or head.weight is embed.weight):
        return False
    method.process_weights_after_loading(head)
    return True


def reload_engine_weights(llm: Any, weights: Iterable[tuple[str, Any]]) -> bool:
    """Load ``weights`` (HF ``state_dict`` names) into a running in-process vLLM ``LLM``, in place.

    vLLM's ``reload_weights`` re-processes the layers it loads, but a **tied** output layer
    (``tie_word_embeddings``, as in Qwen3-0.6B/1.7B/4B) is skipped as a checkpoint name, and on the
    CPU build its packed GEMM copy of the embedding is built once, at engine start: without the
    refresh here the engine samples from the updated body with the *initial* output layer (on the
    kit's chat pair after one Adam step at lr 1e-4: mean |vLLM - trainer| 2.6e-3 instead of 2e-6; the
    check's ``numerics`` finding shows it). Returns True when a tied head was refreshed.
    """
    llm.collective_rpc("reload_weights", kwargs=dict(weights_iterator=weights))
    refreshed = any(llm.collective_rpc(_refresh_tied_head))
    llm.reset_prefix_cache()
    return refreshed


class VLLMServerError(RuntimeError):
    """The vLLM server could not be reached or answered with an error; the message says which and what to check."""


class VLLMServerEngine:
    """A vLLM OpenAI-compatible server at ``base_url`` (``/v1/completions`` with token-id prompts).

    The server's ``--logprobs-mode`` must be told here (it is a server setting, not per request).
    A refused connection and HTTP 502/503/504 are retried ``retries`` times (0.5 s, 1 s, ...: a
    server that is starting or restarting); a timeout, other HTTP errors and a non-JSON answer are
    not. Each failure raises :class:`VLLMServerError` naming the server and what to check.
    """

    OPTIONS = ("model", "logprobs_mode", "timeout", "retries")

    def __init__(self, base_url: str, model: str | None = None, logprobs_mode: str = "raw_logprobs",
                 timeout: float = 60.0, retries: int = 2, **options: Any) -> None:
        _reject_unknown("VLLMServerEngine", options, self.OPTIONS)
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"VLLMServerEngine: logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        self.base_url, self.logprobs_mode, self.timeout = base_url.rstrip("/"), logprobs_mode, timeout
        self.retries = int(retries)
        self.model = model or self._first_model()

    def _request(self, path: str, payload: dict | None = None) -> dict:
        import socket
        import time

        url = self.base_url + path
        data = None if payload is None else json.dumps(payload).encode()
        where = f"vLLM server {self.base_url} ({'POST' if data else 'GET'} {path})"
        check = f"check that it runs (curl {self.base_url}/health) and that the URL and port are right"
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
                break
            except urllib.error.HTTPError as e:
                text = e.read()[:500].decode(errors="replace")
                if e.code in (502, 503, 504) and not last:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                hint = {404: "the path or the model name is wrong (GET /v1/models lists the served names)",
                        400: "the server rejected the request (its message above says which field)",
                        503: "the server is overloaded or still loading the model"}.get(e.code, "see the server's log")
                raise VLLMServerError(f"{where}: HTTP {e.code} {e.reason}: {text!r}; {hint}") from None
            except (TimeoutError, socket.timeout):
                raise VLLMServerError(f"{where}: no answer within {self.timeout:g} s (timeout); the server may be "
                                      "overloaded or the request too long: raise VLLMServerEngine(timeout=...) or "
                                      f"send fewer tokens; {check}") from None
            except urllib.error.URLError as e:
                reason = e.reason
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise VLLMServerError(f"{where}: no connection within {self.timeout:g} s (timeout); the host may "
                                          f"be down or unreachable; {check}") from None
                if isinstance(reason, ConnectionRefusedError):
                    if not last:
                        time.sleep(0.5 * 2 ** attempt)
                        continue
                    raise VLLMServerError(f"{where}: connection refused after {self.retries + 1} tries: nothing listens "
                                          f"there (the server stopped, crashed or has not started yet); {check}") from None
                raise VLLMServerError(f"{where}: cannot reach the server ({reason}); {check}") from None
            except (ConnectionError, OSError) as e:      # reset / closed mid-answer
                raise VLLMServerError(f"{where}: the connection broke ({type(e).__name__}: {e}); the server may have "
                                      f"stopped while answering; {check}") from None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            raise VLLMServerError(f"{where}: the answer is not JSON ({body[:200]!r}); is {self.base_url} a vLLM "
                                  "OpenAI-compatible server?") from None

    def _first_model(self) -> str:
        models = self._request("/v1/models").get("data") or []
        if not models:
            raise RuntimeError(f"{self.base_url}: the server lists no models")
        return models[0]["id"]

    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings = Sampling()) -> Batch:
        prompts = _check_prompts(prompt_ids)
        sampling = sampling.for_engine("vllm-server", self.logprobs_mode)
        responses = []
        for i, p in enumerate(prompts):
            payload = {"model": self.model, "prompt": p, "max_tokens": sampling.max_tokens,
                       "temperature": sampling.temperature, "top_p": sampling.top_p, "logprobs": 0,
                       "seed": sampling.seed + i, "return_token_ids": True}
            if sampling.top_k:
                payload["top_k"] = sampling.top_k
            if sampling.stop_token_ids:
                payload["stop_token_ids"] = list(sampling.stop_token_ids)
            responses.append(self._request("/v1/completions", payload))
        return from_openai_completions(prompts, responses, sampling)


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0) -> torch.Tensor:
    """What vLLM's processed mode reports: logits / T, then top-k and top-p masking (to -inf)."""
    z = logits / temperature if temperature > 0 else logits.clone()
    if top_k and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, idx = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs          # mass strictly before each token
        drop_sorted = before > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, idx, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


class TransformersEngine:
    """transformers ``generate`` as the reference engine (left-padded batch, raw logits kept)."""

    OPTIONS = ("logprobs_mode", "pad_id", "eos_id")

    def __init__(self, model, logprobs_mode: str = "raw_logprobs", pad_id: int | None = None,
                 eos_id: int | None = None, **options: Any) -> None:
        _reject_unknown("TransformersEngine", options, self.OPTIONS)
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"TransformersEngine: logprobs_mode must be one of {LOGPROBS_MODES}, got {logprobs_mode!r}")
        if isinstance(model, (str, Path)):
            from .scoring import load_model

            model = load_model(model)
        self.model, self.logprobs_mode = model, logprobs_mode
        cfg = model.config
        self.eos_id = cfg.eos_token_id if eos_id is None else eos_id
        self.pad_id = (cfg.pad_token_id if cfg.pad_token_id is not None else self.eos_id) if pad_id is None else pad_id

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings = Sampling()) -> Batch:
        prompts = _check_prompts(prompt_ids)
        sampling = settings = sampling.for_engine("transformers", self.logprobs_mode)
        P = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), P), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = torch.tensor(p)
            attn[b, P - len(p):] = 1
        greedy = sampling.temperature == 0
        torch.manual_seed(sampling.seed)
        eos = list(sampling.stop_token_ids) if sampling.stop_token_ids else [self.eos_id]
        out = self.model.generate(
            input_ids=ids, attention_mask=attn, max_new_tokens=sampling.max_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature, top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else (sampling.top_k or 0), eos_token_id=eos, pad_token_id=self.pad_id,
            output_logits=True, return_dict_in_generate=True,
        )
        gen = out.sequences[:, P:]                                   # [B, steps]
        logits = torch.stack(out.logits, dim=1).float()              # [B, steps, V] raw logits
        if self.logprobs_mode == "processed_logprobs" and not greedy:
            logits = process_logits(logits, sampling.temperature, sampling.top_p, sampling.top_k)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, gen[..., None]).squeeze(-1)
        comps, lps, reasons = [], [], []
        for b in range(len(prompts)):
            row = gen[b].tolist()
            stop = next((j + 1 for j, t in enumerate(row) if t in eos), None)
            n = stop if stop is not None else len(row)
            comps.append(row[:n])
            lps.append(lp[b, :n].tolist())
            reasons.append("stop" if stop is not None else "length")
        return Batch(prompt_ids=prompts, completion_ids=comps, rollout_logprobs=lps,
                     finish_reasons=reasons, sampling=settings)


def rollout(engine, prompt_ids: Sequence[Sequence[int]], sampling: SamplingSettings | None = None, **fields: Any) -> Batch:
    """Sample with any engine: ``rollout(engine, prompt_ids, settings)`` with one :class:`SamplingSettings`,
    or its fields as keywords, ``rollout(engine, prompt_ids, temperature=1.0, max_tokens=ROLLOUT_MAX_TOKENS, seed=0)``
    (:func:`Sampling`'s defaults); keywords given with ``settings`` replace its fields."""
    try:
        params = Sampling(**fields) if sampling is None else dataclasses.replace(sampling, **fields)
    except TypeError as e:
        raise TypeError(f"rollout: {e}; allowed: temperature, top_p, top_k, max_tokens, seed, stop_token_ids") from None
    return engine.generate(prompt_ids, params)
