"""Opening dump files without running code from them.

Every reader of :mod:`iwopd_kit.formats` opens its file through one of these functions:

- :func:`read_torch` — ``torch.load(weights_only=True)``: tensors, lists, dicts and the types
  torch allows by default, plus ``tensordict``'s own types when ``tensordict`` is installed (the
  ones it lists as safe; a verl batch is a ``TensorDict``). Nothing in the file is executed.
  ``allow_pickle=True`` lifts the restriction (``weights_only=False``): that runs code named in
  the file.
- :func:`pickle_globals` — the classes and functions a pickle names, read from its opcodes with
  :mod:`pickletools` (nothing is imported or called): enough to tell a vLLM ``RequestOutput`` list
  from a verl ``DataProto`` and to say what a refused file would have run.
- :func:`read_pickle` — unpickling, called only behind ``allow_pickle=True``. A verl ``DataProto``
  is rebuilt without verl (its tensors through :func:`read_torch`'s safe load).
- :func:`read_json`, :func:`first_jsonl_record` — plain JSON.

Errors are :class:`~iwopd_kit.batch.BatchError` naming the file.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import warnings
from pathlib import Path
from typing import Any, Mapping

from ..batch import BatchError

PICKLE_RISK = "unpickling runs code named in the file"

# How a user turns vLLM RequestOutputs into the kit's JSONL, in the environment that made them.
CONVERT_HINT = (
    "convert it where it was made, from a file you trust: `iwopd-kit convert IN.pkl OUT.jsonl --allow-pickle`, "
    "or in the script that holds the outputs: `from iwopd_kit import from_request_outputs, write_jsonl; "
    "write_jsonl(from_request_outputs(outputs), 'rollouts.jsonl')`"
)


def existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BatchError(f"{path}: no such file")
    if not path.is_file():
        raise BatchError(f"{path}: not a file")
    return path


# ------------------------------------------------------------------------------------------ torch
def tensordict_safe_globals() -> list[Any]:
    """The globals a ``torch.save``d TensorDict needs under ``weights_only=True`` ([] without tensordict).

    Only tensordict's rebuild functions and container classes: they build a TensorDict from
    tensors and metadata, import nothing the file names and unpickle nothing nested.
    """
    try:
        import tensordict
        from tensordict import _reductions
    except ImportError:
        return []
    names = ("_make_td", "_rebuild_tensordict_files_consolidated")
    out = [getattr(_reductions, n) for n in names if hasattr(_reductions, n)]
    out += [getattr(tensordict, n) for n in ("TensorDict", "LazyStackedTensorDict", "NonTensorData", "NonTensorStack")
            if hasattr(tensordict, n)]
    locked = getattr(getattr(tensordict, "utils", None), "_LockedSchema", None)
    return out + ([locked] if locked is not None else [])


def _unsupported_global(msg: str) -> str | None:
    """The name torch's weights-only unpickler refused (``GLOBAL x.y was not an allowed global``)."""
    import re

    m = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", msg) or re.search(r"GLOBAL ([\w.]+)", msg)
    return m.group(1) if m else None


def read_torch(path: str | Path | None = None, allow_pickle: bool = False, data: bytes | None = None) -> Any:
    """``torch.load`` a file (or ``data``) on the CPU; no code runs unless ``allow_pickle``."""
    import torch

    where = str(path) if path is not None else "torch bytes"
    src: Any = io.BytesIO(data) if data is not None else existing(path)
    try:
        if allow_pickle:
            return torch.load(src, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(tensordict_safe_globals()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")   # a raw pickle renamed .pt
            return torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        name = _unsupported_global(text)
        if name is not None:
            extra = ""
            if name.startswith("tensordict."):
                extra = " (a TensorDict: install tensordict and the kit reads it safely)"
            elif name.startswith("verl."):
                extra = " (a verl DataProto: save its tensors instead, torch.save(dict(data.batch.items()), path))"
            raise BatchError(f"{where}: not loaded: the file needs {name}{extra}, which a weights-only load refuses "
                             f"because {PICKLE_RISK}; save plain tensors, lists and dicts with torch.save, or, for a "
                             "file you trust, pass --allow-pickle (allow_pickle=True)") from None
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise BatchError(f"{where}: cannot read as a torch file ({first}); save plain tensors, lists and dicts "
                         "with torch.save, or the file may be truncated") from None
    except Exception as e:   # zip reader errors, EOFError, ...: truncated or not a torch.save file
        raise BatchError(f"{where}: cannot read as a torch file ({type(e).__name__}: {str(e).strip()[:200]}); "
                         "the file may be truncated or not written by torch.save") from None


def as_mapping(obj: Any, where: str) -> Mapping[str, Any]:
    """A plain dict of a loaded dump: a dict, a TensorDict (its tensors), or a DataProto-like ``.batch``."""
    if isinstance(obj, dict):
        return obj
    inner = getattr(obj, "batch", None)
    if inner is not None and hasattr(inner, "keys"):        # verl DataProto (or the stand-in below)
        obj = inner
        if isinstance(obj, dict):
            return obj
    if hasattr(obj, "keys") and hasattr(obj, "__getitem__") and hasattr(obj, "batch_size"):   # TensorDict
        return {k: obj[k] for k in obj.keys()}
    raise BatchError(f"{where}: expected a dict of tensors, got {type(obj).__name__} (a dict or a TensorDict reads)")


def read_torch_dict(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """``torch.load`` a dict of tensors (or a TensorDict) with clear errors; no code runs by default."""
    return dict(as_mapping(read_torch(path, allow_pickle), str(path)))


# ----------------------------------------------------------------------------------------- pickle
def pickle_globals(path: str | Path, limit: int = 64) -> list[str]:
    """``module.name`` of the globals a pickle refers to, in order, from its opcodes (nothing runs).

    ``STACK_GLOBAL`` takes its two names from the strings pushed just before it (memoised or not);
    a truncated file gives the names read so far.
    """
    path = existing(path)
    names: list[str] = []
    recent: list[str | None] = []          # what the last ops pushed (None: not a string)
    memo: dict[int, str | None] = {}
    try:
        with path.open("rb") as f:
            for op, arg, _pos in pickletools.genops(f):
                top = recent[-1] if recent else None
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    recent.append(arg)
                elif op.name == "MEMOIZE":
                    memo[len(memo)] = top
                elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                    memo[int(arg)] = top
                elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                    recent.append(memo.get(int(arg)))
                elif op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                    recent.append(None)
                elif op.name == "STACK_GLOBAL":
                    if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                        names.append(f"{recent[-2]}.{recent[-1]}")
                    recent.append(None)
                elif op.stack_after:
                    recent.append(None)
                recent = recent[-8:]
                if len(names) >= limit:
                    break
    except Exception:   # truncated or not a pickle: the names seen so far (unpickling, if allowed, says what is wrong)
        pass
    return list(dict.fromkeys(names))


def refuse_pickle(path: Path, what: str) -> BatchError:
    """``what``: the format it would be read as."""
    """The error for a pickle read without ``allow_pickle``: what it names, why not, how to convert."""
    names = pickle_globals(path)
    shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
    return BatchError(
        f"{path}: not read: a pickle (read as {what}{'; it names ' + shown if shown else ''}) and {PICKLE_RISK}. "
        "Pass --allow-pickle (allow_pickle=True) only for a file you trust, or " + CONVERT_HINT)


class DataProtoState:
    """What a verl ``DataProto`` pickle holds, rebuilt without verl: ``batch`` (a TensorDict or
    dict of tensors), ``non_tensor_batch`` and ``meta_info``. The tensors are read with the
    weights-only load (verl's own ``__setstate__`` uses ``weights_only=False``)."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 3):
            raise BatchError(f"verl DataProto: unexpected pickled state ({type(state).__name__}); expected "
                             "(batch, non_tensor_batch, meta_info)")
        batch, self.non_tensor_batch, self.meta_info = state
        if isinstance(batch, (bytes, bytearray)):
            batch = read_torch(data=bytes(batch))
        elif isinstance(batch, tuple) and len(batch) == 3:           # VERL_DATAPROTO_SERIALIZATION_METHOD=numpy
            batch = _numpy_serialized_tensors(batch)
        self.batch = batch


def _numpy_serialized_tensors(encoded: tuple) -> dict[str, Any]:
    """verl's ``serialize_tensordict`` output ``(batch_size, device, {key: (dtype, shape, bytes)})``."""
    import torch

    _size, _device, items = encoded
    out = {}
    for key, value in dict(items).items():
        if not (isinstance(value, tuple) and len(value) == 3 and isinstance(value[0], str)):
            raise BatchError(f"verl DataProto: key {key!r} is a nested tensor; expected plain [B, ...] tensors")
        dtype, shape, data = value
        out[key] = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).view(tuple(shape))
    return out


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("verl.protocol", "DataProto"):
            return DataProtoState
        return super().find_class(module, name)


def read_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` (runs code named in it: call only behind ``allow_pickle=True``)."""
    path = existing(path)
    try:
        with path.open("rb") as f:
            return _Unpickler(f).load()
    except BatchError as e:
        raise BatchError(f"{path}: {e}") from None
    except (EOFError, pickle.UnpicklingError) as e:
        raise BatchError(f"{path}: cannot unpickle ({type(e).__name__}: {e}); the file may be truncated") from None
    except (ModuleNotFoundError, AttributeError) as e:
        raise BatchError(f"{path}: the pickle names a class this environment lacks ({e}); unpickle it where the "
                         "library that wrote it is installed") from None
    except Exception as e:
        raise BatchError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------- JSON
def read_json(path: str | Path) -> Any:
    path = existing(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as e:
        raise BatchError(f"{path}: not UTF-8 text (byte {e.start}); expected JSON (a binary file?)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        ends = text.rstrip()
        hint = "; the file may be truncated" if e.pos >= len(ends) or not ends.endswith(("}", "]")) else ""
        raise BatchError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}){hint}") from None


def first_jsonl_record(path: str | Path) -> Any:
    """The first line of a JSONL file, parsed (None if it is empty or not JSON: the reader says why)."""
    path = existing(path)
    try:
        with path.open() as f:
            line = f.readline()
        return json.loads(line) if line.strip() else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def iter_jsonl(path: str | Path):
    """``(line_number, record)`` per line; errors name the line (1-based)."""
    path = existing(path)
    with path.open(errors="replace") as f:      # a binary line fails as JSON, naming its line
        for i, line in enumerate(f, start=1):
            if not line.strip():
                raise BatchError(f"{path}: line {i} is empty; expected one JSON object per line")
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as e:
                raise BatchError(f"{path}: line {i} is not valid JSON ({e.msg} at column {e.colno}); "
                                 "the file may be truncated") from None
