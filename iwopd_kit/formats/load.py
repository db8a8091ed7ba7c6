"""Read a dump of any supported layout into a :class:`~iwopd_kit.batch.Batch` (``load_any``).

The formats and how ``format="auto"`` picks one live in one table,
:data:`iwopd_kit.formats.registry.READERS`; this module keeps the names it has always exported.

- ``jsonl`` (``.jsonl``): the kit's own rows, :func:`iwopd_kit.batch.read_jsonl`.
- ``primerl`` (``.jsonl`` whose records have ``token_ids``, ``loss_mask``, ``inference_logprobs``):
  prime-rl's token export, :mod:`iwopd_kit.formats.primerl`.
- ``nemorl`` (``.jsonl`` whose lines have ``input_lengths`` and ``token_loss_mask``): NeMo-RL's
  ``train_data_step<N>.jsonl``, :mod:`iwopd_kit.formats.nemorl`.
- ``trl`` (``.pt`` / ``.pth`` with ``input_ids`` and ``labels``): a ``torch.save``d dict of a TRL
  trainer's inputs, :func:`iwopd_kit.formats.trl.load_trl_dump`.
- ``verl`` (``.pt`` / ``.pth`` with ``prompts`` and ``responses``): a ``torch.save``d dict or
  ``TensorDict`` of a verl batch (``DataProto.batch``), :func:`iwopd_kit.formats.verl.from_verl_batch`.
  A ``TensorDict`` is read with the weights-only load when ``tensordict`` is installed.
- ``verl_dataproto`` (``.pkl`` / ``.pickle`` naming ``verl.protocol.DataProto``): a ``DataProto``
  saved with ``save_to_disk``, a pickle: only with ``allow_pickle=True``.
- ``vllm`` (``.pkl`` / ``.pickle``): a pickled ``list[RequestOutput]`` from ``LLM.generate``, or a
  dict ``{"outputs": [...], "sampling": {SamplingSettings fields}}``: only with ``allow_pickle=True``.
- ``openai`` (``.json``): ``/v1/completions`` responses and the prompt ids they answer, either as
  ``{"prompt_ids": [[int, ...], ...], "responses": [response, ...], "sampling": {...}}`` (``sampling``
  optional) or as a list of ``{"prompt_ids": [int, ...], "response": response}``; a record without
  ``prompt_ids`` may carry them in ``response["choices"][0]["prompt_token_ids"]`` (vLLM's
  ``return_token_ids``). Each response's ``choices[0]`` needs token ids (``token_ids`` or
  ``"token_id:N"`` tokens) and ``logprobs.token_logprobs``.
- ``trl_vllm`` (``.json`` with ``completion_ids`` and ``logprobs``): what TRL's vLLM client returns
  in server mode, :func:`iwopd_kit.formats.vllm.from_trl_vllm_output`.
- ``slime`` (``.pt`` / ``.pth`` with ``rollout_id`` and ``samples``): slime's
  ``--save-debug-rollout-data`` dump; ``slime_train`` (``samples`` and ``dp_shards``): its
  ``--save-debug-train-data`` dump; :func:`iwopd_kit.formats.slime.load_slime` joins the two.

**No code runs from a dump by default.** JSON, JSONL and weights-only torch files cannot execute
anything; a pickle is read only with ``allow_pickle=True`` (CLI ``--allow-pickle``), because
unpickling runs code named in the file. Without it the error says what the pickle names and how to
convert vLLM outputs to the kit's JSONL where they were made.

Every failure is a :class:`~iwopd_kit.batch.BatchError` whose message names the file and the
line / key / row; a truncated file says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..batch import Batch, BatchError
from .files import read_torch_dict
from .registry import BY_NAME, FORMATS, READERS, Reader, detect_format, dump_files, load_any

__all__ = ["FORMATS", "READERS", "Reader", "detect_format", "dump_files", "from_torch_dict", "load_any",
           "load_openai_json", "load_verl_dump", "load_vllm_pickle", "read_torch_dict", "torch_kind"]


def torch_kind(d: dict[str, Any], where: str = "") -> str:
    """``"trl"`` or ``"verl"`` from the keys of a loaded dict."""
    for name in ("trl", "verl"):
        if BY_NAME[name].sniff(d):
            return name
    raise BatchError(f"{where}: cannot tell the layout from the keys {sorted(d)}; expected TRL (input_ids, "
                     "attention_mask, labels, ...) or verl (prompts, responses, attention_mask, ...)")


def from_torch_dict(d: dict[str, Any], kind: str, where: str = "") -> Batch:
    """Convert a loaded TRL (``kind="trl"``) or verl (``"verl"``) dict; errors are prefixed with ``where``."""
    try:
        return BY_NAME[kind].read(Path(where), d)
    except BatchError as e:
        raise BatchError(f"{where}: {e}" if where else str(e)) from None
    except (TypeError, ValueError, RuntimeError) as e:   # a value torch cannot turn into a tensor
        raise BatchError(f"{where}: malformed {kind} dump ({type(e).__name__}: {e})") from None


def load_verl_dump(path: str | Path, allow_pickle: bool = False) -> Batch:
    """A ``torch.save``d dict (or TensorDict) of a verl batch's tensors -> Batch."""
    return load_any(path, "verl", allow_pickle=allow_pickle)


def load_vllm_pickle(path: str | Path, allow_pickle: bool = False) -> Batch:
    """A pickled ``list[RequestOutput]`` -> Batch; refused unless ``allow_pickle`` (unpickling runs code)."""
    return load_any(path, "vllm", allow_pickle=allow_pickle)


def load_openai_json(path: str | Path) -> Batch:
    """``/v1/completions`` responses plus their prompt ids (the schema in this module's docstring) -> Batch."""
    return load_any(path, "openai")
