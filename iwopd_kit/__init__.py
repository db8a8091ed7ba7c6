"""iwopd_kit: Importance-Weighted On-Policy Distillation, step by step and token by token.

The data flows one way: rollout -> score -> check -> advantage -> weights -> loss -> view.
Every per-token tensor is [B, L] in completion coordinates (token j = the j-th generated token of
the row; right-padded; ``mask`` bool [B, L]).

The package is a handful of rooms, one per role, each importing only from rooms on lower floors
(docs/ARCHITECTURE.md):

- ``batch`` (the data model), ``objective`` (the math), ``toy`` (the toy task, bundled data);
- ``formats`` (other projects' dumps), ``alignment`` (the check, the mismatch metrics);
- ``engines`` (rollouts, the one scoring path), ``views`` (draw, never decide);
- ``run`` (a whole run), ``integrations`` (the TRL callback), ``teaching`` (the exercises);
- ``apps`` (pipeline, training loop, ``check_dump``, replay); ``cli`` (``iwopd-kit``).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from .alignment import AlignmentReport, Finding, Tolerances, check_alignment, lag_scan
from .batch import Batch, BatchError, read_jsonl, write_jsonl
from .formats import (
    from_openai_completions,
    from_request_outputs,
    from_trl_batch,
    from_verl_batch,
    load_any,
    to_trl_batch,
)
from .alignment.mismatch import MISMATCH_KEYS, mismatch_metrics
from .objective import (
    ObjectiveResult,
    advantage,
    iw_opd_loss,
    iw_opd_metrics,
    jsd_top1_loss,
    opd_loss,
    position_mask,
    prefix_weights,
)
from .apps.replay import ReplayResult, replay_row
from .batch.sampling import Sampling, SamplingSettings
from .engines.rollout import TransformersEngine, VLLMEngine, VLLMServerEngine, configure_vllm_env, rollout
from .engines.scoring import (
    completion_logits,
    load_model,
    load_tokenizer,
    sampled_logprobs,
    score,
    score_batch,
)
from .apps.check_result import CheckResult, DirCheckResult
from .apps.service import check_dump

from . import views

__version__ = "0.1.0"

# Modules that lived at the top level before the rooms (``batch``, ``objective`` and ``toy`` are rooms of
# their own name that re-export them): the old dotted name still imports the module, with a
# DeprecationWarning naming its home (not ``rollout``: ``iwopd_kit.rollout`` is the function, and
# importing a module by that name would replace it). The research modules left the package: a clear error.
_MOVED = {
    "ragged": "batch.ragged", "fields": "batch.fields", "sampling": "batch.sampling", "mismatch": "alignment.mismatch",
    "envdefaults": "engines.envdefaults", "scoring": "engines.scoring",
    "rescore": "engines.rescore", "server": "engines.server", "chat": "engines.chat",
    "chromium": "views.chromium", "results": "views.results",
    "exercise_base": "teaching.harness", "exercises": "teaching.exercises",
    "exercises_pairing": "teaching.pairing", "solutions": "teaching.solutions",
    "check_result": "apps.check_result", "service": "apps.service", "replay": "apps.replay",
    "replay_io": "apps.replay_io", "replay_rules": "apps.replay_rules", "pipeline": "apps.pipeline",
    "train": "apps.train",
}
_LEFT = {"study": "research/study.py", "study_stats": "research/study_stats.py", "views.study": "research/figures.py",
         "random_models": "research/random_models.py", "browser": "tests/browser.py"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import iwopd_kit.scoring`` -> the module ``iwopd_kit.engines.scoring`` (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(__name__ + ".") if fullname.startswith(__name__ + ".") else None
        if old in _LEFT:
            raise ModuleNotFoundError(f"{fullname} is not part of the package any more: it is {_LEFT[old]} in the "
                                      "repository's checkout (not in the wheel)", name=fullname)
        if old in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{__name__}.{_MOVED[spec.name.removeprefix(__name__ + '.')]}"
        warnings.warn(f"{spec.name} moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str):
    """``scan_run``, ``open_store``, ``ScanResult``, ``simulate_gates``: the run commands' API (iwopd_kit.run),
    loaded on first use (they need pyarrow and duckdb, the ``run`` extra; ``import iwopd_kit`` does not)."""
    if name in ("ScanResult", "open_store", "scan_run", "simulate_gates"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AlignmentReport", "Batch", "MISMATCH_KEYS", "BatchError", "CheckResult", "DirCheckResult", "Finding", "ObjectiveResult", "Sampling", "SamplingSettings",
    "Tolerances", "TransformersEngine", "VLLMEngine", "VLLMServerEngine", "advantage", "check_alignment", "check_dump",
    "completion_logits", "configure_vllm_env", "from_openai_completions", "from_request_outputs",
    "from_trl_batch", "from_verl_batch", "iw_opd_loss", "load_any", "iw_opd_metrics", "jsd_top1_loss", "lag_scan", "load_model", "load_tokenizer", "mismatch_metrics", "opd_loss",
    "position_mask", "prefix_weights", "read_jsonl", "ReplayResult", "replay_row", "rollout", "sampled_logprobs", "score",
    "score_batch", "to_trl_batch", "write_jsonl", "ScanResult", "open_store", "scan_run", "simulate_gates",
]
