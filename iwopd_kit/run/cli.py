"""The run commands of ``iwopd-kit``: ``scan``, ``sql`` and ``gates`` (registered by :func:`add_run_commands`)."""

from __future__ import annotations

import argparse
import sys


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return v


def _scan(args: argparse.Namespace) -> int:
    from .executors import RayUnavailable
    from .scan import scan_run
    from .timeline import summary_text

    try:
        result = scan_run(args.run, args.out, format=args.format, workers=args.workers, follow=args.follow,
                          follow_timeout=args.follow_timeout, poll_s=args.poll, settle_s=args.settle,
                          allow_pickle=args.allow_pickle, gamma=args.gamma, html=not args.no_html,
                          group_by=args.group_by, ray=args.ray)
    except (FileNotFoundError, NotADirectoryError, RayUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_text(result))
    return result.exit_code


def _sql(args: argparse.Namespace) -> int:
    import duckdb

    from .sql import query, render

    try:
        cols, rows = query(args.store, args.query)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except duckdb.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render(cols, rows, "json" if args.json else "csv" if args.csv else "text"))
    return 0


def _gates(args: argparse.Namespace) -> int:
    from ..batch import BatchError
    from ..views.report import text_table
    from .gates_io import COLUMNS, parse_param, simulate_gates
    from .sql import render

    overrides: dict = {}
    try:
        for text in args.param or []:
            rule, key, value = parse_param(text)
            overrides.setdefault(rule, {})[key] = value
        rules = [r.strip() for r in args.rules.split(",")] if args.rules else None
        records = simulate_gates(args.source, rules, overrides, by_group=args.by_group, format=args.format,
                                 allow_pickle=args.allow_pickle)
    except (ValueError, BatchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), args.out)
    rows = [tuple(r[c] for c in COLUMNS) for r in records]
    if args.json or args.csv:
        print(render(list(COLUMNS), rows, "json" if args.json else "csv"))
        return 0
    shown = ("rule", "step", "group", "tokens", "tokens_masked", "token_fraction", "seqs", "seqs_masked", "seq_fraction",
             "masked_reward_mean", "kept_reward_mean")
    print(text_table(list(shown), [[r[c] for c in shown] for r in records], decimals=4))
    for note in sorted({(r["rule"], r["note"]) for r in records if r["note"]}):
        print(f"{note[0]}: {note[1]}")
    print("parameters: " + "; ".join(sorted({f'{r["rule"]} {r["params"]}' for r in records})))
    return 0


def add_run_commands(sub, input_args) -> None:
    """Add ``scan``, ``sql`` and ``gates`` to the CLI's subparsers (``input_args`` adds --format / --allow-pickle)."""
    from .gates import RULES

    s = sub.add_parser("scan", help="check every step of a run (prime-rl token exports, the kit's JSONL per step, "
                                    "NeMo-RL train_data_stepN.jsonl) into a queryable store; exit 1 if a step has an "
                                    "error finding, 2 if a step's file could not be read")
    s.add_argument("run", help="the run folder (searched recursively for files named with a step number)")
    s.add_argument("--out", metavar="STORE", help="where to write the store (default RUN/iwopd_scan)")
    input_args(s)
    s.add_argument("--workers", type=_workers, default=None, help="processes, one step each (default: the CPU count)")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the steps on Ray: an existing cluster at ADDRESS (HOST:PORT, as `ray start --head` prints), "
                        "or without ADDRESS a local Ray started here with --workers CPUs; RUN and the store must be at the "
                        "same path on every node")
    s.add_argument("--follow", action="store_true", help="keep polling the run and read each step once it is complete")
    s.add_argument("--follow-timeout", type=_seconds, default=3600.0, help="stop following after this many seconds")
    s.add_argument("--poll", type=_seconds, default=10.0, help="seconds between polls with --follow (default 10)")
    s.add_argument("--settle", type=_seconds, default=None,
                   help="a step without a STABLE marker is read once unchanged this many seconds (default 0; 10 with "
                        "--follow)")
    s.add_argument("--gamma", type=float, default=0.5, help="gamma of the prefix weights in the tokens table")
    s.add_argument("--group-by", metavar="KEY", help="group each row by meta[KEY] (in place of the reader's groups)")
    s.add_argument("--no-html", action="store_true", help="skip the per-step pages (steps/step_N.html)")
    s.set_defaults(func=_scan)
    q = sub.add_parser("sql", help="query a scan's store with DuckDB (views tokens, rows, steps, groups, findings, bands)")
    q.add_argument("store", help="the store (RUN/iwopd_scan)")
    q.add_argument("query", help='e.g. "SELECT step, k3_kl FROM steps ORDER BY step"')
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON records")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    q.set_defaults(func=_sql)
    g = sub.add_parser("gates", help="replay the frameworks' mismatch masks offline: per rule and step, the share of "
                                     "tokens and sequences each would mask (and their reward)")
    g.add_argument("source", help="a store (RUN/iwopd_scan), a dump file, or a folder of one step's files")
    g.add_argument("--rules", help=f"comma-separated, default all: {', '.join(RULES)}")
    g.add_argument("--param", action="append", metavar="RULE.KEY=VALUE",
                   help="override a rule's parameter, e.g. icepop.min=0.4, nemo_seq_error.threshold=1.5, "
                        "verl_rs.option=token_k1 verl_rs.threshold=0.5_2.0 (repeatable)")
    g.add_argument("--by-group", action="store_true", help="also one line per group of each step")
    input_args(g)
    gf = g.add_mutually_exclusive_group()
    gf.add_argument("--json", action="store_true")
    gf.add_argument("--csv", action="store_true")
    g.add_argument("--out", help="also write the records to this Parquet file")
    g.set_defaults(func=_gates)


__all__ = ["add_run_commands"]
