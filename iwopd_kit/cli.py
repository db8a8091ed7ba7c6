"""``iwopd-kit``: the command line.

``iwopd-kit demo``  — the whole pipeline on the bundled tiny models with real vLLM rollouts;
prints a per-token table and a summary, writes a self-contained HTML report.
``iwopd-kit check`` — the alignment check on a JSONL dump; non-zero exit on an error finding.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from .pipeline import report_html, run_pipeline, summary_text, token_table

    result = run_pipeline(n_prompts=args.n, temperature=args.temperature, seed=args.seed, gamma=args.gamma,
                          max_tokens=args.max_tokens)
    print(f"row 0: prompt {result.prompts[0]!r} -> completion "
          f"{''.join(t for t in result.tokens[0])!r} ({'correct' if result.correct[0] else 'wrong'})")
    print(token_table(result, row=0))
    print()
    print(summary_text(result))
    for f in result.report.findings:
        print(f"[{f.severity}] {f.kind} row={f.row} position={f.position}: {f.message}")
    out = Path(args.html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report_html(result))
    print(f"\nreport: {out.resolve()}")
    return 0 if result.report.ok else 1


def _check(args: argparse.Namespace) -> int:
    from .alignment import check_alignment
    from .batch import BatchError, read_jsonl
    from .views.report import text_table

    try:
        batch = read_jsonl(args.path)
    except BatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = check_alignment(batch)
    rows = [[f.severity, f.kind, f.row, f.position, f.message] for f in report.findings]
    print(f"{args.path}: {batch.size} rows, {int(batch.valid().sum())} valid tokens")
    print(text_table(["severity", "kind", "row", "position", "message"], rows) if rows else "no findings")
    if report.unchecked:
        print("not checked (inputs missing): " + ", ".join(report.unchecked))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dicts(), indent=2))
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iwopd-kit", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run the whole pipeline on the bundled tiny models (real vLLM)")
    d.add_argument("--n", type=int, default=8, help="number of held-out prompts (default 8)")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--max-tokens", type=int, default=48)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--gamma", type=float, default=0.5)
    d.add_argument("--html", default="reports/demo.html", help="where to write the HTML report")
    d.set_defaults(func=_demo)
    c = sub.add_parser("check", help="check a JSONL dump for token misalignment")
    c.add_argument("path")
    c.add_argument("--json", help="write the findings as a JSON list")
    c.set_defaults(func=_check)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
