"""Debug a whole run: every step checked, one queryable store, a timeline page, the masking rules replayed.

``scan_run(RUN)`` finds every step under a run folder (prime-rl token exports, the kit's JSONL per step,
NeMo-RL's ``train_data_step{N}.jsonl``), checks each with ``check_alignment`` and writes a store of
Parquet tables (:mod:`iwopd_kit.run.store`); ``open_store(STORE)`` is a DuckDB connection over it;
``simulate_gates`` replays the frameworks' mismatch masks offline. docs/run_scan.md has the schema,
the cookbook of queries and where each masking rule is defined.
"""

from .scan import ScanResult, scan_run
from .sql import open_store

__all__ = ["ScanResult", "scan_run", "open_store"]
