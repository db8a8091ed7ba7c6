"""Debug a whole run: every step checked, one queryable store, a timeline page, the masking rules replayed.

``scan_run(RUN)`` finds every step under a run folder (prime-rl token exports, the kit's JSONL per step,
NeMo-RL's ``train_data_step{N}.jsonl``), checks each with ``check_alignment`` and writes a store of
Parquet tables (:mod:`iwopd_kit.run.store`); ``open_store(STORE)`` is a DuckDB connection over it;
``simulate_gates`` replays the frameworks' mismatch masks offline. docs/run_scan.md has the schema,
the cookbook of queries and where each masking rule is defined.

The names load on first use: ``import iwopd_kit`` (and ``iwopd-kit check``) does not need pyarrow or
duckdb, which only the run commands use (the ``run`` extra).
"""

from __future__ import annotations

from typing import Any

_NAMES = {"ScanResult": "scan", "scan_run": "scan", "open_store": "sql", "simulate_gates": "gates_io"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)


__all__ = ["ScanResult", "scan_run", "open_store", "simulate_gates"]
