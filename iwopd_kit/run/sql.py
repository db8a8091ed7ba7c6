"""SQL over a store: ``open_store(STORE)`` -> a DuckDB connection whose views are the store's tables.

The views, defined here and nowhere else (docs/run_scan.md lists their columns):

- ``tokens``: one row per completion token, every step (``step`` first; the ``w_<name>`` weight
  streams of all sources unified by name, null where a source has none);
- ``rows``, ``steps``, ``groups``, ``findings``: the one-file tables;
- ``bands``: ``(metric, low, high)``, the healthy band of each metric column (the kit's usual
  thresholds; null where there is no bound).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from . import store as S


def _q(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _sql_value(v: float | None) -> str:
    return "NULL::DOUBLE" if v is None else repr(float(v))


def view_sql(store: str | Path) -> dict[str, str]:
    """``{view name: its SELECT}`` for the store at ``store`` (the one definition of the views)."""
    store = Path(store)
    tokens = S.tokens_dir(store) / "*" / "*.parquet"
    views = {"tokens": f"SELECT step, * EXCLUDE (step) FROM read_parquet({_q(tokens)}, hive_partitioning = true, "
                       "union_by_name = true, hive_types = {'step': BIGINT})"}
    for name in S.TABLES:
        views[name] = f"SELECT * FROM read_parquet({_q(store / (name + '.parquet'))})"
    bands = ", ".join(f"('{m}', {_sql_value(lo)}, {_sql_value(hi)})" for m, (lo, hi) in S.BANDS.items())
    views["bands"] = f"SELECT * FROM (VALUES {bands}) AS b(metric, low, high)"
    return views


def open_store(store: str | Path, read_only: bool = True):
    """A DuckDB connection (in memory) with the views ``tokens``, ``rows``, ``steps``, ``groups``, ``findings``,
    ``bands`` over the store's files. Raises FileNotFoundError when ``store`` holds no scanned step."""
    import duckdb

    store = Path(store)
    if not (store / "steps.parquet").exists():
        raise FileNotFoundError(f"{store}: no scanned step here (no steps.parquet); run `iwopd-kit scan RUN` first "
                                f"(the store defaults to RUN/{S.STORE_DIRNAME})")
    con = duckdb.connect()
    for name, sql in view_sql(store).items():
        if name == "tokens" and not any(S.tokens_dir(store).glob("*/*.parquet")):
            continue                                       # steps were found but none could be read
        if name in S.TABLES and not (store / f"{name}.parquet").exists():
            continue
        con.execute(f'CREATE VIEW "{name}" AS {sql}')
    return con


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def query(store: str | Path, sql: str) -> tuple[list[str], list[tuple]]:
    """Run ``sql`` on the store's views: (column names, rows)."""
    con = open_store(store)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description] if cur.description else []
        return cols, cur.fetchall()
    finally:
        con.close()


def render(cols: list[str], rows: list[tuple], fmt: str = "text", decimals: int = 6) -> str:
    """Rows as an aligned table (``text``), JSON records (``json``) or CSV (``csv``)."""
    if fmt == "json":
        return json.dumps([{c: _jsonable(v) for c, v in zip(cols, r)} for r in rows], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(cols)
        w.writerows(["" if v is None else v for v in r] for r in rows)
        return buf.getvalue().rstrip("\n")
    from ..views.report import text_table

    return text_table(cols, [list(r) for r in rows], decimals=decimals) if cols else ""


__all__ = ["open_store", "view_sql", "query", "render"]
