"""The dump readers, in one table: name, suffixes, how the file is opened, how it is recognised.

``load_any``, ``detect_format`` and the CLI (``iwopd-kit check`` / ``convert``) read this table
and nothing else; the converters (``trl``, ``verl``, ``vllm``, ``primerl``, ``nemorl``, ``slime``, and
:func:`iwopd_kit.batch.read_jsonl`) know nothing of it. Adding a format = a pure converter in its
own module and one :class:`Reader` line in :data:`READERS`.

A reader's *container* says how its file is opened (:mod:`iwopd_kit.formats.files`):

- ``jsonl`` / ``json``: plain JSON, never code;
- ``torch``: ``torch.load(weights_only=True)`` (plus tensordict's safe types);
- ``pickle``: recognised from the names in its opcodes without running anything, unpickled
  only with ``allow_pickle=True``.

With ``format="auto"`` the suffix picks the container, then the first reader of that suffix
whose ``sniff`` accepts the file's first record / keys / pickled names; if none does, the first
reader listed for the suffix reads it and says what is wrong (torch files: the keys it found).

A run's directory of dumps is read through a second table, :data:`LAYOUTS`: one :class:`Layout`
line per framework's on-disk layout (which files are its dumps, the step of each, a step's
finished-marker, a companion file its reader joins); :mod:`iwopd_kit.formats.dirs` walks it. A
new reader adds its :class:`Reader` line and, for a run directory, its :class:`Layout` line.

The formats (:data:`READERS`, in order):

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

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..batch import Batch, BatchError, read_jsonl
from . import files
from .nemorl import from_nemorl_records, is_nemorl_record
from .primerl import from_primerl_records, is_primerl_record
from .primerl_fast import read_primerl_fast
from .slime import from_slime_rollout, from_slime_train, is_slime_rollout, is_slime_train, load_slime
from .trl import from_trl_batch
from .verl import from_verl_batch
from .vllm import from_openai_json, from_trl_vllm_output, from_vllm_object


@dataclass(frozen=True)
class Reader:
    """One dump format: ``read(path, loaded)`` turns the opened container into a Batch."""

    name: str
    suffixes: tuple[str, ...]
    container: str                                  # "jsonl" | "json" | "torch" | "pickle"
    sniff: Callable[[Any], bool]                    # on the peek: first record / object / dict / pickled names
    read: Callable[[Path, Any], Batch]
    help: str
    fallback: bool = False                          # read files of its suffix that no reader recognises

    @property
    def runs_code(self) -> bool:
        return self.container == "pickle"


def _keys(d: Any) -> set:
    return set(d) if isinstance(d, dict) else set()


def _vllm_names(names: list[str]) -> bool:
    return any(n.startswith("vllm.") for n in names)


def _dataproto_names(names: list[str]) -> bool:
    return "verl.protocol.DataProto" in names


def _read_primerl(path: Path, _: Any) -> Batch:
    fast = read_primerl_fast(path)                     # clean files: the same Batch, no Python loop per token
    return fast if fast is not None else from_primerl_records(rec for _, rec in files.iter_jsonl(path))


def _read_nemorl(path: Path, _: Any) -> Batch:
    return from_nemorl_records(rec for _, rec in files.iter_jsonl(path))


def _read_dataproto(path: Path, obj: Any) -> Batch:
    return from_verl_batch(files.as_mapping(obj, "verl DataProto"))


READERS: tuple[Reader, ...] = (
    Reader("jsonl", (".jsonl",), "jsonl", lambda rec: "completion_ids" in _keys(rec), lambda p, _: read_jsonl(p),
           "the kit's own rows (iwopd_kit/batch/core.py)", fallback=True),
    Reader("trl", (".pt", ".pth"), "torch", lambda d: {"input_ids", "labels"} <= _keys(d),
           lambda p, d: from_trl_batch(d), "a torch.save'd TRL batch (input_ids, attention_mask, labels, ...)"),
    Reader("verl", (".pt", ".pth"), "torch", lambda d: {"prompts", "responses"} <= _keys(d),
           lambda p, d: from_verl_batch(d), "a torch.save'd verl batch: a dict or TensorDict (prompts, responses, ...)"),
    Reader("vllm", (".pkl", ".pickle"), "pickle", _vllm_names, lambda p, obj: from_vllm_object(obj),
           "pickled vLLM RequestOutputs (only with --allow-pickle)", fallback=True),
    Reader("openai", (".json",), "json", lambda o: isinstance(o, list) or "responses" in _keys(o),
           lambda p, obj: from_openai_json(obj), "/v1/completions responses (+ prompt ids)", fallback=True),
    Reader("primerl", (".jsonl",), "jsonl", is_primerl_record, _read_primerl,
           "prime-rl's token export (token_exports/step_N/rank_R.jsonl)"),
    Reader("nemorl", (".jsonl",), "jsonl", is_nemorl_record, _read_nemorl,
           "NeMo-RL's GRPO / PPO train_data_step<N>.jsonl (token_ids, token_loss_mask, generation_logprobs, "
           "prev_logprobs)"),
    Reader("trl_vllm", (".json",), "json", lambda o: {"completion_ids", "logprobs"} <= _keys(o),
           lambda p, obj: from_trl_vllm_output(obj), "TRL's vLLM client output (prompt_ids, completion_ids, logprobs, "
           "logprob_token_ids)"),
    Reader("slime", (".pt", ".pth"), "torch", is_slime_rollout, lambda p, d: from_slime_rollout(d),
           "slime's --save-debug-rollout-data dump (rollout_id, samples); join its train dump with load_slime"),
    Reader("slime_train", (".pt", ".pth"), "torch", is_slime_train, lambda p, d: from_slime_train(d),
           "slime's --save-debug-train-data dump (format_version 2: samples, dp_shards)"),
    Reader("verl_dataproto", (".pkl", ".pickle"), "pickle", _dataproto_names, _read_dataproto,
           "a verl DataProto saved with save_to_disk (a pickle: only with --allow-pickle)"),
)

BY_NAME: dict[str, Reader] = {r.name: r for r in READERS}
FORMATS: tuple[str, ...] = ("auto", *BY_NAME)
SUFFIXES: tuple[str, ...] = tuple(sorted({s for r in READERS for s in r.suffixes}))


@dataclass(frozen=True)
class Layout:
    """How one framework lays a run's dumps out on disk (``iwopd-kit check DIR``, :mod:`iwopd_kit.formats.dirs`).

    ``pattern`` is searched in a file's path relative to the parent of the directory given (posix,
    so ``step_3/rank_0.jsonl`` matches when the directory is ``step_3/`` itself); its ``step`` group
    is the training step. ``reader`` reads each matching file (a :data:`READERS` name). ``confirm``:
    also require the reader's ``sniff`` of the first record (cheap for JSONL only). ``marker``: a file
    every finished step directory holds (a step without it is noted). ``companion``: the file beside
    a dump that its reader joins, formatted from the pattern's groups; ``read(dump, companion or
    None, allow_pickle)`` then reads the pair (None: the dump alone, with ``reader``).
    """

    name: str
    reader: str
    pattern: str
    help: str
    confirm: bool = False
    marker: str | None = None
    companion: str | None = None
    read: Callable[[Path, Path | None, bool], Batch] | None = None

    @property
    def active(self) -> bool:
        """True once its reader is in :data:`READERS` (a pending layout's files are read file by file)."""
        return self.reader in BY_NAME


# One line per framework's on-disk layout, tried in this order; a file goes to the first that claims it.
# Files no layout claims are read one by one by their suffix and keys (their step from a ``step_N`` in the path).
LAYOUTS: tuple[Layout, ...] = (
    Layout("primerl", "primerl", r"(?:^|/)step_(?P<step>\d+)/rank_(?P<rank>\d+)\.jsonl$",
           "prime-rl: <run>/token_exports/step_N/rank_R.jsonl, STABLE in each finished step", confirm=True,
           marker="STABLE"),
    # NeMo-RL's logger writes one train_data_step{N}.jsonl per step into the run's log dir (exp_NNN/).
    Layout("nemorl", "nemorl", r"(?:^|/)train_data_step(?P<step>\d+)\.jsonl$",
           "NeMo-RL: <log_dir>/train_data_step{N}.jsonl", confirm=True),
    # slime: the rollout dump data_{id}.pt joined with the train dump train_{id}.pt beside it (load_slime).
    Layout("slime", "slime", r"(?:^|/)data_(?P<step>\d+)\.pt$",
           "slime: --save-debug-rollout-data data_{id}.pt (+ --save-debug-train-data train_{id}.pt)",
           companion="train_{step}.pt", read=lambda dump, comp, allow_pickle: load_slime(dump, comp, allow_pickle=allow_pickle)),
    Layout("trl_callback", "trl", r"(?:^|/)step(?P<step>\d+)_mb(?P<micro>\d+)\.pt$",
           "the kit's TRL callback: <dump_dir>/step{N:06d}_mb{k}.pt"),
    Layout("jsonl", "jsonl", r"(?:^|/)step_?(?P<step>\d+)(?:\.jsonl|/[^/]+\.jsonl)$",
           "the kit's own JSONL per step: step_N.jsonl or step_N/*.jsonl", confirm=True),
)


def _candidates(path: Path) -> list[Reader]:
    suffix = path.suffix.lower()
    found = [r for r in READERS if suffix in r.suffixes]
    if not found:
        raise BatchError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; pass format= (--format) one "
                         f"of {FORMATS[1:]} (suffixes: {list(SUFFIXES)})")
    return found


def _peek(path: Path, container: str, allow_pickle: bool) -> Any:
    if container == "jsonl":
        return files.first_jsonl_record(path)
    if container == "json":
        return files.read_json(path)
    if container == "torch":
        return files.read_torch_dict(path, allow_pickle)
    return files.pickle_globals(path)


def _pick(path: Path, allow_pickle: bool) -> tuple[Reader, Any]:
    """The reader for ``path`` and what its container showed (loaded for json / torch)."""
    found = _candidates(path)
    peek = _peek(path, found[0].container, allow_pickle)
    for r in found:
        if r.sniff(peek):
            return r, peek
    for r in found:
        if r.fallback:
            return r, peek
    raise BatchError(f"{path}: cannot tell the layout from the keys {sorted(_keys(peek))}; expected "
                     + " or ".join(f"{r.name} ({r.help})" for r in found))


def detect_format(path: str | Path, allow_pickle: bool = False) -> str:
    """The format name of ``path``: from its suffix, then its keys / first record / pickled names.

    Nothing in the file runs: a pickle is recognised from its opcodes.
    """
    return _pick(files.existing(path), allow_pickle)[0].name


def _load(path: Path, reader: Reader, peek: Any, allow_pickle: bool) -> Any:
    if reader.container == "pickle":
        if not allow_pickle:
            raise files.refuse_pickle(path, f"{reader.name}, {reader.help.split(' (')[0]}")
        return files.read_pickle(path)
    if reader.container == "jsonl":
        return path
    return peek


def load_any(path: str | Path, format: str = "auto", allow_pickle: bool = False) -> Batch:
    """Read ``path`` in ``format`` (one of :data:`FORMATS`; ``auto`` detects it) into a Batch.

    No format runs code from the file unless ``allow_pickle=True``, which unpickles pickles
    (vLLM ``RequestOutput`` lists, verl ``DataProto``) and loads torch files without
    ``weights_only``: that runs code named in the file; pass it only for files you trust.
    """
    return read_dump(path, format, allow_pickle)[0]


def read_dump(path: str | Path, format: str = "auto", allow_pickle: bool = False) -> tuple[Batch, str]:
    """:func:`load_any` that also says which reader read the file: ``(batch, reader name)``."""
    if format not in FORMATS:
        raise BatchError(f"unknown format {format!r}; expected one of {FORMATS}")
    path = files.existing(path)
    if format == "auto":
        reader, peek = _pick(path, allow_pickle)
    else:
        reader = BY_NAME[format]
        peek = None if reader.container in ("jsonl", "pickle") else _peek(path, reader.container, allow_pickle)
    loaded = _load(path, reader, peek, allow_pickle)
    try:
        return reader.read(path, loaded), reader.name
    except BatchError as e:
        msg = str(e)
        raise BatchError(_with_hints(path, msg if msg.startswith(str(path)) else f"{path}: {msg}")) from None
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError) as e:  # a value that is not what the layout says
        raise BatchError(_with_hints(path, f"{path}: malformed {reader.name} dump ({type(e).__name__}: {e})")) from None


def _with_hints(path: Path, msg: str) -> str:
    """prime-rl marks a finished step with ``STABLE``: say so when a step directory lacks it."""
    step_dir = path.parent
    if re.fullmatch(r"step_\d+", step_dir.name) and not (step_dir / "STABLE").exists():
        msg += f" ({step_dir.name} has no STABLE marker: the trainer may still be writing it)"
    return msg


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def dump_files(directory: str | Path) -> list[Path]:
    """Every file under ``directory`` with a reader's suffix, in natural order (step_2 before step_10)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BatchError(f"{directory}: not a directory")
    found = [p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES]
    if not found:
        raise BatchError(f"{directory}: no dump files (suffixes {list(SUFFIXES)}) in it or below")
    return sorted(found, key=_natural)


def formats_help() -> str:
    """One line per format, for ``--help``."""
    return "; ".join(f"{r.name} ({'/'.join(r.suffixes)}): {r.help}" for r in READERS)
