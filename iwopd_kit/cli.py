"""``iwopd-kit``: the command line.

``iwopd-kit demo``  — the whole pipeline on the bundled tiny models with real vLLM rollouts;
prints a per-token table and a summary, writes a self-contained HTML report.
``iwopd-kit check`` — the alignment check on a dump (JSONL, TRL or verl torch file, vLLM pickle,
OpenAI JSON); scores missing student / teacher series with local models; exit 1 on an error
finding, 2 on unreadable input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

FORMAT_CHOICES = ("auto", "jsonl", "trl", "verl", "vllm", "openai")


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


class _Progress:
    """A tqdm bar on stderr, shown only when stderr is a terminal or the dump has > 1000 rows."""

    def __init__(self, total: int, rows: int) -> None:
        self.bar = None
        if sys.stderr.isatty() or rows > 1000:
            try:
                from tqdm import tqdm
            except ImportError:   # no bar, same results
                return
            self.bar = tqdm(total=total, file=sys.stderr, unit="row", leave=False, desc="check")

    def step(self, n: int, desc: str | None = None) -> None:
        if self.bar is not None:
            if desc:
                self.bar.set_description(desc)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _score_rows(model, batch, temperature: float, progress: _Progress, desc: str, chunk: int = 32) -> list[list]:
    """Log-probs of every completion token under ``model``, ``chunk`` rows per forward pass (ragged lists)."""
    from .batch import ragged_from_padded
    from .scoring import score

    rows: list[list] = []
    for s in range(0, batch.size, chunk):
        part = batch.select(list(range(s, min(s + chunk, batch.size))))
        rows += ragged_from_padded(score(model, part, temperature=temperature), part.lengths, desc)
        progress.step(part.size, desc)
    return rows


def _recompute(batch, args: argparse.Namespace, progress: _Progress):
    """Fill missing student / teacher series from model dirs; load the tokenizers the dirs provide.

    Returns ``(batch, student_tokenizer, teacher_tokenizer)``. Defaults for a missing series: the
    bundled tiny models. Scores at the rollout log-probs' temperature (1.0 when unknown).
    """
    from . import toy
    from .scoring import load_model, load_tokenizer

    need = {"student": not batch.has("student_logprobs"), "teacher": not batch.has("teacher_logprobs")}
    dirs = {"student": args.student or (toy.STUDENT_DIR if need["student"] else None),
            "teacher": args.teacher or (toy.TEACHER_DIR if need["teacher"] else None)}
    T = batch.sampling.logprob_temperature if batch.sampling is not None else 1.0
    toks = {}
    for side in ("student", "teacher"):
        d = dirs[side]
        if d is None:
            toks[side] = None
            continue
        if need[side]:
            if not (Path(d) / "config.json").exists():
                raise FileNotFoundError(f"the dump has no {side}_logprobs and {d} is not a model directory (no "
                                        f"config.json); pass --{side} DIR to score the tokens")
            rows = _score_rows(load_model(d), batch, T, progress, f"scoring {side}")
            batch = batch.with_series(f"{side}_logprobs", rows, temperature=T)
        toks[side] = load_tokenizer(d)
    return batch, toks["student"], toks["teacher"]


def _check(args: argparse.Namespace) -> int:
    from .alignment import check_alignment
    from .batch import BatchError
    from .formats.load import load_any
    from .views.alignment import finding_counts
    from .views.report import text_table

    try:
        batch = load_any(args.path, args.format)
    except (BatchError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    passes = int(not batch.has("student_logprobs")) + int(not batch.has("teacher_logprobs"))
    progress = _Progress(total=batch.size * (passes + 1), rows=batch.size)
    try:
        batch, student_tok, teacher_tok = _recompute(batch, args, progress)
    except (BatchError, OSError, ValueError) as e:
        progress.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = check_alignment(batch, student_tokenizer=student_tok, teacher_tokenizer=teacher_tok)
    progress.step(batch.size, "checked")
    progress.close()
    print(f"{args.path}: {batch.size} rows, {int(batch.valid().sum())} valid tokens")
    if report.findings:
        header, rows = finding_counts(report)
        print(text_table(header, rows))
        print()
        shown = report.findings[: args.max_findings]
        print(text_table(["severity", "kind", "row", "position", "message"],
                         [[f.severity, f.kind, f.row, f.position, f.message] for f in shown]))
        if len(report.findings) > len(shown):
            print(f"... {len(report.findings) - len(shown)} more finding(s); write them all with --json")
    else:
        print("no findings")
    if report.unchecked:
        print("not checked (inputs missing): " + report.unchecked_text())
        if {"tokenizer_mismatch", "bos_eos"} & set(report.unchecked):
            print("(pass --student DIR and --teacher DIR to check the tokenizers and BOS/EOS)")
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_dicts(), indent=2))
        if args.html:
            out = Path(args.html)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_check_html(args.path, batch, report, student_tok or teacher_tok))
            print(f"report: {out.resolve()}")
    except OSError as e:
        print(f"error: cannot write the output ({e})", file=sys.stderr)
        return 2
    return 0 if report.ok else 1


def _check_html(path: str, batch, report, tokenizer, max_rows: int = 20) -> str:
    """A self-contained page: the counts table, the findings, and the per-token diff of each flagged row."""
    import html

    from .views.alignment import alignment_view, finding_counts
    from .views.report import html_page, html_table

    tokens = None
    if tokenizer is not None:
        tokens = [[str(t) for t in tokenizer.convert_ids_to_tokens(c)] for c in batch.completion_ids]
    flagged = sorted({f.row for f in report.findings if f.row is not None})
    view = alignment_view(batch, report, tokens=tokens, rows=flagged[:max_rows] if flagged else None)
    note = (f"<p>per-token views of the first {max_rows} of {len(flagged)} flagged rows</p>"
            if len(flagged) > max_rows else "")
    head = (f"<p>{html.escape(str(path))}: {batch.size} rows, {int(batch.valid().sum())} valid tokens, "
            f"{len(report.findings)} finding(s); {'ok' if report.ok else 'errors'}</p>")
    summary = html_table(*finding_counts(report)) if report.findings else "<p>no findings</p>"
    unchecked = (f"<p>not checked: {html.escape(report.unchecked_text())}</p>" if report.unchecked else "")
    return html_page(f"alignment check: {Path(path).name}",
                     [("summary", head + summary + unchecked), ("findings and per-token diff", note + view.to_html())])


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
    c = sub.add_parser("check", help="check a dump (JSONL, TRL / verl torch file, vLLM pickle, OpenAI JSON) for "
                                      "token misalignment; exit 1 on an error finding, 2 on unreadable input")
    c.add_argument("path")
    c.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                   help="input layout (default: from the file suffix and, for .pt, its keys)")
    c.add_argument("--student", help="model dir that scores missing student log-probs and gives the student "
                                     "tokenizer (default for a missing series: the bundled tiny student)")
    c.add_argument("--teacher", help="model dir that scores missing teacher log-probs and gives the teacher "
                                     "tokenizer (default for a missing series: the bundled tiny teacher)")
    c.add_argument("--json", help="write the findings as a JSON list (kind, row, position, severity, message)")
    c.add_argument("--html", help="write a self-contained HTML report with the per-token diff at each finding")
    c.add_argument("--max-findings", type=int, default=50, help="findings printed in the terminal (default 50)")
    c.set_defaults(func=_check)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
