"""Read a dump of any supported layout into a :class:`~iwopd_kit.batch.Batch`.

Formats (``format="auto"`` picks one from the file name, then from the content):

- ``jsonl`` (``.jsonl``): the kit's own rows, :func:`iwopd_kit.batch.read_jsonl`.
- ``trl`` (``.pt`` / ``.pth`` with ``input_ids`` and ``labels``): a ``torch.save``d dict of a TRL
  trainer's inputs, :func:`iwopd_kit.formats.trl.load_trl_dump`.
- ``verl`` (``.pt`` / ``.pth`` with ``prompts`` and ``responses``): a ``torch.save``d dict of a
  verl batch's tensors (``DataProto.batch``), :func:`iwopd_kit.formats.verl.from_verl_batch`.
- ``vllm`` (``.pkl`` / ``.pickle``): a pickled ``list[RequestOutput]`` from ``LLM.generate``, or a
  dict ``{"outputs": [...], "sampling": {SamplingSettings fields}}``. Unpickling runs code named in
  the file: load only files you produced.
- ``openai`` (``.json``): ``/v1/completions`` responses and the prompt ids they answer, either as
  ``{"prompt_ids": [[int, ...], ...], "responses": [response, ...], "sampling": {...}}`` (``sampling``
  optional) or as a list of ``{"prompt_ids": [int, ...], "response": response}``; a record without
  ``prompt_ids`` may carry them in ``response["choices"][0]["prompt_token_ids"]`` (vLLM's
  ``return_token_ids``). Each response's ``choices[0]`` needs token ids (``token_ids`` or
  ``"token_id:N"`` tokens) and ``logprobs.token_logprobs``.

Every failure is a :class:`~iwopd_kit.batch.BatchError` whose message names the file and the
line / key / row; a truncated file says so.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from ..batch import Batch, BatchError, SamplingSettings, read_jsonl

FORMATS: tuple[str, ...] = ("auto", "jsonl", "trl", "verl", "vllm", "openai")
_BY_SUFFIX = {".jsonl": "jsonl", ".pt": "torch", ".pth": "torch", ".pkl": "vllm", ".pickle": "vllm", ".json": "openai"}


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BatchError(f"{path}: no such file")
    if not path.is_file():
        raise BatchError(f"{path}: not a file")
    return path


def read_torch_dict(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a dict of tensors (weights_only: no code runs); clear errors for bad files."""
    import torch

    path = _existing(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BatchError(f"{path}: cannot read as a torch file ({first}); save plain tensors, lists and dicts "
                         "with torch.save, or the file may be truncated") from None
    except Exception as e:   # zip reader errors, EOFError, ...: truncated or not a torch.save file
        raise BatchError(f"{path}: cannot read as a torch file ({type(e).__name__}: {str(e).strip()[:200]}); "
                         "the file may be truncated or not written by torch.save") from None
    if not isinstance(obj, dict):
        raise BatchError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def torch_kind(d: dict[str, Any], where: str = "") -> str:
    """``"trl"`` or ``"verl"`` from the keys of a loaded dict."""
    keys = set(d)
    if {"input_ids", "labels"} <= keys:
        return "trl"
    if {"prompts", "responses"} <= keys:
        return "verl"
    raise BatchError(f"{where}: cannot tell the layout from the keys {sorted(keys)}; expected TRL (input_ids, "
                     "attention_mask, labels, ...) or verl (prompts, responses, attention_mask, ...)")


def from_torch_dict(d: dict[str, Any], kind: str, where: str = "") -> Batch:
    """Convert a loaded TRL (``kind="trl"``) or verl (``"verl"``) dict; errors are prefixed with ``where``."""
    from .trl import from_trl_batch
    from .verl import from_verl_batch

    try:
        return from_trl_batch(d) if kind == "trl" else from_verl_batch(d)
    except BatchError as e:
        raise BatchError(f"{where}: {e}" if where else str(e)) from None
    except (TypeError, ValueError, RuntimeError) as e:   # a value torch cannot turn into a tensor
        raise BatchError(f"{where}: malformed {kind} dump ({type(e).__name__}: {e})") from None


def load_verl_dump(path: str | Path) -> Batch:
    """A ``torch.save``d dict of a verl batch's tensors -> Batch."""
    return from_torch_dict(read_torch_dict(path), "verl", str(path))


def load_vllm_pickle(path: str | Path) -> Batch:
    """A pickled ``list[RequestOutput]`` (or ``{"outputs": [...], "sampling": {...}}``) -> Batch."""
    from .vllm import from_request_outputs

    path = _existing(path)
    try:
        with path.open("rb") as f:
            obj = pickle.load(f)
    except (EOFError, pickle.UnpicklingError) as e:
        raise BatchError(f"{path}: cannot unpickle ({type(e).__name__}: {e}); the file may be truncated") from None
    except (ModuleNotFoundError, AttributeError) as e:
        raise BatchError(f"{path}: the pickle names a class this environment lacks ({e}); unpickle it where vLLM "
                         "is installed") from None
    except Exception as e:
        raise BatchError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    sampling = None
    if isinstance(obj, dict):
        if "outputs" not in obj:
            raise BatchError(f"{path}: a dict pickle needs the key 'outputs' (a list of RequestOutput); found {sorted(obj)}")
        if obj.get("sampling") is not None:
            sampling = SamplingSettings.from_dict(dict(obj["sampling"]), f"{path}: sampling")
        obj = obj["outputs"]
    if not isinstance(obj, (list, tuple)) or not obj:
        raise BatchError(f"{path}: expected a non-empty list of vLLM RequestOutput, got {type(obj).__name__}")
    for i, out in enumerate(obj):
        if not (hasattr(out, "prompt_token_ids") and hasattr(out, "outputs")):
            raise BatchError(f"{path}: item {i} is a {type(out).__name__} without prompt_token_ids / outputs; "
                             "expected vLLM RequestOutput objects")
    try:
        return from_request_outputs(obj, sampling=sampling)
    except BatchError as e:
        raise BatchError(f"{path}: {e}") from None


def _read_json(path: Path) -> Any:
    text = path.read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        ends = text.rstrip()
        hint = "; the file may be truncated" if e.pos >= len(ends) or not ends.endswith(("}", "]")) else ""
        raise BatchError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}){hint}") from None


def _prompt_from_response(i: int, resp: Any) -> list[int] | None:
    if not isinstance(resp, dict):
        return None
    choices = resp.get("choices") or [{}]
    ids = choices[0].get("prompt_token_ids") if isinstance(choices[0], dict) else None
    return ids if ids is not None else resp.get("prompt_token_ids")


def load_openai_json(path: str | Path) -> Batch:
    """``/v1/completions`` responses plus their prompt ids (the schema in this module's docstring) -> Batch."""
    from .vllm import from_openai_completions

    path = _existing(path)
    obj = _read_json(path)
    sampling = None
    if isinstance(obj, dict):
        for key in ("prompt_ids", "responses"):
            if key not in obj:
                raise BatchError(f"{path}: missing key {key!r}; expected {{'prompt_ids': [[int]], 'responses': [...]}} "
                                 "or a list of {'prompt_ids': [int], 'response': {...}}")
        prompts, responses = obj["prompt_ids"], obj["responses"]
        if not isinstance(prompts, list) or not isinstance(responses, list):
            raise BatchError(f"{path}: 'prompt_ids' and 'responses' must be lists")
        if obj.get("sampling") is not None:
            sampling = SamplingSettings.from_dict(dict(obj["sampling"]), f"{path}: sampling")
    elif isinstance(obj, list):
        if not obj:
            raise BatchError(f"{path}: an empty list; expected one record per prompt")
        prompts, responses = [], []
        for i, rec in enumerate(obj):
            if not isinstance(rec, dict) or "response" not in rec:
                raise BatchError(f"{path}: item {i}: expected an object with 'response' (and 'prompt_ids'), got "
                                 f"{type(rec).__name__}{'' if not isinstance(rec, dict) else ' with keys ' + str(sorted(rec))}")
            p = rec.get("prompt_ids")
            p = p if p is not None else _prompt_from_response(i, rec["response"])
            if p is None:
                raise BatchError(f"{path}: item {i}: missing key 'prompt_ids' (and no choices[0].prompt_token_ids in "
                                 "the response)")
            prompts.append(p)
            responses.append(rec["response"])
    else:
        raise BatchError(f"{path}: expected a JSON object or list, got {type(obj).__name__}")
    for i, r in enumerate(responses):
        if not isinstance(r, dict):
            raise BatchError(f"{path}: response {i}: expected a JSON object, got {type(r).__name__}")
    try:
        return from_openai_completions(prompts, responses, sampling=sampling)
    except BatchError as e:
        raise BatchError(f"{path}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise BatchError(f"{path}: malformed response ({type(e).__name__}: {e})") from None


def detect_format(path: str | Path) -> str:
    """The format of ``path``: from its suffix, and for torch files from the dict's keys."""
    path = Path(path)
    kind = _BY_SUFFIX.get(path.suffix.lower())
    if kind is None:
        raise BatchError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass format= (--format) one of "
                         f"{FORMATS[1:]} (suffixes: {sorted(_BY_SUFFIX)})")
    if kind == "torch":
        return torch_kind(read_torch_dict(path), str(path))
    return kind


def load_any(path: str | Path, format: str = "auto") -> Batch:
    """Read ``path`` in ``format`` (one of :data:`FORMATS`; ``auto`` detects it) into a Batch."""
    if format not in FORMATS:
        raise BatchError(f"unknown format {format!r}; expected one of {FORMATS}")
    path = _existing(path)
    if format == "auto":
        if _BY_SUFFIX.get(path.suffix.lower()) == "torch":     # read once, dispatch on the keys
            d = read_torch_dict(path)
            return from_torch_dict(d, torch_kind(d, str(path)), str(path))
        format = detect_format(path)
    if format == "jsonl":
        return read_jsonl(path)
    if format == "trl":
        from .trl import load_trl_dump

        return load_trl_dump(path)
    if format == "verl":
        return load_verl_dump(path)
    if format == "vllm":
        return load_vllm_pickle(path)
    return load_openai_json(path)
